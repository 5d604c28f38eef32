// Data-parallel finetuning under `mpirun -np 2` (ctest runs it so): 20 AdamW steps of a small
// Transformer on the noise task with a global batch of 2 micro-batches x 4 sequences.
//  - the 2-rank run's parameters equal a one-process run with the same global batch: ||a - b|| / ||b||
//    <= 1e-5 (fp32; not element by element: the sums differ in rounding, and AdamW's g/sqrt(v) turns
//    a rounding difference of a near-zero gradient into a learning-rate-sized step);
//  - two 2-rank runs are bit-identical, on both ranks, and the ranks hold the same weights;
//  - a 2-rank run stopped at step 10 and resumed from its checkpoint ends with the same weights as
//    the uninterrupted run (rank 0 writes, both ranks read);
//  - grad_accum not a multiple of the world size is refused, naming the key;
//  - MPI refuses a buffer said to be in device memory (it sums host memory only; NCCL sums device::Cuda's).
// Prints one line per check; exit status 0 when all pass.

#include <cmath>
#include <cstdio>
#include <filesystem>

#include <unistd.h>
#include <string>
#include <vector>

#include "distill/device/cpu.hpp"
#include "distill/optim/adam.hpp"
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

// The weights after training with `comm` (null: alone); `dir` non-empty: checkpoints there.
std::vector<float> train_run(parallel::Communicator* comm, const std::string& dir = "", std::int64_t stop_after = 0) {
    testing::NoiseTask task(48, 8);
    Model model(testing::NoiseTask::model_config(), 4, device::Cpu(1));
    model.init(3);
    optim::AdamW<float, device::Cpu> opt(model.parameters(), {.weight_decay = 0.01}, device::Cpu(1));
    train::FinetuneConfig cfg{.max_steps = 20,
                              .batch_size = 4,
                              .grad_accum = 2,
                              .grad_clip = 1.0,
                              .seed = 7,
                              .checkpoint_every = 5,
                              .output_dir = dir,
                              .quiet = true};
    const optim::Schedule schedule({.learning_rate = 3e-3, .warmup_steps = 2, .decay = "cosine"},
                                   train::total_steps(cfg, task.train.size()));
    train::FinetuneOptions<float> options;
    options.progress = nullptr;
    options.communicator = comm;
    if (stop_after > 0)
        options.on_step = [&](const train::StepReport& r) {
            if (r.step == stop_after) throw Stop{};
        };
    try {
        train::finetune(model, opt, schedule, task.train, nullptr, cfg, train::CrossEntropy{}, options);
    } catch (const Stop&) {
    }
    return {model.parameter_data(), model.parameter_data() + model.arena_size()};
}

}  // namespace

int main(int argc, char** argv) {
    parallel::Mpi comm(&argc, &argv);
    const int rank = comm.rank();
    if (comm.size() != 2) {
        if (rank == 0) std::fprintf(stderr, "run under mpirun -np 2 (world size %d)\n", comm.size());
        return 2;
    }
    const std::vector<float> a = train_run(&comm), b = train_run(&comm);
    check(a == b, "two 2-rank runs are bit-identical", rank);
    std::vector<float> other = a;
    comm.broadcast(other.data(), other.size() * sizeof(float), 1);
    check(other == a, "both ranks hold the same weights", rank);

    {  // host memory goes to MPI; device memory is refused before any communication
        parallel::Communicator& c = comm;
        std::vector<float> v{1.0f, 2.0f};
        c.all_reduce_sum(memory_space::host, v.data(), v.size());
        std::string message;
        try {
            c.all_reduce_sum(memory_space::cuda, v.data(), v.size());
        } catch (const error& e) {
            message = e.what();
        }
        check(v == std::vector<float>{2.0f, 4.0f} && !c.reaches(memory_space::cuda) &&
                  message.starts_with("parallel::mpi: this communicator sums buffers in host memory only"),
              "MPI sums host memory and refuses device memory (" + message + ")", rank);
    }

    // one process with the same global batch (rank 0 alone; rank 1 waits)
    double rel = 0;
    if (rank == 0) rel = relative(a, train_run(nullptr));
    comm.broadcast(&rel, sizeof rel, 0);
    char what[96];
    std::snprintf(what, sizeof what, "2 ranks equal 1 process (||a - b|| / ||b|| = %.2e)", rel);
    check(rel <= 1e-5, what, rank);

    // interrupted at step 10 (after its checkpoint), resumed: the uninterrupted run's weights
    const std::string dir = (std::filesystem::temp_directory_path() /
                             ("distill-mpi-resume-" + comm.broadcast_string(std::to_string(::getpid()))))
                                .string();
    if (rank == 0) std::filesystem::remove_all(dir);
    comm.barrier();
    (void)train_run(&comm, dir, 10);
    comm.barrier();
    const std::vector<float> resumed = train_run(&comm, dir);
    check(resumed == a, "a run interrupted at step 10 resumes to the same weights", rank);
    comm.barrier();
    if (rank == 0) std::filesystem::remove_all(dir);

    // an odd grad_accum is refused before anything runs
    try {
        testing::NoiseTask task(8, 1);
        Model model(testing::NoiseTask::model_config(), 4, device::Cpu(1));
        optim::AdamW<float, device::Cpu> opt(model.parameters());
        train::FinetuneOptions<float> options;
        options.communicator = &comm;
        train::Finetuner f(model, opt, optim::Schedule({}, 10), task.train, nullptr,
                           {.max_steps = 10, .batch_size = 4, .grad_accum = 3, .quiet = true}, train::CrossEntropy{},
                           options);
        check(false, "grad_accum 3 on 2 ranks refused", rank);
    } catch (const config_error& e) {
        check(std::string(e.what()).starts_with("training.grad_accum: is 3, but the 2 ranks"),
              std::string("grad_accum 3 on 2 ranks refused: ") + e.what(), rank);
    }
    const double bad = double(failures);
    double total = bad;
    comm.all_reduce_sum(&total, 1);
    return total == 0 ? 0 : 1;
}
