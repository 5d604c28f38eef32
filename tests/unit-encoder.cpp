// The BERT-layout encoder (student/encoder.hpp) and its Hugging Face loading (io/hf.hpp, bert): a
// whole-model gradient check in double with padding, token types and extra gradients on hidden
// states and attention maps, for mean and CLS pooling; hidden states, attentions, mean-pooled
// embeddings and every parameter gradient equal transformers' (tests/reference/make_bert_golden.py);
// BertFor* names, a saved encoder, configs and bad input.

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <numeric>

#include <nlohmann/json.hpp>

#include "distill/device/cpu.hpp"
#include "distill/device/reference.hpp"
#include "distill/io/hf.hpp"
#include "distill/student/encoder.hpp"
#include "testing.hpp"

using namespace distill;
using distill::testing::check_close;
using distill::testing::check_gradient;
using distill::testing::random_vector;
using distill::testing::read_ids;
using distill::testing::read_tensor;

#ifndef DISTILL_TEST_DATA_DIR
#define DISTILL_TEST_DATA_DIR "tests/reference/fixtures"
#endif

namespace {

const std::filesystem::path bert_fixtures = std::filesystem::path(DISTILL_TEST_DATA_DIR) / "hf";

template <class Dev>
student::Encoder<float, Dev> load_encoder(const std::filesystem::path& dir, int max_batch) {
    const io::hf::Directory ckpt(dir);
    student::Encoder<float, Dev> m(io::hf::encoder_config(ckpt), max_batch);
    io::hf::load(ckpt, m);
    return m;
}

std::string encoder_load_error(const std::filesystem::path& dir) {
    try {
        (void)load_encoder<device::Cpu>(dir, 1);
    } catch (const distill::error& e) {
        return e.what();
    }
    return "(no error)";
}

}  // namespace

TEST_CASE_TEMPLATE("encoder gradient matches finite differences (double)", Dev, device::Reference, device::Cpu) {
    for (const std::string pooling : {"mean", "cls"}) {
        CAPTURE(pooling);
        const student::EncoderConfig cfg{.vocab_size = 13,
                                         .context_length = 7,
                                         .type_vocab_size = 2,
                                         .d_model = 8,
                                         .n_layers = 2,
                                         .n_heads = 2,
                                         .d_ff = 12,
                                         .layer_norm_eps = 1e-12,
                                         .pooling = pooling};
        const int B = 3, T = 5, L = cfg.n_layers, H = cfg.n_heads, C = cfg.d_model;
        student::Encoder<double, Dev> m(cfg, B);
        m.init(7);
        for (auto& p : m.parameters())  // larger than BERT's init so every path carries a visible gradient
            for (std::int64_t i = 0; i < p.value.numel(); ++i)
                p.value.data()[i] += 0.3 * std::sin(1.7 * double(i) + double(p.name.size()));
        const std::vector<std::int32_t> tokens = {1, 5, 2, 9, 10, 3, 12, 0, 0, 0, 7, 0, 0, 0, 0};
        const std::vector<std::int32_t> types = {0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0};
        const int lengths[] = {5, 3, 1};
        const auto P = random_vector<double>(B * C, 99, 0.5);
        std::vector<std::vector<double>> R, S;
        for (int i = 0; i <= L; ++i) R.push_back(random_vector<double>(B * T * C, 100 + i, 0.3));
        for (int l = 0; l < L; ++l) S.push_back(random_vector<double>(B * H * T * T, 200 + l, 0.3));

        // scalar = <pooled, P> + |pooled|^2 / 2 + sum_i <hidden_i, R_i> + sum_l <attn_l, S_l>
        auto objective = [&] {
            m.forward(tokens.data(), B, T, lengths, types.data());
            const auto pooled = m.pooled();
            double f = 0;
            for (std::int64_t i = 0; i < pooled.numel(); ++i)
                f += pooled.data()[i] * P[std::size_t(i)] + 0.5 * pooled.data()[i] * pooled.data()[i];
            for (int i = 0; i <= L; ++i) {
                auto h = m.hidden_state(i);
                f += std::inner_product(h.data(), h.data() + h.numel(), R[i].begin(), 0.0);
            }
            for (int l = 0; l < L; ++l) {
                auto a = m.attention(l);
                f += std::inner_product(a.data(), a.data() + a.numel(), S[l].begin(), 0.0);
            }
            return f;
        };
        objective();
        for (int i = 0; i < B * C; ++i) m.grad_pooled().data()[i] = P[std::size_t(i)] + m.pooled().data()[i];
        std::vector<Tensor<const double>> dh, da;
        for (int i = 0; i <= L; ++i) dh.push_back(Tensor<const double>(R[i].data(), {B, T, C}));
        for (int l = 0; l < L; ++l) da.push_back(Tensor<const double>(S[l].data(), {B, H, T, T}));
        m.zero_grad();
        m.backward(dh, da);

        for (const auto& p : m.parameters()) {
            std::vector<double> x(p.value.data(), p.value.data() + p.value.numel());
            std::vector<double> analytic(p.grad.data(), p.grad.data() + p.grad.numel());
            if (p.name.ends_with("attention.self.key.bias")) {
                // q·b_k is the same for every key of a query row, and softmax ignores a constant
                // shift: the key bias has no gradient at all (nor a finite-difference one)
                for (double g : analytic) CHECK(std::abs(g) < 1e-12);
                continue;
            }
            auto f = [&] {
                std::copy(x.begin(), x.end(), p.value.data());
                return objective();
            };
            check_gradient(p.name, x, f, analytic, 1e-6);
            std::copy(x.begin(), x.end(), p.value.data());
        }
    }
}

