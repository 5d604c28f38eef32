// One online distillation train step, the whole of it: the teacher's forward (logits only, no
// activations kept), the student's forward, SoftKL(τ=2) + HardCE on the teacher's tokens, the
// student's backward, global-norm clipping at 1.0 and an AdamW update. The same step in PyTorch
// (teacher under no_grad, F.kl_div with temperature, F.cross_entropy, clip_grad_norm_, AdamW
// foreach) is benchmarks/reference/bench_train.py, run in the same invocation on the same shapes.
//
// Sizes (issue 8): small  V=256   T=128 d=128 L=2 B=16, teacher d=256 L=4
//                  medium V=256   T=256 d=256 L=4 B=8,  teacher d=512 L=8
//                  large  V=32000 T=128 d=256 L=4 B=8,  teacher d=512 L=8
//                  125m   V=50257 T=256 d=768 L=12 B=4, teacher alike (issue 21: GPT-2 small's shape,
//                         124 M parameters, every one trained)
// Heads are d/64 (head size 64), d_ff = 4d. `--arch llama` gives both models the Llama family's blocks
// (RMSNorm, RoPE, SwiGLU with d_ff = 8d/3 rounded to 64, grouped-query attention with heads/2 kv
// heads, no biases, untied head) against tests/reference/llama.py.
//
// Reports tokens/s, the GFLOP/s of the matrix products and their fraction of the FP32 FMA peak,
// the peak RSS of the process against the analytic minimum of the step (see `minimum_bytes`), and
// the ratio to PyTorch. `--precision bf16` runs the GEMMs in bf16 (device::Cpu's precision) against
// PyTorch under torch.autocast("cpu", dtype=torch.bfloat16).
//
//   bench_train [--size small|medium|large|125m|qwen2-0.5b] [--arch gpt|llama] [--threads 2] [--steps 5]
//               [--precision fp32|bf16] [--checkpoint | --maps] [--no-reference]
//               [--batch B] [--seq S] [--lora R] [--hf DIR]
//
// `--size qwen2-0.5b` (issue 21): student and teacher both shaped like Qwen2-0.5B (Llama layout, d 896,
// 24 layers, 14 query / 2 kv heads, d_ff 4864, V 151936, q|k|v biases, tied embeddings, context 512),
// batch 1 unless `--batch`; `--lora R` adapts the student's q and v (alpha 2R, no dropout), its base
// frozen; `--seq S` runs the measured step on S tokens per sequence (the models stay laid out for the
// whole context); `--hf DIR` loads both models from the Hugging Face directory that
// reference/make_qwen2_0p5b.py writes. The reference is then reference/bench_lora.py (transformers'
// Qwen2 + PEFT's LoRA on the same shapes and, with --hf, the same weights).
//
// `--checkpoint` trains the student with activation checkpointing (student::activations::checkpointed;
// PyTorch: torch.utils.checkpoint around every block) and reports the student's activation memory; where
// the build has the fused attention kernels it attends fused in the forward and the recomputation alike
// (student::attends_fused). Without it the student trains as the `distill` command's finetune stage
// trains it for this loss, which reads no attention map (student::training_activations):
// activations::training_fused, attention fused forward and backward (no (T,T) maps). `--maps` keeps the
// maps instead (activations::training, as PyTorch's eager attention does; `--fused`, the default now, is
// accepted for older commands). The teacher (activations::inference) attends fused either way. The
// reference runs with explicit maps and again with `--sdpa` (PyTorch 2's F.scaled_dot_product_attention,
// teacher and student), and the faster setting is the row's reference.
//
// Before allocating, the step's memory plan (eval/memory_plan.hpp: the arenas from the configs, AdamW's
// state, the loss's workspace) is printed beside the peak the step then adds (eval::PeakMemory).

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "common.hpp"
#include "distill/distill.hpp"
#include "distill/eval/memory.hpp"
#include "distill/eval/memory_plan.hpp"
#include "distill/student/transformer_memory.hpp"

