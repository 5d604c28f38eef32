#pragma once
// What train_teacher and quickstart_experiment share: prompts and answers as chat-template token
// sequences, greedy answering through teacher::Model, and the math task's exact-match scoring (final
// number compared numerically).

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <distill/distill.hpp>

namespace math_kd {

using Net = distill::student::Transformer<float, distill::device::Cpu>;
using Runner = distill::teacher::Model<distill::student::Transformer>;

/// Seconds since `t0`.
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Adds `prompt` (one user turn, chat template) + `answer` (+ <|end|>) as a training sequence.
inline void add_example(distill::data::SequenceDataset& d, const distill::data::ChatTokenizer& tmpl,
                        const std::string& prompt, const std::string& answer) {
    const std::vector<distill::data::Message> turn = {{"user", prompt}};
    d.add_prompt_response(tmpl.encode_prompt(turn), tmpl.encode_response(answer));
}

inline void add_example(distill::data::SequenceDataset& d, const distill::data::ChatTokenizer& tmpl,
                        const distill::data::MathProblem& p, const std::string& answer) {
    add_example(d, tmpl, p.question, answer);
}

/// Greedy answers of `model` to `prompts` (each one user turn).
inline std::vector<std::string> answer_all(Runner& model, const std::vector<std::string>& prompts,
                                           int max_new_tokens = 40) {
    std::vector<distill::teacher::Request> requests;
    requests.reserve(prompts.size());
    for (std::size_t i = 0; i < prompts.size(); ++i) requests.push_back({std::to_string(i), i, {{"user", prompts[i]}}});
    std::vector<std::string> out(prompts.size());
    distill::teacher::Sampling s;
    s.temperature = 0;
    s.top_p = 1.0;
    s.max_new_tokens = max_new_tokens;
    model.generate(requests, s, [&](std::size_t i, distill::teacher::Response r) {
        out[i] = r.ok() ? std::move(r.text) : std::string{};
    });
    return out;
}

inline std::vector<std::string> answer_all(Runner& model, const std::vector<distill::data::MathProblem>& problems,
                                           int max_new_tokens = 40) {
    std::vector<std::string> prompts;
    for (const auto& p : problems) prompts.push_back(p.question);
    return answer_all(model, prompts, max_new_tokens);
}

/// Fraction of `answers` whose final number equals the problem's answer.
inline double exact_match(const std::vector<distill::data::MathProblem>& problems,
                          const std::vector<std::string>& answers) {
    std::size_t hits = 0;
    for (std::size_t i = 0; i < problems.size(); ++i)
        hits += distill::eval::numeric_match(answers[i], std::to_string(problems[i].answer));
    return problems.empty() ? 0.0 : double(hits) / double(problems.size());
}

/// Copies `net`'s current weights into `runner` (same architecture config), parameter by parameter
/// (either may store its matrices in bf16: precision bf16).
inline void copy_weights(const Net& net, Runner& runner) {
    std::vector<float> values;
    for (std::size_t k = 0; k < net.base_parameters().size(); ++k) {
        values.resize(std::size_t(net.base_parameters()[k].value.numel()));
        net.read_base(k, values.data());
        runner.network().write_base(k, values.data());
    }
}

/// A runner config for in-memory networks.
inline distill::teacher::ModelConfig runner_config(int max_batch = 32) {
    distill::teacher::ModelConfig mc;
    mc.max_batch = max_batch;
    return mc;
}

}  // namespace math_kd
