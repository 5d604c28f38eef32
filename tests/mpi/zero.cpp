// ZeRO-1 under `mpirun -np 2` (ctest `mpi_zero`): the optimizer state sharded over the ranks
// (optim::Shard, train/zero.hpp), 20 steps of a small Transformer on the noise task, global batch of
// 2 micro-batches x 4 sequences, as tests/mpi/data_parallel.cpp.
//  - ZeRO-1's parameters equal plain data parallelism's bit for bit (AdamW with weight decay, whose
//    groups split inside a shard; SGD with momentum): the gradient all-reduce is the same and the
//    update is element-wise, so a rank updating a slice computes the same bits;
//  - each rank holds about half of the optimizer state (bytes);
//  - a ZeRO-1 run stopped at step 10 resumes to the same weights (each rank reads its shard);
//  - its step-10 checkpoint resumed by one process alone (the two shards re-sliced into one state)
//    ends bit-identical to one process resuming plain data parallelism's step-10 checkpoint, and a
//    ZeRO-1 run resuming plain data parallelism's checkpoint (state sliced) ends as the uninterrupted run.
// Prints one line per check; exit status 0 when all pass.

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include "distill/device/cpu.hpp"
#include "distill/optim/adam.hpp"
#include "distill/optim/sgd.hpp"
#include "distill/parallel/mpi.hpp"
#include "distill/train/finetune.hpp"
#include "mpi/checks.hpp"
#include "training_task.hpp"

using namespace distill;
using Model = student::Transformer<float, device::Cpu>;

using mpi_checks::check;
using mpi_checks::failures;
using mpi_checks::relative;

namespace {

struct Stop {};  // thrown by a hook: a run interrupted after a step

struct Run {
    parallel::Communicator* comm = nullptr;  // null: alone
    bool zero = false;
    bool sgd = false;
    std::string dir{};
    std::int64_t stop_after = 0;
};

struct Result {
    std::vector<float> weights;
    std::size_t state_bytes = 0;
};

template <class Opt>
Result train_with(const Run& run, Model& model, Opt& opt, const testing::NoiseTask& task) {
    train::FinetuneConfig cfg{.max_steps = 20,
                              .batch_size = 4,
                              .grad_accum = 2,
                              .grad_clip = 1.0,
                              .seed = 7,
                              .checkpoint_every = 5,
                              .output_dir = run.dir,
                              .quiet = true};
    const optim::Schedule schedule({.learning_rate = 3e-3, .warmup_steps = 2, .decay = "cosine"},
                                   train::total_steps(cfg, task.train.size()));
    train::FinetuneOptions<float> options;
    options.progress = nullptr;
    options.communicator = run.comm;
    options.zero = run.zero ? 1 : 0;
    if (run.stop_after > 0)
        options.on_step = [&](const train::StepReport& r) {
            if (r.step == run.stop_after) throw Stop{};
        };
    try {
        train::finetune(model, opt, schedule, task.train, nullptr, cfg, train::CrossEntropy{}, options);
    } catch (const Stop&) {
    }
    return {{model.parameter_data(), model.parameter_data() + model.arena_size()}, opt.state_bytes()};
}

Result train_run(const Run& run) {
    testing::NoiseTask task(48, 8);
    Model model(testing::NoiseTask::model_config(), 4, device::Cpu(1));
    model.init(3);
    const auto params = model.parameters();
    optim::Shard shard;
    if (run.zero && run.comm)
        shard = optim::Shard::of(optim::total_elements<float>(params), run.comm->rank(), run.comm->size());
    if (run.sgd) {
        optim::Sgd<float, device::Cpu> opt(params, {.momentum = 0.9, .weight_decay = 0.01}, device::Cpu(1), shard);
        return train_with(run, model, opt, task);
    }
    optim::AdamW<float, device::Cpu> opt(params, {.weight_decay = 0.01}, device::Cpu(1), shard);
    return train_with(run, model, opt, task);
}

}  // namespace

