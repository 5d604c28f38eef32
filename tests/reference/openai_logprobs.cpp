// For tests/reference/check_openai_logprobs_llamacpp.py (run on request): the distill side of the
// check that distill's OpenAI teacher, pointed at llama.cpp's OpenAI-compatible server, maps the
// server's log-probabilities onto the student's ids as llama.cpp itself computes them.
//
//   openai_logprobs export OUT.gguf [SCALE]
//       a student with the Qwen2 fixture's blocks and published-style byte-level BPE tokenizer
//       (fixtures/gguf/qwen2/tokenizer.json, ChatML tokens), width 256, random (seeded) with its
//       token embedding and head scaled by SCALE (1 by default: the logits spread over a few units,
//       so that sampled answers vary; from 3 up one token, a newline, takes almost all the mass);
//       exported as f32 GGUF with that tokenizer.
//   openai_logprobs query BASE_URL TOKENIZER K MAX_NEW TEMPERATURE PROMPT...
//       teacher::OpenAI<data::HfTokenizer> (tokenizer = TOKENIZER) answers each prompt at TEMPERATURE
//       (0: greedy; the sampling seed is 0) with top_logprobs = K; prints one JSON object per answer (text, mapped ids,
//       log-probabilities, what did not map), then {"stats": ...}.

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/hf_tokenizer.hpp"
#include "distill/device/cpu.hpp"
#include "distill/io/gguf_export.hpp"
#include "distill/io/hf.hpp"
#include "distill/student/transformer.hpp"
#include "distill/teacher/openai.hpp"

#ifndef DISTILL_TEST_DATA_DIR
#define DISTILL_TEST_DATA_DIR "tests/reference/fixtures"
#endif

using namespace distill;

namespace {

nlohmann::json floats(const std::vector<float>& v) {
    nlohmann::json a = nlohmann::json::array();
    for (float x : v) a.push_back(std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr));  // -inf: empty slot
    return a;
}

nlohmann::json mapping_json(const teacher::TokenMapping& m) {
    return {{"top_entries", m.top_entries},         {"top_unmapped", m.top_unmapped},
            {"top_ambiguous", m.top_ambiguous},     {"top_duplicate", m.top_duplicate},
            {"top_missing", m.top_missing},         {"tokens", m.tokens},
            {"tokens_unmapped", m.tokens_unmapped}, {"retokenize_mismatches", m.retokenize_mismatches}};
}

int export_student(const std::filesystem::path& out, float scale) {
    using Model = student::Transformer<float, device::Cpu>;
    const auto fixture = std::filesystem::path(DISTILL_TEST_DATA_DIR) / "gguf" / "qwen2";
    const io::hf::Directory ckpt(fixture);
    student::TransformerConfig cfg = io::hf::transformer_config(ckpt);
    cfg.d_model = 256;
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.d_ff = 512;
    cfg.context_length = 256;
    Model m(cfg, 1, device::Cpu{}, student::activations::inference);
    m.init(7);
    for (const auto& p : m.parameters())
        if (p.name == "wte.weight" || p.name == "lm_head.weight")
            for (std::int64_t i = 0; i < p.value.numel(); ++i) p.value.data()[i] *= scale;
    io::gguf::save(out, m, {.type = quant::type::F32, .tokenizer = fixture / "tokenizer.json"});
    std::printf("%s\n", out.string().c_str());
    return 0;
}

int query(int argc, char** argv) {
    teacher::OpenAIConfig c;
    c.base_url = argv[2];
    c.model = "student";
    c.tokenizer = argv[3];
    c.concurrency = 1;
    c.request_timeout_s = 300;
    c.max_retries = 1;
    teacher::OpenAI<data::HfTokenizer> t(c);
    teacher::Sampling s{.temperature = std::atof(argv[6]), .top_p = 1.0, .max_new_tokens = std::atoi(argv[5])};
    s.top_logprobs = std::atoi(argv[4]);
    std::vector<teacher::Request> requests;
    for (int i = 7; i < argc; ++i)
        requests.push_back({"p" + std::to_string(i - 7), std::uint64_t(i - 7), {{"user", std::string(argv[i])}}});
    std::vector<nlohmann::json> out(requests.size());
    t.generate(requests, s, [&](std::size_t i, teacher::Response&& r) {
        out[i] = {{"prompt", requests[i].messages[0].content},
                  {"ok", r.ok()},
                  {"error", r.error},
                  {"text", r.text},
                  {"prompt_tokens", r.usage.prompt_tokens},
                  {"tokens", r.tokens},
                  {"token_logprobs", floats(r.token_logprobs)},
                  {"k", r.k},
                  {"top_ids", r.top_ids},
                  {"top_logprobs", floats(r.top_logprobs)},
                  {"mapping", mapping_json(r.mapping)}};
    });
    for (const auto& j : out) std::printf("%s\n", teacher::openai::dump(j).c_str());
    const auto st = t.stats();
    std::printf("%s\n", nlohmann::json{{"stats",
                                        {{"attempts", st.attempts},
                                         {"failed", st.failed},
                                         {"malformed", st.malformed},
                                         {"tokenizer", t.tokenizer_id()},
                                         {"mapping", mapping_json(st.mapping)}}}}
                            .dump()
                            .c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        if ((argc == 3 || argc == 4) && std::string(argv[1]) == "export")
            return export_student(argv[2], argc == 4 ? float(std::atof(argv[3])) : 1.0f);
        if (argc >= 8 && std::string(argv[1]) == "query") return query(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "openai_logprobs: %s\n", e.what());
        return 1;
    }
    std::fprintf(stderr,
                 "usage: openai_logprobs export OUT.gguf [SCALE]\n"
                 "       openai_logprobs query BASE_URL TOKENIZER K MAX_NEW TEMPERATURE PROMPT...\n");
    return 2;
}
