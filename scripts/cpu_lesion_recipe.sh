#!/usr/bin/env bash
# Rebuild the `cpu-small-lesion` run trained on a 2-core CPU alone (README, "The same network trained on this CPU
# alone"): the network with its own threshold, a copy with maps averaged with the mirrored study's and a rescorer,
# the change network and learned judge beside the first, and their evaluation: test splits and 400 fresh studies
# with the second, the follow-up of the 1,080 patients of seeds 7-24 with the first.
#
#   scripts/cpu_lesion_recipe.sh OUT            # about 3-3.5 hours on a 2-core Zen 4 EPYC (bf16), about 25 GB disk
#   SCALE=smoke scripts/cpu_lesion_recipe.sh OUT   # the same steps on a few studies, one epoch each: minutes
#
# Every step is skipped when its output exists, so the script can be run again after a stop (an interrupted
# training stage starts again). The measured first stage was a 16-epoch schedule stopped after its 5th epoch;
# here it is a 5-epoch schedule, whose learning rate falls sooner. PRECISION (default auto: bf16 where the CPU
# computes it natively) passes through to `bonescan train`.
set -euo pipefail

OUT=${1:?usage: scripts/cpu_lesion_recipe.sh OUT}
PRECISION=${PRECISION:-auto}
if [[ "${SCALE:-full}" == smoke ]]; then
    GENERIC=60 MIXED=40 MORE=24 FIT=30 FRESH=12 PATIENTS=12 EPOCHS=(1 1) CLASSIFIER_EPOCHS=1 CHANGE_EPOCHS=1
    CHANGE_TRAIN="101" CHANGE_VAL="102" JUDGE="102 103" FOLLOWUP="7"
else
    GENERIC=1200 MIXED=800 MORE=1600 FIT=2000 FRESH=400 PATIENTS=60 EPOCHS=(5 26) CLASSIFIER_EPOCHS=1
    CHANGE_EPOCHS=24 CHANGE_TRAIN=$(seq 101 120) CHANGE_VAL=$(seq 121 130) JUDGE=$(seq 121 140)
    FOLLOWUP=$(seq 7 24)
fi
mkdir -p "$OUT/cohorts"
OUT=$(cd "$OUT" && pwd)
source "$(dirname "$0")/recipe_steps.sh"

stage() {  # RUN MANIFEST EPOCHS [train options]
    local run=$1 manifest=$2 epochs=$3
    shift 3
    [[ -f "$OUT/$run/checkpoints/best.pt" && -f "$OUT/$run/metrics.csv" ]] && return
    bonescan train --manifest "$manifest" --out "$OUT/$run" --preset cpu-small-lesion --epochs "$epochs" \
        --precision "$PRECISION" --cache-dir "$OUT/cache" --quiet "$@"
}

# Training studies: 1,200 generic and 800 of three cameras (their validation and test splits are the lesion
# figures' test sets), then 1,600 more of three cameras for the second stage.
cohort s11 11 "$GENERIC" --site generic
cohort m21 21 "$MIXED" --site mixed
cohort m22 22 "$MORE" --site mixed --ratios 1,0,0
merged train2000 s11 m21
merged train3600 s11 m21 m22
stage first "$OUT/train2000.csv" "${EPOCHS[0]}"
stage second "$OUT/train3600.csv" "${EPOCHS[1]}" --pretrained "$OUT/first" --lr 0.002 --patience 8
PLAIN=$OUT/second

# The network's own threshold on the validation split (the run the follow-up reads). Then a copy of the run whose
# maps are averaged with the mirrored study's: its threshold, then its rescorer on 4,000 studies no network saw,
# on the same maps (threshold frozen again); the run the lesion figures read.
[[ -f "$PLAIN/malignancy_threshold.json" ]] || bonescan lesions threshold --run "$PLAIN" \
    --manifest "$OUT/train3600.csv"
RUN=$OUT/second-flip-rescored
if [[ ! -f "$RUN/hotspot_rescorer.skops" ]]; then
    rm -rf "$RUN" && cp -r "$PLAIN" "$RUN"
    bonescan lesions threshold --run "$RUN" --manifest "$OUT/train3600.csv" --flip-average
    cohort fit32 32 "$FIT" --site mixed
    cohort fit33 33 "$FIT" --site mixed
    merged fit4000 fit32 fit33
    bonescan lesions rescorer --run "$RUN" --manifest "$OUT/fit4000.csv" \
        --threshold-manifest "$OUT/train3600.csv" --flip-average
fi

classifier "$OUT/cohorts/s11/manifest.csv" "$CLASSIFIER_EPOCHS"
cohort fresh41 41 "$FRESH" --site mixed --ratios 0,0,1
evaluation generic "$OUT/cohorts/s11/manifest.csv"
evaluation mixed "$OUT/cohorts/m21/manifest.csv"
evaluation fresh41 "$OUT/cohorts/fresh41/manifest.csv"

# Follow-up, read with the network's own maps and threshold: the change network (trained on the first seeds,
# operating point on the next), the learned judge fitted beside it for `--join union`, then every patient of seeds
# 7-24 compared with both.
RUN=$PLAIN
for seed in $CHANGE_TRAIN $CHANGE_VAL $JUDGE $FOLLOWUP; do
    cohort "followup$seed" "$seed" "$PATIENTS" --site mixed --follow-up
done
CHANGE=$OUT/change/change_net.pt
JUDGE_FILE=$OUT/new_lesion_judge.skops
[[ -f "$CHANGE" ]] || bonescan followup-train $(printf "$OUT/cohorts/followup%s " $CHANGE_TRAIN) \
    $(printf -- "--val $OUT/cohorts/followup%s " $CHANGE_VAL) --epochs "$CHANGE_EPOCHS" --precision "$PRECISION" \
    --out "$OUT/change"
[[ -f "$JUDGE_FILE" ]] || bonescan followup-judge $(printf "$OUT/cohorts/followup%s " $JUDGE) --run "$RUN" \
    --change-net "$CHANGE" --join union --specificity 0.90 --out "$JUDGE_FILE"
for seed in $FOLLOWUP; do
    followup_evaluation "followup$seed" "followup$seed" --change-net "$CHANGE" --join union --judge "$JUDGE_FILE"
done
echo "lesion runs: $PLAIN (follow-up), $OUT/second-flip-rescored; evaluations: $OUT/eval"
