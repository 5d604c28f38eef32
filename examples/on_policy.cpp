// On-policy distillation (GKD) against sequence-level KD on the quickstart's task with a weaker
// budget (docs/training.md, "On-policy distillation"): the quickstart's teacher, student and data,
// fewer steps, and per seed four students that differ only in where their training responses come
// from and what they learn from them:
//
//   sequence-level KD   cross-entropy on the teacher's answer tokens (hard_ce), all N steps
//   supervised KD       JSD (β = 0.5, τ = 1) to the teacher on the teacher's answers (λ = 0)
//   on-policy λ = 0.5   the same JSD; half the batches' responses sampled by the student
//   on-policy λ = 1     every batch's responses sampled by the student
//
// The last three start, as GKD's students do (Agarwal et al. 2024 fine-tune theirs on the task
// first), from a student trained by sequence-level KD for the fraction `--warm-start` of the budget
// and spend the rest on their own objective (0: from random weights); every variant has N steps.
//
//   on_policy [--out DIR] [--steps N] [--seeds N] [--warm-start F] [--temperature T] [--threads N]
//             [--max-examples N]
//
// The teacher answers once, at `--temperature`, which is also the students' sampling temperature
// (one `generation` object serves both); each seed changes the student's initialization, data
// order and samples. `--max-examples` evaluates the first N test problems (0: all). Prints a
// markdown table of test exact match (mean and range over seeds) and writes it to DIR/on_policy.md.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <distill/distill.hpp>

#include "quickstart_job.hpp"

namespace fs = std::filesystem;

using GkdDistiller =
    distill::Distiller<distill::teacher::Model<distill::student::Transformer>, distill::student::Transformer,
                       distill::loss::Sum<distill::loss::JSD, distill::loss::HardCE>, distill::optim::AdamW,
                       distill::device::Cpu>;

