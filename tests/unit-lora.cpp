// LoRA on student::Transformer (student/lora.hpp): forward and every adapter gradient equal PEFT's
// (tests/reference/make_lora_golden.py) on the gpt2 and llama layouts; finite differences in double
// for every adapter; the base is frozen (no gradient memory, unchanged by optimizer steps); dropout
// is deterministic per key and absent from eval forwards; merged and PEFT-format exports; refusals.

#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/device/cpu.hpp"
#include "distill/device/reference.hpp"
#include "distill/io/hf.hpp"
#include "distill/io/peft.hpp"
#include "distill/optim/adam.hpp"
#include "distill/student/transformer.hpp"
#include "distill/train/finetune.hpp"
#include "testing.hpp"
#include "training_task.hpp"

using namespace distill;
using distill::testing::check_close;
using distill::testing::check_gradient;
using distill::testing::read_ids;
using distill::testing::read_tensor;

#ifndef DISTILL_TEST_DATA_DIR
#define DISTILL_TEST_DATA_DIR "tests/reference/fixtures"
#endif

namespace {

const std::filesystem::path fixtures = std::filesystem::path(DISTILL_TEST_DATA_DIR);

student::LoraConfig golden_lora(const std::string& family) {
    student::LoraConfig l;
    l.rank = 4;
    l.alpha = 6;
    l.targets = family == "gpt2" ? std::vector<std::string>{"qkv", "o", "up", "down"}
                                 : std::vector<std::string>{"q", "k", "v", "o", "gate", "up", "down", "head"};
    return l;
}

// transformers' LM loss predicts token t+1 at position t
std::vector<std::int32_t> shifted(const std::vector<std::int32_t>& tokens, int B, int T) {
    std::vector<std::int32_t> targets(tokens.size(), -1);
    for (int b = 0; b < B; ++b)
        for (int t = 0; t + 1 < T; ++t) targets[std::size_t(b * T + t)] = tokens[std::size_t(b * T + t + 1)];
    return targets;
}

std::filesystem::path temp_dir(const std::string& name) {
    auto d = std::filesystem::temp_directory_path() / ("distill-lora-" + name + "-" + std::to_string(::getpid()));
    std::filesystem::remove_all(d);
    return d;
}

template <class T, class Dev>
void set(const Parameter<T>& p, const std::vector<T>& v) {
    REQUIRE(std::int64_t(v.size()) == p.value.numel());
    std::memcpy(p.value.data(), v.data(), sizeof(T) * v.size());
}

}  // namespace

template <class Dev>
void check_peft_golden(const std::string& family) {
    io::safetensors_file golden(fixtures / "lora" / (family + "_golden.safetensors"));
    const auto& tok = golden.at("tokens");
    const int B = int(tok.shape[0]), T = int(tok.shape[1]);
    const auto tokens = read_ids(golden, "tokens");
    const io::hf::Directory ckpt(fixtures / "hf" / family);
    auto cfg = io::hf::transformer_config(ckpt);
    cfg.lora = golden_lora(family);
    student::Transformer<float, Dev> m(cfg, B);
    io::hf::load(ckpt, m);
    REQUIRE(m.frozen_base());
    for (const auto& p : m.parameters())
        set<float, Dev>(p, read_tensor<float>(golden, io::peft::tensor_name(family, p.name)));

    m.forward(tokens.data(), B, T);
    const auto targets = shifted(tokens, B, T);
    const float loss = m.cross_entropy(targets.data());
    auto compare = [&](const std::string& name, const float* actual, std::int64_t n) {
        const auto expected = read_tensor<float>(golden, name);
        REQUIRE(std::int64_t(expected.size()) == n);
        double scale = 0;
        for (float e : expected) scale = std::max(scale, double(std::abs(e)));
        check_close(family + " " + name, actual, expected.data(), n, 1e-5 * scale, 1e-4);
    };
    compare("logits", m.logits().data(), m.logits().numel());
    CHECK(loss == doctest::Approx(read_tensor<float>(golden, "loss")[0]).epsilon(1e-5));
    m.zero_grad();
    m.backward();
    int adapters = 0;
    for (const auto& p : m.parameters()) {
        compare("grad." + io::peft::tensor_name(family, p.name), p.grad.data(), p.grad.numel());
        ++adapters;
    }
    // every adapter PEFT made (A and B) is one of ours
    int peft_adapters = 0;
    for (const auto& t : golden.tensors()) peft_adapters += t.name.starts_with("base_model.");
    CHECK(adapters == peft_adapters);
}

