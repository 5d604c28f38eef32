#pragma once
// Shared by the libFuzzer targets: the readers take file paths, so each input is written to an
// in-memory file (memfd) and read back through /proc/self/fd/N; no disk traffic per execution.
//
// A target accepts one outcome besides success: a `distill::error`. Anything else escaping (a
// nlohmann exception, std::bad_alloc, std::out_of_range, ...) is an uncaught exception, which
// libFuzzer reports as a crash, just like a sanitizer finding, a hang (-timeout) or an allocation
// over -rss_limit_mb / -malloc_limit_mb.

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include <sys/mman.h>
#include <unistd.h>

namespace distill::fuzz {

/// An in-memory file whose content is replaced for every input.
class MemFile {
public:
    explicit MemFile(const char* name) : fd_(::memfd_create(name, MFD_CLOEXEC)) {
        if (fd_ < 0) std::abort();
        path_ = "/proc/self/fd/" + std::to_string(fd_);
    }
    MemFile(const MemFile&) = delete;
    MemFile& operator=(const MemFile&) = delete;
    ~MemFile() { ::close(fd_); }

    /// Replaces the content with `size` bytes at `data`; returns the path to open it by.
    const std::filesystem::path& set(const void* data, std::size_t size) {
        if (::ftruncate(fd_, 0) != 0) std::abort();
        const auto* p = static_cast<const char*>(data);
        for (std::size_t done = 0; done < size;) {
            const ssize_t n = ::pwrite(fd_, p + done, size - done, static_cast<off_t>(done));
            if (n <= 0) std::abort();
            done += static_cast<std::size_t>(n);
        }
        return path_;
    }
    const std::filesystem::path& set(std::string_view text) { return set(text.data(), text.size()); }

private:
    int fd_;
    std::filesystem::path path_;
};

/// A directory of this process on tmpfs when there is one (`/dev/shm/<name>-<pid>`), for targets whose
/// reader takes a directory; removed when the process exits normally, so the many processes of a
/// -fork run do not leave theirs behind.
class ScratchDir {
public:
    explicit ScratchDir(const std::string& name) {
        const std::filesystem::path base =
            std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
        path_ = base / (name + "-" + std::to_string(::getpid()));
        std::filesystem::create_directories(path_);
    }
    ScratchDir(const ScratchDir&) = delete;
    ScratchDir& operator=(const ScratchDir&) = delete;
    ~ScratchDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    const std::filesystem::path& path() const noexcept { return path_; }

private:
    std::filesystem::path path_;
};

/// Replaces the file at `path` with `bytes` (targets whose reader takes a directory of files).
inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// One scratch directory per fixture family, `<scratch>/<family>`, each holding a copy of the
/// family's `file` from the committed fixtures (`fixture_dir/<family>/<file>`) and the empty
/// subdirectory `subdir` when given; the per-input files are written beside it.
template <std::size_t N>
std::array<std::filesystem::path, N> fixture_copies(const ScratchDir& scratch,
                                                    const std::array<const char*, N>& families,
                                                    const std::filesystem::path& fixture_dir, const char* file,
                                                    const char* subdir = "") {
    std::array<std::filesystem::path, N> d;
    for (std::size_t i = 0; i < N; ++i) {
        d[i] = scratch.path() / families[i];
        std::filesystem::create_directories(d[i] / subdir);
        std::filesystem::copy_file(fixture_dir / families[i] / file, d[i] / file,
                                   std::filesystem::copy_options::overwrite_existing);
    }
    return d;
}

/// Splits a fuzz input into parts at a separator line, so one input can hold several files.
inline std::string_view next_part(std::string_view& rest, std::string_view separator) {
    const auto at = rest.find(separator);
    std::string_view part = rest.substr(0, at);
    rest.remove_prefix(at == std::string_view::npos ? rest.size() : at + separator.size());
    return part;
}

}  // namespace distill::fuzz
