// Trains the examples' teachers: a byte-level GPT that answers one of the built-in seeded tasks
// (data::make_task_examples: math word problems, or the templated nli, qa, conversation and
// summarization tasks of data/text_tasks.hpp) in the chat-template format teacher::Model uses, so
// that teacher::Model's greedy `generate` answers them. Fixed seeds: the same command and thread
// count give the same checkpoint, bit for bit. Writes the weights (config in the metadata) and prints
// the held-out score in the task's primary metric (eval::task_metrics).
//
//   DISTILL_NUM_THREADS=1 train_teacher [--task math|nli|qa|conversation|summarization]
//       [--out examples/data/<task>_teacher.safetensors] [--steps N] [--batch B] [--lr X] [--train N]
//       [--test N] [--eval-every N] [--d-model C] [--layers L] [--heads H] [--d-ff F] [--context T]
//       [--bf16] [--evaluate] [--ops add,sub,mul]
//
// --ops picks the operations of the math task's training and held-out problems (add, sub, mul, div;
// default the quickstart's add,sub,mul). --evaluate only scores the checkpoint --out names. The
// shipped examples/data/math_teacher.safetensors is this program's default run (1500 steps of 32
// sequences; 1600 s on one core shared with other jobs); docs/tasks.md gives the commands of the other
// tasks' teachers. The division teacher of examples/multi_teacher,
// examples/data/math_teacher_div.safetensors (641 024 parameters; 184 s of training on one core
// shared with other jobs; held-out exact match 100% of 300), is
//
//   DISTILL_NUM_THREADS=1 train_teacher --ops div --out examples/data/math_teacher_div.safetensors \
//       --steps 600 --batch 32 --train 20000 --test 300 --d-model 128 --layers 3 --heads 4 --d-ff 512 \
//       --eval-every 200

#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>
#include <string>

#include "math_common.hpp"

