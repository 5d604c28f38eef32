// GGUF (io/gguf.hpp, io/gguf_export.hpp): the file format round-trips every value and tensor type and
// every damaged file is a format_error; a student exported for llama.cpp holds what llama.cpp's own
// converter writes for the same transformers checkpoint (tests/reference/make_gguf_golden.py: the
// converter's metadata, tensor names, shapes, types and data digests read back by gguf-py).

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/detail/hash.hpp"
#include "distill/detail/rng.hpp"
#include "distill/device/cpu.hpp"
#include "distill/device/reference.hpp"
#include "distill/io/gguf.hpp"
#include "distill/io/gguf_export.hpp"
#include "distill/io/hf.hpp"
#include "distill/student/transformer.hpp"

using namespace distill;
using io::gguf::value_type;

#ifndef DISTILL_TEST_DATA_DIR
#define DISTILL_TEST_DATA_DIR "tests/reference/fixtures"
#endif

namespace {

const std::filesystem::path fixtures = std::filesystem::path(DISTILL_TEST_DATA_DIR);

std::filesystem::path temp_file(const std::string& name) {
    return std::filesystem::temp_directory_path() / ("distill-gguf-" + std::to_string(::getpid()) + "-" + name);
}

std::string read_bytes(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

void write_bytes(const std::filesystem::path& p, const std::string& s) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(s.data(), std::streamsize(s.size()));
}

std::vector<float> random_values(std::size_t n, std::uint64_t seed) {
    Rng rng(seed);
    std::vector<float> v(n);
    for (auto& x : v) x = float(rng.normal());
    return v;
}

}  // namespace

TEST_CASE("gguf: a written file reads back every value type and every tensor type") {
    io::gguf::Writer w;
    w.set("general.architecture", value_type::string, "llama");
    w.set("t.u8", value_type::u8, 7);
    w.set("t.i8", value_type::i8, -7);
    w.set("t.u16", value_type::u16, 65535);
    w.set("t.i16", value_type::i16, -32768);
    w.set("t.u32", value_type::u32, 4000000000u);
    w.set("t.i32", value_type::i32, -2000000000);
    w.set("t.u64", value_type::u64, std::uint64_t(1) << 60);
    w.set("t.i64", value_type::i64, -(std::int64_t(1) << 60));
    w.set("t.f32", value_type::f32, 0.25);
    w.set("t.f64", value_type::f64, 1e-300);
    w.set("t.bool", value_type::boolean, true);
    w.set_array("t.strings", value_type::string, {"a", "", "ü b"});
    w.set_array("t.ints", value_type::i32, {1, -2, 3});
    w.set_array("t.empty", value_type::string, nlohmann::json::array());
    w.set("t.u8", value_type::u8, 9);  // set twice: keeps its first place, takes the new value
    using enum quant::type;
    const std::vector<quant::type> types = {F32, F16, BF16, Q8_0, Q4_0, Q4_K};
    for (quant::type t : types)
        w.add_tensor(std::string("w.") + std::string(quant::name(t)), {3, 512}, t, random_values(3 * 512, 1));
    w.add_tensor("bias", {5}, F32, {1, 2, 3, 4, 5});
    const auto path = temp_file("roundtrip.gguf");
    w.write(path);

    const io::gguf::File f(path);
    CHECK(f.version() == 3);
    REQUIRE(f.metadata().size() == 15);
    CHECK(f.metadata()[1].first == "t.u8");
    CHECK(f.at("t.u8").data == 9);
    CHECK(f.at("t.i8").data == -7);
    CHECK(f.at("t.u16").data == 65535);
    CHECK(f.at("t.i16").data == -32768);
    CHECK(f.at("t.u32").data == 4000000000u);
    CHECK(f.at("t.i32").data == -2000000000);
    CHECK(f.at("t.u64").data == std::uint64_t(1) << 60);
    CHECK(f.at("t.i64").data == -(std::int64_t(1) << 60));
    CHECK(f.at("t.f32").data == 0.25);
    CHECK(f.at("t.f64").data == 1e-300);
    CHECK(f.at("t.bool").data == true);
    CHECK(f.at("t.strings").type == value_type::array);
    CHECK(f.at("t.strings").element == value_type::string);
    CHECK(f.at("t.strings").data == nlohmann::json({"a", "", "ü b"}));
    CHECK(f.at("t.ints").data == nlohmann::json({1, -2, 3}));
    CHECK(f.at("t.empty").data.empty());
    CHECK(f.find("absent") == nullptr);
    CHECK_THROWS_WITH_AS(f.at("absent"), doctest::Contains("has no metadata key absent"), format_error);

    REQUIRE(f.tensors().size() == types.size() + 1);
    const auto values = random_values(3 * 512, 1);
    for (quant::type t : types) {
        const auto& info = f.tensor(std::string("w.") + std::string(quant::name(t)));
        CAPTURE(quant::name(t));
        CHECK(info.type == t);
        CHECK(info.ne == std::vector<std::int64_t>{512, 3});  // innermost first
        CHECK(info.offset % 32 == 0);
        // the stored bytes are the rows quantized one by one
        std::vector<std::byte> expect(quant::row_bytes(t, 512));
        const auto stored = f.bytes(info);
        REQUIRE(stored.size() == 3 * expect.size());
        for (int r = 0; r < 3; ++r) {
            quant::quantize_row(t, values.data() + r * 512, 512, expect.data());
            CHECK(std::equal(expect.begin(), expect.end(), stored.begin() + r * std::ptrdiff_t(expect.size())));
        }
        const auto back = f.dequantize(info);
        double worst = 0;
        for (std::size_t i = 0; i < back.size(); ++i) worst = std::max(worst, double(std::abs(back[i] - values[i])));
        CHECK(worst <= (t == F32 ? 0.0 : t == Q4_0 || t == Q4_K ? 0.6 : 0.05));
    }
    CHECK(f.dequantize(f.tensor("bias")) == std::vector<float>{1, 2, 3, 4, 5});

    // rows that are no whole number of blocks are refused when added
    CHECK_THROWS_WITH_AS(w.add_tensor("x", {2, 48}, Q8_0, std::vector<float>(96)),
                         doctest::Contains("rows of 48 values, not a multiple of q8_0's block of 32"), error);
    std::filesystem::remove(path);
}

