#pragma once
/// @file topk_cache.hpp
/// The top-k cache: a teacher's per-token top-k log-probabilities for every generated answer, in an
/// open, versioned, memory-mappable binary file that grows one durable record per answer.
///
/// Layout (all integers little-endian; every record starts on an 8-byte boundary; `docs/teachers.md`
/// has the full specification):
///
///     header   "DSTLTOPK"  u32 version=2  u32 header_bytes  u32 k  u32 vocab_size
///              u32 fingerprint_bytes  u32 tokenizer_bytes  u32 header_crc  u32 0
///              fingerprint  tokenizer  zero padding to 8
///     record*  "TKRC"  u32 n (positions)  u32 id_bytes  u32 crc32(n, id_bytes, payload)
///              payload: id (UTF-8), zero padding to 4, i32 token[n], i32 top_id[n*k],
///                       f32 top_logprob[n*k], f32 tail_mass[n], zero padding to 8
///
/// `header_crc` is the CRC-32 of the whole header with that field read as 0, so every byte of the file
/// is covered by a checksum: a flipped bit anywhere is an error, never a silently different value.
/// Version 1 files (no header checksum, a 32-byte fixed header, record checksums over the payload
/// only) are still read.
///
/// `token[i]` is the answer's i-th token, `top_id[i*k .. i*k+k)` the k most likely ids at that
/// position (most likely first), `top_logprob` their natural-log probabilities and `tail_mass[i]`
/// the probability of every other id, `1 - Σ exp(top_logprob)`. An empty slot (an API teacher's
/// token that maps to no id of the tokenizer, teacher/openai_format.hpp) is id -1 with
/// log-probability -inf, after the others: its probability is part of the tail mass. A file is validated completely
/// when opened (like `safetensors_file`): magic, version, header bounds, and per record its bounds,
/// checksum, ids inside the vocabulary, log-probabilities <= 0 in descending order, tail mass in
/// [0, 1]. An incomplete last record (a crash during an append) is reported as such, and
/// `topk_complete_prefix` finds where to cut it off.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "distill/detail/hash.hpp"
#include "distill/error.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/safetensors.hpp"

static_assert(std::endian::native == std::endian::little,
              "the top-k cache is read and written in native little-endian order");

