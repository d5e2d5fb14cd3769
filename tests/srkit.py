"""Reading DICOM SR content trees in tests."""

from __future__ import annotations

TRACKING_UID, TRACKING_ID = "112040", "112039"  # DCM codes of Tracking Unique Identifier and Tracking Identifier


def content_items(dataset) -> list:
    """Every content item of an SR tree, depth first."""
    items = []
    for item in getattr(dataset, "ContentSequence", []):
        items += [item, *content_items(item)]
    return items


def content_values(dataset) -> list[str]:
    """Every text, UID and code meaning in an SR content tree."""
    values = []
    for item in content_items(dataset):
        for key in ("TextValue", "UID"):
            if key in item:
                values.append(str(item[key].value))
        for key in ("ConceptCodeSequence", "ConceptNameCodeSequence"):
            if key in item:
                values.append(str(item[key][0].CodeMeaning))
    return values


def tracking(dataset) -> list[tuple[str, str]]:
    """(tracking UID, tracking identifier) of every measurement group of an SR."""
    found = []
    for group in content_items(dataset):
        named = {c.ConceptNameCodeSequence[0].CodeValue: c for c in getattr(group, "ContentSequence", [])
                 if "ConceptNameCodeSequence" in c}
        if TRACKING_UID in named and TRACKING_ID in named:
            found.append((str(named[TRACKING_UID].UID), str(named[TRACKING_ID].TextValue)))
    return found