TEST_CASE("gguf: a damaged file is a format_error naming the file and the byte, never a crash") {
    io::gguf::Writer w;
    w.set("general.architecture", value_type::string, "gpt2");
    w.set_array("tokenizer.ggml.tokens", value_type::string, {"a", "b", "c"});
    w.add_tensor("token_embd.weight", {4, 32}, quant::type::Q8_0, random_values(128, 2));
    const auto good = temp_file("good.gguf"), bad = temp_file("bad.gguf");
    w.write(good);
    const std::string bytes = read_bytes(good);
    // every truncation short of the last tensor's end (136 bytes of q8_0 blocks, then alignment padding)
    const std::size_t end = bytes.size() - (160 - 136);
    for (std::size_t n = 0; n < end; ++n) {
        write_bytes(bad, bytes.substr(0, n));
        CAPTURE(n);
        CHECK_THROWS_AS(io::gguf::File{bad}, format_error);
    }
    auto damaged = [&](std::size_t at, std::string with, const char* expect) {
        std::string b = bytes;
        b.replace(at, with.size(), with);
        write_bytes(bad, b);
        CHECK_THROWS_WITH_AS(io::gguf::File{bad}, doctest::Contains(expect), format_error);
    };
    damaged(0, "GGUX", "is not a GGUF file");
    damaged(4, std::string("\x04\0\0\0", 4), "is GGUF version 4, expected 2 or 3");
    damaged(8, std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8), "declares more entries than the file can hold");
    // the first key's value type (after magic, version, counts and the key string)
    const std::size_t first_type = 24 + 8 + std::string("general.architecture").size();
    damaged(first_type, std::string("\x0d\0\0\0", 4), "has value type 13");
    // the tensor's ggml type: find it after the tensor's name and dimensions
    const std::size_t name_at = bytes.find("token_embd.weight");
    const std::size_t type_at = name_at + std::string("token_embd.weight").size() + 4 + 16;
    damaged(type_at, std::string("\x0e\0\0\0", 4), "has ggml type 14, which distill does not read");
    CHECK_THROWS_WITH_AS(io::gguf::File{bad}, doctest::Contains(bad.string().c_str()), format_error);
    std::filesystem::remove(good);
    std::filesystem::remove(bad);
}

