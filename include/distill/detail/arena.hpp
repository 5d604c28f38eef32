#pragma once
/// @file arena.hpp
/// One allocation, laid out once, carved into tensors (llm.c style). A model owns three arenas
/// (parameters, gradients, activations), an optimizer one more; nothing is allocated afterwards.

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "distill/tensor.hpp"

namespace distill::detail {

/// Offsets of named blocks inside an arena, computed before the arena is allocated.
/// Every block starts on a 64-byte boundary (one cache line, one AVX-512 register).
class ArenaLayout {
public:
    struct block {
        std::string name;
        std::vector<std::int64_t> shape;
        std::size_t offset;  // in elements
        std::size_t numel;
    };

    /// Adds a block and returns its index.
    template <class T>
    std::size_t add(std::string name, std::initializer_list<std::int64_t> shape) {
        constexpr std::size_t align = 64 / sizeof(T) ? 64 / sizeof(T) : 1;
        std::size_t n = 1;
        for (auto d : shape) n *= static_cast<std::size_t>(d);
        size_ = (size_ + align - 1) / align * align;
        blocks_.push_back({std::move(name), std::vector<std::int64_t>(shape), size_, n});
        size_ += n;
        return blocks_.size() - 1;
    }

    const std::vector<block>& blocks() const noexcept { return blocks_; }
    /// Elements the arena needs, padding included.
    std::size_t size() const noexcept { return size_; }

private:
    std::vector<block> blocks_;
    std::size_t size_ = 0;
};

/// Memory for one arena on `Device`, freed with it. Move-only.
/// @tparam T element type. @tparam Device a `device_policy` (allocates and frees).
template <class T, class Device>
class Arena {
public:
    Arena() = default;
    Arena(const Device& device, std::size_t n) : device_(device), size_(n) {
        data_ = static_cast<T*>(device_.allocate(n * sizeof(T)));
        device_.fill_zero(data_, n * sizeof(T));
    }
    Arena(Arena&& o) noexcept
        : device_(o.device_), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
    Arena& operator=(Arena&& o) noexcept {
        if (this != &o) {
            release();
            device_ = o.device_;
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
        }
        return *this;
    }
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;
    ~Arena() { release(); }

    T* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }

    /// A view of `block` of `layout`, with the block's own shape.
    Tensor<T> view(const ArenaLayout::block& b) const {
        Tensor<T> t(data_ + b.offset, {1}, Device::memory);
        std::array<std::int64_t, Tensor<T>::max_rank> shape{}, strides{};
        std::int64_t stride = 1;
        const int rank = static_cast<int>(b.shape.size());
        for (int d = rank - 1; d >= 0; --d) {
            shape[d] = b.shape[d];
            strides[d] = stride;
            stride *= b.shape[d];
        }
        t.assign(data_ + b.offset, shape, strides, rank, Device::memory);
        return t;
    }

private:
    void release() noexcept {
        if (data_) device_.deallocate(data_, size_ * sizeof(T));
        data_ = nullptr;
    }

    Device device_{};
    T* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace distill::detail
