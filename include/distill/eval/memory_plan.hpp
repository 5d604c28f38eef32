#pragma once
/// @file eval/memory_plan.hpp
/// A run's memory plan: what each part of it (the student's weights, gradients and activations, the
/// optimizer's state, the KV caches of sampling, the teacher, the loss's buffers) will take, computed
/// before anything is allocated, printed as a table, and compared with the memory the machine has
/// (`memory_budget`: MemAvailable of /proc/meminfo and the cgroup v2 limit, or a limit the job
/// sets) so that a run that will not fit is refused with that table (`check_fits`).

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "distill/error.hpp"

namespace distill::eval {

/// One line of a memory plan.
struct MemoryPart {
    std::string name;       ///< what takes the memory ("student weights (frozen)", "optimizer state", ...)
    std::int64_t bytes;     ///< how much
    std::string detail;     ///< how it was counted ("2 × 294,912 trainable elements")
    bool resident = false;  ///< already allocated when the plan is made (a teacher loaded before the run)
    /// Held for a while and freed again (a weights file being read): it adds to the parts listed
    /// before it, which exist while it does, and not to those after it, allocated once it is freed.
    bool transient = false;
};

/// "1.23 GiB", "45.6 MiB", "789 KiB", "12 B".
inline std::string format_bytes(std::int64_t b) {
    char buf[32];
    const double x = double(b);
    if (x >= 1024.0 * 1024 * 1024)
        std::snprintf(buf, sizeof buf, "%.2f GiB", x / (1024.0 * 1024 * 1024));
    else if (x >= 1024.0 * 1024)
        std::snprintf(buf, sizeof buf, "%.1f MiB", x / (1024.0 * 1024));
    else if (x >= 1024.0)
        std::snprintf(buf, sizeof buf, "%.0f KiB", x / 1024.0);
    else
        std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(b));
    return buf;
}

/// The parts of a run and their bytes, in the order they were added.
class MemoryPlan {
public:
    /// Adds a part (parts of 0 bytes are listed too: "no gradients" is information).
    void add(std::string name, std::int64_t bytes, std::string detail = "", bool resident = false) {
        parts_.push_back({std::move(name), bytes, std::move(detail), resident, false});
    }
    /// Adds a transient part (see `MemoryPart::transient`), held on top of the parts added so far.
    void add_transient(std::string name, std::int64_t bytes, std::string detail = "") {
        parts_.push_back({std::move(name), bytes, std::move(detail), false, true});
    }
    const std::vector<MemoryPart>& parts() const noexcept { return parts_; }
    /// The peak: every lasting part, or a transient part with the parts before it, whichever is more.
    std::int64_t total() const noexcept { return peak(true); }
    /// The peak without the parts already resident when the plan was made.
    std::int64_t to_allocate() const noexcept { return peak(false); }
    /// The bytes of a part by name (0 when absent).
    std::int64_t bytes_of(const std::string& name) const noexcept {
        for (const auto& p : parts_)
            if (p.name == name) return p.bytes;
        return 0;
    }
    /// One line per part, then the total: "  student weights (frozen)   1.85 GiB  494,032,768 fp32".
    std::string table() const {
        std::size_t width = 5;
        for (const auto& p : parts_) width = std::max(width, p.name.size());
        std::string out;
        auto line = [&](const std::string& name, std::int64_t bytes, const std::string& detail) {
            char buf[64];
            std::snprintf(buf, sizeof buf, "%10s", format_bytes(bytes).c_str());
            out += "  " + name + std::string(width - name.size() + 2, ' ') + buf;
            if (!detail.empty()) out += "  " + detail;
            out += "\n";
        };
        for (const auto& p : parts_)
            line(p.name, p.bytes,
                 p.detail + (p.resident ? " (loaded)" : "") + (p.transient ? " (freed after loading)" : ""));
        line("total", total(), "peak");
        return out;
    }

private:
    std::int64_t peak(bool with_resident) const noexcept {
        std::int64_t lasting = 0, best = 0;
        for (const auto& p : parts_) {
            if (p.resident && !with_resident) continue;
            if (p.transient)
                best = std::max(best, lasting + p.bytes);
            else
                lasting += p.bytes;
        }
        return std::max(best, lasting);
    }

    std::vector<MemoryPart> parts_;
};

/// The memory a run may use and where that figure comes from.
struct MemoryBudget {
    std::int64_t bytes = 0;  ///< 0: unknown (no /proc/meminfo, no cgroup limit): nothing is refused
    std::string source;      ///< "memory_limit_gib", "MemAvailable", "cgroup memory.max"
    /// Whether `bytes` counts what is already allocated (a limit on the process's whole memory) or
    /// only what is still free (MemAvailable: the loaded teacher is already out of it).
    bool includes_resident = true;
};

namespace detail {
/// The "MemAvailable:" line of /proc/meminfo in bytes.
inline std::optional<std::int64_t> mem_available() {
    std::ifstream in("/proc/meminfo");
    std::string key;
    long long kb = 0;
    std::string unit;
    while (in >> key >> kb >> unit)
        if (key == "MemAvailable:") return std::int64_t(kb) * 1024;
    return std::nullopt;
}
/// /sys/fs/cgroup/memory.max in bytes when it holds a number ("max": no limit).
inline std::optional<std::int64_t> cgroup_limit() {
    std::ifstream in("/sys/fs/cgroup/memory.max");
    std::string v;
    if (!(in >> v) || v == "max") return std::nullopt;
    try {
        return std::int64_t(std::stoll(v));
    } catch (...) {
        return std::nullopt;
    }
}
}  // namespace detail

/// What a run may use: `limit_gib` GiB when > 0 (the job's memory_limit_gib); else the tighter of
/// MemAvailable (free now, so compared with what is still to allocate) and the cgroup v2 limit
/// memory.max (the process's whole memory, compared with the whole plan).
inline MemoryBudget memory_budget(double limit_gib, const MemoryPlan& plan) {
    if (limit_gib > 0) return {std::int64_t(limit_gib * 1024.0 * 1024.0 * 1024.0), "memory_limit_gib", true};
    MemoryBudget best;
    if (auto a = detail::mem_available()) best = {*a, "MemAvailable", false};
    if (auto c = detail::cgroup_limit()) {
        // the tighter of the two, each against what it is compared with
        const std::int64_t slack_c = *c - plan.total();
        const std::int64_t slack_a = best.bytes ? best.bytes - plan.to_allocate() : INT64_MAX;
        if (slack_c < slack_a) best = {*c, "cgroup memory.max", true};
    }
    return best;
}

/// Throws `config_error` naming `field` when the plan exceeds the budget, the table in the message,
/// then `advice` (what would lower the plan) when given.
inline void check_fits(const MemoryPlan& plan, const MemoryBudget& budget, const std::string& field,
                       const std::string& advice = "") {
    if (budget.bytes <= 0) return;
    const std::int64_t need = budget.includes_resident ? plan.total() : plan.to_allocate();
    if (need <= budget.bytes) return;
    std::string table = plan.table();
    if (advice.empty() && !table.empty()) table.pop_back();
    throw config_error(field, "the run needs " + format_bytes(need) +
                                  (budget.includes_resident ? "" : " more (beyond what is loaded)") + ", but " +
                                  budget.source + " allows " + format_bytes(budget.bytes) +
                                  "; refused before the run allocates. Memory plan:\n" + table + advice);
}

}  // namespace distill::eval
