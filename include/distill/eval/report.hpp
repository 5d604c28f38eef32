#pragma once
/// @file report.hpp
/// The evaluation report as people read it: `report.md` (the comparison table of teacher, baseline
/// and distilled student, with the student's change relative to the teacher) and SVG charts, both
/// rendered from the `report.json` object the Distiller builds, so every figure appears once.
///
/// `report.json` has, under `models`, for each of `teacher`, `baseline` and `student`: `parameters`,
/// `checkpoint_bytes`, `peak_rss_bytes`, `latency_ms_p50`, `latency_ms_p95`, `responses_per_s`,
/// `tokens_per_s`, `requests`, `prompt_tokens`, `completion_tokens` and `metrics` (keyed by metric
/// name); null where a figure does not exist (an API teacher has no parameter count). At top level:
/// `task_type`, `primary_metric` and `cost` (eval/cost.hpp).

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/eval/cost.hpp"
#include "distill/eval/svg.hpp"
#include "distill/eval/task_metrics.hpp"

namespace distill::eval {

namespace detail {

inline const char* const model_names[] = {"teacher", "baseline", "student"};

// The report's models in table order: teacher, baseline, student, then the quantized students
// ("student_q8_0", ...) as the evaluate stage added them.
inline std::vector<std::string> present_models(const nlohmann::ordered_json& report) {
    std::vector<std::string> present;
    const auto& models = report.at("models");
    for (const char* m : model_names) {
        if (models.contains(m)) present.emplace_back(m);
        if (std::string_view(m) == "teacher")  // a multi-teacher job's teachers, one by one
            for (const auto& item : models.items())
                if (item.key().starts_with("teacher_")) present.push_back(item.key());
    }
    for (const auto& item : models.items())
        if (item.key().starts_with("student_")) present.push_back(item.key());
    return present;
}

// A model's column label: "student_q8_0" -> "student q8_0".
inline std::string label(std::string model) {
    if (const auto at = model.find('_'); at != std::string::npos) model[at] = ' ';
    return model;
}

inline bool has_number(const nlohmann::ordered_json& j, const char* key) {
    return j.is_object() && j.contains(key) && j[key].is_number();
}

// 1234567 -> "1.23M"; 2048 -> "2.05k".
inline std::string si(double v) {
    char buf[32];
    const double a = std::abs(v);
    if (a >= 1e9)
        std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
    else if (a >= 1e6)
        std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
    else if (a >= 1e3)
        std::snprintf(buf, sizeof buf, "%.2fk", v / 1e3);
    else
        std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

inline std::string bytes(double v) {
    char buf[32];
    if (v >= 1 << 30)
        std::snprintf(buf, sizeof buf, "%.2f GiB", v / double(1 << 30));
    else if (v >= 1 << 20)
        std::snprintf(buf, sizeof buf, "%.1f MiB", v / double(1 << 20));
    else
        std::snprintf(buf, sizeof buf, "%.1f KiB", v / 1024.0);
    return buf;
}

inline std::string fixed(double v, int digits) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*f", digits, v);
    return buf;
}

// "-85%" / "+12%": the relative change of `student` against `teacher`.
inline std::string change(double student, double teacher) {
    if (!(teacher != 0) || !std::isfinite(student) || !std::isfinite(teacher)) return "";
    const double c = (student - teacher) / std::abs(teacher) * 100.0;
    return (c >= 0 ? "+" : "−") + fixed(std::abs(c), 0) + "%";
}

}  // namespace detail

/// The value of `key` for model `model` of a report (NaN when absent or null).
inline double report_value(const nlohmann::ordered_json& report, const std::string& model, const std::string& key) {
    const auto& models = report.at("models");
    if (!models.contains(model)) return std::nan("");
    const auto& m = models[model];
    if (detail::has_number(m, key.c_str())) return m[key].get<double>();
    if (m.contains("metrics") && detail::has_number(m["metrics"], key.c_str())) return m["metrics"][key].get<double>();
    return std::nan("");
}

/// One sentence: the student's change against the teacher and what it keeps of the primary metric,
/// e.g. "−88% parameters, −80% latency, −85% memory; keeps 95% of the teacher's exact_match (baseline: 34%)".
inline std::string report_summary(const nlohmann::ordered_json& report) {
    using namespace detail;
    const std::string primary = report.at("primary_metric");
    auto v = [&](const char* model, const std::string& key) { return report_value(report, model, key); };
    std::vector<std::string> parts;
    auto add = [&](const char* key, const char* what) {
        const std::string c = change(v("student", key), v("teacher", key));
        if (!c.empty()) parts.push_back(c + " " + what);
    };
    add("parameters", "parameters");
    add("latency_ms_p50", "latency");
    add("peak_rss_bytes", "memory");
    if (report.contains("cost") && report["cost"].value("priced", false)) {
        const auto& serving = report["cost"]["serving_per_1000_requests"];
        auto cost = [&](const char* m) {
            return serving.contains(m) && serving[m]["cost"].is_number() ? serving[m]["cost"].get<double>()
                                                                         : std::nan("");
        };
        if (const std::string c = change(cost("student"), cost("teacher")); !c.empty())
            parts.push_back(c + " serving cost");
    }
    std::string s;
    for (std::size_t i = 0; i < parts.size(); ++i) s += (i ? ", " : "") + parts[i];
    const double t = v("teacher", primary), st = v("student", primary), b = v("baseline", primary);
    if (std::isfinite(t) && t > 0 && std::isfinite(st)) {
        s += (s.empty() ? "" : "; ") + std::string("keeps ") + fixed(100.0 * st / t, 0) + "% of the teacher's " +
             primary;
        if (std::isfinite(b)) s += " (baseline: " + fixed(100.0 * b / t, 0) + "%)";
    }
    return s;
}

/// The cost section of report.md: `cost` in report.json (eval/cost.hpp); empty when there is none.
inline std::string render_cost_markdown(const nlohmann::ordered_json& report) {
    if (!report.contains("cost") || !report["cost"].is_object()) return {};
    const auto& c = report["cost"];
    const std::string cur = c.value("currency", "USD");
    auto fmt = [](const char* f, double v) {
        char buf[64];
        std::snprintf(buf, sizeof buf, f, v);
        return std::string(buf);
    };
    auto amount = [&](const nlohmann::ordered_json& v) {
        return v.is_number() ? fmt("%.4g", v.get<double>()) + " " + cur : std::string("–");
    };
    std::string md = "\n## Cost\n\n";
    if (!c.value("priced", false))
        md += "No prices are set (the job's `cost` object): the quantities below, without money.\n\n";
    const auto& g = c["generate"];
    md += "| distillation | quantity | cost |\n|---|---:|---:|\n";
    md += "| teacher tokens (" + std::to_string(g.value("answers", 0)) + " answers on file) | " +
          std::to_string(g.value("prompt_tokens", 0)) + " prompt + " + std::to_string(g.value("completion_tokens", 0)) +
          " completion | " + (c.value("teacher_billed", "") == "per token" ? amount(g["cost"]) : "–") + " |\n";
    md += "| generate | " + fmt("%.3f h", g.value("hours", 0.0)) + " | " +
          (c.value("teacher_billed", "") == "per token" ? "–" : amount(g["cost"])) + " |\n";
    md += "| finetune (student and baseline) | " + fmt("%.3f h", c["finetune"].value("hours", 0.0)) + " | " +
          amount(c["finetune"]["cost"]) + " |\n";
    md += "| **total** | | " + amount(c["distillation_cost"]) + " |\n\n";

    const auto& serving = c["serving_per_1000_requests"];
    if (!serving.empty()) {
        md += "| serving 1 000 requests | billed by | quantity | cost |\n|---|---|---:|---:|\n";
        for (const auto& item : serving.items()) {
            const std::string name = detail::label(item.key());
            const auto& s = item.value();
            if (s.contains("machine_hours"))
                md += "| " + name + " | machine time | " + fmt("%.4g h", s["machine_hours"].get<double>()) + " | " +
                      amount(s["cost"]) + " |\n";
            else
                md += "| " + name + " | tokens | " + fmt("%.0f", s["prompt_tokens"].get<double>()) + " prompt + " +
                      fmt("%.0f", s["completion_tokens"].get<double>()) + " completion | " + amount(s["cost"]) + " |\n";
        }
        if (c["break_even_requests"].is_number())
            md += "\nThe distillation pays for itself after " + fmt("%.0f", c["break_even_requests"].get<double>()) +
                  " requests served by the student instead of the teacher.\n";
        md +=
            "\nMachine time is 1 000 requests at the responses/s measured above (answers generated in batches "
            "of `evaluation.batch_size` on this machine); an API teacher costs its mean tokens per test request "
            "at the token prices. Generate and finetune hours are the wall time of the invocations that "
            "completed each stage.\n";
    }
    return md;
}

/// The load-test section of report.md: `loadtest` in report.json, one entry per model that
/// apps/loadtest measured behind a server (`--report ... --name MODEL`); empty when there is none.
inline std::string render_loadtest_markdown(const nlohmann::ordered_json& report) {
    using namespace detail;
    if (!report.contains("loadtest") || !report["loadtest"].is_object() || report["loadtest"].empty()) return {};
    const auto& runs = report["loadtest"];
    auto number = [](const nlohmann::ordered_json& v, int digits) {
        return v.is_number() ? fixed(v.get<double>(), digits) : std::string("–");
    };
    std::string md =
        "\n## Load test\n\nStreamed requests at each concurrency (apps/loadtest against an OpenAI-compatible "
        "server on this machine).\n\n| model | concurrent | requests/s | tokens/s | first token p50 (ms) | "
        "latency p50 (ms) | latency p95 (ms) | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const auto& run : runs.items()) {
        if (!run.value().contains("levels")) continue;
        for (const auto& l : run.value()["levels"]) {
            int errors = 0;
            if (l.contains("errors") && l["errors"].is_object())
                for (const auto& e : l["errors"].items()) errors += e.value().get<int>();
            md += "| " + label(run.key()) + " | " + number(l["concurrency"], 0) + " | " +
                  number(l["requests_per_s"], 2) + " | " + number(l["tokens_per_s"], 0) + " | " +
                  number(l["ttft_ms"]["p50"], 1) + " | " + number(l["latency_ms"]["p50"], 1) + " | " +
                  number(l["latency_ms"]["p95"], 1) + " | " + std::to_string(errors) + " |\n";
        }
    }
    auto sustained = [&](const std::string& m) {
        return runs.contains(m) && runs[m].contains("sustained_concurrency") &&
                       runs[m]["sustained_concurrency"].is_number()
                   ? runs[m]["sustained_concurrency"].get<double>()
                   : std::nan("");
    };
    md += "\n";
    for (const auto& run : runs.items())
        if (run.value().contains("p95_target_ms"))
            md += "- " + label(run.key()) + ": " +
                  (std::isfinite(sustained(run.key())) ? fixed(sustained(run.key()), 0) + " concurrent requests"
                                                       : std::string("no level tested")) +
                  " with p95 latency under " + number(run.value()["p95_target_ms"], 0) + " ms and no errors\n";
    const double t = sustained("teacher"), s = sustained("student");
    if (std::isfinite(t) && std::isfinite(s) && t > 0) {
        double highest = 0;  // a student that held at every level tested may sustain more
        for (const auto& l : runs["student"]["levels"]) highest = std::max(highest, l["concurrency"].get<double>());
        md += "\nThe student sustains " + fixed(s / t, 1) +
              "x the teacher's concurrent requests under the same target" +
              (s >= highest ? " (at least: it held at the highest level tested)" : "") + ".\n";
    }
    return md;
}