int main(int argc, char** argv) {
    parallel::Mpi comm(&argc, &argv);
    const int rank = comm.rank();
    if (comm.size() != 2) {
        if (rank == 0) std::fprintf(stderr, "run under mpirun -np 2 (world size %d)\n", comm.size());
        return 2;
    }
    const Result plain = train_run({.comm = &comm});
    const Result zero = train_run({.comm = &comm, .zero = true});
    std::vector<float> other = zero.weights;
    comm.broadcast(other.data(), other.size() * sizeof(float), 1);
    check(zero.weights == plain.weights && other == zero.weights,
          "ZeRO-1 AdamW equals plain data parallelism bit for bit, on both ranks", rank);
    check(train_run({.comm = &comm, .zero = true, .sgd = true}).weights ==
              train_run({.comm = &comm, .sgd = true}).weights,
          "ZeRO-1 SGD (momentum, weight decay) equals plain data parallelism bit for bit", rank);

    std::vector<double> b(2, 0.0);  // each rank's state bytes
    b[std::size_t(rank)] = double(zero.state_bytes);
    comm.all_reduce_sum(b.data(), 2);
    const double full = double(plain.state_bytes);
    char what[200];
    std::snprintf(what, sizeof what, "optimizer state per rank %.0f and %.0f bytes of %.0f (%.3f, %.3f)", b[0], b[1],
                  full, b[0] / full, b[1] / full);
    check(std::abs(b[0] / full - 0.5) < 0.01 && std::abs(b[1] / full - 0.5) < 0.01, what, rank);

    const auto tmp = std::filesystem::temp_directory_path() /
                     ("distill-mpi-zero-" + comm.broadcast_string(std::to_string(::getpid())));
    const std::string zdir = (tmp / "zero").string(), pdir = (tmp / "plain").string();
    if (rank == 0) std::filesystem::remove_all(tmp);
    comm.barrier();
    (void)train_run({.comm = &comm, .zero = true, .dir = zdir, .stop_after = 10});
    (void)train_run({.comm = &comm, .dir = pdir, .stop_after = 10});
    comm.barrier();
    bool shards = false;
    if (rank == 0)
        shards = std::filesystem::exists(tmp / "zero/checkpoints/step-00000010/optimizer-shard-1-of-2.safetensors");
    comm.broadcast(&shards, sizeof shards, 0);
    check(shards, "the step-10 checkpoint holds both ranks' shards", rank);
    // copies for the one-process resumes, before the 2-rank resumes move on
    if (rank == 0) {
        std::filesystem::copy(zdir, (tmp / "zero1").string(), std::filesystem::copy_options::recursive);
        std::filesystem::copy(pdir, (tmp / "plain1").string(), std::filesystem::copy_options::recursive);
        std::filesystem::copy(pdir, (tmp / "plain2").string(), std::filesystem::copy_options::recursive);
    }
    comm.barrier();
    check(train_run({.comm = &comm, .zero = true, .dir = zdir}).weights == zero.weights,
          "a ZeRO-1 run interrupted at step 10 resumes to the same weights", rank);
    check(train_run({.comm = &comm, .zero = true, .dir = (tmp / "plain2").string()}).weights == plain.weights,
          "ZeRO-1 resuming plain data parallelism's step-10 checkpoint ends as the uninterrupted run", rank);
    double rel = -1;
    bool same = false;
    if (rank == 0) {  // one process alone re-shards the 2-rank checkpoint
        const auto one = train_run({.dir = (tmp / "zero1").string()}).weights;
        same = one == train_run({.dir = (tmp / "plain1").string()}).weights;
        rel = relative(one, zero.weights);
    }
    comm.broadcast(&same, sizeof same, 0);
    comm.broadcast(&rel, sizeof rel, 0);
    check(same, "one process resuming the 2-rank ZeRO-1 checkpoint equals one process resuming the plain one", rank);
    std::snprintf(what, sizeof what,
                  "one process resuming the ZeRO-1 checkpoint is the 2-rank run's to ||a - b|| / ||b|| = %.2e", rel);
    check(rel >= 0 && rel <= 1e-5, what, rank);
    comm.barrier();
    if (rank == 0) std::filesystem::remove_all(tmp);

    double total = double(failures);
    comm.all_reduce_sum(&total, 1);
    return total == 0 ? 0 : 1;
}
