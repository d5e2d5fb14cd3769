"""Hotspots of several visits linked into numbered lesions, and what changed between two visits.

A lesion is what one bone focus leaves across views and visits:
- between visits, in each view, hotspots are paired one to one (Hungarian assignment on distance) after the
  later study is registered to the baseline, when they lie within MATCH_MM; a hotspot of the newest visit is
  first paired with the visit before it, and what stays unpaired with the visits before that;
- within a visit, an anterior and a posterior hotspot are one lesion when they show one focus from both sides
  (`lesions.pairing.pair_views`: a vertebra shows in both views), and both belong to lesions first seen on the
  same visit: in a spine full of metastases a new focus must not be joined, through the other view, to an old one
  nearby.
All hotspots take part, benign ones too, so that a focus the reader calls benign on one visit and malignant on the
next is not counted as new. A lesion is reported when it is malignant on at least one visit, or new.

Status of a lesion on a later visit against reference visits: new (absent on every reference, and judged new: with a
network reader by the count images, `uptake`: malignant now with its uptake risen since the baseline, or a fainter
candidate whose uptake rose clearly),
resolved (malignant on the first reference, absent now), persistent (now and on a reference), grown (persistent,
and its larger view's area is at least GROWTH times what it was on the latest reference showing it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..lesions.hotspots import Hotspot, StudyLesions
from ..lesions.pairing import pair_nearest, pair_views
from ..study import VIEWS
from .register import ViewTransform

MATCH_MM = 20.0  # vertebral bodies are ~25-30 mm apart: a gate below that keeps neighbours apart
GROWTH = 1.25


@dataclass
class Lesion:
    """One focus followed across visits: its hotspots per visit (one per view at most, usually)."""

    number: int
    hotspots: dict[int, list[Hotspot]]
    thresholds: list[float] = field(repr=False)
    known_uid: str | None = field(default=None, repr=False)  # its tracking UID in an earlier follow-up report

    def present(self, visit: int) -> bool:
        return bool(self.hotspots.get(visit))

    def malignant(self, visit: int) -> bool:
        return any(h.malignancy >= self.thresholds[visit] for h in self.hotspots.get(visit, []))

    @property
    def reported(self) -> bool:
        """Malignant on some visit: a lesion of the report whatever changed (a fainter one only when new)."""
        return any(self.malignant(v) for v in self.hotspots)

    def area(self, visit: int) -> float:
        return max((h.area_mm2 for h in self.hotspots.get(visit, [])), default=0.0)

    @property
    def tracking_uid(self) -> str:
        """The UID an earlier follow-up report gave it (`carry_tracking_uids`), else that of its hotspot on the
        earliest visit showing it (anterior first): the follow-up report names the lesion as that study's own
        report names the hotspot, one finding to a viewer."""
        if self.known_uid:
            return self.known_uid
        first = min(self.hotspots)
        return min(self.hotspots[first], key=lambda h: (VIEWS.index(h.view), h.number)).uid

    @property
    def region(self) -> str:
        """The region named most often by its hotspots, latest visit first on a tie."""
        names = [h.region for v in sorted(self.hotspots, reverse=True) for h in self.hotspots[v] if h.region]
        return Counter(names).most_common(1)[0][0] if names else ""


def carry_tracking_uids(lesions: list[Lesion], known: dict[str, str]) -> None:
    """Give each lesion the tracking UID an earlier report gave it: `known` maps a hotspot's UID to the tracking
    UID of the lesion it belonged to there. A lesion takes it through its hotspots on its earliest visit; a UID
    two lesions would share (the earlier report had joined what is now two) goes to the first only, and none
    that another lesion's own hotspot UID already names."""
    used = {lesion.tracking_uid for lesion in lesions}
    for lesion in lesions:
        first = min(lesion.hotspots)
        for hotspot in sorted(lesion.hotspots[first], key=lambda h: (VIEWS.index(h.view), h.number)):
            uid = known.get(hotspot.uid)
            if uid and uid not in used:
                used.discard(lesion.tracking_uid)
                lesion.known_uid = uid
                used.add(uid)
                break


@dataclass
class MatchedPair:
    """Two hotspots of one view linked between an earlier and a later visit, and their distance after
    registration (mm, in the baseline's pixel frame)."""

    earlier: int
    later: int
    view: str
    distance_mm: float
    first: Hotspot = field(repr=False)
    second: Hotspot = field(repr=False)


@dataclass
class Linking:
    lesions: list[Lesion]
    pairs: list[MatchedPair]


