// Training: optimizers and schedules against torch.optim trajectories, clipping, datasets and
// batching, checksums, checkpoints (round trip, refusal of damaged ones, retention), the finetune
// loop (learning, accumulation, validation and early stopping, guards, metrics, progress), and
// resume after SIGKILL compared byte for byte with an uninterrupted run.

#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <pty.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "distill/data/dataset.hpp"
#include "distill/device/cpu.hpp"
#include "distill/device/reference.hpp"
#include "distill/io/checkpoint.hpp"
#include "distill/io/reflect.hpp"
#include "distill/io/weights.hpp"
#include "distill/optim/adam.hpp"
#include "distill/optim/clip.hpp"
#include "distill/optim/schedule.hpp"
#include "distill/optim/sgd.hpp"
#include "distill/optimizer.hpp"
#include "distill/student/transformer.hpp"
#include "distill/train/finetune.hpp"
#include "distill/train/zero.hpp"
#include "testing.hpp"
#include "training_task.hpp"

extern char** environ;

using namespace distill;
using distill::testing::check_close;

#ifndef DISTILL_TEST_DATA_DIR
#define DISTILL_TEST_DATA_DIR "tests/reference/fixtures"
#endif

namespace {

namespace fs = std::filesystem;
const fs::path fixtures = DISTILL_TEST_DATA_DIR;

static_assert(optimizer_policy<optim::Sgd<float, device::Cpu>>);
static_assert(optimizer_policy<optim::Adam<float, device::Cpu>>);
static_assert(optimizer_policy<optim::AdamW<double, device::Reference>>);
static_assert(optim::lr_schedule<optim::Schedule>);
static_assert(optim::lr_schedule<optim::WarmupThen<optim::CosineDecay>>);

/// A fresh, empty directory under the system temp dir, removed when the test ends.
struct TempDir {
    fs::path path;
    explicit TempDir(const std::string& name) {
        path = fs::temp_directory_path() / ("distill-training-" + name + "-" + std::to_string(::getpid()));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_bytes(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << bytes;
}

template <class Fn>
std::string error_of(Fn&& fn) {
    try {
        fn();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "(no exception)";
}

/// Owned storage for a list of parameters of given shapes and kinds (an "owner" like a loss term).
struct Owner {
    std::vector<std::vector<float>> values, grads;
    std::vector<Parameter<float>> params;
    Owner(const std::vector<std::pair<std::string, std::vector<std::int64_t>>>& shapes,
          const std::vector<parameter_kind>& kinds) {
        values.reserve(shapes.size());
        grads.reserve(shapes.size());
        for (std::size_t i = 0; i < shapes.size(); ++i) {
            std::int64_t n = 1;
            for (auto d : shapes[i].second) n *= d;
            values.emplace_back(static_cast<std::size_t>(n));
            grads.emplace_back(static_cast<std::size_t>(n));
            Tensor<float> v, g;
            const auto& s = shapes[i].second;
            if (s.size() == 1) {
                v = Tensor<float>(values.back().data(), {s[0]});
                g = Tensor<float>(grads.back().data(), {s[0]});
            } else {
                v = Tensor<float>(values.back().data(), {s[0], s[1]});
                g = Tensor<float>(grads.back().data(), {s[0], s[1]});
            }
            params.push_back({shapes[i].first, v, g, kinds[i]});
        }
    }
};

}  // namespace

// ---- optimizers and schedules against PyTorch -------------------------------------------------

namespace {

std::function<double(std::int64_t)> schedule_from(const nlohmann::json& s) {
    const double base = s.at("base_lr").get<double>();
    const std::string kind = s.at("kind").get<std::string>();
    if (kind == "constant") return [sch = optim::Constant{base}](std::int64_t t) { return sch.lr(t); };
    if (kind == "cosine")
        return [sch = optim::CosineDecay{base, s.at("steps").get<std::int64_t>(), s.at("min_ratio").get<double>()}](
                   std::int64_t t) { return sch.lr(t); };
    if (kind == "linear")
        return [sch = optim::LinearDecay{base, s.at("steps").get<std::int64_t>(), s.at("min_ratio").get<double>()}](
                   std::int64_t t) { return sch.lr(t); };
    const std::int64_t w = s.at("warmup").get<std::int64_t>();
    if (kind == "warmup") return [sch = optim::LinearWarmup{w, {base}}](std::int64_t t) { return sch.lr(t); };
    if (kind == "warmup_cosine")
        return [sch = optim::WarmupThen<optim::CosineDecay>{
                    w, {base, s.at("steps").get<std::int64_t>(), s.at("min_ratio").get<double>()}}](std::int64_t t) {
            return sch.lr(t);
        };
    return [sch = optim::WarmupThen<optim::LinearDecay>{
                w, {base, s.at("steps").get<std::int64_t>(), s.at("min_ratio").get<double>()}}](std::int64_t t) {
        return sch.lr(t);
    };
}

template <class Opt>
void run_golden_case(const io::safetensors_file& f, const nlohmann::json& c, Owner& owner, Opt& opt, int steps,
                     float pull) {
    const std::string name = c.at("name").get<std::string>();
    const auto lr_of = schedule_from(c.at("schedule"));
    const double clip = c.at("clip").get<double>();
    std::vector<double> want_lr(static_cast<std::size_t>(steps)), want_norm(static_cast<std::size_t>(steps));
    f.read<double>(f.at(name + ".lr"), want_lr);
    f.read<double>(f.at(name + ".grad_norm"), want_norm);
    const std::span<const Parameter<float>> params(opt.parameters());
    for (int t = 0; t < steps; ++t) {
        for (std::size_t i = 0; i < params.size(); ++i) {
            const auto& info = f.at("noise." + params[i].name);
            std::vector<float> noise(static_cast<std::size_t>(info.numel()));
            f.read<float>(info, noise);
            const std::size_t n = owner.values[i].size();
            for (std::size_t k = 0; k < n; ++k)
                owner.grads[i][k] = noise[static_cast<std::size_t>(t) * n + k] + pull * owner.values[i][k];
        }
        const double norm = optim::clip_grad_norm<float>(params, clip, device::Cpu(2));
        INFO(name << " step " << t);
        check_close(name + ".grad_norm", &norm, &want_norm[static_cast<std::size_t>(t)], 1, 0.0, 1e-6);
        const double lr = lr_of(t);
        check_close(name + ".lr", &lr, &want_lr[static_cast<std::size_t>(t)], 1, 0.0, 1e-12);
        opt.step(lr);
        for (std::size_t i = 0; i < params.size(); ++i) {
            const auto& info = f.at(name + "." + params[i].name);
            std::vector<float> traj(static_cast<std::size_t>(info.numel()));
            f.read<float>(info, traj);
            const std::size_t n = owner.values[i].size();
            check_close(name + "." + params[i].name, owner.values[i].data(),
                        traj.data() + static_cast<std::size_t>(t) * n, static_cast<std::int64_t>(n), 1e-7, 1e-5);
        }
    }
}

}  // namespace

TEST_CASE("training: optimizers follow torch.optim trajectories under every schedule, with and without clipping") {
    const io::safetensors_file f(fixtures / "optim_golden.safetensors");
    const int steps = std::stoi(f.metadata().at("steps"));
    const float pull = std::stof(f.metadata().at("pull"));
    const auto param_list = nlohmann::json::parse(f.metadata().at("params"));
    const auto cases = nlohmann::json::parse(f.metadata().at("cases"));
    REQUIRE(cases.size() == 60);
    auto kind_of = [](const std::string& k) {
        return k == "weight" ? parameter_kind::weight
               : k == "bias" ? parameter_kind::bias
               : k == "norm" ? parameter_kind::norm
                             : parameter_kind::embedding;
    };
    int checked = 0;
    for (const auto& c : cases) {
        std::vector<std::pair<std::string, std::vector<std::int64_t>>> shapes;
        std::vector<parameter_kind> kinds;
        for (const auto& p : param_list) {
            const auto name = p.at("name").get<std::string>();
            shapes.push_back({name, f.at("init." + name).shape});
            kinds.push_back(kind_of(p.at("kind").get<std::string>()));
        }
        Owner owner(shapes, kinds);
        for (std::size_t i = 0; i < shapes.size(); ++i) f.read<float>(f.at("init." + shapes[i].first), owner.values[i]);
        const std::string kind = c.at("optimizer").at("kind").get<std::string>();
        const auto& cfg_json = c.at("optimizer").at("config");
        if (kind == "sgd") {
            optim::SgdConfig cfg;
            io::from_json(cfg_json, cfg, "optimizer");
            optim::Sgd<float, device::Cpu> opt(owner.params, cfg, device::Cpu(2));
            run_golden_case(f, c, owner, opt, steps, pull);
        } else {
            optim::AdamConfig cfg;
            io::from_json(cfg_json, cfg, "optimizer");
            if (kind == "adam") {
                optim::Adam<float, device::Cpu> opt(owner.params, cfg, device::Cpu(2));
                run_golden_case(f, c, owner, opt, steps, pull);
            } else {
                optim::AdamW<float, device::Cpu> opt(owner.params, cfg, device::Cpu(2));
                run_golden_case(f, c, owner, opt, steps, pull);
            }
        }
        ++checked;
    }
    CHECK(checked == 60);
}

TEST_CASE("training: the runtime Schedule equals its composable pieces and holds its end value") {
    const std::int64_t total = 50;
    const optim::Schedule cos({.learning_rate = 1e-3, .warmup_steps = 10, .decay = "cosine", .min_lr_ratio = 0.1},
                              total);
    const optim::WarmupThen<optim::CosineDecay> cos2{10, {1e-3, 40, 0.1}};
    const optim::Schedule lin({.learning_rate = 1e-3, .warmup_steps = 0, .decay = "linear", .min_lr_ratio = 0.0},
                              total);
    const optim::Schedule con({.learning_rate = 1e-3, .warmup_steps = 4, .decay = "constant"}, total);
    for (std::int64_t s = 0; s < 80; ++s) CHECK(cos.lr(s) == doctest::Approx(cos2.lr(s)).epsilon(1e-15));
    CHECK(cos.lr(0) == doctest::Approx(1e-4));      // (0+1)/10 of the peak: no update at rate 0
    CHECK(cos.lr(9) == doctest::Approx(1e-3));      // the warmup's last step reaches the peak
    CHECK(cos.lr(10) == doctest::Approx(1e-3));     // the decay starts at the peak
    CHECK(cos.lr(30) == doctest::Approx(0.55e-3));  // half way down the cosine: (peak + min) / 2
    CHECK(cos.lr(50) == doctest::Approx(1e-4));     // the end: min_lr_ratio · peak
    CHECK(cos.lr(500) == doctest::Approx(1e-4));    // held, not climbing back as CosineAnnealingLR would
    CHECK(lin.lr(25) == doctest::Approx(0.5e-3));
    CHECK(lin.lr(50) == 0.0);
    CHECK(lin.lr(60) == 0.0);
    CHECK(con.lr(1) == doctest::Approx(0.5e-3));
    CHECK(con.lr(1000) == 1e-3);
    // Pure: the same step gives the same rate whatever was asked before.
    CHECK(cos.lr(17) ==
          optim::Schedule({.learning_rate = 1e-3, .warmup_steps = 10, .decay = "cosine", .min_lr_ratio = 0.1}, total)
              .lr(17));

    CHECK(error_of([] { optim::Schedule({.learning_rate = 0}, 10); }).find("schedule.learning_rate") !=
          std::string::npos);
    CHECK(error_of([] { optim::Schedule({.warmup_steps = -1}, 10); }).find("schedule.warmup_steps: must be >= 0") !=
          std::string::npos);
    CHECK(error_of([] {
              optim::Schedule({.decay = "cosin"}, 10);
          }).find("schedule.decay: must be \"constant\", \"cosine\" or \"linear\"") != std::string::npos);
    CHECK(error_of([] { optim::Schedule({.min_lr_ratio = 2}, 10); }).find("schedule.min_lr_ratio") !=
          std::string::npos);
    optim::ScheduleConfig sc;
    CHECK(error_of([&] {
              io::from_json(nlohmann::json{{"warmup_step", 3}}, sc, "schedule");
          }).find("did you mean \"warmup_steps\"") != std::string::npos);
}

TEST_CASE("training: weight decay applies to the configured parameter kinds only") {
    Owner owner({{"w", {2, 3}}, {"b", {3}}, {"n", {3}}, {"e", {2, 3}}},
                {parameter_kind::weight, parameter_kind::bias, parameter_kind::norm, parameter_kind::embedding});
    for (auto& v : owner.values) std::fill(v.begin(), v.end(), 2.0f);
    // Zero gradients: Adam's moment update is then exactly zero and only the decoupled decay moves p.
    optim::AdamW<float, device::Cpu> opt(owner.params, {.weight_decay = 0.1, .decay = {.norms = true}});
    opt.step(0.5);
    CHECK(owner.values[0][0] == 2.0f * static_cast<float>(1.0 - 0.5 * 0.1));
    CHECK(owner.values[1][0] == 2.0f);                                        // bias: not decayed by default
    CHECK(owner.values[2][0] == 2.0f * static_cast<float>(1.0 - 0.5 * 0.1));  // norms switched on
    CHECK(owner.values[3][0] == 2.0f);                                        // embedding: not decayed by default
}

TEST_CASE("training: ZeRO-1 shards (optim::Shard) update their elements exactly as the whole optimizer does") {
    // 84 elements over 3 shards of 28: the boundaries fall inside "w" and "e", so a shard holds parts of
    // parameters of different weight-decay groups
    auto make = [] {
        Owner o({{"w", {5, 7}}, {"b", {7}}, {"n", {9}}, {"e", {3, 11}}},
                {parameter_kind::weight, parameter_kind::bias, parameter_kind::norm, parameter_kind::embedding});
        for (std::size_t i = 0; i < o.values.size(); ++i) {
            const auto v = distill::testing::random_vector<float>(o.values[i].size(), 10 + i),
                       g = distill::testing::random_vector<float>(o.grads[i].size(), 20 + i);
            std::copy(v.begin(), v.end(), o.values[i].begin());  // into the buffers the parameters view
            std::copy(g.begin(), g.end(), o.grads[i].begin());
        }
        return o;
    };
    Owner whole = make(), split = make();
    const std::size_t total = optim::total_elements<float>(whole.params);
    REQUIRE(total == 84);
    CHECK(optim::Shard::of(total, 0, 3) == optim::Shard{0, 28});
    CHECK(optim::Shard::of(total, 2, 3) == optim::Shard{56, 84});
    CHECK(optim::Shard::of(10, 1, 4) == optim::Shard{2, 5});  // balanced: 2, 3, 2, 3
    const optim::AdamConfig cfg{.weight_decay = 0.1, .decay = {.norms = true}};
    optim::AdamW<float, device::Cpu> full(whole.params, cfg, device::Cpu(1));
    std::vector<std::unique_ptr<optim::AdamW<float, device::Cpu>>> parts;
    std::int64_t held = 0;
    for (int r = 0; r < 3; ++r) {
        parts.push_back(std::make_unique<optim::AdamW<float, device::Cpu>>(split.params, cfg, device::Cpu(1),
                                                                           optim::Shard::of(total, r, 3)));
        for (const auto& t : parts.back()->state()) held += t.value.numel();
    }
    CHECK(held == 2 * 84);  // exp_avg and exp_avg_sq, each element once over the shards
    CHECK(parts[0]->state().front().name == "exp_avg.w");
    CHECK(parts[1]->state().front().value.numel() == 7);  // the rest of "w": elements 28..34
    for (int step = 0; step < 3; ++step) {
        full.step(1e-2);
        for (auto& p : parts) p->step(1e-2);
    }
    for (std::size_t i = 0; i < whole.values.size(); ++i) {
        CHECK(std::memcmp(whole.values[i].data(), split.values[i].data(), whole.values[i].size() * 4) == 0);
        CHECK(whole.values[i] != make().values[i]);  // and they moved
    }
    // the shards' state, concatenated in element order, is the whole optimizer's
    std::vector<train::zero::Piece<float>> all;
    for (auto& p : parts)
        for (auto& piece : train::zero::pieces(*p)) all.push_back(piece);
    for (const auto& w : train::zero::pieces(full))
        for (const auto& piece : all)
            if (piece.slot == w.slot && piece.lo >= w.lo && piece.hi <= w.hi)
                CHECK(std::memcmp(piece.data, w.data + (piece.lo - w.lo), (piece.hi - piece.lo) * 4) == 0);
    using Opt = optim::AdamW<float, device::Cpu>;
    const auto outside = [&] { Opt o(split.params, cfg, device::Cpu(1), optim::Shard{10, 90}); };
    CHECK_THROWS_AS(outside(), shape_error);
}

TEST_CASE("training: updates and the clipped norm are bit-identical across thread counts, devices and alignments") {
    const std::size_t n = 200003;  // several chunks per thread, and a tail shorter than a vector
    const std::vector<float> v0 = distill::testing::random_vector<float>(n, 1),
                             g0 = distill::testing::random_vector<float>(n, 2, 3.0);
    // `shift` places the tensors 1 element past a 64-byte boundary: every element must still come out
    // with the same bits (no alignment-dependent scalar/vector split).
    auto run = [&](auto device, std::size_t shift, std::vector<float>& out, double& norm) {
        std::vector<float> storage(n + 16), grad(n + 16);
        float* v = storage.data() + shift;
        std::copy(v0.begin(), v0.end(), v);
        std::copy(g0.begin(), g0.end(), grad.data() + shift);
        std::vector<Parameter<float>> ps{{"p", Tensor<float>(v, {static_cast<std::int64_t>(n)}),
                                          Tensor<float>(grad.data() + shift, {static_cast<std::int64_t>(n)}),
                                          parameter_kind::weight}};
        optim::AdamW<float, decltype(device)> opt(ps, {}, device);
        for (int s = 0; s < 3; ++s) {
            norm = optim::clip_grad_norm<float>(std::span<const Parameter<float>>(ps), 1.0, device);
            opt.step(1e-3);
        }
        out.assign(v, v + n);
    };
    std::vector<float> a, b, c, d;
    double na = 0, nb = 0, nc = 0, nd = 0;
    run(device::Cpu(1), 0, a, na);
    run(device::Cpu(2), 0, b, nb);
    run(device::Reference{}, 0, c, nc);
    run(device::Cpu(2), 1, d, nd);
    CHECK(na == nb);
    CHECK(na == nc);
    CHECK(na == nd);
    CHECK(std::memcmp(a.data(), b.data(), n * sizeof(float)) == 0);
    CHECK(std::memcmp(a.data(), c.data(), n * sizeof(float)) == 0);
    CHECK(std::memcmp(a.data(), d.data(), n * sizeof(float)) == 0);
}

TEST_CASE("training: optimizer configuration and parameter lists are validated") {
    Owner owner({{"w", {2, 2}}}, {parameter_kind::weight});
    CHECK(error_of([&] {
              optim::AdamW<float, device::Cpu>(owner.params, {.beta1 = 1.0});
          }).find("optimizer.beta1: must be in [0") != std::string::npos);
    CHECK(error_of([&] {
              optim::Adam<float, device::Cpu>(owner.params, {.eps = 0});
          }).find("optimizer.eps: must be > 0") != std::string::npos);
    CHECK(error_of([&] {
              optim::Sgd<float, device::Cpu>(owner.params, {.nesterov = true});
          }).find("optimizer.nesterov: needs momentum > 0 and dampening = 0") != std::string::npos);
    CHECK(error_of([&] {
              optim::Sgd<float, device::Cpu>(owner.params, {.momentum = -0.1});
          }).find("optimizer.momentum") != std::string::npos);
    CHECK(error_of([&] {
              optim::AdamW<float, device::Cpu>(optim::gather(owner.params, owner.params));
          }).find("parameter 1 'w' is listed twice") != std::string::npos);
    optim::AdamConfig ac;
    CHECK(error_of([&] {
              io::from_json(nlohmann::json{{"beta_1", 0.9}}, ac, "optimizer");
          }).find("optimizer.beta_1: unknown key; did you mean \"beta1\"") != std::string::npos);
    CHECK(error_of([&] {
              io::from_json(nlohmann::json{{"decay", {{"bias", true}}}}, ac, "optimizer");
          }).find("optimizer.decay.bias: unknown key; did you mean \"biases\"") != std::string::npos);
    optim::Adam<float, device::Cpu> opt(owner.params);
    CHECK(error_of([&] { opt.step(std::nan("")); }).find("learning rate") != std::string::npos);
    CHECK(opt.steps() == 0);
}

TEST_CASE("training: clipping reports the pre-clip norm, leaves non-finite gradients alone and finds them") {
    Owner owner({{"a", {2, 2}}, {"b", {3}}}, {parameter_kind::weight, parameter_kind::bias});
    owner.grads[0] = {3, 0, 0, 0};
    owner.grads[1] = {0, 4, 0};
    const std::span<const Parameter<float>> ps(owner.params);
    CHECK(optim::global_grad_norm<float>(ps, device::Cpu(2)) == 5.0);
    CHECK(optim::clip_grad_norm<float>(ps, 10.0, device::Cpu(2)) == 5.0);
    CHECK(owner.grads[0][0] == 3.0f);  // below the limit: untouched
    CHECK(optim::clip_grad_norm<float>(ps, 1.0, device::Cpu(2)) == 5.0);
    CHECK(std::sqrt(owner.grads[0][0] * owner.grads[0][0] + owner.grads[1][1] * owner.grads[1][1]) ==
          doctest::Approx(1.0).epsilon(1e-6));
    owner.grads[1][2] = std::numeric_limits<float>::infinity();
    const float before = owner.grads[0][0];
    CHECK(std::isinf(optim::clip_grad_norm<float>(ps, 1.0, device::Cpu(2))));
    CHECK(owner.grads[0][0] == before);
    const auto bad = optim::find_nonfinite<float>(ps, device::Cpu(2));
    REQUIRE(bad);
    CHECK(bad->parameter == 1);
    CHECK(bad->element == 2);
}

// ---- data ------------------------------------------------------------------------------------

TEST_CASE("training: SequenceDataset batches with padding, prompt masks and example indices") {
    data::SequenceDataset d(/*pad_id=*/9, /*max_length=*/6);
    const std::vector<std::int32_t> p1{1, 2}, r1{3, 4, 5}, p2{1}, r2{7};
    d.add_prompt_response(p1, r1);  // 1 2 | 3 4 5
    d.add_prompt_response(p2, r2);  // 1 | 7
    data::Batch b;
    const std::vector<std::int64_t> rows{1, 0};
    d.make_batch(rows, b);
    CHECK(b.batch == 2);
    CHECK(b.length == 5);
    CHECK(b.tokens == std::vector<std::int32_t>{1, 7, 9, 9, 9, 1, 2, 3, 4, 5});
    // position t predicts token t+1 when it is a response token; prompt and padding are -1
    CHECK(b.targets == std::vector<std::int32_t>{7, -1, -1, -1, -1, -1, 3, 4, 5, -1});
    CHECK(b.indices == std::vector<std::int64_t>{1, 0});
    CHECK(b.loss_tokens == 4);
    CHECK(b.real_tokens == 7);

    const std::string e0 = error_of([&] { d.add({}, {}); });
    CHECK(e0.find("dataset example 2: has no tokens") != std::string::npos);
    CHECK(error_of([&] {
              d.add({1, 2, 3, 4, 5, 6, 7}, std::vector<std::uint8_t>(7, 0));
          }).find("7 tokens, more than max_length 6") != std::string::npos);
    CHECK(error_of([&] { d.add({1, 2}, {0}); }).find("loss_mask has 1 entries for 2 tokens") != std::string::npos);
    CHECK(error_of([&] { d.add({1, 2}, {1, 1}); }).find("loss_mask[0] is set") != std::string::npos);
    CHECK(error_of([&] { d.add({1, -2}, {0, 1}); }).find("token 1 is negative") != std::string::npos);
    CHECK(error_of([&] { d.add_prompt_response({}, r1); }).find("the prompt needs at least one token") !=
          std::string::npos);
    CHECK(d.size() == 2);  // nothing was added by the failures

    Rng r1a(4), r1b(4);
    const auto o1 = data::shuffled_order(100, r1a), o2 = data::shuffled_order(100, r1b);
    CHECK(o1 == o2);
    auto sorted = o1;
    std::sort(sorted.begin(), sorted.end());
    for (std::int64_t i = 0; i < 100; ++i) CHECK(sorted[static_cast<std::size_t>(i)] == i);
    CHECK(o1 != data::shuffled_order(100, r1a));  // the next epoch draws a new order
}

TEST_CASE("training: CRC-32C matches its check value and the portable definition") {
    const char* check = "123456789";
    CHECK(detail::crc32c(check, 9) == 0xE3069283u);
    CHECK(detail::crc32c_portable(check, 9) == 0xE3069283u);
    const auto bytes = distill::testing::random_vector<float>(1001, 3);
    for (std::size_t len : {0u, 1u, 7u, 8u, 9u, 63u, 4001u}) {
        CHECK(detail::crc32c(bytes.data(), len) == detail::crc32c_portable(bytes.data(), len));
        // continuing a CRC equals the CRC of the concatenation
        CHECK(detail::crc32c(reinterpret_cast<const char*>(bytes.data()) + len / 2, len - len / 2,
                             detail::crc32c(bytes.data(), len / 2)) == detail::crc32c(bytes.data(), len));
    }
}

// ---- checkpoints -------------------------------------------------------------------------------

namespace {

using Model = student::Transformer<float, device::Cpu>;
// One thread in the loop tests: the machines running the suite are shared, and a tiny model's
// OpenMP teams only wait on each other there; the kernels' thread-count independence is tested above.
using distill::testing::NoiseTask;

/// A model, an extra owner (a loss projection) and AdamW over both, with non-trivial state.
struct Trained {
    Model model;
    Owner extra;
    optim::AdamW<float, device::Cpu> opt;
    explicit Trained(std::uint64_t seed, int steps = 2)
        : model(NoiseTask::model_config(), 4, device::Cpu(1)),
          extra({{"proj.w", {3, 4}}, {"proj.b", {3}}}, {parameter_kind::weight, parameter_kind::bias}),
          opt(optim::gather(model.parameters(), extra.params), {}, device::Cpu(1)) {
        model.init(seed);
        Rng rng(seed);
        for (auto& v : extra.values)
            for (auto& x : v) x = static_cast<float>(rng.normal());
        for (int s = 0; s < steps; ++s) {
            for (const auto& p : opt.parameters())
                for (std::int64_t i = 0; i < p.grad.numel(); ++i) p.grad.data()[i] = static_cast<float>(rng.normal());
            opt.step(1e-2);
        }
    }
    std::span<const Parameter<float>> extra_params() const { return extra.params; }
};

std::string bytes_of(const Model& m) {
    return {reinterpret_cast<const char*>(m.parameter_data()), m.arena_size() * sizeof(float)};
}

std::string bytes_of_state(const optim::AdamW<float, device::Cpu>& o) {
    std::string s;
    for (const auto& t : o.state())
        s.append(reinterpret_cast<const char*>(t.value.data()), static_cast<std::size_t>(t.value.numel()) * 4);
    return s;
}

std::string bytes_of(const Owner& o) {
    std::string s;
    for (const auto& v : o.values) s.append(reinterpret_cast<const char*>(v.data()), v.size() * 4);
    return s;
}

}  // namespace

TEST_CASE("training: a checkpoint restores student, extra owners, optimizer state and data order exactly") {
    TempDir dir("roundtrip");
    Trained a(1);
    io::CheckpointStore store(dir.path / "checkpoints");
    const std::vector<std::int64_t> order{3, 1, 2, 0};
    const auto path = store.save(7, a.model, a.extra_params(), a.opt, order, {{"epoch", 2}}, {{"job", "copy"}});
    CHECK(path.filename() == "step-00000007");
    REQUIRE(store.latest());
    CHECK(*store.latest() == path);
    CHECK(!store.best());

    Trained b(2, 0);  // other weights, empty state
    REQUIRE(bytes_of(a.model) != bytes_of(b.model));
    const auto ck = io::Checkpoint::open(path);
    CHECK(ck.step() == 7);
    CHECK(ck.state()["epoch"] == 2);
    CHECK(ck.config()["job"] == "copy");
    std::vector<std::int64_t> order2;
    ck.restore(b.model, b.extra_params(), b.opt, order2);
    CHECK(bytes_of(a.model) == bytes_of(b.model));
    CHECK(bytes_of(a.extra) == bytes_of(b.extra));
    CHECK(bytes_of_state(a.opt) == bytes_of_state(b.opt));
    CHECK(b.opt.steps() == 2);
    CHECK(order2 == order);

    // The student file stands alone: io::load_weights reads it (evaluate needs nothing else).
    Model c(NoiseTask::model_config(), 1);
    io::load_weights(ck.student_file(), c);
    CHECK(bytes_of(a.model) == bytes_of(c));

    // The law resume relies on: from the restored state, the next update is bit-identical.
    for (auto* t : {&a, &b})
        for (const auto& p : t->opt.parameters())
            for (std::int64_t i = 0; i < p.grad.numel(); ++i)
                p.grad.data()[i] = 0.25f * std::sin(static_cast<float>(i));
    a.opt.step(3e-3);
    b.opt.step(3e-3);
    CHECK(bytes_of(a.model) == bytes_of(b.model));
    CHECK(bytes_of_state(a.opt) == bytes_of_state(b.opt));
}

TEST_CASE("training: damaged checkpoints are refused before anything is loaded; the previous one still loads") {
    TempDir dir("damage");
    Trained a(1);
    io::CheckpointStore store(dir.path / "checkpoints");
    const std::vector<std::int64_t> order{0, 1, 2};
    const auto first = store.save(1, a.model, a.extra_params(), a.opt, order, {}, {});
    a.opt.step(1e-2);
    const auto second = store.save(2, a.model, a.extra_params(), a.opt, order, {}, {});
    const auto pristine = dir.path / "pristine";
    fs::copy(second, pristine);

    struct Damage {
        const char* name;
        std::function<void()> apply;
        const char* message;
    };
    const auto manifest = second / "manifest.json";
    const std::vector<Damage> damages = {
        {"truncated weights",
         [&] { fs::resize_file(second / "student.safetensors", fs::file_size(second / "student.safetensors") - 100); },
         "student.safetensors: has "},
        {"bit flip in the optimizer state",
         [&] {
             std::string b = read_file(second / "training.safetensors");
             b[b.size() - 77] ^= 0x10;
             write_bytes(second / "training.safetensors", b);
         },
         "training.safetensors: CRC-32C mismatch (a flipped bit or a modified file); the checkpoint is refused"},
        {"bit flip in the manifest",
         [&] {
             std::string b = read_file(manifest);
             const auto at = b.find("\"step\": 2");
             b[at + 8] = '3';
             write_bytes(manifest, b);
         },
         "manifest.json: checksum mismatch"},
        {"another format version",
         [&] {
             auto m = nlohmann::json::parse(read_file(manifest));
             m["version"] = 2;
             m["checksum"] = io::detail::manifest_checksum(m);  // a genuine v2 manifest, correctly summed
             write_bytes(manifest, m.dump(1));
         },
         "checkpoint format version 2, but this build of distill reads only version 1; the checkpoint is refused"},
        {"truncated manifest", [&] { fs::resize_file(manifest, fs::file_size(manifest) / 2); },
         "manifest.json: is not valid JSON (truncated or corrupted)"},
        {"missing file", [&] { fs::remove(second / "training.safetensors"); },
         "training.safetensors: missing from the checkpoint"},
        {"missing manifest", [&] { fs::remove(manifest); }, "is not a complete checkpoint"},
    };
    for (const auto& d : damages) {
        fs::remove_all(second);
        fs::copy(pristine, second);
        d.apply();
        Trained b(5, 0);
        const std::string before = bytes_of(b.model) + bytes_of(b.extra) + bytes_of_state(b.opt);
        const std::string what = error_of([&] {
            const auto ck = io::Checkpoint::open(second);
            std::vector<std::int64_t> o;
            ck.restore(b.model, b.extra_params(), b.opt, o);
        });
        INFO(d.name << ": " << what);
        CHECK(what.find(d.message) != std::string::npos);
        CHECK(before == bytes_of(b.model) + bytes_of(b.extra) + bytes_of_state(b.opt));  // nothing loaded
        CHECK(b.opt.steps() == 0);
        // The previous checkpoint is untouched and loads.
        std::vector<std::int64_t> o;
        io::Checkpoint::open(first).restore(b.model, b.extra_params(), b.opt, o);
        CHECK(b.opt.steps() == 2);
        CHECK(o == order);
    }
}

TEST_CASE("training: a checkpoint of another model or optimizer is refused without modifying anything") {
    TempDir dir("mismatch");
    Trained a(1);
    io::CheckpointStore store(dir.path / "checkpoints");
    const auto path = store.save(1, a.model, a.extra_params(), a.opt, std::vector<std::int64_t>{0}, {}, {});
    const auto ck = io::Checkpoint::open(path);

    auto cfg = NoiseTask::model_config();
    cfg.d_model = 16;
    Model other(cfg, 1);
    optim::AdamW<float, device::Cpu> other_opt(other.parameters());
    std::vector<std::int64_t> o;
    const std::string before = bytes_of(other);
    CHECK(error_of([&] {
              ck.restore(other, std::span<const Parameter<float>>(), other_opt, o);
          }).find("was written for student") != std::string::npos);
    CHECK(before == bytes_of(other));

    Trained b(3, 0);
    optim::Sgd<float, device::Cpu> sgd(optim::gather(b.model.parameters(), b.extra.params), {.momentum = 0.9});
    const std::string before_b = bytes_of(b.model);
    CHECK(error_of([&] {
              ck.restore(b.model, b.extra_params(), sgd, o);
          }).find("has no tensor 'optimizer.momentum_buffer.wte.weight'") != std::string::npos);
    CHECK(before_b == bytes_of(b.model));
    CHECK(error_of([&] {
              ck.restore(b.model, std::span<const Parameter<float>>(), b.opt, o);
          }).find("holds tensor 'extra.proj.w' that this run does not have") != std::string::npos);
    CHECK(before_b == bytes_of(b.model));
}

TEST_CASE("training: retention keeps the newest, the best and the latest; crash leftovers are cleaned") {
    TempDir dir("retention");
    Trained a(1, 0);
    const auto root = dir.path / "checkpoints";
    {
        io::CheckpointStore store(root);
        for (int s = 1; s <= 6; ++s) {
            const auto p = store.save(s, a.model, a.extra_params(), a.opt, std::vector<std::int64_t>{0}, {}, {});
            if (s == 2) store.set_best(p);
            store.prune(2);
        }
        std::vector<std::string> names;
        for (const auto& p : store.list()) names.push_back(p.filename().string());
        CHECK(names == std::vector<std::string>{"step-00000002", "step-00000005", "step-00000006"});
        CHECK(store.best()->filename() == "step-00000002");
        CHECK(store.latest()->filename() == "step-00000006");
    }
    // A crash mid-save leaves a temporary directory; `latest` still names the last complete one.
    fs::create_directories(root / "step-00000007.tmp.999");
    write_bytes(root / "step-00000007.tmp.999" / "student.safetensors", "partial");
    io::CheckpointStore store(root);
    CHECK(!fs::exists(root / "step-00000007.tmp.999"));
    CHECK(store.latest()->filename() == "step-00000006");
    write_bytes(root / "latest", "step-00000042\n");
    CHECK(error_of([&] { (void)store.latest(); }).find("latest:1: names step-00000042, which does not exist") !=
          std::string::npos);
    write_bytes(root / "latest", "garbage");
    CHECK(error_of([&] { (void)store.latest(); }).find("does not name a checkpoint directory") != std::string::npos);
}

// ---- the finetune loop -------------------------------------------------------------------------

namespace {

std::vector<nlohmann::json> read_metrics(const fs::path& dir) {
    std::vector<nlohmann::json> out;
    std::ifstream in(dir / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
    return out;
}

/// A loss callback wrapping CrossEntropy with a hook after each training micro-batch.
struct HookedLoss {
    std::function<void(Model&, train::LossValues&, long call)> after;
    long calls = 0;
    train::LossValues operator()(Model& m, const data::Batch& b, train::pass p) {
        train::LossValues lv = train::CrossEntropy{}(m, b, p);
        if (p == train::pass::train && after) after(m, lv, ++calls);
        return lv;
    }
};

train::FinetuneConfig noise_config(const fs::path& out) {
    return {.num_epochs = 40,
            .batch_size = 8,
            .grad_accum = 1,
            .grad_clip = 1.0,
            .seed = 3,
            .patience = 3,
            .keep_last_n = 2,
            .log_every = 1,
            .output_dir = out.string(),
            .quiet = true};
}

optim::Schedule noise_schedule(const train::FinetuneConfig& cfg, std::size_t n) {
    return optim::Schedule({.learning_rate = 1e-2, .warmup_steps = 3, .decay = "cosine", .min_lr_ratio = 0.1},
                           train::total_steps(cfg, n));
}

}  // namespace

TEST_CASE("training: validation turns up on the noise task; early stopping and the best checkpoint follow it") {
    TempDir dir("early");
    NoiseTask task;
    Model model(NoiseTask::model_config(), 8, device::Cpu(1));
    model.init(3);
    optim::AdamW<float, device::Cpu> opt(model.parameters(), {.weight_decay = 0.01}, device::Cpu(1));
    const auto cfg = noise_config(dir.path);
    const auto schedule = noise_schedule(cfg, task.train.size());
    const auto r = train::finetune(model, opt, schedule, task.train, &task.validation, cfg);

    std::vector<double> val;
    std::vector<std::int64_t> val_step;
    for (const auto& rec : read_metrics(dir.path))
        if (rec["kind"] == "validation") {
            val.push_back(rec["loss"].get<double>());
            val_step.push_back(rec["step"].get<std::int64_t>());
        }
    REQUIRE(val.size() >= 4);
    const auto best = std::min_element(val.begin(), val.end()) - val.begin();
    INFO("validation losses: " << nlohmann::json(val).dump());
    CHECK(r.early_stopped);
    CHECK(r.steps < train::total_steps(cfg, task.train.size()));
    CHECK(best > 0);                                              // it went down first (learning the marginal) ...
    CHECK(val.back() > val[static_cast<std::size_t>(best)]);      // ... then up (memorizing noise)
    CHECK(val.size() == static_cast<std::size_t>(best) + 1 + 3);  // stopped after `patience` worse validations
    CHECK(val[static_cast<std::size_t>(best)] < std::log(16.0));
    CHECK(val[static_cast<std::size_t>(best)] >
          std::log(8.0) - 0.05);  // nothing beats the uniform marginal on noise (Gibbs)
    CHECK(r.best_step == val_step[static_cast<std::size_t>(best)]);
    CHECK(r.best_validation_loss == val[static_cast<std::size_t>(best)]);
    CHECK(r.epochs_completed == static_cast<std::int64_t>(val.size()));

    // The best checkpoint is kept (retention keeps only 2 others) and holds exactly the best model.
    REQUIRE(!r.best_checkpoint.empty());
    CHECK(r.best_checkpoint.filename() == io::detail::step_name(r.best_step));
    const auto ck = io::Checkpoint::open(r.best_checkpoint);
    Model best_model(NoiseTask::model_config(), 8, device::Cpu(1));
    io::load_weights(ck.student_file(), best_model);
    optim::AdamW<float, device::Cpu> unused(best_model.parameters());
    train::FinetuneConfig eval_cfg = cfg;
    eval_cfg.output_dir.clear();
    train::Finetuner evaluator(best_model, unused, schedule, task.train, &task.validation, eval_cfg);
    CHECK(evaluator.evaluate().total == r.best_validation_loss);

    // A finished run resumed is a no-op that reports the same result.
    const auto again = train::finetune(model, opt, schedule, task.train, &task.validation, cfg);
    CHECK(again.resumed);
    CHECK(again.steps == r.steps);
    CHECK(again.early_stopped);
    CHECK(again.best_step == r.best_step);
}

TEST_CASE("training: a run paused at stop_at and continued ends as one never paused (distill sweep's rungs)") {
    TempDir a("whole"), b("paused");
    NoiseTask task;
    auto cfg_of = [](const fs::path& out) {
        auto cfg = noise_config(out);
        cfg.num_epochs = 8;  // 3 steps an epoch: 24 steps, validated at each epoch's end
        cfg.patience = 0;
        return cfg;
    };
    auto run = [&](const fs::path& out, std::int64_t stop_at) {
        Model model(NoiseTask::model_config(), 8, device::Cpu(1));
        model.init(3);
        optim::AdamW<float, device::Cpu> opt(model.parameters(), {.weight_decay = 0.01}, device::Cpu(1));
        const auto cfg = cfg_of(out);
        train::FinetuneOptions<float> options;
        options.stop_at = stop_at;
        return train::finetune(model, opt, noise_schedule(cfg, task.train.size()), task.train, &task.validation, cfg,
                               train::CrossEntropy{}, options);
    };
    const auto whole = run(a.path, 0);
    REQUIRE(whole.steps == 24);
    CHECK_FALSE(whole.paused);
    const auto paused = run(b.path, 7);  // step 7 is no epoch end: the pause validates on its own
    CHECK(paused.paused);
    CHECK(paused.steps == 7);
    CHECK(paused.best_step % 3 == 0);   // an epoch end: the pause's validation is a measurement only
    const auto again = run(b.path, 7);  // paused there already: nothing to train
    CHECK(again.paused);
    CHECK(again.resumed);
    CHECK(again.steps == 7);
    const auto rest = run(b.path, 0);
    CHECK_FALSE(rest.paused);
    CHECK(rest.resumed_from_step == 7);
    CHECK(rest.steps == 24);
    CHECK(rest.best_step == whole.best_step);
    CHECK(rest.best_validation_loss == whole.best_validation_loss);
    auto bytes = [](const fs::path& ck) {
        std::ifstream in(ck / "student.safetensors", std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    };
    CHECK(bytes(rest.last_checkpoint) == bytes(whole.last_checkpoint));
    CHECK(bytes(rest.best_checkpoint) == bytes(whole.best_checkpoint));
    // metrics.jsonl: the uninterrupted run's records, and the pause's validation marked as one
    std::ifstream in(b.path / "metrics.jsonl");
    int pauses = 0;
    for (std::string line; std::getline(in, line);)
        if (line.find("\"pause\":true") != std::string::npos) {
            ++pauses;
            CHECK(nlohmann::json::parse(line)["step"] == 7);
        }
    CHECK(pauses == 1);
}

TEST_CASE("training: gradient accumulation over micro-batches equals one batch of their union") {
    NoiseTask task;  // validation sequences all have the same length: micro-batch means average exactly
    auto run = [&](int batch, int accum) {
        Model model(NoiseTask::model_config(), 8, device::Cpu(1));
        model.init(3);
        // SGD: linear in the gradient, so rounding differences stay rounding-sized (Adam's g/√v
        // amplifies them wherever a gradient is near zero).
        optim::Sgd<float, device::Cpu> opt(model.parameters(), {.momentum = 0.9}, device::Cpu(1));
        train::FinetuneConfig cfg{.max_steps = 4, .batch_size = batch, .grad_accum = accum, .seed = 1};
        cfg.quiet = true;
        const optim::Schedule schedule({.learning_rate = 0.5, .decay = "constant"}, 4);
        const auto r = train::finetune(model, opt, schedule, task.validation, nullptr, cfg);
        CHECK(r.steps == 4);
        return std::vector<float>(model.parameter_data(), model.parameter_data() + model.arena_size());
    };
    const auto one = run(8, 1), two = run(4, 2), four = run(2, 4);
    check_close("accumulate 2", two.data(), one.data(), static_cast<std::int64_t>(one.size()), 1e-6, 1e-5);
    check_close("accumulate 4", four.data(), one.data(), static_cast<std::int64_t>(one.size()), 1e-6, 1e-5);
    CHECK(one != two);  // the batches really were split differently
}

TEST_CASE(
    "training: a NaN injected into a gradient stops the run with the documented message; the last checkpoint "
    "survives") {
    TempDir dir("nan");
    NoiseTask task;
    Model model(NoiseTask::model_config(), 8, device::Cpu(1));
    model.init(3);
    optim::AdamW<float, device::Cpu> opt(model.parameters(), {}, device::Cpu(1));
    auto cfg = noise_config(dir.path);
    cfg.checkpoint_every = 1;
    const auto schedule = noise_schedule(cfg, task.train.size());
    HookedLoss loss;
    loss.after = [](Model& m, train::LossValues&, long call) {
        if (call == 5) m.parameters()[4].grad.data()[7] = std::numeric_limits<float>::quiet_NaN();
    };
    std::string what;
    try {
        train::finetune(model, opt, schedule, task.train, &task.validation, cfg, loss);
    } catch (const numeric_error& e) {
        what = e.what();
    }
    const std::string expected =
        "step 5 (epoch 1): the gradient of 'h.0.attn.c_attn.weight' (element 7) is NaN; training stopped before "
        "the update (the last good checkpoint is " +
        (dir.path / "checkpoints" / "step-00000004").string() + ")";
    CHECK(what == expected);
    io::CheckpointStore store(dir.path / "checkpoints");
    CHECK(store.latest()->filename() == "step-00000004");
    const auto ck = io::Checkpoint::open(*store.latest());  // intact
    Model fresh(NoiseTask::model_config(), 8);
    optim::AdamW<float, device::Cpu> fresh_opt(fresh.parameters());
    std::vector<std::int64_t> order;
    ck.restore(fresh, std::span<const Parameter<float>>(), fresh_opt, order);
    CHECK(fresh_opt.steps() == 4);
    for (const auto& rec : read_metrics(dir.path)) CHECK(rec["step"].get<std::int64_t>() <= 4);

    // A non-finite loss term is named too.
    TempDir dir2("nan-loss");
    Model model2(NoiseTask::model_config(), 8, device::Cpu(1));
    optim::AdamW<float, device::Cpu> opt2(model2.parameters(), {}, device::Cpu(1));
    HookedLoss loss2;
    loss2.after = [](Model&, train::LossValues& lv, long call) {
        if (call == 2) lv.terms.push_back({"soft_kl", std::numeric_limits<double>::infinity()});
    };
    CHECK(error_of([&] {
              train::finetune(model2, opt2, schedule, task.train, &task.validation, noise_config(dir2.path), loss2);
          }) == "step 2 (epoch 0): loss term 'soft_kl' is +Inf; training stopped before the update (none was written)");
}

TEST_CASE("training: metrics.jsonl, progress lines and the explosion report") {
    TempDir dir("metrics");
    NoiseTask task;
    Model model(NoiseTask::model_config(), 8, device::Cpu(1));
    model.init(3);
    optim::AdamW<float, device::Cpu> opt(model.parameters(), {}, device::Cpu(1));
    auto cfg = noise_config(dir.path);
    cfg.num_epochs = 8;
    cfg.patience = 0;
    cfg.log_every = 4;
    cfg.quiet = false;
    cfg.explosion_warmup = 5;
    const auto schedule = noise_schedule(cfg, task.train.size());
    HookedLoss loss;
    loss.after = [](Model&, train::LossValues& lv, long call) {
        if (call == 20) lv.total *= 100;  // a spike in the reported loss (the gradients are unaffected)
    };
    std::FILE* out = std::tmpfile();
    train::FinetuneOptions<float> options;
    options.progress = out;
    const auto r = train::finetune(model, opt, schedule, task.train, &task.validation, cfg, loss, options);
    CHECK(r.steps == 24);
    CHECK(r.loss_spikes == 1);
    std::rewind(out);
    std::string text;
    char buf[512];
    while (std::fgets(buf, sizeof buf, out)) text += buf;
    std::fclose(out);
    INFO(text);
    int step_lines = 0, validation_lines = 0;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
        step_lines += line.starts_with("step ");
        validation_lines += line.starts_with("validation at step ");
    }
    CHECK(step_lines == 6);        // not a terminal: one line every log_every = 4 steps
    CHECK(validation_lines == 8);  // every epoch end
    CHECK(text.find("step 24/24 (100%) epoch 8  loss ") != std::string::npos);
    CHECK(text.find("warning: step 20: loss ") != std::string::npos);

    int train_records = 0, validation_records = 0, events = 0;
    for (const auto& rec : read_metrics(dir.path)) {
        if (rec["kind"] == "train") {
            ++train_records;
            for (const char* key : {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"})
                CHECK(rec.contains(key));
            CHECK(rec["terms"].contains("ce"));
        } else if (rec["kind"] == "validation") {
            ++validation_records;
            CHECK(rec["terms"].contains("ce"));
            CHECK(rec.contains("best"));
        } else {
            ++events;
            CHECK(rec["event"] == "loss_explosion");
            CHECK(rec["step"] == 20);
        }
    }
    CHECK(train_records == 6);
    CHECK(validation_records == 8);
    CHECK(events == 1);

    // Quiet: nothing printed.
    TempDir dir2("quiet");
    std::FILE* out2 = std::tmpfile();
    train::FinetuneOptions<float> quiet_options;
    quiet_options.progress = out2;
    auto quiet_cfg = noise_config(dir2.path);
    quiet_cfg.num_epochs = 1;
    train::finetune(model, opt, schedule, task.train, &task.validation, quiet_cfg, train::CrossEntropy{},
                    quiet_options);
    CHECK(std::ftell(out2) == 0);
    std::fclose(out2);
}

TEST_CASE("training: on a terminal, progress is one bar redrawn in place") {
    int master = -1, slave = -1;
    REQUIRE(::openpty(&master, &slave, nullptr, nullptr, nullptr) == 0);
    std::FILE* out = ::fdopen(slave, "w");
    REQUIRE(out);
    NoiseTask task;
    Model model(NoiseTask::model_config(), 8, device::Cpu(1));
    model.init(3);
    optim::AdamW<float, device::Cpu> opt(model.parameters(), {}, device::Cpu(1));
    train::FinetuneConfig cfg{.num_epochs = 2, .batch_size = 8};
    cfg.quiet = false;
    train::FinetuneOptions<float> options;
    options.progress = out;
    train::finetune(model, opt, noise_schedule(cfg, task.train.size()), task.train, nullptr, cfg, train::CrossEntropy{},
                    options);
    std::fclose(out);
    std::string text;
    char buf[4096];
    for (ssize_t n; (n = ::read(master, buf, sizeof buf)) > 0;) {
        text.append(buf, static_cast<std::size_t>(n));
        if (text.find("\n") != std::string::npos && text.find("step 6/6") != std::string::npos) break;
    }
    ::close(master);
    INFO(text);
    CHECK(text.find("\r\033[K[========================] step 6/6 (100%) epoch 2  loss ") != std::string::npos);
    CHECK(text.find("tok/s  ETA 0s") != std::string::npos);
}

TEST_CASE("training: errors name the caller's keys (a job's hyperparameters and output_dir)") {
    TempDir dir("keys");
    NoiseTask task;
    Model model(NoiseTask::model_config(), 4, device::Cpu(1));
    model.init(3);
    optim::AdamW<float, device::Cpu> opt(model.parameters(), {}, device::Cpu(1));
    auto cfg = noise_config(dir.path);
    const auto schedule = noise_schedule(cfg, task.train.size());
    train::FinetuneOptions<float> job_keys;
    job_keys.config_path = "hyperparameters";
    job_keys.output_dir_key = "output_dir";
    job_keys.progress = nullptr;
    auto run = [&] {
        train::finetune(model, opt, schedule, task.train, nullptr, cfg, train::CrossEntropy{}, job_keys);
    };
    CHECK(error_of(run) == "hyperparameters.batch_size: is 8, the student was built for at most 4 sequences");
    cfg.batch_size = 4;
    cfg.grad_accum = 0;
    CHECK(error_of(run) == "hyperparameters.grad_accum: must be >= 1, got 0");
    cfg.grad_accum = 1;
    cfg.max_steps = 1;
    train::Finetuner first(model, opt, schedule, task.train, nullptr, cfg, train::CrossEntropy{}, job_keys);
    CHECK(error_of([&] {
              train::Finetuner(model, opt, schedule, task.train, nullptr, cfg, train::CrossEntropy{}, job_keys);
          }).starts_with("output_dir: another process is training into"));
}

TEST_CASE("training: bad configurations, other data and damaged checkpoints are refused when a run starts") {
    TempDir dir("refuse");
    NoiseTask task;
    Model model(NoiseTask::model_config(), 4, device::Cpu(1));
    model.init(3);
    optim::AdamW<float, device::Cpu> opt(model.parameters(), {}, device::Cpu(1));
    auto cfg = noise_config(dir.path);
    const auto schedule = noise_schedule(cfg, task.train.size());
    CHECK(error_of([&] { train::finetune(model, opt, schedule, task.train, nullptr, cfg); }) ==
          "training.batch_size: is 8, the student was built for at most 4 sequences");
    cfg.batch_size = 4;
    cfg.grad_accum = 0;
    CHECK(error_of([&] { train::finetune(model, opt, schedule, task.train, nullptr, cfg); }) ==
          "training.grad_accum: must be >= 1, got 0");
    cfg.grad_accum = 1;
    cfg.explosion_factor = 0.5;
    CHECK(error_of([&] {
              train::finetune(model, opt, schedule, task.train, nullptr, cfg);
          }).starts_with("training.explosion_factor: must be 0 (off) or > 1"));
    cfg.explosion_factor = 10;
    train::FinetuneConfig parsed;
    CHECK(error_of([&] {
              io::from_json(nlohmann::json{{"patiense", 2}}, parsed, "training");
          }) == "training.patiense: unknown key; did you mean \"patience\"?");
    {
        // One run per output directory: a second concurrent run is refused (the lock dies with its holder).
        auto locked = cfg;
        locked.max_steps = 1;
        train::Finetuner first(model, opt, schedule, task.train, nullptr, locked);
        CHECK(error_of([&] {
                  train::Finetuner(model, opt, schedule, task.train, nullptr, locked);
              }).find("training.output_dir: another process is training into") != std::string::npos);
    }
    const data::SequenceDataset empty;
    CHECK(error_of([&] { train::finetune(model, opt, schedule, empty, nullptr, cfg); }) ==
          "training_data: the training set is empty");

    cfg.max_steps = 4;
    cfg.checkpoint_every = 2;
    train::finetune(model, opt, schedule, task.train, nullptr, cfg);
    auto no_resume = cfg;
    no_resume.resume = false;
    CHECK(error_of([&] {
              train::finetune(model, opt, schedule, task.train, nullptr, no_resume);
          }).find("training.resume: is false, but") != std::string::npos);
    NoiseTask other(24, 32, 77);
    cfg.max_steps = 8;
    CHECK(error_of([&] {
              train::finetune(model, opt, schedule, other.train, nullptr, cfg);
          }).find("training_data: differs from the data") != std::string::npos);

    // Damage the latest checkpoint: resuming refuses it and names the intact one before it.
    const auto latest = dir.path / "checkpoints" / "step-00000004";
    std::string b = read_file(latest / "student.safetensors");
    b[b.size() / 2] ^= 1;
    write_bytes(latest / "student.safetensors", b);
    const std::string what = error_of([&] { train::finetune(model, opt, schedule, task.train, nullptr, cfg); });
    CHECK(what.find("student.safetensors: CRC-32C mismatch") != std::string::npos);
    CHECK(what.find("Cannot resume from step-00000004; step-00000002 is intact") != std::string::npos);
}

// ---- resume after SIGKILL ------------------------------------------------------------------------

#ifdef DISTILL_TRAIN_CHILD
namespace {

/// Starts tests/train_child.cpp with `args` (its own process, so a SIGKILL is a real crash: no
/// destructors, no flushes, OpenMP threads and open files dropped mid-flight).
pid_t spawn_child(const std::vector<std::string>& args) {
    std::vector<std::string> all{DISTILL_TRAIN_CHILD};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);  // the result line
    pid_t pid = -1;
    const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE_MESSAGE(rc == 0, "posix_spawn " << DISTILL_TRAIN_CHILD << ": " << std::strerror(rc));
    return pid;
}

/// Waits for `pid`; returns the signal that killed it, or -(exit code) ... 0 for a clean exit.
int wait_child(pid_t pid) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(status)) return WTERMSIG(status);
    return WIFEXITED(status) ? -WEXITSTATUS(status) : -255;
}

int run_child(const std::vector<std::string>& args) {
    return wait_child(spawn_child(args));
}

/// metrics.jsonl without the wall-clock fields, which no two runs share.
std::string metrics_without_timing(const fs::path& dir) {
    std::string out;
    for (auto rec : read_metrics(dir)) {
        rec.erase("tokens_per_s");
        out += rec.dump() + "\n";
    }
    return out;
}

/// Two finished runs are the same: the final checkpoint's files byte for byte, the loop state, the
/// best pointer, and the metrics log.
void check_same_run(const fs::path& a, const fs::path& b) {
    io::CheckpointStore sa(a / "checkpoints"), sb(b / "checkpoints");
    REQUIRE(sa.latest());
    REQUIRE(sb.latest());
    CHECK(sa.latest()->filename() == sb.latest()->filename());
    for (const char* f : {"student.safetensors", "training.safetensors"}) {
        INFO(f);
        CHECK(read_file(*sa.latest() / f) == read_file(*sb.latest() / f));
    }
    const auto ma = io::Checkpoint::open(*sa.latest()), mb = io::Checkpoint::open(*sb.latest());
    CHECK(ma.state() == mb.state());
    REQUIRE(sa.best());
    REQUIRE(sb.best());
    CHECK(sa.best()->filename() == sb.best()->filename());
    CHECK(read_file(*sa.best() / "student.safetensors") == read_file(*sb.best() / "student.safetensors"));
    CHECK(metrics_without_timing(a) == metrics_without_timing(b));
}

}  // namespace

TEST_CASE(
    "training: SIGKILL mid-step, then resume: byte-identical to an uninterrupted run (accumulation, early stopping)") {
    TempDir dir("sigkill");
    // One thread per child: these machines are shared, and OpenMP teams of an oversubscribed process
    // spin at every barrier; thread-count independence of the kernels is tested in-process above.
    const std::vector<std::string> common{"--batch",      "4", "--accum",   "2", "--patience", "3",
                                          "--eval-every", "2", "--threads", "1"};
    auto with = [&](std::vector<std::string> extra, const fs::path& out) {
        extra.insert(extra.begin(), common.begin(), common.end());
        extra.push_back("--out");
        extra.push_back(out.string());
        return extra;
    };
    REQUIRE(run_child(with({}, dir.path / "straight")) == 0);
    const auto straight = io::Checkpoint::open(*io::CheckpointStore(dir.path / "straight" / "checkpoints").latest());
    REQUIRE(straight.state()["stopped"] == true);  // early stopping ended it
    const std::int64_t steps = straight.step();
    INFO("uninterrupted run: " << steps << " steps");

    // Killed at micro-batch 2k+1: the first half of an accumulated step is lost with the process.
    for (long call : {9L, 2 * steps - 3}) {
        const fs::path out = dir.path / ("killed-" + std::to_string(call));
        CHECK(run_child(with({"--kill-at-call", std::to_string(call)}, out)) == SIGKILL);
        io::CheckpointStore killed(out / "checkpoints");
        REQUIRE(killed.latest());
        CHECK(io::Checkpoint::open(*killed.latest()).step() < steps);
        CHECK(run_child(with({}, out)) == 0);  // the same command again resumes
        check_same_run(dir.path / "straight", out);
    }
}

TEST_CASE("training: SIGKILL from outside at an arbitrary moment, then resume: byte-identical") {
    TempDir dir("sigkill-outside");
    const std::vector<std::string> common{
        "--batch", "4",         "--accum", "1", "--patience", "0", "--epochs", "6", "--checkpoint-every",
        "1",       "--threads", "1"};
    auto with = [&](const fs::path& out) {
        auto args = common;
        args.push_back("--out");
        args.push_back(out.string());
        return args;
    };
    REQUIRE(run_child(with(dir.path / "straight")) == 0);
    int killed_runs = 0;
    for (int attempt = 0; attempt < 2; ++attempt) {
        const fs::path out = dir.path / ("killed-" + std::to_string(attempt));
        const pid_t pid = spawn_child(with(out));
        // Wait for the first checkpoints, then kill without warning — wherever the child is: in a
        // forward, an update, an fsync or halfway through writing a checkpoint directory.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while (!fs::exists(out / "checkpoints" / "step-00000003") && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        std::this_thread::sleep_for(std::chrono::microseconds(1500 * attempt));
        ::kill(pid, SIGKILL);
        const int how = wait_child(pid);
        killed_runs += how == SIGKILL;
        CHECK(run_child(with(out)) == 0);
        check_same_run(dir.path / "straight", out);
    }
    CHECK(killed_runs >= 1);  // at least one child was really killed before finishing
}
#endif