TEST_CASE_TEMPLATE("lora: logits, loss and every adapter gradient equal PEFT's", Dev, device::Cpu, device::Reference) {
    SUBCASE("gpt2: c_attn (qkv), attn.c_proj (o), c_fc (up), mlp.c_proj (down); fan_in_fan_out") {
        check_peft_golden<Dev>("gpt2");
    }
    SUBCASE("llama: q, k, v (grouped-query), o, gate, up, down, untied head") {
        check_peft_golden<Dev>("llama");
    }
}

namespace {

student::TransformerConfig tiny(bool llama) {
    student::TransformerConfig c;
    c.vocab_size = 11;
    c.context_length = 6;
    c.d_model = 8;
    c.n_layers = 2;
    c.n_heads = 2;
    c.d_ff = 12;
    c.tie_embeddings = false;
    if (llama) {
        c.norm = "rmsnorm";
        c.positions = "rope";
        c.mlp = "swiglu";
        c.n_heads = 4;
        c.n_kv_heads = 2;
        c.qkv_bias = c.proj_bias = c.mlp_bias = false;
    }
    return c;
}

// Loss of a model whose adapters are `x` (concatenated in parameters() order).
template <class Dev>
double loss_at(student::Transformer<double, Dev>& m, const std::vector<double>& x, const std::int32_t* tokens,
               const std::int32_t* targets, int B, int T) {
    std::size_t off = 0;
    for (const auto& p : m.parameters()) {
        std::memcpy(p.value.data(), x.data() + off, sizeof(double) * std::size_t(p.value.numel()));
        off += std::size_t(p.value.numel());
    }
    m.forward(tokens, B, T);
    return m.cross_entropy(targets);
}

template <class Dev>
void check_fd(student::TransformerConfig cfg, student::activations mode = student::activations::training) {
    const int B = 2, T = 5;
    student::Transformer<double, Dev> m(cfg, B, Dev{}, mode);
    m.init(3);
    // B nonzero, so that every A has a gradient too
    std::vector<double> x;
    for (const auto& p : m.parameters()) {
        auto v = testing::random_vector<double>(std::size_t(p.value.numel()), 17 + x.size(), 0.5);
        x.insert(x.end(), v.begin(), v.end());
    }
    const std::vector<std::int32_t> tokens = {1, 4, 7, 2, 9, 3, 3, 10, 0, 5};
    const std::vector<std::int32_t> targets = {4, 7, 2, 9, -1, 3, 10, 0, 5, 6};
    loss_at(m, x, tokens.data(), targets.data(), B, T);
    m.zero_grad();
    m.backward();
    std::vector<double> analytic;
    for (const auto& p : m.parameters()) analytic.insert(analytic.end(), p.grad.data(), p.grad.data() + p.grad.numel());
    check_gradient(
        "lora adapters", x, [&] { return loss_at(m, x, tokens.data(), targets.data(), B, T); }, analytic, 1e-6);
}

}  // namespace

TEST_CASE_TEMPLATE("lora: every adapter's gradient matches finite differences (double)", Dev, device::Reference,
                   device::Cpu) {
    SUBCASE("gpt2 layout: q, k, v rows of the fused projection, o, up, down, untied head") {
        auto c = tiny(false);
        c.lora = {3, 5, 0, {"q", "k", "v", "o", "up", "down", "head"}};
        check_fd<Dev>(c);
    }
    SUBCASE("gpt2 layout: the fused projection as one adapter (qkv)") {
        auto c = tiny(false);
        c.lora = {2, 8, 0, {"qkv", "down"}};
        check_fd<Dev>(c);
    }
    SUBCASE("llama layout: q, k, v (grouped-query, rotary), o, gate, up, down, head") {
        auto c = tiny(true);
        c.lora = {2, 3, 0, {"q", "k", "v", "o", "gate", "up", "down", "head"}};
        check_fd<Dev>(c);
    }
    SUBCASE("llama layout, activations::checkpointed") {
        auto c = tiny(true);
        c.lora = {2, 3, 0, {"q", "v", "down"}};
        check_fd<Dev>(c, student::activations::checkpointed);
    }
}

