#pragma once
/// @file tensor.hpp
/// `distill::Tensor<T>`: a non-owning view (pointer, shape, strides, device) over memory that an
/// arena owns. Views are cheap to copy and never allocate; models hand them out for parameters,
/// gradients and activations.

#include <array>
#include <cassert>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "distill/error.hpp"

namespace distill {

/// Where a tensor's memory lives. Kernels of one device only touch memory of that device.
enum class memory_space : std::uint8_t { host, cuda };

/// A strided view of up to four dimensions over memory it does not own.
/// @tparam T element type (`float`, `double`, or `const` of them for read-only views).
template <class T>
class Tensor {
public:
    static constexpr int max_rank = 4;

    Tensor() = default;

    /// A contiguous row-major view of `shape` at `data`.
    Tensor(T* data, std::initializer_list<std::int64_t> shape, memory_space space = memory_space::host)
        : data_(data), rank_(static_cast<int>(shape.size())), space_(space) {
        if (shape.size() > max_rank) throw shape_error("Tensor: rank " + std::to_string(shape.size()) + " > 4");
        int i = 0;
        for (auto d : shape) shape_[i++] = d;
        std::int64_t stride = 1;
        for (int d = rank_ - 1; d >= 0; --d) {
            strides_[d] = stride;
            stride *= shape_[d];
        }
    }

    /// A read-only view of the same memory.
    operator Tensor<const T>() const {
        Tensor<const T> t;
        t.assign(data_, shape_, strides_, rank_, space_);
        return t;
    }

    T* data() const noexcept { return data_; }
    int rank() const noexcept { return rank_; }
    std::int64_t size(int dim) const noexcept { return shape_[dim]; }
    std::int64_t stride(int dim) const noexcept { return strides_[dim]; }
    memory_space space() const noexcept { return space_; }
    bool empty() const noexcept { return data_ == nullptr; }

    /// Number of elements.
    std::int64_t numel() const noexcept {
        std::int64_t n = 1;
        for (int d = 0; d < rank_; ++d) n *= shape_[d];
        return rank_ ? n : 0;
    }

    /// True when the elements are dense and row-major.
    bool contiguous() const noexcept {
        std::int64_t stride = 1;
        for (int d = rank_ - 1; d >= 0; --d) {
            if (shape_[d] != 1 && strides_[d] != stride) return false;
            stride *= shape_[d];
        }
        return true;
    }

    /// Element access by full index (host memory only).
    template <class... I>
    T& operator()(I... index) const noexcept {
        static_assert(sizeof...(I) <= max_rank);
        assert(static_cast<int>(sizeof...(I)) == rank_ && space_ == memory_space::host);
        std::int64_t offset = 0;
        int d = 0;
        ((offset += static_cast<std::int64_t>(index) * strides_[d++]), ...);
        return data_[offset];
    }

    /// The sub-tensor at index `i` of the first dimension (rank drops by one).
    Tensor operator[](std::int64_t i) const noexcept {
        assert(rank_ > 0 && i >= 0 && i < shape_[0]);
        Tensor t;
        t.data_ = data_ + i * strides_[0];
        t.rank_ = rank_ - 1;
        t.space_ = space_;
        for (int d = 1; d < rank_; ++d) {
            t.shape_[d - 1] = shape_[d];
            t.strides_[d - 1] = strides_[d];
        }
        return t;
    }

    /// The same contiguous memory under another shape with the same element count.
    Tensor reshape(std::initializer_list<std::int64_t> shape) const {
        if (!contiguous()) throw shape_error("Tensor::reshape: view is not contiguous");
        Tensor t(data_, shape, space_);
        if (t.numel() != numel())
            throw shape_error("Tensor::reshape: " + std::to_string(numel()) + " elements cannot take shape with " +
                              std::to_string(t.numel()));
        return t;
    }

    /// The shape as text, e.g. "[2, 3, 4]", for error messages.
    std::string shape_string() const {
        std::string s = "[";
        for (int d = 0; d < rank_; ++d) s += (d ? ", " : "") + std::to_string(shape_[d]);
        return s + "]";
    }

    const std::array<std::int64_t, max_rank>& shape() const noexcept { return shape_; }
    const std::array<std::int64_t, max_rank>& strides() const noexcept { return strides_; }

    // Used by the const conversion; not part of the public surface.
    void assign(T* data, const std::array<std::int64_t, max_rank>& shape,
                const std::array<std::int64_t, max_rank>& strides, int rank, memory_space space) noexcept {
        data_ = data;
        shape_ = shape;
        strides_ = strides;
        rank_ = rank;
        space_ = space;
    }

private:
    T* data_ = nullptr;
    std::array<std::int64_t, max_rank> shape_{};
    std::array<std::int64_t, max_rank> strides_{};
    int rank_ = 0;
    memory_space space_ = memory_space::host;
};

}  // namespace distill
