"""A change network for follow-up: new lesions seen from both visits at once (an experiment, not a command yet).

The follow-up rules (`bonescan.followup`) decide which of the lesion network's hotspots are new; the lesions they
cannot reach are foci the network never marks and new foci inside an old lesion's outline. This network sees the
follow-up study and the earlier one registered onto it (`bonescan.followup.register`), both preprocessed as the
lesion network's input, and paints the pixels of lesions unseen on every earlier visit. Its truth is the synthetic
follow-up's finding identities (`bonescan synth --follow-up`), as `bonescan followup --evaluate` counts them.

    python scripts/change_network.py pairs OUT.npz COHORT...      # (follow-up, registered earlier) pairs + truth
    python scripts/change_network.py train TRAIN.npz NET.pt --epochs 24 [--init NET.pt --lr 1e-3]
    python scripts/change_network.py evaluate NET.pt VAL.npz TEST.npz [--rules VAL_DIRS TEST_DIRS]

`evaluate` chooses the probability threshold and the smallest component on VAL.npz (highest patient sensitivity
for ">= 2 new lesions" at specificity >= 0.92), then reports both sets; with `--rules` (comma-separated output
folders of `bonescan followup --manifest ... --evaluate`, one per cohort, in the order the pairs were built from) also
the rules' calls, either one (OR), and their union (the network's components away from every new lesion of the
rules counted as more). The README's follow-up section gives the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from scipy import ndimage

from bonescan.followup.evaluate import _new_lesions, _shown, _visit_files, manifest_patients, truth_of
from bonescan.followup.register import ViewTransform, register_study
from bonescan.fileio import atomic_path
from bonescan.followup.visits import load_visit
from bonescan.lesions.dataset import targets_in_network_geometry
from bonescan.preprocess import PreprocessConfig, preprocess_views
from bonescan.study import VIEWS

PREPROCESS = PreprocessConfig(height=512, width=128, normalization="counts")  # the lesion network's input
CHANNELS = (16, 32, 64, 128, 128)
MIN_SPECIFICITY = 0.92
NEAR_RULE_LESION = 3  # network pixels (~8 mm): a component this close to a rule's new lesion is that lesion


# --- pairs --------------------------------------------------------------------------------------------------------

def warp_onto(prior: np.ndarray, current: np.ndarray, transform: ViewTransform) -> np.ndarray:
    """The earlier view resampled onto the later view's pixel grid (`transform` maps later -> earlier, in mm)."""
    moving = sitk.GetImageFromArray(np.asarray(prior, np.float32))
    moving.SetSpacing((transform.moving_spacing[1], transform.moving_spacing[0]))
    fixed = sitk.GetImageFromArray(np.zeros(current.shape, np.float32))
    fixed.SetSpacing((transform.fixed_spacing[1], transform.fixed_spacing[0]))
    return sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform._sitk(), sitk.sitkLinear, 0.0))


def patient_pairs(job: tuple[Path, pd.DataFrame]) -> list[dict]:
    """Each later visit of one patient with the visit before it registered onto it, and its new-lesion mask."""
    root, rows = job
    rows = rows.head(3)
    files = [[str(root / f) for f in _visit_files(row)] for _, row in rows.iterrows()]
    visits = [load_visit(f if len(f) == 2 else f[0], "visit") for f in files]
    truths = truth_of(rows.assign(truth=[str(root / t) for t in rows["truth"]]))
    seen, pairs = set(), []
    for k in range(1, len(visits)):
        seen |= _shown(truths[k - 1])
        prior, current = visits[k - 1].study, visits[k].study
        transforms = register_study(current, prior)  # later = fixed, earlier = moving
        warped = [warp_onto(getattr(prior, v), getattr(current, v), transforms[v]) for v in VIEWS]
        confluent = truths[k].confluent_metastases()
        new = _new_lesions(truths[k], seen, confluent)
        _, hot = targets_in_network_geometry(truths[k].regions, confluent[0], new, PREPROCESS)
        image = np.concatenate([preprocess_views(current.anterior, current.posterior, PREPROCESS),
                                preprocess_views(warped[0], warped[1], PREPROCESS)])
        pairs.append({"x": image.astype(np.float16), "y": (hot == 2).astype(np.uint8), "n_new": len(new),
                      "visit": k, "patient": str(rows["patient_id"].iloc[0]), "cohort": str(root),
                      "change": str(rows["change"].iloc[0]) if "change" in rows else ""})
    return pairs


