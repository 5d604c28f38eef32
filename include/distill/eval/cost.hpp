#pragma once
/// @file cost.hpp
/// What a distillation costs and what it saves, from measured figures and the user's prices (the
/// job's `cost` object): the teacher's tokens for the training data, the machine time of generate and
/// finetune, and the cost of serving 1 000 requests with the teacher and with each student at the
/// throughput the evaluate stage measured. `report.json` holds it under `cost`, `report.md` as a
/// table (docs/job-format.md, "cost").
///
/// Two ways a model is billed: an API teacher (kind "openai", or "cache", whose answers came from
/// one) per token — the mean prompt and completion tokens of its test answers times the token prices;
/// a model run in process per machine hour — the hours its measured responses/s needs for 1 000
/// requests times the hourly price. Generate and finetune are billed the same way (an API teacher's
/// generate by its tokens, an in-process teacher's by the stage's seconds).

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <nlohmann/json.hpp>

#include "distill/error.hpp"

namespace distill::eval {

/// The user's prices. Keys of the job's `cost` object; all default to 0 (not priced: the report then
/// shows the quantities without money).
struct CostConfig {
    std::string currency = "USD";               ///< the unit of every price, as printed in the report
    double teacher_prompt_per_million = 0;      ///< an API teacher's price per million prompt tokens
    double teacher_completion_per_million = 0;  ///< ... per million completion tokens
    double machine_per_hour = 0;                ///< the machine that trains and serves the students
    /// The machine that serves an in-process teacher (a bigger one, usually); unset: machine_per_hour.
    std::optional<double> teacher_machine_per_hour{};

    double teacher_machine() const { return teacher_machine_per_hour.value_or(machine_per_hour); }
    bool priced() const {
        return teacher_prompt_per_million > 0 || teacher_completion_per_million > 0 || machine_per_hour > 0 ||
               teacher_machine() > 0;
    }
    void validate(const std::string& path = "cost") const {
        if (currency.empty()) throw config_error(path + ".currency", "must not be empty");
        auto check = [&](const char* key, double v) {
            if (!(v >= 0) || !std::isfinite(v))
                throw config_error(path + "." + key, "must be a finite price >= 0, got " + std::to_string(v));
        };
        check("teacher_prompt_per_million", teacher_prompt_per_million);
        check("teacher_completion_per_million", teacher_completion_per_million);
        check("machine_per_hour", machine_per_hour);
        if (teacher_machine_per_hour) check("teacher_machine_per_hour", *teacher_machine_per_hour);
    }
};

/// The teacher's tokens for the answers on file in a generate directory: the `usage` of every line of
/// its `*.jsonl` files (answers kept, `teacher.usage`, and answers rejected, `usage`; a line without `usage` — a
/// rejection written by a version that did not record it — is counted in `lines_without_usage`). Read from the files,
/// so answers of interrupted and resumed runs all count; requests that failed are not billed here.
struct GeneratedTokens {
    std::int64_t prompt = 0, completion = 0, answers = 0, lines_without_usage = 0;
};

inline GeneratedTokens count_generated_tokens(const std::filesystem::path& generate_dir) {
    GeneratedTokens t;
    if (!std::filesystem::is_directory(generate_dir)) return t;
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(generate_dir))
        if (e.is_regular_file() && e.path().extension() == ".jsonl") files.push_back(e.path());
    for (const auto& file : files) {
        std::ifstream in(file);
        std::string line;
        while (std::getline(in, line)) {
            const auto j = nlohmann::json::parse(line, nullptr, false);
            if (!j.is_object()) continue;  // a torn last line: the next generate repairs it
            ++t.answers;
            // synthetic records keep it under "teacher", rejections at the top level
            const auto& holder = j.contains("teacher") && j["teacher"].is_object() ? j["teacher"] : j;
            const auto u = holder.find("usage");
            if (u == holder.end() || !u->is_object()) {
                ++t.lines_without_usage;
                continue;
            }
            t.prompt += u->value("prompt_tokens", std::int64_t(0));
            t.completion += u->value("completion_tokens", std::int64_t(0));
        }
    }
    return t;
}