TEST_CASE("encoder: padded keys get no attention, padded tokens do not change the pooled embedding") {
    const student::EncoderConfig cfg{
        .vocab_size = 20, .context_length = 8, .d_model = 8, .n_layers = 2, .n_heads = 2, .d_ff = 16};
    student::Encoder<double, device::Reference> m(cfg, 2);
    m.init(3);
    const std::vector<std::int32_t> tokens = {4, 7, 9, 0, 0, 0, 4, 7, 9, 11, 13, 17};
    const int lengths[] = {3, 6};
    m.forward(tokens.data(), 2, 6, lengths);
    for (int l = 0; l < cfg.n_layers; ++l) {
        const auto a = m.attention(l);
        for (int h = 0; h < cfg.n_heads; ++h)
            for (int t = 0; t < 6; ++t) {
                double sum = 0;
                for (int j = 0; j < 6; ++j) {
                    const double p = a.data()[((0 * cfg.n_heads + h) * 6 + t) * 6 + j];
                    if (j >= 3) CHECK(p == 0.0);
                    sum += p;
                }
                CHECK(sum == doctest::Approx(1.0).epsilon(1e-12));
            }
    }
    std::vector<double> pooled(m.pooled().data(), m.pooled().data() + cfg.d_model);
    // the same three tokens alone, and with other padding ids: the same embedding
    const std::vector<std::int32_t> alone = {4, 7, 9};
    m.forward(alone.data(), 1, 3);
    check_close("pooled alone", m.pooled().data(), pooled.data(), cfg.d_model, 1e-12, 1e-12);
    const std::vector<std::int32_t> other = {4, 7, 9, 19, 1, 2};
    const std::vector<std::int32_t> mask = {1, 1, 1, 0, 0, 0};
    m.forward_masked(other.data(), mask.data(), 1, 6);
    check_close("pooled other padding", m.pooled().data(), pooled.data(), cfg.d_model, 1e-12, 1e-12);
}

