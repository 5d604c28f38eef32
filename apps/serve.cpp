// An OpenAI-compatible server over an in-process model: POST /v1/chat/completions (with logprobs
// and top_logprobs), POST /v1/completions (legacy text completions: the prompt as raw text, no chat
// template; legacy logprobs), both with n choices and "stream": true (server-sent events written as
// tokens are generated), GET /v1/models, GET /health. Serve a distilled student with it, or use it as
// a real HTTP peer in tests: it binds 127.0.0.1 unless told otherwise, can require a bearer token read
// from an environment variable, and has a fault mode that answers a given fraction of requests with
// 429 + Retry-After, 500, a stalled connection, a dropped connection or malformed JSON.
//
// Streaming: a text piece is sent once it is final (a character spanning tokens waits for its last
// byte; text that may still begin a stop sequence waits), so the pieces join into the non-streamed
// text; a client that hangs up stops its generation. n (at most 16 completions a request): choice j
// is seeded by the seed and j, so choice 0 is the n = 1 answer; --max-batch generates up to that many
// choices together (default 1: one at a time).
//
//   serve --weights model.safetensors [--host 127.0.0.1] [--port 8080 | 0 for any free port]
//         [--port-file PATH] [--model NAME] [--api-key-env VAR] [--threads N]
//         [--max-body-bytes 1048576] [--max-concurrency 16] [--max-batch 1] [--http-threads 32]
//         [--read-timeout 10]
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
// waiting for or using the model (a stream until its last event) 503 with Retry-After; connections
// are served by --http-threads threads and one idle or slow for --read-timeout seconds is closed, so
// idle connections cannot hold the server. A handler that throws is a generic 500 (its message goes to the log, not the
// client).

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <pthread.h>
#include <sys/socket.h>

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
    int max_concurrency = 16, http_threads = 32, max_batch = 1;
    double read_timeout = 10;
    std::vector<std::string> faults = {"429", "500", "stall", "drop", "malformed"};
    bool quiet = false;
};

