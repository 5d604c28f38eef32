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
//   quickstart [--task math|nli|qa|conversation|summarization] [--out DIR] [--threads N] [--small]
//              [--quiet] [--prepare]
//
// --task runs the same pipeline on another task type's templated data (data/text_tasks.hpp) with
// its shipped teacher (examples/data/<task>_teacher.safetensors; docs/tasks.md).
// --small runs a reduced pipeline (fewer problems and steps) for the test suite. --prepare only
// writes the data and the job file (DIR/quickstart.job.json): `distill run DIR/quickstart.job.json`
// then runs the same pipeline from the command line.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <string>

#include <distill/distill.hpp>

#include "quickstart_job.hpp"

int main(int argc, char** argv) try {
    std::string out, task = "math";
    int threads = 0;
    bool small = false, quiet = false, prepare = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--out" && i + 1 < argc)
            out = argv[++i];
        else if (a == "--task" && i + 1 < argc)
            task = argv[++i];
        else if (a == "--threads" && i + 1 < argc)
            threads = std::atoi(argv[++i]);
        else if (a == "--small")
            small = true;
        else if (a == "--quiet")
            quiet = true;
        else if (a == "--prepare")
            prepare = true;
        else {
            std::fprintf(stderr,
                         "usage: quickstart [--task math|nli|qa|conversation|summarization] [--out DIR] [--threads N]\n"
                         "                  [--small] [--quiet] [--prepare]\n");
            return 2;
        }
    }
    if (std::find(std::begin(quickstart::tasks), std::end(quickstart::tasks), task) == std::end(quickstart::tasks))
        throw distill::config_error("--task",
                                    "expected math, nli, qa, conversation or summarization, got \"" + task + "\"");
    if (out.empty()) out = task == "math" ? "out/quickstart" : "out/quickstart-" + task;
    using namespace distill;
    const quickstart::Sizes sizes = small ? quickstart::Sizes::small() : quickstart::Sizes::full();

    // the data: the seeded task (arithmetic word problems by default); 10% of the training prompts are labeled
    const std::filesystem::path dir = out, data_dir = dir / "data";
    quickstart::write_data(data_dir, sizes, 10, task);
    // the job: what a user writes in job.json for `distill run`
    const nlohmann::json j = quickstart::job(data_dir, dir, sizes, task);
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
    quickstart::MathDistiller distiller(job, teacher, cpu, {.quiet = quiet});

    std::printf("distill %s quickstart: teacher %s, %d threads\n", version(), teacher.name().c_str(), cpu.threads());
    std::printf("task: %s — %d training prompts (10%% labeled), %d validation, %d test\n\n",
                task == "math" ? "arithmetic word problems" : task.c_str(), sizes.train, sizes.validation, sizes.test);
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
