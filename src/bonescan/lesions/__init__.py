"""Where, not only whether: skeletal regions, hotspots and the Bone Scan Index.

- `regions`: the skeletal-region catalogue (label ids, SNOMED CT finding sites, reference mass fractions).
- `truth`: per-study truth files (region label maps and finding instance masks, both views) read and written.
- `hotspots`: what the lesion reader reports for one study (hotspots, BSI) and its JSON form.
- `bsi`: the Bone Scan Index from region maps and a mask of malignant uptake.
"""
