// CUDA throughput of distill: a distillation training step (teacher forward, student forward and
// backward, SoftKL + HiddenMSE, AdamW) and generation (prefill + greedy decode with a KV cache), in
// tokens/s and MFU against the GPU's peak: fp32 (CUDA cores) with full-fp32 GEMMs, and tf32
// (tensor cores) when --tf32 lets cuBLAS use them. Validates before timing: the step's loss is finite
// (a warning when it did not decrease over the warm-up); decoded tokens are in the vocabulary.
// Prints a table and, with --json FILE, writes the figures as JSON.
//
//   bench_cuda [--batch 8] [--context 1024] [--steps 10] [--tf32] [--gen-batch 32] [--gen-tokens 128]
//              [--json results.json]
//
// Models: the student is GPT-2 small's shape (12 layers, 768 wide, 12 heads, vocab 50257), the
// teacher GPT-2 medium's (24 layers, 1024 wide, 16 heads).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "distill/device/cuda.hpp"
#include "distill/loss/hidden_mse.hpp"
#include "distill/loss/soft_kl.hpp"
#include "distill/loss/sum.hpp"
#include "distill/optim/adam.hpp"
#include "distill/student/transformer.hpp"

using namespace distill;
using device::Cuda;

namespace {

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Dense peak FLOP/s of the GPU: fp32 on the CUDA cores, and tf32 on the tensor cores. Known parts
/// by name (NVIDIA's datasheet figures, SXM); otherwise from SMs × FP32 lanes × 2 × clock.
struct Peak {
    double fp32, tf32;
    std::string source;
};
Peak peak_of(const cudaDeviceProp& p) {
    const std::string name = p.name;
    if (name.find("H200") != std::string::npos || name.find("H100") != std::string::npos)
        return {67e12, 494.7e12, "datasheet (H100/H200 SXM: 67 TFLOP/s fp32, 495 TFLOP/s tf32 dense)"};
    if (name.find("A100") != std::string::npos)
        return {19.5e12, 156e12, "datasheet (A100: 19.5 TFLOP/s fp32, 156 TFLOP/s tf32 dense)"};
    int clock_khz = 0;
    cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0);
    const int lanes = p.major == 8 && p.minor == 0 ? 64 : 128;
    const double fp32 = double(p.multiProcessorCount) * lanes * 2.0 * clock_khz * 1e3;
    return {fp32, 8 * fp32, "estimated from SMs x lanes x 2 x clock; tf32 taken as 8x fp32"};
}

/// FLOPs per token of a forward pass: 2 per multiply-add of every matmul weight (the tied LM head
/// included), plus the attention products QKᵀ and AV at full T×T (the kernels compute the masked half
/// too). A training step is 3× that (forward, and backward for inputs and weights).
double forward_flops_per_token(const student::TransformerConfig& c, int Tn) {
    const double C = c.d_model, F = c.d_ff, L = c.n_layers, V = c.vocab_size;
    const double matmul = L * (3 * C * C + C * C + 2 * C * F) + V * C;
    return 2 * matmul + L * 4.0 * Tn * C;
}

using Loss = loss::rebind_t<loss::Sum<loss::SoftKL, loss::HiddenMSE>, float, Cuda>;

}  // namespace

