// The steady-state training step performs no heap allocation (design.md §4). A counting global
// operator new (every form) and counting malloc/calloc/realloc/aligned_alloc/posix_memalign (Eigen
// and OpenMP allocate through malloc, not new) are armed around steps 3.. of:
//
//   1. the online distillation step, piece by piece: the teacher's forward (activations::inference),
//      the student's forward, loss::Sum<SoftKL, HardCE> through a loss::Workspace, the student's
//      backward, global-norm clipping (optim::GradClipper) and an AdamW update — with GPT-2's blocks
//      and with the Llama family's (RMSNorm, rotary positions, SwiGLU, grouped-query attention);
//   2. train::Finetuner's loop over a dataset with the default cross-entropy loss, armed between
//      consecutive steps by its on_step hook (the batch, the loss callback, clipping, the update and
//      the loop's bookkeeping; no output directory, no validation);
//
// on device::Cpu with the GEMM provider this program is built with (Eigen; `alloc_step_dnnl`:
// oneDNN, fp32 and bf16). Steps 1-2 warm up (first-touch sizing of views and caches).
//
// Asserted (exit status 1 otherwise) on Eigen's GEMM: no operator new and no malloc-family call in
// any window, at 1 and 2 threads. That holds because device::Cpu's GEMM packs into per-thread buffers
// kept across calls, no kernel opens a one-thread OpenMP region (libgomp allocates a fresh team for
// each), and a loss callback's terms are held inline (train::LossTerms). Reported, not asserted
// (docs/performance.md, "Allocation in the step"): oneDNN 2.6 allocates a few small objects inside
// every primitive execution.

#include <dlfcn.h>
#include <malloc.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "distill/distill.hpp"

#pragma GCC diagnostic ignored "-Wmismatched-new-delete"  // our new and free share glibc's heap

// ---- counting -------------------------------------------------------------------------------------

namespace {
std::atomic<bool> armed{false};
std::atomic<long> news{0}, mallocs{0};
inline void count_new() {
    if (armed.load(std::memory_order_relaxed)) news.fetch_add(1, std::memory_order_relaxed);
}
inline void count_malloc() {
    if (armed.load(std::memory_order_relaxed)) mallocs.fetch_add(1, std::memory_order_relaxed);
}
void* checked(void* p) {
    if (!p) throw std::bad_alloc();
    return p;
}
}  // namespace

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);

void* malloc(std::size_t n) {
    count_malloc();
    return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t s) {
    count_malloc();
    return __libc_calloc(n, s);
}
void* realloc(void* p, std::size_t n) {
    count_malloc();
    return __libc_realloc(p, n);
}
void* aligned_alloc(std::size_t a, std::size_t n) {
    count_malloc();
    return __libc_memalign(a, n);
}
void* memalign(std::size_t a, std::size_t n) {
    count_malloc();
    return __libc_memalign(a, n);
}
int posix_memalign(void** out, std::size_t a, std::size_t n) {
    count_malloc();
    *out = __libc_memalign(a, n);
    return *out ? 0 : ENOMEM;
}
}

void* operator new(std::size_t n) {
    count_new();
    return checked(__libc_malloc(n ? n : 1));
}
void* operator new[](std::size_t n) {
    count_new();
    return checked(__libc_malloc(n ? n : 1));
}
void* operator new(std::size_t n, std::align_val_t a) {
    count_new();
    return checked(__libc_memalign(std::size_t(a), n ? n : 1));
}
void* operator new[](std::size_t n, std::align_val_t a) {
    count_new();
    return checked(__libc_memalign(std::size_t(a), n ? n : 1));
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    count_new();
    return __libc_malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
    count_new();
    return __libc_malloc(n ? n : 1);
}
void operator delete(void* p) noexcept {
    std::free(p);
}
void operator delete[](void* p) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
    std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
    std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
    std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
    std::free(p);
}

// ---- the steps ------------------------------------------------------------------------------------

