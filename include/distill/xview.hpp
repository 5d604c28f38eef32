#pragma once
/// @file xview.hpp
/// What a run produces, as xtensor N-d arrays: a model's activations and logits (`Tensor` views, no
/// copy), a checkpoint's or an export's tensors (`xarray(safetensors_file, name)`), a teacher's top-k
/// cache records (`xview(topk_record)`), and a device tensor copied to the host (`xarray(tensor, dev)`).
/// Indexing, slicing, broadcasting and reductions then read like NumPy, e.g. the attention one head
/// of layer 2 pays to the first token: `xt::view(xview<4>(outputs.attentions[2]), 0, h, xt::all(), 0)`.
/// Kernels use raw loops, Eigen and oneDNN; these views are for inspecting results, not the fast path.

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xview.hpp>

#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/io/topk_cache.hpp"
#include "distill/tensor.hpp"

namespace distill {

/// The host tensor `t` as an xtensor view of rank `Rank` with its shape and strides (no copy; writes
/// through a `Tensor<float>` reach its memory). Throws shape_error if `t` has another rank or lives
/// in a device's own memory (copy it with `xarray(t, dev)`).
template <std::size_t Rank, class T>
auto xview(const Tensor<T>& t) {
    if (t.rank() != static_cast<int>(Rank))
        throw shape_error("xview<" + std::to_string(Rank) + ">: tensor has shape " + t.shape_string());
    if (t.space() != memory_space::host)
        throw shape_error("xview: tensor is not in host memory; copy it with xarray(tensor, device)");
    std::array<std::size_t, Rank> shape{}, strides{};
    std::size_t size = 1;
    for (std::size_t d = 0; d < Rank; ++d) {
        shape[d] = static_cast<std::size_t>(t.size(int(d)));
        strides[d] = static_cast<std::size_t>(t.stride(int(d)));
        size += (shape[d] - 1) * strides[d];
    }
    return xt::adapt(t.data(), size, xt::no_ownership(), shape, strides);
}

/// A copy of `t` (any device, any strides) in host memory, with its shape.
template <class T, class Device>
xt::xarray<std::remove_const_t<T>> xarray(const Tensor<T>& t, const Device& dev) {
    std::vector<std::size_t> shape(static_cast<std::size_t>(t.rank()));
    for (int d = 0; d < t.rank(); ++d) shape[std::size_t(d)] = static_cast<std::size_t>(t.size(d));
    xt::xarray<std::remove_const_t<T>> out(shape);
    if (t.numel() == 0) return out;
    std::size_t span = 1;  // elements from the first to one past the last, in the tensor's memory
    for (int d = 0; d < t.rank(); ++d) span += (shape[std::size_t(d)] - 1) * static_cast<std::size_t>(t.stride(d));
    const auto host = detail::read_on_host(dev, t.data(), span);
    std::vector<std::size_t> strides(shape.size());
    for (std::size_t d = 0; d < shape.size(); ++d) strides[d] = static_cast<std::size_t>(t.stride(int(d)));
    out = xt::adapt(host.data(), span, xt::no_ownership(), shape, strides);
    return out;
}

/// The floating-point tensor `name` of `file` (F64, F32, F16 or BF16), converted to `T`, with its
/// stored shape (rank 0 for a scalar). Throws format_error naming the file if it has no such tensor
/// or the tensor holds integers.
/// @tparam T float or double.
template <class T = float>
xt::xarray<T> xarray(const io::safetensors_file& file, std::string_view name) {
    const io::tensor_info& info = file.at(name);
    std::vector<std::size_t> shape(info.shape.begin(), info.shape.end());
    xt::xarray<T> out(shape);
    file.read(info, std::span<T>(out.data(), out.size()));
    return out;
}

/// The arrays of one top-k cache record (views into the mapped file, valid while the `topk_file` lives).
struct topk_arrays {
    using ids_view = decltype(xt::adapt(static_cast<const std::int32_t*>(nullptr), std::size_t{}, xt::no_ownership(),
                                        std::array<std::size_t, 2>{}));
    using values_view = decltype(xt::adapt(static_cast<const float*>(nullptr), std::size_t{}, xt::no_ownership(),
                                           std::array<std::size_t, 2>{}));
    ids_view top_ids;          ///< (n, k) the teacher's k most likely next tokens at each of the n positions
    values_view top_logprobs;  ///< (n, k) their log-probabilities
};

/// `record`'s (n, k) top-k ids and log-probabilities as xtensor views (no copy).
inline topk_arrays xview(const io::topk_record& record) {
    const std::size_t n = record.positions();
    const std::size_t k = n == 0 ? 0 : record.top_ids.size() / n;
    const std::array<std::size_t, 2> shape{n, k};
    return {xt::adapt(record.top_ids.data(), record.top_ids.size(), xt::no_ownership(), shape),
            xt::adapt(record.top_logprobs.data(), record.top_logprobs.size(), xt::no_ownership(), shape)};
}

}  // namespace distill
