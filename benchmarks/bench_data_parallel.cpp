// The data-parallel train step (issue 20): train::finetune over the medium online-distillation step of
// bench_train (student V=256 T=256 d=256 L=4, teacher d=512 L=8; SoftKL(tau=2) + HardCE, AdamW with
// weight decay 0.1, clip 1.0), global batch 8 sequences as 2 micro-batches of 4 (grad_accum 2, so that
// 2 ranks share each step), run
//   - under `mpirun -np N` (parallel::Mpi): every rank computes its micro-batches, the loop sums the
//     gradients over the ranks; then again with ZeRO-1 (optimizer state sharded, parameters gathered);
//   - alone (parallel::Single): one process computes both micro-batches.
// The communicator is wrapped in one that times every collective call the loop makes (gradient
// all-reduce, the loss sums, ZeRO-1's all-gather), so the rows say which fraction of the step is spent
// inside communication — waiting for the slower rank included. Each row also gives the optimizer
// state bytes each rank holds. Median of --steps steps after 2 warm-up steps. Prints RESULT lines (rank 0).
//
//   mpirun -np 2 bench_data_parallel --threads 1 [--steps 5]      # 2 ranks x 1 thread, plain and ZeRO-1
//   bench_data_parallel --threads 2 [--steps 5]                   # 1 process x 2 threads

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "distill/distill.hpp"
#include "distill/parallel/mpi.hpp"

namespace {

using namespace distill;
using Model = student::Transformer<float, device::Cpu>;
using Loss = loss::Sum<loss::SoftKL, loss::HardCE>;

student::TransformerConfig gpt(int V, int T, int d, int L) {
    return {.vocab_size = V, .context_length = T, .d_model = d, .n_layers = L, .n_heads = d / 64, .d_ff = 4 * d};
}

/// Forwards to another communicator and adds the seconds spent inside its collective calls.
class Timed final : public parallel::Communicator {
public:
    explicit Timed(parallel::Communicator& inner) : c_(inner) {}
    double seconds = 0;
    int rank() const noexcept override { return c_.rank(); }
    int size() const noexcept override { return c_.size(); }
    void all_reduce_sum(float* d, std::size_t n) override {
        timed([&] { c_.all_reduce_sum(d, n); });
    }
    void all_reduce_sum(double* d, std::size_t n) override {
        timed([&] { c_.all_reduce_sum(d, n); });
    }
    void all_gather(float* d, std::span<const std::size_t> n) override {
        timed([&] { c_.all_gather(d, n); });
    }
    void all_gather(double* d, std::span<const std::size_t> n) override {
        timed([&] { c_.all_gather(d, n); });
    }
    std::int64_t all_reduce_max(std::int64_t v) override {
        std::int64_t out = 0;
        timed([&] { out = c_.all_reduce_max(v); });
        return out;
    }
    void broadcast(void* d, std::size_t bytes, int root) override {
        timed([&] { c_.broadcast(d, bytes, root); });
    }
    void barrier() override {
        timed([&] { c_.barrier(); });
    }
    [[noreturn]] void abort(int code) override {
        c_.abort(code);
        std::abort();  // not reached: abort() does not return
    }
    std::string name() const override { return c_.name(); }

private:
    template <class F>
    void timed(F&& f) {
        const double t0 = bench::now();
        f();
        seconds += bench::now() - t0;
    }
    parallel::Communicator& c_;
};

/// bench_train's step as a finetune loss callback: the teacher's forward, the student's forward,
/// SoftKL + HardCE on the batch's targets, the student's backward.
struct OnlineDistill {
    Model* teacher;
    Loss* loss;
    loss::Workspace<float, device::Cpu>* ws;
    std::vector<std::uint8_t> mask{};
    loss::teacher_outputs<float> out{};

