// Several teachers in one job (teacher/ensemble.hpp): the math task's operation sets, the job's
// `teachers` and `route` validation, routing determinism, the probability-space mixture against an
// independent computation, and a reduced two-teacher job end to end (answers record their teacher,
// the report shows every teacher, a rerun skips every stage).

#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "distill/distill.hpp"
#include "teacher_fixtures.hpp"

using namespace distill;

namespace {

using Model = teacher::Model<student::Transformer>;
using Loss = loss::Sum<loss::SoftKL, loss::HardCE>;
using MultiDistiller = Distiller<teacher::Ensemble<Model>, student::Transformer, Loss, optim::AdamW, device::Cpu>;
using SingleDistiller = Distiller<Model, student::Transformer, Loss, optim::AdamW, device::Cpu>;

distill::testing::MathWorld& world() {
    static distill::testing::MathWorld w;
    return w;
}

std::string job_error(const nlohmann::json& j) {
    try {
        parse_job(j);
    } catch (const config_error& e) {
        return e.what();
    }
    return "(no error)";
}

// A two-teacher job on the MathWorld data: the same checkpoint twice ("a", "b").
nlohmann::json two_teacher_job(const std::string& out, nlohmann::json route) {
    nlohmann::json j = world().job(out);
    const nlohmann::json t = j["teacher"];
    j.erase("teacher");
    j["teachers"] = {t, t};
    j["teachers"][0]["name"] = "a";
    j["teachers"][1]["name"] = "b";
    j["teachers"][1]["weight"] = 3.0;
    j["route"] = std::move(route);
    j["loss"] = {{"soft_kl", {{"weight", 1.0}}}, {"hard_ce", {{"weight", 0.5}}}};
    return j;
}

teacher::ModelConfig model_config(const Job& job, std::size_t i) {
    teacher::ModelConfig c;
    io::from_json(job.teacher_config(i), c, "teachers[" + std::to_string(i) + "]");
    return c;
}

}  // namespace

TEST_CASE("math task: the default operations give the problems of before, byte for byte; division is exact") {
    std::string all;
    for (const auto& p : data::make_math_problems(1001, 5000))
        all += p.question + "|" + p.solution + "|" + std::to_string(p.answer) + "\n";
    // the SHA-256 of the same text from the generator before operation sets existed (commit aea225c)
    CHECK(detail::sha256_hex(all) == "7548fc6dfc99f434a85cbbd2a1a76993bfa77ae81bca09812061781950026a4c");
    static constexpr data::MathOp div[] = {data::MathOp::div};
    for (const auto& p : data::make_math_problems(3, 200, div)) {
        CHECK(p.op == data::MathOp::div);
        const auto slash = p.solution.find('/'), eq = p.solution.find('=');
        const long a = std::stol(p.solution.substr(0, slash)), b = std::stol(p.solution.substr(slash + 1, eq));
        CHECK(a == b * p.answer);
        CHECK(p.question.find(" " + std::to_string(a) + " ") != std::string::npos);
    }
    CHECK(data::parse_math_op("mul") == data::MathOp::mul);
    CHECK_THROWS_WITH_AS(data::parse_math_op("pow", "--ops"), doctest::Contains("--ops: expected"), config_error);
}

TEST_CASE("job: teachers and route are validated, errors naming the key") {
    const nlohmann::json good = two_teacher_job("x", "mix");
    const Job job = parse_job(good);
    CHECK(job.multi_teacher());
    CHECK(job.teacher_kind() == "model");
    CHECK(job.teacher_name(1) == "b");
    CHECK(job.teacher_weight(1) == 3.0);
    CHECK(!job.teacher_config(0).contains("name"));
    auto with = [&](const char* key, nlohmann::json value) {
        nlohmann::json j = good;
        j[nlohmann::json::json_pointer(key)] = std::move(value);
        return j;
    };
    CHECK(job_error(with("/teacher", world().job("x")["teacher"]))
              .starts_with("teachers: and \"teacher\" are exclusive"));
    CHECK(job_error(with("/teachers/1/name", "a")).starts_with("teachers[1].name: \"a\" is also teachers[0]'s"));
    CHECK(job_error(with("/teachers/0/weight", 0)).starts_with("teachers[0].weight: must be a finite number > 0"));
    CHECK(parse_job(with("/teachers/1/kind", "cache")).teacher_kind() == "model");  // kinds may differ
    CHECK(job_error(with("/teachers/1/kind", "remote")).starts_with("teachers[1].kind:"));
    nlohmann::json unnamed = good;
    unnamed["teachers"][0].erase("name");
    CHECK(job_error(unnamed).starts_with("teachers[0].name: is required"));
    CHECK(job_error(with("/route", "random")).starts_with("route: expected \"mix\", \"example\""));
    CHECK(job_error(with("/route", {{"field", "op"}, {"map", {{"div", "c"}}}}))
              .starts_with("route.map.div: names no teacher: \"c\""));
    CHECK(job_error(with("/route", {{"field", "op"}})).starts_with("route.map: is required"));
    CHECK(job_error(with("/route", {{"by", "example"}, {"sede", 1}})).starts_with("route.sede: unknown key"));
    nlohmann::json single = world().job("x");
    single["route"] = "mix";
    CHECK(job_error(single).starts_with("route: routes several teachers"));
}

