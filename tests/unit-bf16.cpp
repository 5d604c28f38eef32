// bf16 weight storage under precision::bf16 on device::Cpu (oneDNN): frozen matrices (an inference
// model, a LoRA base) in bf16 alone, trainable ones as fp32 masters plus bf16 copies the GEMMs read.
// The products are those of today's bf16 path (fp32 storage, each weight rounded in every GEMM), so
// the checks are bit for bit against it; an independent check against PyTorch is in
// tests/reference/bf16.py (fixtures/bf16_*.json). Built only with oneDNN (distill_bf16_tests); every
// case skips with a message where this CPU has no bf16 matmul.

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cuda/bf16_host.hpp"
#include "distill/device/cpu.hpp"
#include "distill/distill.hpp"
#include "distill/io/hf.hpp"
#include "distill/io/weights.hpp"
#include "distill/optim/adam.hpp"
#include "distill/student/transformer.hpp"
#include "distill/student/transformer_memory.hpp"
#include "distill/teacher.hpp"
#include "teacher_fixtures.hpp"
#include "testing.hpp"

namespace {

using namespace distill;
using namespace distill::testing;
using Net = student::Transformer<float, device::Cpu>;
const std::filesystem::path fixtures = DISTILL_TEST_DATA_DIR;

bool skip() {
    if (device::Cpu::bf16_supported()) return false;
    MESSAGE("skipped: " << device::Cpu::bf16_unsupported_reason());
    return true;
}

device::Cpu bf16_cpu() {
    return device::Cpu(2, device::precision::bf16);
}

float round_bf16(float x) {
    return device::detail::from_bf16(device::detail::to_bf16(x));
}

student::TransformerConfig gpt2_like() {
    student::TransformerConfig c;
    c.vocab_size = 97;
    c.context_length = 16;
    c.d_model = 64;
    c.n_layers = 2;
    c.n_heads = 4;
    c.d_ff = 128;
    return c;
}

student::TransformerConfig llama_like() {
    student::TransformerConfig c = gpt2_like();
    c.norm = "rmsnorm";
    c.positions = "rope";
    c.mlp = "swiglu";
    c.n_kv_heads = 2;
    c.qkv_bias = c.proj_bias = c.mlp_bias = false;
    c.tie_embeddings = false;
    return c;
}

bool is_matrix(const std::string& name) {
    return name == "wte.weight" || name == "lm_head.weight" || name.ends_with("c_attn.weight") ||
           name.ends_with("c_proj.weight") || name.ends_with("c_fc.weight");
}

// Rounds every GEMM matrix of an fp32-stored model to bf16 (what bf16 storage holds), in place.
void round_matrices(Net& m) {
    for (const auto& p : m.base_parameters())
        if (is_matrix(p.name))
            for (std::int64_t i = 0; i < p.value.numel(); ++i) p.value.data()[i] = round_bf16(p.value.data()[i]);
}

// Copies every base parameter of `from` into `to` (read_base / write_base).
void copy_base(const Net& from, Net& to) {
    for (std::size_t k = 0; k < from.base_parameters().size(); ++k) {
        std::vector<float> v(std::size_t(from.base_parameters()[k].value.numel()));
        from.read_base(k, v.data());
        to.write_base(k, v.data());
    }
}

std::vector<float> values(const Tensor<float>& t) {
    return std::vector<float>(t.data(), t.data() + t.numel());
}

bool bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
}

std::vector<std::int32_t> tokens_for(const student::TransformerConfig& c, int n) {
    std::vector<std::int32_t> t(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) t[std::size_t(i)] = (7 * i + 3) % c.vocab_size;
    return t;
}

}  // namespace

