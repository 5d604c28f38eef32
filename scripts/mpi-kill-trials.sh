#!/usr/bin/env bash
# Kill trials for data-parallel runs (issue 20; heavy, so not in ctest): `mpirun -np NP distill run JOB`
# with one rank SIGKILLed at a random moment of a stage, then the same command again, compared with an
# uninterrupted run: the student, the baseline, synthetic.jsonl, every model's test answers and the
# report's metrics must be the same bytes.
#
#   scripts/mpi-kill-trials.sh DISTILL_BIN JOB.json WORK_DIR [TRIALS_PER_STAGE=10] [NP=2]
#
# The uninterrupted reference runs the stages one command each (distill generate, finetune,
# evaluate) to time them; a trial of stage S starts from the reference's earlier stages (copied) and
# kills a random rank after a uniformly random delay within 80% of S's measured time, counted from the
# ranks' start (a delay shorter than their start-up, reading the job and data, lands before the stage).
# JOB's output_dir is replaced by WORK_DIR/<trial>. Prints one line per trial and a summary per stage;
# exit status 0 when every rerun matched.
set -u
DISTILL=$1 JOB=$2 WORK=$3 TRIALS=${4:-10} NP=${5:-2}
mpi=(mpirun -np "$NP" --allow-run-as-root --oversubscribe)
mkdir -p "$WORK"
export DISTILL_NUM_THREADS=${DISTILL_NUM_THREADS:-1}

job_for() {  # job_for NAME: JOB with output_dir WORK/NAME
    sed -E "s#\"output_dir\": *\"[^\"]*\"#\"output_dir\": \"$WORK/$1\"#" "$JOB" >"$WORK/$1.json"
    grep -q "\"output_dir\": \"$WORK/$1\"" "$WORK/$1.json" || { echo "JOB has no \"output_dir\" key" >&2; exit 2; }
    echo "$WORK/$1.json"
}
metrics() { grep -E '"(exact_match|f1|rouge_l|accuracy|perplexity|teacher_agreement)"' "$1/report.json"; }
now() { date +%s.%N; }

# ---- the uninterrupted reference, stage by stage -----------------------------------------------------
rm -rf "$WORK/ref"
ref=$(job_for ref)
declare -A seconds
for stage in generate finetune evaluate; do
    t0=$(now)
    "${mpi[@]}" "$DISTILL" "$stage" "$ref" --quiet >"$WORK/ref.$stage.out" 2>&1 ||
        { echo "reference $stage failed: $(tail -3 "$WORK/ref.$stage.out")"; exit 1; }
    seconds[$stage]=$(echo "$(now) - $t0" | bc)
    echo "reference: $stage ${seconds[$stage]} s"
done

same_as_ref() {  # same_as_ref DIR: empty when equal, else what differs
    local d=$1
    for f in student.safetensors baseline.safetensors generate/synthetic.jsonl; do
        [[ -f $WORK/ref/$f ]] && ! cmp -s "$d/$f" "$WORK/ref/$f" && { echo "$f"; return; }
    done
    for a in "$WORK"/ref/eval/*.answers.jsonl; do
        cmp -s "$a" "$d/eval/$(basename "$a")" || { echo "eval/$(basename "$a")"; return; }
    done
    [[ $(metrics "$d") == $(metrics "$WORK/ref") ]] || echo "report metrics"
}

failures=0
for stage in generate finetune evaluate; do
    killed=0 matched=0 finished=0
    for ((t = 1; t <= TRIALS; t++)); do
        name=$stage-$t
        rm -rf "${WORK:?}/$name"
        job=$(job_for "$name")
        mkdir -p "$WORK/$name"
        case $stage in  # the earlier stages' outputs, as a crash in this stage finds them
            finetune) cp -r "$WORK/ref/generate" "$WORK/$name/" ;;
            evaluate)
                (cd "$WORK/ref" && tar cf - --exclude=report.json --exclude=report.md --exclude=eval .) |
                    (cd "$WORK/$name" && tar xf -) ;;
        esac
        delay=$(awk -v s="${seconds[$stage]}" -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.8 * s * r / 32767 }')
        "${mpi[@]}" "$DISTILL" run "$job" --quiet >/dev/null 2>&1 &
        launcher=$!
        for ((w = 0; w < 3000; w++)); do  # the delay counts from the ranks' start (at most 60 s)
            pgrep -f "distill run $job" | grep -qv "^$launcher\$" && break
            kill -0 $launcher 2>/dev/null || break
            sleep 0.02
        done
        sleep "$delay"
        mapfile -t ranks < <(pgrep -f "distill run $job" | grep -v "^$launcher\$")
        victim=""
        if ((${#ranks[@]} > 0)) && kill -0 $launcher 2>/dev/null; then
            victim=${ranks[RANDOM % ${#ranks[@]}]}
            kill -9 "$victim" 2>/dev/null || victim=""
        fi
        wait $launcher
        rc=$?
        if [[ -n $victim ]]; then killed=$((killed + 1)); else finished=$((finished + 1)); fi
        "${mpi[@]}" "$DISTILL" run "$job" --quiet >/dev/null 2>"$WORK/$name.rerun.err"
        rerun=$?
        diff=$(same_as_ref "$WORK/$name")
        if [[ $rerun -eq 0 && -z $diff ]]; then
            matched=$((matched + 1))
            verdict=same
        else
            failures=$((failures + 1))
            verdict="DIFFERS (rerun exit $rerun; $diff; $(tail -1 "$WORK/$name.rerun.err"))"
        fi
        if [[ -n $victim ]]; then what="killed rank pid $victim (job exit $rc)"; else what="the run ended first"; fi
        echo "$stage trial $t: delay ${delay}s, $what; rerun: $verdict"
    done
    echo "SUMMARY $stage: $TRIALS trials, $killed with a rank killed, $finished ended before the kill, $matched reruns equal to the uninterrupted run"
done
exit $((failures > 0))