namespace {

using namespace distill;

struct Size {
    std::string name;
    student::TransformerConfig student, teacher;
    int batch;
};

student::TransformerConfig gpt(int V, int T, int d, int L) {
    return {.vocab_size = V, .context_length = T, .d_model = d, .n_layers = L, .n_heads = d / 64, .d_ff = 4 * d};
}

Size size_named(const std::string& n) {
    if (n == "small") return {n, gpt(256, 128, 128, 2), gpt(256, 128, 256, 4), 16};
    if (n == "medium") return {n, gpt(256, 256, 256, 4), gpt(256, 256, 512, 8), 8};
    if (n == "large") return {n, gpt(32000, 128, 256, 4), gpt(32000, 128, 512, 8), 8};
    // GPT-2 small's shape (124 M parameters at this context), student and teacher alike: a full fine-tune
    if (n == "125m") return {n, gpt(50257, 256, 768, 12), gpt(50257, 256, 768, 12), 4};
    if (n == "qwen2-0.5b") {  // Qwen2-0.5B's shape (context cut to 512), student and teacher alike
        const student::TransformerConfig q{.vocab_size = 151936,
                                           .context_length = 512,
                                           .d_model = 896,
                                           .n_layers = 24,
                                           .n_heads = 14,
                                           .n_kv_heads = 2,
                                           .d_ff = 4864,
                                           .norm = "rmsnorm",
                                           .norm_eps = 1e-6,
                                           .positions = "rope",
                                           .rope_theta = 1e6,
                                           .mlp = "swiglu",
                                           .qkv_bias = true,
                                           .proj_bias = false,
                                           .mlp_bias = false,
                                           .tie_embeddings = true};
        return {n, q, q, 1};
    }
    std::fprintf(stderr, "--size: small, medium, large, 125m or qwen2-0.5b, got %s\n", n.c_str());
    std::exit(2);
}

student::TransformerConfig llama(student::TransformerConfig c) {
    c.norm = "rmsnorm";
    c.norm_eps = 1e-6;
    c.positions = "rope";
    c.mlp = "swiglu";
    c.d_ff = (8 * c.d_model / 3 + 63) / 64 * 64;
    c.n_kv_heads = std::max(1, c.n_heads / 2);
    c.qkv_bias = c.proj_bias = c.mlp_bias = c.tie_embeddings = false;
    return c;
}

// FLOPs of the matrix products of one forward of `c` over B sequences of `seq` tokens, with full
// seq×seq attention (the unfused path's products; the fused kernel skips the key tiles past the
// diagonal, so there the figure is the rate of the same work, not of the products executed).
double forward_flops(const student::TransformerConfig& c, int B, int seq) {
    const double N = double(B) * seq, C = c.d_model, F = c.d_ff, L = c.n_layers, V = c.vocab_size, T = seq,
                 Q = c.qkv_width(), F1 = c.fc_width();
    return 2.0 * N * L * (Q * C + C * C + F1 * C + F * C) + 2.0 * N * C * V + 4.0 * B * L * T * T * C;
}

// The least memory the step can run in, in bytes, fp32, at the models' context length: the student's
// weights, and the gradients and two AdamW moments of its trainable ones (every weight; with LoRA the
// adapters); what its backward reads (per layer: the inputs of the four linear layers, the
// attention probabilities, q|k|v, the GELU input, the residual stream and LayerNorm statistics;
// then the final LayerNorm's output), its logits and their gradient, one layer's backward
// temporaries; the teacher's weights, logits and the working memory of one of its layers.
// With fused attention (student::attends_fused) a layer's probabilities are a (B,H,T) log-sum-exp and
// the backward has no map gradient.
double minimum_bytes(const Size& s, student::activations mode) {
    const bool checkpoint = mode == student::activations::checkpointed;
    constexpr bool fused_teacher = student::attends_fused<float, device::Cpu>(student::activations::inference);
    std::int64_t trainable = 0;  // every weight, or (LoRA) the adapters: the only ones with gradients and moments
    for (const auto& p : student::transformer_memory<float>(s.student, 1, student::activations::inference).trainable)
        trainable += p.second;
    const auto& c = s.student;
    const double rows_h = double(s.batch) * c.n_heads * c.context_length;
    const double N = double(s.batch) * c.context_length, C = c.d_model, F = c.d_ff, L = c.n_layers, V = c.vocab_size,
                 att = student::attends_fused<float, device::Cpu>(mode) ? rows_h : rows_h * c.context_length,
                 d_att = student::attends_fused<float, device::Cpu>(mode) ? 0 : att, Q = c.qkv_width(),
                 F1 = c.fc_width();
    const double P = double(c.parameter_count());
    const double per_layer = N * C /*ln1 out*/ + N * Q /*qkv*/ + att /*probabilities*/ + N * C /*att out*/ +
                             N * C /*res after attention*/ + N * C /*ln2 out*/ + N * F1 /*fc*/ + N * F /*act*/ +
                             4 * N /*norm statistics*/ + N * C /*block input*/;
    // checkpointed: each block's input kept, one block's activations at a time
    const double kept = checkpoint ? L * N * C + per_layer : L * per_layer;
    const double student = P + 3 * double(trainable) + kept + N * C + 2 * N * V + (d_att + N * F1 + N * Q + 2 * N * C);
    const auto& t = s.teacher;
    const double tN = double(s.batch) * t.context_length, tC = t.d_model, tF = t.d_ff,
                 tatt = double(s.batch) * t.n_heads * t.context_length * (fused_teacher ? 1 : t.context_length);
    const double teacher = double(t.parameter_count()) + tN * t.vocab_size +
                           (2 * tN * tC + tN * t.qkv_width() + tatt + tN * tC + tN * t.fc_width() + tN * tF + tN * tC);
    return 4.0 * (student + teacher);
}

// The step's memory plan (eval/memory_plan.hpp), as the finetune stage makes one, in the order the
// step allocates: the teacher's and the student's arenas (student::transformer_memory), the reading
// of a Hugging Face directory (`hf`: one tensor at a time, io::hf::load_transient_bytes), AdamW's two moments per
// trainable element, the loss's workspace.
eval::MemoryPlan memory_plan(const Size& s, student::activations mode,
                             const loss::Sum<loss::SoftKL, loss::HardCE>::config& lc, const loss::dims& dims,
                             const std::string& hf, const device::Cpu& dev) {
    const bool bf16_s = student::stores_bf16_weights<float>(s.student, dev),
               bf16_t = student::stores_bf16_weights<float>(s.teacher, dev);
    const auto m = student::transformer_memory<float>(s.student, s.batch, mode, bf16_s);
    const auto t = student::transformer_memory<float>(s.teacher, s.batch, student::activations::inference, bf16_t);
    detail::ArenaLayout state;  // optim::detail::StateArena's layout
    for (int slot = 0; slot < 2; ++slot)
        for (const auto& p : m.trainable) state.add<float>(p.first, {p.second});
    eval::MemoryPlan plan;
    const bool lora = s.student.lora.enabled();
    plan.add("teacher", std::int64_t(t.total()), bf16_t ? "inference, bf16 matrices" : "inference");
    plan.add(lora ? "student weights (frozen)" : "student weights", std::int64_t(m.base_weights),
             !bf16_s               ? "fp32"
             : m.base_weights_fp32 ? "fp32 masters + bf16 copies"
                                   : "bf16 matrices");
    if (lora) plan.add("student LoRA adapters", std::int64_t(m.adapter_weights));
    plan.add("student gradients", std::int64_t(m.gradients()));
    plan.add("student activations", std::int64_t(m.activations + m.tokens),
             std::string(student::activations_name(mode)) + ", " + student::attention_path<float, device::Cpu>(mode));
    if (!hf.empty())  // io::hf::load reads one tensor at a time (teacher and student have one shape)
        plan.add_transient("reading " + hf, io::hf::load_transient_bytes(s.student), "one tensor at a time");
    plan.add("optimizer state", std::int64_t(sizeof(float) * state.size()), "AdamW");
    const loss::Sum<loss::SoftKL, loss::HardCE> probe(lc, dims);
    plan.add("loss workspace", std::int64_t(loss::Workspace<float, device::Cpu>::planned_bytes(probe, dims)));
    return plan;
}

}  // namespace

