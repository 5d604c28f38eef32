#pragma once
/// @file reference.hpp
/// `device::Reference`, the oracle: every kernel of the device contract (`distill/device.hpp`) as the
/// plainest loops that compute it, single-threaded, in host memory, for any scalar type (the gradient
/// checks run it in double). Each kernel carries its shapes, its formula and the PyTorch function it
/// mirrors; the fast devices are tested against it. Read its parts as the specification:
/// - `reference/layers.hpp`  — the host-memory base, the tag, and the layer kernels (GEMM, norms,
///                              activations, attention, embeddings, cross-entropy, decoding);
/// - `reference/losses.hpp`  — the fused divergence rows of the loss terms and hidden-state matching;
/// - `reference/optim.hpp`   — the optimizer updates, the gradient-norm reduction and scaling;
/// - `reference/encoder.hpp` — what a bidirectional (BERT-layout) encoder adds;
/// - `reference/quant.hpp`   — the quantized matrix product (ggml's CPU semantics, plain loops).

#include "distill/device/reference/encoder.hpp"
#include "distill/device/reference/layers.hpp"
#include "distill/device/reference/losses.hpp"
#include "distill/device/reference/optim.hpp"
#include "distill/device/reference/quant.hpp"
