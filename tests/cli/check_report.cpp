// Checks a quickstart report.json: the structure the issue fixes (every model with parameters,
// checkpoint_bytes, peak_rss_bytes, latency_ms_p50/p95, responses_per_s, tokens_per_s and metrics;
// task_type TASK (default math) and its primary metric at the top, each of the task's metrics with
// its definition in report.md beside the JSON), and that the distilled student beats the baseline on
// the primary metric by at least MARGIN (absolute, in the metric's unit). With the job's export.gguf, each quantized
// type is a model "student_<type>" with the same fields, its GGUF file's size as checkpoint_bytes (smaller than the
// fp32 student's), and an exact match within 0.2 of the fp32 student's.
//
//   check_report REPORT.json [MARGIN] [TASK]

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: check_report REPORT.json [MARGIN] [TASK]\n");
        return 2;
    }
    const double margin = argc > 2 ? std::atof(argv[2]) : 0.0;
    const std::string task = argc > 3 ? argv[3] : "math";
    // each task's metrics, the primary one first (the list, independent of the library's table)
    const std::map<std::string, std::vector<std::string>> task_metrics = {{"math", {"exact_match"}},
                                                                          {"nli", {"accuracy", "macro_f1"}},
                                                                          {"qa", {"exact_match", "f1"}},
                                                                          {"conversation", {"bleu", "rouge_l"}},
                                                                          {"summarization", {"rouge_l", "bleu"}}};
    if (!task_metrics.count(task)) {
        std::fprintf(stderr, "check_report: unknown task %s\n", task.c_str());
        return 2;
    }
    const auto& metrics = task_metrics.at(task);
    std::ifstream in(argv[1]);
    const auto r = nlohmann::json::parse(in, nullptr, false);
    int failures = 0;
    auto check = [&](bool ok, const std::string& what) {
        std::printf("%s %s\n", ok ? "ok:  " : "FAIL:", what.c_str());
        failures += ok ? 0 : 1;
    };
    if (r.is_discarded()) {
        check(false, std::string(argv[1]) + " is valid JSON");
        return 1;
    }
    check(r.value("task_type", "") == task, "task_type is " + task);
    const std::string primary = r.value("primary_metric", "");
    check(primary == metrics.front(), "primary_metric is " + metrics.front());
    std::string md;
    {
        std::ifstream f(std::string(argv[1]).substr(0, std::string(argv[1]).rfind('/') + 1) + "report.md");
        std::stringstream ss;
        ss << f.rdbuf();
        md = ss.str();
    }
    for (const char* m : {"teacher", "baseline", "student"}) {
        const bool has = r.contains("models") && r["models"].contains(m);
        check(has, std::string("models.") + m);
        if (!has) continue;
        const auto& x = r["models"][m];
        for (const char* k : {"parameters", "checkpoint_bytes", "peak_rss_bytes", "latency_ms_p50", "latency_ms_p95",
                              "responses_per_s", "tokens_per_s"})
            check(x.contains(k) && x[k].is_number() && x[k].get<double>() > 0,
                  std::string("models.") + m + "." + k + " > 0");
        for (const auto& k : metrics)
            check(x.contains("metrics") && x["metrics"].contains(k) && x["metrics"][k].is_number(),
                  std::string("models.") + m + ".metrics." + k);
        check(x["metrics"].contains("perplexity"), std::string("models.") + m + ".metrics.perplexity");
    }
    for (const auto& k : metrics) check(md.find("- **" + k + "**: ") != std::string::npos, "report.md defines " + k);
    std::vector<std::string> quantized;
    if (r.contains("job") && r["job"].contains("export"))
        for (const auto& type : r["job"]["export"].value("gguf", nlohmann::json::array()))
            if (type != "f32") quantized.push_back("student_" + type.get<std::string>());
    for (const auto& m : quantized) {
        const bool has = r["models"].contains(m);
        check(has, "models." + m);
        if (!has) continue;
        const auto& x = r["models"][m];
        for (const char* k : {"checkpoint_bytes", "latency_ms_p50", "latency_ms_p95", "tokens_per_s"})
            check(x.contains(k) && x[k].is_number() && x[k].get<double>() > 0, "models." + m + "." + k + " > 0");
        if (x.contains("checkpoint_bytes") && x["checkpoint_bytes"].is_number())
            check(x["checkpoint_bytes"].get<double>() < r["models"]["student"]["checkpoint_bytes"].get<double>(),
                  "models." + m + ".checkpoint_bytes < the fp32 student's");
        const bool metric =
            x.contains("metrics") && x["metrics"].contains(primary) && x["metrics"][primary].is_number();
        check(metric, "models." + m + ".metrics." + primary);
        if (metric)
            check(std::abs(x["metrics"][primary].get<double>() -
                           r["models"]["student"]["metrics"][primary].get<double>()) <= 0.2,
                  "models." + m + ": " + primary + " within 0.2 of the fp32 student's");
    }
    if (failures) return 1;
    const double t = r["models"]["teacher"]["metrics"][primary], b = r["models"]["baseline"]["metrics"][primary],
                 s = r["models"]["student"]["metrics"][primary];
    const double tp = r["models"]["teacher"]["parameters"], sp = r["models"]["student"]["parameters"];
    std::printf(
        "%s: teacher %.4f, baseline %.4f, student %.4f (%.0f%% of the teacher); parameters %.0f vs %.0f (%.1fx)\n",
        primary.c_str(), t, b, s, t > 0 ? 100 * s / t : 0.0, tp, sp, tp / sp);
    check(s >= b + margin, "the distilled student beats the baseline by at least " + std::to_string(margin));
    return failures ? 1 : 0;
}