TEST_CASE("ensemble routing: deterministic per example, in proportion to the weights; by field") {
    teacher::ModelConfig mc;
    mc.weights = world().teacher.string();
    Model a(mc), b(mc);
    const teacher::Ensemble<Model> e({{"a", 1.0, &a}, {"b", 3.0, &b}}, teacher::parse_route("example", {"a", "b"}));
    CHECK(e.weights()[1] == doctest::Approx(0.75));
    int to_b = 0;
    const int n = 20000;
    for (int i = 0; i < n; ++i) {
        const std::string id = "ex-" + std::to_string(i);
        const auto k = e.route_of(id, {});
        CHECK(k == e.route_of(id, {{"op", "add"}}));  // the id alone decides
        to_b += k == 1;
    }
    CHECK(double(to_b) / n == doctest::Approx(0.75).epsilon(0.02));
    // another seed routes differently, but as often
    const teacher::Ensemble<Model> e2({{"a", 1.0, &a}, {"b", 3.0, &b}},
                                      teacher::parse_route({{"by", "example"}, {"seed", 9}}, {"a", "b"}));
    int differ = 0;
    for (int i = 0; i < 1000; ++i) differ += e.route_of(std::to_string(i), {}) != e2.route_of(std::to_string(i), {});
    CHECK(differ > 200);

    const teacher::Ensemble<Model> f({{"a", 1.0, &a}, {"b", 1.0, &b}},
                                     teacher::parse_route({{"field", "op"}, {"map", {{"div", "b"}}}}, {"a", "b"}));
    CHECK(f.route_of("x", {{"op", "div"}}) == 1);
    CHECK_THROWS_WITH_AS(f.route_of("x", {{"op", "add"}}), doctest::Contains("route.map does not name"), config_error);
    CHECK_THROWS_WITH_AS(f.route_of("x", {}), "route.field: example \"x\" has no field \"op\"", config_error);
    CHECK_THROWS_WITH_AS(teacher::Ensemble<Model>({{"a", 1.0, &a}, {"a", 1.0, &b}}),
                         doctest::Contains("teachers[1].name"), config_error);
}

