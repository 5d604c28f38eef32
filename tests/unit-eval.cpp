// Evaluation metrics against the packages users compare with (sacreBLEU, rouge-score), plus the
// answer normalizations.

#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "distill/eval/embedding.hpp"
#include "distill/eval/metrics.hpp"
#include "distill/eval/svg.hpp"
#include "testing.hpp"

using namespace distill;

namespace {
nlohmann::json golden() {
    return distill::testing::read_json(std::string(DISTILL_TEST_DATA_DIR) + "/metrics_golden.json");
}
}  // namespace

TEST_CASE("13a tokenization equals sacreBLEU's on every golden segment") {
    const auto g = golden();
    for (std::size_t i = 0; i < g["pairs"].size(); ++i) {
        const std::string hyp = g["pairs"][i]["hypothesis"];
        INFO("segment " << i << ": " << hyp);
        CHECK(eval::tokenize_13a(eval::detail::rstrip_python(hyp)) == g["tokenized_13a"][i].get<std::string>());
    }
}

TEST_CASE("corpus BLEU equals sacreBLEU's to 0.01 (score, precisions, brevity penalty, lengths)") {
    const auto g = golden();
    for (const auto& c : g["bleu"]) {
        std::vector<std::string> hyps, refs;
        for (int i : c["indices"]) {
            hyps.push_back(g["pairs"][i]["hypothesis"]);
            refs.push_back(g["pairs"][i]["reference"]);
        }
        const auto r = eval::corpus_bleu(hyps, refs);
        INFO("corpus " << c["indices"].dump());
        CHECK(std::abs(r.score - c["score"].get<double>()) <= 0.01);
        for (int n = 0; n < 4; ++n) CHECK(std::abs(r.precisions[n] - c["precisions"][n].get<double>()) <= 1e-6);
        CHECK(r.brevity_penalty == doctest::Approx(c["bp"].get<double>()));
        CHECK(r.sys_len == c["sys_len"].get<std::int64_t>());
        CHECK(r.ref_len == c["ref_len"].get<std::int64_t>());
    }
    CHECK_THROWS_WITH_AS(eval::corpus_bleu({"a"}, {}), doctest::Contains("1 hypotheses but 0 references"), error);
}

TEST_CASE("ROUGE-L equals rouge-score's on every golden pair") {
    const auto g = golden();
    for (std::size_t i = 0; i < g["pairs"].size(); ++i) {
        const auto s = eval::rouge_l(g["pairs"][i]["reference"].get<std::string>(),
                                     g["pairs"][i]["hypothesis"].get<std::string>());
        INFO("pair " << i);
        CHECK(s.precision == doctest::Approx(g["rouge_l"][i]["precision"].get<double>()).epsilon(1e-12));
        CHECK(s.recall == doctest::Approx(g["rouge_l"][i]["recall"].get<double>()).epsilon(1e-12));
        CHECK(s.f1 == doctest::Approx(g["rouge_l"][i]["f1"].get<double>()).epsilon(1e-12));
    }
}

TEST_CASE("answers: exact match, final numbers, perplexity, percentiles") {
    CHECK(eval::exact_match("The Eiffel Tower!", "eiffel tower"));
    CHECK_FALSE(eval::exact_match("Eiffel", "eiffel tower"));
    CHECK(eval::final_number("so 3 + 4 = 7, the answer is 1,234.5") == 1234.5);
    CHECK(eval::final_number("it drops to -12 degrees") == -12.0);
    CHECK(eval::final_number("from 3-5 apples") == 5.0);
    CHECK(eval::final_number("values 1,23 and 7.") == 7.0);
    CHECK_FALSE(eval::final_number("no digits here").has_value());
    CHECK(eval::numeric_match("#### 42", "The answer is 42.0"));
    CHECK_FALSE(eval::numeric_match("41", "42"));
    CHECK_FALSE(eval::numeric_match("none", "42"));
    CHECK(eval::perplexity(0.0, 10) == 1.0);
    CHECK(eval::perplexity(std::log(5.0) * 4, 4) == doctest::Approx(5.0));
    CHECK(eval::percentile({1, 2, 3, 4}, 0.5) == 2.5);
    CHECK(eval::percentile({5}, 0.95) == 5);
}

