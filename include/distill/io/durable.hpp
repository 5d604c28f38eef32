#pragma once
/// @file durable.hpp
/// Every way distill touches a file so that a crash at any moment leaves the previous good state
/// readable (design.md §5), in one place, every fsync and close result checked:
/// - `atomic_writer` / `write_file_atomic` / `copy_file_atomic`: whole files replaced atomically (temp
///   file, fsync, rename, fsync of the directory): the previous content or the new one, never a mixture;
/// - `append_durably`: one record appended with fsync (a torn append is cut back);
/// - `truncate_durably` / `truncate_to_last_line`: a file cut back (to a size, or to its last complete
///   line after a crash interrupted an append) with the cut made durable;
/// - `mapped_file`: a read-only mapping of a whole file;
/// - `directory_lock`: one process writing into a directory at a time.

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "distill/error.hpp"

namespace distill::detail {

/// "`operation`: `strerror(err)`", the text of every io_error this header throws.
inline std::string io_errno_message(std::string_view operation, int err) {
    return std::string(operation) + ": " + std::strerror(err);
}

/// Writes all `size` bytes to `fd`, retrying after signals and short writes; returns 0 or an errno.
inline int write_all_fd(int fd, const void* data, std::size_t size) noexcept {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
        const ssize_t n = ::write(fd, p, size);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        // write() returning 0 for a non-empty request means the device accepted nothing: out of space.
        if (n == 0) return ENOSPC;
        p += n;
        size -= static_cast<std::size_t>(n);
    }
    return 0;
}

/// fsyncs and closes `fd`, a descriptor of `path` written through: both results checked (close can
/// report a deferred write error). The descriptor is closed either way. Throws io_error naming `path`.
inline void fsync_and_close(int fd, const std::filesystem::path& path) {
    if (::fsync(fd) != 0) {
        const int err = errno;
        ::close(fd);
        throw io_error(path, io_errno_message("cannot fsync", err));
    }
    if (::close(fd) != 0) {
        const int err = errno;
        throw io_error(path, io_errno_message("cannot close", err));
    }
}

/// fstat of the open `fd` of `path`; on failure closes fd and throws io_error with the system's reason.
inline struct stat stat_or_close(int fd, const std::filesystem::path& path) {
    struct stat info {};
    if (::fstat(fd, &info) != 0) {
        const int err = errno;
        ::close(fd);
        throw io_error(path, io_errno_message("cannot stat", err));
    }
    return info;
}

/// The directory holding `path`, "." for a bare file name.
inline std::filesystem::path parent_directory(const std::filesystem::path& path) {
    std::filesystem::path dir = path.parent_path();
    return dir.empty() ? std::filesystem::path(".") : dir;
}

/// fsyncs the directory holding `path` so that a rename or a newly created entry survives a crash.
/// Throws io_error naming `path` on failure.
inline void fsync_parent_directory(const std::filesystem::path& path) {
    const std::filesystem::path dir = parent_directory(path);
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        throw io_error(path, io_errno_message("cannot open directory " + dir.string(), err));
    }
    int err = 0;
    // Some file systems cannot sync a directory and say EINVAL; there is nothing more to make durable.
    if (::fsync(fd) != 0 && errno != EINVAL) err = errno;
    if (err != 0) {
        ::close(fd);
        throw io_error(path, io_errno_message("cannot fsync directory " + dir.string(), err));
    }
    if (::close(fd) != 0) {
        err = errno;
        throw io_error(path, io_errno_message("cannot close directory " + dir.string(), err));
    }
}

}  // namespace distill::detail

namespace distill::io {

/// Streams a file's new content into `<name>.tmp.<pid>` next to it and, on `commit()`, makes it the
/// file's content atomically. Until `commit()` returns, the previous file is untouched; a writer that
/// is destroyed or fails before committing removes its temp file.
///
/// Any failure (open, short write, out of space, fsync, rename) throws io_error naming the target
/// path and the system's reason; the writer is then closed and further writes throw too.
class atomic_writer {
public:
    /// Creates the temp file for `path`. Precondition: the directory of `path` exists.
    explicit atomic_writer(std::filesystem::path path)
        : path_(std::move(path)), temp_(path_.string() + ".tmp." + std::to_string(::getpid())) {
        // O_TRUNC rather than O_EXCL: a temp file left by a crashed process with our pid is garbage.
        fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (fd_ < 0) {
            const int err = errno;
            throw io_error(path_, distill::detail::io_errno_message("cannot create temp file " + temp_.string(), err));
        }
    }

    atomic_writer(const atomic_writer&) = delete;
    atomic_writer& operator=(const atomic_writer&) = delete;

    /// Takes over `other`'s temp file; `other` is left closed.
    atomic_writer(atomic_writer&& other) noexcept
        : path_(std::move(other.path_)), temp_(std::move(other.temp_)), fd_(std::exchange(other.fd_, -1)) {}

