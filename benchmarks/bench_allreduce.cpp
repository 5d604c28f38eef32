// The all-reduce a data-parallel step makes (parallel::Mpi::all_reduce_sum over the gradients), timed
// under `mpirun -np N` from 4 KiB to 64 MiB of fp32: the median time per call, the algorithm bandwidth
// (bytes / time) and the bus bandwidth (2(N-1)/N bytes / time, what each link carries in a ring, as
// nccl-tests reports it), and the alpha-beta model t(S) = alpha + S / beta (alpha: the smallest call;
// beta: the largest; docs/scaling.md projects step times from it). Prints one RESULT line per size (rank 0).
//
// PyTorch's torch.distributed.all_reduce (gloo, the CPU backend) on the same sizes and ranks is the
// reference (benchmarks/reference/bench_allreduce.py), run by rank 0 in the same invocation.
//
//   mpirun -np 2 bench_allreduce [--reps 20] [--max-mib 64] [--no-reference]

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "common.hpp"
#include "distill/parallel/mpi.hpp"

using namespace distill;

int main(int argc, char** argv) {
    parallel::Mpi comm(&argc, &argv);
    int reps = 20;
    std::size_t max_mib = 64;
    bool reference = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--no-reference")
            reference = false;
        else if (a == "--reps" && i + 1 < argc)
            reps = std::max(1, std::stoi(argv[++i]));
        else if (a == "--max-mib" && i + 1 < argc)
            max_mib = std::size_t(std::max(1, std::stoi(argv[++i])));
    }
    const int N = comm.size();
    std::vector<float> buffer(max_mib << 18, 1.0f);
    std::vector<double> sizes, times;
    for (std::size_t bytes = 4096; bytes <= (max_mib << 20); bytes *= 4) {
        const std::size_t n = bytes / sizeof(float);
        comm.all_reduce_sum(buffer.data(), n);  // warm-up: connections, pages
        std::vector<double> t;
        for (int r = 0; r < reps; ++r) {
            comm.barrier();
            const double t0 = bench::now();
            comm.all_reduce_sum(buffer.data(), n);
            t.push_back(bench::now() - t0);
        }
        std::sort(t.begin(), t.end());
        double dt = t[t.size() / 2];
        comm.broadcast(&dt, sizeof dt, 0);  // rank 0's median for every rank's record
        sizes.push_back(double(bytes));
        times.push_back(dt);
        bench::Reference ref;  // rank 0 runs PyTorch's all-reduce (gloo) of the same size; the others wait
        if (comm.root() && reference)
            ref = bench::run_reference("bench_allreduce.py --bytes " + std::to_string(bytes) + " --ranks " +
                                           std::to_string(N) + " --reps " + std::to_string(reps),
                                       "ms");
        comm.barrier();
        if (comm.root()) {
            const double algbw = double(bytes) / dt / 1e9, busbw = algbw * 2.0 * (N - 1) / N;
            std::printf("%10zu bytes  %9.1f us  algbw %6.2f GB/s  busbw %6.2f GB/s\n", bytes, dt * 1e6, algbw, busbw);
            bench::Result res;
            res.workload = "all-reduce fp32 " + std::to_string(bytes) + " bytes, " + std::to_string(N) + " ranks (MPI)";
            res.distill = dt * 1e6;
            res.unit = "us";
            res.higher_is_better = false;
            res.bound = "bandwidth";
            res.threads = 1;
            res.extra = {{"bytes", bytes}, {"ranks", N}, {"algbw_gb_s", algbw}, {"busbw_gb_s", busbw}};
            if (ref.value > 0) {
                res.pytorch = ref.value * 1e3;
                res.torch = ref.torch + ", gloo";
            }
            bench::emit(res);
        }
    }
    // t(S) = alpha + S / beta: alpha from the smallest message, beta from the largest
    const double alpha = times.front(), beta = sizes.back() / std::max(1e-12, times.back() - alpha);
    if (comm.root())
        std::printf("alpha-beta: alpha %.1f us (the %.0f-byte call), beta %.2f GB/s (from the %.0f-byte call)\n",
                    alpha * 1e6, sizes.front(), beta / 1e9, sizes.back());
    return 0;
}