TEST_CASE("bf16 storage: an inference model keeps its matrices in bf16 alone; logits equal the rounding path") {
    if (skip()) return;
    for (auto cfg : {gpt2_like(), llama_like()}) {
        CAPTURE(cfg.mlp);
        cfg.context_length = 40;  // a forward of 80 rows below
        auto plain = cfg;
        plain.bf16_weights = false;
        Net ref(plain, 2, bf16_cpu(), student::activations::inference);
        ref.init(5);
        round_matrices(ref);  // the embedding gather then reads what bf16 storage holds
        Net m(cfg, 2, bf16_cpu(), student::activations::inference);
        copy_base(ref, m);
        // storage: every matrix bf16 alone, no fp32 value; norms, biases, positions fp32
        std::size_t bf16_elems = 0;
        for (std::size_t k = 0; k < m.base_parameters().size(); ++k) {
            const auto& p = m.base_parameters()[k];
            CAPTURE(p.name);
            CHECK((m.base_storage(k) == student::storage::bf16) == is_matrix(p.name));
            CHECK((p.value.data() == nullptr) == is_matrix(p.name));
            if (is_matrix(p.name)) bf16_elems += std::size_t(p.value.numel());
        }
        CHECK(m.bf16_only_weights());
        CHECK(m.arena_bytes() + 2 * bf16_elems <= ref.arena_bytes());  // 2 bytes an element, not 4
        // the plan says so, byte for byte
        const auto plan = student::transformer_memory<float>(cfg, 2, student::activations::inference, true);
        CHECK(plan.total() == m.arena_bytes());
        CHECK(plan.activations == m.activation_bytes());
        CHECK(plan.base_weights_bf16 >= 2 * bf16_elems);
        CHECK(!plan.base_weights_fp32);
        // logits bit for bit: forward, and prefill + decode
        const auto tokens = tokens_for(cfg, 2 * 9);
        ref.forward(tokens.data(), 2, 9);
        m.forward(tokens.data(), 2, 9);
        CHECK(bits_equal(values(m.logits()), values(ref.logits())));
        // 64 rows or more: the GELU MLP keeps its hidden rows in bf16 (device::mlp_bf16), the bits
        // of the fp32 rows the next product rounds
        const auto long_tokens = tokens_for(cfg, 2 * 40);
        ref.forward(long_tokens.data(), 2, 40);
        m.forward(long_tokens.data(), 2, 40);
        CHECK(bits_equal(values(m.logits()), values(ref.logits())));
        auto cr = ref.make_cache(2), cm = m.make_cache(2);
        const int lengths[2] = {9, 5};
        ref.prefill(cr, tokens.data(), lengths, 2, 9);
        m.prefill(cm, tokens.data(), lengths, 2, 9);
        CHECK(bits_equal(values(m.next_logits()), values(ref.next_logits())));
        const std::int32_t next[2] = {4, 11};
        ref.decode(cr, next, 2);
        m.decode(cm, next, 2);
        CHECK(bits_equal(values(m.next_logits()), values(ref.next_logits())));
        // a prefill of 64 rows or more: the bf16 hidden rows with the cache's packed matrices
        const int long_lengths[2] = {40, 33};
        ref.prefill(cr, long_tokens.data(), long_lengths, 2, 40);
        m.prefill(cm, long_tokens.data(), long_lengths, 2, 40);
        CHECK(bits_equal(values(m.next_logits()), values(ref.next_logits())));
        // exports widen exactly: the base image is the rounded fp32 model
        CHECK(bits_equal(m.base_image(), ref.base_image()));
    }
}

TEST_CASE(
    "bf16 storage: unrounded fp32 weights loaded into bf16 storage give the rounding path's logits "
    "but for the embedding rows") {
    if (skip()) return;
    auto cfg = llama_like();  // untied: the head is a GEMM weight, the embedding a gather
    auto plain = cfg;
    plain.bf16_weights = false;
    Net ref(plain, 1, bf16_cpu(), student::activations::inference);
    ref.init(8);
    Net m(cfg, 1, bf16_cpu(), student::activations::inference);
    copy_base(ref, m);  // write_base rounds
    // the reference with only its embedding rounded: the GEMMs round the rest themselves
    for (const auto& p : ref.base_parameters())
        if (p.name == "wte.weight")
            for (std::int64_t i = 0; i < p.value.numel(); ++i) p.value.data()[i] = round_bf16(p.value.data()[i]);
    const auto tokens = tokens_for(cfg, 12);
    ref.forward(tokens.data(), 1, 12);
    m.forward(tokens.data(), 1, 12);
    CHECK(bits_equal(values(m.logits()), values(ref.logits())));
}