int main(int argc, char** argv) {
    int B = 8, Tn = 1024, steps = 10, gen_batch = 32, gen_tokens = 128;
    bool tf32 = false;
    std::string json;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--batch")
            B = std::atoi(next());
        else if (a == "--context")
            Tn = std::atoi(next());
        else if (a == "--steps")
            steps = std::atoi(next());
        else if (a == "--tf32")
            tf32 = true;
        else if (a == "--gen-batch")
            gen_batch = std::atoi(next());
        else if (a == "--gen-tokens")
            gen_tokens = std::atoi(next());
        else if (a == "--json")
            json = next();
        else {
            std::fprintf(stderr, "unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    if (Cuda::visible_devices() == 0) {
        std::printf("bench_cuda: no CUDA device visible\n");
        return 77;
    }
    Cuda dev;
    dev.allow_tf32(tf32);
    const Peak peak = peak_of(dev.properties());
    const double peak_used = tf32 ? peak.tf32 : peak.fp32;
    std::printf("GPU %s (sm_%d%d, %d SMs, %.0f GiB); GEMMs %s; peak %.1f TFLOP/s [%s]\n", dev.properties().name,
                dev.properties().major, dev.properties().minor, dev.properties().multiProcessorCount,
                double(dev.properties().totalGlobalMem) / (1 << 30), tf32 ? "tf32 (tensor cores)" : "fp32",
                peak_used / 1e12, peak.source.c_str());

    const student::TransformerConfig scfg{
        .vocab_size = 50257, .context_length = Tn, .d_model = 768, .n_layers = 12, .n_heads = 12, .d_ff = 3072};
    const student::TransformerConfig tcfg{
        .vocab_size = 50257, .context_length = Tn, .d_model = 1024, .n_layers = 24, .n_heads = 16, .d_ff = 4096};

    // ---- the training step ----
    double step_s = 0, step_tokens = 0, step_flops = 0, first_loss = 0, last_loss = 0;
    {
        student::Transformer<float, Cuda> student(scfg, B, dev), teacher(tcfg, B, dev);
        student.init(1);
        teacher.init(2);
        const auto dims = loss::dims_of(student, teacher, B);
        Loss::config lc;
        lc.get<0>() = {1.0, {.temperature = 2.0}};
        lc.get<1>().weight = 0.1;
        lc.get<1>().config.layer_map = "last";
        Loss loss(lc, dims);
        loss::Workspace<float, Cuda> ws(loss, dims, dev);
        optim::AdamW<float, Cuda> opt(optim::gather(student.parameters(), loss.parameters()), {}, dev);
        std::vector<std::int32_t> tokens(std::size_t(B) * Tn);
        for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t((i * 7919 + i / 13) % 50257);
        loss::teacher_outputs<float> to;
        auto step = [&] {
            teacher.forward(tokens.data(), B, Tn);
            loss::collect_outputs(teacher, to);
            student.forward(tokens.data(), B, Tn);
            student.zero_grad();
            loss.zero_grad();
            auto ctx = ws.begin(student, to);
            const float v = loss(ctx);  // reads the per-row values back: one synchronization
            ws.finish();
            student.backward(ws.d_hidden(), ws.d_attention(), ws.d_qkv());
            opt.step(1e-4);
            return v;
        };
        first_loss = step();
        for (int w = 0; w < 2; ++w) last_loss = step();
        dev.synchronize();
        if (!std::isfinite(first_loss) || !std::isfinite(last_loss)) {
            std::fprintf(stderr, "bench_cuda: validation failed: loss %g then %g (finite expected)\n", first_loss,
                         last_loss);
            return 1;
        }
        if (!(last_loss < first_loss))
            std::fprintf(stderr, "bench_cuda: warning: the loss did not decrease over the warm-up (%g then %g)\n",
                         first_loss, last_loss);
        const double t0 = now();
        for (int s = 0; s < steps; ++s) last_loss = step();
        dev.synchronize();
        step_s = (now() - t0) / steps;
        step_tokens = double(B) * Tn;
        // teacher forward + student forward/backward (3×) + the loss head's KL passes (negligible)
        step_flops = step_tokens * (forward_flops_per_token(tcfg, Tn) + 3 * forward_flops_per_token(scfg, Tn));
    }
    const double step_mfu = step_flops / step_s / peak_used;
    std::printf("train step  B=%d T=%d: %.1f ms/step, %.0f tokens/s, %.1f TFLOP/s, MFU %.1f%% (loss %.4f -> %.4f)\n", B,
                Tn, step_s * 1e3, step_tokens / step_s, step_flops / step_s / 1e12, 100 * step_mfu, first_loss,
                last_loss);

    // ---- generation: prefill a 128-token prompt, decode greedily ----
    double gen_s = 0, gen_flops = 0;
    const int prompt = 128, gen_ctx = prompt + gen_tokens;
    {
        auto gcfg = scfg;
        gcfg.context_length = std::max(gen_ctx, 1);
        student::Transformer<float, Cuda> model(gcfg, gen_batch, dev);
        model.init(3);
        auto cache = model.make_cache(gen_batch);
        std::vector<std::int32_t> tokens(std::size_t(gen_batch) * prompt), next(gen_batch);
        for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = std::int32_t((i * 31 + 7) % 50257);
        std::vector<int> lengths(gen_batch, prompt);
        auto generate = [&] {
            cache.reset();
            model.prefill(cache, tokens.data(), lengths.data(), gen_batch, prompt);
            for (int s = 0; s < gen_tokens; ++s) {
                device::argmax_rows(dev, next.data(), model.next_logits().data(), gen_batch, gcfg.vocab_size);
                model.decode(cache, next.data(), gen_batch);
            }
        };
        generate();
        for (auto t : next)
            if (t < 0 || t >= gcfg.vocab_size) {
                std::fprintf(stderr, "bench_cuda: validation failed: decoded token %d\n", int(t));
                return 1;
            }
        dev.synchronize();
        const double t0 = now();
        generate();
        dev.synchronize();
        gen_s = now() - t0;
        // matmuls per generated token, plus attention over the cache at the average length
        gen_flops = double(gen_batch) * gen_tokens * forward_flops_per_token(gcfg, prompt + gen_tokens / 2) +
                    double(gen_batch) * prompt * forward_flops_per_token(gcfg, prompt);
    }
    const double gen_tps = double(gen_batch) * gen_tokens / gen_s;
    std::printf("generation  batch %d, prompt %d, %d new tokens: %.0f new tokens/s (%.2f ms/decode step), MFU %.2f%%\n",
                gen_batch, prompt, gen_tokens, gen_tps, 1e3 * gen_s / gen_tokens, 100 * gen_flops / gen_s / peak_used);

    if (!json.empty()) {
        std::ofstream f(json);
        f << "{\"gpu\":\"" << dev.properties().name << "\",\"gemm\":\"" << (tf32 ? "tf32" : "fp32")
          << "\",\"peak_tflops\":" << peak_used / 1e12 << ",\"train\":{\"batch\":" << B << ",\"context\":" << Tn
          << ",\"ms_per_step\":" << step_s * 1e3 << ",\"tokens_per_s\":" << step_tokens / step_s
          << ",\"tflops\":" << step_flops / step_s / 1e12 << ",\"mfu\":" << step_mfu << ",\"loss_first\":" << first_loss
          << ",\"loss_last\":" << last_loss << "},\"generate\":{\"batch\":" << gen_batch << ",\"prompt\":" << prompt
          << ",\"new_tokens\":" << gen_tokens << ",\"tokens_per_s\":" << gen_tps
          << ",\"mfu\":" << gen_flops / gen_s / peak_used << "}}\n";
    }
    return 0;
}
