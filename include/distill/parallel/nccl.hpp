#pragma once
/// @file parallel/nccl.hpp
/// `parallel::Nccl`: the ranks of an MPI run (parallel::Mpi), one per GPU, summing buffers in GPU
/// memory (device::Cuda's gradients) with NCCL. Needs MPI, the CUDA runtime and NCCL: link
/// `distill::nccl`, which defines DISTILL_WITH_NCCL.
///
/// - Bootstrap: rank 0 makes the `ncclUniqueId` and broadcasts it over the MPI communicator; each rank
///   takes the GPU of its local rank on its node (`OMPI_COMM_WORLD_LOCAL_RANK`, `MPI_LOCALRANKID`,
///   `SLURM_LOCALID`, else its rank) and joins the NCCL communicator there. Build the model's device
///   on that GPU: `device::Cuda(nccl.gpu())`.
/// - Host-memory collectives (loss sums, broadcasts, barriers) go to the MPI communicator;
///   `all_reduce_sum(memory_space::cuda, ...)` is `ncclAllReduce` (in place, sum) and
///   `all_gather(memory_space::cuda, ...)` one in-place `ncclBroadcast` per rank's block, in one group.
/// - Each call first waits for the whole GPU (`cudaDeviceSynchronize`: device::Cuda computes on its own
///   non-blocking stream), runs on this communicator's stream and returns when the result is there.
///
/// @code
/// distill::parallel::Mpi mpi(&argc, &argv);
/// distill::parallel::Nccl ranks(mpi);
/// distill::device::Cuda gpu(ranks.gpu());
/// options.communicator = &ranks;   // train::FinetuneOptions
/// @endcode

#include <cstdlib>
#include <span>
#include <string>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "distill/error.hpp"
#include "distill/parallel.hpp"

namespace distill::parallel {

class Nccl final : public Communicator {
public:
    /// Joins the NCCL communicator of `host`'s ranks (a collective call: every rank constructs one).
    /// `host` (parallel::Mpi) must outlive it. Throws `error` when this rank has no GPU of its own.
    explicit Nccl(Communicator& host) : host_(host) {
        int gpus = 0;
        if (cudaGetDeviceCount(&gpus) != cudaSuccess) gpus = 0;
        (void)cudaGetLastError();  // a missing driver leaves an error behind
        int local = local_rank();
        if (local < 0) local = host.rank();
        // every rank leaves the bootstrap alike: none may be left waiting in the broadcast below
        const bool mine = local >= gpus;
        const bool any = host_.all_reduce_max(mine ? 1 : 0) != 0;
        if (mine)
            throw error("parallel::Nccl: rank " + std::to_string(host.rank()) + " (local rank " +
                        std::to_string(local) + ") needs a GPU of its own; " + std::to_string(gpus) +
                        " visible (launch one rank per GPU)");
        if (any) throw error("parallel::Nccl: another rank has no GPU of its own (launch one rank per GPU)");
        gpu_ = local;
        cuda(cudaSetDevice(gpu_), "cudaSetDevice");
        ncclUniqueId id{};
        if (host_.root()) nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
        host_.broadcast(&id, sizeof id, 0);
        nccl(ncclCommInitRank(&comm_, host_.size(), id, host_.rank()), "ncclCommInitRank");
        cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    }
    Nccl(const Nccl&) = delete;
    Nccl& operator=(const Nccl&) = delete;
    ~Nccl() override {
        if (stream_) cudaStreamDestroy(stream_);
        if (comm_) ncclCommDestroy(comm_);
    }

    /// This rank's GPU (its CUDA ordinal).
    int gpu() const noexcept { return gpu_; }

    int rank() const noexcept override { return host_.rank(); }
    int size() const noexcept override { return host_.size(); }
    void all_reduce_sum(float* data, std::size_t n) override { host_.all_reduce_sum(data, n); }
    void all_reduce_sum(double* data, std::size_t n) override { host_.all_reduce_sum(data, n); }
    void all_gather(float* data, std::span<const std::size_t> counts) override { host_.all_gather(data, counts); }
    void all_gather(double* data, std::span<const std::size_t> counts) override { host_.all_gather(data, counts); }
    std::int64_t all_reduce_max(std::int64_t value) override { return host_.all_reduce_max(value); }
    void broadcast(void* data, std::size_t bytes, int root) override { host_.broadcast(data, bytes, root); }
    void barrier() override { host_.barrier(); }
    [[noreturn]] void abort(int code) override {
        if (comm_) ncclCommAbort(comm_);
        comm_ = nullptr;
        host_.abort(code);
        std::abort();  // not reached: the host communicator's abort does not return
    }
    std::string name() const override { return "nccl"; }
    bool reaches(memory_space where) const noexcept override {
        return where == memory_space::host || where == memory_space::cuda;
    }

protected:
    void device_all_reduce_sum(memory_space where, float* data, std::size_t n) override {
        reduce(where, data, n, ncclFloat32);
    }
    void device_all_reduce_sum(memory_space where, double* data, std::size_t n) override {
        reduce(where, data, n, ncclFloat64);
    }
    void device_all_gather(memory_space where, float* data, std::span<const std::size_t> counts) override {
        gather(where, data, counts, ncclFloat32);
    }
    void device_all_gather(memory_space where, double* data, std::span<const std::size_t> counts) override {
        gather(where, data, counts, ncclFloat64);
    }

private:
    static int local_rank() {
        for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
            if (const char* s = std::getenv(v)) return std::atoi(s);
        return -1;
    }
    static void cuda(cudaError_t e, const char* what) {
        if (e != cudaSuccess) throw error(std::string("parallel::Nccl: ") + what + ": " + cudaGetErrorString(e));
    }
    static void nccl(ncclResult_t r, const char* what) {
        if (r != ncclSuccess) throw error(std::string("parallel::Nccl: ") + what + ": " + ncclGetErrorString(r));
    }
    void check_space(memory_space where) const {
        if (where != memory_space::cuda) throw error("parallel::Nccl: sums host or CUDA memory only");
    }
    void begin() {
        cuda(cudaSetDevice(gpu_), "cudaSetDevice");
        cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");  // the device's own stream has written the data
    }
    void end(const char* what) { cuda(cudaStreamSynchronize(stream_), what); }
    template <class T>
    void reduce(memory_space where, T* data, std::size_t n, ncclDataType_t type) {
        check_space(where);
        if (n == 0) return;
        begin();
        nccl(ncclAllReduce(data, data, n, type, ncclSum, comm_, stream_), "ncclAllReduce");
        end("ncclAllReduce");
    }
    template <class T>
    void gather(memory_space where, T* data, std::span<const std::size_t> counts, ncclDataType_t type) {
        check_space(where);
        if (counts.size() != std::size_t(size()))
            throw error("parallel::Nccl::all_gather: " + std::to_string(counts.size()) + " counts for " +
                        std::to_string(size()) + " ranks");
        begin();
        // blocks of different sizes: each owner broadcasts its block in place (ncclAllGather needs equal ones)
        nccl(ncclGroupStart(), "ncclGroupStart");
        std::size_t at = 0;
        for (std::size_t r = 0; r < counts.size(); ++r) {
            if (counts[r])
                nccl(ncclBroadcast(data + at, data + at, counts[r], type, int(r), comm_, stream_), "ncclBroadcast");
            at += counts[r];
        }
        nccl(ncclGroupEnd(), "ncclGroupEnd");
        end("ncclBroadcast");
    }

    Communicator& host_;
    int gpu_ = 0;
    ncclComm_t comm_ = nullptr;
    cudaStream_t stream_ = nullptr;
};

}  // namespace distill::parallel