TEST_CASE("bf16 storage: trainable weights (fp32 masters + bf16 copies) train as the rounding path, bit for bit") {
    if (skip()) return;
    for (const auto& cfg : {gpt2_like(), llama_like()}) {
        CAPTURE(cfg.mlp);
        auto plain = cfg;
        plain.bf16_weights = false;
        Net ref(plain, 2, bf16_cpu()), m(cfg, 2, bf16_cpu());
        ref.init(3);
        m.init(3);
        for (std::size_t k = 0; k < m.base_parameters().size(); ++k) {
            CAPTURE(m.base_parameters()[k].name);
            CHECK(m.base_storage(k) ==
                  (is_matrix(m.base_parameters()[k].name) ? student::storage::fp32_bf16 : student::storage::fp32));
        }
        CHECK(!m.bf16_only_weights());
        const auto plan = student::transformer_memory<float>(cfg, 2, student::activations::training, true);
        CHECK(plan.total() == m.arena_bytes());
        CHECK(plan.base_weights_fp32);
        optim::AdamW<float, device::Cpu> o_ref(ref.parameters(), {.weight_decay = 0.1}, bf16_cpu()),
            o_m(m.parameters(), {.weight_decay = 0.1}, bf16_cpu());
        const auto tokens = tokens_for(cfg, 2 * 10);
        std::vector<std::int32_t> targets(tokens.begin() + 1, tokens.end());
        targets.push_back(-1);
        for (int step = 0; step < 4; ++step) {
            CAPTURE(step);
            ref.forward(tokens.data(), 2, 10);
            m.forward(tokens.data(), 2, 10);
            CHECK(bits_equal(values(m.logits()), values(ref.logits())));
            const float lr = ref.cross_entropy(targets.data()), lm = m.cross_entropy(targets.data());
            CHECK(std::memcmp(&lr, &lm, 4) == 0);
            ref.zero_grad();
            m.zero_grad();
            ref.backward();
            m.backward();
            CHECK(bits_equal(std::vector<float>(m.gradient_data(), m.gradient_data() + m.arena_size()),
                             std::vector<float>(ref.gradient_data(), ref.gradient_data() + ref.arena_size())));
            o_ref.step(1e-2);
            o_m.step(1e-2);
        }
        CHECK(bits_equal(std::vector<float>(m.parameter_data(), m.parameter_data() + m.arena_size()),
                         std::vector<float>(ref.parameter_data(), ref.parameter_data() + ref.arena_size())));
    }
}

TEST_CASE("bf16 storage: a frozen model (a teacher that keeps activations) keeps bf16 alone in training mode") {
    if (skip()) return;
    auto cfg = llama_like();
    cfg.frozen = true;
    auto plain = cfg;
    plain.bf16_weights = false;
    Net ref(plain, 2, bf16_cpu()), m(cfg, 2, bf16_cpu());
    ref.init(12);
    round_matrices(ref);
    copy_base(ref, m);
    CHECK(m.bf16_only_weights());
    CHECK(student::transformer_memory<float>(cfg, 2, student::activations::training, true).total() == m.arena_bytes());
    const auto tokens = tokens_for(cfg, 2 * 7);
    ref.forward(tokens.data(), 2, 7);
    m.forward(tokens.data(), 2, 7);
    CHECK(bits_equal(values(m.logits()), values(ref.logits())));
    for (int l = 0; l < cfg.n_layers; ++l) {  // what transfer losses read
        CHECK(bits_equal(values(m.attention(l)), values(ref.attention(l))));
        CHECK(bits_equal(values(m.qkv(l)), values(ref.qkv(l))));
    }
}