/// A multi-teacher job's teachers (report.json's `teachers`): weight, the training answers each gave
/// and their share, and the primary metric of each alone on the test set; "" for one teacher.
inline std::string render_teachers_markdown(const nlohmann::ordered_json& report) {
    using namespace detail;
    if (!report.contains("teachers") || !report["teachers"].is_array()) return "";
    const std::string primary = report.at("primary_metric");
    std::string md = "\n## Teachers\n\nRoute: `" + report.value("route", nlohmann::ordered_json()).dump() +
                     "`.\n\n| teacher | weight | training answers | share | " + primary +
                     " |\n|---|---:|---:|---:|---:|\n";
    for (const auto& t : report["teachers"]) {
        const double m = report_value(report, "teacher_" + t.value("name", ""), primary);
        md += "| " + t.value("name", "") + " | " + fixed(t.value("weight", 0.0), 3) + " | " +
              std::to_string(t.value("answers", 0)) + " | " + fixed(100.0 * t.value("share", 0.0), 1) + "% | " +
              (std::isfinite(m) ? fixed(m, 4) : std::string("–")) + " |\n";
    }
    return md;
}

/// `report.md`: the comparison table and the summary (see the file comment).
inline std::string render_markdown(const nlohmann::ordered_json& report) {
    using namespace detail;
    const std::string primary = report.at("primary_metric");
    const std::vector<std::string> present = present_models(report);
    std::string md = "# Distillation report\n\n";
    md += "Task: **" + report.at("task_type").get<std::string>() + "**, " +
          std::to_string(report.value("test_examples", 0)) + " test examples; primary metric: **" + primary + "**.\n\n";
    md += report_summary(report) + ".\n\n";
    md += "| |";
    for (const auto& m : present) md += " " + label(m) + " |";
    md += " student vs teacher |\n|---|";
    for (std::size_t i = 0; i < present.size(); ++i) md += "---:|";
    md += "---:|\n";
    auto row = [&](const std::string& label, const std::string& key, auto format, bool relative) {
        bool any = false;
        std::string line = "| " + label + " |";
        for (const auto& m : present) {
            const double x = report_value(report, m, key);
            any = any || std::isfinite(x);
            line += " " + (std::isfinite(x) ? format(x) : std::string("–")) + " |";
        }
        const double s = report_value(report, "student", key), t = report_value(report, "teacher", key);
        std::string rel;
        if (relative)
            rel = change(s, t);
        else if (std::isfinite(s) && std::isfinite(t) && t > 0)
            rel = "keeps " + fixed(100.0 * s / t, 0) + "%";
        if (any) md += line + " " + rel + " |\n";
    };
    auto metric = [](double x) { return fixed(x, 4); };
    row(primary, primary, metric, false);
    for (const auto& m : present) {
        const auto& metrics = report["models"][m]["metrics"];
        for (const auto& item : metrics.items())
            if (item.key() != primary && md.find("| " + item.key() + " |") == std::string::npos)
                row(item.key(), item.key(), metric, item.key() == "perplexity");
    }
    row("parameters", "parameters", si, true);
    row("checkpoint size", "checkpoint_bytes", bytes, true);
    row("peak memory (RSS)", "peak_rss_bytes", bytes, true);
    row(
        "latency p50 (ms)", "latency_ms_p50", [](double x) { return fixed(x, 2); }, true);
    row(
        "latency p95 (ms)", "latency_ms_p95", [](double x) { return fixed(x, 2); }, true);
    row(
        "responses/s", "responses_per_s", [](double x) { return fixed(x, 1); }, true);
    row(
        "tokens/s", "tokens_per_s", [](double x) { return fixed(x, 0); }, true);
    for (const auto& m : present) {  // a failed request is a wrong answer in the metrics: say so
        const auto& model = report["models"][m];
        if (model.value("failed", 0) > 0)
            md += "\n**" + label(m) + "**: " + std::to_string(model.value("failed", 0)) + " of " +
                  std::to_string(model.value("requests", 0)) +
                  " test requests failed, counted as wrong answers (first: " + model.value("first_failure", "") +
                  "; every one in `eval/" + m + ".answers.jsonl`).\n";
    }
    std::string definitions;
    std::vector<std::string> defined;
    for (const auto& m : present)
        for (const auto& item : report["models"][m]["metrics"].items()) {
            const std::string def = metric_definition(report.at("task_type").get<std::string>(), item.key());
            if (def.empty() || std::find(defined.begin(), defined.end(), item.key()) != defined.end()) continue;
            defined.push_back(item.key());
            definitions += "- **" + item.key() + "**: " + def + ".\n";
        }
    if (!definitions.empty()) md += "\nMetrics:\n\n" + definitions;
    md += render_teachers_markdown(report);
    md += render_cost_markdown(report);
    md += render_loadtest_markdown(report);
    md +=
        "\nCharts: `loss.svg` (training and validation loss per term), `models.svg` (the models, relative "
        "to the teacher). Machine-readable: `report.json`.\n";
    return md;
}

