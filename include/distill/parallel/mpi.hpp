#pragma once
/// @file parallel/mpi.hpp
/// `parallel::Mpi`: the ranks of a program launched by `mpirun -np N` (or `srun`), over MPI's
/// COMM_WORLD. Needs MPI: link `distill::mpi` (Debian: libopenmpi-dev openmpi-bin), which defines
/// DISTILL_WITH_MPI. Construct one per process, before any other thread calls MPI; it initializes
/// MPI when nothing else has and finalizes what it initialized.
///
/// @code
/// std::unique_ptr<distill::parallel::Communicator> comm;
/// if (distill::parallel::launched_by_mpi()) comm = std::make_unique<distill::parallel::Mpi>(&argc, &argv);
/// @endcode

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include <mpi.h>

#include "distill/error.hpp"
#include "distill/parallel.hpp"

namespace distill::parallel {

/// Whether this process was started by an MPI launcher (Open MPI's mpirun, a PMI/PMIx launcher such
/// as srun): a program built with MPI then joins the run instead of training alone.
inline bool launched_by_mpi() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
        if (std::getenv(v)) return true;
    return false;
}

class Mpi final : public Communicator {
public:
    /// Initializes MPI (funneled: only the thread that constructs it calls MPI) unless already done.
    explicit Mpi(int* argc = nullptr, char*** argv = nullptr) {
        int initialized = 0;
        MPI_Initialized(&initialized);
        if (!initialized) {
            int provided = 0;
            check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
            owns_ = true;
        }
        check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
        // errors come back as codes (and become exceptions) instead of aborting inside MPI
        MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
        MPI_Comm_rank(comm_, &rank_);
        MPI_Comm_size(comm_, &size_);
    }
    Mpi(const Mpi&) = delete;
    Mpi& operator=(const Mpi&) = delete;
    ~Mpi() override {
        MPI_Comm_free(&comm_);
        if (owns_) MPI_Finalize();
    }

    int rank() const noexcept override { return rank_; }
    int size() const noexcept override { return size_; }
    void all_reduce_sum(float* data, std::size_t n) override { reduce(data, n, MPI_FLOAT); }
    void all_reduce_sum(double* data, std::size_t n) override { reduce(data, n, MPI_DOUBLE); }
    void all_gather(float* data, std::span<const std::size_t> counts) override { gather(data, counts, MPI_FLOAT); }
    void all_gather(double* data, std::span<const std::size_t> counts) override { gather(data, counts, MPI_DOUBLE); }
    std::int64_t all_reduce_max(std::int64_t value) override {
        std::int64_t out = 0;
        check(MPI_Allreduce(&value, &out, 1, MPI_INT64_T, MPI_MAX, comm_), "MPI_Allreduce");
        return out;
    }
    void broadcast(void* data, std::size_t bytes, int root) override {
        auto* p = static_cast<char*>(data);
        for (std::size_t done = 0; done < bytes;) {
            const int n = int(std::min(bytes - done, chunk));
            check(MPI_Bcast(p + done, n, MPI_BYTE, root, comm_), "MPI_Bcast");
            done += std::size_t(n);
        }
    }
    void barrier() override { check(MPI_Barrier(comm_), "MPI_Barrier"); }
    [[noreturn]] void abort(int code) override {
        MPI_Abort(comm_, code);
        std::exit(code);  // MPI_Abort does not return
    }
    std::string name() const override { return "mpi"; }

private:
    static constexpr std::size_t chunk = std::size_t(std::numeric_limits<int>::max()) / 8;

    // In place, in chunks MPI's int counts can address. MPI_Allreduce's algorithm is chosen from the
    // world size and message size, so runs of the same size and MPI settings reduce in the same order.
    template <class T>
    void reduce(T* data, std::size_t n, MPI_Datatype type) {
        for (std::size_t done = 0; done < n;) {
            const int m = int(std::min(n - done, chunk));
            check(MPI_Allreduce(MPI_IN_PLACE, data + done, m, type, MPI_SUM, comm_), "MPI_Allreduce");
            done += std::size_t(m);
        }
    }
    // MPI_Allgatherv in place: each rank's block already sits at its displacement.
    template <class T>
    void gather(T* data, std::span<const std::size_t> counts, MPI_Datatype type) {
        if (counts.size() != std::size_t(size_))
            throw error("all_gather: " + std::to_string(counts.size()) + " counts for " + std::to_string(size_) +
                        " ranks");
        std::vector<int> n(counts.size()), at(counts.size());
        std::size_t offset = 0;
        for (std::size_t r = 0; r < counts.size(); ++r) {
            if (counts[r] > std::size_t(std::numeric_limits<int>::max()) ||
                offset > std::size_t(std::numeric_limits<int>::max()))
                throw error("all_gather: more elements than MPI's int counts address (" + std::to_string(offset) +
                            " + " + std::to_string(counts[r]) + ")");
            n[r] = int(counts[r]);
            at[r] = int(offset);
            offset += counts[r];
        }
        check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, n.data(), at.data(), type, comm_),
              "MPI_Allgatherv");
    }
    static void check(int rc, const char* what) {
        if (rc == MPI_SUCCESS) return;
        char text[MPI_MAX_ERROR_STRING];
        int len = 0;
        MPI_Error_string(rc, text, &len);
        throw error(std::string(what) + " failed: " + std::string(text, std::size_t(len)));
    }

    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, size_ = 1;
    bool owns_ = false;
};

}  // namespace distill::parallel