int main(int argc, char** argv) try {
    using namespace distill;
    std::string task = "math", out;
    std::int64_t steps = 1500, eval_every = 0;
    int batch = 32, n_train = 60000, n_test = 500, threads = 0;
    double lr = 2e-3;
    bool bf16 = false, evaluate_only = false;
    std::vector<data::MathOp> ops(std::begin(data::default_math_ops), std::end(data::default_math_ops));
    std::string ops_text = "add,sub,mul";
    student::TransformerConfig cfg{.vocab_size = data::ByteTokenizer::vocab_size(),
                                   .context_length = 96,
                                   .d_model = 160,
                                   .n_layers = 4,
                                   .n_heads = 8,
                                   .d_ff = 640};
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) throw config_error(a, "needs a value");
            return argv[++i];
        };
        if (a == "--task")
            task = next();
        else if (a == "--out")
            out = next();
        else if (a == "--steps")
            steps = std::atoll(next());
        else if (a == "--batch")
            batch = std::atoi(next());
        else if (a == "--lr")
            lr = std::atof(next());
        else if (a == "--train")
            n_train = std::atoi(next());
        else if (a == "--test")
            n_test = std::atoi(next());
        else if (a == "--eval-every")
            eval_every = std::atoll(next());
        else if (a == "--threads")
            threads = std::atoi(next());
        else if (a == "--d-model")
            cfg.d_model = std::atoi(next());
        else if (a == "--layers")
            cfg.n_layers = std::atoi(next());
        else if (a == "--heads")
            cfg.n_heads = std::atoi(next());
        else if (a == "--d-ff")
            cfg.d_ff = std::atoi(next());
        else if (a == "--context")
            cfg.context_length = std::atoi(next());
        else if (a == "--bf16")
            bf16 = true;
        else if (a == "--evaluate")
            evaluate_only = true;
        else if (a == "--ops") {
            ops_text = next();
            ops.clear();
            std::stringstream list(ops_text);
            for (std::string op; std::getline(list, op, ',');) ops.push_back(data::parse_math_op(op, "--ops"));
        } else {
            std::fprintf(stderr,
                         "usage: train_teacher [--task math|nli|qa|conversation|summarization] [--out FILE]\n"
                         "       [--steps N] [--batch B] [--lr X] [--train N] [--test N]\n"
                         "       [--eval-every N] [--threads N] [--d-model C] [--layers L] [--heads H] [--d-ff F]\n"
                         "       [--context T] [--bf16] [--evaluate] [--ops add,sub,mul,div]\n");
            return 2;
        }
    }
    const device::Cpu cpu = threads > 0 ? device::Cpu(threads) : device::Cpu();
    const auto t_start = std::chrono::steady_clock::now();

    if (task != "math" && ops_text != "add,sub,mul") throw config_error("--ops", "applies to --task math only");
    if (out.empty()) out = "examples/data/" + task + "_teacher.safetensors";
    // training examples from one seed, held-out examples from another. The tasks' spaces are small
    // (the math task has about 11 500 distinct questions), so held-out prompts may also occur in
    // training; the score is reported on all of them and on the unseen ones alone.
    auto examples = [&](std::uint64_t seed, int count) {
        if (task != "math") return data::make_task_examples(task, seed, std::size_t(count));
        std::vector<data::TaskExample> math;
        for (auto& p : data::make_math_problems(seed, std::size_t(count), ops))
            math.push_back({std::move(p.question), std::move(p.solution)});
        return math;
    };
    const auto train_examples = examples(1001, n_train);
    std::set<std::string> seen;
    for (const auto& e : train_examples) seen.insert(e.prompt);
    const auto test = examples(1002, n_test);
    std::vector<std::string> test_prompts, test_references;
    for (const auto& e : test) {
        test_prompts.push_back(e.prompt);
        test_references.push_back(e.response);
    }
    const data::ChatTokenizer tmpl;
    data::SequenceDataset train(data::ByteTokenizer::pad, cfg.context_length);
    for (const auto& e : train_examples) math_kd::add_example(train, tmpl, e.prompt, e.response);
    // the task's primary metric (the first eval::task_metrics reports) of `answers` against `references`
    const std::string primary = eval::task_metrics(task, {""}, {""}).begin().key();
    auto score = [&](const std::vector<std::string>& answers, const std::vector<std::string>& references) {
        return eval::task_metrics(task, answers, references).begin().value().get<double>();
    };

    math_kd::Net model(cfg, batch, cpu);
    model.init(7);
    std::printf("teacher: d_model %d, %d layers, %d heads, d_ff %d, context %d: %lld parameters; %d threads\n",
                cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.context_length,
                static_cast<long long>(cfg.parameter_count()), cpu.threads());
    std::printf("data: %s%s, %zu training examples (seed 1001), %zu held-out (seed 1002)\n", task.c_str(),
                task == "math" ? (" (" + ops_text + ")").c_str() : "", train_examples.size(), test.size());

    math_kd::Runner runner(cfg, math_kd::runner_config(32), cpu);
    auto accuracy = [&](std::size_t n) {
        math_kd::copy_weights(model, runner);
        n = std::min(n, test.size());
        const std::vector<std::string> prompts(test_prompts.begin(), test_prompts.begin() + std::ptrdiff_t(n));
        const std::vector<std::string> refs(test_references.begin(), test_references.begin() + std::ptrdiff_t(n));
        return score(math_kd::answer_all(runner, prompts, 48), refs);
    };

    optim::AdamW<float, device::Cpu> opt(model.parameters(), {.weight_decay = 0.1}, cpu);
    train::FinetuneConfig fc;
    fc.max_steps = steps;
    fc.batch_size = batch;
    fc.seed = 11;
    fc.log_every = 100;
    const optim::Schedule schedule({.learning_rate = lr, .warmup_steps = std::min<std::int64_t>(200, steps / 10)},
                                   train::total_steps(fc, train.size()));
    train::FinetuneOptions<float> options;
    if (eval_every > 0)
        options.on_step = [&](const train::StepReport& r) {
            if (r.step % eval_every == 0 && r.step < steps)
                std::printf("step %lld: loss %.4f, held-out %s (200) %.4f  [%.0f s]\n", static_cast<long long>(r.step),
                            r.loss, primary.c_str(), accuracy(200), math_kd::seconds_since(t_start));
        };
    if (!evaluate_only) {
        const auto t_train = std::chrono::steady_clock::now();
        const auto result = train::finetune(model, opt, schedule, train, nullptr, fc, train::CrossEntropy{}, options);
        const double train_s = math_kd::seconds_since(t_train);
        io::save_weights(
            out, model, bf16 ? io::dtype::BF16 : io::dtype::F32,
            {{"task", "distill " + task + " task (data::make_task_examples), seed 1001" +
                          (task == "math" && ops_text != "add,sub,mul" ? ", operations " + ops_text : std::string())},
             {"trained_by", "examples/train_teacher"}});
        std::printf("trained %lld steps of %d in %.1f s (final loss %.4f); wrote %s (%lld bytes)\n",
                    static_cast<long long>(result.steps), batch, train_s, result.last_loss, out.c_str(),
                    static_cast<long long>(std::filesystem::file_size(out)));
    }

    // the held-out score, through the checkpoint exactly as teacher::Model loads it
    teacher::ModelConfig mc;
    mc.weights = out;
    mc.max_batch = 32;
    math_kd::Runner loaded(mc, cpu);
    const auto t_eval = std::chrono::steady_clock::now();
    const auto answers = math_kd::answer_all(loaded, test_prompts, 48);
    const double held_out = score(answers, test_references);
    for (std::size_t i = 0; i < 3 && i < test.size(); ++i)
        std::printf("  Q: %s\n  A: %s\n", test_prompts[i].c_str(), answers[i].c_str());
    std::vector<std::string> unseen_answers, unseen_references;
    for (std::size_t i = 0; i < test.size(); ++i)
        if (!seen.count(test_prompts[i])) {
            unseen_answers.push_back(answers[i]);
            unseen_references.push_back(test_references[i]);
        }
    std::printf("held-out %s: %.4f on %zu (%.1f s to answer them); on the %zu prompts not in the training set: %.4f\n",
                primary.c_str(), held_out, test.size(), math_kd::seconds_since(t_eval), unseen_answers.size(),
                unseen_answers.empty() ? 0.0 : score(unseen_answers, unseen_references));
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "train_teacher: %s\n", e.what());
    return 1;
}