TEST_CASE("bf16 storage: a LoRA base in bf16 alone gives the adapters the gradients of an fp32-stored base") {
    if (skip()) return;
    for (auto cfg : {gpt2_like(), llama_like()}) {
        CAPTURE(cfg.mlp);
        cfg.lora.rank = 4;
        cfg.lora.alpha = 8;
        cfg.lora.targets = cfg.swiglu() ? std::vector<std::string>{"q", "v", "o", "gate", "down", "head"}
                                        : std::vector<std::string>{"qkv", "o", "up", "down"};
        auto plain = cfg;
        plain.bf16_weights = false;
        Net ref(plain, 2, bf16_cpu()), m(cfg, 2, bf16_cpu());
        ref.init(4);
        round_matrices(ref);
        copy_base(ref, m);
        ref.init_lora(6);
        m.init_lora(6);
        CHECK(m.bf16_only_weights());
        CHECK(m.gradient_data() == nullptr);
        CHECK(m.arena_size() < ref.arena_size() / 4);  // norms and biases only
        const auto plan = student::transformer_memory<float>(cfg, 2, student::activations::training, true);
        CHECK(plan.total() == m.arena_bytes());
        CHECK(plan.activations == m.activation_bytes());
        optim::AdamW<float, device::Cpu> o_ref(ref.parameters(), {}, bf16_cpu()), o_m(m.parameters(), {}, bf16_cpu());
        const auto tokens = tokens_for(cfg, 2 * 8);
        std::vector<std::int32_t> targets(tokens.begin() + 1, tokens.end());
        targets.push_back(-1);
        for (int step = 0; step < 3; ++step) {
            CAPTURE(step);
            ref.forward(tokens.data(), 2, 8);
            m.forward(tokens.data(), 2, 8);
            CHECK(bits_equal(values(m.logits()), values(ref.logits())));
            ref.cross_entropy(targets.data());
            m.cross_entropy(targets.data());
            ref.zero_grad();
            m.zero_grad();
            ref.backward();
            m.backward();
            for (std::size_t i = 0; i < m.parameters().size(); ++i) {
                CAPTURE(m.parameters()[i].name);
                CHECK(bits_equal(values(m.parameters()[i].grad), values(ref.parameters()[i].grad)));
            }
            o_ref.step(1e-2);
            o_m.step(1e-2);
        }
        // the merged export: the (rounded) base plus the adapters, as the fp32-stored model's
        CHECK(bits_equal(m.merged_parameters(), ref.merged_parameters()));
    }
}

TEST_CASE("bf16 storage: loaders round into bf16 storage; saves, fingerprints and exports widen it") {
    if (skip()) return;
    const io::hf::Directory ckpt(fixtures / "hf" / "llama");
    const auto cfg = io::hf::transformer_config(ckpt);
    auto plain = cfg;
    plain.bf16_weights = false;
    Net ref(plain, 1, bf16_cpu(), student::activations::inference),
        m(cfg, 1, bf16_cpu(), student::activations::inference);
    io::hf::load(ckpt, ref);
    io::hf::load(ckpt, m);
    CHECK(m.bf16_only_weights());
    // every value is the checkpoint's, matrices rounded to nearest even
    const auto want = ref.base_image(), got = m.base_image();
    REQUIRE(want.size() == got.size());
    std::size_t rounded = 0;
    for (std::size_t k = 0; k < m.base_parameters().size(); ++k) {
        const auto& p = m.base_parameters()[k];
        const std::size_t o = m.image_offset(k), n = std::size_t(p.value.numel());
        for (std::size_t i = 0; i < n; ++i) {
            const float w = is_matrix(p.name) ? round_bf16(want[o + i]) : want[o + i];
            if (std::memcmp(&w, &got[o + i], 4) != 0) {
                FAIL_CHECK(p.name << "[" << i << "]: " << got[o + i] << " != " << w);
                break;
            }
            rounded += w != want[o + i];
        }
    }
    CHECK(rounded > 0);  // the fixture's weights are not all bf16 already
    // distill's own weights file: saved widened, loaded back into bf16 storage unchanged
    const auto dir = std::filesystem::temp_directory_path() / "distill-unit-bf16";
    std::filesystem::create_directories(dir);
    io::save_weights(dir / "w.safetensors", m);
    Net back(cfg, 1, bf16_cpu(), student::activations::inference);
    io::load_weights(io::safetensors_file(dir / "w.safetensors"), back);
    CHECK(bits_equal(back.base_image(), got));
    // the Hugging Face export holds the widened values; the fingerprint is that of the widened model
    io::hf::save(dir / "hf", m);
    Net again(cfg, 1, bf16_cpu(), student::activations::inference);
    io::hf::load(io::hf::Directory(dir / "hf"), again);
    CHECK(bits_equal(again.base_image(), got));
    Net widened(plain, 1, bf16_cpu(), student::activations::inference);
    copy_base(m, widened);
    CHECK(network_digest("t", m) == network_digest("t", widened));
    // quantize refuses a bf16-only model with a config_error naming the field
    CHECK_THROWS_WITH_AS(m.quantize(quant::type::Q8_0), doctest::Contains("device.precision"), config_error);
    std::filesystem::remove_all(dir);
}