TEST_CASE(
    "lora: dropout masks follow the key; eval forwards and generation do not drop; checkpointed equals training") {
    auto c = tiny(true);
    c.lora = {2, 4, 0.3, {"q", "v", "up", "head"}};
    using M = student::Transformer<double, device::Cpu>;
    // training on checkpointed's attention path (fused on device::Cpu with the fused kernels)
    const auto mode = student::attends_fused<double, device::Cpu>(student::activations::checkpointed)
                          ? student::activations::training_fused
                          : student::activations::training;
    M m(c, 2, device::Cpu{}, mode), ck(c, 2, device::Cpu{}, student::activations::checkpointed);
    auto c0 = c;
    c0.lora.dropout = 0;
    M plain(c0, 2, device::Cpu{}, mode);
    for (M* x : {&m, &ck, &plain}) {
        x->init(5);
        std::size_t i = 0;
        for (const auto& p : x->parameters())
            set<double, device::Cpu>(p, testing::random_vector<double>(std::size_t(p.value.numel()), 40 + i++, 0.5));
    }
    const std::vector<std::int32_t> tokens = {1, 4, 7, 2, 9, 3, 3, 10, 0, 5};
    const std::vector<std::int32_t> targets = {4, 7, 2, 9, -1, 3, 10, 0, 5, 6};
    auto logits = [](M& x) {
        const auto l = x.logits();
        return std::vector<double>(l.data(), l.data() + l.numel());
    };
    // eval (the default): no dropout, the dropout-free model's output
    m.forward(tokens.data(), 2, 5);
    plain.forward(tokens.data(), 2, 5);
    CHECK(logits(m) == logits(plain));
    // training forwards: the same key, the same masks; another key, others
    m.lora_dropout(7);
    m.forward(tokens.data(), 2, 5);
    const auto a = logits(m);
    CHECK(a != logits(plain));
    m.forward(tokens.data(), 2, 5);
    CHECK(logits(m) == a);
    m.lora_dropout(8);
    m.forward(tokens.data(), 2, 5);
    CHECK(logits(m) != a);
    // checkpointed recomputes the same masks: gradients equal those of training on its attention path, bit for bit
    m.lora_dropout(7);
    ck.lora_dropout(7);
    m.forward(tokens.data(), 2, 5);
    ck.forward(tokens.data(), 2, 5);
    m.cross_entropy(targets.data());
    ck.cross_entropy(targets.data());
    m.zero_grad();
    ck.zero_grad();
    m.backward();
    ck.backward();
    for (std::size_t i = 0; i < m.parameters().size(); ++i) {
        const auto& g1 = m.parameters()[i].grad;
        const auto& g2 = ck.parameters()[i].grad;
        CHECK(std::memcmp(g1.data(), g2.data(), sizeof(double) * std::size_t(g1.numel())) == 0);
    }
    // finite differences through the (fixed) masks
    std::vector<double> x, analytic;
    for (const auto& p : m.parameters()) {
        x.insert(x.end(), p.value.data(), p.value.data() + p.value.numel());
        analytic.insert(analytic.end(), p.grad.data(), p.grad.data() + p.grad.numel());
    }
    check_gradient(
        "lora adapters with dropout", x, [&] { return loss_at(m, x, tokens.data(), targets.data(), 2, 5); }, analytic,
        1e-6);
    // generation never drops
    m.lora_eval();
    m.forward(tokens.data(), 2, 5);
    const auto eval = logits(m);
    m.lora_dropout(7);
    auto cache = m.make_cache(1);
    const int len = 5;
    m.prefill(cache, tokens.data(), &len, 1, 5);
    const auto next = m.next_logits();
    check_close("prefill", next.data(), eval.data() + 4 * c.vocab_size, c.vocab_size, 1e-12, 1e-10);
}

