// KV-cache generation through teacher::Model (chat template, prefill, decode, greedy sampling,
// log-probabilities of the chosen tokens) at batch 1 and 16, the same workload as
// benchmarks/reference/bench_generate.py (a naive PyTorch loop with a KV cache), which runs in the
// same invocation. Prints generated tokens/s, the ratio to PyTorch, the fraction of the measured
// FP32 FMA peak that the matrix products reach, and the fraction of the roofline: a decoding step
// reads every matrix once and each sequence's KV cache, and takes at least the longer of its
// products at the FP32 peak and its bytes at the read bandwidth of a working set that size
// (measured in the run: a model of a few MB is read from L2/L3, well above the DRAM triad). Rows
// with quantized matrices take the bytes alone (their integer dot products have another peak).
//
// With --quantize TYPE (q8_0, q4_k, ...) the same model is measured a second time with its matrices
// in that ggml type (Transformer::quantize, through quant_matmul), beside its fp32 run,
// and against llama.cpp generating from distill's GGUF export of the same model
// (benchmarks/reference/bench_generate_llamacpp.py through llama-cpp-python: a Python call per token).
//
// The model is the size of the quickstart's teacher unless --weights names a checkpoint. Special
// tokens' embedding rows are zeroed, so greedy decoding never picks a stop token and every sequence
// generates exactly --new tokens (equal work on both sides).
//
//   bench_generate [--weights FILE] [--vocab 263] [--context 256] [--d-model 256] [--layers 4]
//                  [--heads 4] [--d-ff 1024] [--prompt 32] [--new 128] [--batches 1,16]
//                  [--threads 2] [--reps 3] [--no-reference] [--quantize TYPE[,TYPE]]

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

#include "common.hpp"
#include "distill/data/byte_tokenizer.hpp"
#include "distill/io/gguf_export.hpp"
#include "distill/io/weights.hpp"
#include "distill/student/transformer.hpp"
#include "distill/teacher/model.hpp"