TEST_CASE("ensemble logits: log of the weighted mixture of the teachers' distributions; one teacher per routed row") {
    // the mixture of one row, against an independent long-double computation
    const std::vector<float> z1 = {2.0f, -1.0f, 0.5f, 3.0f}, z2 = {-3.0f, 4.0f, 0.0f, 1.0f};
    std::vector<double> acc(4, -INFINITY);
    teacher::Ensemble<Model>::mix_row(z1.data(), 4, 4, std::log(0.25), acc.data());
    teacher::Ensemble<Model>::mix_row(z2.data(), 4, 4, std::log(0.75), acc.data());
    auto softmax = [](const std::vector<float>& z, int v) {
        long double s = 0;
        for (float x : z) s += std::exp((long double)x);
        return std::exp((long double)z[std::size_t(v)]) / s;
    };
    for (int v = 0; v < 4; ++v)
        CHECK(acc[std::size_t(v)] ==
              doctest::Approx(double(std::log(0.25L * softmax(z1, v) + 0.75L * softmax(z2, v)))).epsilon(1e-12));

    // two different in-memory teachers through forward(): every position mixed; set_rows picks one
    const student::TransformerConfig c{
        .vocab_size = 263, .context_length = 32, .d_model = 16, .n_layers = 1, .n_heads = 2, .d_ff = 32};
    teacher::ModelConfig mc;
    mc.max_batch = 2;
    mc.keep_activations = false;
    Model a(c, mc), b(c, mc);
    a.network().init(1);
    b.network().init(2);
    teacher::Ensemble<Model> e({{"a", 1.0, &a}, {"b", 3.0, &b}});
    const int B = 2, T = 5;
    const std::vector<std::int32_t> tokens = {1, 2, 3, 4, 5, 9, 8, 7, 6, 5};
    a.forward(tokens.data(), B, T);
    const std::vector<float> la(a.logits().data(), a.logits().data() + a.logits().numel());
    b.forward(tokens.data(), B, T);
    const std::vector<float> lb(b.logits().data(), b.logits().data() + b.logits().numel());
    auto log_softmax = [&](const std::vector<float>& l, std::size_t row, int v) {
        long double s = 0;
        for (int u = 0; u < 263; ++u) s += std::exp((long double)l[row * 263 + std::size_t(u)]);
        return (long double)l[row * 263 + std::size_t(v)] - std::log(s);
    };
    e.forward(tokens.data(), B, T);
    auto mixed = e.logits();
    REQUIRE(mixed.size(2) == 263);
    double worst = 0;
    for (std::size_t row = 0; row < std::size_t(B * T); ++row)
        for (int v = 0; v < 263; v += 7) {
            const long double want =
                std::log(0.25L * std::exp(log_softmax(la, row, v)) + 0.75L * std::exp(log_softmax(lb, row, v)));
            worst = std::max(worst, std::abs(double(want) - double(mixed.data()[row * 263 + std::size_t(v)])));
        }
    CHECK(worst < 1e-5);
    const std::vector<int> rows = {1, 0};  // row 0: teacher b alone; row 1: teacher a alone
    e.set_rows(rows);
    e.forward(tokens.data(), B, T);
    mixed = e.logits();
    worst = 0;
    for (std::size_t row = 0; row < std::size_t(B * T); ++row)
        for (int v = 0; v < 263; v += 5) {
            const long double want = log_softmax(row < std::size_t(T) ? lb : la, row, v);
            worst = std::max(worst, std::abs(double(want) - double(mixed.data()[row * 263 + std::size_t(v)])));
        }
    CHECK(worst < 1e-5);
}

TEST_CASE("Distiller with two teachers: answers record their teacher, the report shows each, a rerun skips") {
    const Job job = parse_job(two_teacher_job("multi", "example"));
    Model a(model_config(job, 0)), b(model_config(job, 1));
    teacher::Ensemble<Model> both({{"a", 1.0, &a}, {"b", 3.0, &b}}, teacher::parse_route(job.route, {"a", "b"}));

    // the job and the ensemble must agree; a single-teacher Distiller refuses a multi-teacher job
    auto refusal = [&](auto make) -> std::string {
        try {
            make();
        } catch (const config_error& e) {
            return e.what();
        }
        return "(no error)";
    };
    teacher::Ensemble<Model> other({{"a", 1.0, &a}, {"b", 1.0, &b}}, teacher::parse_route(job.route, {"a", "b"}));
    CHECK(refusal([&] {
              MultiDistiller d(job, other, device::Cpu{}, {.quiet = true});
          }).starts_with("teachers[0].weight: differs"));
    CHECK(refusal([&] {
              SingleDistiller d(job, a, device::Cpu{}, {.quiet = true});
          }).starts_with("teachers: names several teachers"));
    const Job field_job = parse_job(two_teacher_job("f", {{"field", "op"}, {"map", {{"div", "b"}}}}));
    teacher::Ensemble<Model> by_field({{"a", 1.0, &a}, {"b", 3.0, &b}},
                                      teacher::parse_route(field_job.route, {"a", "b"}));
    try {  // the MathWorld lines have no "op": the first training line is named
        MultiDistiller d(field_job, by_field, device::Cpu{}, {.quiet = true});
        FAIL("a field route over examples without the field was accepted");
    } catch (const format_error& e) {
        CHECK(e.line() == 1);
        CHECK(std::string(e.what()).find("has no field \"op\"") != std::string::npos);
    }

    MultiDistiller d(job, both, device::Cpu{}, {.quiet = true});
    const auto report = d.run();
    std::map<std::string, int> answered;
    int n = 0;
    for (const auto& r :
         teacher::read_synthetic(std::filesystem::path(job.output_dir) / "generate" / "synthetic.jsonl")) {
        ++answered[r.response.answered_by];
        ++n;
        CHECK(r.response.answered_by == (both.route_of(r.id, {}) == 0 ? "a" : "b"));
    }
    CHECK(answered["a"] + answered["b"] == n);
    CHECK(answered["b"] > answered["a"]);  // weight 3 against 1
    REQUIRE(report["teachers"].size() == 2);
    CHECK(report["teachers"][1]["name"] == "b");
    CHECK(report["teachers"][1]["answers"] == answered["b"]);
    CHECK(report["teachers"][0]["share"].get<double>() == doctest::Approx(double(answered["a"]) / n));
    CHECK(report["models"].contains("teacher_a"));
    CHECK(report["models"].contains("teacher_b"));
    // the routed pair loads both: its parameters are the two teachers'
    CHECK(report["models"]["teacher"]["parameters"].get<std::int64_t>() ==
          2 * report["models"]["teacher_a"]["parameters"].get<std::int64_t>());
    // the same checkpoint twice: each alone scores what the routed pair scores
    CHECK(report["models"]["teacher_a"]["metrics"]["exact_match"] ==
          report["models"]["teacher"]["metrics"]["exact_match"]);
    const std::string md = eval::render_markdown(report);
    CHECK(md.find("## Teachers") != std::string::npos);
    CHECK(md.find("| teacher a |") != std::string::npos);

    // a rerun: every stage complete under the same fingerprints
    MultiDistiller again(job, both, device::Cpu{}, {.quiet = true});
    const auto g = again.generate();
    CHECK(g.requested == 0);
    CHECK(again.evaluate()["fingerprint"] == report["fingerprint"]);
}

