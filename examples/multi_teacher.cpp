// Several teachers in one job: the quickstart's math teacher (addition, subtraction, multiplication;
// examples/data/math_teacher.safetensors) and a second teacher trained on exact division alone
// (examples/data/math_teacher_div.safetensors) teach one student the union of their tasks.
//
// Three distillations with the same data, student, loss and step budget, on the same test set of all
// four operations: a student of teacher A alone, of teacher B alone, and of both — a job with
// `"teachers": [A, B]` and `"route": {"field": "op", "map": {"div": "b"}, "default": "a"}`, so each
// training prompt is answered by the teacher that knows its operation, and the online loss (soft_kl +
// hard_ce) reads that teacher's logits. Prints the exact match per operation and overall, and the
// two-teacher run's report.md (every teacher's metrics and share of the answers).
//
//   multi_teacher [--out DIR] [--threads N] [--seed S] [--small] [--quiet]
//
// --seed picks the problems and the training seed (default 1); --small is the test suite's reduced run.

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <distill/distill.hpp>

#ifndef DISTILL_EXAMPLES_DIR
#define DISTILL_EXAMPLES_DIR "examples"
#endif

namespace {

using namespace distill;
using Model = teacher::Model<student::Transformer>;
using Loss = loss::Sum<loss::SoftKL, loss::HardCE>;
using Single = Distiller<Model, student::Transformer, Loss, optim::AdamW, device::Cpu>;
using Multi = Distiller<teacher::Ensemble<Model>, student::Transformer, Loss, optim::AdamW, device::Cpu>;

struct Sizes {
    int train = 1600, test = 200;
    std::int64_t steps = 400;
};

nlohmann::json teacher_json(const char* file) {
    return {{"kind", "model"}, {"weights", std::string(DISTILL_EXAMPLES_DIR) + "/data/" + file}, {"max_batch", 32}};
}

// The job of one run: the same everything but the teacher(s).
nlohmann::json job_json(const std::filesystem::path& data, const std::filesystem::path& out, const Sizes& z, int seed) {
    return {{"student",
             {{"vocab_size", 263},
              {"context_length", 96},
              {"d_model", 64},
              {"n_layers", 2},
              {"n_heads", 4},
              {"d_ff", 256}}},
            {"training_data", (data / "train.jsonl").string()},
            {"test_data", (data / "test.jsonl").string()},
            {"task_type", "math"},
            {"generation", {{"temperature", 0.0}, {"max_new_tokens", 48}}},
            {"hyperparameters",
             {{"learning_rate", 1e-2},
              {"batch_size", 32},
              {"max_steps", z.steps},
              {"warmup", z.steps / 20},
              {"weight_decay", 0.1},
              {"temperature", 1.0},
              {"checkpoint_every", 0},
              {"seed", seed}}},
            {"loss", {{"soft_kl", {{"weight", 1.0}}}, {"hard_ce", {{"weight", 1.0}}}}},
            {"baseline", {{"enabled", false}}},
            {"evaluation", {{"batch_size", 32}, {"latency_samples", 0}}},
            {"output_dir", out.string()}};
}

// Exact match of eval/student.answers.jsonl per operation ("all": overall).
std::map<std::string, double> scores(const std::filesystem::path& run,
                                     const std::map<std::string, std::string>& op_of) {
    std::map<std::string, std::pair<int, int>> hits;  // op -> (right, total)
    data::read_jsonl(run / "eval" / "student.answers.jsonl", {}, [&](std::uint64_t, const nlohmann::json& j) {
        const bool ok = eval::numeric_match(j.value("answer", ""), j.value("reference", ""));
        for (const std::string& k : {op_of.at(j.value("id", "")), std::string("all")}) {
            hits[k].first += ok;
            hits[k].second += 1;
        }
    });
    std::map<std::string, double> out;
    for (const auto& [k, v] : hits) out[k] = v.second ? double(v.first) / v.second : 0.0;
    return out;
}

}  // namespace