namespace detail {

inline double number_or_nan(const nlohmann::ordered_json& j, const char* key) {
    return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<double>() : std::nan("");
}

// A price when the user gave one, else null: a quantity without a price has no cost.
inline nlohmann::ordered_json money(double amount, bool priced) {
    return priced && std::isfinite(amount) ? nlohmann::ordered_json(amount) : nlohmann::ordered_json();
}

}  // namespace detail

/// `report["cost"]`: from the report's measured figures (its `timings` and each model's
/// `responses_per_s`, `requests`, `prompt_tokens`, `completion_tokens`), the teacher's tokens on file
/// and the prices. `teacher_per_token`: the teacher is an API (billed per token), not run in process.
inline nlohmann::ordered_json cost_section(const nlohmann::ordered_json& report, const GeneratedTokens& generated,
                                           const CostConfig& prices, bool teacher_per_token) {
    using detail::money;
    const bool priced = prices.priced();
    nlohmann::ordered_json c;
    c["currency"] = prices.currency;
    c["priced"] = priced;
    c["teacher_billed"] = teacher_per_token ? "per token" : "per machine hour";
    const auto& timings = report.contains("timings") ? report["timings"] : nlohmann::ordered_json::object();
    const double generate_h = timings.value("generate_s", 0.0) / 3600.0,
                 finetune_h = timings.value("finetune_s", 0.0) / 3600.0;
    const double token_cost = (double(generated.prompt) * prices.teacher_prompt_per_million +
                               double(generated.completion) * prices.teacher_completion_per_million) /
                              1e6;
    const double generate_cost = teacher_per_token ? token_cost : generate_h * prices.teacher_machine();
    const double finetune_cost = finetune_h * prices.machine_per_hour;
    c["generate"] = {{"prompt_tokens", generated.prompt},
                     {"completion_tokens", generated.completion},
                     {"answers", generated.answers},
                     {"lines_without_usage", generated.lines_without_usage},
                     {"hours", generate_h},
                     {"cost", money(generate_cost, priced)}};
    c["finetune"] = {{"hours", finetune_h}, {"cost", money(finetune_cost, priced)}};
    c["distillation_cost"] = money(generate_cost + finetune_cost, priced);

    // Serving 1 000 requests like the test set's, at the measured throughput (batched as in the
    // evaluate stage) or at the API's token prices.
    nlohmann::ordered_json serving = nlohmann::ordered_json::object();
    for (const auto& item : report.at("models").items()) {
        const std::string& name = item.key();
        const auto& m = item.value();
        nlohmann::ordered_json s;
        const double requests = detail::number_or_nan(m, "requests");
        if (name == "teacher" && teacher_per_token) {
            const double p = detail::number_or_nan(m, "prompt_tokens"),
                         q = detail::number_or_nan(m, "completion_tokens");
            if (!(requests > 0) || !std::isfinite(p) || !std::isfinite(q)) continue;
            s["prompt_tokens"] = 1000.0 * p / requests;
            s["completion_tokens"] = 1000.0 * q / requests;
            s["cost"] =
                money(1000.0 * (p * prices.teacher_prompt_per_million + q * prices.teacher_completion_per_million) /
                          1e6 / requests,
                      priced);
        } else {
            const double rps = detail::number_or_nan(m, "responses_per_s");
            if (!(rps > 0)) continue;
            const double hours = 1000.0 / rps / 3600.0;
            s["machine_hours"] = hours;
            s["cost"] = money(hours * (name == "teacher" ? prices.teacher_machine() : prices.machine_per_hour), priced);
        }
        serving[name] = std::move(s);
    }
    c["serving_per_1000_requests"] = serving;

    // After how many requests the student's savings pay for the distillation.
    c["break_even_requests"] = nullptr;
    if (priced && serving.contains("teacher") && serving.contains("student") &&
        serving["teacher"]["cost"].is_number() && serving["student"]["cost"].is_number()) {
        const double saved =
            (serving["teacher"]["cost"].get<double>() - serving["student"]["cost"].get<double>()) / 1000.0;
        if (saved > 0) c["break_even_requests"] = std::ceil((generate_cost + finetune_cost) / saved);
    }
    return c;
}

}  // namespace distill::eval

BOOST_HANA_ADAPT_STRUCT(distill::eval::CostConfig, currency, teacher_prompt_per_million, teacher_completion_per_million,
                        machine_per_hour, teacher_machine_per_hour);