TEST_CASE("gguf export: tensor types follow llama.cpp's converter, with distill's fallbacks") {
    using enum quant::type;
    CHECK(io::gguf::tensor_type("blk.0.attn_norm.weight", {256}, Q8_0) == F32);
    CHECK(io::gguf::tensor_type("blk.0.attn_q.bias", {256}, Q8_0) == F32);
    CHECK(io::gguf::tensor_type("blk.0.attn_q.weight", {256, 256}, Q8_0) == Q8_0);
    CHECK(io::gguf::tensor_type("position_embd.weight", {64, 256}, Q4_K) == F32);
    CHECK(io::gguf::tensor_type("token_embd.weight", {263, 256}, Q4_K) == Q4_K);
    CHECK(io::gguf::tensor_type("blk.0.ffn_down.weight", {256, 96}, Q4_K) == Q4_0);
    CHECK(io::gguf::tensor_type("blk.0.ffn_down.weight", {256, 48}, Q4_K) == F16);
    CHECK(io::gguf::tensor_type("blk.0.ffn_down.weight", {256, 48}, Q8_0) == F16);
    CHECK(io::gguf::tensor_type("blk.0.ffn_down.weight", {256, 48}, BF16) == BF16);
}

// The golden: for each architecture, a random transformers checkpoint and its tokenizer
// (fixtures/gguf/<arch>/; llama2: a Llama with a SentencePiece-style tokenizer.json), and what
// llama.cpp's convert_hf_to_gguf.py wrote for it at f32 and q8_0, read back by gguf-py
// (fixtures/gguf/<arch>/converter-<type>.json). Where distill deliberately writes other values (the
// SentencePiece scores, for which the converter writes a placeholder) the golden's "replaced" holds
// them, computed by the script.
TEST_CASE("gguf export: a student's file holds what llama.cpp's converter writes") {
    for (const std::string arch : {"gpt2", "llama", "qwen2", "phi3", "llama2"}) {
        const auto dir = fixtures / "gguf" / arch;
        const io::hf::Directory ckpt(dir);
        student::Transformer<float, device::Cpu> m(io::hf::transformer_config(ckpt), 1);
        io::hf::load(ckpt, m);
        for (const std::string type : {"f32", "q8_0"}) {
            CAPTURE(arch);
            CAPTURE(type);
            std::ifstream in(dir / ("converter-" + type + ".json"));
            REQUIRE(in);
            const auto golden = nlohmann::json::parse(in);
            const auto path = temp_file(arch + "-" + type + ".gguf");
            io::gguf::save(path, m,
                           {.type = quant::parse(type),
                            .model_type = arch == "phi3" ? "phi3" : "",
                            .tokenizer = dir / "tokenizer.json",
                            .name = golden["metadata"]["general.name"]["value"].get<std::string>()});
            const io::gguf::File f(path);
            const auto ignored = golden["ignored"].get<std::set<std::string>>();
            const auto extra = golden["extra"].get<std::set<std::string>>();
            const auto replaced = golden.value("replaced", nlohmann::json::object());
            // every key the converter wrote, with its type and value (floats as f32)
            for (const auto& [key, converter] : golden["metadata"].items()) {
                CAPTURE(key);
                if (ignored.contains(key)) continue;
                const nlohmann::json& g = replaced.contains(key) ? replaced[key] : converter;
                const io::gguf::Value* v = f.find(key);
                if (!v) {
                    FAIL_CHECK("missing key " << key);
                    continue;
                }
                CHECK(std::uint32_t(v->type) == g["type"].get<std::uint32_t>());
                if (v->type == value_type::array) CHECK(std::uint32_t(v->element) == g["element"].get<std::uint32_t>());
                if (v->type == value_type::f32)
                    CHECK(v->data.get<float>() == g["value"].get<float>());
                else if (v->type == value_type::array && v->element == value_type::f32)
                    CHECK(v->data.get<std::vector<float>>() == g["value"].get<std::vector<float>>());
                else
                    CHECK(v->data == g["value"]);
            }
            // and no key it did not write, beyond those the golden lists as distill's own
            for (const auto& [key, v] : f.metadata())
                CHECK_MESSAGE((golden["metadata"].contains(key) || extra.contains(key)), "extra key " << key);
            // the same tensors, in any order, with the same shapes, types and bytes
            CHECK(f.tensors().size() == golden["tensors"].size());
            for (const auto& g : golden["tensors"]) {
                CAPTURE(g["name"]);
                const auto& t = f.tensor(g["name"].get<std::string>());
                CAPTURE(t.name);
                CHECK(t.ne == g["ne"].get<std::vector<std::int64_t>>());
                CHECK(std::uint32_t(t.type) == g["type"].get<std::uint32_t>());
                const auto b = f.bytes(t);
                CHECK(detail::sha256_hex({reinterpret_cast<const char*>(b.data()), b.size()}) == g["sha256"]);
            }
            // for tests/reference/check_gguf_llamacpp.py, under distill's own general.name: llama.cpp
            // expects Phi-3's SentencePiece tokens in any model whose name contains "phi3"
            if (const char* keep = std::getenv("DISTILL_KEEP_GGUF_EXPORT"))
                io::gguf::save(std::filesystem::path(keep) / (arch + "-" + type + ".gguf"), m,
                               {.type = quant::parse(type),
                                .model_type = arch == "phi3" ? "phi3" : "",
                                .tokenizer = dir / "tokenizer.json"});
            std::filesystem::remove(path);
            if (arch == "llama2") {  // the metadata checked above is the SentencePiece vocabulary
                CHECK(f.at("tokenizer.ggml.model").data == "llama");
                CHECK(f.at("tokenizer.ggml.add_space_prefix").data == true);
            }
        }
    }
}

