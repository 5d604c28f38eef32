#pragma once
/// @file cpu.hpp
/// `device::Cpu`, the fast host device: every kernel of the device contract (`distill/device.hpp`)
/// with the semantics of `device::Reference`, on Eigen/oneDNN GEMMs, vectorized row kernels and
/// OpenMP threads. Its parts:
/// - `cpu/layers.hpp`  — the tag (threads, precision) and the layer kernels; `cpu/dnnl.hpp` is its
///                       oneDNN GEMM provider (with `DISTILL_WITH_DNNL`), `cpu/isa.hpp` the fp32 row
///                       kernels (norms, GELU, SwiGLU, softmax, bias add) on the instruction set
///                       chosen at run time;
/// - `cpu/losses.hpp`  — the fused, streaming divergence rows of the loss terms and hidden-state matching;
/// - `cpu/optim.hpp`   — the optimizer updates and gradient-norm reduction over all parameters at once,
///                       through the vector shim of `cpu/simd.hpp`;
/// - `cpu/encoder.hpp` — the bidirectional encoder's kernels, threaded over rows;
/// - `cpu/quant.hpp`   — the quantized matrix product of generation (ggml blocks, integer dot
///                       products as ggml's CPU backend), threaded over weight rows.

#include "distill/device/cpu/encoder.hpp"
#include "distill/device/cpu/layers.hpp"
#include "distill/device/cpu/losses.hpp"
#include "distill/device/cpu/optim.hpp"
#include "distill/device/cpu/quant.hpp"
