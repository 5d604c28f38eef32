// The whole Distiller on CUDA: the same job run with Device = device::Cpu and device::Cuda (teacher,
// student, losses, optimizer and generation on the GPU) must give the same pipeline: the teacher's
// greedy answers, the distilled student's loss curve and weights within fp32 tolerance, and the
// report's metrics; and the same job in bf16 on the GPU against its fp32 run. Part of distill_cuda_tests (its main
// skips with 77 when no GPU is visible).

#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../teacher_fixtures.hpp"
#include "distill/device/cpu.hpp"
#include "distill/device/cuda.hpp"
#include "distill/loss/attention_kl.hpp"
#include "distill/loss/hard_ce.hpp"
#include "distill/loss/hidden_mse.hpp"
#include "distill/loss/soft_kl.hpp"
#include "distill/loss/sum.hpp"
#include "distill/optim/adam.hpp"
#include "distill/pipeline/distiller.hpp"
#include "distill/student/transformer.hpp"
#include "distill/teacher/model.hpp"

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

template <class Device>
nlohmann::ordered_json run(const testing::MathWorld& w, const std::string& out, Device device,
                           const std::string& precision = "fp32") {
    nlohmann::json j = w.job(out);
    j["precision"] = precision;
    const Job job = parse_job(j);
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
    const testing::MathWorld w;
    const auto cpu = run(w, "cpu", device::Cpu(2));
    const auto gpu = run(w, "cuda", device::Cuda{});

    // generate: the teacher's greedy answers (near-ties may flip a rare token between devices)
    const auto a = lines(w.dir.path / "cpu" / "generate" / "synthetic.jsonl"),
               b = lines(w.dir.path / "cuda" / "generate" / "synthetic.jsonl");
    REQUIRE(a.size() == b.size());
    std::size_t same = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const auto x = nlohmann::json::parse(a[i]), y = nlohmann::json::parse(b[i]);
        same += x["messages"].back()["content"] == y["messages"].back()["content"];  // the assistant's answer
    }
    CHECK(same * 100 >= a.size() * 95);

    // finetune: the loss curve, step by step
    const auto lc = loss_curve(w.dir.path / "cpu"), lg = loss_curve(w.dir.path / "cuda");
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
    CHECK(fs::exists(w.dir.path / "cuda" / "report.md"));
}

TEST_CASE("the Distiller on CUDA in bf16: bf16 storage, and the run follows the fp32 one") {
    const std::string why = device::Cuda::bf16_unsupported_reason();
    if (!why.empty()) {
        MESSAGE("skipped: " << why);
        return;
    }
    const testing::MathWorld w;
    const device::Cuda bf16(device::precision::bf16);
    {  // the teacher (a frozen model keeping activations for AttentionKL) holds its matrices in bf16 alone
        teacher::ModelConfig tc;
        tc.weights = w.teacher.string();
        tc.max_batch = 16;
        teacher::Model<student::Transformer, float, device::Cuda> t(tc, bf16);
        CHECK(t.network().bf16_only_weights());
    }
    const auto r32 = run(w, "cuda32", device::Cuda{});
    const auto r16 = run(w, "cuda16", bf16, "bf16");
    // the teacher's bf16 greedy answers may differ from fp32's, and so the data: the curves agree as
    // tests/precision/precision.cpp's do on the same data (0.03 + 0.03·fp32), loosened to 0.1
    const auto l32 = loss_curve(w.dir.path / "cuda32"), l16 = loss_curve(w.dir.path / "cuda16");
    REQUIRE(l32.size() == l16.size());
    REQUIRE(!l32.empty());
    for (std::size_t i = 0; i < l32.size(); ++i) {
        CAPTURE(i);
        CHECK(std::abs(l16[i] - l32[i]) <= 0.1 + 0.1 * std::abs(l32[i]));
    }
    CHECK(l16.back() < l16.front());
    for (const char* m : {"teacher", "baseline", "student"}) {
        INFO(m);
        CHECK(r16["models"][m]["parameters"] == r32["models"][m]["parameters"]);
        CHECK(std::isfinite(r16["models"][m]["metrics"]["perplexity"].get<double>()));
    }
}
