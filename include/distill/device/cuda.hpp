#pragma once
/// @file cuda.hpp
/// `device::Cuda`: the NVIDIA GPU device. The tag and its context are in `cuda/context.cuh`, the
/// kernels of the device contract (`distill/device.hpp`) in `cuda/blas.cuh` (cuBLAS GEMMs,
/// strided-batched for attention), `cuda/layers.cuh` (layers, Llama blocks, decoding),
/// `cuda/losses.cuh` (the fused loss rows, hidden-state matching) and `cuda/optim.cuh` (optimizer
/// updates, gradient-norm reduction, scaling); `cuda/sampling.cuh` adds sampling. It has no encoder
/// kernels yet, so `student::Encoder` does not compile on it (the contract names what is missing).
/// The same `nn/`, `student/`, `loss/` and `optim/` code runs on it; only the kernels differ.
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
