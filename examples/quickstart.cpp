// The quickstart: a math teacher shipped in examples/data is distilled into a student with many
// times fewer parameters — offline, no arguments, a few minutes on two cores.
//
// The task is the built-in arithmetic word problems (data/math_task.hpp), generated from a seed and
// split into train/validation/test. As in real use most training prompts come without answers: the
// teacher supplies them (generate), the student learns from its answers, logits, hidden states and
// attention maps (finetune, online), and a baseline student of the same architecture and step
// budget learns from the labeled 10% alone. The evaluation compares teacher, baseline and student on
// the test set and writes report.json, report.md and SVG charts.
//
//   quickstart [--out DIR] [--threads N] [--small] [--quiet] [--prepare]
//
// --small runs a reduced pipeline (fewer problems and steps) for the test suite. --prepare only
// writes the data and the job file (DIR/quickstart.job.json): `distill run DIR/quickstart.job.json`
// then runs the same pipeline from the command line.

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <distill/distill.hpp>

#ifndef DISTILL_EXAMPLES_DIR
#define DISTILL_EXAMPLES_DIR "examples"
#endif

namespace {

using namespace distill;

// The Distiller of the quickstart: composed at compile time, one policy per kind.
using QuickstartDistiller =
    Distiller<teacher::Model<student::Transformer>,                                       // the shipped math teacher
              student::Transformer,                                                       // a smaller GPT-style student
              loss::Sum<loss::SoftKL, loss::HardCE, loss::HiddenMSE, loss::AttentionKL>,  // what it learns from
              optim::AdamW, device::Cpu>;

struct Sizes {
    int train = 0, validation = 0, test = 0;
    std::int64_t steps = 0;
};

// Writes the problems as JSONL prompts; every `label_every`-th carries its worked solution.
void write_split(const std::filesystem::path& path, const std::vector<data::MathProblem>& problems, std::size_t first,
                 std::size_t count, std::size_t label_every) {
    std::string text;
    for (std::size_t i = first; i < first + count; ++i) {
        nlohmann::ordered_json j = {{"id", "math-" + std::to_string(i)}, {"prompt", problems[i].question}};
        if (label_every > 0 && (i - first) % label_every == 0) j["completion"] = problems[i].solution;
        text += j.dump() + "\n";
    }
    io::write_file_atomic(path, text);
}

}  // namespace

int main(int argc, char** argv) try {
    std::string out = "out/quickstart";
    int threads = 0;
    bool small = false, quiet = false, prepare = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--out" && i + 1 < argc)
            out = argv[++i];
        else if (a == "--threads" && i + 1 < argc)
            threads = std::atoi(argv[++i]);
        else if (a == "--small")
            small = true;
        else if (a == "--quiet")
            quiet = true;
        else if (a == "--prepare")
            prepare = true;
        else {
            std::fprintf(stderr, "usage: quickstart [--out DIR] [--threads N] [--small] [--quiet] [--prepare]\n");
            return 2;
        }
    }
    const Sizes sizes = small ? Sizes{600, 64, 100, 150} : Sizes{3000, 128, 300, 600};

    // ---- the data: seeded arithmetic word problems; 10% of the training prompts are labeled ------
    const std::filesystem::path dir = out, data_dir = dir / "data";
    std::filesystem::create_directories(data_dir);
    const auto problems = data::make_math_problems(2026, std::size_t(sizes.train + sizes.validation + sizes.test));
    write_split(data_dir / "train.jsonl", problems, 0, std::size_t(sizes.train), 10);
    write_split(data_dir / "validation.jsonl", problems, std::size_t(sizes.train), std::size_t(sizes.validation), 1);
    write_split(data_dir / "test.jsonl", problems, std::size_t(sizes.train + sizes.validation), std::size_t(sizes.test),
                1);

    // ---- the job: what a user writes in job.json for `distill run` -------------------------------
    const std::string teacher_weights = std::string(DISTILL_EXAMPLES_DIR) + "/data/math_teacher.safetensors";
    nlohmann::json j = {
        {"teacher", {{"kind", "model"}, {"weights", teacher_weights}, {"max_batch", 32}}},
        {"student",
         {{"vocab_size", 263},
          {"context_length", 128},
          {"d_model", 96},
          {"n_layers", 2},
          {"n_heads", 4},
          {"d_ff", 384}}},
        {"training_data", (data_dir / "train.jsonl").string()},
        {"validation_data", (data_dir / "validation.jsonl").string()},
        {"test_data", (data_dir / "test.jsonl").string()},
        {"task_type", "math"},
        {"generation", {{"temperature", 0.0}, {"max_new_tokens", 48}}},
        {"hyperparameters",
         {{"learning_rate", 3e-3},
          {"batch_size", 32},
          {"max_steps", sizes.steps},
          {"warmup", 20},
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
        {"output_dir", dir.string()},
    };
    const Job job = parse_job(j);
    io::write_file_atomic(dir / "quickstart.job.json", j.dump(2) + "\n");
    if (prepare) {
        std::printf("%s\n", (dir / "quickstart.job.json").string().c_str());
        return 0;
    }

    const device::Cpu cpu = threads > 0 ? device::Cpu(threads) : device::Cpu();
    teacher::ModelConfig tcfg;
    io::from_json(job.teacher_config(), tcfg, "teacher");
    teacher::Model<student::Transformer> teacher(tcfg, cpu);
    QuickstartDistiller distiller(job, teacher, cpu, {.quiet = quiet});

    std::printf("distill %s quickstart: teacher %s, %d threads\n", version(), teacher.name().c_str(), cpu.threads());
    std::printf("task: arithmetic word problems — %d training prompts (10%% labeled), %d validation, %d test\n\n",
                sizes.train, sizes.validation, sizes.test);
    const nlohmann::ordered_json report = distiller.run();
    std::printf("\n%s\nreport: %s (also report.json, loss.svg, models.svg)\n", eval::render_markdown(report).c_str(),
                (dir / "report.md").string().c_str());
    return 0;
} catch (const distill::config_error& e) {
    std::fprintf(stderr, "quickstart: %s\n", e.what());
    return 2;
} catch (const std::exception& e) {
    std::fprintf(stderr, "quickstart: %s\n", e.what());
    return 1;
}
