#pragma once
/// @file macros.hpp
/// Internal macros. `DISTILL_HD` marks scalar math shared by host and CUDA device code.

#if defined(__CUDACC__)
#define DISTILL_HD __host__ __device__
#else
#define DISTILL_HD
#endif

// OpenMP pragmas only when the compiler was asked for OpenMP; a build without it stays serial.
#if defined(_OPENMP)
#define DISTILL_PRAGMA(x) _Pragma(#x)
#define DISTILL_OMP(x) DISTILL_PRAGMA(omp x)
#else
#define DISTILL_OMP(x)
#endif
