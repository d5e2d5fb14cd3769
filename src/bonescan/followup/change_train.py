"""Training the change network (`change_net`) on synthetic follow-up cohorts, with resume.

    RUN/pairs_train.npz, pairs_val.npz   every later visit with the visit before it registered onto it, and the
                                         pixels of its new lesions (built once, rebuilt when the cohorts differ);
                                         a patient whose studies or truth cannot be read is left out, and the file
                                         lists it with the reason (`skipped`, logged)
    RUN/checkpoint.pt                    network, optimiser, schedule and sampler after the last finished epoch
    RUN/metrics.csv                      loss and seconds per epoch
    RUN/change_net.pt                    the network with the operating point chosen on the validation pairs

Truth: the pixels (in the network's geometry) of the later visit's metastases none of whose findings showed on any
earlier visit, confluent ones as one (`evaluate.new_lesion_ids`, the count `bonescan followup --evaluate` measures
against). Loss: binary cross-entropy with new-lesion pixels weighted 30 (they are rare; `--new-pixel-weight`) plus a
soft Dice over the batch; AdamW, one-cycle schedule; flips and a shift of up to 2 pixels of the earlier visit (a
registration's residual) and each visit's count level scaled on its own. The operating point (threshold, smallest
area) gives the highest patient sensitivity for ">= 2 new lesions" on the first follow-ups of the validation cohorts
at specificity >= MIN_SPECIFICITY.
"""

from __future__ import annotations

import contextlib
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..device import choose_precision
from ..errors import BoneScanError, ConfigError, RunError
from ..fileio import atomic_path, write_text_atomic, write_torch_atomic
from ..lesions.dataset import targets_in_network_geometry
from ..lesions.network import check_unet_channels
from ..study import VIEWS
from .change_net import CHANNELS, PREPROCESS, ChangeNet, area_masks, pair_input, probability_maps, save_change_model
from .evaluate import manifest_patients, new_lesion_ids, shown_identities, truth_of, visit_files
from .visits import load_visit

MIN_SPECIFICITY = 0.92
# below 0.1 for networks trained with a high new-pixel weight, whose faint new lesions stay under 0.1 (README)
THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_PIXELS = (1, 2, 3, 5, 8)
NEW_PIXEL_WEIGHT = 30.0  # 10 painted fewer of the faint new lesions (README)


def patient_pairs(root: Path, rows: pd.DataFrame) -> list[dict]:
    """Each later visit (of the first three) of one patient with the visit before it, and its new-lesion mask."""
    rows = rows.head(3)
    files = [[str(root / f) for f in visit_files(row)] for _, row in rows.iterrows()]
    visits = [load_visit(f if len(f) == 2 else f[0], "visit") for f in files]
    truths = truth_of(rows.assign(truth=[str(root / t) for t in rows["truth"]]))
    seen, pairs = set(), []
    for k in range(1, len(visits)):
        seen |= shown_identities(truths[k - 1])
        confluent = truths[k].confluent_metastases()
        new = new_lesion_ids(truths[k], seen, confluent)
        _, hot = targets_in_network_geometry(truths[k].regions, confluent[0], new, PREPROCESS)
        pairs.append({"x": pair_input(visits[k].study, visits[k - 1].study).astype(np.float16),
                      "y": (hot == 2).astype(np.uint8), "n_new": len(new), "visit": k,
                      "patient": str(rows["patient_id"].iloc[0]), "cohort": str(root)})
    return pairs


def _patient_job(job: tuple[Path, pd.DataFrame]) -> tuple[list[dict], str | None]:
    """The patient's pairs, or none and why: one unreadable patient must not end a build of thousands."""
    root, rows = job
    try:
        return patient_pairs(root, rows), None
    except BoneScanError as error:
        reason = str(error)
    except Exception as error:  # noqa: BLE001 - reported per patient, the build goes on
        reason = f"{type(error).__name__}: {error}"
    return [], f"{root} {rows['patient_id'].iloc[0]}: {reason}"


def build_pairs(out: Path, cohorts: list[Path], workers: int = 2,
                progress: Callable[[int, int], None] | None = None) -> int:
    """Pairs of every patient of `cohorts` (folders holding a follow-up manifest.csv) into `out` (npz); patients that
    fail are left out and listed in its `skipped` (cohort, patient id and reason)."""
    jobs = []
    for root in cohorts:
        _, patients = manifest_patients(root / "manifest.csv")
        if "truth" not in next(iter(patients.values()), pd.DataFrame()).columns:
            raise ConfigError(root, "its manifest has no truth column; the change network trains on synthetic "
                                    "follow-up cohorts (bonescan synth --follow-up)")
        jobs += [(root, rows) for rows in patients.values() if len(rows) >= 2]
    if not jobs:
        raise ConfigError(cohorts[0], "no patient with two visits to pair")
    pairs: list[dict] = []
    skipped: list[str] = []
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.map(_patient_job, jobs, chunksize=4) if pool else map(_patient_job, jobs)
        for n, (found, failure) in enumerate(results, 1):
            pairs += found
            skipped += [failure] if failure else []
            if progress:
                progress(n, len(jobs))
    if not pairs:
        raise ConfigError(", ".join(map(str, cohorts)), f"no patient could be paired; {len(skipped)} failed, e.g. "
                                                        + "; ".join(skipped[:3]))
    arrays = {key: np.stack([p[key] for p in pairs]) if key in ("x", "y") else np.array([p[key] for p in pairs])
              for key in pairs[0]}
    arrays["sources"] = np.array(sorted(str(c.resolve()) for c in cohorts))
    arrays["skipped"] = np.array(skipped, dtype=str)
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return len(pairs)


