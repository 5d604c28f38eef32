// An OpenAI-compatible server over an in-process model: POST /v1/chat/completions (with logprobs
// and top_logprobs), GET /v1/models, GET /health. Serve a distilled student with it, or use it as a
// real HTTP peer in tests: it binds 127.0.0.1 unless told otherwise, can require a bearer token read
// from an environment variable, and has a fault mode that answers a given fraction of requests with
// 429 + Retry-After, 500, a stalled connection, a dropped connection or malformed JSON.
//
//   serve --weights model.safetensors [--host 127.0.0.1] [--port 8080 | 0 for any free port]
//         [--port-file PATH] [--model NAME] [--api-key-env VAR] [--threads N]
//         [--max-body-bytes 1048576] [--max-concurrency 16] [--http-threads 32] [--read-timeout 10]
//         [--fault-rate 0.3] [--faults 429,500,stall,drop,malformed] [--stall-ms 2000] [--retry-after 1]
//         [--quiet]
//
// The key is never taken from the command line (other users can read it there): --api-key-env
// names the environment variable that holds it. It is never logged. SIGINT/SIGTERM stop the server,
// which then prints how many requests it served and faulted.
//
// Exposure limits (tests/http-teacher.cpp abuses a running server with all of these on loopback):
// a request body over --max-body-bytes is answered 413; a completion request that is not
// `Content-Type: application/json` 415; malformed JSON or fields 400; a missing or wrong bearer token
// 401 (for /v1/models too; /health stays open); more than --max-concurrency completion requests
// waiting for or using the model 503 with Retry-After; connections are served by --http-threads
// threads and one idle or slow for --read-timeout seconds is closed, so idle connections cannot hold
// the server. A handler that throws is a generic 500 (its message goes to the log, not the client).

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>

// distill first: httplib.h's <resolv.h> defines a `_res` macro that breaks Eigen parsed after it.
#include <distill/data/chat.hpp>
#include <distill/io/durable.hpp>
#include <distill/student/transformer.hpp>
#include <distill/teacher/model.hpp>
#include <distill/teacher/openai_format.hpp>

#include <httplib.h>
#include <nlohmann/json.hpp>

namespace {

using namespace distill;
using Served = teacher::Model<student::Transformer, float, device::Cpu>;

struct Options {
    std::string weights, host = "127.0.0.1", port_file, model, api_key_env;
    int port = 8080, threads = 0;
    double fault_rate = 0, retry_after = 1;
    int stall_ms = 2000;
    std::size_t max_body_bytes = 1u << 20;
    int max_concurrency = 16, http_threads = 32;
    double read_timeout = 10;
    std::vector<std::string> faults = {"429", "500", "stall", "drop", "malformed"};
    bool quiet = false;
};

[[noreturn]] void usage(const std::string& why) {
    std::fprintf(
        stderr,
        "serve: %s\nusage: serve --weights FILE [--host 127.0.0.1] [--port 8080] [--port-file PATH] [--model NAME]\n"
        "             [--api-key-env VAR] [--threads N] [--max-body-bytes N] [--max-concurrency N]\n"
        "             [--http-threads N] [--read-timeout S] [--fault-rate F] [--faults 429,500,stall,drop,malformed]\n"
        "             [--stall-ms MS] [--retry-after S] [--quiet]\n",
        why.c_str());
    std::exit(2);
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage(a + " needs a value");
            return argv[++i];
        };
        auto number = [&](double lo, double hi) {
            const std::string v = value();
            char* end = nullptr;
            const double x = std::strtod(v.c_str(), &end);
            if (end == v.c_str() || *end || !(x >= lo && x <= hi))
                usage(a + " expects a number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v);
            return x;
        };
        if (a == "--weights")
            o.weights = value();
        else if (a == "--host")
            o.host = value();
        else if (a == "--port")
            o.port = int(number(0, 65535));
        else if (a == "--port-file")
            o.port_file = value();
        else if (a == "--model")
            o.model = value();
        else if (a == "--api-key-env")
            o.api_key_env = value();
        else if (a == "--threads")
            o.threads = int(number(1, 4096));
        else if (a == "--max-body-bytes")
            o.max_body_bytes = std::size_t(number(64, 1u << 30));
        else if (a == "--max-concurrency")
            o.max_concurrency = int(number(1, 4096));
        else if (a == "--http-threads")
            o.http_threads = int(number(1, 1024));
        else if (a == "--read-timeout")
            o.read_timeout = number(0.1, 3600);
        else if (a == "--fault-rate")
            o.fault_rate = number(0, 1);
        else if (a == "--stall-ms")
            o.stall_ms = int(number(0, 3.6e6));
        else if (a == "--retry-after")
            o.retry_after = number(0, 3600);
        else if (a == "--quiet")
            o.quiet = true;
        else if (a == "--faults") {
            o.faults.clear();
            std::string list = value();
            for (std::size_t at = 0; at <= list.size();) {
                const std::size_t comma = std::min(list.find(',', at), list.size());
                const std::string f = list.substr(at, comma - at);
                if (f != "429" && f != "500" && f != "stall" && f != "drop" && f != "malformed")
                    usage("unknown fault \"" + f + "\"");
                o.faults.push_back(f);
                at = comma + 1;
            }
        } else if (a == "--help" || a == "-h")
            usage("an OpenAI-compatible server over a distill model");
        else
            usage("unknown argument " + a);
    }
    if (o.weights.empty()) usage("--weights is required");
    if (o.model.empty()) o.model = std::filesystem::path(o.weights).stem().string();
    return o;
}

