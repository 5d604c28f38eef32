#pragma once
/// @file hash.hpp
/// The hashes distill records in files: SHA-256 for fingerprints (a teacher's weights, its
/// sampling settings; collisions must be out of the question because a matching fingerprint means
/// "reuse this output"), CRC-32 for record checksums (detects torn or flipped bytes cheaply), CRC-32C
/// for whole files (checkpoints, the checksum of the safetensors files distill writes), and
/// a 64-bit FNV-1a for in-memory keys. All are defined here so they are the same on every
/// platform and in every file format version.

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "distill/error.hpp"

#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

namespace distill::detail {

/// Incremental SHA-256 (FIPS 180-4). Feed bytes with `update`, read the digest with `hex()`.
class Sha256 {
public:
    Sha256() noexcept { reset(); }

    /// Starts a new digest.
    void reset() noexcept {
        state_ = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                  0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
        bytes_ = 0;
        fill_ = 0;
    }

    /// Appends `size` bytes at `data` to the message.
    void update(const void* data, std::size_t size) noexcept {
        const auto* p = static_cast<const unsigned char*>(data);
        bytes_ += size;
        if (fill_) {
            const std::size_t take = std::min<std::size_t>(64 - fill_, size);
            std::memcpy(block_.data() + fill_, p, take);
            fill_ += take;
            p += take;
            size -= take;
            if (fill_ < 64) return;
            compress(block_.data());
            fill_ = 0;
        }
        for (; size >= 64; size -= 64, p += 64) compress(p);
        std::memcpy(block_.data(), p, size);
        fill_ = size;
    }

    /// Appends the bytes of `text`.
    void update(std::string_view text) noexcept { update(text.data(), text.size()); }

    /// The 32-byte digest of everything fed so far; the object must be `reset()` before reuse.
    std::array<std::uint8_t, 32> digest() noexcept {
        const std::uint64_t bits = bytes_ * 8;
        const unsigned char pad = 0x80;
        update(&pad, 1);
        const unsigned char zero[64] = {};
        update(zero, (fill_ <= 56 ? 56 - fill_ : 120 - fill_));
        unsigned char length[8];
        for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(bits >> (56 - 8 * i));
        update(length, 8);
        std::array<std::uint8_t, 32> out{};
        for (int i = 0; i < 8; ++i)
            for (int j = 0; j < 4; ++j) out[4 * i + j] = static_cast<std::uint8_t>(state_[i] >> (24 - 8 * j));
        return out;
    }

    /// The digest as 64 lowercase hex digits.
    std::string hex() noexcept {
        static constexpr char digits[] = "0123456789abcdef";
        std::string s;
        for (std::uint8_t b : digest()) {
            s += digits[b >> 4];
            s += digits[b & 15];
        }
        return s;
    }

private:
    static std::uint32_t rotr(std::uint32_t x, int n) noexcept { return std::rotr(x, n); }

