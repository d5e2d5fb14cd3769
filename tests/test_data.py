"""Array cache (keying, rebuild, skipped studies, workers), the Dataset and the augmentations."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bonescan.data import CachedScans, augment_pair, build_cache, sample_generator
from bonescan.errors import BoneScanError
from bonescan.preprocess import PreprocessConfig, preprocess_views
from bonescan.presets import AugmentConfig
from trainkit import write_cohort

SMALL = PreprocessConfig(height=64, width=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_cache_holds_the_preprocessed_studies(tmp_path):
    manifest = write_cohort(tmp_path / "data", n_train=4, n_val=2)
    cache = build_cache(manifest, SMALL, tmp_path / "cache", workers=1)
    assert cache.case_ids == list(manifest["case_id"])
    assert list(cache.labels) == list(manifest["label"])
    assert list(cache.rows("val")) == [4, 5]
    assert cache.arrays.dtype == np.float16 and cache.arrays.shape == (6, 2, 64, 32)
    row = manifest.iloc[3]
    expected = preprocess_views(np.load(row["anterior"]), np.load(row["posterior"]), SMALL)
    np.testing.assert_allclose(cache.arrays[3].astype(np.float32), expected, atol=1e-3)


def test_cache_is_reused_and_rebuilt_when_an_input_or_setting_changes(tmp_path):
    manifest = write_cohort(tmp_path / "data", n_train=3, n_val=2)
    first = build_cache(manifest, SMALL, tmp_path / "cache", workers=1)
    built_at = os.stat(first.folder / "arrays.npy").st_mtime_ns
    again = build_cache(manifest, SMALL, tmp_path / "cache", workers=1)
    assert again.key == first.key and os.stat(again.folder / "arrays.npy").st_mtime_ns == built_at

    other_setting = build_cache(manifest, PreprocessConfig(height=64, width=32, normalization="counts"),
                                tmp_path / "cache", workers=1)
    assert other_setting.key != first.key

    row = manifest.iloc[1]
    new_anterior = np.zeros((256, 64), np.float32)
    new_anterior[100:120, 10:20] = 50.0
    np.save(row["anterior"], new_anterior)
    os.utime(row["anterior"], ns=(built_at + 10**9, built_at + 10**9))
    rebuilt = build_cache(manifest, SMALL, tmp_path / "cache", workers=1)
    assert rebuilt.key != first.key
    expected = preprocess_views(new_anterior, np.load(row["posterior"]), SMALL)
    np.testing.assert_allclose(rebuilt.arrays[1].astype(np.float32), expected, atol=1e-3)
    assert not any(p.name.startswith(".") for p in (tmp_path / "cache").iterdir())  # no staging left behind


def test_unreadable_studies_are_skipped_and_listed_or_fail_fast(tmp_path):
    manifest = write_cohort(tmp_path / "data", n_train=4, n_val=2)
    broken = manifest.iloc[2]["posterior"]
    with open(broken, "wb") as handle:
        handle.write(b"not an image")
    cache = build_cache(manifest, SMALL, tmp_path / "cache", workers=1)
    assert len(cache) == 5 and "case002" not in cache.case_ids
    assert [f["case_id"] for f in cache.failures] == ["case002"]
    assert broken in cache.failures[0]["reason"] or broken in cache.failures[0]["source"]
    with pytest.raises(BoneScanError, match="case002_post"):
        build_cache(manifest, SMALL, tmp_path / "cache2", fail_fast=True, workers=1)
    assert not (tmp_path / "cache2").exists() or not any((tmp_path / "cache2").iterdir())


def test_worker_processes_fill_the_same_cache(tmp_path):
    manifest = write_cohort(tmp_path / "data", n_train=5, n_val=2)
    serial = build_cache(manifest, SMALL, tmp_path / "serial", workers=1)
    parallel = build_cache(manifest, SMALL, tmp_path / "parallel", workers=2)
    np.testing.assert_array_equal(np.asarray(serial.arrays), np.asarray(parallel.arrays))


def _spot_pair() -> torch.Tensor:
    pair = torch.zeros(2, 64, 32)
    pair[:, 30:34, 4:8] = 1.0  # a hot spot on the left of both views
    return pair


def test_augmentation_is_reproducible_per_sample_and_epoch():
    config = AugmentConfig()
    pair = torch.rand(2, 64, 32)
    first = augment_pair(pair, config, sample_generator(seed=3, epoch=1, index=7))
    again = augment_pair(pair, config, sample_generator(seed=3, epoch=1, index=7))
    other_epoch = augment_pair(pair, config, sample_generator(seed=3, epoch=2, index=7))
    assert torch.equal(first, again)
    assert not torch.equal(first, other_epoch)
    assert first.min() >= 0 and first.max() <= 1


def test_flip_moves_both_views_together():
    config = AugmentConfig(gain=0, poisson_probability=0, shift=0, scale=0, flip_probability=1.0)
    out = augment_pair(_spot_pair(), config, sample_generator(0, 0, 0))
    for view in out:
        assert view[30:34, 24:28].min() == 1.0 and view[:, :16].max() == 0.0


def test_shift_moves_both_views_by_the_same_amount():
    config = AugmentConfig(gain=0, poisson_probability=0, shift=0.1, scale=0.05, flip_probability=0)
    for index in range(5):
        out = augment_pair(_spot_pair(), config, sample_generator(0, 0, index))
        assert torch.allclose(out[0], out[1])
        assert not torch.equal(out[0], _spot_pair()[0])


def test_poisson_resampling_keeps_the_mean_and_adds_count_noise():
    config = AugmentConfig(gain=0, poisson_probability=1.0, poisson_peak=(100.0, 100.0), shift=0, scale=0,
                           flip_probability=0)
    pair = torch.full((2, 64, 32), 0.5)
    out = augment_pair(pair, config, sample_generator(0, 0, 0))
    # Poisson(50) / 100: mean 0.5, standard deviation sqrt(50) / 100 = 0.0707.
    assert abs(float(out.mean()) - 0.5) < 0.01
    assert abs(float(out.std()) - 0.0707) < 0.01


def test_dataset_returns_float_pairs_and_labels(tmp_path):
    manifest = write_cohort(tmp_path / "data", n_train=3, n_val=2)
    cache = build_cache(manifest, SMALL, tmp_path / "cache", workers=1)
    plain = CachedScans(cache, cache.rows("train"))
    image, label = plain[1]
    assert image.dtype == torch.float32 and image.shape == (2, 64, 32)
    assert float(label) == float(manifest.iloc[1]["label"])
    augmented = CachedScans(cache, cache.rows("train"), AugmentConfig(), seed=0)
    augmented.set_epoch(0)
    epoch0 = augmented[1][0]
    augmented.set_epoch(1)
    assert not torch.equal(epoch0, augmented[1][0])
    augmented.set_epoch(0)
    assert torch.equal(epoch0, augmented[1][0])
