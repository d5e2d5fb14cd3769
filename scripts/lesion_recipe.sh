#!/usr/bin/env bash
# Rebuild the lesion run behind the README's lesion and follow-up figures: the 32-256-channel lesion network
# trained for 42 epochs in five stages on up to 5,442 mixed-camera `paper` studies, its malignancy threshold, its
# rescorer fitted on 4,000 studies it never saw, and its evaluation (test split, 400 fresh studies, follow-up on
# the 60 patients of each of seeds 5-12).
#
#   scripts/lesion_recipe.sh OUT            # 4-5 h of training on a 2-core Xeon with AMX (bf16), 6-7 GB disk
#   SCALE=smoke scripts/lesion_recipe.sh OUT   # the same steps on a few studies, one epoch each: minutes
#
# Every step is skipped when its output exists and an interrupted training stage resumes, so the script can be
# run again after a stop. Stages as the README describes them (the fifth stopped there after 6 of its 8 epochs
# for time; here it runs to its end, the best validation epoch kept as ever). PRECISION (default auto: bf16 where
# the CPU or GPU computes it natively) and DEVICE (default auto) pass through to `bonescan train`.
set -euo pipefail

OUT=${1:?usage: scripts/lesion_recipe.sh OUT}
PRECISION=${PRECISION:-auto}
DEVICE=${DEVICE:-auto}
if [[ "${SCALE:-full}" == smoke ]]; then
    FIRST=60 MORE=24 FIT=30 FRESH=12 PATIENTS=6 FOLLOWUP_SEEDS="5"
    EPOCHS=(1 1 1 1 1) CLASSIFIER_EPOCHS=1
else
    FIRST=800 MORE=1600 FIT=2000 FRESH=400 PATIENTS=60 FOLLOWUP_SEEDS="5 6 7 8 9 10 11 12"
    EPOCHS=(16 10 5 6 8) CLASSIFIER_EPOCHS=6
fi
mkdir -p "$OUT/cohorts"
OUT=$(cd "$OUT" && pwd)

source "$(dirname "$0")/recipe_steps.sh"

stage() {  # RUN MANIFEST EPOCHS [train options]: train, or resume an interrupted stage
    local run=$1 manifest=$2 epochs=$3
    shift 3
    if [[ -f "$OUT/$run/checkpoints/last.pt" ]]; then
        bonescan train --manifest "$manifest" --out "$OUT/$run" --resume --cache-dir "$OUT/cache"
    else
        bonescan train --manifest "$manifest" --out "$OUT/$run" --preset cpu-small-lesion \
            --lesion-channels 32,64,128,256,256 --epochs "$epochs" --precision "$PRECISION" --device "$DEVICE" \
            --no-exact --cache-dir "$OUT/cache" "$@"
    fi
}

# Training studies: 800 (642 train, 79 validation, 79 test), then 1,600 more training studies at each stage.
cohort s21 21 "$FIRST" --site mixed
for seed in 22 23 24; do cohort "s$seed" "$seed" "$MORE" --site mixed --ratios 1,0,0; done
merged train2242 s21 s22
merged train3842 s21 s22 s23
merged train5442 s21 s22 s23 s24

stage wide16 "$OUT/cohorts/s21/manifest.csv" "${EPOCHS[0]}"
stage wide26 "$OUT/train2242.csv" "${EPOCHS[1]}" --pretrained "$OUT/wide16" --lr 0.0015
stage wide31 "$OUT/train3842.csv" "${EPOCHS[2]}" --pretrained "$OUT/wide26" --lr 0.001
stage wide37 "$OUT/train5442.csv" "${EPOCHS[3]}" --pretrained "$OUT/wide31" --lr 0.0005
stage wide42 "$OUT/train5442.csv" "${EPOCHS[4]}" --pretrained "$OUT/wide37" --lr 0.0003
RUN=$OUT/wide42

# Threshold on the validation split, then the rescorer on 4,000 studies no network saw (threshold frozen again).
[[ -f "$RUN/malignancy_threshold.json" ]] || bonescan lesions threshold --run "$RUN" --manifest "$OUT/train5442.csv"
cohort fit32 32 "$FIT" --site mixed
cohort fit33 33 "$FIT" --site mixed
merged fit4000 fit32 fit33
[[ -f "$RUN/hotspot_rescorer.skops" ]] || bonescan lesions rescorer --run "$RUN" --manifest "$OUT/fit4000.csv" \
    --threshold-manifest "$OUT/train5442.csv"

classifier "$OUT/cohorts/s21/manifest.csv" "$CLASSIFIER_EPOCHS"

cohort fresh41 41 "$FRESH" --site mixed --ratios 0,0,1
evaluation test "$OUT/train5442.csv"
evaluation fresh41 "$OUT/cohorts/fresh41/manifest.csv"

for seed in $FOLLOWUP_SEEDS; do
    cohort "followup$seed" "$seed" "$PATIENTS" --site mixed --follow-up
    followup_evaluation "followup$seed" "followup$seed"
done
echo "lesion run: $RUN; evaluations: $OUT/eval"
