"""The comparison of one patient's visits: lesions of each visit, registration, linking, change, PCWG3 verdict."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from ..study import VIEWS
from .change_net import ChangeModel, NewArea, apart_from
from .joins import JOINS, check_join
from .match import (Change, Lesion, MatchedPair, carry_tracking_uids, change_between, drop_unreported, link_lesions,
                    unseen_before)
from .pcwg3 import Verdict, pcwg3_verdict
from .readers import LesionReader
from .register import ViewTransform, identity, register_study
from .uptake import FOCUS_FLOOR_SHARE, UptakeCheck
from .visits import Visit, check_visits


# How a verdict's reason names what counted the lesion-based new lesions; any other judge is a learned one.
JUDGE_PHRASES = {"rules": "the rules", "truth": "the truth"}


@dataclass
class Comparison:
    """Everything found when comparing a baseline with a follow-up (and a confirmatory) study."""

    reader: str
    visits: list[Visit]
    transforms: list[dict[str, ViewTransform]]
    lesions: list[Lesion]
    pairs: list[MatchedPair]
    followup: Change  # the follow-up against the baseline (or reference)
    confirmatory: Change | None  # first follow-up: new on neither earlier visit; later scan: against the reference
    verdict: Verdict
    first_followup: bool
    seconds: dict[str, float]
    network: NetworkChange | None = None  # the change network's new lesions, when one was given
    judge: str = "rules"  # what decided which unseen lesions are new (`new_judge`), beside the change network

    @property
    def new_count(self) -> int:
        """New lesions on the follow-up as the verdict counts them (`counted_new`)."""
        return counted_new(self.followup, self.network, "followup")

    @property
    def confirm_new_count(self) -> int | None:
        return counted_new(self.confirmatory, self.network, "confirmatory")

    @property
    def patient_id(self) -> str | None:
        return next((v.study.meta.patient_id for v in self.visits if v.study.meta.patient_id), None)

    def to_json(self) -> dict:
        return {
            "patient_id": self.patient_id, "reader": self.reader, "new_lesion_judge": self.judge,
            "rule": "PCWG3, first follow-up after the start of treatment" if self.first_followup
                    else "PCWG3, later scan against the first post-treatment scan",
            "verdict": self.verdict.to_json(),
            "visits": [{"role": v.role, "source": v.source, "study_uid": v.study.meta.study_uid,
                        "study_date": v.study.meta.study_date, "timepoint_days": v.timepoint,
                        "registration": {w: t.to_json() for w, t in tr.items()} if i else "reference",
                        "n_hotspots": len(v.lesions.hotspots), "n_malignant": v.lesions.n_malignant,
                        "n_malignant_lesions": v.lesions.n_malignant_lesions,
                        "bsi": round(v.lesions.bsi, 3), "superscan": v.lesions.superscan}
                       for i, (v, tr) in enumerate(zip(self.visits, self.transforms))],
            "followup": self.followup.to_json(),
            "confirmatory": self.confirmatory.to_json() if self.confirmatory else None,
            "lesions": [{"number": les.number, "region": les.region, "tracking_uid": les.tracking_uid,
                         "visits": {self.visits[v].role: [h.to_json() for h in hs] for v, hs in sorted(les.hotspots.items())}}
                        for les in self.lesions],
            "change_network": self.network.to_json() if self.network else None,
            "seconds": {k: round(s, 3) for k, s in self.seconds.items()},
        }


@dataclass
class NetworkChange:
    """The change network's new lesions on the follow-up (against the baseline) and on the confirmatory scan (against
    the follow-up on a first follow-up, else against the reference), and how its count joins the rules' (`joins`).
    `*_apart`: the numbers of those that lie on none of the lesions the rules were offered on that scan."""

    model: str
    join: str
    followup: list[NewArea]
    confirmatory: list[NewArea] | None
    followup_apart: list[int] = field(default_factory=list)
    confirmatory_apart: list[int] | None = None

    def to_json(self) -> dict:
        return {"model": self.model, "join": self.join, "followup": [a.to_json() for a in self.followup],
                "confirmatory": [a.to_json() for a in self.confirmatory] if self.confirmatory is not None else None,
                "followup_apart": self.followup_apart, "confirmatory_apart": self.confirmatory_apart}


def compare_visits(visits: Sequence[Visit], reader: LesionReader, first_followup: bool = True,
                   force: bool = False, known_tracking: dict[str, str] | None = None,
                   change_model: ChangeModel | None = None, join: str = "either", judge=None) -> Comparison:
    """Compare visits (baseline, follow-up[, confirmatory]): refuse bad sets first, then read, register, link.

    `known_tracking`: hotspot UID -> the tracking UID an earlier follow-up report gave its lesion, so that a lesion
    keeps one tracking UID from report to report (`match.carry_tracking_uids`).
    `change_model`: the change network, a second judge of new lesions; `join` (`change_net.JOINS`) says how its
    count and the rules' make the count the verdict uses. `judge`: what decides which lesions unseen before are new
    (`new_judge.NewLesionModel`, or anything with `.name` and `.judge(studies, lesions, transforms, change_maps)`);
    by default the hand rules (`uptake.UptakeCheck`). A judge that `uses_change_network` is given the change
    network's probability map of each later visit, so it needs `change_model`."""
    check_join(join)
    visits = list(visits)
    check_visits(visits, force)
    t0 = time.perf_counter()
    for visit in visits:
        visit.lesions = reader.read(visit.study, visit.files)
    t1 = time.perf_counter()
    base = visits[0].study
    transforms = [{w: identity(base.pixel_spacing or (1.0, 1.0)) for w in VIEWS}]
    transforms += [register_study(base, v.study) for v in visits[1:]]
    t2 = time.perf_counter()
    results = [v.lesions for v in visits]
    # A reader that can err must show that the uptake rose where it calls a lesion new, and a faint candidate whose
    # uptake rose clearly is new too (see `uptake`); the truth needs neither.
    exact = getattr(reader, "exact", False)
    later = [visits[1].study, visits[2].study if len(visits) == 3 else None]
    earlier = [visits[0].study, visits[1].study if first_followup else visits[0].study]
    change_maps, maps_seconds = None, 0.0
    if getattr(judge, "uses_change_network", False) and not exact:
        if change_model is None:
            raise ConfigError("--judge", f"the {judge.name} weighs what the change network sees: it needs the change "
                                         "network (--change-net)")
        # computed once: the judge weighs them, the network's own new lesions come from them below
        change_maps = {visit: change_model.probability(after, before)
                       for visit, (after, before) in enumerate(zip(later, earlier), start=1) if after is not None}
        maps_seconds = time.perf_counter() - t2
    if exact:
        check = None
    elif judge is None:
        check = UptakeCheck([v.study for v in visits], results, transforms)
    else:
        check = judge.judge([v.study for v in visits], results, transforms, change_maps)
    judge_name = "truth" if exact else getattr(judge, "name", "rules")
    linking = link_lesions(results, transforms, [v.study.pixel_spacing or (1.0, 1.0) for v in visits],
                           [v.study.anterior.shape[1] for v in visits], None if exact else FOCUS_FLOOR_SHARE)
    references = [[0], [0, 1] if first_followup else [0]][:len(visits) - 1]  # of the follow-up, the confirmatory
    followup = change_between(linking.lesions, results, 1, references[0], check)
    confirmatory = None
    if len(visits) == 3:
        confirmatory = change_between(linking.lesions, results, 2, references[1], check)
    lesions = drop_unreported(linking.lesions, [c for c in (followup, confirmatory) if c])
    if known_tracking:
        carry_tracking_uids(lesions, known_tracking)
    t3 = time.perf_counter()
    network = None
    if change_model is not None:
        areas = [change_model.areas(after, before, visit.lesions, (change_maps or {}).get(n))
                 for n, (after, before, visit) in enumerate(zip(later, earlier, visits[1:]), start=1)
                 if after is not None]
        # what each later visit offered the judge, reported or not (`drop_unreported` leaves linking.lesions whole)
        offered = [[h for lesion in unseen_before(linking.lesions, visit, reference) for h in lesion.hotspots[visit]]
                   for visit, reference in enumerate(references, start=1)]
        apart = [apart_from(found, hotspots, np.shape(after.anterior))
                 for found, hotspots, after in zip(areas, offered, later)]
        network = NetworkChange(change_model.name, join, areas[0], areas[1] if len(areas) > 1 else None,
                                apart[0], apart[1] if len(apart) > 1 else None)
    days = None
    if confirmatory is not None and visits[2].timepoint is not None and visits[1].timepoint is not None:
        days = visits[2].timepoint - visits[1].timepoint
    verdict = pcwg3_verdict(counted_new(followup, network, "followup"),
                            counted_new(confirmatory, network, "confirmatory"), days, first_followup)
    if network is not None:
        rules_counts = _scan_counts(len(followup.new), len(confirmatory.new) if confirmatory else None)
        network_counts = _scan_counts(len(network.followup),
                                      len(network.confirmatory) if network.confirmatory is not None else None)
        if join == "union":
            network_counts += (f"; apart from the lesions judged: {len(network.followup_apart)}"
                               + (f" and {len(network.confirmatory_apart)}" if network.confirmatory_apart is not None
                                  else ""))
        verdict = replace(verdict, reason=f"{verdict.reason} (new lesions counted as the {join} of "
                                          f"{JUDGE_PHRASES.get(judge_name, 'the learned judge')} ({rules_counts}) "
                                          f"and the change network ({network_counts}))")
    verdict = superscan_caveat(verdict, visits)
    t4 = time.perf_counter()
    return Comparison(reader.name, visits, transforms, lesions, linking.pairs, followup, confirmatory,
                      verdict, first_followup, {"read": t1 - t0, "register": t2 - t1, "match": t3 - t2 - maps_seconds,
                                                "change_network": t4 - t3 + maps_seconds, "total": t4 - t0},
                      network, judge_name)


