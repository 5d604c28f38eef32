#pragma once
// What the MPI tests (tests/mpi/*.cpp, tests/cuda/nccl.cu) share: a check printed by rank 0 and
// counted on every rank, and the relative distance of two weight vectors.

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace mpi_checks {

inline int failures = 0;

inline void check(bool ok, const std::string& what, int rank) {
    if (rank == 0) std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
    std::fflush(stdout);
    failures += ok ? 0 : 1;
}

// ||a - b|| / ||b||
inline double relative(const std::vector<float>& a, const std::vector<float>& b) {
    double d = 0, n = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
        n += double(b[i]) * b[i];
    }
    return std::sqrt(d / n);
}

}  // namespace mpi_checks