TEST_CASE("gguf export: the byte tokenizer, quantized types and refusals") {
    student::TransformerConfig cfg{
        .vocab_size = 263, .context_length = 16, .d_model = 256, .n_layers = 1, .n_heads = 4, .d_ff = 512};
    student::Transformer<float, device::Cpu> m(cfg, 1);
    m.init(3);
    for (const std::string type : {"f16", "bf16", "q8_0", "q4_0", "q4_k"}) {
        CAPTURE(type);
        const auto path = temp_file("byte-" + type + ".gguf");
        io::gguf::save(path, m, {.type = quant::parse(type), .add_bos = false});
        const io::gguf::File f(path);
        CHECK(f.at("general.architecture").data == "gpt2");
        CHECK(f.at("general.file_type").data == io::gguf::file_type(quant::parse(type)));
        CHECK(f.at("tokenizer.ggml.model").data == "gpt2");
        const auto& tokens = f.at("tokenizer.ggml.tokens").data;
        REQUIRE(tokens.size() == 263);
        CHECK(tokens[65] == "A");
        CHECK(tokens[32] == "\xc4\xa0");  // GPT-2's byte-level space, Ġ
        CHECK(tokens[10] == "\xc4\x8a");  // newline, Ċ
        CHECK(tokens[262] == "<|end|>");
        CHECK(f.at("tokenizer.ggml.token_type").data[262] == 3);
        CHECK(f.at("tokenizer.ggml.merges").data.empty());
        CHECK(f.at("tokenizer.ggml.eot_token_id").data == 262);
        CHECK(f.at("tokenizer.ggml.add_bos_token").data == false);
        CHECK(f.tensor("blk.0.attn_qkv.weight").type == quant::parse(type));
        CHECK(f.tensor("blk.0.attn_qkv.bias").type == quant::type::F32);
        CHECK(f.tensor("position_embd.weight").type == quant::type::F32);
        // the weights are the student's, to the type's precision
        const auto w = f.dequantize(f.tensor("blk.0.ffn_down.weight"));
        const auto* p = m.parameter_data();
        for (const auto& param : m.parameters())
            if (param.name == "h.0.mlp.c_proj.weight") p = param.value.data();
        double worst = 0, scale = 0;
        for (std::size_t i = 0; i < w.size(); ++i) {
            worst = std::max(worst, double(std::abs(w[i] - p[i])));
            scale = std::max(scale, double(std::abs(p[i])));
        }
        CHECK(worst <= scale * (type.starts_with("q4") ? 0.15 : 0.01));
        std::filesystem::remove(path);
    }
    // refusals name what is wrong
    student::TransformerConfig dyn{.vocab_size = 263,
                                   .context_length = 16,
                                   .d_model = 32,
                                   .n_layers = 1,
                                   .n_heads = 2,
                                   .norm = "rmsnorm",
                                   .positions = "rope",
                                   .mlp = "swiglu",
                                   .qkv_bias = false,
                                   .proj_bias = false,
                                   .mlp_bias = false};
    dyn.rope_scaling = {.type = "dynamic", .factor = 2, .original_context_length = 8};
    student::Transformer<float, device::Cpu> d(dyn, 1);
    CHECK_THROWS_WITH_AS(io::gguf::save(temp_file("dyn.gguf"), d), doctest::Contains("\"dynamic\""), config_error);
    student::TransformerConfig small = cfg;
    small.vocab_size = 100;
    student::Transformer<float, device::Cpu> s(small, 1);
    CHECK_THROWS_WITH_AS(io::gguf::save(temp_file("small.gguf"), s),
                         doctest::Contains("smaller than the byte tokenizer"), config_error);
    CHECK_THROWS_WITH_AS(
        io::gguf::save(temp_file("spm.gguf"), m, {.tokenizer = fixtures / "tokenizers" / "llama2" / "tokenizer.json"}),
        doctest::Contains("but the model has only 263 embedding rows"), config_error);
    CHECK_THROWS_WITH_AS(quant::parse("q5_k"), doctest::Contains("q4_k"), config_error);
}

