// A Distiller composed by a user: library policies for the student, the loss, the optimizer and the
// device, and a teacher of the user's own — here a rule-based calculator that answers the built-in
// arithmetic word problems exactly (in real use: a legacy system, a search engine, a human-labeled
// file). It satisfies `distill::teacher_source` by having what the concept asks for (provides,
// fingerprint, name, generate); no base class, no registration.
//
// A text-only teacher gives answers but no logits, so the loss is sequence-level: `loss::HardCE` on
// the teacher's answers. Asking for more fails at compile time with a message that names the term:
//   using Bad = distill::Distiller<my::Calculator, ..., distill::loss::SoftKL, ...>;
//   error: static assertion failed: Loss: distill::loss::SoftKL needs logits, which the teacher does not provide
//
//   custom_distiller [--out DIR] [--steps N]

#include <cstdio>
#include <cstdlib>
#include <regex>
#include <string>

#include <boost/hana/set.hpp>

#include <distill/distill.hpp>

namespace my {

/// Answers "Ann has 7 pens and gets 5 more. ..." with "7+5=12. The answer is 12.".
class Calculator {
public:
    static constexpr auto provides = boost::hana::make_set(distill::signal::tokens);
    static constexpr bool batch_invariant = true;  // each answer depends on its prompt alone

    std::string fingerprint() const { return "calculator-v1"; }
    std::string name() const { return "calculator"; }

    void generate(std::span<const distill::teacher::Request> requests, const distill::teacher::Sampling&,
                  const distill::teacher::response_sink& sink) {
        static const std::regex add(R"((\d+) \w+ and gets (\d+) more)"), sub(R"((\d+) \w+ and gives away (\d+))"),
            mul(R"(buys (\d+) bags of (\d+))");
        for (std::size_t i = 0; i < requests.size(); ++i) {
            const std::string& q = requests[i].messages.back().content;
            std::smatch m;
            long a = 0, b = 0, r = 0;
            char op = 0;
            if (std::regex_search(q, m, add))
                op = '+';
            else if (std::regex_search(q, m, sub))
                op = '-';
            else if (std::regex_search(q, m, mul))
                op = '*';
            if (!op) {
                sink(i, distill::teacher::Response::failure("not an arithmetic problem the calculator knows"));
                continue;
            }
            a = std::stol(m[1]);
            b = std::stol(m[2]);
            r = op == '+' ? a + b : op == '-' ? a - b : a * b;
            distill::teacher::Response resp;
            resp.text = std::to_string(a) + op + std::to_string(b) + "=" + std::to_string(r) + ". The answer is " +
                        std::to_string(r) + ".";
            sink(i, std::move(resp));
        }
    }
};

}  // namespace my

static_assert(distill::teacher_source<my::Calculator>);

int main(int argc, char** argv) try {
    using namespace distill;
    std::string out = "out/custom_distiller";
    long steps = 300;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--out" && i + 1 < argc)
            out = argv[++i];
        else if (a == "--steps" && i + 1 < argc)
            steps = std::atol(argv[++i]);
        else {
            std::fprintf(stderr, "usage: custom_distiller [--out DIR] [--steps N]\n");
            return 2;
        }
    }
    // the user's composition: their teacher, the library's student, loss, optimizer and device
    using MyDistiller = Distiller<my::Calculator, student::Transformer, loss::HardCE, optim::AdamW, device::Cpu>;

    // unlabeled prompts (the calculator answers them) and a labeled test set
    std::filesystem::create_directories(out);
    const auto problems = data::make_math_problems(7, 700);
    std::string train, test;
    for (std::size_t i = 0; i < problems.size(); ++i) {
        nlohmann::json j = {{"prompt", problems[i].question}};
        if (i >= 600) j["completion"] = problems[i].solution;
        (i < 600 ? train : test) += j.dump() + "\n";
    }
    io::write_file_atomic(out + "/train.jsonl", train);
    io::write_file_atomic(out + "/test.jsonl", test);

    const Job job = parse_job({
        {"teacher", {{"kind", "custom"}}},  // built here, in code
        {"student",
         {{"vocab_size", 263},
          {"context_length", 128},
          {"d_model", 64},
          {"n_layers", 2},
          {"n_heads", 4},
          {"d_ff", 256}}},
        {"training_data", out + "/train.jsonl"},
        {"test_data", out + "/test.jsonl"},
        {"task_type", "math"},
        {"hyperparameters", {{"learning_rate", 3e-3}, {"batch_size", 32}, {"max_steps", steps}, {"warmup", 10}}},
        {"loss", {{"hard_ce", {{"targets", "teacher"}}}}},
        {"baseline", {{"enabled", false}}},  // every prompt is answered: no labeled subset to compare with
        {"evaluation", {{"latency_samples", 8}}},
        {"output_dir", out},
    });
    my::Calculator calculator;
    MyDistiller distiller(job, calculator);
    const auto report = distiller.run();
    const double em = report["models"]["student"]["metrics"]["exact_match"];
    std::printf("%s\nstudent exact match %.3f after %ld steps on the calculator's answers\n",
                eval::render_markdown(report).c_str(), em, steps);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "custom_distiller: %s\n", e.what());
    return 1;
}
