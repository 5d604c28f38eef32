#!/usr/bin/env bash
# distill sweep on the reduced quickstart (docs/quickstart-experiment.md, "Hyperparameter sweep"):
# the same 3 x 3 grid (learning rate x temperature) searched with successive halving and trained in
# full, then the best full-grid setting at two more seeds (the noise). The teacher answers once; the
# three sweeps share them. Prints the figures the document quotes.
#   scripts/sweep-quickstart.sh DISTILL_BIN QUICKSTART_BIN WORK_DIR [STEPS]
set -euo pipefail
DISTILL=$1 QUICKSTART=$2 WORK=$3 STEPS=${4:-150}
mkdir -p "$WORK"
[[ -f $WORK/base/quickstart.job.json ]] || "$QUICKSTART" --small --prepare --out "$WORK/base" >/dev/null
# the reduced quickstart's job (800 training and 64 validation prompts) at STEPS steps, student only
base=$(jq --argjson s "$STEPS" '.hyperparameters.max_steps = $s | .hyperparameters.warmup = ($s / 20 | floor)
    | .hyperparameters.eval_every = ($s / 2 | floor) | .export.gguf = [] | del(.output_dir)' \
    "$WORK/base/quickstart.job.json")
grid='{"hyperparameters.learning_rate": [0.003, 0.01, 0.03], "hyperparameters.temperature": [1, 2, 4]}'
sweep() {  # sweep NAME BASE_JSON SWEEP_JSON
    local out=$WORK/$1
    jq --arg out "$out" --argjson sw "$3" '. + {output_dir: $out, sweep: $sw}' <<<"$2" >"$WORK/$1.json"
    if [[ -d $WORK/halving/shared/generate && ! -d $out/shared/generate ]]; then  # the same teacher answers
        mkdir -p "$out/shared" && cp -r "$WORK/halving/shared/generate" "$out/shared/"
    fi
    local t0=$SECONDS
    "$DISTILL" sweep "$WORK/$1.json" --quiet >"$WORK/$1.stdout"
    echo "$1: $((SECONDS - t0)) s"
}
# ranked by the student's cross-entropy on the teacher's validation answers: the total loss changes
# scale with the temperature
metric='"metric": "hard_ce"'
sweep halving "$base" "{\"space\": $grid, $metric, \"halving\": {\"eta\": 3, \"rungs\": 3}}"
sweep full "$base" "{\"space\": $grid, $metric, \"halving\": false}"
best=$(jq 'del(.output_dir)' "$WORK/full/best_job.json")
sweep seeds "$best" "{\"space\": {\"hyperparameters.seed\": [1, 2, 3]}, $metric, \"halving\": false}"
picked=$(jq 'del(.output_dir)' "$WORK/halving/best_job.json")
sweep seeds_halving "$picked" "{\"space\": {\"hyperparameters.seed\": [1, 2, 3]}, $metric, \"halving\": false}"

for s in halving full; do
    jq -r --arg s "$s" '"\($s): best \(.best.trial) \(.best.settings | tojson) validation \(.metric) \(.best.validation_loss);
  steps \(.steps_spent) of \(.full_grid_steps) (\(.fraction_of_full_grid * 1000 | round / 10)%)"' "$WORK/$s/sweep.json"
done
for s in seeds seeds_halving; do
    jq -r --arg s "$s" '[.ranking[] | {(.settings["hyperparameters.seed"] | tostring): .validation_loss}] | add as $v
      | [$v[]] | "\($s) (seeds 1, 2, 3 of the \(if $s == "seeds" then "full grid'"'"'s" else "halving'"'"'s" end) best): \($v | tojson);
  mean \(add / length), spread \(max - min)"' "$WORK/$s/sweep.json"
done
echo "full grid, ranked:"
jq -r '.ranking[] | "  \(.trial) \(.settings | tojson) \(.validation_loss)"' "$WORK/full/sweep.json"