// The rules check_exportable applies are save()'s: a job is refused with them before it trains.
TEST_CASE("gguf export: check_exportable refuses what save refuses, SentencePiece-style tokenizers included") {
    const auto golden_dir = fixtures / "gguf" / "llama2";
    const auto cfg = io::hf::transformer_config(io::hf::Directory(golden_dir));
    const auto spm = golden_dir / "tokenizer.json";
    CHECK_NOTHROW(io::gguf::check_exportable(cfg, {.tokenizer = spm}));
    CHECK_NOTHROW(io::gguf::check_exportable(cfg, {.model_type = "phi3", .tokenizer = spm}));
    CHECK_THROWS_WITH_AS(io::gguf::check_exportable(cfg, {.model_type = "qwen2", .tokenizer = spm}),
                         doctest::Contains("model_type: \"qwen2\" cannot hold"), config_error);
    auto small = cfg;
    small.vocab_size = 700;  // the added chat tokens 700..703 have no row
    CHECK_THROWS_WITH_AS(io::gguf::check_exportable(small, {.tokenizer = spm}),
                         doctest::Contains("has token id 700 (<|user|>), but the model has only 700"), config_error);
    auto dyn = cfg;
    dyn.rope_scaling = {.type = "dynamic", .factor = 2, .original_context_length = 8};
    CHECK_THROWS_WITH_AS(io::gguf::check_exportable(dyn, {.tokenizer = spm}),
                         doctest::Contains("student.rope_scaling.type"), config_error);

    // variants of the fixture's tokenizer.json that llama.cpp's SPM tokenizer would read differently
    std::ifstream in(spm);
    const auto tok = nlohmann::json::parse(in);
    const auto dir = temp_file("spm-variants");
    std::filesystem::create_directories(dir);
    auto refused = [&](nlohmann::json variant, const char* expect) {
        std::ofstream(dir / "tokenizer.json") << variant.dump();
        CAPTURE(expect);
        CHECK_THROWS_WITH_AS(io::gguf::check_exportable(cfg, {.tokenizer = dir / "tokenizer.json"}),
                             doctest::Contains(expect), config_error);
    };
    auto t = tok;
    t["normalizer"]["normalizers"].push_back({{"type", "NFKC"}});
    refused(t, "its normalizer step {\"type\":\"NFKC\"}");
    t = tok;
    t["normalizer"] = nullptr;
    refused(t, "keeps spaces as spaces");
    t = tok;
    t["normalizer"] = nullptr;
    t["pre_tokenizer"] = {
        {"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"}, {"split", true}};
    refused(t, "split false");
    t["pre_tokenizer"]["split"] = false;  // Llama 2's newer form: llama.cpp's '▁' differs
    refused(t, "prepend_scheme \"first\", which puts no \"▁\" before text that starts with a space or follows");
    t["pre_tokenizer"]["prepend_scheme"] = "always";
    refused(t, "prepend_scheme \"always\"");
    // a Metaspace that does not prepend is llama.cpp's SPM tokenizer without add_space_prefix
    t["pre_tokenizer"]["prepend_scheme"] = "never";
    std::ofstream(dir / "tokenizer.json") << t.dump();
    io::gguf::Writer w;
    io::gguf::detail::hf_tokenizer_metadata(w, dir / "tokenizer.json", cfg.vocab_size);
    bool found = false;
    for (const auto& [key, v] : w.metadata())
        if (key == "tokenizer.ggml.add_space_prefix") {
            found = true;
            CHECK(v.data == false);
        }
    CHECK(found);
    t = tok;
    t["model"]["vocab"].erase("<0x7F>");
    refused(t, "has byte fallback but no byte token <0x7F>");
    t = tok;
    t["model"]["ignore_merges"] = true;
    refused(t, "ignore_merges");
    std::filesystem::remove_all(dir);
}