TEST_CASE("bf16 storage: logits of the Hugging Face fixtures equal PyTorch's with bf16 weights and operands") {
    if (skip()) return;
    const io::safetensors_file golden(fixtures / "bf16_golden.safetensors");
    for (const std::string name : {"gpt2", "llama"}) {
        CAPTURE(name);
        const io::hf::Directory ckpt(fixtures / "hf" / name);
        Net m(io::hf::transformer_config(ckpt), 2, bf16_cpu(), student::activations::inference);
        io::hf::load(ckpt, m);
        REQUIRE(m.bf16_only_weights());
        const auto tokens = read_ids(golden, name + ".tokens");
        const auto want = read_tensor<float>(golden, name + ".logits_bf16"),
                   fp32 = read_tensor<float>(golden, name + ".logits_fp32");
        const int T = int(tokens.size() / 2);
        m.forward(tokens.data(), 2, T);
        const auto got = values(m.logits());
        REQUIRE(got.size() == want.size());
        double to_ref = 0, moved = 0;
        for (std::size_t i = 0; i < got.size(); ++i) {
            to_ref = std::max(to_ref, double(std::abs(got[i] - want[i])));
            moved = std::max(moved, double(std::abs(fp32[i] - want[i])));
        }
        MESSAGE(name << ": max |distill - torch bf16| = " << to_ref << ", max |torch fp32 - torch bf16| = " << moved);
        // Both sides multiply the same bf16 operands exactly (a product of two bf16 values fits an
        // fp32 mantissa) and accumulate in fp32, in different orders: a few fp32 ulps of O(1)
        // logits over K <= 24 terms (seen: 2.4e-7). One activation rounded to the other bf16
        // neighbour (2^-8 relative) would move logits by ~1e-3, and fp32 weights by 0.03 (gpt2) and
        // 0.08 (llama): 1e-4 tells all of these apart.
        check_close(name + " logits", got.data(), want.data(), std::int64_t(got.size()), 1e-4, 1e-4);
        CHECK(moved > 100 * 1e-4);  // the reference is not the fp32 model's
    }
}

TEST_CASE("bf16 storage: a bf16 Distiller's memory plan counts the bf16 arenas and says so") {
    if (skip()) return;
    using D = Distiller<teacher::Model<student::Transformer>, student::Transformer,
                        loss::Sum<loss::SoftKL, loss::HardCE>, optim::AdamW, device::Cpu>;
    distill::testing::TempDir dir("memory-plan-bf16");
    distill::testing::write_tiny_teacher(dir / "teacher.safetensors", 1, 96);
    std::string prompts;
    for (int i = 0; i < 8; ++i) prompts += nlohmann::json{{"prompt", "add " + std::to_string(i)}}.dump() + "\n";
    distill::testing::write_text(dir / "train.jsonl", prompts);
    const device::Cpu dev(1, device::precision::bf16);
    teacher::ModelConfig tc{
        .weights = (dir / "teacher.safetensors").string(), .max_batch = 16, .keep_activations = false};
    teacher::Model<student::Transformer> t(tc, dev);
    CHECK(t.network().bf16_only_weights());  // a teacher loaded from distill's weights file into bf16
    for (bool lora : {false, true}) {
        INFO("lora ", lora);
        nlohmann::json j{
            {"teacher",
             {{"kind", "model"}, {"weights", (dir / "teacher.safetensors").string()}, {"keep_activations", false}}},
            {"student",
             {{"vocab_size", 263},
              {"context_length", 96},
              {"d_model", 24},
              {"n_layers", 1},
              {"n_heads", 2},
              {"d_ff", 48}}},
            {"training_data", (dir / "train.jsonl").string()},
            {"task_type", "math"},
            {"precision", "bf16"},
            {"hyperparameters", {{"batch_size", 16}, {"max_steps", 2}}},
            {"loss", {{"soft_kl", {{"weight", 1.0}}}, {"hard_ce", {{"weight", 0.5}}}}},
            {"output_dir", (dir / (lora ? "lora" : "full")).string()}};
        if (lora) j["lora"] = {{"rank", 4}, {"alpha", 8}, {"targets", {"qkv", "o"}}};
        const Job job = parse_job(j);
        D d(job, t, dev, {.quiet = true});
        const eval::MemoryPlan plan = d.memory_plan();
        student::TransformerConfig sc = d.setup().student;
        sc.lora = job.lora;
        const int B = job.hyperparameters.loop.batch_size;
        // the mode the finetune stage trains in (SoftKL + HardCE read no attention map)
        student::Transformer<float, device::Cpu> s(sc, B, dev,
                                                   student::training_activations<float, device::Cpu>(false, false));
        CHECK(s.bf16_only_weights() == lora);
        const std::string weights = lora ? "student weights (frozen)" : "student weights";
        const std::int64_t activations =
            std::int64_t(s.activation_bytes() + sizeof(std::int32_t) * B * sc.context_length);
        CHECK(plan.bytes_of(weights) + plan.bytes_of("student LoRA adapters") + plan.bytes_of("student gradients") +
                  plan.bytes_of("student activations") ==
              std::int64_t(s.arena_bytes()));
        CHECK(plan.bytes_of("student activations") == activations);
        CHECK(plan.bytes_of("teacher") == std::int64_t(t.network().arena_bytes()));
        for (const auto& part : plan.parts()) {
            if (part.name == weights)
                CHECK(part.detail.find(lora ? "bf16 matrices" : "fp32 masters + bf16 copies") != std::string::npos);
            if (part.name == "teacher") CHECK(part.detail.find("bf16 weights") != std::string::npos);
        }
    }
}

