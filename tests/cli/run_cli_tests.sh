#!/usr/bin/env bash
# The `distill` command line as users run it: usage and bad jobs (exit code 2 and the message, one
# test per defect class), the reduced quickstart job end to end, SIGKILL in each stage and a rerun
# that ends with the same student, answers and report metrics as an uninterrupted run, `status`,
# `inspect` on a data file with planted defects and on the quickstart data, `sweep` (successive halving,
# the best trial against its job trained alone, SIGKILL and rerun),
# and a teacher behind an OpenAI-compatible endpoint (apps/serve on 127.0.0.1).
#
#   run_cli_tests.sh DISTILL_BIN QUICKSTART_BIN WORK_DIR [SERVE_BIN]
set -u
DISTILL=$1 QUICKSTART=$2 WORK=$3 SERVE=${4:-}
rm -rf "$WORK" && mkdir -p "$WORK"
export DISTILL_NUM_THREADS=${DISTILL_NUM_THREADS:-1}
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok:   $*"; }
# wait_until COND PID: polls (every 20 ms, at most 300 s) until COND holds or PID has exited
wait_until() {
    local waited=0
    until eval "$1" || ! kill -0 "$2" 2>/dev/null; do
        sleep 0.02
        waited=$((waited + 1))
        [[ $waited -gt 15000 ]] && break
    done
}

# expect CODE PATTERN -- command...: the exit code and a line of stderr matching PATTERN
expect() {
    local code=$1 pattern=$2
    shift 3
    local err
    err=$("$@" 2>&1 >/dev/null)
    local rc=$?
    if [[ $rc -ne $code ]]; then
        fail "$* exited $rc, expected $code ($err)"
    elif ! grep -qE -- "$pattern" <<<"$err"; then
        fail "$*: stderr '$err' does not match '$pattern'"
    elif [[ $(wc -l <<<"$err") -ne 1 ]]; then
        fail "$*: expected one line on stderr, got: $err"
    else
        pass "$* -> $rc: $err"
    fi
}

# a job file from the prepared one with `sed` edits applied
variant() { sed "$2" "$WORK/base/quickstart.job.json" >"$WORK/$1.json"; echo "$WORK/$1.json"; }

# ---- usage ------------------------------------------------------------------------------------------
"$DISTILL" --help | grep -q "distill run|generate|finetune|evaluate" && pass "--help" || fail "--help"
expect 2 "expected a command" -- "$DISTILL"
expect 2 "unknown command \"train\"" -- "$DISTILL" train x.json
expect 2 "unknown option --fast" -- "$DISTILL" run x.json --fast
expect 2 "--threads: expected 1..4096" -- "$DISTILL" run x.json --threads 0
expect 2 "not a directory" -- "$DISTILL" status "$WORK/nowhere"

# ---- bad jobs: one per defect class -----------------------------------------------------------------
"$QUICKSTART" --small --prepare --out "$WORK/base" >/dev/null || { echo "FAIL: quickstart --prepare"; exit 1; }
# shorter than the reduced quickstart: these runs test the machinery, not the learning (160 training
# and 32 validation prompts, 30 steps, 40 test prompts)
for f in train:160 validation:32; do
    head -n "${f#*:}" "$WORK/base/data/${f%:*}.jsonl" >"$WORK/base/data/${f%:*}.small" &&
        mv "$WORK/base/data/${f%:*}.small" "$WORK/base/data/${f%:*}.jsonl"
done
sed -i 's/"max_steps": [0-9]*/"max_steps": 30/; s/"eval_every": [0-9]*/"eval_every": 10/;
        s/"checkpoint_every": [0-9]*/"checkpoint_every": 10/; s/"latency_samples": [0-9]*/"latency_samples": 4, "max_examples": 40/' \
    "$WORK/base/quickstart.job.json"
expect 2 "cannot open the job file" -- "$DISTILL" run "$WORK/absent.json"
printf '{"teacher": {"kind": "model",}\n' >"$WORK/syntax.json"
expect 2 "syntax.json:1: not valid JSON" -- "$DISTILL" run "$WORK/syntax.json"
expect 2 'hyperparameters.learnig_rate: unknown key; did you mean "learning_rate"\?' -- \
    "$DISTILL" run "$(variant unknown_key 's/"learning_rate"/"learnig_rate"/')"
expect 2 "hyperparameters.batch_size: expected an integer, got a string" -- \
    "$DISTILL" run "$(variant wrong_type 's/"batch_size": 32,/"batch_size": "32",/')"
expect 2 "hyperparameters.learning_rate: must be a finite number > 0" -- \
    "$DISTILL" run "$(variant out_of_range 's/"learning_rate": [0-9.e-]*/"learning_rate": -1/')"
expect 2 "training_data: .*absent.jsonl: cannot open" -- \
    "$DISTILL" run "$(variant missing_file 's#data/train.jsonl#data/absent.jsonl#')"
printf '{"prompt": "fine"}\n{"prompt": "torn' >"$WORK/base/data/torn.jsonl"
expect 2 "training_data: .*torn.jsonl:2: " -- \
    "$DISTILL" run "$(variant unreadable_data 's#data/train.jsonl#data/torn.jsonl#')"
