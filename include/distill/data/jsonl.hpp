#pragma once
/// @file jsonl.hpp
/// Reading JSON Lines files the way users actually have them: a UTF-8 byte order mark, CRLF line
/// ends, blank lines and a missing final newline are all accepted. Files are streamed: memory is
/// bounded by `max_line_bytes`, not by the file's size. Every defect of a line (invalid
/// UTF-8, a line over the size limit, invalid JSON) is an error naming `file:line` and the defect,
/// or, with `on_bad_line = "skip"`, a counted and reported skip. The format-specific checks
/// (missing fields, wrong types) are the caller's (see `data/chat.hpp`), through `bad_line`.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <istream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <nlohmann/json.hpp>

#include "distill/error.hpp"

namespace distill::data {

/// How a JSONL reader treats defective lines. Keys are the JSON keys of a job's data entry.
struct JsonlConfig {
    std::string on_bad_line = "error";  ///< "error": stop at the first bad line; "skip": count, report, go on
    std::uint64_t max_line_bytes =
        1u << 20;  ///< longer lines are a defect (guards against a binary file or a missing newline)

    /// Throws `config_error` naming the field when a value is out of range.
    void validate(const std::string& path = "data") const {
        if (on_bad_line != "error" && on_bad_line != "skip")
            throw config_error(path + ".on_bad_line", "expected \"error\" or \"skip\", got \"" + on_bad_line + "\"");
        if (max_line_bytes < 2) throw config_error(path + ".max_line_bytes", "must be >= 2");
    }
};

/// One skipped line: where it was and what was wrong with it.
struct BadLine {
    std::uint64_t line = 0;  ///< 1-based line number
    std::string defect{};    ///< e.g. "invalid JSON at column 7: unexpected '}'"
};

/// Thrown by a line handler to reject its line; the reader turns it into a `format_error` naming
/// `file:line`, or a skip, as `on_bad_line` says.
class bad_line : public error {
public:
    using error::error;
};

/// Counts of a read: what was read, skipped and why.
struct JsonlStats {
    std::uint64_t lines = 0;         ///< physical lines, blank ones included
    std::uint64_t records = 0;       ///< lines handed to the handler and accepted
    std::uint64_t blank_lines = 0;   ///< empty or whitespace-only lines (ignored)
    std::vector<BadLine> skipped{};  ///< bad lines skipped under on_bad_line = "skip"
};

namespace detail {

/// Byte offset of the first invalid UTF-8 sequence in `s` (overlong forms, surrogates and code points
/// above U+10FFFF are invalid, as RFC 3629 says), or npos when `s` is valid.
inline std::size_t invalid_utf8_at(std::string_view s) noexcept {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    std::size_t i = 0;
    while (i < n) {
        const unsigned char c = p[i];
        if (c < 0x80) {
            ++i;
            continue;
        }
        std::size_t len = 0;
        std::uint32_t cp = 0, min = 0;
        if ((c & 0xe0) == 0xc0)
            len = 2, cp = c & 0x1f, min = 0x80;
        else if ((c & 0xf0) == 0xe0)
            len = 3, cp = c & 0x0f, min = 0x800;
        else if ((c & 0xf8) == 0xf0)
            len = 4, cp = c & 0x07, min = 0x10000;
        else
            return i;
        if (i + len > n) return i;
        for (std::size_t k = 1; k < len; ++k) {
            if ((p[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += len;
    }
    return std::string_view::npos;
}

/// nlohmann's parse error text without its "[json.exception...] parse error at line 1, " prefix.
inline std::string json_defect(const nlohmann::json::parse_error& e) {
    std::string what = e.what();
    const auto pos = what.find("parse error");
    if (pos != std::string::npos) what = what.substr(pos);
    const auto col = what.find(", column ");
    if (col != std::string::npos) what = "at column" + what.substr(col + 8);
    return "invalid JSON " + what;
}

/// Any other nlohmann exception's text without its "[json.exception.<kind>.<id>] " prefix: a number
/// out of range while parsing ("number overflow parsing '1e400'"), or a handler's type error.
inline std::string json_message(const nlohmann::json::exception& e) {
    std::string what = e.what();
    if (what.starts_with("[json.exception.")) {
        const auto end = what.find("] ");
        if (end != std::string::npos) what = what.substr(end + 2);
    }
    return what;
}

/// Reads a stream line by line keeping at most `max + 1` bytes of a line (the extra byte for a CR), so
/// memory stays bounded by the line limit whatever the input: a huge file, a binary file without
/// newlines, or an endless stream. Longer lines are consumed and reported with their full length.
class line_reader {
public:
    line_reader(std::istream& in, std::uint64_t max) : in_(in), max_(max) {}

    /// The next line without its LF (and without a CR before it), or false at the end of the input.
    /// `length` is the line's full length; when it is over `max`, `line` holds only its beginning.
    bool next(std::string& line, std::uint64_t& length) {
        std::streambuf* buf = in_.rdbuf();
        line.clear();
        length = 0;
        if (buf->sgetc() == std::char_traits<char>::eof()) return false;
        int last = 0;
        for (int c = buf->sbumpc(); c != std::char_traits<char>::eof() && c != '\n'; c = buf->sbumpc()) {
            if (length <= max_) line.push_back(static_cast<char>(c));
            ++length;
            last = c;
        }
        if (last == '\r') {
            --length;
            if (line.size() > length) line.pop_back();
        }
        return true;
    }

private:
    std::istream& in_;
    std::uint64_t max_;
};

}  // namespace detail

/// Reads `path` line by line and calls `handle(line_number, json)` for every non-blank line that is
/// valid UTF-8 JSON within the size limit. The handler throws `bad_line` to reject its line (a
/// nlohmann::json exception it lets escape, e.g. from reading a field of the wrong type, rejects the
/// line too).
/// Under on_bad_line = "error" the first defect throws `format_error` naming `path:line`; under
/// "skip" it is counted in the returned stats. Throws io_error when the file cannot be read.
inline JsonlStats read_jsonl(const std::filesystem::path& path, const JsonlConfig& config,
                             const std::function<void(std::uint64_t, const nlohmann::json&)>& handle) {
    config.validate();
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error(path, "cannot open for reading");

    JsonlStats stats;
    const bool skip = config.on_bad_line == "skip";
    auto reject = [&](std::uint64_t line, std::string defect) {
        if (!skip) throw format_error(path, line, defect);
        stats.skipped.push_back({line, std::move(defect)});
    };
    detail::line_reader reader(in, config.max_line_bytes);
    std::string buffer;
    std::uint64_t length = 0, line_no = 0;
    while (reader.next(buffer, length)) {
        std::string_view line = buffer;
        // A UTF-8 byte order mark (Windows editors write one) is an encoding marker, not content.
        if (line_no == 0 && line.starts_with("\xEF\xBB\xBF")) {
            line.remove_prefix(3);
            length -= 3;
        }
        ++line_no;
        ++stats.lines;
        if (length > config.max_line_bytes) {
            reject(line_no, "line of " + std::to_string(length) + " bytes is over the limit of " +
                                std::to_string(config.max_line_bytes) + " bytes (max_line_bytes)");
            continue;
        }
        if (line.find_first_not_of(" \t\r\f\v") == std::string_view::npos) {
            ++stats.blank_lines;
            continue;
        }
        if (const std::size_t at = detail::invalid_utf8_at(line); at != std::string_view::npos) {
            reject(line_no, "invalid UTF-8 at byte " + std::to_string(at + 1) + " of the line");
            continue;
        }
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::parse_error& e) {
            reject(line_no, detail::json_defect(e));
            continue;
        } catch (const nlohmann::json::exception& e) {
            // Valid syntax the parser still refuses, e.g. a number beyond double's range (1e400).
            reject(line_no, "invalid JSON: " + detail::json_message(e));
            continue;
        }
        try {
            handle(line_no, j);
            ++stats.records;
        } catch (const bad_line& e) {
            reject(line_no, e.what());
        } catch (const nlohmann::json::exception& e) {
            // A handler that reads a field with the wrong type: a defect of the line, not a crash.
            reject(line_no, "wrong type: " + detail::json_message(e));
        }
    }
    if (in.bad()) throw io_error(path, "read error");
    return stats;
}

}  // namespace distill::data

BOOST_HANA_ADAPT_STRUCT(distill::data::JsonlConfig, on_bad_line, max_line_bytes);