TEST_CASE("lora: the base is frozen: no gradient memory, unchanged by optimizer steps; adapters train") {
    const io::hf::Directory ckpt(fixtures / "hf" / "llama");
    auto cfg = io::hf::transformer_config(ckpt);
    const student::Transformer<float, device::Cpu> full(cfg, 2);
    cfg.lora = golden_lora("llama");
    student::Transformer<float, device::Cpu> m(cfg, 2);
    io::hf::load(ckpt, m);
    m.init_lora(9);
    // gradient memory: the adapters' alone
    std::int64_t adapter_numel = 0;
    for (const auto& p : m.parameters()) adapter_numel += p.value.numel();
    CHECK(m.parameters().size() == 30);
    CHECK(m.gradient_bytes() < sizeof(float) * std::size_t(adapter_numel + 16 * 30));  // arena padding only
    CHECK(m.gradient_data() == nullptr);
    for (const auto& p : m.base_parameters()) CHECK(p.grad.empty());
    CHECK(full.gradient_bytes() >= sizeof(float) * std::size_t(cfg.parameter_count()));
    // PEFT's init: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0
    for (const auto& p : m.parameters()) {
        const double bound = 1.0 / std::sqrt(double(p.value.shape()[1]));
        double mx = 0;
        for (std::int64_t i = 0; i < p.value.numel(); ++i) mx = std::max(mx, double(std::abs(p.value.data()[i])));
        if (p.name.ends_with("lora_B"))
            CHECK(mx == 0);
        else
            CHECK((mx > 0.5 * bound && mx <= bound));
    }
    const std::vector<float> before = io::hf::detail::host_parameters(m);  // B = 0: merged = base
    optim::AdamW<float, device::Cpu> opt(m.parameters(), {.weight_decay = 0.1});
    const std::vector<std::int32_t> tokens = {1, 4, 7, 2, 9, 3, 3, 10, 0, 5};
    const auto targets = shifted(tokens, 2, 5);
    float first = 0, last = 0;
    for (int step = 0; step < 5; ++step) {
        m.forward(tokens.data(), 2, 5);
        last = m.cross_entropy(targets.data());
        if (step == 0) first = last;
        m.zero_grad();
        m.backward();
        opt.step(1e-2);
    }
    CHECK(last < first);
    std::vector<float> base(m.arena_size());
    std::memcpy(base.data(), m.parameter_data(), sizeof(float) * base.size());
    CHECK(base == before);
}