TEST_CASE_TEMPLATE("hf bert: hidden states, attentions, pooled embedding and all gradients equal transformers'", Dev,
                   device::Cpu, device::Reference) {
    io::safetensors_file golden(bert_fixtures / "bert_golden.safetensors");
    const auto& tok = golden.at("tokens");
    const int B = int(tok.shape[0]), T = int(tok.shape[1]);
    const auto tokens = read_ids(golden, "tokens"), types = read_ids(golden, "token_types"),
               mask = read_ids(golden, "attention_mask");
    auto m = load_encoder<Dev>(bert_fixtures / "bert", B);
    const auto& cfg = m.config();
    CHECK(cfg.vocab_size == 50);
    CHECK(cfg.context_length == 12);
    CHECK(cfg.d_model == 16);
    CHECK(cfg.n_layers == 2);
    CHECK(cfg.n_heads == 2);
    CHECK(cfg.d_ff == 24);
    CHECK(cfg.layer_norm_eps == 1e-12);
    CHECK(cfg.pooling == "mean");

    auto compare = [&](const std::string& name, const float* actual, std::int64_t n) {
        const auto expected = read_tensor<float>(golden, name);
        REQUIRE(std::int64_t(expected.size()) == n);
        double scale = 0;
        for (float e : expected) scale = std::max(scale, double(std::abs(e)));
        check_close(name, actual, expected.data(), n, 1e-5 * scale, 1e-4);
    };
    for (int with_lengths = 0; with_lengths < 2; ++with_lengths) {
        CAPTURE(with_lengths);
        if (with_lengths) {
            std::vector<int> lengths(std::size_t(B), 0);
            for (int b = 0; b < B; ++b) lengths[std::size_t(b)] = std::accumulate(&mask[b * T], &mask[b * T + T], 0);
            m.forward(tokens.data(), B, T, lengths.data(), types.data());
        } else {
            m.forward_masked(tokens.data(), mask.data(), B, T, types.data());
        }
        for (int i = 0; i <= cfg.n_layers; ++i)
            compare("hidden." + std::to_string(i), m.hidden_state(i).data(), m.hidden_state(i).numel());
        for (int l = 0; l < cfg.n_layers; ++l)
            compare("attention." + std::to_string(l), m.attention(l).data(), m.attention(l).numel());
        compare("pooled", m.pooled().data(), m.pooled().numel());

        // loss = sum(pooled * probe) + 0.5 sum(pooled^2):  dloss/dpooled = probe + pooled
        const auto probe = read_tensor<float>(golden, "probe");
        double loss = 0;
        for (int i = 0; i < B * cfg.d_model; ++i) {
            const float p = m.pooled().data()[i];
            loss += double(p) * probe[std::size_t(i)] + 0.5 * double(p) * p;
            m.grad_pooled().data()[i] = probe[std::size_t(i)] + p;
        }
        CHECK(loss == doctest::Approx(read_tensor<float>(golden, "loss")[0]).epsilon(1e-5));
        m.zero_grad();
        m.backward();
        for (const auto& p : m.parameters()) {
            if (!p.name.ends_with("attention.self.key.bias")) {
                compare("grad." + p.name, p.grad.data(), p.grad.numel());
                continue;
            }
            // mathematically zero (softmax is shift-invariant along a query's row): both sides are
            // rounding noise, bounded by the scale of the key weight's gradient
            const auto wk = read_tensor<float>(golden, "grad." + p.name.substr(0, p.name.size() - 4) + "weight");
            double scale = 0;
            for (float g : wk) scale = std::max(scale, double(std::abs(g)));
            for (std::int64_t i = 0; i < p.grad.numel(); ++i) CHECK(std::abs(p.grad.data()[i]) <= 1e-5 * scale);
        }
    }
}

