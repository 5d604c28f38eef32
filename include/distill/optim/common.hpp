#pragma once
/// @file common.hpp
/// What every optimizer shares: gathering parameters from several owners, the weight-decay groups,
/// the state arena that mirrors the parameters, and the `device::tensor_list` its update kernel
/// sweeps (the kernels themselves are the device's: `device/<name>/optim`).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <boost/hana/adapt_struct.hpp>

#include "distill/detail/arena.hpp"
#include "distill/device.hpp"
#include "distill/error.hpp"
#include "distill/optimizer.hpp"
#include "distill/parameter.hpp"

namespace distill::optim {

/// The concatenation of several parameter lists (the student's, then each loss term's projections),
/// the argument every optimizer takes.
/// @tparam T scalar type; each list is anything iterable of `Parameter<T>`.
template <class T, class... Lists>
std::vector<Parameter<T>> gather(const std::vector<Parameter<T>>& first, const Lists&... rest) {
    std::vector<Parameter<T>> all(first.begin(), first.end());
    (all.insert(all.end(), std::begin(rest), std::end(rest)), ...);
    return all;
}

/// Which parameter kinds receive weight decay. Weights always do; biases, norm gains/shifts and
/// embeddings do not unless switched on, because decaying them pulls LayerNorm gains towards 0 and
/// rare-token embeddings towards the origin, which hurts more than it regularizes (GPT-2, BERT and
/// nanoGPT all exempt them).
struct DecayGroups {
    bool biases = false;
    bool norms = false;
    bool embeddings = false;

    /// Whether a parameter of `kind` is decayed.
    bool applies_to(parameter_kind kind) const noexcept {
        switch (kind) {
            case parameter_kind::weight:
                return true;
            case parameter_kind::bias:
                return biases;
            case parameter_kind::norm:
                return norms;
            case parameter_kind::embedding:
                return embeddings;
        }
        return true;
    }
};

/// A contiguous range [lo, hi) of the flat concatenation of an optimizer's parameters (their
/// elements in list order): the part a ZeRO-1 rank keeps optimizer state for and updates (the other
/// ranks' parts arrive by an all-gather of the parameters). The default is every element.
struct Shard {
    std::size_t lo = 0;
    std::size_t hi = static_cast<std::size_t>(-1);