int main(int argc, char** argv) try {
    using namespace distill;
    std::string out = "out/on_policy";
    int seeds = 3, threads = 0, max_examples = 0;
    std::int64_t steps = 300;
    double temperature = 1.0, warm = 0.5;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--out" && i + 1 < argc)
            out = argv[++i];
        else if (a == "--steps" && i + 1 < argc)
            steps = std::atoll(argv[++i]);
        else if (a == "--seeds" && i + 1 < argc)
            seeds = std::atoi(argv[++i]);
        else if (a == "--warm-start" && i + 1 < argc)
            warm = std::atof(argv[++i]);
        else if (a == "--temperature" && i + 1 < argc)
            temperature = std::atof(argv[++i]);
        else if (a == "--threads" && i + 1 < argc)
            threads = std::atoi(argv[++i]);
        else if (a == "--max-examples" && i + 1 < argc)
            max_examples = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr,
                         "usage: on_policy [--out DIR] [--steps N] [--seeds N] [--warm-start F] [--temperature T] "
                         "[--threads N] [--max-examples N]\n");
            return 2;
        }
    }
    quickstart::Sizes sizes = quickstart::Sizes::full();
    sizes.steps = steps;
    const fs::path root = out, data_dir = root / "data";
    quickstart::write_data(data_dir, sizes, 10);  // the quickstart's: every 10th prompt labeled
    const device::Cpu cpu = threads > 0 ? device::Cpu(threads) : device::Cpu();

    struct Variant {
        std::string name;
        nlohmann::json loss;
        double lambda;
    };
    const nlohmann::json jsd = {{"jsd", {{"weight", 1.0}, {"beta", 0.5}, {"temperature", 1.0}}}};
    const std::vector<Variant> variants = {
        {"sequence-level KD (hard_ce on the teacher's answers)", {{"hard_ce", {{"weight", 1.0}}}}, 0.0},
        {"supervised KD (jsd, lambda = 0)", jsd, 0.0},
        {"on-policy (jsd, lambda = 0.5)", jsd, 0.5},
        {"on-policy (jsd, lambda = 1)", jsd, 1.0},
    };
    std::map<std::string, std::vector<double>> em;    // variant -> per-seed exact match
    std::map<std::string, std::vector<double>> secs;  // variant -> per-seed training seconds
    double teacher_em = -1;
    const std::int64_t warm_steps = std::int64_t(warm * double(steps));
    if (warm < 0 || warm >= 1) throw config_error("--warm-start", "must be in [0, 1)");
    // One job: the quickstart's, with the variant's loss, λ and steps; the teacher's answers of the
    // first run are copied into every other (they do not depend on the student).
    auto run = [&](const fs::path& dir, int seed, const nlohmann::json& loss, double lambda, std::int64_t n,
                   const fs::path& init, bool evaluate, bool evaluate_teacher) {
        nlohmann::json j = quickstart::job(data_dir, dir, sizes);
        j["hyperparameters"]["seed"] = seed;
        j["hyperparameters"]["max_steps"] = n;
        j["hyperparameters"]["warmup"] = n / 20;
        j["hyperparameters"]["eval_every"] = 0;
        j["generation"]["temperature"] = temperature;
        j["generation"]["seed"] = 1;  // one set of teacher answers; the students' draws follow `seed`
        j["loss"] = loss;
        j["on_policy"] = {{"lambda", lambda}};
        j["baseline"]["enabled"] = false;
        j["export"] = {{"gguf", nlohmann::json::array()}};
        if (!evaluate) j["test_data"] = "";
        j["evaluation"]["evaluate_teacher"] = evaluate_teacher;
        j["evaluation"]["latency_samples"] = 0;
        j["evaluation"]["max_examples"] = max_examples;
        if (!init.empty()) j["student_weights"] = init.string();
        const fs::path shared = root / "seed1" / "v0" / "generate";
        if (dir != root / "seed1" / "v0") {
            fs::create_directories(dir);
            if (!fs::exists(dir / "generate")) fs::copy(shared, dir / "generate", fs::copy_options::recursive);
        }
        const Job job = parse_job(j);
        teacher::ModelConfig tcfg;
        io::from_json(job.teacher_config(), tcfg, "teacher");
        tcfg.keep_activations = false;  // the losses read the teacher's logits only
        teacher::Model<student::Transformer> teacher(tcfg, cpu);
        GkdDistiller d(job, teacher, cpu, {.quiet = true});
        if (!evaluate) return nlohmann::ordered_json{{"training", {{"student", d.finetune()["student"]}}}};
        return d.run();
    };
    for (int seed = 1; seed <= seeds; ++seed) {
        const fs::path sd = root / ("seed" + std::to_string(seed));
        fs::path init;
        for (std::size_t k = 0; k < variants.size(); ++k) {
            std::fprintf(stderr, "on_policy: seed %d, %s\n", seed, variants[k].name.c_str());
            if (k == 1 && warm_steps > 0) {  // the warm start of the others: sequence-level KD
                run(sd / "warm", seed, variants[0].loss, 0.0, warm_steps, {}, false, false);
                init = sd / "warm" / "student.safetensors";
            }
            const std::int64_t n = k == 0 ? steps : steps - warm_steps;
            const auto report = run(sd / ("v" + std::to_string(k)), seed, variants[k].loss, variants[k].lambda, n,
                                    k == 0 ? fs::path() : init, true, seed == 1 && k == 0);
            em[variants[k].name].push_back(report["models"]["student"]["metrics"].value("exact_match", 0.0));
            secs[variants[k].name].push_back(report["training"]["student"].value("seconds", 0.0));
            if (report["models"].contains("teacher"))
                teacher_em = report["models"]["teacher"]["metrics"].value("exact_match", 0.0);
        }
    }

    std::string md =
        "| student (" + std::to_string(steps) + " steps; the last three after " + std::to_string(warm_steps) +
        " of sequence-level KD; generation temperature " + std::to_string(temperature).substr(0, 4) +
        ") | test exact match: mean (min–max) | per seed | training s, own phase (mean) |\n|---|---:|---|---:|\n";
    for (const auto& v : variants) {
        const auto& x = em[v.name];
        double mean = 0, lo = 1, hi = 0, s = 0;
        std::string per;
        for (double e : x) {
            mean += e / double(x.size());
            lo = std::min(lo, e);
            hi = std::max(hi, e);
            per += (per.empty() ? "" : ", ") + std::to_string(e).substr(0, 5);
        }
        for (double t : secs[v.name]) s += t / double(secs[v.name].size());
        char line[512];
        std::snprintf(line, sizeof line, "| %s | %.3f (%.3f–%.3f) | %s | %.0f |\n", v.name.c_str(), mean, lo, hi,
                      per.c_str(), s);
        md += line;
    }
    char line[128];
    std::snprintf(line, sizeof line, "| *the teacher* | %.3f | | |\n", teacher_em);
    md += line;
    md += "\n" + std::to_string(seeds) + " seeds (student initialization, data order, sampling); test set: " +
          std::to_string(max_examples > 0 ? std::min(max_examples, sizes.test) : sizes.test) + " problems.\n";
    io::write_file_atomic(root / "on_policy.md", md);
    std::printf("%s", md.c_str());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "on_policy: %s\n", e.what());
    return 1;
}
