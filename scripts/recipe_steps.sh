# Steps shared by the lesion recipes (scripts/lesion_recipe.sh, scripts/cpu_lesion_recipe.sh); sourced, not run.
# Every step skips when its output exists, so a recipe can be run again after a stop. Needs OUT (the recipe's
# folder) and, for `evaluation` and `followup_evaluation`, RUN (the lesion run) and a classifier in OUT/classifier.

cohort() {  # NAME SEED CASES [synth options]: a `paper` cohort in OUT/cohorts/NAME
    local name=$1 seed=$2 cases=$3
    shift 3
    [[ -f "$OUT/cohorts/$name/manifest.csv" ]] && return
    bonescan synth --out "$OUT/cohorts/$name" --cases "$cases" --seed "$seed" --difficulty paper "$@"
}

merged() {  # NAME COHORT...: one manifest of several cohorts, each study keeping its split
    local name=$1
    shift
    [[ -f "$OUT/$name.csv" ]] && return
    bonescan cohort merge $(printf "$OUT/cohorts/%s/manifest.csv " "$@") --out "$OUT/$name.csv"
}

classifier() {  # MANIFEST EPOCHS: a study-level classifier to predict with (the lesion figures do not depend on it)
    [[ -f "$OUT/classifier/checkpoints/last.pt" ]] || bonescan train --manifest "$1" --out "$OUT/classifier" \
        --preset cpu-small --epochs "$2" --cache-dir "$OUT/cache" --quiet
}

evaluation() {  # NAME MANIFEST: predict the test split with the lesion run (into predicted/), then evaluate
    local name=$1 manifest=$2
    [[ -f "$OUT/eval/$name/metrics.json" ]] && return
    bonescan predict --run "$OUT/classifier" --lesions "$RUN" --manifest "$manifest" --split test \
        --out "$OUT/eval/$name/predicted/predictions.csv"
    bonescan evaluate --predictions "$OUT/eval/$name/predicted/predictions.csv" --manifest "$manifest" \
        --out "$OUT/eval/$name"
}

followup_evaluation() {  # NAME COHORT [followup options]: compare every patient of a follow-up cohort, evaluated
    local name=$1 cohort=$2
    shift 2
    [[ -f "$OUT/eval/$name/followup_report.html" ]] || bonescan followup \
        --manifest "$OUT/cohorts/$cohort/manifest.csv" --run "$RUN" --evaluate --out "$OUT/eval/$name" "$@"
}