nlohmann::json error_body(const std::string& message, const std::string& type) {
    return {{"error", {{"message", message}, {"type", type}}}};
}

void reply(httplib::Response& res, int status, const nlohmann::json& body) {
    res.status = status;
    res.set_content(teacher::openai::dump(body), "application/json");
}

// A line fit for the log: control characters (a client's text can hold newlines, escape sequences)
// shown as '?', and at most 300 bytes, so a request cannot forge or flood log lines.
std::string loggable(const std::string& text) {
    std::string out = text.substr(0, 300);
    for (char& c : out)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    return text.size() > 300 ? out + "..." : out;
}

// Whether a Content-Type names JSON: "application/json", any case, parameters (charset) allowed.
bool is_json_type(std::string type) {
    for (char& c : type) c = char(std::tolower(static_cast<unsigned char>(c)));
    type = type.substr(0, type.find(';'));
    while (!type.empty() && type.back() == ' ') type.pop_back();
    return type == "application/json";
}

// Counts a request in while it waits for or uses the model; `admitted` is false past the limit.
struct Admission {
    std::atomic<int>& in_flight;
    bool admitted;
    Admission(std::atomic<int>& n, int limit) : in_flight(n), admitted(++n <= limit) {}
    ~Admission() { --in_flight; }
    Admission(const Admission&) = delete;
    Admission& operator=(const Admission&) = delete;
};

// Constant-time comparison, so response timing does not reveal how much of a guessed key is right.
bool same(const std::string& a, const std::string& b) {
    unsigned char diff = a.size() != b.size();
    for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
    return diff == 0;
}

// The sampling settings of a request body; throws distill::error naming the field.
teacher::Sampling sampling_of(const nlohmann::json& body, int vocab) {
    teacher::Sampling s;
    auto number = [&](const char* key, double& out) {
        if (auto it = body.find(key); it != body.end() && !it->is_null()) {
            if (!it->is_number()) throw error(std::string("\"") + key + "\" must be a number");
            out = it->get<double>();
        }
    };
    auto integer = [&](const char* key, int& out) {
        if (auto it = body.find(key); it != body.end() && !it->is_null()) {
            if (!it->is_number_integer()) throw error(std::string("\"") + key + "\" must be an integer");
            out = it->get<int>();
        }
    };
    s.temperature = 1.0;  // the API's defaults, not distill's
    s.top_p = 1.0;
    s.max_new_tokens = 256;
    number("temperature", s.temperature);
    number("top_p", s.top_p);
    integer("top_k", s.top_k);
    integer("max_tokens", s.max_new_tokens);
    integer("max_completion_tokens", s.max_new_tokens);
    if (auto it = body.find("seed"); it != body.end() && !it->is_null()) {
        if (!it->is_number_integer()) throw error("\"seed\" must be an integer");
        s.seed = it->is_number_unsigned() ? it->get<std::uint64_t>() : std::uint64_t(it->get<std::int64_t>());
    }
    if (auto it = body.find("stop"); it != body.end() && !it->is_null()) {
        if (it->is_string())
            s.stop = {it->get<std::string>()};
        else if (it->is_array()) {
            for (const auto& x : *it) {
                if (!x.is_string()) throw error("\"stop\" must be a string or an array of strings");
                s.stop.push_back(x.get<std::string>());
            }
        } else
            throw error("\"stop\" must be a string or an array of strings");
    }
    const bool logprobs = body.value("logprobs", false);
    integer("top_logprobs", s.top_logprobs);
    if (!logprobs) s.top_logprobs = 0;
    if (s.top_logprobs > vocab) throw error("\"top_logprobs\" exceeds the vocabulary");
    if (body.value("n", 1) != 1) throw error("\"n\" must be 1");
    if (body.value("stream", false)) throw error("\"stream\": streaming is not supported");
    s.validate("request");
    return s;
}