TEST_CASE("hf bert: BertFor* names, skipped heads and buffers, CLS pooling from 1_Pooling") {
    const auto plain = load_encoder<device::Cpu>(bert_fixtures / "bert", 1);
    {  // "bert." prefix, an MLM head and the position-id buffer, no pooler
        testing::ScratchCheckpoint s(bert_fixtures / "bert");
        s.rewrite([](const std::string& n) { return n.starts_with("pooler.") ? std::string() : "bert." + n; },
                  {"cls.predictions.bias", "bert.embeddings.position_ids"});
        const auto prefixed = load_encoder<device::Cpu>(s.dir, 1);
        CHECK(
            std::equal(plain.parameter_data(), plain.parameter_data() + plain.arena_size(), prefixed.parameter_data()));
    }
    {
        testing::ScratchCheckpoint s(bert_fixtures / "bert");
        std::filesystem::create_directories(s.dir / "1_Pooling");
        std::ofstream(s.dir / "1_Pooling" / "config.json")
            << R"({"word_embedding_dimension": 16, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false})";
        CHECK(io::hf::encoder_config(io::hf::Directory(s.dir)).pooling == "cls");
        std::ofstream(s.dir / "1_Pooling" / "config.json") << R"({"pooling_mode_max_tokens": true})";
        CHECK(encoder_load_error(s.dir).find("pooling_mode_max_tokens is not supported") != std::string::npos);
    }
}

TEST_CASE("hf bert: a saved encoder loads back equal, in BertModel's layout") {
    const auto m = load_encoder<device::Cpu>(bert_fixtures / "bert", 1);
    const auto dir = std::filesystem::temp_directory_path() / ("distill-bert-save-" + std::to_string(::getpid()));
    io::hf::save(dir, m);
    io::safetensors_file original(bert_fixtures / "bert" / "model.safetensors"), saved(dir / "model.safetensors");
    for (const auto& t : original.tensors()) {
        const io::tensor_info* s = saved.find(t.name);
        if (t.name.starts_with("pooler.")) {
            CHECK(s == nullptr);
            continue;
        }
        REQUIRE_MESSAGE(s, t.name);
        std::vector<float> x(std::size_t(t.numel())), y(std::size_t(t.numel()));
        original.read(t, std::span<float>(x));
        saved.read(*s, std::span<float>(y));
        CHECK_MESSAGE(x == y, t.name);
    }
    std::ifstream in(dir / "config.json");
    const auto config = nlohmann::json::parse(in);
    CHECK(config["model_type"] == "bert");
    CHECK(config["intermediate_size"] == 24);
    CHECK(config["layer_norm_eps"] == 1e-12);
    const auto again = load_encoder<device::Cpu>(dir, 1);
    CHECK(again.config().pooling == "mean");
    CHECK(std::equal(m.parameter_data(), m.parameter_data() + m.arena_size(), again.parameter_data()));
    std::filesystem::remove_all(dir);
}