namespace distill::io {

/// What a top-k cache file says about itself.
struct topk_header {
    std::uint32_t version = 1;
    std::uint32_t k = 0;           ///< log-probabilities per position
    std::uint32_t vocab_size = 0;  ///< every id is below this
    std::string fingerprint{};     ///< the generation fingerprint of the teacher that wrote it
    std::string tokenizer{};       ///< the id of the tokenizer the ids belong to, e.g. "byte-v1"
};

/// One answer's top-k data: views into the mapped file.
struct topk_record {
    std::string_view id{};                    ///< the example id
    std::span<const std::int32_t> tokens{};   ///< (n) the answer's tokens
    std::span<const std::int32_t> top_ids{};  ///< (n, k)
    std::span<const float> top_logprobs{};    ///< (n, k)
    std::span<const float> tail_mass{};       ///< (n)
    std::uint64_t offset = 0;                 ///< byte offset of the record in the file
    std::size_t positions() const noexcept { return tokens.size(); }
};

namespace detail {

inline constexpr char file_magic[8] = {'D', 'S', 'T', 'L', 'T', 'O', 'P', 'K'};
inline constexpr char record_magic[4] = {'T', 'K', 'R', 'C'};
inline constexpr std::uint32_t current_version = 2;
inline constexpr std::uint32_t max_k = 1024;
inline constexpr std::size_t fixed_header_v1 = 32;
inline constexpr std::size_t fixed_header = 40;  // version 2: + u32 header_crc, u32 reserved
inline constexpr std::size_t header_crc_at = 32;
inline constexpr std::size_t record_header = 16;

constexpr std::size_t fixed_header_of(std::uint32_t version) noexcept {
    return version == 1 ? fixed_header_v1 : fixed_header;
}

constexpr std::uint64_t pad(std::uint64_t n, std::uint64_t to) noexcept {
    return (n + to - 1) / to * to;
}

inline void put32(std::string& out, std::uint32_t v) {
    out.append(reinterpret_cast<const char*>(&v), 4);
}

inline std::uint32_t get32(const std::byte* p) noexcept {
    std::uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// Payload bytes of a record with `id_bytes` id bytes, n positions and k entries each.
constexpr std::uint64_t payload_bytes(std::uint64_t id_bytes, std::uint64_t n, std::uint64_t k) noexcept {
    return pad(pad(id_bytes, 4) + 4 * n * (2 + 2 * k), 8);
}

// The CRC-32 of a header of `size` bytes at `p`, its checksum field read as 0 (version 2).
inline std::uint32_t header_crc(const void* p, std::size_t size) noexcept {
    const auto* b = static_cast<const unsigned char*>(p);
    const std::uint32_t zero = 0;
    std::uint32_t crc = distill::detail::crc32(b, header_crc_at);
    crc = distill::detail::crc32(&zero, 4, crc);
    return distill::detail::crc32(b + header_crc_at + 4, size - header_crc_at - 4, crc);
}

// The checksum of the record at `r` with `payload` payload bytes: version 2 covers n and id_bytes too,
// so a flipped length cannot silently shorten an id; version 1 covers the payload only.
inline std::uint32_t record_crc(const std::byte* r, std::uint64_t payload, std::uint32_t version) noexcept {
    if (version == 1) return distill::detail::crc32(r + record_header, payload);
    return distill::detail::crc32(r + record_header, payload, distill::detail::crc32(r + 4, 8));
}

}  // namespace detail

/// The header bytes of a new cache file for `header` (always the current version, 2; `header.version` is ignored).
inline std::string encode_topk_header(const topk_header& header) {
    using namespace detail;
    if (header.k < 1 || header.k > max_k)
        throw error("top-k cache: k must be in [1, 1024], got " + std::to_string(header.k));
    if (header.vocab_size < 1) throw error("top-k cache: vocab_size must be >= 1");
    if (header.fingerprint.size() + header.tokenizer.size() > (1u << 20))
        throw error("top-k cache: fingerprint and tokenizer id are over 1 MiB together");
    std::string out(file_magic, 8);
    const std::uint64_t total = pad(fixed_header + header.fingerprint.size() + header.tokenizer.size(), 8);
    put32(out, current_version);
    put32(out, std::uint32_t(total));
    put32(out, header.k);
    put32(out, header.vocab_size);
    put32(out, std::uint32_t(header.fingerprint.size()));
    put32(out, std::uint32_t(header.tokenizer.size()));
    put32(out, 0);  // header_crc, filled in below
    put32(out, 0);  // reserved
    out += header.fingerprint;
    out += header.tokenizer;
    out.resize(total, '\0');
    const std::uint32_t crc = header_crc(out.data(), out.size());
    std::memcpy(out.data() + header_crc_at, &crc, 4);
    return out;
}

/// The bytes of one record of a file of format `version` (1 only to append to an old file). `top_ids`/
/// `top_logprobs` hold tokens.size() * k entries; the tail mass is computed from them. Throws
/// distill::error when the sizes disagree.
inline std::string encode_topk_record(std::string_view id, std::uint32_t k, std::span<const std::int32_t> tokens,
                                      std::span<const std::int32_t> top_ids, std::span<const float> top_logprobs,
                                      std::uint32_t version = detail::current_version) {
    using namespace detail;
    const std::size_t n = tokens.size();
    if (top_ids.size() != n * k || top_logprobs.size() != n * k)
        throw error("top-k cache record '" + std::string(id) + "': " + std::to_string(top_ids.size()) + " ids and " +
                    std::to_string(top_logprobs.size()) + " log-probabilities for " + std::to_string(n) +
                    " positions of k = " + std::to_string(k));
    std::string payload(id);
    payload.resize(pad(id.size(), 4), '\0');
    payload.append(reinterpret_cast<const char*>(tokens.data()), 4 * n);
    payload.append(reinterpret_cast<const char*>(top_ids.data()), 4 * n * k);
    payload.append(reinterpret_cast<const char*>(top_logprobs.data()), 4 * n * k);
    for (std::size_t i = 0; i < n; ++i) {
        double s = 0;
        for (std::size_t j = 0; j < k; ++j) s += std::exp(double(top_logprobs[i * k + j]));
        const float tail = static_cast<float>(std::clamp(1.0 - s, 0.0, 1.0));
        payload.append(reinterpret_cast<const char*>(&tail), 4);
    }
    payload.resize(payload_bytes(id.size(), n, k), '\0');
    std::string out(record_magic, 4);
    put32(out, std::uint32_t(n));
    put32(out, std::uint32_t(id.size()));
    put32(out, version == 1
                   ? distill::detail::crc32(payload.data(), payload.size())
                   : distill::detail::crc32(payload.data(), payload.size(), distill::detail::crc32(out.data() + 4, 8)));
    return out + payload;
}

/// A top-k cache file, memory-mapped read-only and validated completely when opened. Move-only.
class topk_file {
public:
    /// Maps and validates `path`. Throws io_error if it cannot be read and format_error naming the
    /// file, the byte offset and the defect if its content is malformed.
    explicit topk_file(std::filesystem::path path) : path_(std::move(path)), map_(path_) { parse(); }

