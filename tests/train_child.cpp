// A training run in its own process, for the resume tests of unit-training.cpp: they SIGKILL it
// (or it SIGKILLs itself at a chosen micro-batch), run it again on the same output directory, and
// compare the result byte for byte with an uninterrupted run.
//
//   distill_train_child --out DIR [--batch 4] [--accum 2] [--epochs 30] [--patience 3]
//                       [--eval-every 0] [--checkpoint-every 2] [--threads 2] [--lr 1e-2] [--kill-at-call K]
//
// Prints one JSON line with the result and exits 0; a killed run never gets that far.

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "distill/device/cpu.hpp"
#include "distill/optim/adam.hpp"
#include "distill/optim/schedule.hpp"
#include "distill/train/finetune.hpp"
#include "training_task.hpp"

using namespace distill;

namespace {

/// A stand-in for a loss term with a learned projection: its own parameter arena, an L2 term on it,
/// so checkpoints must carry parameters of an owner other than the student.
struct Projection {
    std::vector<float> value, grad;
    std::vector<Parameter<float>> params;
    Projection() : value(12), grad(12) {
        Rng rng(9);
        for (auto& v : value) v = static_cast<float>(rng.normal());
        params.push_back({"proj.weight", Tensor<float>(value.data(), {3, 4}), Tensor<float>(grad.data(), {3, 4}),
                          parameter_kind::weight});
    }
};

struct KillingLoss {
    Projection* proj;
    long kill_at;
    long calls = 0;
    train::LossValues operator()(student::Transformer<float, device::Cpu>& m, const data::Batch& b, train::pass p) {
        if (p == train::pass::train && ++calls == kill_at) std::raise(SIGKILL);
        train::LossValues lv = train::CrossEntropy{}(m, b, p);
        double l2 = 0;
        for (std::size_t i = 0; i < proj->value.size(); ++i) {
            l2 += 0.001 * proj->value[i] * proj->value[i];
            if (p == train::pass::train) proj->grad[i] += 0.002f * proj->value[i];
        }
        lv.total += l2;
        lv.terms.push_back({"proj_l2", l2});
        return lv;
    }
};

}  // namespace

int main(int argc, char** argv) {
    std::string out;
    int batch = 4, accum = 2, epochs = 30, patience = 3, threads = 2;
    long eval_every = 0, checkpoint_every = 2, kill_at = 0;
    double lr = 1e-2;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--out")
            out = v;
        else if (a == "--batch")
            batch = std::stoi(v);
        else if (a == "--accum")
            accum = std::stoi(v);
        else if (a == "--epochs")
            epochs = std::stoi(v);
        else if (a == "--patience")
            patience = std::stoi(v);
        else if (a == "--eval-every")
            eval_every = std::stol(v);
        else if (a == "--checkpoint-every")
            checkpoint_every = std::stol(v);
        else if (a == "--threads")
            threads = std::stoi(v);
        else if (a == "--kill-at-call")
            kill_at = std::stol(v);
        else if (a == "--lr")
            lr = std::stod(v);
        else {
            std::fprintf(stderr, "unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    if (out.empty()) {
        std::fprintf(stderr, "--out DIR is required\n");
        return 2;
    }
    try {
        testing::NoiseTask task;
        student::Transformer<float, device::Cpu> model(testing::NoiseTask::model_config(), batch, device::Cpu(threads));
        model.init(3);
        Projection proj;
        optim::AdamW<float, device::Cpu> opt(optim::gather(model.parameters(), proj.params), {.weight_decay = 0.01},
                                             device::Cpu(threads));
        train::FinetuneConfig cfg{.num_epochs = epochs,
                                  .batch_size = batch,
                                  .grad_accum = accum,
                                  .grad_clip = 1.0,
                                  .seed = 11,
                                  .eval_every = eval_every,
                                  .patience = patience,
                                  .checkpoint_every = checkpoint_every,
                                  .keep_last_n = 2,
                                  .log_every = 1,
                                  .output_dir = out,
                                  .quiet = true};
        optim::Schedule schedule({.learning_rate = lr, .warmup_steps = 3, .decay = "cosine", .min_lr_ratio = 0.1},
                                 train::total_steps(cfg, task.train.size()));
        train::FinetuneOptions<float> options;
        options.extra = proj.params;
        options.job_config = {{"task", "noise"}};
        const auto r = train::finetune(model, opt, schedule, task.train, &task.validation, cfg,
                                       KillingLoss{&proj, kill_at}, std::move(options));
        std::printf("{\"steps\":%lld,\"early_stopped\":%s,\"best_step\":%lld,\"resumed\":%s}\n",
                    static_cast<long long>(r.steps), r.early_stopped ? "true" : "false",
                    static_cast<long long>(r.best_step), r.resumed ? "true" : "false");
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "distill_train_child: %s\n", e.what());
        return 1;
    }
}