class _Sets:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def link_lesions(lesions: list[StudyLesions], transforms: list[dict[str, ViewTransform]],
                 spacings: list[tuple[float, float]], widths: list[int], floor_share: float | None = None) -> Linking:
    """Link the hotspots of visits (baseline first) into lesions; `transforms[v]` maps visit v onto the baseline.

    Kept: lesions malignant on some visit, and with `floor_share`, also those whose malignancy reaches that share
    of the visit's threshold on some visit (candidates for a faint new lesion; `drop_unreported` removes those
    that turn out not new).

    Visit by visit: first each view's hotspots are paired with earlier visits, then anterior and posterior hotspots
    are paired within the visit, but only those whose lesions were first seen on the same visit, so a new focus
    seen from the front is never joined to an old one seen from behind (which would hide it).
    """
    nodes: list[tuple[int, Hotspot]] = [(v, h) for v, result in enumerate(lesions) for h in result.hotspots]
    index = {id(h): i for i, (_, h) in enumerate(nodes)}
    sets = _Sets(len(nodes))
    base_scale = np.array(spacings[0])
    by_view: dict[tuple[int, str], list[Hotspot]] = {(v, w): [h for h in r.hotspots if h.view == w]
                                                      for v, r in enumerate(lesions) for w in VIEWS}
    at_baseline = {(v, w): transforms[v][w].to_fixed(np.array([h.centroid for h in hs]).reshape(-1, 2))
                   if hs else np.zeros((0, 2)) for (v, w), hs in by_view.items()}
    pairs: list[MatchedPair] = []
    followed: set[int] = set()  # hotspots already paired with a later visit: no longer open to older gaps
    for v in range(len(lesions)):
        # Between visits, view by view, in the baseline frame: the visit before first, then, for what stays
        # unpaired, hotspots of earlier visits that were missing since (a focus not seen on the visit between).
        for w in VIEWS:
            todo = list(range(len(by_view[(v, w)])))
            for u in range(v - 1, -1, -1):
                open_ = [j for j, h in enumerate(by_view[(u, w)]) if id(h) not in followed]
                if not todo or not open_:
                    continue
                found = pair_nearest(at_baseline[(v, w)][todo], at_baseline[(u, w)][open_], base_scale, MATCH_MM)
                for i, j, distance in found:
                    first, second = by_view[(u, w)][open_[j]], by_view[(v, w)][todo[i]]
                    sets.join(index[id(first)], index[id(second)])
                    followed.add(id(first))
                    pairs.append(MatchedPair(u, v, w, distance, first, second))
                done = {todo[i] for i, _, _ in found}
                todo = [k for k in todo if k not in done]
        # Anterior-posterior pairs within the visit, among lesions first seen on the same visit.
        first_seen = _first_seen(sets, nodes)
        front, back = by_view[(v, "anterior")], by_view[(v, "posterior")]
        for since in sorted({first_seen[sets.find(index[id(h)])] for h in front + back}):
            f = [h for h in front if first_seen[sets.find(index[id(h)])] == since]
            b = [h for h in back if first_seen[sets.find(index[id(h)])] == since]
            for i, j, _ in pair_views(f, b, widths[v], spacings[v]):
                if sets.find(index[id(f[i])]) != sets.find(index[id(b[j])]):
                    sets.join(index[id(f[i])], index[id(b[j])])
    groups: dict[int, dict[int, list[Hotspot]]] = {}
    for i, (v, h) in enumerate(nodes):
        groups.setdefault(sets.find(i), {}).setdefault(v, []).append(h)
    thresholds = [r.threshold for r in lesions]
    found_lesions = [Lesion(0, g, thresholds) for g in groups.values()]
    found_lesions = [les for les in found_lesions if les.reported or (
        floor_share is not None and any(h.malignancy >= floor_share * thresholds[v]
                                        for v, hs in les.hotspots.items() for h in hs))]
    found_lesions.sort(key=lambda les: (min(les.hotspots), _first_row(les, at_baseline, by_view)))
    for number, lesion in enumerate(found_lesions, 1):
        lesion.number = number
    return Linking(found_lesions, pairs)


def _first_seen(sets: _Sets, nodes: list[tuple[int, Hotspot]]) -> dict[int, int]:
    """Earliest visit of each current lesion (by set root)."""
    first: dict[int, int] = {}
    for i, (v, _) in enumerate(nodes):
        root = sets.find(i)
        first[root] = min(first.get(root, v), v)
    return first


def _first_row(lesion: Lesion, at_baseline, by_view) -> float:
    v = min(lesion.hotspots)
    h = lesion.hotspots[v][0]
    return float(at_baseline[(v, h.view)][by_view[(v, h.view)].index(h)][0])


