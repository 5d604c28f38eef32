// Writes what tests/reference/check_gguf_generations.py compares with llama.cpp: for each llama.cpp
// architecture distill exports (gpt2, llama, qwen2, phi3), a student with that architecture's blocks
// (the settings of its fixtures/gguf/<arch>/ checkpoint and tokenizer) at a width every tensor type
// applies to (d_model 256, so Q4_K's 256-element blocks fit every row), exported as GGUF in f32, f16,
// q8_0, q4_0 and q4_k, and beside each file distill's own inference of that type (the student
// quantized by Transformer::quantize, products by quant_matmul on device::Cpu): the greedy
// continuations of N prompts and every position's logits for the first prompt, as JSON.
//
// The students are random (seeded) with their token embedding and head scaled up, so that the
// logits spread over several units like a trained model's and greedy decoding is not decided by
// near-ties.
//
//   gguf_generations OUT_DIR [--prompts 50] [--prompt-length 12] [--new 16]

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/detail/rng.hpp"
#include "distill/device/cpu.hpp"
#include "distill/io/gguf_export.hpp"
#include "distill/io/hf.hpp"
#include "distill/student/transformer.hpp"

#ifndef DISTILL_TEST_DATA_DIR
#define DISTILL_TEST_DATA_DIR "tests/reference/fixtures"
#endif

namespace {

using namespace distill;
using Model = student::Transformer<float, device::Cpu>;

int argmax(const float* v, int n) {
    return static_cast<int>(std::max_element(v, v + n) - v);
}

// Greedy continuations of `prompts` (each of the same length), `steps` new tokens each.
std::vector<std::vector<std::int32_t>> greedy(Model& m, const std::vector<std::vector<std::int32_t>>& prompts,
                                              int steps) {
    const int V = m.config().vocab_size, T = static_cast<int>(prompts[0].size());
    std::vector<std::vector<std::int32_t>> out;
    auto cache = m.make_cache(1);
    for (const auto& p : prompts) {
        m.prefill(cache, p.data(), &T, 1, T);
        std::vector<std::int32_t> generated;
        for (int s = 0; s < steps; ++s) {
            const auto logits = m.next_logits();
            generated.push_back(argmax(logits.data(), V));
            if (s + 1 < steps) m.decode(cache, &generated.back(), 1);
        }
        out.push_back(std::move(generated));
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: gguf_generations OUT_DIR [--prompts 50] [--prompt-length 12] [--new 16]\n");
        return 2;
    }
    const std::filesystem::path out_dir = argv[1];
    int n_prompts = 50, prompt_length = 12, steps = 16;
    for (int i = 2; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        const int v = std::atoi(argv[i + 1]);
        if (a == "--prompts")
            n_prompts = v;
        else if (a == "--prompt-length")
            prompt_length = v;
        else if (a == "--new")
            steps = v;
        else {
            std::fprintf(stderr, "unknown option %s\n", a.c_str());
            return 2;
        }
    }
    std::filesystem::create_directories(out_dir);
    const std::filesystem::path fixtures = std::filesystem::path(DISTILL_TEST_DATA_DIR) / "gguf";
    for (const std::string arch : {"gpt2", "llama", "qwen2", "phi3"}) {
        const io::hf::Directory ckpt(fixtures / arch);
        student::TransformerConfig cfg = io::hf::transformer_config(ckpt);
        cfg.d_model = 256;
        cfg.n_heads = 4;
        cfg.n_kv_heads = cfg.n_kv_heads ? 2 : 0;
        cfg.d_ff = cfg.mlp == "swiglu" ? 512 : 1024;
        Model base(cfg, 1, device::Cpu{}, student::activations::inference);
        base.init(7);
        for (const auto& p : base.parameters())
            if (p.name == "wte.weight" || p.name == "lm_head.weight")
                for (std::int64_t i = 0; i < p.value.numel(); ++i) p.value.data()[i] *= 20;
        Rng rng(11);
        std::vector<std::vector<std::int32_t>> prompts(static_cast<std::size_t>(n_prompts));
        for (auto& p : prompts)
            for (int t = 0; t < prompt_length; ++t)
                p.push_back(static_cast<std::int32_t>(rng.next() % 256));  // byte-level tokens of every tokenizer
        for (const std::string type : {"f32", "f16", "q8_0", "q4_0", "q4_k"}) {
            const auto t = quant::parse(type);
            const auto file = out_dir / (arch + "-" + type + ".gguf");
            io::gguf::save(file, base,
                           {.type = t,
                            .model_type = arch == "phi3" ? "phi3" : "",
                            .tokenizer = ckpt.directory() / "tokenizer.json"});
            Model m(cfg, 1, device::Cpu{}, student::activations::inference);
            std::copy(base.parameter_data(), base.parameter_data() + base.arena_size(), m.parameter_data());
            if (t != quant::type::F32) m.quantize(t);
            m.forward(prompts[0].data(), 1, prompt_length);
            const auto view = m.logits();  // copied before `greedy` overwrites the activations
            const std::vector<float> logits(view.data(), view.data() + view.numel());
            nlohmann::json j{{"arch", arch},
                             {"type", type},
                             {"gguf", file.filename().string()},
                             {"prompts", prompts},
                             {"generations", greedy(m, prompts, steps)},
                             {"logits", logits},
                             {"vocab_size", cfg.vocab_size}};
            std::ofstream(out_dir / (arch + "-" + type + ".json")) << j.dump();
            std::printf("%s\n", file.string().c_str());
        }
    }
    return 0;
}