    /// Rank `rank`'s part of `total` elements split over `size` ranks, balanced by element count
    /// (a parameter may straddle two parts).
    static Shard of(std::size_t total, int rank, int size) {
        // floor(total * r / n) without overflow: total = q n + m gives q r + floor(m r / n)
        const auto n = static_cast<std::size_t>(size), q = total / n, m = total % n;
        auto at = [&](std::size_t r) { return q * r + m * r / n; };
        return {at(static_cast<std::size_t>(rank)), at(static_cast<std::size_t>(rank) + 1)};
    }
    /// Whether it holds every element of `total`.
    bool whole(std::size_t total) const noexcept { return lo == 0 && hi >= total; }
    bool operator==(const Shard&) const = default;
};

/// Elements of all `params` together.
template <class T>
std::size_t total_elements(std::span<const Parameter<T>> params) {
    std::size_t n = 0;
    for (const auto& p : params) n += static_cast<std::size_t>(p.value.numel());
    return n;
}

namespace detail {

/// The parts of `params` inside `shard`: each parameter overlapping it as a 1-D view of that range
/// of its value and gradient, with its name and kind (weight decay groups still apply per element).
/// The whole range returns the parameters themselves, shapes kept.
template <class T>
std::vector<Parameter<T>> shard_slices(const std::vector<Parameter<T>>& params, const Shard& shard,
                                       const std::string& who) {
    const std::size_t total = total_elements<T>(params);
    if (shard.whole(total)) return params;
    if (shard.lo > shard.hi || shard.hi > total)
        throw shape_error(who + ": shard [" + std::to_string(shard.lo) + ", " + std::to_string(shard.hi) +
                          ") lies outside the " + std::to_string(total) + " parameter elements");
    std::vector<Parameter<T>> out;
    std::size_t at = 0;
    for (const auto& p : params) {
        const std::size_t n = static_cast<std::size_t>(p.value.numel());
        const std::size_t a = std::max(at, shard.lo), b = std::min(at + n, shard.hi);
        if (a < b) {
            const auto len = static_cast<std::int64_t>(b - a);
            out.push_back({p.name, Tensor<T>(p.value.data() + (a - at), {len}, p.value.space()),
                           Tensor<T>(p.grad.data() + (a - at), {len}, p.grad.space()), p.kind});
        }
        at += n;
    }
    return out;
}

/// Checks what every optimizer requires of its parameters: host memory, value and gradient both
/// contiguous with equal sizes, unique non-empty names (state tensors and checkpoints are keyed by them).
template <class T>
void validate_parameters(std::span<const Parameter<T>> params, const std::string& who,
                         memory_space memory = memory_space::host) {
    std::set<std::string> names;
    for (std::size_t i = 0; i < params.size(); ++i) {
        const auto& p = params[i];
        const std::string where = who + ": parameter " + std::to_string(i) + " '" + p.name + "'";
        if (p.name.empty()) throw shape_error(who + ": parameter " + std::to_string(i) + " has an empty name");
        if (!names.insert(p.name).second)
            throw shape_error(where + " is listed twice (gather each owner's parameters once, with unique names)");
        if (p.value.empty() || p.grad.empty()) throw shape_error(where + " has no value or no gradient tensor");
        if (p.value.numel() != p.grad.numel())
            throw shape_error(where + ": value " + p.value.shape_string() + " and gradient " + p.grad.shape_string() +
                              " differ in size");
        if (!p.value.contiguous() || !p.grad.contiguous()) throw shape_error(where + " is not contiguous");
        if (p.value.space() != memory || p.grad.space() != memory)
            throw shape_error(where + (memory == memory_space::host
                                           ? " is not in host memory; this optimizer updates host tensors"
                                           : " is not in the optimizer device's memory"));
    }
}

/// The optimizer's own arena: `slots` state tensors per parameter, each shaped like its parameter,
/// named `<slot name>.<parameter name>`, zero-initialized. Slot s of parameter i is `state()[s * n + i]`.
template <class T, class Device>
class StateArena {
public:
    StateArena() = default;
    /// Lays out and zero-allocates `slot_names.size()` state tensors per parameter of `params`.
    StateArena(const Device& dev, std::span<const Parameter<T>> params, std::span<const char* const> slot_names) {
        distill::detail::ArenaLayout layout;
        std::vector<std::size_t> blocks;
        for (const char* slot : slot_names)
            for (const auto& p : params)
                blocks.push_back(layout.add<T>(std::string(slot) + "." + p.name, {p.value.numel()}));
        arena_ = distill::detail::Arena<T, Device>(dev, layout.size());
        std::size_t k = 0;
        for (const char* slot : slot_names)
            for (const auto& p : params) {
                // A view with the parameter's own shape over this block of the arena.
                Tensor<T> view = p.value;
                view.assign(arena_.data() + layout.blocks()[blocks[k]].offset, p.value.shape(), p.value.strides(),
                            p.value.rank(), Device::memory);
                tensors_.push_back({std::string(slot) + "." + p.name, view});
                ++k;
            }
    }

    /// Every state tensor: slot by slot, parameters in order within a slot.
    const std::vector<StateTensor<T>>& tensors() const noexcept { return tensors_; }
    /// Element data of slot `slot` of parameter `i` (n parameters).
    T* data(std::size_t slot, std::size_t i, std::size_t n) const noexcept {
        return tensors_[slot * n + i].value.data();
    }
    /// Bytes held.
    std::size_t bytes() const noexcept { return arena_.size() * sizeof(T); }

private:
    distill::detail::Arena<T, Device> arena_;
    std::vector<StateTensor<T>> tensors_{};
};

/// Throws config_error naming `path` unless `value` lies in [lo, hi] (or [lo, hi) with `open_hi`).
inline void check_range(double value, double lo, double hi, const std::string& path, bool open_hi = false) {
    const bool ok = std::isfinite(value) && value >= lo && (open_hi ? value < hi : value <= hi);
    if (!ok) {
        throw config_error(path, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                                     (open_hi ? ")" : "]") + ", got " + std::to_string(value));
    }
}

}  // namespace detail
}  // namespace distill::optim

BOOST_HANA_ADAPT_STRUCT(distill::optim::DecayGroups, biases, norms, embeddings);
