#!/usr/bin/env bash
# Fault injection for the Distiller (issue 10, design.md §5), on a reduced quickstart job:
#
#  1. SIGKILL: TRIALS seeded trials per stage (generate, finetune, evaluate). Each trial starts
#     `distill run`, kills it with SIGKILL after a delay drawn from a seeded generator, uniform over
#     the stage's measured duration (from the process start to the stage's completion marker), runs
#     the same command again to the end and compares with an uninterrupted reference run: student
#     and baseline weights, generate/synthetic.jsonl (bytes, line count, unique ids), every
#     eval/*.answers.jsonl and the report's metrics. Finetune and evaluate trials start from the
#     reference's earlier-stage outputs (the stage fingerprints do not include output_dir).
#  2. Disk full (root only; skipped with a message otherwise): output_dir on a small tmpfs; the run
#     must exit 1 with one line naming a path on it, keep the answers and checkpoints written so far
#     readable, and after a remount with more space the same command completes with the reference's
#     results.
#  3. Teacher endpoint faults (with SERVE_BIN): the generate stage against apps/serve with
#     injected 429/500/stall/drop/malformed answers: at a moderate rate every prompt is answered; at
#     a very high rate the stage fails (exit 1) keeping what was answered, and a rerun against a
#     healthy server completes. The API key never appears in any output file, stdout or stderr.
#
#   kill_trials.sh DISTILL_BIN QUICKSTART_BIN WORK_DIR [TRIALS=20] [SERVE_BIN] [SEED]
#
# Trials run round-robin over the stages. FAULTS_SKIP_DISKFULL=1 skips part 2. Each rerun runs the
# whole pipeline, so a trial takes about one uninterrupted run (30-60 s on a loaded 2-core machine):
# too long for the test command; run it by hand (docs/reliability.md has the last table).
#
# Prints a summary table (stage, trials, killed in stage, reruns identical); exit 0 when all pass.
set -u
DISTILL=$1 QUICKSTART=$2 WORK=$3 TRIALS=${4:-20} SERVE=${5:-} SEED=${6:-20261128}
rm -rf "$WORK" && mkdir -p "$WORK"
export DISTILL_NUM_THREADS=${DISTILL_NUM_THREADS:-2}
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok:   $*"; }
now_ms() { date +%s%3N; }

# ---- the reduced job: few prompts, few steps (the machinery, not the learning) ------------------------
"$QUICKSTART" --small --prepare --out "$WORK/base" >/dev/null || { echo "FAIL: quickstart --prepare"; exit 1; }
for f in train:48 validation:16; do
    head -n "${f#*:}" "$WORK/base/data/${f%:*}.jsonl" >"$WORK/base/data/${f%:*}.small" &&
        mv "$WORK/base/data/${f%:*}.small" "$WORK/base/data/${f%:*}.jsonl"
done
sed -i 's/"max_steps": [0-9]*/"max_steps": 12/; s/"eval_every": [0-9]*/"eval_every": 6/;
        s/"checkpoint_every": [0-9]*/"checkpoint_every": 3/; s/"batch_size": 32,/"batch_size": 16,/;
        s/"latency_samples": [0-9]*/"latency_samples": 2, "max_examples": 16/' \
    "$WORK/base/quickstart.job.json"
# job NAME: the reduced job with output_dir WORK/NAME
job() { sed "s#\"output_dir\": \"[^\"]*\"#\"output_dir\": \"$WORK/$1\"#" "$WORK/base/quickstart.job.json" >"$WORK/$1.json"; echo "$WORK/$1.json"; }

metrics() { grep -E '"(exact_match|perplexity|teacher_agreement|parameters|checkpoint_bytes)"' "$1/report.json"; }
ids() { grep -o '"id":"[^"]*"' "$1" | sort; }
# same_as_reference DIR: "" when DIR's outputs equal the reference's, else what differs
same_as_reference() {
    local dir=$1 ref=$WORK/ref
    cmp -s "$dir/student.safetensors" "$ref/student.safetensors" || { echo "student.safetensors differs"; return; }
    cmp -s "$dir/baseline.safetensors" "$ref/baseline.safetensors" || { echo "baseline.safetensors differs"; return; }
    for f in synthetic.jsonl synthetic.validation.jsonl; do
        [[ $(wc -l <"$dir/generate/$f") -eq $(wc -l <"$ref/generate/$f") ]] || { echo "$f: line count differs"; return; }
        [[ -z $(ids "$dir/generate/$f" | uniq -d) ]] || { echo "$f: duplicated ids"; return; }
        cmp -s "$dir/generate/$f" "$ref/generate/$f" || { echo "$f differs"; return; }
    done
    for m in teacher baseline student; do
        cmp -s "$dir/eval/$m.answers.jsonl" "$ref/eval/$m.answers.jsonl" || { echo "eval/$m.answers.jsonl differs"; return; }
    done
    [[ $(metrics "$dir") == $(metrics "$ref") ]] || { echo "report metrics differ"; return; }
}

