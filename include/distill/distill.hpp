#pragma once
/// @file distill.hpp
/// The umbrella header: everything of distill in a fixed order. Include this one header.

#include "distill/version.hpp"
#include "distill/error.hpp"
#include "distill/tensor.hpp"
#include "distill/detail/rng.hpp"
#include "distill/detail/arena.hpp"
#include "distill/detail/xview.hpp"
#include "distill/device.hpp"
#include "distill/device/reference.hpp"
#include "distill/device/cpu.hpp"
#include "distill/nn/linear.hpp"
#include "distill/nn/attention.hpp"
#include "distill/student.hpp"
#include "distill/student/transformer.hpp"
#include "distill/io/atomic_file.hpp"
#include "distill/io/reflect.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/io/weights.hpp"
#include "distill/data/byte_tokenizer.hpp"
#include "distill/data/reversal.hpp"
