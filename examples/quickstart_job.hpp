#pragma once
// The quickstart's data, job and Distiller type, shared by examples/quickstart.cpp and the ablation
// (examples/ablation.cpp), so both measure exactly the same setting. The task is math by default;
// `quickstart --task nli|qa|conversation|summarization` runs the same pipeline on the other task
// types' templated data (data/text_tasks.hpp) with their shipped teachers.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <distill/distill.hpp>

#ifndef DISTILL_EXAMPLES_DIR
#define DISTILL_EXAMPLES_DIR "examples"
#endif

namespace quickstart {

// The quickstart's Distiller: composed at compile time, one policy per kind.
using MathDistiller =
    distill::Distiller<distill::teacher::Model<distill::student::Transformer>,  // the shipped math teacher
                       distill::student::Transformer,                           // a smaller GPT-style student
                       distill::loss::Sum<distill::loss::SoftKL, distill::loss::HardCE, distill::loss::HiddenMSE,
                                          distill::loss::AttentionKL>,  // what it learns from
                       distill::optim::AdamW, distill::device::Cpu>;

/// How much data and training: the full quickstart and the reduced one of the test suite.
struct Sizes {
    int train = 3000, validation = 128, test = 300;
    std::int64_t steps = 800;
    static Sizes full() { return {}; }
    static Sizes small() { return {800, 64, 100, 300}; }
};

/// The task types the quickstart runs, each with a shipped teacher.
inline constexpr const char* tasks[] = {"math", "nli", "qa", "conversation", "summarization"};

/// The shipped teacher of `task` (examples/train_teacher --task writes it; docs/tasks.md).
inline std::string teacher_weights(const std::string& task = "math") {
    return std::string(DISTILL_EXAMPLES_DIR) + "/data/" + task + "_teacher.safetensors";
}

/// The context the longest prompt + response of `task` fits in (its teacher's).
inline int context_length(const std::string& task) {
    if (task == "nli" || task == "math") return 96;
    if (task == "conversation") return 112;
    return 128;
}

/// Writes train/validation/test JSONL under `data_dir` from the seeded `task`: every
/// `label_every`-th training prompt carries its reference response (1: all), validation and test all do.
inline void write_data(const std::filesystem::path& data_dir, const Sizes& sizes, std::size_t label_every,
                       const std::string& task = "math") {
    std::filesystem::create_directories(data_dir);
    const auto examples =
        distill::data::make_task_examples(task, 2026, std::size_t(sizes.train + sizes.validation + sizes.test));
    auto split = [&](const char* name, std::size_t first, std::size_t count, std::size_t every) {
        std::string text;
        for (std::size_t i = first; i < first + count; ++i) {
            nlohmann::ordered_json j = {{"id", task + "-" + std::to_string(i)}, {"prompt", examples[i].prompt}};
            if (every > 0 && (i - first) % every == 0) j["completion"] = examples[i].response;
            text += j.dump() + "\n";
        }
        distill::io::write_file_atomic(data_dir / name, text);
    };
    split("train.jsonl", 0, std::size_t(sizes.train), label_every);
    split("validation.jsonl", std::size_t(sizes.train), std::size_t(sizes.validation), 1);
    split("test.jsonl", std::size_t(sizes.train + sizes.validation), std::size_t(sizes.test), 1);
}

/// The job (what a user writes in job.json for `distill run`).
inline nlohmann::json job(const std::filesystem::path& data_dir, const std::filesystem::path& out, const Sizes& sizes,
                          const std::string& task = "math") {
    nlohmann::json j = {
        {"teacher", {{"kind", "model"}, {"weights", teacher_weights(task)}, {"max_batch", 32}}},
        {"student",
         {{"vocab_size", 263},
          {"context_length", context_length(task)},
          {"d_model", 64},
          {"n_layers", 2},
          {"n_heads", 4},
          {"d_ff", 256}}},
        {"training_data", (data_dir / "train.jsonl").string()},
        {"validation_data", (data_dir / "validation.jsonl").string()},
        {"test_data", (data_dir / "test.jsonl").string()},
        {"task_type", task},
        {"generation", {{"temperature", 0.0}, {"max_new_tokens", 48}}},
        {"hyperparameters",
         {{"learning_rate", 1e-2},
          {"batch_size", 32},
          {"max_steps", sizes.steps},
          {"warmup", sizes.steps / 20},
          {"weight_decay", 0.1},
          {"temperature", 2.0},
          {"eval_every", sizes.steps / 4},
          {"checkpoint_every", 50},
          {"seed", 1}}},
        {"loss",
         {{"soft_kl", {{"weight", 1.0}}},
          {"hard_ce", {{"weight", 1.0}}},
          {"hidden_mse", {{"weight", 0.1}}},
          {"attention_kl", {{"weight", 0.1}}}}},
        {"evaluation", {{"batch_size", 32}, {"latency_samples", 32}}},
        {"output_dir", out.string()},
    };
    // the math student for llama.cpp, also measured in the report (docs/deployment.md)
    if (task == "math") j["export"] = {{"gguf", {"q8_0", "q4_k"}}};
    return j;
}

}  // namespace quickstart
