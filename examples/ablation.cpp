// The ablation behind docs/ablation.md: with every training prompt labeled, does distillation still
// beat training on the ground truth at an equal step budget? The quickstart's setting (same teacher,
// student, data, steps) with all labels, and the distillation loss built up term by term:
//
//   ground truth   cross-entropy on the references (the Distiller's baseline, all prompts labeled)
//   soft_kl        KL to the teacher's token distributions on the teacher's answers
//   + hidden_mse   + hidden-state matching (learned projection)
//   + attention_kl + attention-map transfer
//   + hard_ce      + cross-entropy on the teacher's answer tokens (the quickstart's loss)
//
//   ablation [--out DIR] [--small] [--seeds N] [--threads N]
//
// Prints a markdown table (exact match and perplexity of the references)
// and writes it to DIR/ablation.md. Each seed changes the student's initialization and data order.

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <distill/distill.hpp>

#include "quickstart_job.hpp"

namespace fs = std::filesystem;

int main(int argc, char** argv) try {
    using namespace distill;
    std::string out = "out/ablation";
    bool small = false;
    int seeds = 1, threads = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--out" && i + 1 < argc)
            out = argv[++i];
        else if (a == "--small")
            small = true;
        else if (a == "--seeds" && i + 1 < argc)
            seeds = std::atoi(argv[++i]);
        else if (a == "--threads" && i + 1 < argc)
            threads = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr, "usage: ablation [--out DIR] [--small] [--seeds N] [--threads N]\n");
            return 2;
        }
    }
    const quickstart::Sizes sizes = small ? quickstart::Sizes::small() : quickstart::Sizes::full();
    const fs::path root = out, data_dir = root / "data";
    quickstart::write_data(data_dir, sizes, 1);  // every training prompt labeled
    const device::Cpu cpu = threads > 0 ? device::Cpu(threads) : device::Cpu();

    struct Variant {
        std::string name;
        std::map<std::string, double> weights;
    };
    const std::vector<Variant> variants = {
        {"soft_kl", {{"soft_kl", 1.0}}},
        {"soft_kl + hidden_mse", {{"soft_kl", 1.0}, {"hidden_mse", 0.1}}},
        {"soft_kl + hidden_mse + attention_kl", {{"soft_kl", 1.0}, {"hidden_mse", 0.1}, {"attention_kl", 0.1}}},
        {"+ hard_ce (the quickstart's loss)",
         {{"soft_kl", 1.0}, {"hidden_mse", 0.1}, {"attention_kl", 0.1}, {"hard_ce", 1.0}}},
    };
    std::map<std::string, std::vector<nlohmann::json>> results;  // row name -> per-seed metrics
    std::vector<std::string> rows = {"ground truth (cross-entropy on the references)"};
    for (const auto& v : variants) rows.push_back(v.name);
    nlohmann::json teacher_metrics;

    for (int seed = 1; seed <= seeds; ++seed) {
        for (std::size_t k = 0; k < variants.size(); ++k) {
            const fs::path dir = root / ("seed" + std::to_string(seed)) / ("v" + std::to_string(k));
            nlohmann::json j = quickstart::job(data_dir, dir, sizes);
            j["hyperparameters"]["seed"] = seed;
            j["loss"] = nlohmann::json::object();
            for (const auto& [term, w] : variants[k].weights) j["loss"][term] = {{"weight", w}};
            const bool first = k == 0;
            j["baseline"]["enabled"] = first;  // one ground-truth run per seed
            j["evaluation"]["evaluate_teacher"] = first && seed == 1;
            const fs::path shared = root / "seed1" / "v0" / "generate";
            if (!first || seed > 1) {  // the teacher's answers do not depend on the loss or the seed
                fs::create_directories(dir);
                if (!fs::exists(dir / "generate")) fs::copy(shared, dir / "generate", fs::copy_options::recursive);
            }
            const Job job = parse_job(j);
            teacher::ModelConfig tcfg;
            io::from_json(job.teacher_config(), tcfg, "teacher");
            teacher::Model<student::Transformer> teacher(tcfg, cpu);
            quickstart::MathDistiller d(job, teacher, cpu, {.quiet = true});
            std::fprintf(stderr, "ablation: seed %d, %s\n", seed, variants[k].name.c_str());
            const auto report = d.run();
            results[variants[k].name].push_back(report["models"]["student"]["metrics"]);
            if (first) results[rows[0]].push_back(report["models"]["baseline"]["metrics"]);
            if (report["models"].contains("teacher")) teacher_metrics = report["models"]["teacher"]["metrics"];
        }
    }

    auto mean = [](const std::vector<nlohmann::json>& v, const char* key) {
        double s = 0;
        for (const auto& m : v) s += m.value(key, 0.0);
        return v.empty() ? 0.0 : s / double(v.size());
    };
    auto range = [](const std::vector<nlohmann::json>& v, const char* key) {
        double lo = 1e300, hi = -1e300;
        for (const auto& m : v) {
            lo = std::min(lo, m.value(key, 0.0));
            hi = std::max(hi, m.value(key, 0.0));
        }
        char buf[64];
        std::snprintf(buf, sizeof buf, " (%.3f–%.3f)", lo, hi);
        return v.size() > 1 ? std::string(buf) : std::string();
    };
    std::string md = "| training of the student (" + std::to_string(sizes.steps) + " steps, " +
                     std::to_string(sizes.train) +
                     " prompts, all labeled) | exact match | perplexity of the references |\n|---|---:|---:|\n";
    for (const auto& r : rows) {
        const auto& v = results[r];
        char line[512];
        std::snprintf(line, sizeof line, "| %s | %.3f%s | %.3f |\n", r.c_str(), mean(v, "exact_match"),
                      range(v, "exact_match").c_str(), mean(v, "perplexity"));
        md += line;
    }
    char line[256];
    std::snprintf(line, sizeof line, "| *the teacher* | %.3f | %.3f |\n", teacher_metrics.value("exact_match", 0.0),
                  teacher_metrics.value("perplexity", 0.0));
    md += line;
    md += "\n" + std::to_string(seeds) +
          " seed(s); mean, with the range over seeds when there are several. Test set: " + std::to_string(sizes.test) +
          " problems.\n";
    io::write_file_atomic(root / "ablation.md", md);
    std::printf("%s", md.c_str());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "ablation: %s\n", e.what());
    return 1;
}
