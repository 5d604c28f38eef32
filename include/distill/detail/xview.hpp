#pragma once
/// @file xview.hpp
/// `distill::xview`: a host `Tensor` as an xtensor expression (`xt::adapt`, no copy), for N-d
/// indexing, slicing and broadcasting in host-side code and tests. Kernels use raw loops and
/// `Eigen::Map`; xtensor is the convenient view, not the fast path.

#include <array>
#include <cstddef>

#include <xtensor/xadapt.hpp>

#include "distill/error.hpp"
#include "distill/tensor.hpp"

namespace distill {

/// The tensor's memory as an xtensor view of rank `Rank` with its shape and strides (host only).
template <std::size_t Rank, class T>
auto xview(const Tensor<T>& t) {
    if (t.rank() != static_cast<int>(Rank))
        throw shape_error("xview<" + std::to_string(Rank) + ">: tensor has shape " + t.shape_string());
    if (t.space() != memory_space::host) throw shape_error("xview: tensor is not in host memory");
    std::array<std::size_t, Rank> shape{}, strides{};
    std::size_t size = 1;
    for (std::size_t d = 0; d < Rank; ++d) {
        shape[d] = static_cast<std::size_t>(t.size(int(d)));
        strides[d] = static_cast<std::size_t>(t.stride(int(d)));
        size += (shape[d] - 1) * strides[d];
    }
    return xt::adapt(t.data(), size, xt::no_ownership(), shape, strides);
}

}  // namespace distill
