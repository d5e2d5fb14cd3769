"""A superscan: metastatic uptake so diffuse through the axial skeleton that it has no lesions to count.

In a superscan the spine, pelvis and ribs take up the tracer intensely and evenly while the kidneys and bladder
fade. A hotspot reader then outlines dozens of malignant hotspots over that bone, and their number says nothing: on
400 synthetic `paper` studies (`synth --seed 41`, the 42-epoch wide lesion network with its rescorer) the three
superscans gave 75-115 malignant lesions each. A reader reports the pattern instead, with the tumour burden as the
BSI. A study whose BSI reaches SUPERSCAN_BSI is flagged so; its hotspots and BSI are kept, its lesion count is not
a count of lesions.

SUPERSCAN_BSI was chosen on 1,200 studies of `--seed 43` (12 superscans, BSI 0.3 and 4.5-17.5 %; the other studies'
at most 3.0 %): 11 of the 12 flagged and none of the others; the twelfth's diffuse uptake was read as 11 lesions,
BSI 0.3 % (even, intense uptake looks like normal bone: the superscan's classic pitfall for readers too). Checked on
1,200 of `--seed 44` (8 of 9 superscans flagged, the ninth at 3.0 %; none of the 1,191 others, whose BSI reached
2.9 %) and on the 400 of `--seed 41` (3 of 3, BSI 9.6-14.3 %; none of 397, at most 2.7 %). The truth's BSI of those
three is 19.5-19.8 %: the reader underestimates a superscan, most on the Philips profile (3.0-5.9 % where it saw
one). On real scans extensive focal disease can reach a high BSI too: the flag is a prompt to look at the pattern,
not a diagnosis.
"""

from __future__ import annotations

SUPERSCAN_BSI = 4.0  # percent


def is_superscan(bsi: float) -> bool:
    """True when a study's BSI (percent) is that of diffuse uptake through the axial skeleton."""
    return bsi >= SUPERSCAN_BSI