int main(int argc, char** argv) {
    using namespace distill;
    using Teacher = teacher::Model<student::Transformer, float, device::Cpu>;
    student::TransformerConfig cfg{
        .vocab_size = 263, .context_length = 256, .d_model = 256, .n_layers = 4, .n_heads = 4, .d_ff = 1024};
    std::string weights;
    int prompt_len = 32, n_new = 128, threads = 2, reps = 3;
    std::vector<int> batches = {1, 16};
    bool reference = true;
    std::vector<std::string> quantized;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--weights")
            weights = next();
        else if (a == "--vocab")
            cfg.vocab_size = std::stoi(next());
        else if (a == "--context")
            cfg.context_length = std::stoi(next());
        else if (a == "--d-model")
            cfg.d_model = std::stoi(next());
        else if (a == "--layers")
            cfg.n_layers = std::stoi(next());
        else if (a == "--heads")
            cfg.n_heads = std::stoi(next());
        else if (a == "--d-ff")
            cfg.d_ff = std::stoi(next());
        else if (a == "--prompt")
            prompt_len = std::stoi(next());
        else if (a == "--new")
            n_new = std::stoi(next());
        else if (a == "--threads")
            threads = std::stoi(next());
        else if (a == "--reps")
            reps = std::stoi(next());
        else if (a == "--batches") {
            batches.clear();
            const std::string list = next();
            for (std::size_t at = 0; at < list.size();) {
                const std::size_t comma = std::min(list.find(',', at), list.size());
                batches.push_back(std::stoi(list.substr(at, comma - at)));
                at = comma + 1;
            }
        } else if (a == "--quantize") {
            const std::string list = next();
            for (std::size_t at = 0; at < list.size();) {
                const std::size_t comma = std::min(list.find(',', at), list.size());
                quantized.push_back(list.substr(at, comma - at));
                at = comma + 1;
            }
        } else if (a == "--no-reference")
            reference = false;
        else {
            std::fprintf(stderr, "unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    if (!weights.empty()) {
        io::safetensors_file f(weights);
        cfg = io::load_weights_config<student::TransformerConfig>(f);
    }
    const int max_batch = *std::max_element(batches.begin(), batches.end());
    // Chat template overhead: bos, user, end-of-turn, assistant around the prompt bytes.
    const int body = prompt_len - 4;
    if (body < 1 || prompt_len + n_new > cfg.context_length) {
        std::fprintf(stderr,
                     "--prompt %d + --new %d must fit the context of %d (and the prompt must exceed 4 tokens)\n",
                     prompt_len, n_new, cfg.context_length);
        return 2;
    }
    Teacher t(cfg, teacher::ModelConfig{.max_batch = max_batch}, device::Cpu(threads));
    if (!weights.empty()) {
        io::safetensors_file f(weights);
        io::load_weights(f, t.network());
    } else {
        t.network().init(0);
    }
    // No stop tokens under greedy decoding: their logits become exactly 0, far below the best byte's.
    float* wte = t.network().parameters()[0].value.data();
    for (int v = data::ByteTokenizer::bos; v < std::min(cfg.vocab_size, data::ByteTokenizer::vocab_size()); ++v)
        std::fill(wte + std::size_t(v) * cfg.d_model, wte + std::size_t(v + 1) * cfg.d_model, 0.0f);

    Rng rng(1);
    std::vector<teacher::Request> requests(static_cast<std::size_t>(max_batch));
    for (int b = 0; b < max_batch; ++b) {
        std::string text;
        for (int i = 0; i < body; ++i) text += char('a' + rng.below(26));
        std::string id = "b";  // not "b" + to_string(b): GCC 12 warns falsely on it (-Wrestrict)
        id += std::to_string(b);
        requests[std::size_t(b)] = {id, std::uint64_t(b), {{"user", text}}};
    }
    const teacher::Sampling greedy{.temperature = 0, .max_new_tokens = n_new};

    // Validate before timing: full length, and the first tokens equal the full forward's argmax.
    {
        const auto r = generate_all(t, std::span<const teacher::Request>(requests.data(), 1), greedy);
        if (!r[0].ok() || int(r[0].tokens.size()) != n_new) {
            std::fprintf(stderr, "validation failed: %zu of %d tokens generated (%s)\n", r[0].tokens.size(), n_new,
                         r[0].error.c_str());
            return 1;
        }
        auto seq = t.chat_template().encode_prompt(requests[0].messages);
        const std::size_t p = seq.size();
        seq.insert(seq.end(), r[0].tokens.begin(), r[0].tokens.begin() + 16);
        t.network().forward(seq.data(), 1, int(seq.size()));
        const float* logits = t.network().logits().data();
        for (int i = 0; i < 16; ++i) {
            const float* row = logits + (p - 1 + std::size_t(i)) * std::size_t(cfg.vocab_size);
            if (row[r[0].tokens[std::size_t(i)]] < *std::max_element(row, row + cfg.vocab_size) - 1e-3f) {
                std::fprintf(stderr, "validation failed: token %d is not the full forward's argmax\n", i);
                return 1;
            }
        }
    }

    const double peak = bench::fp32_peak(threads);
    const double C = cfg.d_model, F = cfg.d_ff, L = cfg.n_layers, V = cfg.vocab_size;
    std::printf(
        "workload: greedy KV-cache generation, teacher V=%d T=%d d=%d L=%d H=%d F=%d (%lld parameters), prompt %d + %d "
        "new "
        "tokens, %d threads\n",
        cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff,
        (long long)cfg.parameter_count(), prompt_len, n_new, threads);
    // Measures `t` at every batch size; returns tokens/s per batch. `type` names the weights' type
    // ("" = fp32) in the workload; `gguf` is the same model for llama.cpp (quantized runs, batch 1).
    auto measure = [&](Teacher& m, const std::string& type, const std::filesystem::path& gguf,
                       const std::vector<double>& fp32) -> std::vector<double> {
        std::vector<double> rates;
        // bytes per matrix element: fp32, or the ggml type's blocks (rows of 256 here divide every block)
        const double weight_bytes =
            type.empty() ? 4.0 : double(quant::row_bytes(quant::parse(type, "--quantize"), 256)) / 256.0;
        for (int B : batches) {
            const std::span<const teacher::Request> batch(requests.data(), std::size_t(B));
            generate_all(m, batch, greedy);  // warm-up
            double best = 1e30;
            for (int rep = 0; rep < reps; ++rep) {
                const double t0 = bench::now();
                const auto out = generate_all(m, batch, greedy);
                best = std::min(best, bench::now() - t0);
                for (const auto& r : out)
                    if (int(r.tokens.size()) != n_new) {
                        std::fprintf(stderr, "a sequence stopped early (%zu tokens)\n", r.tokens.size());
                        std::exit(1);
                    }
            }
            const double tok_s = double(B) * n_new / best;
            // Matrix products per generated token (decode; attention over the cache at its mean length);
            // the prefill is counted the same way per prompt token.
            const double mean_ctx = prompt_len + n_new / 2.0;
            const double per_token = 2.0 * L * (3 * C * C + C * C + 2 * C * F) + 2.0 * C * V + 4.0 * L * mean_ctx * C;
            const double gflops = (double(B) * (n_new + prompt_len) * per_token) / best / 1e9;
            std::printf(
                "distill batch %2d: %8.0f tokens/s (%.1f ms per batch), %.1f GFLOP/s = %.1f%% of the FP32 peak (%.0f "
                "GFLOP/s)\n",
                B, tok_s, best * 1e3, gflops, 100.0 * gflops / peak, peak);
            // The roofline of the batch: a step reads every matrix once and each sequence's cached keys and
            // values; it takes at least the longer of its products at the FP32 peak and its bytes at the read
            // bandwidth of a working set that size (measured here: a few MB come from L2/L3, not DRAM).
            const double matrix_bytes = weight_bytes * (L * (3 * C * C + C * C + 2 * C * F) + C * V);
            const double kv_bytes = 4.0 * L * 2 * cfg.kv_heads() * cfg.head_size() * mean_ctx;  // per sequence
            const double step_bytes = matrix_bytes + B * kv_bytes;
            const double read_gbs = bench::measure_read_bandwidth(threads, step_bytes);
            // Quantized matrices multiply through integer dot products, whose peak the FP32 FMA peak is
            // not: their rows take the bytes alone as the bound.
            const double compute_peak = type.empty() ? peak * 1e9 : std::numeric_limits<double>::infinity();
            const double step_compute = B * per_token / compute_peak, step_read = step_bytes / (read_gbs * 1e9);
            const double prefill =
                std::max(double(B) * prompt_len * per_token / compute_peak, matrix_bytes / (read_gbs * 1e9));
            const double ceiling = double(B) * n_new / (prefill + n_new * std::max(step_compute, step_read));
            std::printf(
                "  roofline: a step reads %.1f MB (%.1f GB/s over that working set) and computes %.1f MFLOP: bound "
                "by %s, at most %.0f tokens/s; distill reaches %.0f%% of it\n",
                step_bytes / 1e6, read_gbs, B * per_token / 1e6, step_read > step_compute ? "reading" : "compute",
                ceiling, 100.0 * tok_s / ceiling);
            char workload[160];
            std::snprintf(workload, sizeof workload,
                          "generation (KV cache, greedy) batch %d: d=%d L=%d, %d+%d tokens%s%s", B, cfg.d_model,
                          cfg.n_layers, prompt_len, n_new, type.empty() ? "" : ", weights ", type.c_str());
            bench::Result res{.workload = workload,
                              .distill = tok_s,
                              .unit = "tokens/s",
                              .peak_fraction = tok_s / ceiling,
                              .bound = step_read > step_compute ? "roofline (read bandwidth)" : "roofline (compute)",
                              .threads = threads,
                              .torch = {}};
            res.extra["roofline_tokens_per_s"] = ceiling;
            res.extra["bytes_per_step"] = step_bytes;
            res.extra["read_bandwidth_gbs"] = read_gbs;
            res.extra["fp32_peak_fraction"] = gflops / peak;
            rates.push_back(tok_s);
            if (!type.empty()) {
                const double base = fp32[rates.size() - 1];
                std::printf("ratio %s / fp32 at batch %d: %.2fx tokens/s\n", type.c_str(), B, tok_s / base);
                res.extra["distill_fp32_tokens_per_s"] = base;
                res.extra["ratio_to_fp32"] = tok_s / base;
                if (reference && B == 1) {
                    char cmd[768];
                    std::snprintf(cmd, sizeof cmd,
                                  "bench_generate_llamacpp.py --gguf %s --prompt %d --new %d --threads %d --reps %d",
                                  gguf.c_str(), prompt_len, n_new, threads, reps);
                    bench::Reference best;
                    for (const auto& py : bench::torch_pythons()) {
                        const auto r = bench::run_reference(cmd, "tokens_per_s", py, "llama_cpp");
                        if (r.value > best.value) best = r;
                    }
                    if (best.value > 0) {
                        std::printf("ratio distill / llama.cpp (%s) at batch 1: %.2fx tokens/s\n", type.c_str(),
                                    tok_s / best.value);
                        res.extra["llama_cpp_tokens_per_s"] = best.value;
                        res.extra["ratio_to_llama_cpp"] = tok_s / best.value;
                        res.extra["llama_cpp"] = best.line.value("llama_cpp_python", "");
                    }
                }
            } else if (reference) {
                char cmd[768];
                std::snprintf(cmd, sizeof cmd,
                              "bench_generate.py --vocab %d --context %d --d-model %d --layers %d --heads %d --d-ff %d "
                              "--batch %d --prompt %d --new %d --threads %d --reps %d",
                              cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, B,
                              prompt_len, n_new, threads, reps);
                const auto ref = bench::run_reference(cmd, "tokens_per_s");
                if (ref.value > 0) {
                    std::printf("ratio distill / PyTorch at batch %d: %.2fx tokens/s (the roofline is %.2fx PyTorch)\n",
                                B, tok_s / ref.value, ceiling / ref.value);
                    res.extra["roofline_ratio_to_pytorch"] = ceiling / ref.value;
                    res.pytorch = ref.value;
                    res.torch = ref.torch;
                }
            }
            bench::emit(res);
        }
        return rates;
    };
    const auto fp32 = measure(t, "", {}, {});
    for (const std::string& name : quantized) {
        // a fresh copy of the same weights, exported for llama.cpp before it is quantized here
        Teacher q(cfg, teacher::ModelConfig{.max_batch = max_batch}, device::Cpu(threads));
        std::copy(t.network().parameter_data(), t.network().parameter_data() + t.network().arena_size(),
                  q.network().parameter_data());
        const auto type = quant::parse(name, "--quantize");
        const auto gguf = std::filesystem::temp_directory_path() / ("distill-bench-" + std::to_string(::getpid()) +
                                                                    "-" + std::string(quant::name(type)) + ".gguf");
        io::gguf::save(gguf, q.network(), {.type = type, .add_bos = true});
        q.network().quantize(type);
        measure(q, std::string(quant::name(type)), gguf, fp32);
        std::filesystem::remove(gguf);
    }
    return 0;
}