    /// Abandons this writer's own temp file, then takes over `other`'s.
    atomic_writer& operator=(atomic_writer&& other) noexcept {
        if (this != &other) {
            abandon();
            path_ = std::move(other.path_);
            temp_ = std::move(other.temp_);
            fd_ = std::exchange(other.fd_, -1);
        }
        return *this;
    }

    /// Removes the temp file unless `commit()` succeeded; the previous file stays as it was.
    ~atomic_writer() { abandon(); }

    /// Appends `size` bytes to the new content. Throws io_error (and removes the temp file) on failure.
    void write(const void* data, std::size_t size) {
        require_open("write");
        if (const int err = distill::detail::write_all_fd(fd_, data, size); err != 0) {
            fail("cannot write temp file " + temp_.string(), err);
        }
    }

    /// Appends `bytes` to the new content.
    void write(std::span<const std::byte> bytes) { write(bytes.data(), bytes.size()); }

    /// Makes the written content the file's content: fsync, rename over the target, fsync the directory.
    /// Throws io_error on failure; unless the failure is the final directory fsync, the previous file
    /// is untouched and the temp file removed.
    void commit() {
        require_open("commit");
        if (::fsync(fd_) != 0) {
            const int err = errno;
            fail("cannot fsync temp file " + temp_.string(), err);
        }
        // close() can report a deferred write error (e.g. on NFS), so it must succeed before the rename.
        const int fd = std::exchange(fd_, -1);
        if (::close(fd) != 0) {
            const int err = errno;
            ::unlink(temp_.c_str());
            throw io_error(path_, distill::detail::io_errno_message("cannot close temp file " + temp_.string(), err));
        }
        if (::rename(temp_.c_str(), path_.c_str()) != 0) {
            const int err = errno;
            ::unlink(temp_.c_str());
            throw io_error(path_,
                           distill::detail::io_errno_message("cannot rename " + temp_.string() + " over it", err));
        }
        distill::detail::fsync_parent_directory(path_);
    }

    /// The file this writer replaces.
    const std::filesystem::path& path() const noexcept { return path_; }

    /// The temp file the content goes to until `commit()`.
    const std::filesystem::path& temp_path() const noexcept { return temp_; }

private:
    void require_open(const char* operation) const {
        if (fd_ < 0) {
            throw io_error(path_, std::string(operation) +
                                      " on an atomic_writer that is closed "
                                      "(already committed, failed or moved from)");
        }
    }

    /// Closes and removes the temp file, then throws io_error with the system's reason `err`.
    [[noreturn]] void fail(const std::string& operation, int err) {
        abandon();
        throw io_error(path_, distill::detail::io_errno_message(operation, err));
    }

    void abandon() noexcept {
        if (fd_ >= 0) {
            ::close(std::exchange(fd_, -1));
            ::unlink(temp_.c_str());
        }
    }

    std::filesystem::path path_;
    std::filesystem::path temp_;
    int fd_ = -1;
};

/// Replaces the content of `path` with `bytes` atomically (see atomic_writer). Throws io_error.
inline void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes) {
    atomic_writer writer(path);
    writer.write(bytes);
    writer.commit();
}

/// Replaces the content of `path` with the text `text` atomically (see atomic_writer). Throws io_error.
inline void write_file_atomic(const std::filesystem::path& path, std::string_view text) {
    write_file_atomic(path, std::as_bytes(std::span(text.data(), text.size())));
}

/// Appends `record` to `path` (created if absent) with one O_APPEND write and fsyncs it, so the record
/// is durable when this returns. If the write fails part way, the file is cut back to its previous
/// length so no torn record is left behind. Throws io_error naming `path` and the system's reason.
inline void append_durably(const std::filesystem::path& path, std::string_view record) {
    bool created = false;
    int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
        created = fd >= 0;
    }
    if (fd < 0) {
        const int err = errno;
        throw io_error(path, distill::detail::io_errno_message("cannot open for appending", err));
    }

    const struct stat before = distill::detail::stat_or_close(fd, path);
    if (const int err = distill::detail::write_all_fd(fd, record.data(), record.size()); err != 0) {
        // Best effort: a failure here leaves the torn tail, which is still no worse than not trying.
        [[maybe_unused]] const int ignored = ::ftruncate(fd, before.st_size);
        ::close(fd);
        throw io_error(path, distill::detail::io_errno_message("cannot append", err));
    }
    distill::detail::fsync_and_close(fd, path);
    // A new file's directory entry is only durable once the directory itself is synced.
    if (created) distill::detail::fsync_parent_directory(path);
}

/// A read-only memory mapping of a whole regular file; unmapped on destruction.
class mapped_file {
public:
    mapped_file() = default;

