"""What became of each truly new lesion in a comparison, so that a missed one says where it was lost.

A new metastasis of the follow-up (as the evaluation counts them: `evaluate.truth_changes`) ends in one of FATES,
by the follow-up hotspots that overlap its outline:
- found: a hotspot of a lesion the comparison calls new;
- not called new: a hotspot the reader offered, linked to nothing earlier, that the new-lesion judge (the uptake
  rules, `uptake`) did not call new, or that was too faint to be a candidate;
- under an earlier hotspot: only hotspots linked to a hotspot of the baseline (`match.link_lesions`): the new focus
  was taken for an old one, or outlined together with an old lesion beside it;
- no hotspot: the reader marked nothing there.
Where several overlap, the first of FATES counts. Only "found" and "not called new" are in the judge's reach:
the patients with at least two such lesions bound what any judge of these hotspots could find (an upper bound: two
new foci under one hotspot count twice here and once in the comparison).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

from ..lesions.hotspots import Hotspot
from ..study import VIEWS

FATES = ("found", "not called new", "under an earlier hotspot", "no hotspot")
IN_REACH = ("found", "not called new")  # the lesions a new-lesion judge is offered


def hotspot_fates(comparison) -> list[tuple[Hotspot, str]]:
    """Each hotspot of the follow-up visit with the fate it gives a new lesion under it (FATES[:3])."""
    called = {id(h) for lesion in comparison.lesions if lesion.number in comparison.followup.new
              for h in lesion.hotspots.get(1, [])}
    linked = {id(pair.second) for pair in comparison.pairs if pair.later == 1}
    return [(h, "found" if id(h) in called else "under an earlier hotspot" if id(h) in linked else "not called new")
            for h in comparison.visits[1].lesions.hotspots]


def new_lesion_fates(instances: np.ndarray, new_ids: Iterable[int],
                     hotspots: list[tuple[Hotspot, str]]) -> dict[int, str]:
    """Fate of each new lesion id of the truth instance map `instances` ([2 views, H, W], confluent metastases one
    id), from the hotspots overlapping its outline (`hotspot_fates`)."""
    fates = {}
    for lesion in new_ids:
        found = [fate for hotspot, fate in hotspots if _overlaps(hotspot, instances, lesion)]
        fates[int(lesion)] = min(found, key=FATES.index) if found else "no hotspot"
    return fates


def _overlaps(hotspot: Hotspot, instances: np.ndarray, lesion: int) -> bool:
    r0, c0, r1, c1 = hotspot.box
    window = instances[VIEWS.index(hotspot.view), r0:r1, c0:c1] == lesion
    return bool(hotspot.mask is not None and (window & hotspot.mask).any())


def count_fates(fates: dict[int, str]) -> dict[str, int]:
    """Lesions per fate, every fate named."""
    counts = Counter(fates.values())
    return {fate: counts.get(fate, 0) for fate in FATES}
