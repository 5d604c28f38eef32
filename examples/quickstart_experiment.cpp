// The experiment behind the quickstart's settings: with most training prompts unlabeled, does a
// student distilled online from the shipped math teacher beat a baseline student (same
// architecture, same step budget) trained on the labeled part alone, and how long does each
// stage take?
//
// Stages, each timed: the teacher answers every training prompt (greedy); the distilled student
// trains on prompt + teacher answer with SoftKL (+ HardCE) + HiddenMSE + AttentionKL against a live
// teacher forward; the baseline trains with cross-entropy on the labeled prompts only; teacher,
// baseline and distilled student answer the test problems (greedy; final number compared).
//
//   quickstart_experiment [--teacher FILE] [--train N] [--test N] [--labeled F] [--steps S]
//       [--batch B] [--lr X] [--tau T] [--w-kl W] [--w-ce W] [--w-hidden W] [--w-attn W]
//       [--d-model C] [--layers L] [--heads H] [--d-ff F] [--context T] [--curve N] [--seed S]

#include <cstdio>
#include <cstdlib>
#include <string>

#include "math_common.hpp"

namespace {

using namespace distill;
using Loss = loss::Sum<loss::SoftKL, loss::HardCE, loss::HiddenMSE, loss::AttentionKL>;

// Online distillation as a finetune loss callback: teacher forward on the batch, then the student's.
struct OnlineLoss {
    math_kd::Runner* teacher;
    Loss* loss;
    loss::Workspace<float, device::Cpu>* ws;
    loss::teacher_outputs<float>* tout;
    std::vector<std::uint8_t>* mask;

    train::LossValues operator()(math_kd::Net& s, const data::Batch& b, train::pass p) {
        teacher->forward(b.tokens.data(), b.batch, b.length);
        loss::collect_outputs(teacher->network(), *tout);
        s.forward(b.tokens.data(), b.batch, b.length);
        mask->assign(b.targets.size(), 0);
        for (std::size_t i = 0; i < b.targets.size(); ++i) (*mask)[i] = b.targets[i] >= 0;
        auto ctx = ws->begin(s, *tout, Tensor<const std::uint8_t>(mask->data(), {b.batch, b.length}),
                             Tensor<const std::int32_t>(b.targets.data(), {b.batch, b.length}));
        const double total = (*loss)(ctx);
        ws->finish();
        if (p == train::pass::train) s.backward(ws->d_hidden(), ws->d_attention(), ws->d_qkv());
        train::LossValues v{total, {}};
        for (std::size_t i = 0; i < Loss::size; ++i)
            if (loss->weights()[i] > 0) v.terms.push_back({Loss::names()[i], loss->weights()[i] * loss->values()[i]});
        return v;
    }
};

}  // namespace