int main(int argc, char** argv) try {
    std::string out = "out/multi_teacher";
    int threads = 0, seed = 1;
    bool quiet = false;
    Sizes z;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--out" && i + 1 < argc)
            out = argv[++i];
        else if (a == "--threads" && i + 1 < argc)
            threads = std::atoi(argv[++i]);
        else if (a == "--seed" && i + 1 < argc)
            seed = std::atoi(argv[++i]);
        else if (a == "--small")
            z = {160, 40, 30};
        else if (a == "--quiet")
            quiet = true;
        else {
            std::fprintf(stderr, "usage: multi_teacher [--out DIR] [--threads N] [--seed S] [--small] [--quiet]\n");
            return 2;
        }
    }
    const device::Cpu cpu = threads > 0 ? device::Cpu(threads) : device::Cpu();
    const std::filesystem::path dir = out, data_dir = dir / "data";

    // the union task: all four operations, each line tagged with its operation ("op", what the route reads)
    static constexpr data::MathOp all_ops[] = {data::MathOp::add, data::MathOp::sub, data::MathOp::mul,
                                               data::MathOp::div};
    const auto problems = data::make_math_problems(std::uint64_t(5000 + seed), std::size_t(z.train + z.test), all_ops);
    std::map<std::string, std::string> op_of;
    std::string train, test;
    for (std::size_t i = 0; i < problems.size(); ++i) {
        const std::string id = "q-" + std::to_string(i), op(data::math_op_name(problems[i].op));
        nlohmann::ordered_json j = {{"id", id}, {"op", op}, {"prompt", problems[i].question}};
        if (i >= std::size_t(z.train)) j["completion"] = problems[i].solution;
        (i < std::size_t(z.train) ? train : test) += j.dump() + "\n";
        op_of[id] = op;
    }
    std::filesystem::create_directories(data_dir);
    io::write_file_atomic(data_dir / "train.jsonl", train);
    io::write_file_atomic(data_dir / "test.jsonl", test);

    teacher::ModelConfig ca, cb;
    nlohmann::json ja = teacher_json("math_teacher.safetensors"), jb = teacher_json("math_teacher_div.safetensors");
    ja.erase("kind");
    jb.erase("kind");
    io::from_json(ja, ca, "teachers[0]");
    io::from_json(jb, cb, "teachers[1]");
    Model a(ca, cpu), b(cb, cpu);

    std::map<std::string, std::map<std::string, double>> results;
    for (const char* run : {"a", "b"}) {
        nlohmann::json j = job_json(data_dir, dir / run, z, seed);
        j["teacher"] =
            teacher_json(run == std::string("a") ? "math_teacher.safetensors" : "math_teacher_div.safetensors");
        Single d(parse_job(j), run == std::string("a") ? a : b, cpu, {.quiet = quiet});
        d.run();
        results[run] = scores(dir / run, op_of);
    }
    nlohmann::json j = job_json(data_dir, dir / "both", z, seed);
    j["teachers"] = {teacher_json("math_teacher.safetensors"), teacher_json("math_teacher_div.safetensors")};
    j["teachers"][0]["name"] = "a";
    j["teachers"][1]["name"] = "b";
    j["route"] = {{"field", "op"}, {"map", {{"div", "b"}}}, {"default", "a"}};
    const Job job = parse_job(j);
    io::write_file_atomic(dir / "both.job.json", j.dump(2) + "\n");
    teacher::Ensemble<Model> both({{"a", 1.0, &a}, {"b", 1.0, &b}}, teacher::parse_route(job.route, {"a", "b"}));
    Multi d(job, both, cpu, {.quiet = quiet});
    const auto report = d.run();
    results["a+b"] = scores(dir / "both", op_of);

    std::printf("\n%s\n", eval::render_markdown(report).c_str());
    std::printf("student exact match on the union test set (%d problems, seed %d, %lld steps each):\n", z.test, seed,
                static_cast<long long>(z.steps));
    std::printf("| student of | add | sub | mul | div | all |\n|---|---:|---:|---:|---:|---:|\n");
    for (const char* run : {"a", "b", "a+b"}) {
        auto& r = results[run];
        std::printf("| %s | %.3f | %.3f | %.3f | %.3f | %.3f |\n", run, r["add"], r["sub"], r["mul"], r["div"],
                    r["all"]);
    }
    return 0;
} catch (const distill::config_error& e) {
    std::fprintf(stderr, "multi_teacher: %s\n", e.what());
    return 2;
} catch (const std::exception& e) {
    std::fprintf(stderr, "multi_teacher: %s\n", e.what());
    return 1;
}