TEST_CASE("teacher::Any: teachers of different types in one ensemble, each through its answers") {
    nlohmann::json j = two_teacher_job("any", "example");
    j["loss"] = {{"hard_ce", {{"weight", 1.0}}}};
    j["teachers"][1] = {{"name", "fixed"}, {"kind", "custom"}, {"weight", 3.0}};
    const Job job = parse_job(j);
    auto model = std::make_unique<Model>(model_config(job, 0));
    const std::string model_fingerprint = model->fingerprint(), model_tokenizer = model->tokenizer_id();
    auto fixed = std::make_unique<teacher::Callable<std::function<std::string(std::string_view)>>>(
        [](std::string_view) { return std::string("2+2=4. The answer is 4."); }, "fixed", "v1");
    teacher::Any a(std::move(model)), b(std::move(fixed));
    // the wrapped teachers' identity passes through: the same fingerprint, the same answer ids
    CHECK(a.fingerprint() == model_fingerprint);
    CHECK(a.tokenizer_id() == model_tokenizer);
    CHECK(b.name().find("fixed") != std::string::npos);
    CHECK(b.tokenizer_id().empty());  // a text-only teacher

    teacher::Ensemble<teacher::Any> both({{"a", 1.0, &a}, {"fixed", 3.0, &b}},
                                         teacher::parse_route(job.route, {"a", "fixed"}));
    using AnyDistiller = Distiller<teacher::Ensemble<teacher::Any>, student::Transformer, loss::Sum<loss::HardCE>,
                                   optim::AdamW, device::Cpu>;
    AnyDistiller d(job, both, device::Cpu{}, {.quiet = true});
    const auto g = d.generate();
    CHECK(g.requested > 0);
    std::map<std::string, int> answered;
    for (const auto& r :
         teacher::read_synthetic(std::filesystem::path(job.output_dir) / "generate" / "synthetic.jsonl")) {
        ++answered[r.response.answered_by];
        CHECK(r.response.answered_by == (both.route_of(r.id, {}) == 0 ? "a" : "fixed"));
        if (r.response.answered_by == "fixed")
            CHECK(r.response.text == "2+2=4. The answer is 4.");
        else
            CHECK(r.response.text != "2+2=4. The answer is 4.");
    }
    CHECK(answered["a"] > 0);
    CHECK(answered["fixed"] > answered["a"]);  // weight 3 against 1
    const auto summary = d.finetune();
    CHECK(std::isfinite(summary["student"]["final_loss"].get<double>()));
    auto report = d.evaluate();
    CHECK(report["models"]["teacher_fixed"]["failed"] == 0);
    CHECK(report["models"]["teacher_fixed"]["parameters"].is_null());  // not a network here
    CHECK(eval::render_markdown(report).find("test requests failed") == std::string::npos);
    // failed requests count as wrong answers; report.md says how many, and the first one's reason
    report["models"]["teacher_fixed"]["failed"] = 3;
    report["models"]["teacher_fixed"]["first_failure"] = "math-9: no cached answer";
    CHECK(eval::render_markdown(report).find(
              "**teacher fixed**: 3 of " + std::to_string(report["models"]["teacher_fixed"]["requests"].get<int>()) +
              " test requests failed, counted as wrong answers (first: math-9: no cached answer; every one in "
              "`eval/teacher_fixed.answers.jsonl`).") != std::string::npos);
}
