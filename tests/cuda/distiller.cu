// The whole Distiller on CUDA: the same job run with Device = device::Cpu and device::Cuda (teacher,
// student, losses, optimizer and generation on the GPU) must give the same pipeline: the teacher's
// greedy answers, the distilled student's loss curve and weights within fp32 tolerance, and the
// report's metrics. Part of distill_cuda_tests (its main skips with 77 when no GPU is visible).

#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/chat.hpp"
#include "distill/data/dataset.hpp"
#include "distill/data/math_task.hpp"
#include "distill/device/cpu.hpp"
#include "distill/device/cuda.hpp"
#include "distill/distiller.hpp"
#include "distill/io/weights.hpp"
#include "distill/loss/attention_kl.hpp"
#include "distill/loss/hard_ce.hpp"
#include "distill/loss/hidden_mse.hpp"
#include "distill/loss/soft_kl.hpp"
#include "distill/loss/sum.hpp"
#include "distill/optim/adam.hpp"
#include "distill/student/transformer.hpp"
#include "distill/teacher/model.hpp"
#include "distill/train/finetune.hpp"

using namespace distill;
namespace fs = std::filesystem;

namespace {

using Terms = loss::Sum<loss::SoftKL, loss::HardCE, loss::HiddenMSE, loss::AttentionKL>;
template <class Device>
using OnlineDistiller =
    Distiller<teacher::Model<student::Transformer, float, Device>, student::Transformer, Terms, optim::AdamW, Device>;

std::vector<std::string> lines(const fs::path& p) {
    std::vector<std::string> out;
    std::ifstream in(p);
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
}

// A tiny math teacher trained on the CPU, its data files and a job writing to `dir/out`.
struct World {
    fs::path dir = fs::temp_directory_path() / ("distill-cuda-distiller-" + std::to_string(::getpid()));
    World() {
        fs::remove_all(dir);
        fs::create_directories(dir);
        const auto problems = data::make_math_problems(11, 240);
        data::ChatTemplate<> tpl;
        data::SequenceDataset ds(data::ByteTokenizer::pad, 96);
        for (const auto& p : problems) {
            const std::vector<data::Message> m{{"user", p.question}};
            ds.add_prompt_response(tpl.encode_prompt(m), tpl.encode_response(p.solution));
        }
        student::Transformer<float, device::Cpu> net(
            {.vocab_size = 263, .context_length = 96, .d_model = 48, .n_layers = 2, .n_heads = 4, .d_ff = 96}, 16);
        net.init(3);
        optim::AdamW<float, device::Cpu> opt(net.parameters(), {});
        optim::Schedule schedule({.learning_rate = 1e-2}, 120);
        train::FinetuneConfig fc;
        fc.max_steps = 120;
        fc.batch_size = 16;
        fc.quiet = true;
        train::finetune(net, opt, schedule, ds, nullptr, fc);
        io::save_weights(dir / "teacher.safetensors", net);
        auto write = [&](const char* name, std::size_t first, std::size_t count, std::size_t label_every) {
            std::ofstream out(dir / name);
            for (std::size_t i = first; i < first + count; ++i) {
                nlohmann::json j = {{"prompt", problems[i].question}};
                if (label_every && (i - first) % label_every == 0) j["completion"] = problems[i].solution;
                out << j.dump() << "\n";
            }
        };
        write("train.jsonl", 0, 160, 4);
        write("validation.jsonl", 160, 24, 1);
        write("test.jsonl", 184, 40, 1);
    }
    ~World() { fs::remove_all(dir); }
    Job job(const std::string& out) const {
        return parse_job(
            {{"teacher", {{"kind", "model"}, {"weights", (dir / "teacher.safetensors").string()}, {"max_batch", 16}}},
             {"student",
              {{"vocab_size", 263},
               {"context_length", 96},
               {"d_model", 24},
               {"n_layers", 1},
               {"n_heads", 2},
               {"d_ff", 48}}},
             {"training_data", (dir / "train.jsonl").string()},
             {"validation_data", (dir / "validation.jsonl").string()},
             {"test_data", (dir / "test.jsonl").string()},
             {"task_type", "math"},
             {"generation", {{"max_new_tokens", 40}}},
             {"hyperparameters", {{"learning_rate", 3e-3}, {"batch_size", 16}, {"max_steps", 12}, {"log_every", 1}}},
             {"loss",
              {{"soft_kl", {{"weight", 1.0}}},
               {"hard_ce", {{"weight", 0.5}}},
               {"hidden_mse", {{"weight", 0.1}}},
               {"attention_kl", {{"weight", 0.1}}}}},
             {"evaluation", {{"latency_samples", 2}}},
             {"output_dir", (dir / out).string()}});
    }
};

template <class Device>
nlohmann::ordered_json run(const World& w, const std::string& out, Device device) {
    const Job job = w.job(out);
    teacher::ModelConfig tc;
    io::from_json(job.teacher_config(), tc, "teacher");
    teacher::Model<student::Transformer, float, Device> t(tc, device);
    OnlineDistiller<Device> d(job, t, device, {.quiet = true});
    return d.run();
}

// The training loss of each logged step of a run's distilled student.
std::vector<double> loss_curve(const fs::path& run) {
    std::vector<double> out;
    for (const auto& l : lines(run / "student" / "metrics.jsonl")) {
        const auto j = nlohmann::json::parse(l, nullptr, false);
        if (j.is_object() && j.value("kind", "") == "train") out.push_back(j["loss"]);
    }
    return out;
}

}  // namespace

TEST_CASE("the Distiller on CUDA runs generate, finetune and evaluate like the CPU") {
    const World w;
    const auto cpu = run(w, "cpu", device::Cpu(2));
    const auto gpu = run(w, "cuda", device::Cuda{});

    // generate: the teacher's greedy answers (near-ties may flip a rare token between devices)
    const auto a = lines(w.dir / "cpu" / "generate" / "synthetic.jsonl"),
               b = lines(w.dir / "cuda" / "generate" / "synthetic.jsonl");
    REQUIRE(a.size() == b.size());
    std::size_t same = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const auto x = nlohmann::json::parse(a[i]), y = nlohmann::json::parse(b[i]);
        same += x["messages"].back()["content"] == y["messages"].back()["content"];  // the assistant's answer
    }
    CHECK(same * 100 >= a.size() * 95);

    // finetune: the loss curve, step by step
    const auto lc = loss_curve(w.dir / "cpu"), lg = loss_curve(w.dir / "cuda");
    REQUIRE(lc.size() == lg.size());
    REQUIRE(!lc.empty());
    for (std::size_t i = 0; i < lc.size(); ++i) CHECK(lg[i] == doctest::Approx(lc[i]).epsilon(2e-3));

    // evaluate: the same report structure; metrics close (greedy decoding of nearly equal weights)
    for (const char* m : {"teacher", "baseline", "student"}) {
        INFO(m);
        const auto& rc = cpu["models"][m];
        const auto& rg = gpu["models"][m];
        CHECK(rg["parameters"] == rc["parameters"]);
        CHECK(std::abs(rg["metrics"]["exact_match"].get<double>() - rc["metrics"]["exact_match"].get<double>()) <=
              0.05);
        CHECK(rg["metrics"]["perplexity"].get<double>() ==
              doctest::Approx(rc["metrics"]["perplexity"].get<double>()).epsilon(1e-2));
    }
    CHECK(fs::exists(w.dir / "cuda" / "report.md"));
}