def counted_new(rules: Change | None, network: NetworkChange | None, scan: str) -> int | None:
    """New lesions on one scan ("followup" or "confirmatory") as the verdict counts them: the rules' count, joined
    with the change network's (`change_net.JOINS`) when there is one; None without that scan."""
    if rules is None:
        return None
    if network is None:
        return len(rules.new)
    return JOINS[network.join](len(rules.new), len(getattr(network, scan) or []),
                               len(getattr(network, f"{scan}_apart") or []))


def _scan_counts(followup: int, confirmatory: int | None) -> str:
    return f"{followup} new" + (f", {confirmatory} on the confirmatory scan" if confirmatory is not None else "")


def superscan_caveat(verdict: Verdict, visits: Sequence[Visit]) -> Verdict:
    """The verdict, its reason saying so where a visit shows a superscan pattern (diffuse uptake, `lesions.superscan`):
    that visit's hotspots are no count of lesions, so neither is the number of new ones."""
    diffuse = [f"{v.role} (BSI {v.lesions.bsi:.1f} %)" for v in visits if v.lesions is not None and v.lesions.superscan]
    if not diffuse:
        return verdict
    return replace(verdict, reason=f"{verdict.reason}; superscan pattern (diffuse uptake) on the {', '.join(diffuse)}: "
                                   "its lesions cannot be counted, so the new-lesion count is not reliable; read the "
                                   "studies")