    train::LossValues operator()(Model& s, const data::Batch& b, train::pass p) {
        const int B = b.batch, T = b.length;
        const std::size_t N = std::size_t(B) * std::size_t(T);
        teacher->forward(b.tokens.data(), B, T);
        out.logits = teacher->logits();
        out.tokens = Tensor<const std::int32_t>(b.targets.data(), {B, T});
        s.forward(b.tokens.data(), B, T);
        mask.resize(N);
        for (std::size_t n = 0; n < N; ++n) mask[n] = b.targets[n] >= 0;
        auto ctx = ws->begin(s, out, Tensor<const std::uint8_t>(mask.data(), {B, T}));
        const double total = double((*loss)(ctx));
        ws->finish();
        if (p == train::pass::train) s.backward(ws->d_hidden(), ws->d_attention(), ws->d_qkv());
        return {total, {{"soft_kl", loss->values()[0]}, {"hard_ce", loss->values()[1]}}};
    }
};

struct Measured {
    double step_s = 0, comm_s = 0;  // medians over the timed steps, this rank
    std::size_t state_bytes = 0;    // this rank's optimizer state
    double loss = 0;
};

Measured measure(parallel::Communicator& comm, int threads, int steps, bool zero) {
    const int micro = 4, accum = 2, warmup = 2;
    const auto sc = gpt(256, 256, 256, 4), tc = gpt(256, 256, 512, 8);
    const int T = sc.context_length;
    device::Cpu dev(threads);
    Model teacher(tc, micro, dev, student::activations::inference);
    Model student(sc, micro, dev, student::activations::training);
    teacher.init(1);
    student.init(2);
    Loss::config lc;
    lc.get<0>().config.temperature = 2.0;
    const loss::dims dims{loss::model_dims_of(student), loss::model_dims_of(teacher), micro, T};
    Loss loss(lc, dims);
    loss::Workspace<float, device::Cpu> ws(loss, dims, dev);
    const auto params = student.parameters();
    optim::Shard shard;
    if (zero) shard = optim::Shard::of(optim::total_elements<float>(params), comm.rank(), comm.size());
    optim::AdamW<float, device::Cpu> opt(params, {.weight_decay = 0.1}, dev, shard);

    // random sequences of the full context, as bench_train's batch: one epoch covers every step
    const int total_steps = warmup + steps;
    data::SequenceDataset train(0, T);
    Rng rng(0);
    for (int i = 0; i < total_steps * micro * accum; ++i) {
        std::vector<std::int32_t> tokens(static_cast<std::size_t>(T));
        for (auto& t : tokens) t = std::int32_t(rng.below(std::uint64_t(sc.vocab_size)));
        std::vector<std::uint8_t> mask(tokens.size(), 1);
        mask[0] = 0;
        train.add(std::move(tokens), std::move(mask));
    }
    train::FinetuneConfig cfg{
        .max_steps = total_steps, .batch_size = micro, .grad_accum = accum, .grad_clip = 1.0, .seed = 7, .quiet = true};
    const optim::Schedule schedule({.learning_rate = 1e-4}, train::total_steps(cfg, train.size()));
    Timed timed(comm);
    train::FinetuneOptions<float> options;
    options.progress = nullptr;
    options.communicator = &timed;
    options.zero = zero ? 1 : 0;
    std::vector<double> step_s, comm_s;
    double t_last = 0, c_last = 0, last_loss = 0;
    options.on_step = [&](const train::StepReport& r) {
        const double t = bench::now();
        if (r.step > warmup) {
            step_s.push_back(t - t_last);
            comm_s.push_back(timed.seconds - c_last);
        }
        t_last = t;
        c_last = timed.seconds;
        last_loss = r.loss;
    };
    comm.barrier();
    t_last = bench::now();
    train::finetune(student, opt, schedule, train, nullptr, cfg, OnlineDistill{&teacher, &loss, &ws}, options);
    std::sort(step_s.begin(), step_s.end());
    std::sort(comm_s.begin(), comm_s.end());
    return {step_s[step_s.size() / 2], comm_s[comm_s.size() / 2], opt.state_bytes(), last_loss};
}

}  // namespace

int main(int argc, char** argv) {
    std::unique_ptr<parallel::Communicator> mpi;
    if (parallel::launched_by_mpi()) mpi = std::make_unique<parallel::Mpi>(&argc, &argv);
    parallel::Communicator& comm = mpi ? *mpi : parallel::single();
    int threads = 1, steps = 5;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc)
            threads = std::max(1, std::stoi(argv[++i]));
        else if (a == "--steps" && i + 1 < argc)
            steps = std::max(1, std::stoi(argv[++i]));
        else {
            if (comm.root()) std::fprintf(stderr, "unknown argument %s (--threads N, --steps N)\n", a.c_str());
            return 2;
        }
    }
    const int N = comm.size();
    const double global_tokens = 8.0 * 256;
    std::vector<bool> modes{false};
    if (N > 1) modes.push_back(true);  // ZeRO-1 changes nothing in one process
    for (const bool zero : modes) {
        const Measured m = measure(comm, threads, steps, zero);
        // every rank's figures, for the slowest rank and the per-rank state
        std::vector<double> all(std::size_t(3 * N), 0.0);
        all[std::size_t(3 * comm.rank())] = m.step_s;
        all[std::size_t(3 * comm.rank() + 1)] = m.comm_s;
        all[std::size_t(3 * comm.rank() + 2)] = double(m.state_bytes);
        comm.all_reduce_sum(all.data(), all.size());
        if (!comm.root()) continue;
        double step = 0, comm_max = 0;
        std::vector<double> state;
        for (int r = 0; r < N; ++r) {
            step = std::max(step, all[std::size_t(3 * r)]);
            comm_max = std::max(comm_max, all[std::size_t(3 * r + 1)]);
            state.push_back(all[std::size_t(3 * r + 2)]);
        }
        const double comm0 = all[1], step0 = all[0];
        char workload[200];
        std::snprintf(workload, sizeof workload,
                      "train step medium data-parallel%s, %d %s x %d thread%s: finetune, global batch 2 x 4",
                      zero ? " ZeRO-1" : "", N, N > 1 ? "ranks (MPI)" : "process", threads, threads > 1 ? "s" : "");
        std::printf("%s\n", workload);
        std::printf(
            "  %.1f ms/step (median of %d, slowest rank), %.0f tokens/s; rank 0: %.1f ms of it in collective "
            "calls (%.1f%%); slowest rank in calls %.1f ms\n",
            step * 1e3, steps, global_tokens / step, comm0 * 1e3, 100.0 * comm0 / step0, comm_max * 1e3);
        std::printf("  optimizer state per rank:");
        for (double s : state) std::printf(" %.0f", s);
        std::printf(" bytes (loss at the last step %.4f)\n", m.loss);
        bench::Result r;
        r.workload = workload;
        r.distill = global_tokens / step;
        r.unit = "tokens/s";
        r.bound = "compute";
        r.threads = threads;
        r.extra = {{"ranks", N},
                   {"zero", zero ? 1 : 0},
                   {"ms_per_step", step * 1e3},
                   {"rank0_comm_ms_per_step", comm0 * 1e3},
                   {"rank0_comm_fraction", comm0 / step0},
                   {"max_comm_ms_per_step", comm_max * 1e3},
                   {"optimizer_state_bytes_per_rank", state},
                   {"last_loss", m.loss}};
        bench::emit(r);
    }
    return 0;
}