TEST_CASE("SQuAD token F1 and macro-F1 equal the official script's and scikit-learn's") {
    const auto g = distill::testing::read_json(std::string(DISTILL_TEST_DATA_DIR) + "/task_metrics_golden.json");
    REQUIRE(g["token_f1"].size() > 40);
    for (const auto& c : g["token_f1"]) {
        const std::string p = c["prediction"], r = c["reference"];
        INFO("prediction \"" << p << "\", reference \"" << r << "\"");
        CHECK(eval::token_f1(p, r) == doctest::Approx(c["f1"].get<double>()).epsilon(1e-12));
    }
    REQUIRE(g["macro_f1"].size() > 5);
    for (const auto& c : g["macro_f1"]) {
        const auto pred = c["predictions"].get<std::vector<std::string>>();
        const auto ref = c["references"].get<std::vector<std::string>>();
        INFO("case " << c.dump());
        CHECK(eval::macro_f1(pred, ref) == doctest::Approx(c["macro_f1"].get<double>()).epsilon(1e-12));
    }
}

TEST_CASE("SVG charts: every series and bar is drawn, text is escaped, non-finite points skipped") {
    eval::Series a{"soft_kl", {0, 1, 2}, {3.0, 2.0, 1.0}}, b{"hidden <mse>", {0, 1, 2}, {1.0, std::nan(""), 0.5}};
    const auto line = eval::line_chart("loss & friends", "step", "loss", {a, b});
    CHECK(line.rfind("<svg", 0) == 0);
    CHECK(line.find("</svg>") != std::string::npos);
    CHECK(line.find("loss &amp; friends") != std::string::npos);
    CHECK(line.find("hidden &lt;mse&gt;") != std::string::npos);
    CHECK(line.find("nan") == std::string::npos);
    std::size_t polylines = 0;
    for (std::size_t p = 0; (p = line.find("<polyline", p)) != std::string::npos; ++p) ++polylines;
    CHECK(polylines == 2);
    const auto bars = eval::bar_chart("models", {"accuracy", "latency"}, {"teacher", "student"}, {{0.9, 10}, {0.8, 2}});
    std::size_t rects = 0;
    for (std::size_t p = 0; (p = bars.find("<rect x=", p)) != std::string::npos; ++p) ++rects;
    CHECK(rects == 4 + 2);  // four bars, two legend swatches
    CHECK(bars.find("student: 0.8") != std::string::npos);
}

TEST_CASE("embedding agreement: cosines and recall@k on points of known angles") {
    const auto at = [](std::initializer_list<double> degrees, std::initializer_list<double> norms) {
        distill::eval::embeddings e({degrees.size(), 2});
        std::size_t i = 0;
        for (auto d = degrees.begin(), n = norms.begin(); d != degrees.end(); ++d, ++n, ++i) {
            e(i, 0) = float(*n * std::cos(*d * M_PI / 180));
            e(i, 1) = float(*n * std::sin(*d * M_PI / 180));
        }
        return e;
    };
    const auto teacher = at({0, 10, 90, 100}, {1, 1, 1, 1});
    const auto student = at({0, 10, 90, 180}, {3, 0.5, 2, 1});  // the norms must not matter
    // nearest by cosine: teacher 0↔1, 2↔3; student 0↔1, 2→1 (80°), 3→2 (90°)
    CHECK(distill::eval::nearest_neighbours(student, 1) == std::vector<std::vector<std::size_t>>{{1}, {0}, {1}, {2}});
    const auto a = distill::eval::agreement(student, teacher, 1);
    CHECK(a.mean_cosine == doctest::Approx((3 + std::cos(80 * M_PI / 180)) / 4).epsilon(1e-6));
    CHECK(a.min_cosine == doctest::Approx(std::cos(80 * M_PI / 180)).epsilon(1e-6));
    CHECK(a.recall_at_k == doctest::Approx(0.75));  // sentence 2 lost its neighbour
    CHECK(distill::eval::to_json(a).contains("recall_at_1"));
    const auto self = distill::eval::agreement(teacher, teacher, 3);  // k ≥ N−1: every other sentence
    CHECK(self.mean_cosine == doctest::Approx(1));
    CHECK(self.recall_at_k == doctest::Approx(1));
    CHECK(distill::eval::nearest_neighbours(teacher, 5)[0].size() == 3);
    CHECK_THROWS_WITH(distill::eval::agreement(student, at({0, 1, 2}, {1, 1, 1})),
                      doctest::Contains("4 student embeddings but 3 teacher embeddings"));
}