expect 2 "loss.attention_kl needs the teacher's logits, hidden states or attention maps, which a teacher of kind \"openai\"" -- \
    "$DISTILL" run "$(variant combination 's#"kind": "model",#"kind": "openai",#; s#"max_batch": 32,##; s#"weights": "[^"]*"#"model": "m"#')"
expect 2 "teacher: .*nothing.safetensors" -- \
    "$DISTILL" run "$(variant no_teacher 's#"weights": "[^"]*"#"weights": "nothing.safetensors"#')"

# ---- inspect: a data file before a teacher answers it (docs/data.md) --------------------------------------
mkdir -p "$WORK/inspect"
{
    echo '{"prompt": "Name the largest planet in the solar system and one of its moons"}'
    echo '{"prompt": "name the LARGEST planet in the solar system  and one of its moons"}'
    echo '{"prompt": "torn'
    echo '{"prompt": "Which gas do plants absorb from the air during photosynthesis"}'
} >"$WORK/inspect/train.jsonl"
echo '{"prompt": "Which gas do plants absorb from the air during photosynthesis"}' >"$WORK/inspect/test.jsonl"
expect 1 "1 malformed lines" -- "$DISTILL" inspect "$WORK/inspect/train.jsonl" --test "$WORK/inspect/test.jsonl"
for f in inspect.json inspect.md lengths-prompt-tokens.svg lengths-prompt-chars.svg; do
    [[ -s $WORK/inspect/train.inspect/$f ]] || fail "inspect: missing train.inspect/$f"
done
tr -d ' \n' <"$WORK/inspect/train.inspect/inspect.json" >"$WORK/inspect/flat.json"
grep -q '"exact_groups":\[{"lines":\[1,2\]' "$WORK/inspect/flat.json" &&
    grep -q '"contaminated_examples":1,"exact":\[{"line":4,"test_line":1' "$WORK/inspect/flat.json" &&
    pass "inspect: the duplicate group and the test overlap" || fail "inspect: $(head -c 900 "$WORK/inspect/flat.json")"
"$DISTILL" inspect "$WORK/base/data/train.jsonl" --test "$WORK/base/data/test.jsonl" --out "$WORK/inspect/qs" \
    --json >"$WORK/inspect/qs.json" && grep -q '"malformed": \[\]' "$WORK/inspect/qs.json" &&
    pass "inspect the quickstart data: exit 0, JSON on stdout" || fail "inspect the quickstart data"
expect 2 "absent.jsonl: no such file" -- "$DISTILL" inspect "$WORK/inspect/absent.jsonl"
expect 2 "--near-threshold: expected a number in \(0, 1\]" -- \
    "$DISTILL" inspect "$WORK/inspect/test.jsonl" --near-threshold 0
expect 2 "are options of inspect" -- "$DISTILL" status "$WORK/inspect" --test "$WORK/inspect/test.jsonl"

# ---- the pipeline, uninterrupted ------------------------------------------------------------------------
ref=$(variant ref "s#\"output_dir\": \"[^\"]*\"#\"output_dir\": \"$WORK/ref\"#")
if "$DISTILL" run "$ref" --quiet >"$WORK/ref.stdout" 2>"$WORK/ref.stderr"; then
    pass "distill run (uninterrupted)"
else
    fail "distill run: $(tail -3 "$WORK/ref.stderr")"
fi
grep -q "student vs teacher" "$WORK/ref.stdout" && pass "run prints the comparison table" || fail "no table printed"
for f in report.json report.md loss.svg models.svg student.safetensors baseline.safetensors; do
    [[ -s $WORK/ref/$f ]] || fail "missing $f"
done
grep -q '"teacher_output"' "$WORK/ref/generate/synthetic.inspect/inspect.json" &&
    pass "generate inspects the teacher's answers" || fail "no generate/synthetic.inspect/inspect.json"
"$DISTILL" status "$WORK/ref" >"$WORK/status.txt" && grep -q "evaluate  done" "$WORK/status.txt" &&
    pass "status after a run" || fail "status: $(cat "$WORK/status.txt")"
# a rerun skips every stage and changes nothing
before=$(md5sum "$WORK/ref/report.json" "$WORK/ref/student.safetensors")
"$DISTILL" run "$ref" --quiet >/dev/null 2>&1 && [[ $(md5sum "$WORK/ref/report.json" "$WORK/ref/student.safetensors") == "$before" ]] &&
    pass "a complete run is skipped" || fail "a rerun changed the outputs"

# ---- GGUF export of the trained student (docs/deployment.md) ------------------------------------------
# (the quickstart's job exports q8_0 and q4_k after finetune; the same job without them)
perl -0pe 's/"gguf": \[[^\]]*\]/"gguf": []/s' "$ref" >"$WORK/no_export.json"
expect 2 "export: the job's export.gguf names no tensor type" -- "$DISTILL" export "$WORK/no_export.json"
expect 2 'export.gguf\[1\]: unknown tensor type "q5"' -- "$DISTILL" export "$ref" --gguf q8_0,q5
[[ -s $WORK/ref/gguf/student-q8_0.gguf && -s $WORK/ref/gguf/student-q4_k.gguf ]] &&
    pass "finetune writes the job's GGUF files" || fail "finetune did not write gguf/student-{q8_0,q4_k}.gguf"
grep -q '"student_q4_k"' "$WORK/ref/report.json" && pass "the report measures the quantized students" ||
    fail "report.json has no student_q4_k"
if "$DISTILL" export "$ref" --gguf q8_0,q4_k,f16 >"$WORK/export.stdout" 2>"$WORK/export.stderr" &&
    [[ $(head -c 4 "$WORK/ref/gguf/student-q8_0.gguf") == GGUF && $(head -c 4 "$WORK/ref/gguf/student-q4_k.gguf") == GGUF ]] &&
    [[ $(head -c 4 "$WORK/ref/gguf/student-f16.gguf") == GGUF ]] && grep -q "gguf/student-f16.gguf" "$WORK/export.stdout"; then
    pass "distill export writes the GGUF files"
else
    fail "distill export: $(tail -3 "$WORK/export.stderr")"
fi
before=$(md5sum "$WORK/ref/gguf/student-q8_0.gguf")
"$DISTILL" export "$ref" --gguf q8_0 >/dev/null 2>&1 && [[ $(md5sum "$WORK/ref/gguf/student-q8_0.gguf") == "$before" ]] &&
    pass "a GGUF file newer than the student is kept" || fail "export rewrote a current GGUF file"

# ---- LoRA on a student that starts from a Hugging Face directory (docs/training.md#lora) -----------------
# (tests/reference/fixtures/lora/gpt2-byte: a tiny GPT2LMHeadModel over the byte tokenizer; the base job's
# student section replaced by the checkpoint's architecture, 10 steps)
lora_dir=$(cd "$(dirname "$0")/../reference/fixtures/lora/gpt2-byte" && pwd)
lora_job() {
    perl -0pe "s/\"student\": \{[^}]*\}/\"student\": {}/s; s/\"max_steps\": [0-9]*/\"max_steps\": 10/;
               s#\"output_dir\": \"[^\"]*\"#\"output_dir\": \"$WORK/lora\"#;
               s#\"task_type\": \"math\",#\"task_type\": \"math\", \"student_weights\": \"$lora_dir\", \"lora\": $2,#" \
        "$WORK/base/quickstart.job.json" >"$WORK/$1.json"
    echo "$WORK/$1.json"
}
expect 2 'lora.targets: "q" has no PEFT module in a gpt2 model' -- \
    "$DISTILL" run "$(lora_job lora_q '{"rank": 4, "targets": ["q"]}')"
expect 2 'lora.dropout: must be in \[0, 1\)' -- \
    "$DISTILL" run "$(lora_job lora_dropout '{"rank": 4, "dropout": 1, "targets": ["qkv"]}')"
# a memory plan over memory_limit_gib (docs/training.md#the-memory-plan): exit 2, the table on stderr,
# nothing written
memory_job=$(lora_job lora_memory '{"rank": 4, "targets": ["qkv"]}, "memory_limit_gib": 0.001')
sed -i "s#\"output_dir\": \"[^\"]*\"#\"output_dir\": \"$WORK/lora-memory\"#" "$memory_job"
"$DISTILL" run "$memory_job" >/dev/null 2>"$WORK/lora-memory.stderr"
rc=$?
if [[ $rc -eq 2 ]] && grep -q "memory_limit_gib: the run needs" "$WORK/lora-memory.stderr" &&
    grep -q "student weights (frozen)" "$WORK/lora-memory.stderr" &&
    grep -q "optimizer state" "$WORK/lora-memory.stderr" && [[ ! -e $WORK/lora-memory ]]; then
    pass "a run over memory_limit_gib is refused with its memory plan, nothing written"
else
    fail "memory_limit_gib: exit $rc, $(cat "$WORK/lora-memory.stderr")"
fi
lora=$(lora_job lora '{"rank": 8, "alpha": 16, "dropout": 0.05, "targets": ["qkv", "o", "up", "down"]}')
if "$DISTILL" run "$lora" --quiet >"$WORK/lora.stdout" 2>"$WORK/lora.stderr"; then
    pass "distill run with lora from a Hugging Face directory"
else
    fail "distill run with lora: $(tail -3 "$WORK/lora.stderr")"
fi
for f in student.safetensors baseline.safetensors student_hf/config.json student_hf/model.safetensors \
    student_adapter/adapter_model.safetensors student_adapter/adapter_config.json gguf/student-q8_0.gguf report.json; do
    [[ -s $WORK/lora/$f ]] || fail "lora: missing $f"
done
tr -d ' \n' <"$WORK/lora/student_adapter/adapter_config.json" >"$WORK/lora/adapter_config.flat"
grep -q '"peft_type":"LORA"' "$WORK/lora/adapter_config.flat" &&
    grep -q '"target_modules":\["attn.c_attn","attn.c_proj","mlp.c_fc","mlp.c_proj"\]' "$WORK/lora/adapter_config.flat" &&
    grep -q "\"base_model_name_or_path\":\"$lora_dir\"" "$WORK/lora/adapter_config.flat" &&
    pass "lora: student_adapter/ in PEFT's format" || fail "lora: adapter_config.json $(cat "$WORK/lora/adapter_config.flat")"
grep -q 'base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight' "$WORK/lora/student_adapter/adapter_model.safetensors" &&
    pass "lora: PEFT's tensor names" || fail "lora: adapter_model.safetensors lacks PEFT's names"
ck=$(ls -d "$WORK/lora/student/checkpoints/step-"* | tail -1)
grep -q 'h.0.qkv.lora_A' "$ck/student.safetensors" && ! grep -q 'wte.weight' "$ck/student.safetensors" &&
    pass "lora: checkpoints hold the adapters alone" || fail "lora: $ck/student.safetensors"

# ---- SIGKILL in each stage, then the same command again ----------------------------------------------
metrics() { grep -E '"(exact_match|perplexity|teacher_agreement|parameters|checkpoint_bytes)"' "$1/report.json"; }
same_as_reference() {
    local dir=$1 what=$2
    cmp -s "$dir/student.safetensors" "$WORK/ref/student.safetensors" || { fail "$what: student differs"; return; }
    cmp -s "$dir/baseline.safetensors" "$WORK/ref/baseline.safetensors" || { fail "$what: baseline differs"; return; }
    cmp -s "$dir/generate/synthetic.jsonl" "$WORK/ref/generate/synthetic.jsonl" || { fail "$what: synthetic.jsonl differs"; return; }
    for m in teacher baseline student; do
        cmp -s "$dir/eval/$m.answers.jsonl" "$WORK/ref/eval/$m.answers.jsonl" || { fail "$what: $m answers differ"; return; }
    done
    [[ $(metrics "$dir") == $(metrics "$WORK/ref") ]] || { fail "$what: report metrics differ"; return; }
    pass "$what: killed, rerun, same student, answers and report metrics"
}
# kill_when NAME CONDITION [reuse]: start a run, SIGKILL it once CONDITION holds, rerun it to the
# end; with "reuse", the run starts from the reference's teacher answers (the later stages' tests)
kill_when() {
    local name=$1 cond=$2
    local job
    job=$(variant "$name" "s#\"output_dir\": \"[^\"]*\"#\"output_dir\": \"$WORK/$name\"#")
    local dir=$WORK/$name
    if [[ ${3:-} == reuse ]]; then mkdir -p "$dir" && cp -r "$WORK/ref/generate" "$dir/"; fi
    "$DISTILL" run "$job" --quiet >/dev/null 2>&1 &
    local pid=$!
    wait_until "$cond" $pid
    if kill -0 $pid 2>/dev/null; then
        kill -9 $pid
        wait $pid 2>/dev/null
        "$DISTILL" run "$job" --quiet >/dev/null 2>"$dir.stderr" || { fail "$name: rerun failed: $(tail -2 "$dir.stderr")"; return; }
        same_as_reference "$dir" "$name"
    else
        wait $pid
        fail "$name: the run ended before the kill point ($cond)"
    fi
}
lines() { [[ -f $1 ]] && wc -l <"$1" || echo 0; }
kill_when kill_generate '[[ $(lines "$dir/generate/synthetic.jsonl") -ge 40 ]]'
kill_when kill_finetune '[[ -f $dir/student/checkpoints/latest ]]' reuse
kill_when kill_baseline '[[ -f $dir/baseline/metrics.jsonl ]]' reuse
kill_when kill_evaluate '[[ -f $dir/eval/teacher.answers.jsonl ]]' reuse

# ---- distill sweep: successive halving over three learning rates (docs/job-format.md#sweep) -----------
# eta 4, 2 rungs: all three trials to step ceil(30/4) = 8 (not a validation step of the job: the pause
# measures), the best one on to 30; 2*8 + 30 = 46 steps of the full grid's 90. The teacher's answers
# are the reference run's.
sweep_job() {  # sweep_job NAME SWEEP_JSON: the reference job with a sweep object, into $WORK/NAME
    perl -0pe "s#\"output_dir\": \"[^\"]*\"#\"output_dir\": \"$WORK/$1\"#; s#^\\{#{\"sweep\": $2,#" "$ref" >"$WORK/$1.json"
    mkdir -p "$WORK/$1/shared" && cp -r "$WORK/ref/generate" "$WORK/$1/shared/"
    echo "$WORK/$1.json"
}
lrs='"space": {"hyperparameters.learning_rate": [0.003, 0.01, 0.03]}'
sweep_spec="{$lrs, \"halving\": {\"eta\": 4, \"rungs\": 2}}"
expect 2 "sweep: is read by distill sweep only" -- "$DISTILL" run "$(sweep_job sweep_run "$sweep_spec")"
expect 2 'sweep.space: trial t00 .*hyperparameters.learnig_rate: unknown key; did you mean "learning_rate"' -- \
    "$DISTILL" sweep "$(sweep_job sweep_key '{"space": {"hyperparameters.learnig_rate": [0.01]}}')"
expect 2 "sweep.halving.eta: must be a number >= 2, got 1" -- \
    "$DISTILL" sweep "$(sweep_job sweep_eta "{$lrs, \"halving\": {\"eta\": 1}}")"
expect 2 "--stop-at is an option of finetune" -- "$DISTILL" run "$ref" --stop-at 3
sweep=$(sweep_job sweep "$sweep_spec")
if "$DISTILL" sweep "$sweep" --quiet >"$WORK/sweep.stdout" 2>"$WORK/sweep.stderr" &&
    grep -q '"steps_spent": 46' "$WORK/sweep/sweep.json" && grep -q '"full_grid_steps": 90' "$WORK/sweep/sweep.json" &&
    grep -q "| 1 | t0" "$WORK/sweep.stdout" && [[ -s $WORK/sweep/sweep.svg && -s $WORK/sweep/best_job.json ]]; then
    pass "distill sweep: ranked table, 46 of 90 steps, chart, best job"
else
    fail "distill sweep: $(tail -3 "$WORK/sweep.stderr")"
fi
best=$(grep -o '| 1 | t0[0-9]' "$WORK/sweep/sweep.md" | cut -c7-)
# the best trial paused at step 8 and went on; trained alone by its job it ends with the same weights
mkdir -p "$WORK/sweep/best" && cp -r "$WORK/ref/generate" "$WORK/sweep/best/"
if "$DISTILL" finetune "$WORK/sweep/best_job.json" --quiet 2>"$WORK/sweep_best.stderr" &&
    cmp -s "$WORK/sweep/best/student.safetensors" "$WORK/sweep/trials/$best/student.safetensors"; then
    pass "sweep: the best trial, paused at a rung and continued, equals its job trained without a pause"
else
    fail "sweep: best_job.json's student differs from trial $best's $(tail -2 "$WORK/sweep_best.stderr")"
fi
# SIGKILL during the second trial's first rung (its child process dies with it), then the same command
killed=$(sweep_job sweep_kill "$sweep_spec")
"$DISTILL" sweep "$killed" --quiet >/dev/null 2>&1 &
pid=$!
wait_until "[[ -f $WORK/sweep_kill/trials/t01/student/metrics.jsonl ]]" $pid
if kill -0 $pid 2>/dev/null; then
    kill -9 $pid
    wait $pid 2>/dev/null
    if "$DISTILL" sweep "$killed" --quiet >/dev/null 2>"$WORK/sweep_kill.stderr" &&
        cmp -s "$WORK/sweep/sweep.md" "$WORK/sweep_kill/sweep.md" &&
        cmp -s "$WORK/sweep/trials/$best/student.safetensors" "$WORK/sweep_kill/trials/$best/student.safetensors"; then
        pass "sweep: killed in a trial, rerun, the same ranking and best student"
    else
        fail "sweep: killed and rerun: $(tail -2 "$WORK/sweep_kill.stderr"; diff "$WORK/sweep/sweep.md" "$WORK/sweep_kill/sweep.md")"
    fi
else
    wait $pid
    fail "sweep_kill: the sweep ended before the kill point"
fi

# ---- every loss term the job format accepts, alone and in the common pairs, to a report -------------------
# Reduced: a 2-layer d=32 student, 8 steps, 20 test prompts, no baseline; the teacher's answers are the
# reference run's (same teacher, data and generation), except for topk_soft_kl, whose generation asks for
# top-k log-probabilities.
teacher_weights=$(grep -o '"weights": "[^"]*"' "$WORK/base/quickstart.job.json" | cut -d'"' -f4)
head -n 20 "$WORK/base/data/test.jsonl" >"$WORK/base/data/test20.jsonl"
loss_job() {  # loss_job NAME LOSS_JSON [top_logprobs]
    cat >"$WORK/loss_$1.json" <<EOF
{
  "teacher": {"kind": "model", "weights": "$teacher_weights", "max_batch": 32},
  "student": {"vocab_size": 263, "context_length": 96, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
  "training_data": "$WORK/base/data/train.jsonl",
  "validation_data": "$WORK/base/data/validation.jsonl",
  "test_data": "$WORK/base/data/test20.jsonl",
  "task_type": "math",
  "generation": {"temperature": 0.0, "max_new_tokens": 48${3:+, \"top_logprobs\": $3}},
  "hyperparameters": {"learning_rate": 0.01, "batch_size": 16, "max_steps": 8, "checkpoint_every": 0, "log_every": 4},
  "loss": $2,
  "baseline": {"enabled": false},
  "evaluation": {"batch_size": 20, "latency_samples": 2},
  "output_dir": "$WORK/loss_$1"
}
EOF
    [[ -z ${3:-} ]] && mkdir -p "$WORK/loss_$1" && cp -r "$WORK/ref/generate" "$WORK/loss_$1/"
    if "$DISTILL" run "$WORK/loss_$1.json" --quiet >/dev/null 2>"$WORK/loss_$1.stderr" &&
        grep -q '"exact_match"' "$WORK/loss_$1/report.json" 2>/dev/null; then
        pass "loss $2: distill run to a report"
    else
        fail "loss $2: $(tail -2 "$WORK/loss_$1.stderr")"
    fi
}
loss_job soft_kl '{"soft_kl": {}}'
loss_job reverse_kl '{"reverse_kl": {}}'
loss_job jsd '{"jsd": {"beta": 0.5}}'
loss_job hard_ce '{"hard_ce": {}}'
loss_job hidden_mse '{"hidden_mse": {}}'
loss_job attention_kl '{"attention_kl": {}}'
loss_job attention_relation '{"attention_relation": {}}'
loss_job topk_soft_kl '{"topk_soft_kl": {}}' 5
loss_job soft_kl_hard_ce '{"soft_kl": {}, "hard_ce": {}}'
loss_job reverse_kl_hard_ce '{"reverse_kl": {}, "hard_ce": {}}'
loss_job jsd_hard_ce '{"jsd": {}, "hard_ce": {}}'
loss_job topk_soft_kl_hard_ce '{"topk_soft_kl": {}, "hard_ce": {}}' 5
loss_job soft_kl_hidden_mse '{"soft_kl": {}, "hidden_mse": {"weight": 0.1}}'
loss_job soft_kl_attention_kl '{"soft_kl": {}, "attention_kl": {"weight": 0.1}}'
loss_job hidden_attention '{"hidden_mse": {}, "attention_kl": {}}'

# ---- several teachers: the loss_soft_kl_hard_ce job with the same checkpoint twice, routed per example --------
sed "s#\"teacher\": {\"kind\"#\"route\": \"example\", \"teachers\": [{\"name\": \"a\", \"kind\"#;
     s#\"max_batch\": 32}#\"max_batch\": 32}, {\"name\": \"b\", \"weight\": 3, \"kind\": \"model\", \"weights\": \"$teacher_weights\", \"max_batch\": 32}]#;
     s#loss_soft_kl_hard_ce\"#multi_teacher\"#" "$WORK/loss_soft_kl_hard_ce.json" >"$WORK/multi_teacher.json"
if "$DISTILL" run "$WORK/multi_teacher.json" --quiet >/dev/null 2>"$WORK/multi_teacher.stderr" &&
    grep -q '"answered_by":"b"' "$WORK/multi_teacher/generate/synthetic.jsonl" &&
    grep -q '"teacher_a"' "$WORK/multi_teacher/report.json" && grep -q '## Teachers' "$WORK/multi_teacher/report.md"; then
    pass "a job with two teachers: answers record their teacher, the report shows each"
else
    fail "two teachers: $(tail -2 "$WORK/multi_teacher.stderr")"
fi
expect 2 'loss: with several teachers only their logits are mixed' -- \
    "$DISTILL" run "$(sed 's#"hard_ce": {}#"hidden_mse": {}#' "$WORK/multi_teacher.json" >"$WORK/multi_hidden.json"; echo "$WORK/multi_hidden.json")"
expect 2 'teachers: and "teacher" are exclusive' -- \
    "$DISTILL" run "$(sed 's#"route": "example", #"teacher": {"kind": "model"}, "route": "example", #' "$WORK/multi_teacher.json" >"$WORK/multi_both.json"; echo "$WORK/multi_both.json")"
# teachers of different kinds (teacher::Any): the model and a cache of the reference run's answers; the
# cache has no test answers, so report.md must say its test requests failed
cat "$WORK/ref/generate/synthetic.jsonl" "$WORK/ref/generate/synthetic.validation.jsonl" >"$WORK/ref_answers.jsonl"
sed "s#{\"name\": \"b\", \"weight\": 3, \"kind\": \"model\", [^}]*}#{\"name\": \"c\", \"kind\": \"cache\", \"path\": \"$WORK/ref_answers.jsonl\"}#;
     s#\"soft_kl\": {}, ##; s#multi_teacher\"#mixed_kinds\"#" "$WORK/multi_teacher.json" >"$WORK/mixed_kinds.json"
if "$DISTILL" run "$WORK/mixed_kinds.json" --quiet >/dev/null 2>"$WORK/mixed_kinds.stderr" &&
    grep -q '"answered_by":"c"' "$WORK/mixed_kinds/generate/synthetic.jsonl" &&
    grep -q '"answered_by":"a"' "$WORK/mixed_kinds/generate/synthetic.jsonl" &&
    grep -q '^\*\*teacher c\*\*: 20 of 20 test requests failed' "$WORK/mixed_kinds/report.md"; then
    pass "teachers of different kinds: a model and a cache answer, the report names the cache's failed test requests"
else
    fail "teachers of different kinds: $(tail -2 "$WORK/mixed_kinds.stderr")"
fi
expect 2 "loss.soft_kl reads the teachers' distributions, but teachers\[1\] is of kind \"cache\"" -- \
    "$DISTILL" run "$(sed 's#"hard_ce": {}#"soft_kl": {}#' "$WORK/mixed_kinds.json" >"$WORK/mixed_soft.json"; echo "$WORK/mixed_soft.json")"

# ---- precision: bf16 runs where oneDNN and the CPU can, and is refused with one line elsewhere --------------
expect 2 "--precision: expected fp32 or bf16, got fp16" -- "$DISTILL" run "$WORK/loss_soft_kl.json" --precision fp16
expect 2 'precision: expected "fp32" or "bf16", got "fp16"' -- \
    "$DISTILL" run "$(variant fp16 's/"task_type"/"precision": "fp16", "task_type"/')"
if "$DISTILL" --version | grep -q "oneDNN yes"; then
    # a CPU without oneDNN's bf16 matmul, as on an AVX2 host
    ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2 expect 2 'precision: "bf16" is refused: this CPU \(oneDNN.s ISA: avx2\)' -- \
        "$DISTILL" run "$WORK/loss_soft_kl.json" --precision bf16
else
    expect 2 'precision: "bf16" is refused: bf16 needs oneDNN' -- "$DISTILL" run "$WORK/loss_soft_kl.json" --precision bf16
fi
if "$DISTILL" --version | grep -q "bf16 precision: available"; then
    sed 's/"loss": {/"precision": "bf16", "loss": {/; s#loss_soft_kl"#loss_soft_kl_bf16"#' "$WORK/loss_soft_kl.json" >"$WORK/bf16.json"
    if "$DISTILL" run "$WORK/bf16.json" --quiet >/dev/null 2>"$WORK/bf16.stderr" &&
        grep -q '"exact_match"' "$WORK/loss_soft_kl_bf16/report.json"; then
        pass "a job with \"precision\": \"bf16\" runs to a report"
    else
        fail "bf16 job: $(tail -2 "$WORK/bf16.stderr")"
    fi
    cp "$WORK/bf16.json" "$WORK/bf16_over_fp32.json" && sed -i 's#loss_soft_kl_bf16"#loss_soft_kl"#' "$WORK/bf16_over_fp32.json"
    expect 1 "fingerprint" -- "$DISTILL" run "$WORK/bf16_over_fp32.json" --quiet
fi

# ---- data parallelism: distill run under mpirun -np 2 (docs/scaling.md) ------------------------------------
if "$DISTILL" --version | grep -q "MPI yes" && command -v mpirun >/dev/null; then
    mpi=(mpirun -np 2 --allow-run-as-root --oversubscribe)
    for d in dp_a dp_b; do  # the loss_soft_kl job with its global batch of 16 as 2 micro-batches of 8
        sed "s#loss_soft_kl\"#$d\"#; s/\"batch_size\": 16, /\"batch_size\": 8, \"grad_accum\": 2, /;
             s/\"max_steps\": 8/\"max_steps\": 16/; s/\"checkpoint_every\": 0/\"checkpoint_every\": 2/" \
            "$WORK/loss_soft_kl.json" >"$WORK/$d.json"
        mkdir -p "$WORK/$d" && cp -r "$WORK/ref/generate" "$WORK/$d/"
        "${mpi[@]}" "$DISTILL" run "$WORK/$d.json" --quiet >"$WORK/$d.stdout" 2>"$WORK/$d.stderr" ||
            fail "mpirun -np 2 distill run $d.json: $(tail -3 "$WORK/$d.stderr")"
    done
    if [[ -f $WORK/dp_a/report.json ]] && grep -q "Distillation report" "$WORK/dp_a.stdout" &&
        [[ $(grep -c "Distillation report" "$WORK/dp_a.stdout") -eq 1 ]]; then
        pass "mpirun -np 2 distill run: a report, printed once (by rank 0)"
    else
        fail "mpirun -np 2 distill run: no report, or printed by both ranks"
    fi
    if cmp -s "$WORK/dp_a/student.safetensors" "$WORK/dp_b/student.safetensors"; then
        pass "two 2-rank runs train bit-identical students"
    else
        fail "two 2-rank runs trained different students"
    fi
    # a rank SIGKILLed in finetune ends the job (no rank left waiting); the rerun ends with the same student
    sed 's#/dp_a"#/dp_kill"#' "$WORK/dp_a.json" >"$WORK/dp_kill.json"
    mkdir -p "$WORK/dp_kill" && cp -r "$WORK/ref/generate" "$WORK/dp_kill/"
    "${mpi[@]}" "$DISTILL" run "$WORK/dp_kill.json" --quiet >/dev/null 2>&1 &
    launcher=$! waited=0
    until [[ -f $WORK/dp_kill/student/checkpoints/latest ]] || ! kill -0 $launcher 2>/dev/null; do
        sleep 0.02
        waited=$((waited + 1))
        [[ $waited -gt 15000 ]] && break
    done
    victim=$(pgrep -f "distill run $WORK/dp_kill.json" | grep -v "^$launcher\$" | tail -n 1)
    if [[ -n $victim ]] && kill -9 "$victim" 2>/dev/null; then
        t0=$SECONDS
        wait $launcher
        rc=$?
        if [[ $rc -ne 0 && $((SECONDS - t0)) -le 30 ]]; then
            pass "a rank SIGKILLed: the job exits $rc within $((SECONDS - t0)) s"
        else
            fail "a rank SIGKILLed: the job exited $rc after $((SECONDS - t0)) s"
        fi
        if "${mpi[@]}" "$DISTILL" run "$WORK/dp_kill.json" --quiet >/dev/null 2>"$WORK/dp_kill.stderr" &&
            cmp -s "$WORK/dp_kill/student.safetensors" "$WORK/dp_a/student.safetensors"; then
            pass "the rerun after a killed rank ends with the uninterrupted run's student"
        else
            fail "the rerun after a killed rank: $(tail -2 "$WORK/dp_kill.stderr")"
        fi
    else
        wait $launcher
        fail "dp_kill: the run ended before a rank could be killed"
    fi
    # ZeRO-1: the optimizer state sharded over the ranks trains the same student bit for bit
    sed 's#/dp_a"#/dp_zero"#; s#"output_dir"#"zero": 1, "output_dir"#' "$WORK/dp_a.json" >"$WORK/dp_zero.json"
    mkdir -p "$WORK/dp_zero" && cp -r "$WORK/ref/generate" "$WORK/dp_zero/"
    if "${mpi[@]}" "$DISTILL" run "$WORK/dp_zero.json" --quiet >/dev/null 2>"$WORK/dp_zero.stderr" &&
        cmp -s "$WORK/dp_zero/student.safetensors" "$WORK/dp_a/student.safetensors" &&
        ls "$WORK"/dp_zero/student/checkpoints/step-*/optimizer-shard-1-of-2.safetensors >/dev/null 2>&1; then
        pass "\"zero\": 1 under mpirun -np 2: optimizer shards in the checkpoints, the same student bit for bit"
    else
        fail "\"zero\": 1 under mpirun -np 2: $(tail -2 "$WORK/dp_zero.stderr")"
    fi
    # sharded generate and evaluate: the ranks answer the prompts (generate) and the test prompts
    # (evaluate, batches of 8) in turn; rank 0 merges synthetic.jsonl and gathers the answers
    sed 's#/dp_a"#/dp_shard"#; s/"evaluation": {"batch_size": 20/"evaluation": {"batch_size": 8/' "$WORK/dp_a.json" \
        >"$WORK/dp_shard.json"
    "${mpi[@]}" "$DISTILL" run "$WORK/dp_shard.json" --quiet >/dev/null 2>"$WORK/dp_shard.stderr" ||
        fail "mpirun -np 2 distill run dp_shard.json: $(tail -3 "$WORK/dp_shard.stderr")"
    if cmp -s "$WORK/dp_shard/generate/synthetic.jsonl" "$WORK/ref/generate/synthetic.jsonl" &&
        cmp -s "$WORK/dp_shard/generate/synthetic.rejected.jsonl" "$WORK/ref/generate/synthetic.rejected.jsonl"; then
        pass "sharded generate: synthetic.jsonl and its rejections are one process's bytes"
    else
        fail "sharded generate: synthetic.jsonl differs from one process's"
    fi
    # with top-k log-probabilities: synthetic.topk merged too (the one-process run: loss_topk_soft_kl)
    sed 's#/loss_topk_soft_kl"#/dp_topk"#; s/"batch_size": 16, /"batch_size": 8, "grad_accum": 2, /' \
        "$WORK/loss_topk_soft_kl.json" >"$WORK/dp_topk.json"
    if "${mpi[@]}" "$DISTILL" generate "$WORK/dp_topk.json" --quiet >/dev/null 2>"$WORK/dp_topk.stderr" &&
        cmp -s "$WORK/dp_topk/generate/synthetic.topk" "$WORK/loss_topk_soft_kl/generate/synthetic.topk" &&
        cmp -s "$WORK/dp_topk/generate/synthetic.jsonl" "$WORK/loss_topk_soft_kl/generate/synthetic.jsonl"; then
        pass "sharded generate with top-k: synthetic.topk and synthetic.jsonl are one process's bytes"
    else
        fail "sharded generate with top-k: $(tail -2 "$WORK/dp_topk.stderr")"
    fi
    # the same student evaluated by one process
    sed 's#/dp_shard"#/dp_shard1"#' "$WORK/dp_shard.json" >"$WORK/dp_shard1.json"
    rm -rf "$WORK/dp_shard1" && cp -r "$WORK/dp_shard" "$WORK/dp_shard1" && rm -f "$WORK/dp_shard1/report.json"
    "$DISTILL" evaluate "$WORK/dp_shard1.json" --quiet >/dev/null 2>&1
    if [[ -s $WORK/dp_shard1/report.json ]] && [[ $(metrics "$WORK/dp_shard") == $(metrics "$WORK/dp_shard1") ]] &&
        cmp -s "$WORK/dp_shard/eval/student.answers.jsonl" "$WORK/dp_shard1/eval/student.answers.jsonl" &&
        cmp -s "$WORK/dp_shard/eval/teacher.answers.jsonl" "$WORK/dp_shard1/eval/teacher.answers.jsonl"; then
        pass "sharded evaluate: the answers and report metrics of one process"
    else
        fail "sharded evaluate: answers or metrics differ from one process's"
    fi
    # a rank SIGKILLed in generate: the rerun resumes each shard and merges the same file
    sed 's#/dp_shard"#/dp_gkill"#' "$WORK/dp_shard.json" >"$WORK/dp_gkill.json"
    rm -rf "$WORK/dp_gkill"
    "${mpi[@]}" "$DISTILL" generate "$WORK/dp_gkill.json" --quiet >/dev/null 2>&1 &
    launcher=$!
    wait_until "[[ -s $WORK/dp_gkill/generate/synthetic.shards/rank-1-of-2/synthetic.jsonl ]]" $launcher
    victim=$(pgrep -f "distill generate $WORK/dp_gkill.json" | grep -v "^$launcher\$" | tail -n 1)
    [[ -n $victim ]] && kill -9 "$victim" 2>/dev/null
    wait $launcher
    if "${mpi[@]}" "$DISTILL" generate "$WORK/dp_gkill.json" --quiet >/dev/null 2>"$WORK/dp_gkill.stderr" &&
        cmp -s "$WORK/dp_gkill/generate/synthetic.jsonl" "$WORK/ref/generate/synthetic.jsonl"; then
        pass "a rank SIGKILLed in generate${victim:+ (pid $victim)}: the rerun merges one process's synthetic.jsonl"
    else
        fail "a rank SIGKILLed in generate: $(tail -2 "$WORK/dp_gkill.stderr")"
    fi
    sed 's#/dp_a"#/dp_odd"#; s/"grad_accum": 2/"grad_accum": 1/' "$WORK/dp_a.json" >"$WORK/dp_odd.json"
    "${mpi[@]}" "$DISTILL" run "$WORK/dp_odd.json" --quiet >/dev/null 2>"$WORK/dp_odd.stderr"
    rc=$?
    if [[ $rc -eq 2 ]] && grep -q "hyperparameters.grad_accum: is 1, but the 2 ranks" "$WORK/dp_odd.stderr"; then
        pass "mpirun -np 2 with grad_accum 1 -> 2: $(grep -m1 grad_accum "$WORK/dp_odd.stderr")"
    else
        fail "mpirun -np 2 with grad_accum 1 exited $rc: $(head -3 "$WORK/dp_odd.stderr")"
    fi
fi

# ---- a teacher behind an OpenAI-compatible endpoint ---------------------------------------------------
if [[ -n $SERVE ]]; then
    weights=$(grep -o '"weights": "[^"]*"' "$WORK/base/quickstart.job.json" | cut -d'"' -f4)
    "$SERVE" --weights "$weights" --port 0 --port-file "$WORK/port" --model math-teacher --quiet &
    serve_pid=$!
    for _ in $(seq 200); do [[ -s $WORK/port ]] && break; sleep 0.05; done
    port=$(cat "$WORK/port" 2>/dev/null)
    job=$WORK/openai.json
    cat >"$job" <<EOF
{
  "teacher": {"kind": "openai", "base_url": "http://127.0.0.1:$port/v1", "model": "math-teacher",
              "tokenizer": "byte-v1", "concurrency": 8},
  "student": {"vocab_size": 263, "context_length": 128, "d_model": 64, "n_layers": 1, "n_heads": 2, "d_ff": 128},
  "training_data": "$WORK/base/data/train.jsonl",
  "test_data": "$WORK/base/data/test.jsonl",
  "task_type": "math",
  "generation": {"temperature": 0, "max_new_tokens": 48, "top_logprobs": 5},
  "hyperparameters": {"learning_rate": 0.003, "batch_size": 16, "max_steps": 20, "temperature": 1.0},
  "loss": {"topk_soft_kl": {"weight": 1}, "hard_ce": {"weight": 1}},
  "evaluation": {"latency_samples": 4, "max_examples": 40},
  "output_dir": "$WORK/openai"
}
EOF
    if "$DISTILL" run "$job" --quiet >"$WORK/openai.stdout" 2>"$WORK/openai.stderr"; then
        grep -q '"name": "openai:' "$WORK/openai/report.json" && pass "distill run with an OpenAI-compatible teacher" ||
            fail "openai: the report does not name the endpoint teacher"
    else
        fail "distill run with an OpenAI-compatible teacher: $(tail -3 "$WORK/openai.stderr")"
    fi
    kill $serve_pid 2>/dev/null
    wait $serve_pid 2>/dev/null
fi

echo "$failures failure(s)"
[[ $failures -eq 0 ]]
