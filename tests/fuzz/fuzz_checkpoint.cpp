// Fuzz target: io::Checkpoint::open and restore into a small model, extra parameters and AdamW.
// An input holds the three files of a checkpoint directory (manifest.json, student.safetensors,
// training.safetensors) separated by the line "--8<--". The first byte picks the mode: with bit 0
// set, the manifest's file sizes, CRCs and own checksum are recomputed before loading, so the
// fuzzer reaches the code behind the checksums (restore's name, shape and dtype checks) instead of
// stopping at the first CRC mismatch.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/device/cpu.hpp"
#include "distill/error.hpp"
#include "distill/io/checkpoint.hpp"
#include "distill/optim/adam.hpp"
#include "distill/optim/common.hpp"
#include "distill/student/transformer.hpp"
#include "fuzz_common.hpp"
#include "fuzz_model.hpp"

namespace fs = std::filesystem;

namespace {

std::string fix_manifest(std::string_view text, std::string_view student, std::string_view training) {
    nlohmann::json m = nlohmann::json::parse(text, nullptr, false);
    if (m.is_discarded() || !m.is_object()) return std::string(text);
    if (m.contains("files") && !m["files"].is_object()) return std::string(text);
    const std::pair<const char*, std::string_view> files[] = {{"student.safetensors", student},
                                                              {"training.safetensors", training}};
    for (const auto& [name, bytes] : files) {
        if (m["files"].contains(name) && !m["files"][name].is_object()) return std::string(text);
        m["files"][name]["bytes"] = bytes.size();
        m["files"][name]["crc32c"] = distill::detail::crc32c(bytes.data(), bytes.size());
    }
    m["checksum"] = distill::io::detail::manifest_checksum(m);
    return m.dump(1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace distill;
    static const fuzz::ScratchDir scratch("distill-fuzz-checkpoint");  // three files are written per input
    const fs::path& dir = scratch.path();
    static fuzz::TinyTrained state;
    if (size < 1) return 0;
    const bool fix = data[0] & 1;
    std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
    const std::string_view manifest = fuzz::next_part(rest, "\n--8<--\n");
    const std::string_view student = fuzz::next_part(rest, "\n--8<--\n");
    const std::string_view training = rest;
    fuzz::write_file(dir / "manifest.json", fix ? fix_manifest(manifest, student, training) : std::string(manifest));
    fuzz::write_file(dir / "student.safetensors", student);
    fuzz::write_file(dir / "training.safetensors", training);
    try {
        const auto ck = io::Checkpoint::open(dir);
        std::vector<std::int64_t> order;
        ck.restore(state.model, state.extra_params(), state.opt, order);
    } catch (const distill::error&) {
    }
    return 0;
}
