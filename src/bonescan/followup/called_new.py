"""What each lesion a comparison calls new on the follow-up truly was, so that a false ">= 2 new lesions" says what
fooled the judge: the specificity side of `fates`, which traces the true new lesions.

A lesion the rules call new (the outlines of its follow-up hotspots) or an area of the change network (its outline
in the follow-up study's pixels) takes the first of KINDS among the follow-up's truth findings it overlaps:
- new metastasis: a metastasis the evaluation counts new (`evaluate.new_lesion_ids`, confluent ones as one);
- metastasis seen before: a metastasis shown on an earlier visit (grown, or brighter as in a flare);
- benign, artifact, physiological: a finding of that truth category (bladder, kidneys and injection sites are
  physiological or artifacts as the phantom files them);
- nothing: no finding under it (normal bone, counting noise, or what registration left misaligned).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

from ..lesions.truth import LesionTruth
from ..study import VIEWS

KINDS = ("new metastasis", "metastasis seen before", "benign", "artifact", "physiological", "nothing")
JUDGES = ("rules", "network")  # each names a PatientResult count: rules_new, network_new
JUDGE_NAMES = {"rules": "rules", "network": "change network"}  # as reports print them


def kind_map(truth: LesionTruth, confluent_instances: np.ndarray, new_ids: Iterable[int]) -> np.ndarray:
    """[2 views, H, W] index into KINDS of each pixel of the follow-up truth ("nothing" off every finding).
    `confluent_instances`: `truth.confluent_metastases()[0]`, whose lesion ids `new_ids` are."""
    seen_before = KINDS.index("metastasis seen before")
    by_finding = np.array([KINDS.index("nothing")] + [seen_before if c == "metastasis" else KINDS.index(c)
                                                      for c in truth.category], np.int8)
    codes = by_finding[truth.instances]
    new = np.isin(confluent_instances, list(new_ids)) & (confluent_instances > 0)
    codes[new & (codes == seen_before)] = KINDS.index("new metastasis")
    return codes


def _kind_under(codes: np.ndarray, view: str, box: tuple[int, int, int, int], mask: np.ndarray | None) -> int:
    r0, c0, r1, c1 = box
    window = codes[VIEWS.index(view), max(0, r0):max(0, r1), max(0, c0):max(0, c1)]
    if mask is not None and mask.shape == window.shape:
        window = window[mask]
    return int(window.min()) if window.size else KINDS.index("nothing")


def kind_at(codes: np.ndarray, hotspots) -> int:
    """Index into KINDS of one lesion's hotspots on the follow-up: the first kind any of their outlines overlaps."""
    return min(_kind_under(codes, h.view, h.box, h.mask) for h in hotspots)


def called_new_kinds(comparison, codes: np.ndarray) -> dict[str, dict[str, int]]:
    """Per judge (JUDGES), how many of the follow-up's lesions it called new were of each of KINDS; the network's
    counts are empty without a change network."""
    counts = {judge: Counter() for judge in JUDGES}
    called = set(comparison.followup.new)
    for lesion in comparison.lesions:
        hotspots = lesion.hotspots.get(1, []) if lesion.number in called else []
        if hotspots:
            counts["rules"][KINDS[kind_at(codes, hotspots)]] += 1
    if comparison.network is not None:
        for area in comparison.network.followup:
            counts["network"][KINDS[_kind_under(codes, area.view, area.box, area.mask)]] += 1
    by_kind = {judge: {kind: counts[judge][kind] for kind in KINDS} for judge in JUDGES}
    if comparison.network is None:
        by_kind["network"] = {}  # no change network ran: nothing to count, not zero of each
    return by_kind