def pairs_for(out: Path, cohorts: list[Path], workers: int, log: Callable[[str], None]) -> np.lib.npyio.NpzFile:
    """The pairs file of `cohorts`, built unless `out` already holds the pairs of exactly these cohorts; the patients
    left out of it are logged."""
    wanted = sorted(str(c.resolve()) for c in cohorts)
    built_before = False
    if out.is_file():
        with np.load(out) as held:
            built_before = sorted(held["sources"].tolist()) == wanted
    if built_before:
        log(f"pairs: {out} (built before)")
    else:
        start = time.time()
        n = build_pairs(out, cohorts, workers,
                        lambda done, total: log(f"pairs: {done}/{total} patients") if done % 50 == 0 or done == total
                        else None)
        log(f"pairs: {n} -> {out} in {time.time() - start:.0f} s")
    held = np.load(out)
    skipped = held["skipped"] if "skipped" in held.files else []  # files built before the list was kept
    for failure in skipped:
        log(f"pairs: patient left out: {failure}")
    if len(skipped):
        log(f"pairs: {len(skipped)} patients left out of {out.name} (listed above and in its `skipped`)")
    return held


def augment(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-right flip; the earlier visit moved by up to 2 pixels; each visit's count level scaled on its own."""
    if torch.rand((), generator=generator) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    x = x.clone()
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
    x[:, 2:] = torch.roll(x[:, 2:], (dy, dx), (-2, -1))
    x[:, :2] *= 0.85 + 0.3 * torch.rand((), generator=generator)
    x[:, 2:] *= 0.85 + 0.3 * torch.rand((), generator=generator)
    return x.clamp(0, 1.2), y


def loss_of(logit: torch.Tensor, target: torch.Tensor, new_pixel_weight: float = NEW_PIXEL_WEIGHT) -> torch.Tensor:
    """Weighted binary cross-entropy plus soft Dice over the batch (new-lesion pixels are rare)."""
    p = torch.sigmoid(logit)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logit, target, pos_weight=torch.tensor(new_pixel_weight)) + dice


@dataclass
class OperatingPoint:
    """Threshold and smallest area of the network's new lesions, with the validation counts they gave."""

    threshold: float
    min_pixels: int
    sensitivity: tuple[int, int]
    specificity: tuple[int, int]


def choose_operating_point(maps: np.ndarray, n_new: np.ndarray) -> OperatingPoint:
    """The (threshold, smallest area) with the most first-follow-up patients with >= 2 new lesions found at
    specificity >= MIN_SPECIFICITY (then the higher specificity, then the first in the grid); without such a point,
    the most specific one."""
    truth = n_new >= 2
    best = None
    for threshold in THRESHOLDS:
        for min_pixels in MIN_PIXELS:
            called = np.array([len(area_masks(m, threshold, min_pixels)) >= 2 for m in maps], bool)
            tp, tn = int((called & truth).sum()), int((~called & ~truth).sum())
            specificity = tn / max(1, int((~truth).sum()))
            key = (specificity >= MIN_SPECIFICITY, tp if specificity >= MIN_SPECIFICITY else 0, specificity)
            if best is None or key > best[0]:
                best = (key, OperatingPoint(threshold, min_pixels, (tp, int(truth.sum())), (tn, int((~truth).sum()))))
    return best[1]