    const std::filesystem::path& path() const noexcept { return path_; }
    const topk_header& header() const noexcept { return header_; }
    /// Number of records.
    std::size_t size() const noexcept { return records_.size(); }
    /// Record i, in file order.
    const topk_record& operator[](std::size_t i) const { return records_.at(i); }
    /// The record of example `id`, or nullptr.
    const topk_record* find(std::string_view id) const {
        auto it = index_.find(id);
        return it == index_.end() ? nullptr : &records_[it->second];
    }

private:
    [[noreturn]] void fail(std::uint64_t offset, const std::string& what) const {
        throw format_error(path_, 0, "top-k cache: at byte " + std::to_string(offset) + ": " + what);
    }

    void parse() {
        using namespace detail;
        const auto bytes = map_.bytes();
        const std::byte* base = bytes.data();
        if (bytes.size() < fixed_header_v1)
            fail(0, "file of " + std::to_string(bytes.size()) + " bytes is shorter than the 32-byte header");
        if (std::memcmp(base, file_magic, 8) != 0) fail(0, "bad magic (not a distill top-k cache)");
        header_.version = get32(base + 8);
        if (header_.version != 1 && header_.version != current_version)
            fail(8, "version " + std::to_string(header_.version) +
                        " is not supported (this build reads versions 1 and 2)");
        const std::size_t fixed = fixed_header_of(header_.version);
        if (bytes.size() < fixed)
            fail(0, "file of " + std::to_string(bytes.size()) + " bytes is shorter than the " + std::to_string(fixed) +
                        "-byte header");
        const std::uint32_t header_bytes = get32(base + 12);
        header_.k = get32(base + 16);
        header_.vocab_size = get32(base + 20);
        const std::uint32_t fp_bytes = get32(base + 24), tok_bytes = get32(base + 28);
        if (header_.k < 1 || header_.k > max_k) fail(16, "k = " + std::to_string(header_.k) + " outside [1, 1024]");
        if (header_.vocab_size < 1) fail(20, "vocab_size is 0");
        const std::uint64_t need = pad(fixed + std::uint64_t(fp_bytes) + tok_bytes, 8);
        if (header_bytes != need || header_bytes > bytes.size())
            fail(12, "header_bytes = " + std::to_string(header_bytes) +
                         " disagrees with the string lengths (expected " + std::to_string(need) +
                         ") or the file size " + std::to_string(bytes.size()));
        if (header_.version >= 2) {
            if (header_crc(base, header_bytes) != get32(base + header_crc_at))
                fail(header_crc_at, "header checksum mismatch (corrupt header)");
            if (get32(base + header_crc_at + 4) != 0) fail(header_crc_at + 4, "reserved field is not 0");
        }
        header_.fingerprint.assign(reinterpret_cast<const char*>(base + fixed), fp_bytes);
        header_.tokenizer.assign(reinterpret_cast<const char*>(base + fixed + fp_bytes), tok_bytes);

        const std::uint64_t k = header_.k;
        std::uint64_t at = header_bytes;
        while (at < bytes.size()) {
            if (bytes.size() - at < record_header)
                fail(at, "incomplete record header (an interrupted append; the generate stage cuts it off on resume)");
            if (std::memcmp(base + at, record_magic, 4) != 0) fail(at, "bad record magic");
            const std::uint64_t n = get32(base + at + 4), id_bytes = get32(base + at + 8);
            const std::uint32_t crc = get32(base + at + 12);
            const std::uint64_t payload = payload_bytes(id_bytes, n, k);
            if (payload > bytes.size() - at - record_header)
                fail(at, "record of " + std::to_string(payload) +
                             " payload bytes runs past the end of the file (an "
                             "interrupted append; the generate stage cuts it off on resume)");
            const std::byte* p = base + at + record_header;
            if (record_crc(base + at, payload, header_.version) != crc)
                fail(at, "record checksum mismatch (corrupt data)");
            topk_record r;
            r.offset = at;
            r.id = std::string_view(reinterpret_cast<const char*>(p), id_bytes);
            const std::byte* arrays = p + pad(id_bytes, 4);
            r.tokens = {reinterpret_cast<const std::int32_t*>(arrays), n};
            r.top_ids = {reinterpret_cast<const std::int32_t*>(arrays + 4 * n), n * k};
            r.top_logprobs = {reinterpret_cast<const float*>(arrays + 4 * n * (1 + k)), n * k};
            r.tail_mass = {reinterpret_cast<const float*>(arrays + 4 * n * (1 + 2 * k)), n};
            validate(r, at);
            if (!index_.emplace(r.id, records_.size()).second)
                fail(at, "duplicate record for example '" + std::string(r.id) + "'");
            records_.push_back(r);
            at += record_header + payload;
        }
    }