// The quantized student the report measures: Transformer::quantize stores the matrices as a GGUF
// export of the same type does and multiplies through quant_matmul (ggml's CPU semantics: the
// activations quantized too), on Cpu as on the Reference.
TEST_CASE(
    "quantized student: Cpu's logits agree with the Reference's within the quantization error, forward and decode") {
    for (const std::string arch : {"gpt2", "llama"}) {
        student::TransformerConfig cfg{
            .vocab_size = 263, .context_length = 16, .d_model = 256, .n_layers = 2, .n_heads = 4, .d_ff = 512};
        if (arch == "llama") {
            cfg.norm = "rmsnorm";
            cfg.positions = "rope";
            cfg.mlp = "swiglu";
            cfg.qkv_bias = cfg.proj_bias = cfg.mlp_bias = false;
            cfg.tie_embeddings = false;
            cfg.n_kv_heads = 2;
            cfg.d_ff = 96;  // rows of the down projection: not a whole q4_k block, so q4_0
        }
        for (const std::string type : {"q8_0", "q4_k", "f16"}) {
            CAPTURE(arch);
            CAPTURE(type);
            using Model = student::Transformer<float, device::Cpu>;
            using Oracle = student::Transformer<float, device::Reference>;
            Model q(cfg, 2, device::Cpu{}, student::activations::inference),
                plain(cfg, 2, device::Cpu{}, student::activations::inference);
            Oracle r(cfg, 2, device::Reference{}, student::activations::inference);
            q.init(5);
            const auto path = temp_file("quantized-" + arch + ".gguf");
            io::gguf::save(path, q, {.type = quant::parse(type)});  // before quantize: the trained weights
            std::copy(q.parameter_data(), q.parameter_data() + q.arena_size(), r.parameter_data());
            q.quantize(quant::parse(type));
            r.quantize(quant::parse(type));
            CHECK(q.quantized());
            // `plain` holds the dequantized values and multiplies in fp32 (gemm)
            std::copy(q.parameter_data(), q.parameter_data() + q.arena_size(), plain.parameter_data());
            // the embedding the file stores is the one the quantized model reads
            const io::gguf::File f(path);
            const auto embd = f.dequantize(f.tensor("token_embd.weight"));
            CHECK(std::equal(embd.begin(), embd.end(), q.parameter_data()));
            std::vector<std::int32_t> tokens(2 * 12);
            for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t((i * 37 + 11) % 263);
            // worst |a − b| over b's largest magnitude
            auto relative = [](const auto& a, const auto& b) {
                double worst = 0, scale = 0;
                for (std::int64_t i = 0; i < a.numel(); ++i) {
                    worst = std::max(worst, double(std::abs(a.data()[i] - b.data()[i])));
                    scale = std::max(scale, double(std::abs(b.data()[i])));
                }
                return worst / scale;
            };
            q.forward(tokens.data(), 2, 12);
            r.forward(tokens.data(), 2, 12);
            plain.forward(tokens.data(), 2, 12);
            // Each product rounds its activations (to 8-bit blocks, or fp16), so a 1-ulp difference
            // between the devices' other kernels (summation orders, and whatever FMAs the compiler
            // forms) can flip one rounding and move the logits by a fraction of the quantization
            // error; the products themselves equal the Reference's and llama.cpp's to fp32 noise
            // (unit-quant.cpp). So the devices agree within that error, not to fp32 noise.
            const double quantization_error = relative(q.logits(), plain.logits());
            CHECK(quantization_error <= (type == "f16" ? 1e-3 : 3e-2));  // small against the logits
            const double tolerance = 2 * quantization_error;
            CHECK(relative(q.logits(), r.logits()) <= tolerance);
            // decode: the prompt, then one token, through the KV cache
            auto cq = q.make_cache(2);
            auto cr = r.make_cache(2);
            const int lengths[2] = {12, 7};
            q.prefill(cq, tokens.data(), lengths, 2, 12);
            r.prefill(cr, tokens.data(), lengths, 2, 12);
            const std::int32_t next[2] = {65, 66};
            q.decode(cq, next, 2);
            r.decode(cr, next, 2);
            CHECK(relative(q.next_logits(), r.next_logits()) <= tolerance);
            std::filesystem::remove(path);
        }
    }
    student::TransformerConfig cfg{
        .vocab_size = 263, .context_length = 8, .d_model = 64, .n_layers = 1, .n_heads = 2, .d_ff = 128};
    student::Transformer<float, device::Cpu> m(cfg, 1);
    m.init(1);
    m.quantize(quant::type::Q8_0);
    const std::vector<std::int32_t> tokens = {1, 2, 3};
    m.forward(tokens.data(), 1, 3);
    CHECK_THROWS_WITH_AS(m.backward(), doctest::Contains("quantized for inference"), config_error);
}
