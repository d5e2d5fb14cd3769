"""What changed since the last scan: two or three studies of one patient compared lesion by lesion.

    from bonescan.followup import OracleReader, compare_visits, load_visit
    visits = [load_visit(path, role) for path, role in zip(paths, ("baseline", "follow-up", "confirmatory"))]
    comparison = compare_visits(visits, OracleReader())

Modules, in the order data flows:
- `visits`: read each study, check that the visits belong together (one patient, dated in order, both views);
- `readers`: StudyLesions of each visit from a lesion reader (the trained lesion network, or the synthetic truth);
- `register`: rigid registration of each later view to the baseline's (SimpleITK);
- `match`: hotspots linked across views and visits into numbered lesions; new / resolved / persistent / grown;
- `change_net`: the change network, a second judge of new lesions that sees both visits' images (optional);
- `pcwg3`: the Prostate Cancer Clinical Trials Working Group 3 verdict ("2+2" rule) with its reason;
- `compare`: the comparison of one patient's visits (the above in order);
- `output`: JSON, per-region CSV, side-by-side PNG and DICOM SR of a comparison, written atomically;
- `evaluate`: a follow-up cohort against its truth (new lesions, PCWG3, change in BSI, per course), HTML report;
- `fates`: where each true new lesion was lost (not called new, under a hotspot linked to the baseline, none).
"""

from .compare import Comparison, compare_visits
from .pcwg3 import Verdict, pcwg3_verdict
from .readers import LesionReader, NetworkReader, OracleReader
from .visits import Visit, check_visits, load_visit

__all__ = ["Comparison", "LesionReader", "NetworkReader", "OracleReader", "Verdict", "Visit", "check_visits",
           "compare_visits", "load_visit", "pcwg3_verdict"]