TEST_CASE("hf bert: defects name the file and what was expected") {
    {
        testing::ScratchCheckpoint s(bert_fixtures / "bert");
        s.edit_config([](nlohmann::json& j) { j["hidden_act"] = "relu"; });
        CHECK(encoder_load_error(s.dir).find("hidden_act: \"relu\" is not supported, only \"gelu\"") !=
              std::string::npos);
    }
    {
        testing::ScratchCheckpoint s(bert_fixtures / "bert");
        s.edit_config([](nlohmann::json& j) { j["position_embedding_type"] = "relative_key"; });
        CHECK(encoder_load_error(s.dir).find("position_embedding_type") != std::string::npos);
    }
    {
        testing::ScratchCheckpoint s(bert_fixtures / "bert");
        s.edit_config([](nlohmann::json& j) { j.erase("hidden_size"); });
        CHECK(encoder_load_error(s.dir).find("config.json: hidden_size: an integer is required") != std::string::npos);
    }
    {
        testing::ScratchCheckpoint s(bert_fixtures / "bert");
        s.edit_config([](nlohmann::json& j) { j["num_attention_heads"] = 3; });
        CHECK(encoder_load_error(s.dir).find("n_heads: must divide d_model = 16") != std::string::npos);
    }
    {
        testing::ScratchCheckpoint s(bert_fixtures / "bert");
        s.rewrite([](const std::string& n) {
            return n == "encoder.layer.1.output.LayerNorm.bias" ? std::string()
                   : n == "encoder.layer.0.output.dense.bias"   ? std::string("encoder.layer.0.output.dense.extra")
                                                                : n;
        });
        CHECK(encoder_load_error(s.dir).find(
                  "tensors do not match a bert model: missing 'encoder.layer.0.output.dense.bias', "
                  "'encoder.layer.1.output.LayerNorm.bias'; unexpected 'encoder.layer.0.output.dense.extra'") !=
              std::string::npos);
    }
    {  // the decoder student is pointed to the Encoder; the Encoder refuses gpt2
        const io::hf::Directory bert(bert_fixtures / "bert");
        CHECK_THROWS_WITH_AS(io::hf::transformer_config(bert),
                             doctest::Contains("is a bidirectional encoder: load it as student::Encoder"),
                             format_error);
        const io::hf::Directory gpt2(bert_fixtures / "gpt2");
        CHECK_THROWS_WITH_AS(io::hf::encoder_config(gpt2), doctest::Contains("gpt2 loads as student::Transformer"),
                             format_error);
    }
    student::Encoder<float, device::Cpu> other(
        {.vocab_size = 50, .context_length = 12, .d_model = 16, .n_layers = 3, .n_heads = 2, .d_ff = 24}, 1);
    CHECK_THROWS_WITH_AS(io::hf::load(io::hf::Directory(bert_fixtures / "bert"), other),
                         doctest::Contains("the model's config differs from config.json's"), shape_error);
}

TEST_CASE("encoder: config bounds and bad input") {
    using doctest::Contains;
    student::EncoderConfig c;
    c.d_ff = 1 << 20;
    CHECK_THROWS_WITH_AS(c.validate(), Contains("student.d_ff: must be in [1, 262144]"), config_error);
    c = {};
    c.pooling = "max";
    CHECK_THROWS_WITH_AS(c.validate(), Contains("student.pooling: must be \"mean\" or \"cls\""), config_error);
    c = {};
    c.layer_norm_eps = 0;
    CHECK_THROWS_WITH_AS(c.validate(), Contains("layer_norm_eps"), config_error);
    c = {};
    c.type_vocab_size = 0;
    CHECK_THROWS_AS(c.validate(), config_error);
    CHECK(student::EncoderConfig{}.parameter_count() == 22565376);  // all-MiniLM-L6-v2 without its pooler

    student::Encoder<float, device::Cpu> m(
        {.vocab_size = 10, .context_length = 4, .d_model = 8, .n_layers = 1, .n_heads = 2, .d_ff = 8}, 2);
    const std::vector<std::int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
    const std::vector<std::int32_t> bad = {1, 2, 3, 10};
    CHECK_THROWS_WITH_AS(m.forward(bad.data(), 1, 4), Contains("token 10 at position 3"), shape_error);
    const std::vector<std::int32_t> types = {0, 0, 2, 0};
    CHECK_THROWS_WITH_AS(m.forward(tokens.data(), 1, 4, nullptr, types.data()), Contains("token type 2"), shape_error);
    const int zero[] = {4, 0};
    CHECK_THROWS_WITH_AS(m.forward(tokens.data(), 2, 4, zero), Contains("length 0 of sequence 1"), shape_error);
    const std::vector<std::int32_t> empty = {1, 0, 0, 0, 0, 0, 0, 0};
    CHECK_THROWS_WITH_AS(m.forward_masked(tokens.data(), empty.data(), 2, 4), Contains("sequence 1 has no unmasked"),
                         shape_error);
    CHECK_THROWS_WITH_AS(m.forward(tokens.data(), 3, 4), Contains("batch 3 outside [1, 2]"), shape_error);
    CHECK_THROWS_WITH_AS(m.forward(tokens.data(), 1, 5), Contains("length 5 outside"), shape_error);

    // activations laid out for shorter sequences than the position table
    const student::EncoderConfig wide{
        .vocab_size = 10, .context_length = 64, .d_model = 8, .n_layers = 1, .n_heads = 2, .d_ff = 8};
    student::Encoder<float, device::Cpu> short_seq(wide, 2, 3);
    CHECK(short_seq.max_length() == 3);
    CHECK(short_seq.arena_bytes() < student::Encoder<float, device::Cpu>(wide, 2).arena_bytes());
    CHECK_THROWS_WITH_AS(short_seq.forward(tokens.data(), 1, 4), Contains("length 4 outside [1, max_length = 3]"),
                         shape_error);
    CHECK_THROWS_WITH_AS((student::Encoder<float, device::Cpu>(wide, 2, 65)),
                         Contains("max_length: must be in [1, context_length = 64], got 65"), config_error);
}