int main(int argc, char** argv) try {
    std::string teacher_path = "examples/data/math_teacher.safetensors";
    int n_train = 3000, n_val = 128, n_test = 300, batch = 32, threads = 0, curve = 0;
    bool run_baseline = true;
    std::int64_t steps = 400, seed = 2026;
    double labeled = 0.1, lr = 3e-3, tau = 2.0, w_kl = 1.0, w_ce = 0.0, w_hidden = 1.0, w_attn = 1.0;
    student::TransformerConfig scfg{.vocab_size = data::ByteTokenizer::vocab_size(),
                                    .context_length = 96,
                                    .d_model = 64,
                                    .n_layers = 2,
                                    .n_heads = 4,
                                    .d_ff = 256};
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) throw config_error(a, "needs a value");
            return argv[++i];
        };
        if (a == "--teacher")
            teacher_path = next();
        else if (a == "--train")
            n_train = std::atoi(next());
        else if (a == "--test")
            n_test = std::atoi(next());
        else if (a == "--val")
            n_val = std::atoi(next());
        else if (a == "--no-baseline")
            run_baseline = false;
        else if (a == "--labeled")
            labeled = std::atof(next());
        else if (a == "--steps")
            steps = std::atoll(next());
        else if (a == "--batch")
            batch = std::atoi(next());
        else if (a == "--lr")
            lr = std::atof(next());
        else if (a == "--tau")
            tau = std::atof(next());
        else if (a == "--w-kl")
            w_kl = std::atof(next());
        else if (a == "--w-ce")
            w_ce = std::atof(next());
        else if (a == "--w-hidden")
            w_hidden = std::atof(next());
        else if (a == "--w-attn")
            w_attn = std::atof(next());
        else if (a == "--d-model")
            scfg.d_model = std::atoi(next());
        else if (a == "--layers")
            scfg.n_layers = std::atoi(next());
        else if (a == "--heads")
            scfg.n_heads = std::atoi(next());
        else if (a == "--d-ff")
            scfg.d_ff = std::atoi(next());
        else if (a == "--context")
            scfg.context_length = std::atoi(next());
        else if (a == "--threads")
            threads = std::atoi(next());
        else if (a == "--curve")
            curve = std::atoi(next());
        else if (a == "--seed")
            seed = std::atoll(next());
        else {
            std::fprintf(stderr, "quickstart_experiment: unknown argument %s (see the file comment)\n", a.c_str());
            return 2;
        }
    }
    const device::Cpu cpu = threads > 0 ? device::Cpu(threads) : device::Cpu();
    const auto t_all = std::chrono::steady_clock::now();

    // ---- data, split as examples/quickstart.cpp does: train, validation (unused here), test; every
    // `1/labeled`-th training prompt keeps its answer
    const auto problems = data::make_math_problems(std::uint64_t(seed), std::size_t(n_train + n_val + n_test));
    const std::vector<data::MathProblem> train(problems.begin(), problems.begin() + n_train);
    const std::vector<data::MathProblem> test(problems.begin() + n_train + n_val, problems.end());
    const std::size_t label_every = std::size_t(1.0 / labeled + 0.5);
    std::vector<std::size_t> labeled_rows;
    for (std::size_t i = 0; i < train.size(); i += label_every) labeled_rows.push_back(i);
    const std::size_t n_labeled = labeled_rows.size();
    const data::ChatTokenizer tmpl;

    // ---- the teacher answers every training prompt
    auto t0 = std::chrono::steady_clock::now();
    teacher::ModelConfig tmc;
    tmc.weights = teacher_path;
    tmc.max_batch = std::max(32, batch);
    math_kd::Runner teacher(tmc, cpu);
    const auto tcfg = teacher.network().config();
    const auto teacher_answers = math_kd::answer_all(teacher, train);
    const double gen_s = math_kd::seconds_since(t0);
    const double teacher_train_em = math_kd::exact_match(train, teacher_answers);

    std::printf(
        "teacher %lld params (d %d L %d H %d F %d); student %lld params (d %d L %d H %d F %d, ctx %d): %.1fx "
        "fewer; %d threads\n",
        (long long)tcfg.parameter_count(), tcfg.d_model, tcfg.n_layers, tcfg.n_heads, tcfg.d_ff,
        (long long)scfg.parameter_count(), scfg.d_model, scfg.n_layers, scfg.n_heads, scfg.d_ff, scfg.context_length,
        double(tcfg.parameter_count()) / double(scfg.parameter_count()), cpu.threads());
    std::printf(
        "data: %d train prompts (%zu labeled), %d test; steps %lld, batch %d, lr %g, tau %g, weights kl %g "
        "ce %g hidden %g attn %g\n",
        n_train, n_labeled, n_test, (long long)steps, batch, lr, tau, w_kl, w_ce, w_hidden, w_attn);
    std::printf("[generate] %.1f s: teacher answered %d prompts, %.1f%% correct\n", gen_s, n_train,
                100 * teacher_train_em);

    data::SequenceDataset kd_set(data::ByteTokenizer::pad, scfg.context_length);
    for (std::size_t i = 0; i < train.size(); ++i) math_kd::add_example(kd_set, tmpl, train[i], teacher_answers[i]);
    data::SequenceDataset base_set(data::ByteTokenizer::pad, scfg.context_length);
    for (std::size_t i : labeled_rows) math_kd::add_example(base_set, tmpl, train[i], train[i].solution);

    math_kd::Runner eval_runner(scfg, math_kd::runner_config(32), cpu);
    auto score = [&](const math_kd::Net& net, std::size_t n) {
        math_kd::copy_weights(net, eval_runner);
        const std::vector<data::MathProblem> sub(test.begin(), test.begin() + std::ptrdiff_t(std::min(n, test.size())));
        return math_kd::exact_match(sub, math_kd::answer_all(eval_runner, sub));
    };

    train::FinetuneConfig fc;
    fc.max_steps = steps;
    fc.batch_size = batch;
    fc.seed = 5;
    fc.log_every = 0;
    fc.quiet = true;
    const optim::Schedule schedule({.learning_rate = lr, .warmup_steps = std::max<std::int64_t>(1, steps / 20)}, steps);

    // ---- distilled student
    t0 = std::chrono::steady_clock::now();
    math_kd::Net kd(scfg, batch, cpu);
    kd.init(3);
    Loss::config lc;
    io::from_json(nlohmann::json{{"soft_kl", {{"weight", w_kl}, {"temperature", tau}}},
                                 {"hard_ce", {{"weight", w_ce}, {"targets", "labels"}}},
                                 {"hidden_mse", {{"weight", w_hidden}}},
                                 {"attention_kl", {{"weight", w_attn}}}},
                  lc, "loss");
    const loss::dims dims = loss::dims_of(kd, teacher.network(), batch);
    Loss loss(lc, dims);
    loss::Workspace<float, device::Cpu> ws(loss, dims, cpu);
    loss::teacher_outputs<float> tout;
    std::vector<std::uint8_t> mask;
    auto params = kd.parameters();
    const auto extra = loss.parameters();
    params.insert(params.end(), extra.begin(), extra.end());
    optim::AdamW<float, device::Cpu> kd_opt(params, {.weight_decay = 0.1}, cpu);
    train::FinetuneOptions<float> kd_options;
    kd_options.extra = extra;
    kd_options.progress = nullptr;
    std::vector<std::pair<std::int64_t, double>> kd_curve;
    double curve_s = 0;
    if (curve > 0)
        kd_options.on_step = [&](const train::StepReport& r) {
            if (r.step % curve == 0 && r.step < steps) {
                const auto c0 = std::chrono::steady_clock::now();
                kd_curve.push_back({r.step, score(kd, 100)});
                curve_s += math_kd::seconds_since(c0);
                std::printf("  distilled step %lld: loss %.4f, test EM (100) %.0f%%\n", (long long)r.step, r.loss,
                            100 * kd_curve.back().second);
                std::fflush(stdout);
            }
        };
    const auto kd_result = train::finetune(kd, kd_opt, schedule, kd_set, nullptr, fc,
                                           OnlineLoss{&teacher, &loss, &ws, &tout, &mask}, kd_options);
    const double kd_s = math_kd::seconds_since(t0) - curve_s;
    std::printf("[distill] %.1f s: %lld steps (%.0f ms/step), last loss %.4f\n", kd_s, (long long)kd_result.steps,
                1000 * kd_s / double(steps), kd_result.last_loss);
    std::fflush(stdout);

    // ---- baseline student: cross-entropy on the labeled part only, same budget
    t0 = std::chrono::steady_clock::now();
    math_kd::Net base(scfg, batch, cpu);
    base.init(3);
    optim::AdamW<float, device::Cpu> base_opt(base.parameters(), {.weight_decay = 0.1}, cpu);
    train::FinetuneOptions<float> base_options;
    base_options.progress = nullptr;
    train::FinetuneResult base_result;
    if (run_baseline)
        base_result =
            train::finetune(base, base_opt, schedule, base_set, nullptr, fc, train::CrossEntropy{}, base_options);
    const double base_s = math_kd::seconds_since(t0);
    std::printf("[baseline] %.1f s: %lld steps (%.0f ms/step), last loss %.4f\n", base_s, (long long)base_result.steps,
                1000 * base_s / double(steps), base_result.last_loss);

    // ---- evaluation
    t0 = std::chrono::steady_clock::now();
    const double em_teacher = math_kd::exact_match(test, math_kd::answer_all(teacher, test));
    const double ev_t = math_kd::seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    const double em_base = score(base, test.size());
    const double ev_b = math_kd::seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    const double em_kd = score(kd, test.size());
    const double ev_s = math_kd::seconds_since(t0);
    std::printf("[evaluate] teacher %.1f s, baseline %.1f s, distilled %.1f s\n", ev_t, ev_b, ev_s);
    std::printf(
        "exact match on %d test problems: teacher %.1f%%, baseline %.1f%%, distilled %.1f%% (%.0f%% of the "
        "teacher)\n",
        n_test, 100 * em_teacher, 100 * em_base, 100 * em_kd, em_teacher > 0 ? 100 * em_kd / em_teacher : 0.0);
    std::printf("total %.1f s (generate %.1f + distill %.1f + baseline %.1f + evaluate %.1f)\n",
                math_kd::seconds_since(t_all) - curve_s, gen_s, kd_s, base_s, ev_t + ev_b + ev_s);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "quickstart_experiment: %s\n", e.what());
    return 1;
}