    void compress(const unsigned char* p) noexcept {
        static constexpr std::array<std::uint32_t, 64> k = {
            0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
            0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
            0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
            0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
            0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
            0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
            0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
            0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
        std::uint32_t w[64];
        for (int i = 0; i < 16; ++i)
            w[i] = std::uint32_t(p[4 * i]) << 24 | std::uint32_t(p[4 * i + 1]) << 16 |
                   std::uint32_t(p[4 * i + 2]) << 8 | std::uint32_t(p[4 * i + 3]);
        for (int i = 16; i < 64; ++i) {
            const std::uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
            const std::uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        std::uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3], e = state_[4], f = state_[5],
                      g = state_[6], h = state_[7];
        for (int i = 0; i < 64; ++i) {
            const std::uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
            const std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            h = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        state_[0] += a;
        state_[1] += b;
        state_[2] += c;
        state_[3] += d;
        state_[4] += e;
        state_[5] += f;
        state_[6] += g;
        state_[7] += h;
    }

    std::array<std::uint32_t, 8> state_{};
    std::array<unsigned char, 64> block_{};
    std::uint64_t bytes_ = 0;
    std::size_t fill_ = 0;
};

/// SHA-256 of `text` as 64 hex digits.
inline std::string sha256_hex(std::string_view text) {
    Sha256 h;
    h.update(text);
    return h.hex();
}

/// SHA-256 of the whole file at `path` as 64 hex digits, read in 1 MiB chunks. Throws io_error.
inline std::string sha256_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error(path, "cannot open for hashing");
    Sha256 h;
    std::vector<char> buf(1 << 20);
    while (in) {
        in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
        h.update(buf.data(), static_cast<std::size_t>(in.gcount()));
    }
    if (in.bad()) throw io_error(path, "read error while hashing");
    return h.hex();
}

/// CRC-32 (IEEE 802.3, reflected, the zlib/PNG polynomial) of `size` bytes, continuing from `crc`.
inline std::uint32_t crc32(const void* data, std::size_t size, std::uint32_t crc = 0) noexcept {
    static constexpr auto table = [] {
        std::array<std::uint32_t, 256> t{};
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    const auto* p = static_cast<const unsigned char*>(data);
    crc = ~crc;
    for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
    return ~crc;
}

/// 64-bit FNV-1a of `text`: a fast, stable key for hash maps and per-example seeds.
constexpr std::uint64_t fnv1a64(std::string_view text, std::uint64_t h = 0xcbf29ce484222325ull) noexcept {
    for (char c : text) {
        h ^= static_cast<unsigned char>(c);
        h *= 0x100000001b3ull;
    }
    return h;
}

/// splitmix64 finalizer: mixes two words into one well-distributed word (per-request seeds).
constexpr std::uint64_t mix64(std::uint64_t a, std::uint64_t b) noexcept {
    std::uint64_t z = a + 0x9e3779b97f4a7c15ull * (b + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/// The slicing-by-8 tables of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
inline const std::array<std::array<std::uint32_t, 256>, 8>& crc32c_tables() {
    static const auto tables = [] {
        std::array<std::array<std::uint32_t, 256>, 8> t{};
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
            t[0][i] = c;
        }
        for (std::uint32_t i = 0; i < 256; ++i)
            for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xffu];
        return t;
    }();
    return tables;
}

/// CRC-32C of `size` bytes in software (slicing by 8), continuing from the raw register `crc`.
inline std::uint32_t crc32c_update_software(std::uint32_t crc, const unsigned char* p, std::size_t size) noexcept {
    const auto& t = crc32c_tables();
    while (size >= 8) {
        std::uint64_t w;
        std::memcpy(&w, p, 8);
        w ^= crc;
        crc = t[7][w & 0xff] ^ t[6][(w >> 8) & 0xff] ^ t[5][(w >> 16) & 0xff] ^ t[4][(w >> 24) & 0xff] ^
              t[3][(w >> 32) & 0xff] ^ t[2][(w >> 40) & 0xff] ^ t[1][(w >> 48) & 0xff] ^ t[0][w >> 56];
        p += 8;
        size -= 8;
    }
    while (size--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xffu];
    return crc;
}

/// CRC-32C of `size` bytes at `data`, continuing `crc` (0 to start): `crc32c(b, crc32c(a))` is the
/// CRC of a followed by b. Uses the SSE4.2 instruction when the build targets it (the same function,
/// about 8 GB/s, so checksumming a checkpoint costs a fraction of writing it).
inline std::uint32_t crc32c(const void* data, std::size_t size, std::uint32_t crc = 0) noexcept {
    const auto* p = static_cast<const unsigned char*>(data);
    crc = ~crc;
#if defined(__SSE4_2__)
    std::uint64_t c = crc;
    while (size >= 8) {
        std::uint64_t w;
        std::memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        size -= 8;
    }
    crc = static_cast<std::uint32_t>(c);
    while (size--) crc = _mm_crc32_u8(crc, *p++);
#else
    crc = crc32c_update_software(crc, p, size);
#endif
    return ~crc;
}

/// The portable definition `crc32c` must agree with (tests compare the two).
inline std::uint32_t crc32c_portable(const void* data, std::size_t size, std::uint32_t crc = 0) noexcept {
    return ~crc32c_update_software(~crc, static_cast<const unsigned char*>(data), size);
}

}  // namespace distill::detail
