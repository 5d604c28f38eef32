#pragma once
/// @file error.hpp
/// The `distill::error` family: every failure the library reports on bad input or a failed
/// operation. Each error says *where* (file, line, field or tensor) and *what was expected*.

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>

namespace distill {

/// Base of every exception distill throws on bad input or a failed operation.
class error : public std::runtime_error {
public:
    explicit error(const std::string& what) : std::runtime_error(what) {}
};

/// A file could not be opened, read, written, synced or renamed. `path()` names it.
class io_error : public error {
public:
    io_error(std::filesystem::path path, const std::string& what)
        : error(path.string() + ": " + what), path_(std::move(path)) {}
    const std::filesystem::path& path() const noexcept { return path_; }

private:
    std::filesystem::path path_;
};

/// A file's content is malformed. Names the file, the line (1-based; 0 when the format has no lines)
/// and the defect.
class format_error : public error {
public:
    format_error(std::filesystem::path path, std::uint64_t line, const std::string& what)
        : error(path.string() + (line ? ":" + std::to_string(line) : std::string()) + ": " + what),
          path_(std::move(path)),
          line_(line) {}
    const std::filesystem::path& path() const noexcept { return path_; }
    std::uint64_t line() const noexcept { return line_; }

private:
    std::filesystem::path path_;
    std::uint64_t line_;
};

/// A configuration value is missing, unknown, of the wrong type or out of range.
/// `field()` is its JSON path, e.g. `student.n_heads`.
class config_error : public error {
public:
    config_error(std::string field, const std::string& what) : error(field + ": " + what), field_(std::move(field)) {}
    const std::string& field() const noexcept { return field_; }

private:
    std::string field_;
};

/// Tensors whose shapes do not fit the operation or the model.
class shape_error : public error {
public:
    using error::error;
};

/// Training diverged or produced a non-finite value.
class numeric_error : public error {
public:
    using error::error;
};

}  // namespace distill
