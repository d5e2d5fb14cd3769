"""Benchmark: AUC gain of a pretrained trunk when fine-tuning on a few studies of another site.

    python scripts/pretrain_gain.py --target TARGET/manifest.csv --trunk ssl=trunk.pt --trunk sup=sup.pt \
        [--finetune-cases 200] [--test-cases 400] [--seeds 0,1,2] [--preset cpu-small] [--work DIR]

Fine-tunes the preset from random initialisation and from each trunk on the same `--finetune-cases` studies of
the target manifest (80 % train, 20 % val, stratified by label, drawn per seed), then scores `--test-cases`
other target studies. Prints per seed and arm the test AUC with its DeLong CI, and each trunk's paired DeLong
difference against random initialisation; a figure, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bonescan.cohort import load_manifest
from bonescan.evaluate.stats import delong_auc, delong_paired_test
from bonescan.inference import predict_manifest
from bonescan.presets import preset_config
from bonescan.train import train


def _subsets(table, finetune: int, test: int, seed: int):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(table))
    test_rows = table.iloc[order[:test]].assign(split="test")
    pool = table.iloc[order[test:test + finetune]].copy()
    val = np.zeros(len(pool), bool)
    for label in (0, 1):  # stratified 80 / 20
        idx = np.flatnonzero(pool["label"].to_numpy() == label)
        val[idx[: max(1, len(idx) // 5)]] = True
    pool["split"] = np.where(val, "val", "train")
    return pool, test_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, type=Path)
    parser.add_argument("--trunk", action="append", default=[], help="NAME=FILE; repeat for several")
    parser.add_argument("--finetune-cases", type=int, default=200)
    parser.add_argument("--test-cases", type=int, default=400)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--work", type=Path, default=Path("runs/pretrain-gain"))
    args = parser.parse_args()
    table = load_manifest(args.target)
    table = table[table["exclude_reason"] == ""] if "exclude_reason" in table else table
    arms = {"random": None, **dict(item.split("=", 1) for item in args.trunk)}
    print(f"target {args.target}: fine-tune on {args.finetune_cases}, test on {args.test_cases}; "
          f"preset {args.preset}; {torch.get_num_threads()} threads")
    for seed in [int(s) for s in args.seeds.split(",")]:
        pool, test_rows = _subsets(table, args.finetune_cases, args.test_cases, seed)
        scores = {}
        for arm, trunk in arms.items():
            started = time.perf_counter()
            config = preset_config(args.preset, pretrained=trunk, seed=seed, precision="fp32", epochs=args.epochs)
            run = args.work / f"seed{seed}-{arm}"
            train(pool, run, config, force=True, cache_dir=args.work / "cache", progress=False)
            predicted = predict_manifest(run, test_rows, cache_dir=args.work / "cache")
            merged = predicted.merge(test_rows[["case_id", "label"]], on="case_id", suffixes=("_c", ""))
            scores[arm] = merged
            est = delong_auc(merged["label"], merged["probability"])
            print(f"seed {seed} {arm:>10}: test AUC {est.auc:.3f} ({est.ci_low:.3f}-{est.ci_high:.3f}), "
                  f"n = {est.n} ({est.n_pos} positive), {time.perf_counter() - started:.0f} s")
        base = scores["random"]
        for arm in arms:
            if arm == "random":
                continue
            paired = base.merge(scores[arm], on=["case_id", "label"], suffixes=("_r", "_p"))
            test = delong_paired_test(paired["label"], paired["probability_p"], paired["probability_r"])
            print(f"seed {seed} {arm} - random: {test.difference:+.3f} ({test.ci_low:+.3f} to {test.ci_high:+.3f}), "
                  f"p = {test.p_value:.3g}")


if __name__ == "__main__":
    main()