def train_change_network(out: str | Path, cohorts: list[Path], val_cohorts: list[Path], epochs: int = 24,
                         lr: float = 2e-3, batch: int = 8, resume: bool = False, workers: int = 2, seed: int = 0,
                         progress: bool = True, new_pixel_weight: float = NEW_PIXEL_WEIGHT,
                         precision: str = "fp32", channels: Sequence[int] = CHANNELS) -> Path:
    """Build the pairs, train (resuming after the last finished epoch with `resume`), choose the operating point on
    the validation cohorts' first follow-ups and write RUN/change_net.pt.

    `precision`: the training forward pass in fp32, bf16 (autocast; the loss and the weights stay fp32) or auto
    (bf16 where the CPU runs it faster, `device.choose_precision`). The operating point is chosen in fp32, as
    `bonescan followup` runs the network. `channels`: the U-Net's channels per level (CHANNELS by default; the file
    keeps them, so `bonescan followup` rebuilds the same network)."""
    from tqdm import tqdm

    out = Path(out)
    checkpoint_path = out / "checkpoint.pt"
    if epochs < 1 or batch < 1:
        raise ConfigError("bonescan followup-train", f"epochs and batch must be >= 1, got {epochs} and {batch}")
    if not new_pixel_weight > 0:
        raise ConfigError("--new-pixel-weight", f"must be > 0, got {new_pixel_weight}")
    channels = check_unet_channels(channels, "--channels")
    chosen = choose_precision(torch.device("cpu"), precision)
    if checkpoint_path.exists() and not resume:
        raise RunError(out, "holds a checkpoint already: --resume continues it, or give another --out")
    out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # `--val A B` gives B to training (one value per option): say which is which before hours of work
    log(f"training on {len(cohorts)} cohort(s): {', '.join(map(str, cohorts))}; choosing the operating point on "
        f"{len(val_cohorts)} (--val, once per cohort): {', '.join(map(str, val_cohorts))}")
    both = sorted({str(c.resolve()) for c in cohorts} & {str(c.resolve()) for c in val_cohorts})
    if both:
        log(f"warning: {', '.join(both)} both trains and chooses the operating point: its figures will be optimistic")
    train_pairs = pairs_for(out / "pairs_train.npz", cohorts, workers, log)
    val_pairs = pairs_for(out / "pairs_val.npz", val_cohorts, workers, log)
    first = val_pairs["visit"] == 1  # ">= 2 new lesions" is the first follow-up's question
    positives = int((val_pairs["n_new"][first] >= 2).sum())
    if positives == 0 or positives == int(first.sum()):  # checked before training, not after
        raise ConfigError(", ".join(map(str, val_cohorts)), f"the validation cohorts need first follow-ups with and "
                                                            f"without >= 2 new lesions to choose the threshold; "
                                                            f"{positives} of {int(first.sum())} have them")
    images, masks = train_pairs["x"], train_pairs["y"]
    torch.manual_seed(seed)
    net = ChangeNet(channels).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, len(images) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    first_epoch = 0
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if state["epochs"] != epochs or state["steps"] != steps:
            raise RunError(checkpoint_path, f"was trained for {state['epochs']} epochs of {state['steps']} steps; "
                                            f"resume with the same --epochs, batch and cohorts")
        trained_with = tuple(state.get("channels", CHANNELS))  # checkpoints written before --channels: the default
        if trained_with != channels:
            raise RunError(checkpoint_path, f"was trained with channels {','.join(map(str, trained_with))}; resume "
                                            f"with the same --channels (got {','.join(map(str, channels))})")
        if state.get("precision", "fp32") != chosen.name:
            raise RunError(checkpoint_path, f"was trained in {state.get('precision', 'fp32')}; resume with the same "
                                            f"--precision (got {chosen.name})")
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        history, first_epoch = list(state["history"]), int(state["epoch"])
        log(f"resuming after epoch {first_epoch}")
    log(f"training in {chosen.name}: {epochs} epochs of {steps} batches of {batch} pairs; channels "
        f"{','.join(map(str, channels))} ({sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters)")
    for epoch in range(first_epoch, epochs):
        net.train()
        order, start, losses = torch.randperm(len(images), generator=generator).numpy(), time.time(), []
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress,
                   file=sys.stderr)
        for step in range(steps):
            rows = np.sort(order[step * batch:(step + 1) * batch])
            x, y = augment(torch.from_numpy(images[rows].astype(np.float32)),
                           torch.from_numpy(masks[rows].astype(np.float32)), generator)
            with chosen.autocast():
                logit = net(x.contiguous(memory_format=torch.channels_last))
            loss = loss_of(logit.float(), y, new_pixel_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        bar.close()
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(time.time() - start, 1)})
        write_torch_atomic(checkpoint_path, {
            "net": net.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "generator": generator.get_state(), "history": history, "epoch": epoch + 1, "epochs": epochs,
            "steps": steps, "precision": chosen.name, "channels": list(channels)})
        write_text_atomic(out / "metrics.csv", pd.DataFrame(history).to_csv(index=False))
        log(f"epoch {epoch + 1}/{epochs}: loss {history[-1]['loss']:.4f}, {history[-1]['seconds']:.0f} s")
    point = choose_operating_point(probability_maps(net, val_pairs["x"][first]), val_pairs["n_new"][first])
    log(f"operating point on the validation cohorts: threshold {point.threshold}, areas of >= {point.min_pixels} "
        f"pixels; >= 2 new lesions: sensitivity {point.sensitivity[0]}/{point.sensitivity[1]}, specificity "
        f"{point.specificity[0]}/{point.specificity[1]}")
    trained_on = {"cohorts": [str(c) for c in cohorts], "val_cohorts": [str(c) for c in val_cohorts],
                  "pairs": int(len(images)), "epochs": epochs, "views": list(VIEWS),
                  "new_pixel_weight": float(new_pixel_weight), "precision": chosen.name,
                  "val_sensitivity": list(point.sensitivity), "val_specificity": list(point.specificity)}
    return save_change_model(out / "change_net.pt", net, point.threshold, point.min_pixels, trained_on)
