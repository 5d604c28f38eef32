// Checks a quickstart report.json: the structure the issue fixes (every model with parameters,
// checkpoint_bytes, peak_rss_bytes, latency_ms_p50/p95, responses_per_s, tokens_per_s and metrics;
// task_type and primary_metric at the top), and that the distilled student beats the baseline on
// the primary metric by at least MARGIN (absolute). With the job's export.gguf, each quantized type
// is a model "student_<type>" with the same fields, its GGUF file's size as checkpoint_bytes
// (smaller than the fp32 student's), and an exact match within 0.2 of the fp32 student's.
//
//   check_report REPORT.json [MARGIN]

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: check_report REPORT.json [MARGIN]\n");
        return 2;
    }
    const double margin = argc > 2 ? std::atof(argv[2]) : 0.0;
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
    check(r.value("task_type", "") == "math", "task_type is math");
    const std::string primary = r.value("primary_metric", "");
    check(primary == "exact_match", "primary_metric is exact_match");
    for (const char* m : {"teacher", "baseline", "student"}) {
        const bool has = r.contains("models") && r["models"].contains(m);
        check(has, std::string("models.") + m);
        if (!has) continue;
        const auto& x = r["models"][m];
        for (const char* k : {"parameters", "checkpoint_bytes", "peak_rss_bytes", "latency_ms_p50", "latency_ms_p95",
                              "responses_per_s", "tokens_per_s"})
            check(x.contains(k) && x[k].is_number() && x[k].get<double>() > 0,
                  std::string("models.") + m + "." + k + " > 0");
        check(x.contains("metrics") && x["metrics"].contains(primary) && x["metrics"][primary].is_number(),
              std::string("models.") + m + ".metrics." + primary);
        check(x["metrics"].contains("perplexity"), std::string("models.") + m + ".metrics.perplexity");
    }
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