namespace {

using namespace distill;

int failures = 0;

struct Window {
    long news = 0, mallocs = 0;
};

Window measure(auto&& f) {
    news = 0;
    mallocs = 0;
    armed = true;
    f();
    armed = false;
    return {news.load(), mallocs.load()};
}

void report(const std::string& what, const std::vector<Window>& windows, bool enforce) {
    long n = 0, m = 0;
    for (const auto& w : windows) {
        n += w.news;
        m += w.mallocs;
    }
    std::printf("%-64s %zu steps: %ld operator new, %ld malloc-family calls\n", what.c_str(), windows.size(), n, m);
    if (enforce && (n || m)) {
        ++failures;
        std::printf("    FAIL: the steady-state step allocated\n");
    }
    if (n || m) {
        for (std::size_t i = 0; i < windows.size(); ++i)
            if (i < 2 || i + 1 == windows.size())
                std::printf("    step %zu: %ld new, %ld malloc\n", i + 3, windows[i].news, windows[i].mallocs);
    }
}

void distillation_step(device::Cpu dev, const std::string& what, bool llama = false) {
    student::TransformerConfig sc{
        .vocab_size = 64, .context_length = 32, .d_model = 64, .n_layers = 2, .n_heads = 2, .d_ff = 256};
    if (llama) {  // RMSNorm, rotary positions, SwiGLU, grouped-query attention, untied head
        sc.norm = "rmsnorm";
        sc.positions = "rope";
        sc.mlp = "swiglu";
        sc.n_kv_heads = 1;
        sc.qkv_bias = sc.proj_bias = sc.mlp_bias = sc.tie_embeddings = false;
    }
    student::TransformerConfig tc = sc;
    tc.d_model = 128;
    tc.n_layers = 3;
    tc.d_ff = 512;
    const int B = 4, T = sc.context_length;
    student::Transformer<float, device::Cpu> teacher(tc, B, dev, student::activations::inference);
    student::Transformer<float, device::Cpu> student(sc, B, dev);
    teacher.init(1);
    student.init(2);
    using Loss = loss::Sum<loss::SoftKL, loss::HardCE>;
    Loss::config lc;
    lc.get<0>().config.temperature = 2.0;
    const loss::dims dims{loss::model_dims_of(student), loss::model_dims_of(teacher), B, T};
    Loss loss(lc, dims);
    loss::Workspace<float, device::Cpu> ws(loss, dims, dev);
    optim::AdamW<float, device::Cpu> opt(student.parameters(), {.weight_decay = 0.1}, dev);
    optim::GradClipper<float> clip(opt.parameters());
    std::vector<std::int32_t> tokens(std::size_t(B) * T), targets(tokens.size());
    std::vector<std::uint8_t> mask(tokens.size());
    Rng rng(3);
    for (auto& t : tokens) t = std::int32_t(rng.below(64));
    for (std::size_t n = 0; n < tokens.size(); ++n) {
        targets[n] = (n + 1) % std::size_t(T) == 0 ? -1 : tokens[n + 1];
        mask[n] = targets[n] >= 0;
    }
    loss::teacher_outputs<float> tout;
    tout.tokens = Tensor<const std::int32_t>(targets.data(), {B, T});
    std::vector<Window> windows;
    for (int step = 1; step <= 8; ++step) {
        const Window w = measure([&] {
            teacher.forward(tokens.data(), B, T);
            tout.logits = teacher.logits();
            student.forward(tokens.data(), B, T);
            auto ctx = ws.begin(student, tout, Tensor<const std::uint8_t>(mask.data(), {B, T}));
            (void)loss(ctx);
            ws.finish();
            opt.zero_grad();
            student.backward(ws.d_hidden(), ws.d_attention(), ws.d_qkv());
            (void)clip(1.0, dev);
            opt.step(1e-3);
        });
        if (step > 2) windows.push_back(w);
    }
    report(std::string("distillation step") + (llama ? " (Llama blocks)" : "") + ", " + what, windows,
           !device::has_bf16_gemm);
}

void finetune_loop(device::Cpu dev, const std::string& what) {
    const student::TransformerConfig sc{
        .vocab_size = 263, .context_length = 32, .d_model = 64, .n_layers = 2, .n_heads = 2, .d_ff = 256};
    student::Transformer<float, device::Cpu> model(sc, 4, dev);
    model.init(5);
    data::SequenceDataset train;
    Rng rng(9);
    for (int i = 0; i < 64; ++i) {
        std::vector<std::int32_t> prompt(4), response(12 + std::size_t(i % 9));
        for (auto& t : prompt) t = std::int32_t(rng.below(256));
        for (auto& t : response) t = std::int32_t(rng.below(256));
        train.add_prompt_response(prompt, response);
    }
    optim::AdamW<float, device::Cpu> opt(model.parameters(), {}, dev);
    optim::Schedule schedule({.learning_rate = 1e-3}, 12);
    train::FinetuneOptions<float> options;
    options.progress = nullptr;
    std::vector<Window> windows;
    options.on_step = [&](const train::StepReport& r) {
        armed = false;
        if (r.step > 2) windows.push_back({news.load(), mallocs.load()});
        news = 0;
        mallocs = 0;
        if (r.step >= 2) armed = true;  // from the end of step 2 to the end of step 3, and so on
    };
    train::FinetuneConfig cfg{.max_steps = 12, .batch_size = 4, .log_every = 0, .quiet = true};
    train::finetune(model, opt, schedule, train, nullptr, cfg, train::CrossEntropy{}, std::move(options));
    armed = false;
    report("train::Finetuner loop step (cross-entropy), " + what, windows, !device::has_bf16_gemm);
}

}  // namespace

int main() {
    std::string gemm = device::has_bf16_gemm ? "oneDNN GEMM" : "Eigen GEMM";
    for (int threads : {1, 2}) {
        const std::string what = gemm + ", fp32, " + std::to_string(threads) + " thread" + (threads > 1 ? "s" : "");
        distillation_step(device::Cpu(threads), what);
        distillation_step(device::Cpu(threads), what, true);
        finetune_loop(device::Cpu(threads), what);
        if (device::Cpu::bf16_supported())
            distillation_step(device::Cpu(threads, device::precision::bf16),
                              gemm + ", bf16, " + std::to_string(threads) + " thread" + (threads > 1 ? "s" : ""));
        else
            std::printf("bf16 step skipped: %s\n", device::Cpu::bf16_unsupported_reason().c_str());
    }
    if (failures) std::printf("FAILED: %d window(s) allocated\n", failures);
    return failures ? 1 : 0;
}