TEST_CASE("bf16 emulation (tests/cuda/bf16_host.hpp, the CUDA suite's reference) computes as device::Cpu's bf16") {
    // The CUDA parity suite compares device::Cuda's bf16 path with testing::Bf16Cpu (its build has no
    // oneDNN): here Bf16Cpu is checked against device::Cpu's bf16 path. Same storage, the same bits
    // in the bf16 copies; logits and gradients equal up to the order of the fp32 sums, much closer
    // than either is to the fp32 model.
    if (skip()) return;
    using Emu = student::Transformer<float, testing::Bf16Cpu>;
    for (const auto& cfg : {gpt2_like(), llama_like()}) {
        CAPTURE(cfg.mlp);
        Net cpu(cfg, 2, bf16_cpu()), fp32(cfg, 2, device::Cpu(2));
        Emu emu(cfg, 2, testing::Bf16Cpu(2));
        CHECK(student::stores_bf16_weights<float>(cfg, testing::Bf16Cpu(2)));
        cpu.init(3);
        emu.init(3);
        fp32.init(3);
        for (std::size_t k = 0; k < cpu.base_parameters().size(); ++k) {
            CAPTURE(cpu.base_parameters()[k].name);
            REQUIRE(emu.base_storage(k) == cpu.base_storage(k));
            const std::size_t n = std::size_t(cpu.base_parameters()[k].value.numel());
            if (const std::uint16_t* c16 = cpu.bf16_value(k)) CHECK(std::memcmp(c16, emu.bf16_value(k), 2 * n) == 0);
        }
        const auto tokens = tokens_for(cfg, 2 * 12);
        std::vector<std::int32_t> targets(tokens.begin() + 1, tokens.end());
        targets.push_back(-1);
        auto run = [&](auto& m) {
            m.forward(tokens.data(), 2, 12);
            m.cross_entropy(targets.data());
            m.zero_grad();
            m.backward();
            return std::pair{values(m.logits()),
                             std::vector<float>(m.gradient_data(), m.gradient_data() + m.arena_size())};
        };
        const auto [lc, gc] = run(cpu);
        const auto [le, ge] = run(emu);
        const auto [lf, gf] = run(fp32);
        const double logits_emu = testing::relative_l2(le, lc), logits_fp32 = testing::relative_l2(lf, lc);
        const double grads_emu = testing::relative_l2(ge, gc), grads_fp32 = testing::relative_l2(gf, gc);
        MESSAGE(cfg.mlp << ": relative L2 to Cpu bf16: logits emulation " << logits_emu << ", fp32 " << logits_fp32
                        << "; gradients emulation " << grads_emu << ", fp32 " << grads_fp32);
        // measured (2 cores, oneDNN on AMX): logits 6e-8 / 1e-4 against fp32's 3e-3; gradients 3e-4 / 4e-4
        // against 3e-3 — a different order of sums flips some bf16 roundings of the next GEMM's
        // operands, more of them layer after layer down the backward (the last block's gradients
        // agree to 1e-7). The CUDA suite holds cuBLAS to the same bounds.
        CHECK(logits_emu < 1e-3);
        CHECK(grads_emu < 2e-3);
        CHECK(logits_emu < 0.1 * logits_fp32);
        CHECK(grads_emu < 0.25 * grads_fp32);
    }
}