@dataclass
class Change:
    """What changed on visit `visit` against the reference visits (resolved: against the first of them)."""

    visit: int
    reference: list[int]
    new: list[int]
    resolved: list[int]
    persistent: list[int]
    grown: list[int]
    by_region: dict[str, dict[str, int]]
    bsi_before: float
    bsi_after: float
    bsi_by_region: dict[str, float]  # change per region, percentage points
    # Malignant now and unseen before by the reader, but the count image shows the uptake was already there
    # (`uptake.UptakeCheck`): not counted new.
    already_there: list[int] = field(default_factory=list)
    # New although below the malignancy threshold: a candidate focus whose uptake rose clearly (`uptake`).
    new_below_threshold: list[int] = field(default_factory=list)

    @property
    def bsi_change(self) -> float:
        return self.bsi_after - self.bsi_before

    def to_json(self) -> dict:
        return {"visit": self.visit, "reference": self.reference, "n_new": len(self.new), "new": self.new,
                "resolved": self.resolved, "persistent": self.persistent, "grown": self.grown,
                "by_region": self.by_region, "bsi_before": round(self.bsi_before, 3),
                "bsi_after": round(self.bsi_after, 3), "bsi_change": round(self.bsi_change, 3),
                "already_there": self.already_there, "new_below_threshold": self.new_below_threshold,
                "bsi_change_by_region": {k: round(d, 3) for k, d in self.bsi_by_region.items() if abs(d) >= 5e-4}}


STATUSES = ("new", "resolved", "persistent", "grown")


class NewLesionJudge(Protocol):
    """Decides which lesions unseen on the reference visits are new on a later visit (`uptake.UptakeCheck`: the
    count images' rules)."""

    def new_among(self, candidates: list[Lesion], visit: int, reference: list[int]) -> set[int]:
        """Numbers of the `candidates` (present on `visit`, absent on every reference visit) that are new."""
        ...


def unseen_before(lesions: list[Lesion], visit: int, reference: list[int]) -> list[Lesion]:
    """The lesions present on `visit` and on none of the `reference` visits: what a new-lesion judge is offered."""
    return [les for les in lesions if les.present(visit) and not any(les.present(u) for u in reference)]


def change_between(lesions: list[Lesion], results: list[StudyLesions], visit: int, reference: list[int],
                   judge: NewLesionJudge | None = None) -> Change:
    """The change on `visit` against `reference` visits: lesion numbers per status, per region, and BSI.

    A lesion present on `visit` and on no reference visit is new when the `judge` says so; a malignant one it does
    not call new is listed in `already_there` instead. Without a judge (a reader whose calls are the truth) every
    such malignant lesion is new. Lesions that are neither malignant on a visit nor new take no part.
    """
    first = reference[0]
    unseen = unseen_before(lesions, visit, reference)
    new = judge.new_among(unseen, visit, reference) if judge is not None else \
        {les.number for les in unseen if les.malignant(visit)}
    status: dict[str, list[int]] = {name: [] for name in STATUSES}
    regions: dict[str, dict[str, int]] = {}
    already_there: list[int] = []
    below_threshold: list[int] = []
    for lesion in lesions:
        seen_before = any(lesion.present(u) for u in reference)
        tags = []
        if lesion.number in new:
            tags.append("new")
            if not lesion.malignant(visit):
                below_threshold.append(lesion.number)
        elif lesion.malignant(visit) and not seen_before:
            already_there.append(lesion.number)
            continue
        elif not lesion.reported:
            continue
        elif lesion.malignant(first) and not lesion.present(visit):
            tags.append("resolved")
        elif lesion.present(visit) and seen_before:
            tags.append("persistent")
            last = max(u for u in reference if lesion.present(u))
            if lesion.area(visit) >= GROWTH * max(lesion.area(last), 1e-6):
                tags.append("grown")
        for tag in tags:
            status[tag].append(lesion.number)
            row = regions.setdefault(lesion.region or "outside the skeleton", dict.fromkeys(STATUSES, 0))
            row[tag] += 1
    before, after = results[first], results[visit]
    names = sorted(set(before.bsi_by_region) | set(after.bsi_by_region))
    delta = {n: after.bsi_by_region.get(n, 0.0) - before.bsi_by_region.get(n, 0.0) for n in names}
    return Change(visit, list(reference), status["new"], status["resolved"], status["persistent"], status["grown"],
                  regions, before.bsi, after.bsi, delta, already_there, below_threshold)


def drop_unreported(lesions: list[Lesion], changes: list[Change]) -> list[Lesion]:
    """The lesions worth reporting (malignant on a visit, or new in a change), numbered 1.. in the same order;
    the changes' lesion numbers are rewritten to match."""
    new = {n for change in changes for n in change.new}
    kept = [les for les in lesions if les.reported or les.number in new]
    renumber = {les.number: k for k, les in enumerate(kept, 1)}
    for change in changes:
        for name in (*STATUSES, "already_there", "new_below_threshold"):
            setattr(change, name, [renumber[n] for n in getattr(change, name) if n in renumber])
    for les in kept:
        les.number = renumber[les.number]
    return kept
