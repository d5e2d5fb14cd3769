"""Bone progression by the Prostate Cancer Clinical Trials Working Group 3 rule (Scher et al., J Clin Oncol 2016).

- First follow-up scan after the start of treatment: progression needs at least 2 new lesions compared with the
  baseline, confirmed by at least 2 MORE new lesions on a confirmatory scan at least 6 weeks later ("2+2");
  the date of progression is that of the first follow-up scan. Without such confirmation the new lesions may be
  a flare (or healing) and do not count.
- Later scans: at least 2 new lesions compared with the first post-treatment scan (the reference), confirmed
  when a scan at least 6 weeks later still shows at least 2 new lesions against that reference. A confirmatory
  scan after a first follow-up with fewer than 2 new lesions is such a later scan: 2 or more new lesions on it
  make the verdict "unconfirmed" (awaiting its own confirmation), not "no progression".
A new lesion is a malignant hotspot not seen on the reference (or, for the "+2", on the first follow-up either);
with a lesion network, `uptake` says which of its calls count.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_NEW = 2
CONFIRM_DAYS = 42  # 6 weeks

PROGRESSION = "progression"
UNCONFIRMED = "unconfirmed"
NO_PROGRESSION = "no progression"
STATUSES = (PROGRESSION, UNCONFIRMED, NO_PROGRESSION)


@dataclass(frozen=True)
class Verdict:
    """PCWG3 bone verdict: `status` (progression | unconfirmed | no progression) and the reason in words."""

    status: str
    reason: str

    @property
    def progression(self) -> bool:
        return self.status == PROGRESSION

    def to_json(self) -> dict:
        return {"status": self.status, "reason": self.reason}


def pcwg3_verdict(new_lesions: int, confirm_lesions: int | None = None, days_to_confirm: int | None = None,
                  first_followup: bool = True) -> Verdict:
    """The verdict from lesion counts.

    new_lesions: new lesions on the follow-up scan against the reference (the baseline for a first follow-up).
    confirm_lesions: on the confirmatory scan, for a first follow-up the new lesions seen on neither the baseline
        nor the follow-up; for a later scan, the new lesions against the reference. None: no confirmatory scan.
    days_to_confirm: days from the follow-up to the confirmatory scan (None: unknown).
    """
    if new_lesions < 0 or (confirm_lesions is not None and confirm_lesions < 0):
        raise ValueError("lesion counts cannot be negative")
    scan = "first follow-up" if first_followup else "follow-up"
    reference = "baseline" if first_followup else "reference scan"
    if new_lesions < MIN_NEW and first_followup and confirm_lesions is not None and confirm_lesions >= MIN_NEW:
        # The confirmatory scan is itself a later scan: >= 2 new against the first follow-up start the later rule.
        return Verdict(UNCONFIRMED, f"{_lesions(new_lesions)} new on the first follow-up, but "
                                    f"{_lesions(confirm_lesions)} new on the later scan against it: progression by "
                                    f"the later-scan rule once a scan >= {CONFIRM_DAYS // 7} weeks after that "
                                    f"confirms them")
    if new_lesions < MIN_NEW:
        return Verdict(NO_PROGRESSION, f"{_lesions(new_lesions)} new on the {scan} against the {reference} "
                                       f"(progression needs >= {MIN_NEW})")
    wanted = (f">= {MIN_NEW} more new lesions" if first_followup
              else f">= {MIN_NEW} new lesions against the reference")
    if confirm_lesions is None:
        return Verdict(UNCONFIRMED, f"{_lesions(new_lesions)} new on the {scan}; confirmation pending: needs a scan "
                                    f">= {CONFIRM_DAYS // 7} weeks later with {wanted}")
    if days_to_confirm is None:
        return Verdict(UNCONFIRMED, f"{_lesions(new_lesions)} new on the {scan}; the confirmatory scan's date is "
                                    f"unknown, so the {CONFIRM_DAYS // 7}-week window cannot be checked")
    if days_to_confirm < CONFIRM_DAYS:
        return Verdict(UNCONFIRMED, f"{_lesions(new_lesions)} new on the {scan}; the confirmatory scan came "
                                    f"{days_to_confirm} days later, before the {CONFIRM_DAYS}-day window: repeat it")
    if confirm_lesions >= MIN_NEW:
        what = "more new" if first_followup else "new against the reference"
        return Verdict(PROGRESSION, f"{_lesions(new_lesions)} new on the {scan}, confirmed by "
                                    f"{_lesions(confirm_lesions)} {what} on the scan {days_to_confirm} days later; "
                                    f"progression dates from the {scan}")
    what = "more new" if first_followup else "new against the reference"
    return Verdict(NO_PROGRESSION, f"{_lesions(new_lesions)} new on the {scan}, not confirmed: only "
                                   f"{_lesions(confirm_lesions)} {what} on the scan {days_to_confirm} days later "
                                   f"(flare or healing, not progression)")


def _lesions(n: int) -> str:
    return f"{n} lesion" if n == 1 else f"{n} lesions"