def build_pairs(out: Path, cohorts: list[Path], workers: int = 2) -> int:
    jobs = [(root, visits) for root in cohorts for visits in manifest_patients(root / "manifest.csv")[1].values()]
    pairs: list[dict] = []
    if workers <= 1:
        for job in jobs:
            pairs += patient_pairs(job)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for found in pool.map(patient_pairs, jobs, chunksize=4):
                pairs += found
    arrays = {key: np.stack([p[key] for p in pairs]) if key in ("x", "y") else np.array([p[key] for p in pairs])
              for key in pairs[0]}
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return len(pairs)


# --- network and training -----------------------------------------------------------------------------------------

class ChangeNet(torch.nn.Module):
    """MONAI UNet over (later anterior, posterior, earlier anterior, posterior, row, column) -> new-lesion logit per
    view (posterior mirrored, as the lesion network's)."""

    def __init__(self, channels: tuple[int, ...] = CHANNELS):
        super().__init__()
        self.unet = UNet(spatial_dims=2, in_channels=6, out_channels=2, channels=channels,
                         strides=(2,) * (len(channels) - 1), num_res_units=0, norm="batch", act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        rows = torch.linspace(-1, 1, h, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
        cols = torch.linspace(-1, 1, w, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        return self.unet(torch.cat([x, rows, cols], 1))


def augment(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-right flip; the earlier visit moved by up to 2 pixels (a registration residual); each visit's count
    level scaled on its own."""
    if torch.rand((), generator=generator) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    x = x.clone()
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
    x[:, 2:] = torch.roll(x[:, 2:], (dy, dx), (-2, -1))
    x[:, :2] *= 0.85 + 0.3 * torch.rand((), generator=generator)
    x[:, 2:] *= 0.85 + 0.3 * torch.rand((), generator=generator)
    return x.clamp(0, 1.2), y


def train(pairs: Path, out: Path, epochs: int, lr: float = 2e-3, init: Path | None = None, batch: int = 8) -> None:
    """BCE (new-lesion pixels weighted 10) plus a soft Dice over the batch; one-cycle schedule; checkpoint per epoch."""
    data = np.load(pairs)
    images, masks = data["x"], data["y"]
    torch.manual_seed(0)
    net = ChangeNet()
    if init is not None:
        net.load_state_dict(torch.load(init))
    net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, len(images) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        net.train()
        order, start, losses = torch.randperm(len(images), generator=generator).numpy(), time.time(), []
        for step in range(steps):
            rows = np.sort(order[step * batch:(step + 1) * batch])
            x, y = augment(torch.from_numpy(images[rows].astype(np.float32)),
                           torch.from_numpy(masks[rows].astype(np.float32)), generator)
            logit = net(x.contiguous(memory_format=torch.channels_last))
            p = torch.sigmoid(logit)
            loss = (F.binary_cross_entropy_with_logits(logit, y, pos_weight=torch.tensor(10.0))
                    + 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        with atomic_path(out) as tmp:
            torch.save(net.state_dict(), tmp)
        print(f"epoch {epoch + 1}/{epochs} loss {np.mean(losses):.4f} {time.time() - start:.0f} s", flush=True)


# --- evaluation ---------------------------------------------------------------------------------------------------

def probability_maps(net: ChangeNet, images: np.ndarray) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 16):
            x = torch.from_numpy(images[i:i + 16].astype(np.float32)).contiguous(memory_format=torch.channels_last)
            out.append(torch.sigmoid(net(x)).numpy())
    return np.concatenate(out)


def components(probability: np.ndarray, threshold: float, min_pixels: int) -> list[np.ndarray]:
    """New lesions: connected areas above `threshold` of both views laid over each other (posterior mirrored),
    so a lesion seen in both views counts once."""
    labels, n = ndimage.label(probability.max(0) > threshold, structure=np.ones((3, 3)))
    return [area for area in (labels == k for k in range(1, n + 1)) if area.sum() >= min_pixels]


def patient_calls(called: np.ndarray, truth: np.ndarray, change: np.ndarray) -> str:
    flare = change == "flare"
    return (f"sensitivity {int((called & truth).sum())}/{int(truth.sum())}, specificity "
            f"{int((~called & ~truth).sum())}/{int((~truth).sum())}, flare called {int(called[flare].sum())}/"
            f"{int(flare.sum())}")


def rule_lesion_points(folder: Path, patient: str, shape: tuple[int, int]) -> list[tuple[float, float]]:
    """The follow-up hotspots of the rules' new lesions, in the network's grid (posterior mirrored)."""
    doc = json.loads((folder / patient / "followup.json").read_text())
    new, (rows, cols), points = set(doc["followup"]["new"]), shape, []
    for lesion in doc["lesions"]:
        for hotspot in lesion["visits"].get("follow-up", []) if lesion["number"] in new else []:
            r, c = hotspot["centroid"]
            c = c if hotspot["view"] == "anterior" else cols - 1 - c
            points.append(((r + 0.5) * PREPROCESS.height / rows - 0.5, (c + 0.5) * PREPROCESS.width / cols - 0.5))
    return points


def evaluate(net_path: Path, sets: list[Path], rules: list[str] | None) -> None:
    net = ChangeNet()
    net.load_state_dict(torch.load(net_path))
    net.eval()
    chosen = None
    for index, path in enumerate(sets):
        data = np.load(path)
        first = data["visit"] == 1  # ">= 2 new lesions" is the first follow-up's question
        maps = probability_maps(net, data["x"][first])
        truth, change = data["n_new"][first] >= 2, data["change"][first]
        if chosen is None:  # the first set chooses
            grid = [(t, a) for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9) for a in (1, 2, 3, 5, 8)]
            scores = []
            for t, a in grid:
                called = np.array([len(components(m, t, a)) >= 2 for m in maps])
                specificity = (~called & ~truth).sum() / max(1, (~truth).sum())
                scores.append(((called & truth).sum() if specificity >= MIN_SPECIFICITY else -1, specificity))
            chosen = grid[max(range(len(grid)), key=scores.__getitem__)]  # the first of equals
            print(f"chosen on {path}: threshold {chosen[0]}, components of >= {chosen[1]} pixels")
        found = [components(m, *chosen) for m in maps]
        counts = np.array([len(f) for f in found])
        print(f"{path}: change network {patient_calls(counts >= 2, truth, change)}; count exact "
              f"{np.mean(counts == data['n_new'][first]):.2f}")
        if not rules:
            continue
        cohorts = list(dict.fromkeys(data["cohort"][first]))
        folders = dict(zip(cohorts, (Path(f) for f in rules[index].split(","))))
        rule_new, union = [], []
        for cohort, patient, areas in zip(data["cohort"][first], data["patient"][first], found):
            folder = folders[cohort]
            summary = _rule_summary(folder).loc[patient]
            shape = _followup_shape(cohort, patient)
            points = rule_lesion_points(folder, patient, shape)
            near = [ndimage.binary_dilation(area, iterations=NEAR_RULE_LESION) for area in areas]
            extra = sum(not any(n[int(np.clip(round(r), 0, PREPROCESS.height - 1)),
                                  int(np.clip(round(c), 0, PREPROCESS.width - 1))] for r, c in points) for n in near)
            rule_new.append(int(summary["new"]))
            union.append(int(summary["new"]) + extra)
        rule_new, union = np.array(rule_new), np.array(union)
        print(f"{path}: rules {patient_calls(rule_new >= 2, truth, change)}")
        print(f"{path}: either (OR) {patient_calls((rule_new >= 2) | (counts >= 2), truth, change)}")
        print(f"{path}: union {patient_calls(union >= 2, truth, change)}")


@lru_cache(maxsize=None)
def _rule_summary(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "followup_summary.csv").set_index("patient_id")


@lru_cache(maxsize=None)
def _cohort_visits(cohort: str) -> dict[str, pd.DataFrame]:
    return manifest_patients(Path(cohort) / "manifest.csv")[1]


def _followup_shape(cohort: str, patient: str) -> tuple[int, int]:
    """Stored size of the patient's first follow-up (its truth file)."""
    row = _cohort_visits(cohort)[patient].iloc[1]
    return tuple(np.load(Path(cohort) / row["truth"])["instances"].shape[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pairs")
    p.add_argument("out", type=Path)
    p.add_argument("cohorts", type=Path, nargs="+")
    p.add_argument("--workers", type=int, default=2)
    t = sub.add_parser("train")
    t.add_argument("pairs", type=Path)
    t.add_argument("out", type=Path)
    t.add_argument("--epochs", type=int, default=24)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--init", type=Path)
    e = sub.add_parser("evaluate")
    e.add_argument("net", type=Path)
    e.add_argument("sets", type=Path, nargs="+", help="pairs files; the first chooses the operating point")
    e.add_argument("--rules", nargs="+", help="per pairs file: comma-separated `bonescan followup` output folders")
    args = parser.parse_args()
    if args.command == "pairs":
        print(f"{build_pairs(args.out, args.cohorts, args.workers)} pairs -> {args.out}")
    elif args.command == "train":
        train(args.pairs, args.out, args.epochs, args.lr, args.init)
    else:
        evaluate(args.net, args.sets, args.rules)


if __name__ == "__main__":
    main()
