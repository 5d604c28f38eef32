// Fuzz target: the top-k cache reader (io::topk_file: header, records, checksums, value checks) and
// io::topk_complete_prefix, which the generate stage uses to cut an interrupted append. The first
// input byte picks the mode: with bit 0 set, the header and record checksums of a version 2 file are
// recomputed before reading, so the fuzzer reaches the checks behind them (ids inside the vocabulary,
// log-probability order, tail mass, duplicates) instead of stopping at the first CRC mismatch.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "distill/error.hpp"
#include "distill/io/topk_cache.hpp"
#include "fuzz_common.hpp"

namespace {

// Recomputes the checksums of a version 2 file in place, as far as its lengths allow.
void fix_checksums(std::string& b) {
    using namespace distill::io::detail;
    if (b.size() < fixed_header || get32(reinterpret_cast<const std::byte*>(b.data()) + 8) != 2) return;
    const auto* base = reinterpret_cast<const std::byte*>(b.data());
    const std::uint64_t header_bytes = get32(base + 12), k = get32(base + 16);
    if (header_bytes < fixed_header || header_bytes > b.size() || k < 1 || k > max_k) return;
    const std::uint32_t crc = header_crc(b.data(), header_bytes);
    std::memcpy(b.data() + header_crc_at, &crc, 4);
    for (std::uint64_t at = header_bytes; b.size() - at >= record_header;) {
        const std::uint64_t payload = payload_bytes(get32(base + at + 8), get32(base + at + 4), k);
        if (payload > b.size() - at - record_header) return;
        const std::uint32_t r = record_crc(base + at, payload, 2);
        std::memcpy(b.data() + at + 12, &r, 4);
        at += record_header + payload;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static distill::fuzz::MemFile file("topk");
    using namespace distill;
    if (size < 1) return 0;
    std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
    if (data[0] & 1) fix_checksums(bytes);
    size = bytes.size();
    const auto& path = file.set(bytes);
    try {
        const std::uint64_t prefix = io::topk_complete_prefix(path);
        if (prefix > size) __builtin_trap();
    } catch (const distill::error&) {
    }
    try {
        const io::topk_file f(path);
        double sum = 0;
        for (std::size_t i = 0; i < f.size(); ++i) {
            const auto& r = f[i];
            if (f.find(r.id) != &r) __builtin_trap();
            for (float x : r.top_logprobs) sum += x;
            for (float x : r.tail_mass) sum += x;
            for (auto t : r.tokens) sum += t;
            for (auto t : r.top_ids) sum += t;
        }
        (void)sum;
    } catch (const distill::error&) {
    }
    return 0;
}
