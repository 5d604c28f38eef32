// Data parallelism on GPUs (ctest `mpi_nccl`, under `mpirun -np 2`, one GPU per rank): parallel::Nccl
// over parallel::Mpi.
//  - NCCL's in-place sum of a device buffer equals MPI's sum of the same host data bit for bit (two
//    ranks: each element is one addition, a + b, the same either way), float and double;
//  - NCCL's all-gather of uneven blocks gives every rank every block as its owner wrote it;
//  - finetune of a device::Cuda student (20 AdamW steps of the noise task, global batch 2 x 4) over 2
//    ranks equals one process with the same global batch to ||a - b|| / ||b|| <= 1e-5 (the bound of
//    tests/mpi/data_parallel.cpp), both ranks hold the same weights, and two 2-rank runs are
//    bit-identical;
//  - a Cuda student with the MPI communicator is refused (`device`), and so is ZeRO-1 with NCCL (`zero`).
// Exit status: 0 when all pass, 1 on a failure, 77 (ctest: skipped) when a rank has no GPU of its own
// (fewer visible GPUs than ranks on its node, or none).

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "distill/detail/rng.hpp"
#include "distill/device/cuda.hpp"
#include "distill/optim/adam.hpp"
#include "distill/parallel/mpi.hpp"
#include "distill/parallel/nccl.hpp"
#include "distill/train/finetune.hpp"
#include "mpi/checks.hpp"
#include "training_task.hpp"

using namespace distill;
using Model = student::Transformer<float, device::Cuda>;

using mpi_checks::check;
using mpi_checks::failures;
using mpi_checks::relative;

namespace {

template <class T>
std::vector<T> to_host(const T* device, std::size_t n) {
    std::vector<T> out(n);
    cudaDeviceSynchronize();  // device::Cuda writes on its own stream
    cudaMemcpy(out.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost);
    return out;
}

template <class T>
T* to_device(const std::vector<T>& host) {
    T* p = nullptr;
    cudaMalloc(&p, host.size() * sizeof(T));
    cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
    return p;
}

template <class T>
bool nccl_sum_equals_mpi(parallel::Nccl& nccl, parallel::Mpi& mpi, std::size_t n) {
    Rng rng(std::uint64_t(11 + mpi.rank()));
    std::vector<T> host(n);
    for (auto& x : host) x = T(rng.normal());
    T* dev = to_device(host);
    mpi.all_reduce_sum(host.data(), n);
    parallel::Communicator& c = nccl;
    c.all_reduce_sum(memory_space::cuda, dev, n);
    const bool same = to_host(dev, n) == host;
    cudaFree(dev);
    return same;
}

std::vector<float> train_run(parallel::Communicator* comm, int gpu, int zero = 0) {
    testing::NoiseTask task(48, 8);
    device::Cuda dev(gpu);
    Model model(testing::NoiseTask::model_config(), 4, dev);
    model.init(3);
    const auto params = model.parameters();
    optim::Shard shard;
    if (zero && comm) shard = optim::Shard::of(optim::total_elements<float>(params), comm->rank(), comm->size());
    optim::AdamW<float, device::Cuda> opt(params, {.weight_decay = 0.01}, dev, shard);
    train::FinetuneConfig cfg{
        .max_steps = 20, .batch_size = 4, .grad_accum = 2, .grad_clip = 1.0, .seed = 7, .quiet = true};
    const optim::Schedule schedule({.learning_rate = 3e-3, .warmup_steps = 2, .decay = "cosine"},
                                   train::total_steps(cfg, task.train.size()));
    train::FinetuneOptions<float> options;
    options.progress = nullptr;
    options.communicator = comm;
    options.zero = zero;
    train::finetune(model, opt, schedule, task.train, nullptr, cfg, train::CrossEntropy{}, options);
    return to_host(model.parameter_data(), model.arena_size());
}

// Whether `f` throws config_error naming `field`.
template <class F>
bool refused(F&& f, const std::string& field) {
    try {
        f();
    } catch (const config_error& e) {
        return e.field() == field;
    }
    return false;
}

}  // namespace

int main(int argc, char** argv) {
    parallel::Mpi mpi(&argc, &argv);
    const int rank = mpi.rank();
    if (mpi.size() != 2) {
        if (rank == 0) std::fprintf(stderr, "run under mpirun -np 2 (world size %d)\n", mpi.size());
        return 2;
    }
    // one GPU per rank, or every rank skips
    int local = rank;
    if (const char* s = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")) local = std::atoi(s);
    const bool mine = local >= device::Cuda::visible_devices();
    if (mpi.all_reduce_max(mine ? 1 : 0)) {
        if (rank == 0)
            std::printf("SKIP: a rank has no GPU of its own (%d visible)\n", device::Cuda::visible_devices());
        return 77;
    }
    parallel::Nccl nccl(mpi);

    check(nccl_sum_equals_mpi<float>(nccl, mpi, (std::size_t(1) << 20) + 3), "NCCL sum (float) equals MPI sum", rank);
    check(nccl_sum_equals_mpi<double>(nccl, mpi, 1000), "NCCL sum (double) equals MPI sum", rank);

    {  // uneven blocks: rank 0 owns 5 elements, rank 1 owns 3
        const std::vector<std::size_t> counts{5, 3};
        std::vector<float> host(8, -1.0f);
        for (std::size_t i = 0; i < 8; ++i)
            if ((i < 5) == (rank == 0)) host[i] = float(i);
        float* dev = to_device(host);
        parallel::Communicator& c = nccl;
        c.all_gather(memory_space::cuda, dev, counts);
        const auto got = to_host(dev, 8);
        cudaFree(dev);
        bool ok = true;
        for (std::size_t i = 0; i < 8; ++i) ok = ok && got[i] == float(i);
        check(mpi.all_reduce_max(ok ? 0 : 1) == 0, "NCCL all-gather of uneven blocks", rank);
    }

    const std::vector<float> a = train_run(&nccl, nccl.gpu()), b = train_run(&nccl, nccl.gpu());
    check(a == b, "two 2-rank Cuda runs are bit-identical", rank);
    std::vector<float> other = a;
    mpi.broadcast(other.data(), other.size() * sizeof(float), 1);
    check(other == a, "both ranks hold the same weights", rank);
    double rel = 0;
    if (rank == 0) rel = relative(a, train_run(nullptr, nccl.gpu()));  // one process, same global batch
    mpi.broadcast(&rel, sizeof rel, 0);
    char what[120];
    std::snprintf(what, sizeof what, "2 Cuda ranks (NCCL) equal 1 process (||a - b|| / ||b|| = %.2e)", rel);
    check(rel <= 1e-5, what, rank);

    check(refused([&] { (void)train_run(&mpi, nccl.gpu()); }, "device"),
          "a Cuda student with the MPI communicator is refused (device)", rank);
    check(refused([&] { (void)train_run(&nccl, nccl.gpu(), 1); }, "zero"), "ZeRO-1 on Cuda is refused (zero)", rank);

    double total = double(failures);
    mpi.all_reduce_sum(&total, 1);
    return total == 0 ? 0 : 1;
}
