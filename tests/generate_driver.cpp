// The generate stage as a process, for the tests that need one: killed with SIGKILL and restarted,
// or pointed at apps/serve through teacher::OpenAI. Not an example: the `distill` CLI is the
// user-facing way to run a stage.
//
//   generate_driver --input FILE --out DIR (--weights FILE [--max-batch N] [--slow-ms MS]
//                   | --base-url URL --model NAME [--api-key-env VAR] [--concurrency N] [--timeout S]
//                     [--retries N] [--backoff S])
//                   [--temperature T] [--top-p P] [--max-new-tokens N] [--seed S] [--top-logprobs K]
//
// Exit status: 0 done, 1 failed (reason on stderr), 2 usage.

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "distill/data/chat.hpp"
#include "distill/pipeline/generate.hpp"
#include "distill/student/transformer.hpp"
#include "distill/teacher/model.hpp"
#include "distill/teacher/openai.hpp"

namespace {

using namespace distill;
using InProcess = teacher::Model<student::Transformer, float, device::Cpu>;

// A teacher that sleeps after each answer, so a test can kill the stage mid-run reliably.
struct Slowed {
    InProcess& inner;
    int ms;
    static constexpr auto provides = InProcess::provides;
    std::string tokenizer_id() const { return inner.tokenizer_id(); }
    std::string fingerprint() const { return inner.fingerprint(); }
    std::string name() const { return inner.name(); }
    int batch_size() const { return inner.batch_size(); }
    int vocab_size() const { return inner.vocab_size(); }
    void generate(std::span<const teacher::Request> q, const teacher::Sampling& s, const teacher::response_sink& sink) {
        inner.generate(q, s, [&](std::size_t i, teacher::Response&& r) {
            sink(i, std::move(r));
            std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        });
    }
};

}  // namespace

int main(int argc, char** argv) try {
    std::signal(SIGPIPE, SIG_IGN);
    std::string input, out, weights, base_url, model, key_env;
    int max_batch = 4, slow_ms = 0, concurrency = 4, retries = 8;
    double timeout = 5, backoff = 0.05;
    teacher::Sampling s;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) {
            std::fprintf(stderr, "generate_driver: %s needs a value\n", a.c_str());
            return 2;
        }
        const std::string v = argv[++i];
        if (a == "--input")
            input = v;
        else if (a == "--out")
            out = v;
        else if (a == "--weights")
            weights = v;
        else if (a == "--max-batch")
            max_batch = std::stoi(v);
        else if (a == "--slow-ms")
            slow_ms = std::stoi(v);
        else if (a == "--base-url")
            base_url = v;
        else if (a == "--model")
            model = v;
        else if (a == "--api-key-env")
            key_env = v;
        else if (a == "--concurrency")
            concurrency = std::stoi(v);
        else if (a == "--timeout")
            timeout = std::stod(v);
        else if (a == "--retries")
            retries = std::stoi(v);
        else if (a == "--backoff")
            backoff = std::stod(v);
        else if (a == "--temperature")
            s.temperature = std::stod(v);
        else if (a == "--top-p")
            s.top_p = std::stod(v);
        else if (a == "--max-new-tokens")
            s.max_new_tokens = std::stoi(v);
        else if (a == "--seed")
            s.seed = std::stoull(v);
        else if (a == "--top-logprobs")
            s.top_logprobs = std::stoi(v);
        else {
            std::fprintf(stderr, "generate_driver: unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    const auto data = data::read_examples(input);
    const GenerateConfig cfg{.output_dir = out, .keep_truncated = true, .progress = true};
    GenerateReport report;
    if (!weights.empty()) {
        InProcess inner(teacher::ModelConfig{.weights = weights, .max_batch = max_batch}, device::Cpu(1));
        Slowed slowed{inner, slow_ms};
        report = generate(slowed, data, s, cfg);
    } else {
        teacher::OpenAI<data::ByteTokenizer> api({.base_url = base_url,
                                                  .model = model,
                                                  .api_key_env = key_env,
                                                  .tokenizer = "byte-v1",
                                                  .concurrency = concurrency,
                                                  .request_timeout_s = timeout,
                                                  .connect_timeout_s = timeout,
                                                  .max_retries = retries,
                                                  .backoff_initial_s = backoff,
                                                  .backoff_max_s = 20 * backoff});
        report = generate(api, data, s, cfg);
        const auto st = api.stats();
        std::printf(
            "http: attempts %llu retries %llu timeouts %llu connection_errors %llu rate_limited %llu server_errors "
            "%llu "
            "malformed %llu failed %llu\n",
            (unsigned long long)st.attempts, (unsigned long long)st.retries, (unsigned long long)st.timeouts,
            (unsigned long long)st.connection_errors, (unsigned long long)st.rate_limited,
            (unsigned long long)st.server_errors, (unsigned long long)st.malformed, (unsigned long long)st.failed);
    }
    std::printf("generated: accepted %llu requested %llu failed %llu already_done %llu\n",
                (unsigned long long)report.accepted, (unsigned long long)report.requested,
                (unsigned long long)report.failed, (unsigned long long)report.already_done);
    return report.complete() ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "generate_driver: %s\n", e.what());
    return 1;
}