# stage setup: what a trial's output dir holds before the run (later stages reuse the reference's)
setup() {
    local stage=$1 dir=$2
    rm -rf "$dir" && mkdir -p "$dir"
    [[ $stage == generate ]] && return
    cp -r "$WORK/ref/generate" "$dir/"
    [[ $stage == finetune ]] && return
    cp -r "$WORK/ref/student" "$WORK/ref/baseline" "$WORK/ref/student.safetensors" "$WORK/ref/baseline.safetensors" "$dir/"
}
# the file whose appearance ends the stage
marker() {
    case $1 in
    generate) echo generate/synthetic.validation.report.json ;;
    finetune) echo baseline/done.json ;;
    evaluate) echo report.json ;;
    esac
}

# ---- the reference, uninterrupted; each stage's duration from a run that starts at that stage ----------
ref=$(job ref)
"$DISTILL" run "$ref" --quiet >/dev/null 2>"$WORK/ref.stderr" || { echo "FAIL: reference run: $(tail -3 "$WORK/ref.stderr")"; exit 1; }
declare -A duration
for stage in generate finetune evaluate; do
    j=$(job "calib_$stage") d=$WORK/calib_$stage
    setup "$stage" "$d"
    t0=$(now_ms)
    "$DISTILL" run "$j" --quiet >/dev/null 2>"$d.stderr" &
    pid=$! m=$(marker "$stage")
    until [[ -f $d/$m ]] || ! kill -0 $pid 2>/dev/null; do sleep 0.01; done
    duration[$stage]=$(($(now_ms) - t0))
    wait $pid || fail "calibration $stage: $(tail -2 "$d.stderr")"
    diff=$(same_as_reference "$d")
    [[ -z $diff ]] && pass "$stage from the reference's earlier stages, uninterrupted: same outputs (stage ${duration[$stage]} ms)" ||
        fail "$stage uninterrupted from the reference's earlier stages: $diff"
    rm -rf "$d"
done

# ---- disk full ----------------------------------------------------------------------------------------
diskfull="skipped"
if [[ -n ${FAULTS_SKIP_DISKFULL:-} ]]; then
    echo "skip: disk full (FAULTS_SKIP_DISKFULL is set)"
elif [[ $(id -u) -ne 0 ]]; then
    echo "skip: disk full (needs root to mount a tmpfs)"
else
    mnt=$WORK/tmpfs
    mkdir -p "$mnt"
    trap 'umount "$mnt" 2>/dev/null' EXIT
    if mount -t tmpfs -o size=3m tmpfs "$mnt"; then
        j=$WORK/diskfull.json
        sed "s#\"output_dir\": \"[^\"]*\"#\"output_dir\": \"$mnt/run\"#" "$WORK/base/quickstart.job.json" >"$j"
        "$DISTILL" run "$j" --quiet >"$WORK/diskfull.stdout" 2>"$WORK/diskfull.stderr"
        rc=$?
        err=$(cat "$WORK/diskfull.stderr")
        if [[ $rc -ne 1 ]]; then
            fail "disk full: exit code $rc, expected 1 ($err)"
        elif [[ $(wc -l <<<"$err") -ne 1 ]] || ! grep -q "$mnt/run" <<<"$err"; then
            fail "disk full: expected one line naming a path under $mnt/run, got: $err"
        else
            pass "disk full: exit 1: $err"
        fi
        # what was written before the disk filled: complete records, a prefix of the reference's
        for f in synthetic.jsonl synthetic.validation.jsonl; do
            p=$mnt/run/generate/$f
            [[ -f $p ]] || continue
            n=$(wc -l <"$p")
            cmp -s "$p" <(head -n "$n" "$WORK/ref/generate/$f") && [[ -z $(tail -c1 "$p" | tr -d '\n') ]] &&
                pass "disk full: $f holds $n complete records, a prefix of the reference's" ||
                fail "disk full: $f is not a prefix of the reference's"
        done
        for m in student baseline; do
            l=$mnt/run/$m/checkpoints/latest
            [[ -f $l ]] || continue
            c=$mnt/run/$m/checkpoints/$(cat "$l")
            [[ -s $c/student.safetensors ]] && pass "disk full: $m's latest checkpoint $(cat "$l") is there" ||
                fail "disk full: $m's latest checkpoint $c is missing its weights"
        done
        df -k "$mnt" | tail -1
        mount -o remount,size=64m "$mnt"
        if "$DISTILL" run "$j" --quiet >/dev/null 2>"$WORK/diskfull.rerun.stderr"; then
            diff=$(same_as_reference "$mnt/run")
            [[ -z $diff ]] && { pass "disk full: with space again the rerun completes, identical"; diskfull="exit 1 with the path; rerun identical"; } ||
                fail "disk full: rerun differs: $diff"
        else
            fail "disk full: rerun after remount failed: $(cat "$WORK/diskfull.rerun.stderr")"
        fi
        umount "$mnt"
    else
        echo "skip: disk full (mount -t tmpfs failed)"
    fi