[[noreturn]] void usage(const std::string& why) {
    std::fprintf(
        stderr,
        "serve: %s\nusage: serve --weights FILE [--host 127.0.0.1] [--port 8080] [--port-file PATH] [--model NAME]\n"
        "             [--api-key-env VAR] [--threads N] [--max-body-bytes N] [--max-concurrency N]\n"
        "             [--max-batch N] [--http-threads N] [--read-timeout S] [--fault-rate F] [--faults "
        "429,500,stall,drop,malformed]\n"
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
        else if (a == "--max-batch")
            o.max_batch = int(number(1, 16));
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
// `release` gives the slot back early (a stream, once its last event is written: before the server's
// teardown of the response, so a client that sends its next request on the end of a stream finds it).
struct Admission {
    std::atomic<int>& in_flight;
    bool admitted, released = false;
    Admission(std::atomic<int>& n, int limit) : in_flight(n), admitted(++n <= limit) {}
    void release() {
        if (!std::exchange(released, true)) --in_flight;
    }
    ~Admission() { release(); }
    Admission(const Admission&) = delete;
    Admission& operator=(const Admission&) = delete;
};

// Constant-time comparison, so response timing does not reveal how much of a guessed key is right.
bool same(const std::string& a, const std::string& b) {
    unsigned char diff = a.size() != b.size();
    for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
    return diff == 0;
}

constexpr int max_choices = 16;  // completions one request may ask for (n, times the prompts of /v1/completions)

// The sampling settings of a request body (log-probabilities aside); throws distill::error naming the field.
teacher::Sampling sampling_of(const nlohmann::json& body) {
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
    return s;
}

// A completion request, parsed and checked: one prompt per choice, in the order of the choices.
struct Job {
    bool chat = true;
    std::vector<teacher::Request> requests;     // chat: the conversation, once per choice
    std::vector<teacher::TokenPrompt> prompts;  // text completions: prompt p's choice j at p * n + j
    std::int64_t prompt_tokens = 0;             // usage: each distinct prompt counted once
    teacher::Sampling sampling;
    int n = 1;
    bool logprobs = false;
    bool stream = false, include_usage = false;
    std::size_t choices() const { return chat ? requests.size() : prompts.size(); }
};

// A JSON boolean field, or `fallback` when absent or null.
bool flag(const nlohmann::json& body, const char* key, bool fallback) {
    auto it = body.find(key);
    if (it == body.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) throw error(std::string("\"") + key + "\" must be true or false");
    return it->get<bool>();
}

// The request id of choice j: choice 0 has none, so that n = 1 answers as before (seed and prompt
// alone decide), and every other choice draws its own samples.
std::string choice_id(int j) {
    return j == 0 ? std::string() : "choice-" + std::to_string(j);
}

// Parses a /v1/chat/completions (`chat`) or /v1/completions body; throws distill::error naming the field.
Job parse_job(const nlohmann::json& body, bool chat, Served& model) {
    Job job;
    job.chat = chat;
    job.sampling = sampling_of(body);
    if (auto it = body.find("n"); it != body.end() && !it->is_null()) {
        if (!it->is_number_integer() || it->get<std::int64_t>() < 1 || it->get<std::int64_t>() > max_choices)
            throw error("\"n\" must be an integer from 1 to " + std::to_string(max_choices));
        job.n = it->get<int>();
    }
    job.stream = flag(body, "stream", false);
    if (auto it = body.find("stream_options"); it != body.end() && !it->is_null()) {
        if (!job.stream) throw error("\"stream_options\" is only allowed with \"stream\": true");
        if (!it->is_object()) throw error("\"stream_options\" must be an object");
        job.include_usage = flag(*it, "include_usage", false);
    }
    const int context = model.network().config().context_length;
    auto check_length = [&](std::size_t tokens, const std::string& field) {
        if (int(tokens) >= context)
            throw error("\"" + field + "\": the prompt of " + std::to_string(tokens) +
                        " tokens leaves no room for an answer in the context of " + std::to_string(context) +
                        " tokens");
    };
    if (chat) {
        if (!body.contains("messages")) throw error("missing field \"messages\"");
        teacher::Request request;
        request.messages = data::parse_example({{"messages", body["messages"]}}).prompt;
        const std::size_t tokens = model.chat_template().encode_prompt(request.messages).size();
        check_length(tokens, "messages");
        job.prompt_tokens = std::int64_t(tokens);
        job.logprobs = flag(body, "logprobs", false);
        if (auto it = body.find("top_logprobs"); it != body.end() && !it->is_null()) {
            if (!it->is_number_integer()) throw error("\"top_logprobs\" must be an integer");
            if (job.logprobs) job.sampling.top_logprobs = it->get<int>();
        }
        for (int j = 0; j < job.n; ++j) {
            request.id = choice_id(j);
            job.requests.push_back(request);
        }
    } else {
        // Legacy: "logprobs" is the number of alternatives per token (0: the chosen tokens' alone).
        if (auto it = body.find("logprobs"); it != body.end() && !it->is_null()) {
            if (!it->is_number_integer() || it->get<std::int64_t>() < 0 || it->get<std::int64_t>() > 20)
                throw error("\"logprobs\" must be an integer from 0 to 20 (alternatives per token)");
            job.logprobs = true;
            job.sampling.top_logprobs = it->get<int>();
        }
        if (flag(body, "echo", false)) throw error("\"echo\" is not supported");
        if (auto it = body.find("suffix"); it != body.end() && !it->is_null())
            throw error("\"suffix\" is not supported");
        if (auto it = body.find("best_of"); it != body.end() && !it->is_null())
            if (!it->is_number_integer() || it->get<std::int64_t>() != job.n)
                throw error("\"best_of\" is not supported (other than equal to \"n\")");
        auto it = body.find("prompt");
        if (it == body.end() || it->is_null()) throw error("missing field \"prompt\"");
        // A string, an array of strings, an array of token ids, or an array of arrays of token ids.
        std::vector<std::vector<std::int32_t>> ids;
        const int vocab = model.vocab_size();
        auto token_list = [&](const nlohmann::json& list, const std::string& where) {
            std::vector<std::int32_t> out;
            for (const auto& t : list) {
                if (!t.is_number_integer() || t.get<std::int64_t>() < 0 || t.get<std::int64_t>() >= vocab)
                    throw error("\"" + where + "\" holds a token id outside [0, " + std::to_string(vocab) + ")");
                out.push_back(t.get<std::int32_t>());
            }
            return out;
        };
        const char* shape = "\"prompt\" must be a string, an array of strings or an array of token ids";
        if (it->is_string()) {
            ids.push_back(model.chat_template().encode_text(it->get<std::string>()));
        } else if (it->is_array() && !it->empty() && (*it)[0].is_number()) {
            ids.push_back(token_list(*it, "prompt"));
        } else if (it->is_array()) {
            if (it->empty()) throw error("\"prompt\" must not be an empty array");
            for (std::size_t p = 0; p < it->size(); ++p) {
                const auto& x = (*it)[p];
                const std::string where = "prompt[" + std::to_string(p) + "]";
                if (x.is_string())
                    ids.push_back(model.chat_template().encode_text(x.get<std::string>()));
                else if (x.is_array())
                    ids.push_back(token_list(x, where));
                else
                    throw error(shape);
            }
        } else {
            throw error(shape);
        }
        if (ids.size() * std::size_t(job.n) > std::size_t(max_choices))
            throw error("\"prompt\" × \"n\" asks for " + std::to_string(ids.size() * std::size_t(job.n)) +
                        " completions, at most " + std::to_string(max_choices));
        for (std::size_t p = 0; p < ids.size(); ++p) {
            const std::string where =
                it->is_string() || (*it)[0].is_number() ? "prompt" : "prompt[" + std::to_string(p) + "]";
            if (ids[p].empty()) throw error("\"" + where + "\" is empty");
            check_length(ids[p].size(), where);
            job.prompt_tokens += std::int64_t(ids[p].size());
            for (int j = 0; j < job.n; ++j) job.prompts.push_back({choice_id(j), ids[p]});
        }
    }
    if (job.sampling.top_logprobs > model.vocab_size()) throw error("\"top_logprobs\" exceeds the vocabulary");
    job.sampling.validate("request");
    if (job.logprobs && model.tokenizer_id() != data::ByteTokenizer::id())
        throw error("\"logprobs\" are served for byte-tokenizer models only (this model's tokenizer is " +
                    model.tokenizer_id() + ")");
    return job;
}

// Characters (code points) in valid UTF-8 `text`: Python's len() of it, what text offsets count.
std::size_t characters(std::string_view text) {
    std::size_t n = 0;
    for (unsigned char c : text) n += (c & 0xC0) != 0x80;
    return n;
}

// The legacy `logprobs` object of /v1/completions for tokens [from, to) of `r`: tokens,
// token_logprobs, top_logprobs (one {token: logprob} per token) and text_offset (characters before
// each token in the completion's text).
nlohmann::json legacy_logprobs(const Served& model, const data::ByteTokenizer& tok, const teacher::Response& r,
                               std::size_t from, std::size_t to) {
    nlohmann::json tokens = nlohmann::json::array(), lps = nlohmann::json::array(), tops = nlohmann::json::array(),
                   offsets = nlohmann::json::array();
    for (std::size_t i = from; i < to && i < r.tokens.size(); ++i) {
        tokens.push_back(teacher::openai::token_json(tok, r.tokens[i], 0)["token"]);
        lps.push_back(i < r.token_logprobs.size() ? r.token_logprobs[i] : 0.0f);
        nlohmann::json top = nlohmann::json::object();
        for (int j = 0; j < r.k; ++j) {
            const std::size_t at = i * std::size_t(r.k) + std::size_t(j);
            top[teacher::openai::token_json(tok, r.top_ids[at], 0)["token"].get<std::string>()] = r.top_logprobs[at];
        }
        tops.push_back(std::move(top));
        // Decoded as the answer is: a character spanning tokens counts from its first token on.
        offsets.push_back(characters(model.chat_template().decode(std::span(r.tokens).first(i))));
    }
    return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

nlohmann::json usage_of(const Job& job, const std::vector<teacher::Response>& answers) {
    std::int64_t completion = 0;
    for (const auto& a : answers) completion += a.usage.completion_tokens;
    return {{"prompt_tokens", job.prompt_tokens},
            {"completion_tokens", completion},
            {"total_tokens", job.prompt_tokens + completion}};
}

// The whole (non-streamed) answer to `job`: a chat.completion or a text_completion with one choice per answer.
nlohmann::json completion_body(const Job& job, const std::string& id, const std::string& model_name,
                               const Served& model, const data::ByteTokenizer& tok,
                               const std::vector<teacher::Response>& answers) {
    const auto created = std::int64_t(std::time(nullptr));
    nlohmann::json choices = nlohmann::json::array();
    for (std::size_t c = 0; c < answers.size(); ++c) {
        const auto& a = answers[c];
        if (job.chat) {
            nlohmann::json one = teacher::openai::make_completion(id, model_name, created, a, tok, job.logprobs);
            nlohmann::json choice = std::move(one["choices"][0]);
            choice["index"] = c;
            choices.push_back(std::move(choice));
        } else {
            choices.push_back(
                {{"index", c},
                 {"text", a.text},
                 {"logprobs", job.logprobs ? legacy_logprobs(model, tok, a, 0, a.tokens.size()) : nlohmann::json()},
                 {"finish_reason", std::string(teacher::finish_reason_name(a.finish))}});
        }
    }
    return {{"id", id},
            {"object", job.chat ? "chat.completion" : "text_completion"},
            {"created", created},
            {"model", model_name},
            {"choices", std::move(choices)},
            {"usage", usage_of(job, answers)}};
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
    Served model(teacher::ModelConfig{.weights = opt.weights, .max_batch = opt.max_batch}, cpu);
    // the weights never change while serving: pack the matrices once, not at every request's prefill
    model.network().pack_matrices();
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
    // Generates every choice of `job` in batches of up to --max-batch, `observe` watching each token;
    // stops between batches once `go_on` says so (the rest stay cancelled).
    auto run = [&](const Job& job, const teacher::token_observer& observe, const std::function<bool()>& go_on) {
        std::vector<teacher::Response> answers(job.choices(), teacher::Response::failure("cancelled"));
        std::lock_guard lock(model_mutex);
        const std::size_t batch = std::size_t(opt.max_batch);
        for (std::size_t first = 0; first < job.choices() && go_on(); first += batch) {
            const std::size_t count = std::min(batch, job.choices() - first);
            auto sink = [&](std::size_t i, teacher::Response&& r) { answers[first + i] = std::move(r); };
            teacher::token_observer watch;
            if (observe)
                watch = [&](std::size_t i, const teacher::Response& r, bool done) {
                    return observe(first + i, r, done);
                };
            if (job.chat)
                model.generate(std::span(job.requests).subspan(first, count), job.sampling, sink, watch);
            else
                model.generate_tokens(std::span(job.prompts).subspan(first, count), job.sampling, sink, watch);
        }
        return answers;
    };

    // POST /v1/chat/completions (`chat`) and POST /v1/completions.
    auto complete = [&](const httplib::Request& req, httplib::Response& res, bool chat) {
        const auto t0 = std::chrono::steady_clock::now();
        const std::uint64_t n = ++served;
        if (!authorized(req)) return unauthorized("request " + std::to_string(n), res);
        if (!is_json_type(req.get_header_value("Content-Type"))) {
            log("request " + std::to_string(n) + ": 415 (Content-Type " +
                loggable(req.get_header_value("Content-Type")) + ")");
            return reply(res, 415, error_body("Content-Type must be application/json", "invalid_request_error"));
        }
        // Admitted requests hold their slot while they wait for the model, stalls included; a stream
        // holds it until its last event is sent.
        auto admission = std::make_shared<Admission>(in_flight, opt.max_concurrency);
        if (!admission->admitted) {
            log("request " + std::to_string(n) + ": 503 (over --max-concurrency " +
                std::to_string(opt.max_concurrency) + ")");
            res.set_header("Retry-After", "1");
            return reply(res, 503, error_body("the server is busy; retry later", "server_error"));
        }
        nlohmann::json body = nlohmann::json::parse(req.body, nullptr, false);
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
            if (kind == "malformed") {
                // A streaming client gets a broken event where it expects a chunk.
                if (body.is_object() && body.contains("stream") && body["stream"] == true)
                    return res.set_content("data: {\"id\": \"chatcmpl-x\", \"choices\": [{\"delta\": {\"con\n\n",
                                           "text/event-stream");
                return res.set_content("{\"id\": \"chatcmpl-x\", \"choices\": [{\"message\": {\"con",
                                       "application/json");
            }
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
        if (body.is_discarded() || !body.is_object())
            return bad_request(n, res, "the request body is not a JSON object");
        auto job = std::make_shared<Job>();
        try {
            *job = parse_job(body, chat, model);
        } catch (const std::exception& e) {  // distill::error or a JSON type error
            return bad_request(n, res, e.what());
        }
        const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(++counter);

        if (!job->stream) {
            const auto answers = run(*job, {}, [] { return true; });
            for (const auto& a : answers)
                if (!a.ok()) return bad_request(n, res, a.error);
            reply(res, 200, completion_body(*job, id, opt.model, model, tokenizer, answers));
            const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
            log("request " + std::to_string(n) + ": 200, " + usage_of(*job, answers)["completion_tokens"].dump() +
                " tokens, " + std::to_string(int(ms)) + " ms");
            return;
        }

        // Server-sent events, written as tokens are generated: the provider runs once, after the
        // headers went out, and generates the whole answer inside it.
        res.set_header("Cache-Control", "no-cache");
        res.set_chunked_content_provider("text/event-stream", [&, job, admission, id, n, t0](std::size_t,
                                                                                             httplib::DataSink& sink) {
            const auto created = std::int64_t(std::time(nullptr));
            bool gone = false;  // the client hung up (or the server is stopping): stop generating
            auto send_data = [&](const std::string& data) {
                const std::string text = "data: " + data + "\n\n";
                if (!gone && !sink.write(text.data(), text.size())) gone = true;
            };
            auto send = [&](const nlohmann::json& event) { send_data(teacher::openai::dump(event)); };
            auto chunk = [&](nlohmann::json choice) {
                nlohmann::json c = {{"id", id},
                                    {"object", job->chat ? "chat.completion.chunk" : "text_completion"},
                                    {"created", created},
                                    {"model", opt.model},
                                    {"choices", nlohmann::json::array({std::move(choice)})}};
                if (job->include_usage) c["usage"] = nullptr;
                return c;
            };
            // Per choice: the text sent so far, the text's length after each token, the tokens whose
            // log-probabilities were sent, whether the role was sent.
            struct Progress {
                std::string sent;
                std::vector<std::size_t> text_end;
                std::size_t tokens_sent = 0;
                bool started = false;
            };
            std::vector<Progress> progress(job->choices());
            std::optional<double> first_token_ms;
            // One event with `delta` text and the log-probabilities of tokens [from, to).
            auto emit = [&](std::size_t c, const teacher::Response& r, const std::string& delta, std::size_t from,
                            std::size_t to, const char* finish) {
                Progress& p = progress[c];
                nlohmann::json choice = {{"index", c}};
                if (job->chat) {
                    nlohmann::json d = nlohmann::json::object();
                    if (!p.started) d["role"] = "assistant";
                    if (!delta.empty() || !p.started) d["content"] = delta;
                    choice["delta"] = std::move(d);
                    choice["logprobs"] =
                        job->logprobs && to > from
                            ? nlohmann::json{{"content", teacher::openai::logprob_content(tokenizer, r, from, to)}}
                            : nlohmann::json();
                } else {
                    choice["text"] = delta;
                    choice["logprobs"] =
                        job->logprobs && to > from ? legacy_logprobs(model, tokenizer, r, from, to) : nlohmann::json();
                }
                choice["finish_reason"] = finish ? nlohmann::json(finish) : nlohmann::json();
                p.started = true;
                p.sent += delta;
                p.tokens_sent = to;
                if (!first_token_ms && !delta.empty())
                    first_token_ms =
                        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
                send(chunk(std::move(choice)));
            };
            auto observe = [&](std::size_t c, const teacher::Response& r, bool done) {
                Progress& p = progress[c];
                p.text_end.resize(r.tokens.size());
                if (!r.tokens.empty() && !done) p.text_end.back() = r.text.size();
                if (done) {
                    if (!r.ok()) {
                        if (r.error != "cancelled") send({{"error", {{"message", r.error}, {"type", "server_error"}}}});
                        return true;
                    }
                    // The final answer: everything not sent yet, then the finish reason.
                    const std::string rest =
                        r.text.compare(0, p.sent.size(), p.sent) == 0 && r.text.size() >= p.sent.size()
                            ? r.text.substr(p.sent.size())
                            : std::string();
                    if (!rest.empty() || p.tokens_sent < r.tokens.size())
                        emit(c, r, rest, p.tokens_sent, r.tokens.size(), nullptr);
                    emit(c, r, "", r.tokens.size(), r.tokens.size(),
                         std::string(teacher::finish_reason_name(r.finish)).c_str());
                } else {
                    const std::size_t safe = teacher::openai::streamable(r.text, job->sampling.stop);
                    if (safe > p.sent.size() && r.text.compare(0, p.sent.size(), p.sent) == 0) {
                        // Log-probabilities go with the text of their tokens: those ending within it.
                        std::size_t to = p.tokens_sent;
                        while (to < r.tokens.size() && p.text_end[to] <= safe &&
                               (to == 0 ? 0 : p.text_end[to - 1]) < safe)
                            ++to;
                        emit(c, r, r.text.substr(p.sent.size(), safe - p.sent.size()), p.tokens_sent, to, nullptr);
                    }
                }
                if (!gone && (stopping || !sink.is_writable())) gone = true;
                return !gone;
            };
            std::vector<teacher::Response> answers;
            try {
                answers = run(*job, observe, [&] { return !gone && !stopping; });
            } catch (const std::exception& e) {
                log("request " + std::to_string(n) + ": stream failed (" + loggable(e.what()) + ")");
                send({{"error", {{"message", "internal server error"}, {"type", "server_error"}}}});
                gone = true;
            }
            if (gone) {
                std::size_t tokens = 0;
                for (const auto& p : progress) tokens += p.text_end.size();
                log("request " + std::to_string(n) + ": stream ended early after " + std::to_string(tokens) +
                    " tokens (client gone or server stopping)");
                return false;
            }
            if (job->include_usage) {
                nlohmann::json last = chunk(nullptr);
                last["choices"] = nlohmann::json::array();
                last["usage"] = usage_of(*job, answers);
                send(last);
            }
            send_data("[DONE]");
            admission->release();
            if (gone) {
                log("request " + std::to_string(n) + ": stream answered, the client gone before its end");
                return false;
            }
            sink.done();
            const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
            log("request " + std::to_string(n) + ": 200 stream, " +
                usage_of(*job, answers)["completion_tokens"].dump() + " tokens, first token " +
                (first_token_ms ? std::to_string(int(*first_token_ms)) + " ms" : "none") + ", " +
                std::to_string(int(ms)) + " ms");
            return true;
        });
    };
    server.Post("/v1/chat/completions",
                [&](const httplib::Request& req, httplib::Response& res) { complete(req, res, true); });
    server.Post("/v1/completions",
                [&](const httplib::Request& req, httplib::Response& res) { complete(req, res, false); });

    // cpp-httplib's compiled library listens with a backlog of 5: a sixth client connecting at once
    // waits for its SYN's retransmission (1 s). The listening socket is remembered here and listen()
    // called again after binding, which raises a listening socket's backlog (Linux, BSD).
    int listen_socket = -1;
    server.set_socket_options([&](int sock) {
        httplib::default_socket_options(sock);
        listen_socket = sock;
    });
    int port = opt.port;
    if (port == 0) {
        port = server.bind_to_any_port(opt.host);
        if (port < 0) throw error("cannot bind " + opt.host + " to any port");
    } else if (!server.bind_to_port(opt.host, port)) {
        throw error("cannot bind " + opt.host + ":" + std::to_string(port) + " (in use?)");
    }
    if (listen_socket >= 0 && ::listen(listen_socket, SOMAXCONN) != 0)
        throw error(std::string("listen: ") + std::strerror(errno));
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
