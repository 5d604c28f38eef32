#pragma once
/// @file cuda.hpp
/// `device::Cuda`: the NVIDIA GPU device. The tag and its context are in `cuda/context.cuh`, the
/// kernels in `cuda/*.cuh`: cuBLAS GEMMs (strided-batched for attention), the layer kernels, the
/// fused loss kernels, the optimizer updates and gradient-norm reduction, and sampling. The same
/// `nn/`, `student/`, `loss/` and `optim/` code runs on it; only the kernels differ.
///
/// CUDA code: reachable only under nvcc with DISTILL_ENABLE_CUDA (link `distill::cuda`, which sets
/// it and links CUDA::cudart and CUDA::cublas). The umbrella header never includes it. See
/// docs/devices.md.

#include "distill/device/cuda/blas.cuh"
#include "distill/device/cuda/common.cuh"
#include "distill/device/cuda/context.cuh"
#include "distill/device/cuda/layers.cuh"
#include "distill/device/cuda/losses.cuh"
#include "distill/device/cuda/optim.cuh"
#include "distill/device/cuda/sampling.cuh"