    /// Maps `path`. Throws io_error if it cannot be opened, is not a regular file or cannot be mapped.
    explicit mapped_file(const std::filesystem::path& path) {
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            const int err = errno;
            throw io_error(path, distill::detail::io_errno_message("cannot open", err));
        }
        const struct stat info = distill::detail::stat_or_close(fd, path);
        if (!S_ISREG(info.st_mode)) {
            ::close(fd);
            throw io_error(path, "not a regular file");
        }
        size_ = static_cast<std::size_t>(info.st_size);
        // mmap rejects a length of 0; an empty file is simply an empty span.
        if (size_ > 0) {
            void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                const int err = errno;
                ::close(fd);
                throw io_error(path, distill::detail::io_errno_message("cannot mmap", err));
            }
            data_ = static_cast<const std::byte*>(p);
        }
        ::close(fd);  // the mapping keeps the file alive
    }

    mapped_file(const mapped_file&) = delete;
    mapped_file& operator=(const mapped_file&) = delete;
    mapped_file(mapped_file&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
    mapped_file& operator=(mapped_file&& other) noexcept {
        if (this != &other) {
            unmap();
            data_ = std::exchange(other.data_, nullptr);
            size_ = std::exchange(other.size_, 0);
        }
        return *this;
    }
    ~mapped_file() { unmap(); }

    /// The file's bytes.
    std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }

    /// Drops the whole pages inside bytes [begin, end) from this process's memory once a reader has
    /// copied them out, so that reading a large file tensor by tensor holds one tensor's pages, not the
    /// file's. The mapping is read-only and private, so nothing is lost: the kernel's page cache keeps
    /// the bytes, and a later access maps them again.
    void release(std::size_t begin, std::size_t end) const noexcept {
        static const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
        const auto base = reinterpret_cast<std::uintptr_t>(data_);
        const std::uintptr_t first = (base + begin + page - 1) / page * page,
                             last = (base + std::min(end, size_)) / page * page;
        if (data_ && first < last) (void)::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
    }

private:
    void unmap() noexcept {
        if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
        data_ = nullptr;
        size_ = 0;
    }

    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
};

/// Replaces the content of `to` with the bytes of `from` atomically. Throws io_error naming the file.
inline void copy_file_atomic(const std::filesystem::path& from, const std::filesystem::path& to) {
    std::ifstream in(from, std::ios::binary);
    if (!in) throw io_error(from, "cannot open");
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw io_error(from, "cannot read");
    write_file_atomic(to, bytes);
}

/// Cuts `path` to its first `size` bytes and makes the cut durable (fsync, then close, both checked).
/// Throws io_error naming `path` and the system's reason.
inline void truncate_durably(const std::filesystem::path& path, std::uint64_t size) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        throw io_error(path, distill::detail::io_errno_message("cannot open for truncating", err));
    }
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
        const int err = errno;
        ::close(fd);
        throw io_error(path, distill::detail::io_errno_message("cannot truncate", err));
    }
    distill::detail::fsync_and_close(fd, path);
}

/// Cuts a line-oriented file (JSONL) back to its last complete line: a last line without its newline
/// is a record whose append a crash interrupted. Returns the bytes removed (0 when the file is absent,
/// empty or ends with a newline). Throws io_error.
inline std::uint64_t truncate_to_last_line(const std::filesystem::path& path) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
        if (ec) throw io_error(path, "cannot stat: " + ec.message());
        return 0;
    }
    std::uint64_t size = 0, keep = 0;
    {
        const mapped_file map(path);
        const auto bytes = map.bytes();
        size = bytes.size();
        if (size == 0 || bytes.back() == std::byte('\n')) return 0;
        for (std::size_t i = bytes.size(); i > 0; --i)
            if (bytes[i - 1] == std::byte('\n')) {
                keep = i;
                break;
            }
    }
    truncate_durably(path, keep);
    return size - keep;
}

/// An exclusive advisory lock (flock) on `<dir>/.lock`, held while a process writes into `dir`: two
/// processes writing one output directory would interleave their files and delete each other's
/// temporaries. The kernel drops the lock when the process dies, SIGKILL included, so a crashed run
/// never leaves a stale lock behind.
class directory_lock {
public:
    directory_lock() = default;
    /// Takes the lock on `dir` (which must exist). When another process holds it, throws config_error
    /// naming `key` (the setting that chose the directory) and `activity` ("training").
    directory_lock(const std::filesystem::path& dir, const std::string& key, const std::string& activity) {
        const auto path = dir / ".lock";
        fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd_ < 0) {
            const int err = errno;
            throw io_error(path, distill::detail::io_errno_message("cannot open the run's lock file", err));
        }
        if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
            ::close(fd_);
            fd_ = -1;
            throw config_error(key, "another process is " + activity + " into " + dir.string() + " (it holds " +
                                        path.string() + "); one run per directory");
        }
    }
    directory_lock(const directory_lock&) = delete;
    directory_lock& operator=(const directory_lock&) = delete;
    directory_lock(directory_lock&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    directory_lock& operator=(directory_lock&& o) noexcept {
        if (this != &o) {
            release();
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    ~directory_lock() { release(); }

private:
    void release() noexcept {
        // Closing the descriptor releases the flock; nothing was written through it, so there is
        // no deferred write error for close() to report.
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }
    int fd_ = -1;
};

}  // namespace distill::io