fi

# ---- teacher endpoint faults --------------------------------------------------------------------------
teacherfaults="skipped (no SERVE_BIN)"
if [[ -n $SERVE ]]; then
    export DISTILL_FAULTS_KEY="sk-faults-$SEED-$RANDOM$RANDOM-secret"
    weights=$(grep -o '"weights": "[^"]*"' "$WORK/base/quickstart.job.json" | cut -d'"' -f4)
    # serve_start NAME ARGS...: a server on a free port; sets serve_pid and port
    serve_start() {
        local name=$1
        shift
        rm -f "$WORK/$name.port"
        "$SERVE" --weights "$weights" --port 0 --port-file "$WORK/$name.port" --model math-teacher \
            --api-key-env DISTILL_FAULTS_KEY --threads 1 "$@" >"$WORK/$name.serve.out" 2>"$WORK/$name.serve.err" &
        serve_pid=$!
        for _ in $(seq 400); do [[ -s $WORK/$name.port ]] && break; sleep 0.05; done
        port=$(cat "$WORK/$name.port" 2>/dev/null)
    }
    serve_stop() { kill "$serve_pid" 2>/dev/null; wait "$serve_pid" 2>/dev/null; }
    openai_job() {  # openai_job NAME PORT MAX_RETRIES
        cat >"$WORK/$1.json" <<EOF
{
  "teacher": {"kind": "openai", "base_url": "http://127.0.0.1:$2/v1", "model": "math-teacher",
              "api_key_env": "DISTILL_FAULTS_KEY", "concurrency": 4, "request_timeout_s": 1,
              "connect_timeout_s": 1, "max_retries": $3, "backoff_initial_s": 0.02, "backoff_max_s": 0.2,
              "max_retry_after_s": 0.2},
  "student": {"vocab_size": 263, "context_length": 96, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
  "training_data": "$WORK/base/data/train.jsonl",
  "task_type": "math",
  "generation": {"temperature": 0, "max_new_tokens": 48},
  "hyperparameters": {"learning_rate": 0.003, "batch_size": 8, "max_steps": 4},
  "loss": {"hard_ce": {"weight": 1}},
  "output_dir": "$WORK/$1"
}
EOF
        echo "$WORK/$1.json"
    }
    # records without the generation fingerprint (it includes base_url, so the port). After failed
    # requests a rerun appends the missing answers after those already kept, so the order differs.
    records() { sed 's/"fingerprint":"[^"]*"//g' "$WORK/$1/generate/synthetic.jsonl"; }
    answered() { cat "$WORK/$1/generate/synthetic.jsonl" "$WORK/$1/generate/synthetic.rejected.jsonl" 2>/dev/null | ids /dev/stdin | uniq | wc -l; }
    prompts=$(wc -l <"$WORK/base/data/train.jsonl")

    serve_start healthy
    j=$(openai_job t_healthy "$port" 6)
    "$DISTILL" generate "$j" >"$WORK/t_healthy.stdout" 2>"$WORK/t_healthy.stderr" || fail "healthy endpoint: $(tail -2 "$WORK/t_healthy.stderr")"
    serve_stop

    serve_start moderate --fault-rate 0.3 --faults 429,500,stall,drop,malformed --stall-ms 1500 --retry-after 0.1
    j=$(openai_job t_moderate "$port" 12)
    if "$DISTILL" generate "$j" >"$WORK/t_moderate.stdout" 2>"$WORK/t_moderate.stderr"; then
        n=$(answered t_moderate)
        [[ $n -eq $prompts ]] && cmp -s <(records t_moderate) <(records t_healthy) &&
            pass "endpoint faults at 30%: all $n prompts answered (retries), synthetic.jsonl equals the healthy run's" ||
            fail "endpoint faults at 30%: $n of $prompts answered, or synthetic.jsonl differs from the healthy run's"
    else
        fail "endpoint faults at 30%: generate failed: $(tail -2 "$WORK/t_moderate.stderr")"
    fi
    serve_stop
    tail -1 "$WORK/moderate.serve.err"

    serve_start storm --fault-rate 0.97 --faults 429,500,drop,malformed --retry-after 0.1
    j=$(openai_job t_storm "$port" 1)
    "$DISTILL" generate "$j" >"$WORK/t_storm.stdout" 2>"$WORK/t_storm.stderr"
    rc=$?
    kept=$(answered t_storm)
    serve_stop
    if [[ $rc -eq 1 ]] && grep -q "min_success_ratio" "$WORK/t_storm.stderr"; then
        pass "endpoint faults at 97%: generate fails (exit 1, below min_success_ratio), $kept answers kept"
    else
        fail "endpoint faults at 97%: exit $rc: $(head -2 "$WORK/t_storm.stderr")"
    fi
    [[ -z $(ids "$WORK/t_storm/generate/synthetic.jsonl" 2>/dev/null | uniq -d) ]] || fail "storm: duplicated ids"
    serve_start healed --port "$port"  # the same base_url: it is part of the generation fingerprint
    if "$DISTILL" generate "$j" >>"$WORK/t_storm.stdout" 2>>"$WORK/t_storm.stderr"; then
        n=$(answered t_storm)
        [[ $n -eq $prompts ]] && cmp -s <(records t_storm | sort) <(records t_healthy | sort) &&
            pass "after the storm a healthy server completes the stage: $n prompts, the healthy run's records (in another order)" ||
            fail "after the storm: $n of $prompts answered, or synthetic.jsonl differs"
    else
        fail "after the storm: rerun failed: $(tail -2 "$WORK/t_storm.stderr")"
    fi
    serve_stop
    # the key appears in no file and no message
    leaks=$(grep -rlF "$DISTILL_FAULTS_KEY" "$WORK" --exclude-dir=base 2>/dev/null)
    [[ -z $leaks ]] && pass "the API key appears in no output file, stdout or stderr" || fail "the API key leaked into: $leaks"
    teacherfaults="30%: all answered; 97%: exit 1 keeping $kept, healthy rerun completes; key never written"
fi

# ---- SIGKILL trials ---------------------------------------------------------------------------------
RANDOM=$SEED
declare -A killed identical
table=""
for stage in generate finetune evaluate; do killed[$stage]=0 identical[$stage]=0; done
# round-robin over the stages, so that an interrupted run has as many trials of each
for ((t = 1; t <= TRIALS; t++)); do
    for stage in generate finetune evaluate; do
        name=kill_${stage}_$t
        j=$(job "$name") d=$WORK/$name
        setup "$stage" "$d"
        delay=$((((RANDOM << 15) | RANDOM) % duration[$stage]))
        "$DISTILL" run "$j" --quiet >/dev/null 2>/dev/null &
        pid=$!
        sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
        where="ended before the kill"
        if kill -0 $pid 2>/dev/null; then
            if [[ -f $d/$(marker "$stage") ]]; then where="after the stage"; else where="in stage"; fi
            kill -9 $pid
        fi
        wait $pid 2>/dev/null
        [[ $where == "in stage" ]] && killed[$stage]=$((killed[$stage] + 1))
        state=""
        [[ -f $d/generate/synthetic.jsonl ]] && state="$(wc -l <"$d/generate/synthetic.jsonl") lines"
        [[ -f $d/student/checkpoints/latest ]] && state+=" student@$(cat "$d/student/checkpoints/latest")"
        [[ -f $d/baseline/checkpoints/latest ]] && state+=" baseline@$(cat "$d/baseline/checkpoints/latest")"
        if ! "$DISTILL" run "$j" --quiet >/dev/null 2>"$d.stderr"; then
            fail "$name (kill at ${delay} ms, $where): rerun failed: $(tail -2 "$d.stderr")"
            continue
        fi
        diff=$(same_as_reference "$d")
        if [[ -z $diff ]]; then
            identical[$stage]=$((identical[$stage] + 1))
            pass "$name: SIGKILL at ${delay} ms ($where;$state), rerun identical"
            rm -rf "$d"
        else
            fail "$name: SIGKILL at ${delay} ms ($where;$state): $diff"
        fi
    done
done
for stage in generate finetune evaluate; do
    table+="| $stage | $TRIALS | ${killed[$stage]} | ${identical[$stage]} / $TRIALS | ${duration[$stage]} ms |"$'\n'
done


echo
echo "| stage | trials | killed in stage | reruns identical | stage duration |"
echo "|---|---|---|---|---|"
printf '%s' "$table"
echo
echo "disk full: $diskfull"
echo "teacher faults: $teacherfaults"
echo "$failures failure(s)"
[[ $failures -eq 0 ]]