TEST_CASE("lora: the merged export equals the adapted model; the PEFT export holds PEFT's names") {
    for (const std::string family : {"gpt2", "llama"}) {
        CAPTURE(family);
        io::safetensors_file golden(fixtures / "lora" / (family + "_golden.safetensors"));
        const io::hf::Directory ckpt(fixtures / "hf" / family);
        auto cfg = io::hf::transformer_config(ckpt);
        cfg.lora = golden_lora(family);
        student::Transformer<float, device::Cpu> m(cfg, 2);
        io::hf::load(ckpt, m);
        for (const auto& p : m.parameters())
            set<float, device::Cpu>(p, read_tensor<float>(golden, io::peft::tensor_name(family, p.name)));
        const auto tokens = read_ids(golden, "tokens");
        const int T = int(golden.at("tokens").shape[1]);
        m.forward(tokens.data(), 2, T);

        const auto merged_dir = temp_dir(family + "-merged");
        io::hf::save(merged_dir, m);
        const io::hf::Directory merged(merged_dir);
        student::Transformer<float, device::Cpu> plain(io::hf::transformer_config(merged), 2);
        io::hf::load(merged, plain);
        plain.forward(tokens.data(), 2, T);
        check_close(family + " merged logits", plain.logits().data(), m.logits().data(), m.logits().numel(), 1e-5,
                    1e-4);

        const auto adapter_dir = temp_dir(family + "-adapter");
        io::peft::save_adapter(adapter_dir, m, "", "distill/" + family);
        io::safetensors_file saved(adapter_dir / "adapter_model.safetensors");
        CHECK(saved.tensors().size() == m.parameters().size());
        for (const auto& t : saved.tensors()) {
            const auto want = read_tensor<float>(golden, t.name);  // PEFT's name and value
            const auto got = read_tensor<float>(saved, t.name);
            CHECK(got == want);
        }
        const auto config = testing::read_json(adapter_dir / "adapter_config.json");
        CHECK(config["peft_type"] == "LORA");
        CHECK(config["task_type"] == "CAUSAL_LM");
        CHECK(config["r"] == 4);
        CHECK(config["lora_alpha"] == 6.0);
        CHECK(config["fan_in_fan_out"] == (family == "gpt2"));
        CHECK(config["base_model_name_or_path"] == "distill/" + family);
        if (family == "gpt2")
            CHECK(config["target_modules"] ==
                  nlohmann::json::array({"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}));
        if (const char* keep = std::getenv("DISTILL_KEEP_LORA_EXPORT")) {  // for tests/reference/check_lora_export.py
            const auto to = std::filesystem::path(keep) / family;
            std::filesystem::remove_all(to);
            std::filesystem::create_directories(to);
            std::filesystem::copy(merged_dir, to / "merged");
            std::filesystem::copy(adapter_dir, to / "adapter");
            const auto l = m.logits();
            const std::vector<io::named_tensor<const float>> t = {
                {"logits", l.data(), {l.shape()[0], l.shape()[1], l.shape()[2]}}};
            io::save_tensors<float>(to / "distill_logits.safetensors", t, io::dtype::F32, {{"format", "pt"}});
        }
        std::filesystem::remove_all(merged_dir);
        std::filesystem::remove_all(adapter_dir);
    }
}

TEST_CASE("lora: refusals name the field") {
    auto refuse = [](student::TransformerConfig c, const std::string& field) {
        CAPTURE(field);
        try {
            c.validate();
            FAIL("no error");
        } catch (const config_error& e) {
            CHECK(std::string(e.what()).find(field) != std::string::npos);
        }
    };
    auto g = tiny(false);
    g.lora = {-1, 8, 0, {"q"}};
    refuse(g, "lora.rank");
    g.lora = {4, 0, 0, {"q"}};
    refuse(g, "lora.alpha");
    g.lora = {4, 8, 1.0, {"q"}};
    refuse(g, "lora.dropout");
    g.lora = {4, 8, 0, {}};
    refuse(g, "lora.targets");
    g.lora = {4, 8, 0, {"wq"}};
    refuse(g, "lora.targets");
    g.lora = {4, 8, 0, {"gate"}};  // gelu MLP
    refuse(g, "lora.targets");
    g.lora = {4, 8, 0, {"qkv", "q"}};
    refuse(g, "lora.targets");
    g.tie_embeddings = true;
    g.lora = {4, 8, 0, {"head"}};
    refuse(g, "lora.targets");
    g.lora = {0, 8, 0, {}};  // off
    CHECK_NOTHROW(g.validate());
    // a target PEFT has no module for in the family
    g.lora = {2, 4, 0, {"q"}};
    student::Transformer<float, device::Cpu> m(g, 1);
    CHECK_THROWS_WITH_AS(io::peft::save_adapter(temp_dir("refused"), m), doctest::Contains("lora.targets"),
                         config_error);
}

TEST_CASE(
    "lora: a run paused and resumed from its checkpoint (adapters, optimizer state, dropout) ends bit-identical") {
    testing::NoiseTask task;
    auto model_cfg = testing::NoiseTask::model_config();
    model_cfg.lora = {4, 8, 0.1, {"q", "v", "o", "up", "down"}};
    auto run = [&](const std::filesystem::path& out, std::int64_t stop_at) {
        student::Transformer<float, device::Cpu> model(model_cfg, 8, device::Cpu(1));
        model.init(3);
        const std::vector<float> base = io::hf::detail::host_parameters(model);  // B = 0: the base
        optim::AdamW<float, device::Cpu> opt(model.parameters(), {.weight_decay = 0.01}, device::Cpu(1));
        const train::FinetuneConfig cfg{.num_epochs = 4,
                                        .batch_size = 4,
                                        .grad_accum = 2,
                                        .grad_clip = 1.0,
                                        .seed = 3,
                                        .log_every = 1,
                                        .output_dir = out.string(),
                                        .quiet = true};
        const optim::Schedule schedule({.learning_rate = 1e-2, .warmup_steps = 2},
                                       train::total_steps(cfg, task.train.size()));
        train::FinetuneOptions<float> options;
        options.stop_at = stop_at;
        const auto r =
            train::finetune(model, opt, schedule, task.train, &task.validation, cfg, train::CrossEntropy{}, options);
        std::vector<float> now(model.arena_size());
        std::memcpy(now.data(), model.parameter_data(), sizeof(float) * now.size());
        CHECK(now == base);  // the base never moves
        std::string adapters;
        for (const auto& p : model.parameters())
            adapters.append(reinterpret_cast<const char*>(p.value.data()),
                            sizeof(float) * std::size_t(p.value.numel()));
        return std::pair{r, adapters};
    };
    const auto whole_dir = temp_dir("whole"), paused_dir = temp_dir("paused");
    const auto [whole, whole_adapters] = run(whole_dir, 0);
    REQUIRE(whole.steps == 12);
    const auto [paused, paused_adapters] = run(paused_dir, 5);
    CHECK(paused.paused);
    CHECK(paused_adapters != whole_adapters);
    const auto [rest, rest_adapters] = run(paused_dir, 0);
    CHECK(rest.resumed_from_step == 5);
    CHECK(rest.steps == 12);
    CHECK(rest_adapters == whole_adapters);
    // the checkpoint holds the adapters alone
    io::safetensors_file ck(rest.last_checkpoint / "student.safetensors");
    CHECK(ck.tensors().size() == 2 * 5 * std::size_t(model_cfg.n_layers));
    for (const auto& t : ck.tensors()) CHECK(t.name.find(".lora_") != std::string::npos);
    std::filesystem::remove_all(whole_dir);
    std::filesystem::remove_all(paused_dir);
}
