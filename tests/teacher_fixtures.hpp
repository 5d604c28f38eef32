#pragma once
// Fixtures shared by the teacher tests: a small teacher checkpoint made on the fly (no binaries in
// the repository), temp directories, prompt files.

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "distill/data/byte_tokenizer.hpp"
#include "distill/data/chat.hpp"
#include "distill/data/dataset.hpp"
#include "distill/data/math_task.hpp"
#include "distill/detail/rng.hpp"
#include "distill/device/cpu.hpp"
#include "distill/io/weights.hpp"
#include "distill/optim/adam.hpp"
#include "distill/optim/schedule.hpp"
#include "distill/student/transformer.hpp"
#include "distill/train/finetune.hpp"

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

/// A tiny math teacher that has learned the answer format (it stops), its data files (160 training
/// prompts, a quarter labeled; 24 validation, 40 test) and a job for the Distiller writing to `dir/out`.
struct MathWorld {
    TempDir dir{"distiller"};
    std::filesystem::path teacher = dir / "teacher.safetensors";
    MathWorld() {
        const auto problems = data::make_math_problems(11, 260);
        data::ChatTokenizer tpl;
        data::SequenceDataset ds(data::ByteTokenizer::pad, 96);
        for (const auto& p : problems) {
            const std::vector<data::Message> m{{"user", p.question}};
            ds.add_prompt_response(tpl.encode_prompt(m), tpl.encode_response(p.solution));
        }
        const student::TransformerConfig c{
            .vocab_size = 263, .context_length = 96, .d_model = 48, .n_layers = 2, .n_heads = 4, .d_ff = 96};
        student::Transformer<float, device::Cpu> net(c, 16);
        net.init(3);
        optim::AdamW<float, device::Cpu> opt(net.parameters(), {});
        optim::Schedule schedule({.learning_rate = 1e-2}, 120);
        train::FinetuneConfig fc;
        fc.max_steps = 120;
        fc.batch_size = 16;
        fc.quiet = true;
        train::finetune(net, opt, schedule, ds, nullptr, fc);
        io::save_weights(teacher, net);
        auto write = [&](const char* name, std::size_t first, std::size_t count, std::size_t label_every) {
            std::string text;
            for (std::size_t i = first; i < first + count; ++i) {
                nlohmann::json j = {{"prompt", problems[i].question}};
                if (label_every && (i - first) % label_every == 0) j["completion"] = problems[i].solution;
                text += j.dump() + "\n";
            }
            write_text(dir / name, text);
        };
        write("train.jsonl", 0, 160, 4);
        write("validation.jsonl", 160, 24, 1);
        write("test.jsonl", 184, 40, 1);
    }
    nlohmann::json job(const std::string& out) const {
        return {{"teacher", {{"kind", "model"}, {"weights", teacher.string()}, {"max_batch", 16}}},
                {"student",
                 {{"vocab_size", 263},
                  {"context_length", 96},
                  {"d_model", 24},
                  {"n_layers", 1},
                  {"n_heads", 2},
                  {"d_ff", 48}}},
                {"training_data", (dir / "train.jsonl").string()},
                {"validation_data", (dir / "validation.jsonl").string()},
                {"test_data", (dir / "test.jsonl").string()},
                {"task_type", "math"},
                {"generation", {{"max_new_tokens", 40}}},
                {"hyperparameters",
                 {{"learning_rate", 3e-3},
                  {"batch_size", 16},
                  {"max_steps", 12},
                  {"checkpoint_every", 5},
                  {"log_every", 2}}},
                {"loss",
                 {{"soft_kl", {{"weight", 1.0}}},
                  {"hard_ce", {{"weight", 0.5}}},
                  {"hidden_mse", {{"weight", 0.1}}},
                  {"attention_kl", {{"weight", 0.1}}}}},
                {"evaluation", {{"latency_samples", 3}}},
                {"output_dir", (dir / out).string()}};
    }
};

}  // namespace distill::testing