/// The models side by side: primary metric, tokens/s, peak memory and parameters, each relative
/// to the teacher (teacher = 1).
inline std::string models_chart(const nlohmann::ordered_json& report) {
    const std::string primary = report.at("primary_metric");
    const std::vector<std::string> keys = {primary, "tokens_per_s", "peak_rss_bytes", "parameters"};
    const std::vector<std::string> groups = {primary, "tokens/s", "peak memory", "parameters"};
    std::vector<std::string> bars;
    std::vector<std::vector<double>> values;
    for (const std::string& m : detail::present_models(report)) {
        bars.push_back(detail::label(m));
        std::vector<double> row;
        for (const auto& k : keys) {
            const double t = report_value(report, "teacher", k), x = report_value(report, m, k);
            row.push_back(std::isfinite(t) && t > 0 ? x / t : std::nan(""));
        }
        values.push_back(std::move(row));
    }
    return bar_chart("The models, relative to the teacher (teacher = 1)", groups, bars, values);
}

/// Training loss per term (and the validation loss) over steps from metrics.jsonl files, one prefix
/// per run ("student", "baseline"). Unreadable lines are skipped (the chart is informative only).
inline std::string loss_chart(const std::vector<std::pair<std::string, std::filesystem::path>>& runs) {
    std::vector<Series> series;
    for (const auto& [prefix, path] : runs) {
        std::ifstream in(path);
        std::string line;
        std::vector<Series> run;
        auto add = [&](const std::string& name, double x, double y) {
            for (auto& s : run)
                if (s.name == name) {
                    s.x.push_back(x);
                    s.y.push_back(y);
                    return;
                }
            run.push_back({name, {x}, {y}});
        };
        while (std::getline(in, line)) {
            const auto j = nlohmann::json::parse(line, nullptr, false);
            if (!j.is_object() || !j.contains("step") || !j.contains("loss") || !j["loss"].is_number()) continue;
            const double step = j["step"].get<double>();
            const std::string kind = j.value("kind", "");
            const std::string label = prefix + (kind == "validation" ? " validation" : " train");
            add(label, step, j["loss"].get<double>());
            // the terms of training only: validation per term would double the legend
            if (kind != "validation" && j.contains("terms") && j["terms"].is_object() && j["terms"].size() > 1)
                for (const auto& t : j["terms"].items())
                    if (t.value().is_number()) add(label + " " + t.key(), step, t.value().get<double>());
        }
        series.insert(series.end(), run.begin(), run.end());
    }
    return line_chart("Loss per term over training", "step", "loss", series, 860, 420);
}

}  // namespace distill::eval
