#pragma once
/// @file parallel.hpp
/// The parallelism policy: how the processes of one run talk. `parallel::Communicator` is what the
/// finetune loop and the pipeline's stages use — this process's rank, the world size, sums over all
/// ranks, a broadcast and a barrier; `parallel::Single` is the one-process default (every call is a
/// no-op, no MPI needed); `parallel::Mpi` (parallel/mpi.hpp, link `distill::mpi`) runs the ranks of
/// `mpirun -np N` or `srun`; `parallel::Nccl` (parallel/nccl.hpp, link `distill::nccl`) adds sums of
/// buffers in GPU memory (device::Cuda) over NCCL, one rank per GPU.
///
/// Unlike the compile-time policies (device, loss, optimizer), the communicator is a run-time
/// interface: one program binary runs alone or under mpirun, decided at start, and its few calls per
/// optimizer step (one all-reduce of the gradients) cost far more than a virtual call.
///
/// What each stage does with it (docs/scaling.md): finetune is data-parallel — rank r computes the
/// micro-batches m ≡ r (mod N) of each step, the gradients are summed over ranks, every rank clips and
/// updates the same replicated weights (or, ZeRO-1, its shard of them, then an all-gather); rank 0
/// writes checkpoints, metrics and reports. Generate and evaluate deal the prompts out to the ranks
/// and rank 0 merges.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>

#include "distill/error.hpp"
#include "distill/tensor.hpp"

namespace distill::parallel {

/// The ranks of one run. Every collective call must be made by every rank, in the same order.
class Communicator {
public:
    virtual ~Communicator() = default;
    /// This process's rank, 0-based.
    virtual int rank() const noexcept = 0;
    /// Number of ranks.
    virtual int size() const noexcept = 0;
    /// data[i] = the sum over ranks of data[i], on every rank; the order of the additions depends only
    /// on the world size (a run is reproducible for a given size).
    virtual void all_reduce_sum(float* data, std::size_t n) = 0;
    virtual void all_reduce_sum(double* data, std::size_t n) = 0;
    /// In place: `data` is the concatenation of every rank's block, rank r's of `counts[r]` elements
    /// (`counts.size()` = size(); a block may be empty); on return every rank holds every block as
    /// its owner wrote it (ZeRO-1's all-gather of the updated parameters).
    virtual void all_gather(float* data, std::span<const std::size_t> counts) = 0;
    virtual void all_gather(double* data, std::span<const std::size_t> counts) = 0;
    /// The maximum over ranks, on every rank.
    virtual std::int64_t all_reduce_max(std::int64_t value) = 0;
    /// Rank `root`'s `bytes` bytes at `data`, on every rank.
    virtual void broadcast(void* data, std::size_t bytes, int root = 0) = 0;
    /// Returns once every rank has called it.
    virtual void barrier() = 0;
    /// Stops every rank of the run with `code` (a failure on one rank must not leave the others
    /// waiting in a collective call forever).
    [[noreturn]] virtual void abort(int code) = 0;
    /// "single", "mpi", ...
    virtual std::string name() const = 0;

    /// Whether the collectives below can take buffers in `where` (host memory always; device memory
    /// only where a communicator says so, as parallel::Nccl does for memory_space::cuda).
    virtual bool reaches(memory_space where) const noexcept { return where == memory_space::host; }

    /// As the host-memory calls above, for buffers in `where` (a model's `Device::memory`): host
    /// memory goes to them; device memory to `device_all_reduce_sum` / `device_all_gather`, which
    /// throw `error` unless `reaches(where)`.
    template <class T>
    void all_reduce_sum(memory_space where, T* data, std::size_t n) {
        if (where == memory_space::host)
            all_reduce_sum(data, n);
        else
            device_all_reduce_sum(where, data, n);
    }
    template <class T>
    void all_gather(memory_space where, T* data, std::span<const std::size_t> counts) {
        if (where == memory_space::host)
            all_gather(data, counts);
        else
            device_all_gather(where, data, counts);
    }

    bool root() const noexcept { return rank() == 0; }

    /// `text` of rank `root` on every rank.
    std::string broadcast_string(std::string text, int root = 0) {
        std::uint64_t n = text.size();
        broadcast(&n, sizeof n, root);
        text.resize(n);
        if (n) broadcast(text.data(), n, root);
        return text;
    }

protected:
    /// Device-memory collectives: refused here, overridden by a communicator that `reaches` them.
    virtual void device_all_reduce_sum(memory_space, float*, std::size_t) { refuse_device(); }
    virtual void device_all_reduce_sum(memory_space, double*, std::size_t) { refuse_device(); }
    virtual void device_all_gather(memory_space, float*, std::span<const std::size_t>) { refuse_device(); }
    virtual void device_all_gather(memory_space, double*, std::span<const std::size_t>) { refuse_device(); }

private:
    [[noreturn]] void refuse_device() const {
        throw error("parallel::" + name() +
                    ": this communicator sums buffers in host memory only; a buffer in device memory needs one "
                    "that reaches it (parallel::Nccl for device::Cuda)");
    }
};

/// One process: rank 0 of 1; every collective is the identity.
class Single final : public Communicator {
public:
    int rank() const noexcept override { return 0; }
    int size() const noexcept override { return 1; }
    void all_reduce_sum(float*, std::size_t) override {}
    void all_reduce_sum(double*, std::size_t) override {}
    void all_gather(float*, std::span<const std::size_t>) override {}
    void all_gather(double*, std::span<const std::size_t>) override {}
    std::int64_t all_reduce_max(std::int64_t value) override { return value; }
    void broadcast(void*, std::size_t, int) override {}
    void barrier() override {}
    [[noreturn]] void abort(int code) override { std::exit(code); }
    std::string name() const override { return "single"; }
};

/// The process-wide one-process communicator (what a null communicator means).
inline Communicator& single() {
    static Single s;
    return s;
}

}  // namespace distill::parallel
