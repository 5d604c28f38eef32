// This machine's limits, measured once per `benchmarks/run` and handed to every benchmark: the FP32
// FMA peak (independent FMA chains in the widest vectors the build targets, best of five ~0.4 s runs)
// and the STREAM-triad memory bandwidth (three 256 MiB arrays, best of five), per thread count.
//
//   bench_peak [--threads 1,2]
// prints, besides a human line per thread count,
//   DISTILL_BENCH_PEAK_GFLOPS=1:117.2,2:234.1
//   DISTILL_BENCH_BANDWIDTH_GBS=1:21.0,2:31.8

#include <cstdio>
#include <string>
#include <vector>

#include "common.hpp"

int main(int argc, char** argv) {
    std::vector<int> threads = {1, 2};
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc) {
            threads.clear();
            const std::string list = argv[++i];
            for (std::size_t at = 0; at < list.size();) {
                const std::size_t comma = std::min(list.find(',', at), list.size());
                threads.push_back(std::stoi(list.substr(at, comma - at)));
                at = comma + 1;
            }
        } else {
            std::fprintf(stderr, "usage: bench_peak [--threads 1,2]\n");
            return 2;
        }
    }
    std::string peaks, bandwidths;
    for (int t : threads) {
        const double peak = bench::measure_fp32_peak(t), bw = bench::measure_bandwidth(t);
        std::printf("%d thread%s: FP32 FMA peak %.1f GFLOP/s, triad bandwidth %.1f GB/s\n", t, t == 1 ? "" : "s", peak,
                    bw);
        char item[64];
        std::snprintf(item, sizeof item, "%s%d:%.1f", peaks.empty() ? "" : ",", t, peak);
        peaks += item;
        std::snprintf(item, sizeof item, "%s%d:%.1f", bandwidths.empty() ? "" : ",", t, bw);
        bandwidths += item;
    }
    std::printf("DISTILL_BENCH_PEAK_GFLOPS=%s\nDISTILL_BENCH_BANDWIDTH_GBS=%s\n", peaks.c_str(), bandwidths.c_str());
    return 0;
}