TEST_CASE("encoder: same input, same threads, bit-identical outputs and gradients") {
    const student::EncoderConfig cfg{
        .vocab_size = 40, .context_length = 16, .d_model = 32, .n_layers = 2, .n_heads = 4, .d_ff = 64};
    auto run = [&] {
        student::Encoder<float, device::Cpu> m(cfg, 4, device::Cpu(2));
        m.init(5);
        std::vector<std::int32_t> tokens(64);
        for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t((i * 7 + 3) % 40);
        const int lengths[] = {16, 9, 4, 12};
        m.forward(tokens.data(), 4, 16, lengths);
        for (std::int64_t i = 0; i < m.grad_pooled().numel(); ++i) m.grad_pooled().data()[i] = float(i % 5) - 2;
        m.zero_grad();
        m.backward();
        std::vector<float> out(m.pooled().data(), m.pooled().data() + m.pooled().numel());
        out.insert(out.end(), m.gradient_data(), m.gradient_data() + m.arena_size());
        return out;
    };
    CHECK(run() == run());
}

TEST_CASE_TEMPLATE("encoder activation checkpointing: the gradients of a full training forward, bit for bit", Dev,
                   device::Cpu, device::Reference) {
    const student::EncoderConfig cfg{
        .vocab_size = 40, .context_length = 16, .d_model = 32, .n_layers = 3, .n_heads = 4, .d_ff = 64};
    std::vector<std::int32_t> tokens(64);
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t((i * 7 + 3) % 40);
    const int lengths[] = {16, 9, 4, 12};
    std::vector<float> d1(4 * 16 * 32);
    for (std::size_t i = 0; i < d1.size(); ++i) d1[i] = float(int(i % 7) - 3) / 8;
    const std::vector<Tensor<const float>> dh = {{}, Tensor<const float>(d1.data(), {4, 16, 32})};
    student::Encoder<float, Dev> full(cfg, 4), ckpt(cfg, 4, Dev{}, student::activations::checkpointed);
    for (auto* m : {&full, &ckpt}) {
        m->init(5);
        m->forward(tokens.data(), 4, 16, lengths);
        for (std::int64_t i = 0; i < m->grad_pooled().numel(); ++i) m->grad_pooled().data()[i] = float(i % 5) - 2;
        m->zero_grad();
        m->backward(dh);
    }
    for (int i = 0; i <= cfg.n_layers; ++i)
        CHECK(std::equal(full.hidden_state(i).data(), full.hidden_state(i).data() + full.hidden_state(i).numel(),
                         ckpt.hidden_state(i).data()));
    CHECK(std::equal(full.gradient_data(), full.gradient_data() + full.arena_size(), ckpt.gradient_data()));
    CHECK_THROWS_WITH_AS(ckpt.attention(0), doctest::Contains("activations::checkpointed"), config_error);
    CHECK(double(ckpt.activation_bytes()) < 0.75 * double(full.activation_bytes()));
    using Model = student::Encoder<float, Dev>;
    CHECK_THROWS_AS(Model(cfg, 4, Dev{}, student::activations::inference), config_error);
}
