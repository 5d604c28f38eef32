#pragma once
/// @file zero.hpp
/// ZeRO-1 (optimizer state sharded over the ranks of a data-parallel run, as llm.c does): what the
/// finetune loop needs besides the sharded optimizer itself (`optim::Shard`, the optimizers' last
/// constructor argument).
///
/// - `gather_parameters`: after each rank updated its shard, an all-gather of the parameters (one
///   `Communicator::all_gather` per contiguous run of parameter values).
/// - Checkpoints: each rank writes its state as one flat tensor per slot (`exp_avg`, `exp_avg_sq`,
///   `momentum_buffer`) over its elements [lo, hi) — `optimizer-shard-R-of-N.safetensors`, its
///   metadata recording lo, hi and the total — and rank 0's checkpoint attaches every shard.
/// - `restore_state`: fills any optimizer's state, sharded or whole, from either kind of checkpoint
///   (shard files or the one-process `optimizer.<slot>.<param>` tensors), re-slicing as needed: a
///   run may resume with another world size, or alone.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "distill/error.hpp"
#include "distill/io/checkpoint.hpp"
#include "distill/optim/common.hpp"
#include "distill/parallel.hpp"

namespace distill::train::zero {

/// The elements optimizer `o` updates (whole when it has no `shard()`).
template <class Optimizer>
optim::Shard shard_of(const Optimizer& o) {
    if constexpr (requires { o.shard(); })
        return o.shard();
    else
        return {};
}

/// One state tensor of an optimizer in flat coordinates: slot name, elements [lo, hi), its data.
template <class T>
struct Piece {
    std::string slot;
    std::size_t lo = 0, hi = 0;
    T* data = nullptr;
};

/// The optimizer's state tensors (named `<slot>.<parameter>`) placed in the flat element order of
/// its parameters.
template <class Optimizer>
std::vector<Piece<typename Optimizer::scalar_type>> pieces(const Optimizer& o) {
    using T = typename Optimizer::scalar_type;
    std::map<std::string, std::size_t> offset;
    std::size_t at = 0;
    for (const auto& p : o.parameters()) {
        offset[p.name] = at;
        at += static_cast<std::size_t>(p.value.numel());
    }
    const optim::Shard shard = shard_of(o);
    std::vector<Piece<T>> out;
    for (const auto& s : o.state()) {
        const auto dot = s.name.find('.');
        const auto it = dot == std::string::npos ? offset.end() : offset.find(s.name.substr(dot + 1));
        if (it == offset.end()) throw error("ZeRO-1: optimizer state '" + s.name + "' names no parameter");
        const std::size_t lo = std::max(it->second, shard.lo);
        out.push_back({s.name.substr(0, dot), lo, lo + static_cast<std::size_t>(s.value.numel()), s.value.data()});
    }
    return out;
}

/// The file of rank `rank`'s shard among `size`.
inline std::string shard_file_name(int rank, int size) {
    return "optimizer-shard-" + std::to_string(rank) + "-of-" + std::to_string(size) + ".safetensors";
}

/// Writes this rank's state (one flat tensor per slot) to `path`, atomically.
template <class Optimizer>
void write_shard(const std::filesystem::path& path, const Optimizer& o) {
    using T = typename Optimizer::scalar_type;
    const optim::Shard shard = shard_of(o);
    const std::size_t total = optim::total_elements<T>(o.parameters());
    const std::size_t lo = shard.lo, hi = std::min(shard.hi, total);
    std::vector<std::string> slots;
    std::vector<std::vector<T>> flat;
    for (const auto& p : pieces(o)) {
        if (slots.empty() || slots.back() != p.slot) {
            slots.push_back(p.slot);
            flat.emplace_back(hi - lo);
        }
        std::memcpy(flat.back().data() + (p.lo - lo), p.data, (p.hi - p.lo) * sizeof(T));
    }
    std::vector<io::detail::raw_tensor> tensors;
    for (std::size_t i = 0; i < slots.size(); ++i)
        tensors.push_back({slots[i], io::exact_dtype<T>(), {static_cast<std::int64_t>(hi - lo)}, flat[i].data()});
    io::detail::write_raw(path, tensors,
                          {{"lo", std::to_string(lo)}, {"hi", std::to_string(hi)}, {"total", std::to_string(total)}});
}

/// Whether checkpoint `ck` holds its optimizer state in shard files.
inline bool sharded(const io::Checkpoint& ck) {
    for (const auto& f : ck.attached())
        if (f.starts_with("optimizer-shard-")) return true;
    return false;
}

/// Fills `o`'s state (whatever its shard) from checkpoint `ck`: from its shard files, or from the
/// one-process `optimizer.<slot>.<param>` tensors. Throws format_error when an element is missing.
template <class Optimizer>
void restore_state(const io::Checkpoint& ck, Optimizer& o) {
    using T = typename Optimizer::scalar_type;
    const std::size_t total = optim::total_elements<T>(o.parameters());
    const auto want = pieces(o);
    std::vector<std::size_t> filled(want.size(), 0);
    auto copy = [&](const std::string& slot, std::size_t lo, std::size_t hi, const std::byte* src) {
        for (std::size_t i = 0; i < want.size(); ++i) {
            const auto& w = want[i];
            if (w.slot != slot) continue;
            const std::size_t a = std::max(lo, w.lo), b = std::min(hi, w.hi);
            if (a >= b) continue;
            std::memcpy(w.data + (a - w.lo), src + (a - lo) * sizeof(T), (b - a) * sizeof(T));
            filled[i] += b - a;
        }
    };
    auto check_type = [](const io::safetensors_file& f, const io::tensor_info& t, std::size_t n) {
        if (t.type != io::exact_dtype<T>() || t.numel() != static_cast<std::int64_t>(n))
            throw format_error(f.path(), 0, "tensor '" + t.name + "' has another dtype or size than its shard");
    };
    if (sharded(ck)) {
        for (const auto& name : ck.attached()) {
            if (!name.starts_with("optimizer-shard-")) continue;
            const io::safetensors_file f(ck.path() / name);
            std::size_t lo = 0, hi = 0, n = 0;
            try {
                lo = std::stoull(f.metadata().at("lo"));
                hi = std::stoull(f.metadata().at("hi"));
                n = std::stoull(f.metadata().at("total"));
            } catch (const std::exception&) {
                throw format_error(f.path(), 0, "has no lo, hi and total in its metadata");
            }
            if (n != total || lo > hi || hi > total)
                throw format_error(f.path(), 0,
                                   "is a shard of " + std::to_string(n) + " elements; this run's optimizer has " +
                                       std::to_string(total));
            for (const auto& t : f.tensors()) {
                check_type(f, t, hi - lo);
                copy(t.name, lo, hi, f.bytes(t).data());
            }
        }
    } else {
        const io::safetensors_file& f = ck.training_file();
        std::size_t at = 0;
        for (const auto& p : o.parameters()) {
            const auto n = static_cast<std::size_t>(p.value.numel());
            for (const auto& w : want) {
                if (w.hi <= at || w.lo >= at + n) continue;
                const std::string name = "optimizer." + w.slot + "." + p.name;
                const io::tensor_info* t = f.find(name);
                if (!t) throw format_error(f.path(), 0, "has no tensor '" + name + "' (the run expects it)");
                check_type(f, *t, n);
                copy(w.slot, at, at + n, f.bytes(*t).data());
            }
            at += n;
        }
    }
    for (std::size_t i = 0; i < want.size(); ++i)
        if (filled[i] != want[i].hi - want[i].lo)
            throw format_error(ck.path(), 0,
                               "holds no optimizer state '" + want[i].slot + "' for elements [" +
                                   std::to_string(want[i].lo) + ", " + std::to_string(want[i].hi) + ")");
}

/// After each rank updated its shard of `params` (rank r's: `optim::Shard::of(total, r, N)`), every
/// rank's values everywhere: one in-place all-gather per contiguous run of values. `runs` caches the
/// runs (empty: found now).
template <class T>
void gather_parameters(parallel::Communicator& comm, std::span<const Parameter<T>> params,
                       std::vector<std::pair<T*, std::size_t>>& runs) {
    if (runs.empty())
        for (const auto& p : params) {
            T* v = p.value.data();
            const auto n = static_cast<std::size_t>(p.value.numel());
            if (!runs.empty() && runs.back().first + runs.back().second == v)
                runs.back().second += n;
            else
                runs.emplace_back(v, n);
        }
    std::size_t total = 0;
    for (auto [v, n] : runs) total += n;
    const int size = comm.size();
    std::vector<std::size_t> counts(static_cast<std::size_t>(size));
    std::size_t at = 0;
    for (auto [v, n] : runs) {
        for (int r = 0; r < size; ++r) {
            const optim::Shard s = optim::Shard::of(total, r, size);
            const std::size_t a = std::max(at, s.lo), b = std::min(at + n, s.hi);
            counts[static_cast<std::size_t>(r)] = a < b ? b - a : 0;
        }
        comm.all_gather(v, counts);
        at += n;
    }
}

}  // namespace distill::train::zero