    void validate(const topk_record& r, std::uint64_t at) const {
        const std::int64_t V = header_.vocab_size;
        const std::size_t k = header_.k;
        auto where = [&](std::size_t i) {
            return "record '" + std::string(r.id) + "' position " + std::to_string(i) + ": ";
        };
        for (std::size_t i = 0; i < r.positions(); ++i) {
            if (r.tokens[i] < 0 || r.tokens[i] >= V)
                fail(at, where(i) + "token " + std::to_string(r.tokens[i]) + " outside the vocabulary");
            for (std::size_t j = 0; j < k; ++j) {
                const std::int32_t id = r.top_ids[i * k + j];
                const float lp = r.top_logprobs[i * k + j];
                // -1 with -inf: an empty slot (an API token that maps to no id; its mass is in the tail)
                if (id == -1 && std::isinf(lp) && lp < 0) continue;
                if (id < 0 || id >= V) fail(at, where(i) + "top id " + std::to_string(id) + " outside the vocabulary");
                // A log-probability is <= 0; float rounding of the log-sum-exp can give +1e-6.
                if (std::isnan(lp) || lp > 1e-4f)
                    fail(at, where(i) + "log-probability " + std::to_string(lp) + " is not <= 0");
                if (j > 0 && lp > r.top_logprobs[i * k + j - 1])
                    fail(at, where(i) + "log-probabilities are not in descending order");
            }
            const float tail = r.tail_mass[i];
            if (!(tail >= 0.0f && tail <= 1.0f))
                fail(at, where(i) + "tail mass " + std::to_string(tail) + " outside [0, 1]");
        }
    }

    std::filesystem::path path_;
    io::mapped_file map_;
    topk_header header_;
    std::vector<topk_record> records_{};
    std::map<std::string_view, std::size_t, std::less<>> index_;
};

/// The length of the longest prefix of the cache file at `path` that holds a valid header and
/// complete records only (0 when even the header is incomplete). The generate stage cuts a file
/// back to it after a crash in the middle of an append.
inline std::uint64_t topk_complete_prefix(const std::filesystem::path& path) {
    using namespace detail;
    io::mapped_file map(path);
    const auto bytes = map.bytes();
    const std::byte* base = bytes.data();
    if (bytes.size() < fixed_header_v1 || std::memcmp(base, file_magic, 8) != 0) return 0;
    const std::uint32_t version = get32(base + 8);
    if (version != 1 && version != current_version) return 0;
    const std::uint64_t header_bytes = get32(base + 12), k = get32(base + 16);
    if (header_bytes < fixed_header_of(version) || header_bytes > bytes.size() || k < 1 || k > max_k) return 0;
    if (version >= 2 && header_crc(base, header_bytes) != get32(base + header_crc_at)) return 0;
    std::uint64_t at = header_bytes;
    while (bytes.size() - at >= record_header && std::memcmp(base + at, record_magic, 4) == 0) {
        const std::uint64_t payload = payload_bytes(get32(base + at + 8), get32(base + at + 4), k);
        if (payload > bytes.size() - at - record_header) break;
        if (record_crc(base + at, payload, version) != get32(base + at + 12)) break;
        at += record_header + payload;
    }
    return at;
}

}  // namespace distill::io