std::atomic<bool> stopping{false};

}  // namespace

int main(int argc, char** argv) try {
    const Options opt = parse(argc, argv);
    std::string key;
    if (!opt.api_key_env.empty()) {
        const char* k = std::getenv(opt.api_key_env.c_str());
        if (!k || !*k) usage("the environment variable " + opt.api_key_env + " (--api-key-env) is not set or empty");
        key = k;
    }
    // Block the stop signals in every thread; one thread waits for them and stops the server.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);  // a client that hung up must not kill the server

    const device::Cpu cpu = opt.threads > 0 ? device::Cpu(opt.threads) : device::Cpu();
    Served model(teacher::ModelConfig{.weights = opt.weights, .max_batch = 1}, cpu);
    const int vocab = model.vocab_size();
    std::mutex model_mutex;  // one generation at a time; requests queue in the server's threads
    const data::ByteTokenizer tokenizer;

    std::atomic<std::uint64_t> served{0}, faulted{0}, counter{0};
    std::mutex log_mutex;
    auto log = [&](const std::string& line) {
        if (opt.quiet) return;
        std::lock_guard lock(log_mutex);
        std::fprintf(stderr, "serve: %s\n", line.c_str());
    };

    auto bad_request = [&](std::uint64_t n, httplib::Response& res, const std::string& why) {
        log("request " + std::to_string(n) + ": 400 (" + loggable(why) + ")");
        reply(res, 400, error_body(why, "invalid_request_error"));
    };
    auto authorized = [&](const httplib::Request& req) {
        return key.empty() || same(req.get_header_value("Authorization"), "Bearer " + key);
    };
    auto unauthorized = [&](const std::string& what, httplib::Response& res) {
        log(what + ": 401 (missing or wrong API key)");
        reply(res, 401, error_body("invalid or missing API key", "invalid_request_error"));
    };
    std::atomic<int> in_flight{0};

    httplib::Server server;
    const int http_threads = opt.http_threads;
    server.new_task_queue = [http_threads] { return new httplib::ThreadPool(std::size_t(http_threads)); };
    server.set_payload_max_length(opt.max_body_bytes);
    const auto timeout = std::chrono::microseconds(std::int64_t(opt.read_timeout * 1e6));
    server.set_read_timeout(timeout);
    server.set_write_timeout(timeout);
    server.set_keep_alive_timeout(std::max<time_t>(1, time_t(opt.read_timeout)));
    server.set_keep_alive_max_count(100);
    // A handler that throws: a generic 500; the message goes to the log only (it may name files).
    server.set_exception_handler([&](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
            std::rethrow_exception(ep);
        } catch (const std::exception& e) {
            what = e.what();
        } catch (...) {
        }
        log(req.method + " " + loggable(req.path) + ": 500 (" + loggable(what) + ")");
        reply(res, 500, error_body("internal server error", "server_error"));
    });
    // Errors httplib answers itself (413 over the size limit, 400 unparsable, 404): an OpenAI error body.
    server.set_error_handler([&](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return;
        log(req.method + " " + loggable(req.path) + ": " + std::to_string(res.status));
        const std::string message =
            res.status == 413   ? "request body over the limit of " + std::to_string(opt.max_body_bytes) + " bytes"
            : res.status == 404 ? "no such endpoint"
                                : "bad request";
        reply(res, res.status, error_body(message, "invalid_request_error"));
    });

    server.Get("/health",
               [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });
    server.Get("/v1/models", [&](const httplib::Request& req, httplib::Response& res) {
        if (!authorized(req)) return unauthorized("GET /v1/models", res);
        reply(res, 200,
              {{"object", "list"}, {"data", {{{"id", opt.model}, {"object", "model"}, {"owned_by", "distill"}}}}});
    });
    server.Post("/v1/chat/completions", [&](const httplib::Request& req, httplib::Response& res) {
        const auto t0 = std::chrono::steady_clock::now();
        const std::uint64_t n = ++served;
        if (!authorized(req)) return unauthorized("request " + std::to_string(n), res);
        if (!is_json_type(req.get_header_value("Content-Type"))) {
            log("request " + std::to_string(n) + ": 415 (Content-Type " +
                loggable(req.get_header_value("Content-Type")) + ")");
            return reply(res, 415, error_body("Content-Type must be application/json", "invalid_request_error"));
        }
        // Admitted requests hold their slot while they wait for the model, stalls included.
        const Admission admission(in_flight, opt.max_concurrency);
        if (!admission.admitted) {
            log("request " + std::to_string(n) + ": 503 (over --max-concurrency " +
                std::to_string(opt.max_concurrency) + ")");
            res.set_header("Retry-After", "1");
            return reply(res, 503, error_body("the server is busy; retry later", "server_error"));
        }
        // Faults: exactly floor(n * rate) of the first n requests, the kinds taking turns.
        if (opt.fault_rate > 0 && !opt.faults.empty() &&
            std::uint64_t(double(n) * opt.fault_rate) > std::uint64_t(double(n - 1) * opt.fault_rate)) {
            const std::string kind = opt.faults[(faulted++) % opt.faults.size()];
            log("request " + std::to_string(n) + ": fault " + kind);
            if (kind == "429") {
                char ra[32];
                std::snprintf(ra, sizeof ra, "%g", opt.retry_after);
                res.set_header("Retry-After", ra);
                return reply(res, 429, error_body("rate limit reached (injected fault)", "rate_limit_error"));
            }
            if (kind == "500") return reply(res, 500, error_body("internal error (injected fault)", "server_error"));
            if (kind == "malformed")
                return res.set_content("{\"id\": \"chatcmpl-x\", \"choices\": [{\"message\": {\"con",
                                       "application/json");
            if (kind == "drop") {
                // Promise a body, send a piece, then hang up: the client sees the connection drop mid-response.
                res.set_content_provider(1000, "application/json",
                                         [](std::size_t, std::size_t, httplib::DataSink& sink) {
                                             sink.write("{\"id\": \"chatcmpl-", 17);
                                             return false;
                                         });
                return;
            }
            // stall: hold the connection longer than a client should wait, then answer late.
            const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(opt.stall_ms);
            while (!stopping && std::chrono::steady_clock::now() < until)
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        nlohmann::json body = nlohmann::json::parse(req.body, nullptr, false);
        if (body.is_discarded() || !body.is_object())
            return bad_request(n, res, "the request body is not a JSON object");
        teacher::Request request;
        teacher::Sampling sampling;
        bool logprobs = false;
        try {
            if (!body.contains("messages")) throw error("missing field \"messages\"");
            request.messages = data::parse_example({{"messages", body["messages"]}}).prompt;
            sampling = sampling_of(body, vocab);
            logprobs = body.value("logprobs", false);
            if (logprobs && model.tokenizer_id() != data::ByteTokenizer::id())
                throw error("\"logprobs\" are served for byte-tokenizer models only (this model's tokenizer is " +
                            model.tokenizer_id() + ")");
        } catch (const std::exception& e) {  // distill::error or a JSON type error
            return bad_request(n, res, e.what());
        }
        teacher::Response answer;
        {
            std::lock_guard lock(model_mutex);
            // The request id is empty so the answer depends on the seed and messages alone.
            answer = generate_all(model, std::span<const teacher::Request>(&request, 1), sampling)[0];
        }
        if (!answer.ok()) return bad_request(n, res, answer.error);
        const auto id = "chatcmpl-" + std::to_string(++counter);
        reply(res, 200,
              teacher::openai::make_completion(id, opt.model, std::int64_t(std::time(nullptr)), answer, tokenizer,
                                               logprobs));
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        log("request " + std::to_string(n) + ": 200, " + std::to_string(answer.tokens.size()) + " tokens, " +
            std::to_string(int(ms)) + " ms");
    });

    int port = opt.port;
    if (port == 0) {
        port = server.bind_to_any_port(opt.host);
        if (port < 0) throw error("cannot bind " + opt.host + " to any port");
    } else if (!server.bind_to_port(opt.host, port)) {
        throw error("cannot bind " + opt.host + ":" + std::to_string(port) + " (in use?)");
    }
    if (!opt.port_file.empty()) io::write_file_atomic(opt.port_file, std::to_string(port) + "\n");
    std::printf("serve: listening on http://%s:%d/v1 (model %s, %s)%s\n", opt.host.c_str(), port, opt.model.c_str(),
                model.name().c_str(), opt.fault_rate > 0 ? " with injected faults" : "");
    std::fflush(stdout);

    std::thread waiter([&] {
        int sig = 0;
        sigwait(&stop_signals, &sig);
        stopping = true;
        server.stop();
    });
    const bool ok = server.listen_after_bind();
    if (!stopping) {  // listen failed on its own: wake the waiter so it can be joined
        stopping = true;
        pthread_kill(waiter.native_handle(), SIGTERM);
    }
    waiter.join();
    const std::uint64_t total = served, bad = faulted;
    std::fprintf(stderr, "serve: stopped after %llu requests, %llu faulted (%.1f%%)\n", (unsigned long long)total,
                 (unsigned long long)bad, total ? 100.0 * double(bad) / double(total) : 0.0);
    return ok || stopping ? 0 : 1;
} catch (const distill::error& e) {
    std::fprintf(stderr, "serve: %s\n", e.what());
    return 1;
}
