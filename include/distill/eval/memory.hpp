#pragma once
/// @file memory.hpp
/// Peak resident memory of a stretch of work, read from Linux's /proc: the evaluation reports how
/// much memory loading and running each model takes.
///
/// `PeakMemory` resets the kernel's high-water mark (`/proc/self/clear_refs`, "5") at its start and
/// reports `VmHWM` minus the resident size at the start: the memory the work added at its peak
/// (weights, activations, caches), independent of what the process held before. Where the reset is
/// not permitted the absolute high-water mark is reported and `exact()` is false.
///
/// glibc keeps freed memory and raises its mmap threshold after large frees, so a model loaded
/// after another would reuse pages already resident and look free. Before measuring, the heap's
/// free pages are returned to the system (`malloc_trim`) and the mmap threshold is pinned at
/// 128 KiB (the glibc default; pinning stops the dynamic raise): every arena then comes from fresh
/// pages and is counted.

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace distill::eval {

namespace detail {

/// A "VmRSS:" / "VmHWM:" line of /proc/self/status in bytes, or nullopt where there is none.
inline std::optional<std::int64_t> status_bytes(const char* key) {
    std::FILE* f = std::fopen("/proc/self/status", "r");
    if (!f) return std::nullopt;
    char line[256];
    std::optional<std::int64_t> out;
    const std::size_t n = std::strlen(key);
    while (std::fgets(line, sizeof line, f)) {
        if (std::strncmp(line, key, n) == 0) {
            long long kb = 0;
            if (std::sscanf(line + n, "%lld", &kb) == 1) out = static_cast<std::int64_t>(kb) * 1024;
            break;
        }
    }
    std::fclose(f);
    return out;
}

}  // namespace detail

/// The process's resident set size in bytes (0 where /proc is unavailable).
inline std::int64_t resident_bytes() {
    return detail::status_bytes("VmRSS:").value_or(0);
}

/// Measures the peak memory a stretch of work adds (see the file comment).
class PeakMemory {
public:
    /// Resets the high-water mark and notes the current resident size.
    PeakMemory() {
#if defined(__GLIBC__)
        static const bool pinned = mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1;
        (void)pinned;
        malloc_trim(0);
#endif
        if (std::FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
            exact_ = std::fputs("5", f) >= 0;
            exact_ = (std::fclose(f) == 0) && exact_;
        }
        start_ = exact_ ? resident_bytes() : 0;
    }
    /// Bytes added at the peak since construction (the absolute peak when `exact()` is false).
    std::int64_t peak_bytes() const {
        const std::int64_t hwm = detail::status_bytes("VmHWM:").value_or(0);
        return hwm > start_ ? hwm - start_ : 0;
    }
    /// Whether the high-water mark could be reset (else the figure includes everything before).
    bool exact() const noexcept {
        return exact_;
    }

private:
    bool exact_ = false;
    std::int64_t start_ = 0;
};

}  // namespace distill::eval