int main(int argc, char** argv) {
    std::string size_name = "medium", precision = "fp32", arch = "gpt";
    int threads = 2, steps = 5, batch = 0, seq = 0, lora_rank = 0;
    std::string hf;
    bool reference = true, checkpoint = false, maps = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--size")
            size_name = next();
        else if (a == "--threads")
            threads = std::stoi(next());
        else if (a == "--steps")
            steps = std::stoi(next());
        else if (a == "--precision")
            precision = next();
        else if (a == "--arch")
            arch = next();
        else if (a == "--no-reference")
            reference = false;
        else if (a == "--checkpoint")
            checkpoint = true;
        else if (a == "--maps")
            maps = true;
        else if (a == "--fused")  // the default since the finetune stage trains so; kept for old commands
            maps = false;
        else if (a == "--batch")
            batch = std::stoi(next());
        else if (a == "--seq")
            seq = std::stoi(next());
        else if (a == "--lora")
            lora_rank = std::stoi(next());
        else if (a == "--hf")
            hf = next();
        else {
            std::fprintf(stderr, "unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    Size size = size_named(size_name);
    if (arch == "llama") {
        size.student = llama(size.student);
        size.teacher = llama(size.teacher);
    } else if (arch != "gpt") {
        std::fprintf(stderr, "--arch: gpt or llama, got %s\n", arch.c_str());
        return 2;
    }
    const bool bf16 = precision == "bf16";
    if (!bf16 && precision != "fp32") {
        std::fprintf(stderr, "--precision: fp32 or bf16, got %s\n", precision.c_str());
        return 2;
    }
    if (batch > 0) size.batch = batch;
    if (lora_rank > 0)  // PEFT's usual setting: alpha = 2 r on q and v, no dropout (a deterministic step)
        size.student.lora = {.rank = lora_rank, .alpha = 2.0 * lora_rank, .dropout = 0, .targets = {"q", "v"}};
    const bool lora = lora_rank > 0;
    // the models are laid out for the whole context; the measured step runs `seq` tokens per sequence
    const int B = size.batch, Tctx = size.student.context_length, V = size.student.vocab_size;
    const int T = seq > 0 ? std::min(seq, Tctx) : Tctx;
    const std::size_t N = std::size_t(B) * T;

    if (bf16 && !device::Cpu::bf16_supported()) {  // a row that says so, not an abort
        bench::Result r;
        r.workload = "train step " + size.name + (arch == "llama" ? " llama" : "") +
                     " bf16: unsupported: " + device::Cpu::bf16_unsupported_reason();
        r.unit = "tokens/s";
        r.threads = threads;
        std::printf("%s\n", r.workload.c_str());
        bench::emit(r);
        return 0;
    }
    device::Cpu dev = bf16 ? device::Cpu(threads, device::precision::bf16) : device::Cpu(threads);
    using Loss = loss::Sum<loss::SoftKL, loss::HardCE>;
    Loss::config lc;
    lc.get<0>().config.temperature = 2.0;
    // the finetune stage's rule for this loss (it reads no attention map), unless --maps keeps them
    const student::activations mode = maps && !checkpoint
                                          ? student::activations::training
                                          : student::training_activations<float, device::Cpu>(checkpoint, false);
    // The memory plan of the step, computed before anything of it is allocated; the measured peak is
    // what the process adds from here on.
    const loss::dims dims{loss::model_dims_of_config(size.student), loss::model_dims_of_config(size.teacher), B, Tctx};
    const eval::MemoryPlan plan = memory_plan(size, mode, lc, dims, hf, dev);
    eval::PeakMemory measured;
    student::Transformer<float, device::Cpu> teacher(size.teacher, B, dev, student::activations::inference);
    student::Transformer<float, device::Cpu> student(size.student, B, dev, mode);
    if (!hf.empty()) {  // both from the reference script's Hugging Face directory (the same weights)
        io::hf::load(io::hf::Directory(hf), teacher);
        io::hf::load(io::hf::Directory(hf), student);
        student.init_lora(2);
    } else {
        teacher.init(1);
        student.init(2);
    }
    Loss loss(lc, dims);
    loss::Workspace<float, device::Cpu> ws(loss, dims, dev);
    optim::AdamW<float, device::Cpu> opt(student.parameters(), {.weight_decay = 0.1}, dev);
    const std::span<const Parameter<float>> params(opt.parameters());

    Rng rng(0);
    std::vector<std::int32_t> tokens(N), targets(N);
    for (auto& t : tokens) t = std::int32_t(rng.below(std::uint64_t(V)));
    for (std::size_t n = 0; n < N; ++n) targets[n] = int(n % std::size_t(T)) == T - 1 ? -1 : tokens[n + 1];
    std::vector<std::uint8_t> mask(N);
    for (std::size_t n = 0; n < N; ++n) mask[n] = targets[n] >= 0;
    loss::teacher_outputs<float> tout;
    tout.tokens = Tensor<const std::int32_t>(targets.data(), {B, T});

    double last_norm = 0;
    auto step = [&] {
        teacher.forward(tokens.data(), B, T);
        tout.logits = teacher.logits();
        student.forward(tokens.data(), B, T);
        auto ctx = ws.begin(student, tout, Tensor<const std::uint8_t>(mask.data(), {B, T}));
        const float value = loss(ctx);
        ws.finish();
        opt.zero_grad();
        student.backward(ws.d_hidden(), ws.d_attention(), ws.d_qkv());
        last_norm = optim::clip_grad_norm<float>(params, 1.0, dev);
        opt.step(1e-4);
        return value;
    };

    // Validate before timing: at init both models are near uniform, so SoftKL ≈ 0 (≥ 0 up to rounding:
    // equal models give logits a rounding apart, the teacher's attention fused) and HardCE ≈ ln V; the
    // gradient is finite.
    const float first = step();
    const double ce = loss.values()[1], kl = loss.values()[0];
    if (!(std::abs(ce - std::log(double(V))) < 0.5) || !(kl > -1e-6 && kl < 0.5) || !std::isfinite(last_norm) ||
        !(std::abs(first - (kl + ce)) < 1e-3 * (kl + ce) + 1e-4)) {
        std::fprintf(stderr,
                     "validation failed: loss %f (soft_kl %f, hard_ce %f, expected ~0 and ~ln V = %f), "
                     "gradient norm %f\n",
                     first, kl, ce, std::log(double(V)), last_norm);
        return 1;
    }
    step();

    const double dt = bench::median_seconds(steps, step);
    const double rss = bench::peak_rss_bytes(), minimum = minimum_bytes(size, mode);
    const double added = double(measured.peak_bytes()), planned = double(plan.total());

    // teacher forward + student forward and backward (2× the forward); elementwise work not counted
    // (with LoRA the frozen weights' gradients are not computed: the backward is about 1× the forward)
    const double flops = forward_flops(size.teacher, B, T) + (lora ? 2.0 : 3.0) * forward_flops(size.student, B, T);
    const double tok_s = double(N) / dt, gflops = flops / dt / 1e9;
    const double peak = bench::fp32_peak(threads);

    const auto& c = size.student;
    const auto& t = size.teacher;
    char workload[256];
    // A build for the x86-64 baseline (no -march, as a user's plain Release build): named in the row,
    // which benchmarks/run sets against the -march=native one
#if defined(__AVX2__)
    const char* build = "";
#else
    const char* build = ", plain Release flags";
#endif
    const std::string lora_name = lora ? " lora r=" + std::to_string(lora_rank) + " q,v" : "";
    const std::string context = T < Tctx ? " (context " + std::to_string(Tctx) + ")" : "";
    std::snprintf(workload, sizeof workload, "train step %s%s %s%s%s%s: V=%d T=%d%s d=%d L=%d B=%d, teacher d=%d L=%d",
                  size.name.c_str(), arch == "llama" ? " llama" : "", precision.c_str(), lora_name.c_str(),
                  checkpoint ? " checkpointed" : (maps ? " with attention maps" : ""), build, V, T, context.c_str(),
                  c.d_model, c.n_layers, B, t.d_model, t.n_layers);
    std::printf("workload: %s, SoftKL(tau=2)+HardCE, AdamW, clip 1.0, %d threads\n", workload, threads);
    std::printf(
        "distill: %.1f ms/step (median of %d), %.0f tokens/s, %.1f GFLOP/s = %.1f%% of the measured FP32 FMA "
        "peak (%.0f GFLOP/s)\n",
        dt * 1e3, steps, tok_s, gflops, 100.0 * gflops / peak, peak);
    const double kept_mib = double(student.activation_bytes() - student.backward_buffer_bytes()) / 1048576.0,
                 backward_mib = double(student.backward_buffer_bytes()) / 1048576.0;
    std::printf(
        "memory: peak RSS %.1f MiB, analytic minimum %.1f MiB (%.2fx); student: activations kept by the forward "
        "%.1f MiB, backward buffers %.1f MiB\n",
        rss / 1048576.0, minimum / 1048576.0, rss / minimum, kept_mib, backward_mib);
    std::printf("memory plan (before allocating):\n%s", plan.table().c_str());
    std::printf("memory plan %.1f MiB, measured peak the step added %.1f MiB%s: plan / measured %.3f\n",
                planned / 1048576.0, added / 1048576.0, measured.exact() ? "" : " (absolute: reset not permitted)",
                planned / added);

    bench::Result r;
    r.workload = workload;
    r.distill = tok_s;
    r.unit = "tokens/s";
    r.peak_fraction = gflops / peak;
    r.bound = "compute";
    r.threads = threads;
    r.extra = {{"ms_per_step", dt * 1e3},
               {"gflops", gflops},
               {"peak_gflops", peak},
               {"peak_rss_mib", rss / 1048576.0},
               {"minimum_mib", minimum / 1048576.0},
               {"rss_over_minimum", rss / minimum},
               {"student_activation_mib", kept_mib},
               {"student_backward_buffers_mib", backward_mib},
               {"memory_plan_mib", planned / 1048576.0},
               {"measured_peak_added_mib", added / 1048576.0},
               {"plan_over_measured", planned / added}};
    if (reference && size.name == "qwen2-0.5b") {
        // PEFT + transformers on the same shapes (the same weights with --hf), best of every Python found
        char args[512];
        std::snprintf(args, sizeof args, "bench_lora.py%s%s --batch %d --seq %d --lora %d --threads %d --steps %d%s%s",
                      hf.empty() ? "" : " --hf ", hf.c_str(), B, T, lora_rank, threads, std::max(2, steps),
                      checkpoint ? " --checkpoint" : "", bf16 ? " --bf16" : "");
        bench::Reference best;
        std::vector<std::string> pythons = bench::torch_pythons();
        if (const char* home = std::getenv("HOME")) {
            const std::string venv = std::string(home) + "/.cache/distill/torch-venv/bin/python";
            if (std::find(pythons.begin(), pythons.end(), venv) == pythons.end() && std::filesystem::exists(venv))
                pythons.push_back(venv);
        }
        for (const auto& py : pythons) {
            const auto ref = bench::run_reference(args, "tokens_per_s", py, "torch, transformers, peft");
            if (ref.value > best.value) best = ref;
        }
        if (best.value > 0) {
            std::printf("ratio distill / PyTorch+PEFT: %.2fx tokens/s\n", tok_s / best.value);
            r.pytorch = best.value;
            r.torch = best.torch;
            if (best.line.contains("peak_rss_mib")) r.extra["pytorch_peak_rss_mib"] = best.line["peak_rss_mib"];
        }
    } else if (reference && lora) {
        std::printf("reference: skipped (bench_train.py has no LoRA; the LoRA reference is qwen2-0.5b's)\n");
    } else if (reference) {
        char args[512];
        std::snprintf(args, sizeof args,
                      "bench_train.py --vocab %d --context %d --d-model %d --layers %d --heads %d --d-ff %d "
                      "--teacher-d-model %d --teacher-layers %d --teacher-heads %d --teacher-d-ff %d --batch %d "
                      "--threads %d --steps %d%s%s --arch %s%s",
                      V, T, c.d_model, c.n_layers, c.n_heads, c.d_ff, t.d_model, t.n_layers, t.n_heads, t.d_ff, B,
                      threads, std::max(3, steps), bf16 ? " --bf16" : "", checkpoint ? " --checkpoint" : "",
                      arch.c_str(), size.name == "125m" ? " --warmup 1" : "");
        // 125m: a reference step takes a minute or more (PyTorch 1.13 measured 66 s on 2 threads and
        // 158 s on 1), so one warm-up step and only the row's thread count
        const bool big = size.name == "125m";
        if (big) std::printf("reference: at %d threads only (a 1-thread step takes minutes)\n", threads);
        auto ref = bench::run_reference(args, "tokens_per_s", !big);
        // PyTorch 2's fused attention (F.scaled_dot_product_attention, transformers' default) as one more
        // setting: the faster of the two is the reference (Debian's 1.13 has none and says so)
        if (const auto sdpa = bench::run_reference(std::string(args) + " --sdpa", "tokens_per_s", !big);
            sdpa.value > ref.value)
            ref = sdpa;
        if (ref.value > 0) {
            std::printf("ratio distill / PyTorch: %.2fx tokens/s\n", tok_s / ref.value);
            r.pytorch = ref.value;
            r.torch = ref.torch;
            if (ref.line.contains("peak_rss_mib")) r.extra["pytorch_peak_rss_mib"] = ref.line["peak_rss_mib"];
        }
    }
    bench::emit(r);
    return 0;
}
