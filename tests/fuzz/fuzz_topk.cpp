// Fuzz target: the top-k cache reader (io::topk_file: header, records, checksums, value checks) and
// io::topk_complete_prefix, which the generate stage uses to cut an interrupted append.

#include <cstddef>
#include <cstdint>

#include "distill/error.hpp"
#include "distill/io/topk_cache.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static distill::fuzz::MemFile file("topk");
    using namespace distill;
    const auto& path = file.set(data, size);
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
