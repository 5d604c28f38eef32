#pragma once
// Fixtures shared by the teacher tests: a small teacher checkpoint made on the fly (no binaries in
// the repository), temp directories, prompt files.

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "distill/data/byte_tokenizer.hpp"
#include "distill/detail/rng.hpp"
#include "distill/device/cpu.hpp"
#include "distill/io/weights.hpp"
#include "distill/student/transformer.hpp"

namespace distill::testing {

/// A tiny teacher shape: byte vocabulary, short context (so the context limit is reachable).
inline student::TransformerConfig tiny_teacher_config(int context = 64) {
    return {.vocab_size = data::ByteTokenizer::vocab_size(),
            .context_length = context,
            .d_model = 32,
            .n_layers = 2,
            .n_heads = 2,
            .d_ff = 64};
}

/// GPT-2 init plus larger deterministic noise: an untrained GPT-2 init is nearly uniform over the
/// vocabulary, which would make argmax comparisons hinge on rounding; this one has clear preferences.
template <class Model>
void init_peaky(Model& m, std::uint64_t seed) {
    m.init(seed);
    Rng rng(seed + 1000);
    for (auto& p : m.parameters()) {
        if (p.kind == parameter_kind::norm) continue;
        for (std::int64_t i = 0; i < p.value.numel(); ++i) p.value.data()[i] += static_cast<float>(0.15 * rng.normal());
    }
}

/// Writes a tiny teacher checkpoint (config in the metadata) to `path`.
inline void write_tiny_teacher(const std::filesystem::path& path, std::uint64_t seed = 1, int context = 64) {
    student::Transformer<float, device::Cpu> m(tiny_teacher_config(context), 1, device::Cpu(1));
    init_peaky(m, seed);
    io::save_weights(path, m);
}

/// A fresh, empty temp directory, removed on destruction.
struct TempDir {
    std::filesystem::path path;
    explicit TempDir(const std::string& tag) {
        path = std::filesystem::temp_directory_path() / ("distill-" + tag + "-" + std::to_string(::getpid()));
        std::filesystem::remove_all(path);
        std::filesystem::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    std::filesystem::path operator/(const std::string& name) const { return path / name; }
};

/// Writes `text` to `path` as is (binary, no newline translation).
inline void write_text(const std::filesystem::path& path, const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
}

/// Reads a whole file.
inline std::string read_text(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// `n` prompts in the three input formats, some with references; ids derived from content.
inline std::string prompt_lines(int n) {
    std::string out;
    for (int i = 0; i < n; ++i) {
        const std::string q = "what is " + std::to_string(i) + " + " + std::to_string(i % 7) + "?";
        if (i % 3 == 0)
            out += R"({"messages":[{"role":"system","content":"be brief"},{"role":"user","content":")" + q + R"("}]})";
        else if (i % 3 == 1)
            out += R"({"prompt":")" + q + R"(","completion":")" + std::to_string(i + i % 7) + R"("})";
        else
            out += R"({"input":")" + q + R"(","label":)" + std::to_string(i % 3) + "}";
        out += "\n";
    }
    return out;
}

}  // namespace distill::testing
