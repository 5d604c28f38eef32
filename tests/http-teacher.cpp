// Process-level tests of the teacher pipeline: apps/serve on 127.0.0.1 with an ephemeral port
// as a real HTTP peer, the generate stage (tests/generate_driver.cpp) through teacher::OpenAI with
// at least 30% of requests faulted, kill -9 of the stage and a restart, and a stale fingerprint
// refused; and apps/serve itself under bounded abuse over raw sockets (malformed requests and
// HTTP, huge bodies, wrong content types, missing auth, idle and concurrent connections). Each
// child's output goes to a log file that is checked for the API key afterwards.

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "distill/data/chat.hpp"
#include "distill/pipeline/generate.hpp"
#include "distill/teacher/model.hpp"
#include "distill/teacher/openai.hpp"
#include "distill/teacher/synthetic.hpp"
#include "teacher_fixtures.hpp"

extern char** environ;

using namespace distill;
using distill::testing::read_text;
using distill::testing::TempDir;
using distill::testing::write_text;
namespace fs = std::filesystem;

namespace {

// A child process with stdout and stderr in `log`.
struct Child {
    pid_t pid = -1;
    fs::path log;

    Child(const std::vector<std::string>& args, const std::vector<std::string>& env_extra, fs::path log_path)
        : log(std::move(log_path)) {
        std::vector<std::string> env;
        for (char** e = environ; *e; ++e) env.emplace_back(*e);
        env.insert(env.end(), env_extra.begin(), env_extra.end());
        std::vector<char*> argv, envp;
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
        envp.push_back(nullptr);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
        const int rc = posix_spawn(&pid, args[0].c_str(), &fa, nullptr, argv.data(), envp.data());
        posix_spawn_file_actions_destroy(&fa);
        REQUIRE_MESSAGE(rc == 0, "cannot start " << args[0]);
    }

    /// Exit status, or 128 + signal; kills the child and fails after `timeout_s`.
    int wait(double timeout_s = 60) {
        const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
        for (;;) {
            int status = 0;
            const pid_t r = ::waitpid(pid, &status, WNOHANG);
            if (r == pid) {
                pid = -1;
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            }
            if (std::chrono::steady_clock::now() > until) {
                ::kill(pid, SIGKILL);
                ::waitpid(pid, &status, 0);
                pid = -1;
                FAIL("child timed out; its log:\n" << read_text(log));
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
    }

    void signal(int sig) const { ::kill(pid, sig); }

    ~Child() {
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
    }
};

// Starts apps/serve on an ephemeral port and waits until it has written the port.
struct Server {
    fs::path port_file;
    std::unique_ptr<Child> child;
    int port = 0;

    Server(const TempDir& dir, const std::string& name, const fs::path& weights, const std::string& key_env,
           const std::string& key, std::vector<std::string> extra) {
        port_file = dir / (name + ".port");
        std::vector<std::string> args = {
            DISTILL_SERVE_BIN, "--weights", weights.string(), "--port", "0", "--port-file", port_file.string(),
            "--threads",       "1",         "--api-key-env",  key_env};
        args.insert(args.end(), extra.begin(), extra.end());
        child = std::make_unique<Child>(args, std::vector<std::string>{key_env + "=" + key}, dir / (name + ".log"));
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        while (!fs::exists(port_file)) {
            REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until, "serve did not start; its log:\n"
                                                                          << read_text(child->log));
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        port = std::stoi(read_text(port_file));
    }

    std::string url() const { return "http://127.0.0.1:" + std::to_string(port) + "/v1"; }

    /// Stops the server (SIGTERM) and returns its log.
    std::string stop() {
        child->signal(SIGTERM);
        CHECK(child->wait(20) == 0);
        return read_text(child->log);
    }
};

std::vector<std::string> all_files_text(const fs::path& dir) {
    std::vector<std::string> out;
    for (const auto& e : fs::recursive_directory_iterator(dir))
        if (e.is_regular_file()) out.push_back(e.path().string() + "\n" + read_text(e.path()));
    return out;
}

std::size_t lines_of(const fs::path& p) {
    if (!fs::exists(p)) return 0;
    const auto t = read_text(p);
    return std::size_t(std::count(t.begin(), t.end(), '\n'));
}

const std::vector<std::string> sampling_args = {
    "--temperature", "0.8", "--top-p", "0.95", "--max-new-tokens", "24", "--seed", "11", "--top-logprobs", "4"};

std::vector<std::string> driver_args(std::vector<std::string> head) {
    head.insert(head.begin(), DISTILL_GENERATE_DRIVER_BIN);
    head.insert(head.end(), sampling_args.begin(), sampling_args.end());
    return head;
}

// ---- raw HTTP over loopback, for the abuse test: nothing in between that could fix a request up ----

/// A connected TCP socket to 127.0.0.1:port with send and receive timeouts; closed on destruction.
struct Socket {
    int fd = -1;
    Socket(int port, double timeout_s) {
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return;
        timeval tv{};
        tv.tv_sec = static_cast<time_t>(timeout_s);
        tv.tv_usec = static_cast<suseconds_t>((timeout_s - double(tv.tv_sec)) * 1e6);
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<std::uint16_t>(port));
        ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        connected = ::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0;
    }
    ~Socket() {
        if (fd >= 0) ::close(fd);
    }
    bool connected = false;  // no REQUIRE here: clients run on threads of their own
    Socket(const Socket&) = delete;
    Socket& operator=(const Socket&) = delete;

    /// Sends what it can (the server may close early, e.g. after a 413); no SIGPIPE.
    void send(const std::string& bytes) const {
        for (std::size_t done = 0; done < bytes.size();) {
            const ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
            if (n <= 0) return;
            done += std::size_t(n);
        }
    }
    /// Everything until the server closes or the timeout passes.
    std::string receive() const {
        std::string out;
        char buf[4096];
        for (;;) {
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) return out;
            out.append(buf, std::size_t(n));
        }
    }
};

struct HttpReply {
    int status = 0;  ///< 0: the connection closed without a response; -1: no connection
    std::string text;
};

/// Sends `request` as is on a fresh connection and reads until the server closes it (requests say
/// `Connection: close`; for the others, --read-timeout or the keep-alive timeout closes it). No
/// half-close: httplib takes a half-closed connection for a closed one and drops the request.
HttpReply raw_http(int port, const std::string& request, double timeout_s = 20) {
    Socket s(port, timeout_s);
    if (!s.connected) return {-1, "cannot connect"};
    s.send(request);
    HttpReply r;
    r.text = s.receive();
    if (r.text.starts_with("HTTP/1.1 ") && r.text.size() >= 12) r.status = std::atoi(r.text.substr(9, 3).c_str());
    return r;
}

/// A POST of `body` to an endpoint (chat completions by default), with optional Authorization and Content-Type.
std::string post_request(const std::string& body, const std::string& key, const std::string& type = "application/json",
                         const std::string& path = "/v1/chat/completions") {
    std::string r = "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
    if (!key.empty()) r += "Authorization: Bearer " + key + "\r\n";
    if (!type.empty()) r += "Content-Type: " + type + "\r\n";
    return r + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

/// The body of a response: after the headers, with a chunked transfer encoding undone. Fails the test
/// on broken chunk framing.
std::string body_of(const std::string& response) {
    const std::size_t head = response.find("\r\n\r\n");
    REQUIRE(head != std::string::npos);
    const std::string headers = response.substr(0, head), rest = response.substr(head + 4);
    if (headers.find("Transfer-Encoding: chunked") == std::string::npos) return rest;
    std::string body;
    for (std::size_t at = 0;;) {
        const std::size_t eol = rest.find("\r\n", at);
        REQUIRE_MESSAGE(eol != std::string::npos, "a chunk size line is missing its CRLF");
        const std::size_t size = std::stoul(rest.substr(at, eol - at), nullptr, 16);
        if (size == 0) break;
        REQUIRE_MESSAGE(rest.size() >= eol + 2 + size + 2, "a chunk is cut short");
        body += rest.substr(eol + 2, size);
        REQUIRE(rest.substr(eol + 2 + size, 2) == "\r\n");
        at = eol + 2 + size + 2;
    }
    return body;
}

/// The data of each server-sent event of `body`, checking the framing: nothing but `data: X\n\n`
/// events, the last one `[DONE]` (not returned).
std::vector<nlohmann::json> sse_events(const std::string& body) {
    std::vector<nlohmann::json> events;
    std::size_t at = 0;
    bool done = false;
    while (at < body.size()) {
        INFO("event at byte " << at << ": " << body.substr(at, 200));
        REQUIRE(!done);  // nothing after [DONE]
        REQUIRE(body.compare(at, 6, "data: ") == 0);
        const std::size_t end = body.find("\n\n", at);
        REQUIRE(end != std::string::npos);
        const std::string data = body.substr(at + 6, end - at - 6);
        REQUIRE(data.find('\n') == std::string::npos);
        if (data == "[DONE]")
            done = true;
        else
            events.push_back(nlohmann::json::parse(data));
        at = end + 2;
    }
    CHECK(done);
    return events;
}

std::string get_request(const std::string& path, const std::string& key) {
    std::string r = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
    if (!key.empty()) r += "Authorization: Bearer " + key + "\r\n";
    return r + "\r\n";
}

}  // namespace

TEST_SUITE("teacher-http") {
    TEST_CASE(
        "generate through teacher::OpenAI against apps/serve with >= 30% faults equals a fault-free run; the key "
        "leaks nowhere") {
        TempDir dir("http-faults");
        testing::write_tiny_teacher(dir / "teacher.safetensors", 1, 64);
        write_text(dir / "prompts.jsonl", testing::prompt_lines(40));
        std::random_device rd;
        const std::string key = "sk-test-" + std::to_string(rd()) + std::to_string(rd());
        const std::string key_env = "DISTILL_TEST_SERVE_KEY";

        // The endpoint URL is part of the teacher's fingerprint, so the fault-free run uses the same
        // port: the faulty server is stopped first and a clean one takes its port.
        auto faulty = std::make_unique<Server>(
            dir, "faulty", dir / "teacher.safetensors", key_env, key,
            std::vector<std::string>{"--fault-rate", "0.4", "--stall-ms", "1500", "--retry-after", "0.1"});
        const std::string url = faulty->url();
        auto run = [&](const std::string& out, const std::string& env_value) {
            Child c(driver_args({"--input", (dir / "prompts.jsonl").string(), "--out", (dir / out).string(),
                                 "--base-url", url, "--model", "teacher", "--api-key-env", key_env, "--concurrency",
                                 "4", "--timeout", "0.6", "--retries", "12", "--backoff", "0.02"}),
                    {key_env + "=" + env_value}, dir / (out + ".log"));
            const int rc = c.wait(60);
            return std::make_pair(rc, read_text(dir / (out + ".log")));
        };
        const auto [rc_faulty, log_faulty] = run("faulty-out", key);
        INFO("driver log (faults):\n" << log_faulty);
        REQUIRE(rc_faulty == 0);
        const std::string faulty_log = faulty->stop();
        Server clean(dir, "clean", dir / "teacher.safetensors", key_env, key, {"--port", std::to_string(faulty->port)});
        REQUIRE(clean.url() == url);
        const auto [rc_clean, log_clean] = run("clean-out", key);
        INFO("driver log (clean):\n" << log_clean);
        REQUIRE(rc_clean == 0);

        // identical output, byte for byte
        CHECK(read_text(dir / "faulty-out" / "synthetic.jsonl") == read_text(dir / "clean-out" / "synthetic.jsonl"));
        CHECK(read_text(dir / "faulty-out" / "synthetic.topk") == read_text(dir / "clean-out" / "synthetic.topk"));
        CHECK(lines_of(dir / "faulty-out" / "synthetic.jsonl") > 20);

        // every prompt answered exactly once (a record or a rejection)
        const auto ds = data::read_examples(dir / "prompts.jsonl");
        std::multiset<std::string> answered;
        for (const auto& r : teacher::read_synthetic(dir / "faulty-out" / "synthetic.jsonl")) answered.insert(r.id);
        if (fs::exists(dir / "faulty-out" / "synthetic.rejected.jsonl"))
            data::read_jsonl(
                dir / "faulty-out" / "synthetic.rejected.jsonl", {},
                [&](std::uint64_t, const nlohmann::json& j) { answered.insert(j["id"].get<std::string>()); });
        CHECK(answered.size() == ds.examples.size());
        for (const auto& ex : ds.examples) CHECK(answered.count(ex.id) == 1);
        CHECK(log_faulty.find("retries 0 ") == std::string::npos);

        // a wrong key fails the run at once with a clear reason, naming neither key
        const auto [rc_wrong, log_wrong] = run("wrong-out", "sk-wrong-key-123");
        CHECK(rc_wrong == 1);
        CHECK(log_wrong.find("refused the API key from " + key_env) != std::string::npos);
        CHECK(log_wrong.find("sk-wrong-key-123") == std::string::npos);

        // the server faulted at least 30% of what it served
        const std::string clean_log = clean.stop();
        INFO("serve log:\n" << faulty_log.substr(faulty_log.size() > 3000 ? faulty_log.size() - 3000 : 0));
        unsigned long long total = 0, faulted = 0;
        const auto at = faulty_log.find("stopped after");
        REQUIRE(at != std::string::npos);
        REQUIRE(std::sscanf(faulty_log.c_str() + at, "stopped after %llu requests, %llu faulted", &total, &faulted) ==
                2);
        CHECK(total >= 40);
        CHECK(double(faulted) >= 0.3 * double(total));
        for (const char* kind : {"fault 429", "fault 500", "fault stall", "fault drop", "fault malformed"})
            CHECK(faulty_log.find(kind) != std::string::npos);

        // the key appears in no output file and no log
        for (const auto& text : all_files_text(dir.path)) {
            INFO(text.substr(0, text.find('\n')));
            CHECK(text.find(key) == std::string::npos);
        }
        CHECK(clean_log.find(key) == std::string::npos);
    }

    TEST_CASE(
        "teacher::OpenAI: configuration errors name the field, secrets stay out of names, unreachable endpoints fail "
        "requests") {
        ::setenv("DISTILL_TEST_OPENAI_KEY", "sk-in-env-777", 1);
        teacher::OpenAI<> text({.base_url = "http://user:pw-secret@127.0.0.1:1/v1?token=q-secret",
                                .model = "m",
                                .api_key_env = "DISTILL_TEST_OPENAI_KEY",
                                .max_retries = 1,
                                .backoff_initial_s = 0.01});
        for (const std::string& s : {text.fingerprint(), text.name()}) {
            CHECK(s.find("secret") == std::string::npos);
            CHECK(s.find("sk-in-env-777") == std::string::npos);
        }
        CHECK(text.name().find("(text only") != std::string::npos);
        static_assert(!teacher_provides<teacher::OpenAI<>, signal::topk_logprobs_t>);
        static_assert(teacher_provides<teacher::OpenAI<data::ByteTokenizer>, signal::topk_logprobs_t>);
        try {
            teacher::OpenAI<data::ByteTokenizer> mapped(
                {.base_url = "http://127.0.0.1:1/v1", .model = "m", .tokenizer = "llama-3"});
            FAIL("no config_error");
        } catch (const config_error& e) {
            CHECK(e.field() == "teacher.tokenizer");
        }
        try {
            teacher::OpenAI<> missing(
                {.base_url = "http://127.0.0.1:1/v1", .model = "m", .api_key_env = "DISTILL_TEST_UNSET_VARIABLE"});
            FAIL("no config_error");
        } catch (const config_error& e) {
            CHECK(std::string(e.what()).find("DISTILL_TEST_UNSET_VARIABLE is not set") != std::string::npos);
        }
        CHECK_THROWS_AS(teacher::OpenAI<>({.base_url = "localhost:8080", .model = "m"}), config_error);
        // nothing listens on port 1: each request fails after its retries, none is thrown
        teacher::OpenAI<> unreachable(
            {.base_url = "http://127.0.0.1:1/v1", .model = "m", .max_retries = 1, .backoff_initial_s = 0.01});
        const std::vector<teacher::Request> q = {{"a", 0, {{"user", "hi"}}}, {"b", 1, {{"user", "ho"}}}};
        const auto out = generate_all(unreachable, std::span<const teacher::Request>(q), {});
        for (const auto& r : out) {
            CHECK(!r.ok());
            CHECK(r.error.find("connection error") != std::string::npos);
            CHECK(r.error.find("after 2 attempts") != std::string::npos);
        }
        CHECK(unreachable.stats().attempts == 4);
        CHECK(unreachable.stats().failed == 2);
    }

    TEST_CASE("kill -9 of the generate stage at a random point, then a restart, equals an uninterrupted run") {
        TempDir dir("kill9");
        testing::write_tiny_teacher(dir / "teacher.safetensors", 2, 64);
        write_text(dir / "prompts.jsonl", testing::prompt_lines(40));
        const std::vector<std::string> base = {"--input",     (dir / "prompts.jsonl").string(),
                                               "--weights",   (dir / "teacher.safetensors").string(),
                                               "--max-batch", "4"};
        auto args = [&](const std::string& out, int slow_ms) {
            auto a = base;
            a.insert(a.end(), {"--out", (dir / out).string(), "--slow-ms", std::to_string(slow_ms)});
            return driver_args(a);
        };
        {
            Child whole(args("whole", 0), {}, dir / "whole.log");
            REQUIRE_MESSAGE(whole.wait(60) == 0, read_text(dir / "whole.log"));
        }
        const std::string want = read_text(dir / "whole" / "synthetic.jsonl");
        const std::string want_topk = read_text(dir / "whole" / "synthetic.topk");
        const std::size_t want_lines = lines_of(dir / "whole" / "synthetic.jsonl");
        REQUIRE(want_lines > 20);

        std::random_device rd;
        const unsigned seed = rd();
        std::mt19937 rng(seed);
        INFO("random seed " << seed);
        for (int trial = 0; trial < 3; ++trial) {
            const std::string out = "killed" + std::to_string(trial);
            Child c(args(out, 8), {}, dir / (out + ".log"));
            if (trial == 0) {
                // at a random time, possibly before the first record
                std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 300)(rng)));
            } else {
                // after a random number of records (a batch of 4 is answered as a whole, then written with sleeps
                // between)
                const std::size_t k = std::uniform_int_distribution<std::size_t>(1, want_lines - 2)(rng);
                INFO("kill after " << k << " records");
                const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
                while (lines_of(dir / out / "synthetic.jsonl") < k && std::chrono::steady_clock::now() < until)
                    std::this_thread::sleep_for(std::chrono::microseconds(300));
            }
            c.signal(SIGKILL);
            CHECK(c.wait(10) == 128 + SIGKILL);
            const std::size_t partial = lines_of(dir / out / "synthetic.jsonl");
            CAPTURE(partial);
            MESSAGE("trial " << trial << ": killed with " << partial << " of " << want_lines << " records written");
            Child again(args(out, 0), {}, dir / (out + ".restart.log"));
            REQUIRE_MESSAGE(again.wait(60) == 0, read_text(dir / (out + ".restart.log")));
            CHECK(read_text(dir / out / "synthetic.jsonl") == want);
            CHECK(read_text(dir / out / "synthetic.topk") == want_topk);
            std::set<std::string> ids;
            for (const auto& r : teacher::read_synthetic(dir / out / "synthetic.jsonl")) CHECK(ids.insert(r.id).second);
        }

        // the finished output with other sampling settings: refused, naming both fingerprints
        auto other = args("whole", 0);
        for (std::size_t i = 0; i + 1 < other.size(); ++i)
            if (other[i] == "--seed") other[i + 1] = "12";
        Child refused(other, {}, dir / "refused.log");
        CHECK(refused.wait(30) == 1);
        const std::string log = read_text(dir / "refused.log");
        const auto report = nlohmann::json::parse(read_text(dir / "whole" / "synthetic.report.json"));
        teacher::Model<student::Transformer, float, device::Cpu> t(
            teacher::ModelConfig{.weights = (dir / "teacher.safetensors").string(), .max_batch = 4}, device::Cpu(1));
        const std::string expected = generation_fingerprint(
            t,
            teacher::Sampling{.temperature = 0.8, .top_p = 0.95, .max_new_tokens = 24, .seed = 12, .top_logprobs = 4});
        INFO(log);
        CHECK(log.find(report["fingerprint"].get<std::string>()) != std::string::npos);
        CHECK(log.find(expected) != std::string::npos);
        CHECK(read_text(dir / "whole" / "synthetic.jsonl") == want);
    }

    TEST_CASE(
        "apps/serve under abuse on loopback: bad requests get 4xx, limits hold, it never crashes, the key is "
        "never logged") {
        TempDir dir("serve-abuse");
        testing::write_tiny_teacher(dir / "teacher.safetensors", 3, 64);
        std::random_device rd;
        const std::string key = "sk-abuse-" + std::to_string(rd()) + std::to_string(rd());
        const std::string key_env = "DISTILL_TEST_ABUSE_KEY";
        Server server(
            dir, "abuse", dir / "teacher.safetensors", key_env, key,
            {"--max-body-bytes", "65536", "--max-concurrency", "4", "--http-threads", "8", "--read-timeout", "1"});
        const int port = server.port;
        const std::string valid = R"({"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":6})";
        std::map<int, int> statuses;  // every status seen, for the summary
        auto expect = [&](const std::string& what, const std::string& request, std::set<int> allowed) {
            const HttpReply r = raw_http(port, request);
            ++statuses[r.status];
            INFO(what << ": got " << r.status << "\n" << r.text.substr(0, 400));
            CHECK(allowed.count(r.status) == 1);
            return r;
        };

        // authentication: /health is open, everything else needs the bearer token
        expect("health", get_request("/health", ""), {200});
        expect("models without key", get_request("/v1/models", ""), {401});
        expect("models with key", get_request("/v1/models", key), {200});
        expect("no key", post_request(valid, ""), {401});
        expect("wrong key", post_request(valid, "sk-wrong"), {401});
        expect("key prefix only", post_request(valid, key.substr(0, key.size() - 1)), {401});
        expect("valid", post_request(valid, key), {200});

        // content types
        expect("text/plain", post_request(valid, key, "text/plain"), {415});
        expect("no content type", post_request(valid, key, ""), {415});
        expect("form", post_request(valid, key, "application/x-www-form-urlencoded"), {415});
        expect("json with charset", post_request(valid, key, "Application/JSON; charset=utf-8"), {200});

        // malformed bodies: every one a 400 naming the defect
        const std::string deep = std::string(20000, '[') + std::string(20000, ']');
        const std::vector<std::string> malformed = {
            "",
            "{",
            "[]",
            "null",
            "\"text\"",
            deep,
            "{\"messages\":" + deep + "}",
            "{\"messages\":3}",
            "{\"messages\":[]}",
            "{\"model\":\"m\"}",
            R"({"messages":[{"role":"robot","content":"x"}]})",
            R"({"messages":[{"role":"user","content":7}]})",
            R"({"messages":[{"role":"user","content":""}]})",
            R"({"messages":[{"role":"assistant","content":"x"}]})",
            R"({"messages":[{"role":"user","content":"\ud800"}]})",
            "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}",
            R"({"messages":[{"role":"user","content":"x"}],"temperature":"hot"})",
            R"({"messages":[{"role":"user","content":"x"}],"temperature":-1})",
            R"({"messages":[{"role":"user","content":"x"}],"temperature":1e400})",
            R"({"messages":[{"role":"user","content":"x"}],"top_p":0})",
            R"({"messages":[{"role":"user","content":"x"}],"max_tokens":0})",
            R"({"messages":[{"role":"user","content":"x"}],"max_tokens":1.5})",
            R"({"messages":[{"role":"user","content":"x"}],"n":17})",
            R"({"messages":[{"role":"user","content":"x"}],"n":0})",
            R"({"messages":[{"role":"user","content":"x"}],"n":"1"})",
            R"({"messages":[{"role":"user","content":"x"}],"stream":"yes"})",
            R"({"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}})",
            R"({"messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":3})",
            R"({"messages":[{"role":"user","content":"x"}],"logprobs":"yes"})",
            R"({"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":100000})",
            R"({"messages":[{"role":"user","content":"x"}],"stop":[1]})",
            R"({"messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]})",
            R"({"messages":[{"role":"user","content":"x"}],"seed":"s"})",
            R"({"messages":[{"role":"user","content":")" + std::string(5000, 'x') + R"("}]})",  // over the context
        };
        for (std::size_t i = 0; i < malformed.size(); ++i)
            expect("malformed body " + std::to_string(i), post_request(malformed[i], key), {400});

        // a body over --max-body-bytes: 413, or the connection closed before the client finished sending
        expect("huge body",
               post_request(R"({"messages":[{"role":"user","content":")" + std::string(200000, 'a') + "\"}]}", key),
               {413, 0});
        expect("huge declared length",
               "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer " + key +
                   "\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{}",
               {413, 400, 0});
        // malformed HTTP: whatever httplib makes of it (mostly 400, 404, 413), never a 5xx and never a crash
        const std::vector<std::string> bad_http = {
            "GARBAGE\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer " + key +
                "\r\nContent-Type: application/json\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer " + key +
                "\r\nContent-Type: application/json\r\n\r\nFFFFFFFFFFFFFFFF\r\n{}",
            "GET /" + std::string(100000, 'a') + " HTTP/1.1\r\n\r\n",
            "GET /health HTTP/1.1\r\nX-Long: " + std::string(100000, 'h') + "\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",  // truncated
            std::string("\0\0\0\0\xff\xfe\r\n\r\n", 10),
            "DELETE /v1/chat/completions HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /../../etc/passwd HTTP/1.1\r\nConnection: close\r\n\r\n",
        };
        for (std::size_t i = 0; i < bad_http.size(); ++i) {
            const HttpReply r = raw_http(port, bad_http[i]);
            ++statuses[r.status];
            INFO("bad HTTP " << i << ": " << r.text.substr(0, 200));
            CHECK((r.status >= 0 && r.status < 500));
        }

        // 150 random single-byte mutations of a valid body: answered 200 or 400, never a 5xx
        std::mt19937 rng(1234);
        for (int i = 0; i < 150; ++i) {
            std::string body = valid;
            const std::size_t at = std::uniform_int_distribution<std::size_t>(0, body.size() - 1)(rng);
            body[at] = static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
            expect("mutation " + std::to_string(i), post_request(body, key), {200, 400});
        }

        // idle connections (slowloris): 12 sockets that send half a request and wait, more than the 8 HTTP
        // threads; the read timeout frees the threads and a real request still gets through
        {
            std::vector<std::unique_ptr<Socket>> idle;
            for (int i = 0; i < 12; ++i) {
                idle.push_back(std::make_unique<Socket>(port, 30));
                idle.back()->send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n");
            }
            const auto t0 = std::chrono::steady_clock::now();
            expect("valid behind idle connections", post_request(valid, key), {200});
            const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            MESSAGE("a request behind 12 idle connections was answered in " << s << " s");
            CHECK(s < 15);
        }

        // many concurrent clients: each answered 200, or 503 + Retry-After past --max-concurrency
        {
            std::vector<std::thread> clients;
            std::mutex m;
            std::vector<HttpReply> replies;
            for (int i = 0; i < 48; ++i)
                clients.emplace_back([&] {
                    HttpReply r = raw_http(port, post_request(valid, key), 30);
                    std::lock_guard lock(m);
                    replies.push_back(std::move(r));
                });
            for (auto& t : clients) t.join();
            int ok = 0, busy = 0;
            for (const auto& r : replies) {
                ++statuses[r.status];
                INFO(r.text.substr(0, 300));
                CHECK((r.status == 200 || r.status == 503));
                ok += r.status == 200;
                if (r.status == 503) {
                    ++busy;
                    CHECK(r.text.find("Retry-After: 1") != std::string::npos);
                }
            }
            MESSAGE("48 concurrent clients: " << ok << " answered, " << busy << " told to retry (503)");
            CHECK(ok >= 4);
        }

        // still alive and answering
        expect("health at the end", get_request("/health", ""), {200});
        expect("valid at the end", post_request(valid, key), {200});
        const std::string log = server.stop();
        CHECK(log.find(key) == std::string::npos);
        CHECK(log.find("stopped after") != std::string::npos);
        std::string summary;
        for (const auto& [status, count] : statuses)
            summary += " " + std::to_string(status) + "×" + std::to_string(count);
        MESSAGE("serve abuse: statuses seen:" << summary);
    }

    TEST_CASE(
        "apps/serve: past --max-concurrency requests, streamed or not, are refused with 503 + Retry-After, not "
        "queued") {
        TempDir dir("serve-busy");
        testing::write_tiny_teacher(dir / "teacher.safetensors", 3, 64);
        // every request stalls 1.5 s inside its slot, so 6 at once overrun 2 slots deterministically
        Server server(dir, "busy", dir / "teacher.safetensors", "DISTILL_TEST_BUSY_KEY", "k",
                      {"--max-concurrency", "2", "--fault-rate", "1", "--faults", "stall", "--stall-ms", "1500"});
        const std::string valid = R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4})";
        const std::string stream = R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true})";
        std::vector<std::thread> clients;
        std::mutex m;
        std::vector<int> statuses;
        for (int i = 0; i < 6; ++i)  // streamed requests count against the limit as the others do
            clients.emplace_back([&, i] {
                const HttpReply r = raw_http(server.port, post_request(i % 2 ? stream : valid, "k"), 30);
                std::lock_guard lock(m);
                statuses.push_back(r.status);
            });
        for (auto& t : clients) t.join();
        CHECK(std::count(statuses.begin(), statuses.end(), 200) == 2);
        CHECK(std::count(statuses.begin(), statuses.end(), 503) == 4);
        server.stop();
    }

    TEST_CASE(
        "apps/serve: streamed chat and text completions (server-sent events), n choices, legacy logprobs, bad "
        "fields named") {
        TempDir dir("serve-stream");
        testing::write_tiny_teacher(dir / "teacher.safetensors", 5, 128);
        Server server(dir, "stream", dir / "teacher.safetensors", "DISTILL_TEST_STREAM_KEY", "k", {"--max-batch", "2"});
        // A POST answered 200, and its body.
        auto post = [&](const std::string& path, const nlohmann::json& body) {
            const HttpReply r = raw_http(server.port, post_request(body.dump(), "k", "application/json", path));
            INFO(path << " " << body.dump() << " -> " << r.text.substr(0, 600));
            REQUIRE(r.status == 200);
            return r.text;
        };
        auto json_of = [&](const std::string& path, const nlohmann::json& body) {
            return nlohmann::json::parse(body_of(post(path, body)));
        };
        const nlohmann::json messages = {{{"role", "user"}, {"content", "What is 3 + 4?"}}};
        const nlohmann::json greedy = {{"messages", messages}, {"temperature", 0}, {"max_tokens", 40}};

        // ---- chat: the stream's deltas assemble into the non-streamed answer
        const nlohmann::json whole = json_of("/v1/chat/completions", greedy);
        const std::string answer = whole["choices"][0]["message"]["content"];
        MESSAGE("greedy answer: " << whole["choices"][0]["message"].dump() << ", "
                                  << whole["usage"]["completion_tokens"] << " tokens");
        nlohmann::json streamed = greedy;
        streamed["stream"] = true;
        streamed["stream_options"] = {{"include_usage", true}};
        const std::string raw = post("/v1/chat/completions", streamed);
        CHECK(raw.find("Content-Type: text/event-stream") != std::string::npos);
        CHECK(raw.find("Transfer-Encoding: chunked") != std::string::npos);
        const auto events = sse_events(body_of(raw));
        REQUIRE(events.size() >= 3);
        std::string text;
        int finishes = 0, content_chunks = 0;
        for (std::size_t i = 0; i + 1 < events.size(); ++i) {
            const auto& e = events[i];
            CHECK(e["object"] == "chat.completion.chunk");
            CHECK(e["id"] == events[0]["id"]);
            REQUIRE(e["choices"].size() == 1);
            const auto& c = e["choices"][0];
            CHECK(c["index"] == 0);
            CHECK(c["delta"].contains("role") == (i == 0));
            if (c["delta"].contains("content")) {
                text += c["delta"]["content"].get<std::string>();
                content_chunks += !c["delta"]["content"].get<std::string>().empty();
            }
            if (!c["finish_reason"].is_null()) {
                ++finishes;
                CHECK(i + 2 == events.size());  // the last chunk of the choice
                CHECK(c["finish_reason"] == whole["choices"][0]["finish_reason"]);
            }
        }
        CHECK(events[0]["choices"][0]["delta"]["role"] == "assistant");
        CHECK(text == answer);
        CHECK(finishes == 1);
        CHECK(content_chunks > 1);  // sent as generated, not at the end
        CHECK(events.back()["choices"].empty());
        CHECK(events.back()["usage"] == whole["usage"]);

        // ---- streamed log-probabilities: the non-streamed ones, split over the chunks
        nlohmann::json with_lp = greedy;
        with_lp["logprobs"] = true;
        with_lp["top_logprobs"] = 2;
        const auto lp_whole = json_of("/v1/chat/completions", with_lp)["choices"][0]["logprobs"]["content"];
        CHECK(lp_whole.size() == whole["usage"]["completion_tokens"].get<std::size_t>());
        with_lp["stream"] = true;
        nlohmann::json lp_streamed = nlohmann::json::array();
        for (const auto& e : sse_events(body_of(post("/v1/chat/completions", with_lp))))
            if (!e["choices"][0]["logprobs"].is_null())
                for (const auto& x : e["choices"][0]["logprobs"]["content"]) lp_streamed.push_back(x);
        CHECK(lp_streamed == lp_whole);

        // ---- n choices: independent samples with temperature, equal when greedy, choice 0 as n = 1
        nlohmann::json sampled = {
            {"messages", messages}, {"temperature", 1.0}, {"max_tokens", 12}, {"seed", 9}, {"n", 3},
            {"logprobs", true}};
        const auto three = json_of("/v1/chat/completions", sampled);
        REQUIRE(three["choices"].size() == 3);
        std::set<std::string> distinct;
        std::size_t tokens = 0;
        for (std::size_t c = 0; c < 3; ++c) {
            CHECK(three["choices"][c]["index"] == c);
            distinct.insert(three["choices"][c]["message"]["content"].get<std::string>());
            tokens += three["choices"][c]["logprobs"]["content"].size();
        }
        CHECK(distinct.size() == 3);
        CHECK(three["usage"]["completion_tokens"] == tokens);                       // every choice counted
        CHECK(three["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]);  // the prompt once
        nlohmann::json single = sampled;
        single["n"] = 1;
        CHECK(json_of("/v1/chat/completions", single)["choices"][0] == three["choices"][0]);
        nlohmann::json greedy3 = greedy;
        greedy3["n"] = 3;
        const auto equal = json_of("/v1/chat/completions", greedy3);
        for (std::size_t c = 0; c < 3; ++c) CHECK(equal["choices"][c]["message"]["content"] == answer);
        sampled["stream"] = true;
        std::vector<std::string> parts(3);
        for (const auto& e : sse_events(body_of(post("/v1/chat/completions", sampled))))
            for (const auto& c : e["choices"])
                parts.at(c["index"].get<std::size_t>()) += c["delta"].value("content", "");
        for (std::size_t c = 0; c < 3; ++c) CHECK(parts[c] == three["choices"][c]["message"]["content"]);

        // ---- text completions: the prompt as raw text (no template), against the model in-process
        teacher::Model<student::Transformer> reference(
            teacher::ModelConfig{.weights = (dir / "teacher.safetensors").string(), .max_batch = 1}, device::Cpu(1));
        teacher::Sampling s{.temperature = 0, .top_p = 1, .max_new_tokens = 20, .top_logprobs = 3};
        const std::string prompt = "The sum of 3 and 4 is";
        teacher::Response want;
        const teacher::TokenPrompt tp{.id = "", .ids = reference.chat_template().encode_text(prompt)};
        reference.generate_tokens(std::span(&tp, 1), s, [&](std::size_t, teacher::Response&& r) { want = r; });
        REQUIRE(want.ok());
        const nlohmann::json completion = {{"prompt", prompt}, {"temperature", 0}, {"max_tokens", 20}, {"logprobs", 3}};
        const auto legacy = json_of("/v1/completions", completion);
        CHECK(legacy["object"] == "text_completion");
        CHECK(legacy["choices"][0]["text"] == want.text);
        CHECK(legacy["usage"]["prompt_tokens"] == prompt.size());
        CHECK(legacy["usage"]["completion_tokens"] == want.tokens.size());
        const auto& L = legacy["choices"][0]["logprobs"];
        REQUIRE(L["tokens"].size() == want.tokens.size());
        REQUIRE(L["token_logprobs"].size() == want.tokens.size());
        REQUIRE(L["top_logprobs"].size() == want.tokens.size());
        REQUIRE(L["text_offset"].size() == want.tokens.size());
        CHECK(L["text_offset"][0] == 0);
        for (std::size_t i = 0; i < want.tokens.size(); ++i) {
            CHECK(L["token_logprobs"][i].get<double>() == doctest::Approx(want.token_logprobs[i]).epsilon(1e-6));
            CHECK(L["top_logprobs"][i].size() == 3);
            // greedy: the chosen token is the most likely, under its own name in the top dict
            CHECK(L["top_logprobs"][i].contains(L["tokens"][i].get<std::string>()));
            CHECK(L["top_logprobs"][i][L["tokens"][i].get<std::string>()] == L["token_logprobs"][i]);
            if (i > 0) CHECK(L["text_offset"][i] >= L["text_offset"][i - 1]);
        }
        // a prompt given as token ids is the same prompt
        nlohmann::json by_ids = completion;
        by_ids["prompt"] = tp.ids;
        CHECK(json_of("/v1/completions", by_ids)["choices"] == legacy["choices"]);
        // streamed: the same text and the same legacy log-probabilities, piece by piece
        nlohmann::json legacy_stream = completion;
        legacy_stream["stream"] = true;
        std::string legacy_text;
        nlohmann::json stream_lp = nlohmann::json::array(), stream_offsets = nlohmann::json::array();
        const auto legacy_events = sse_events(body_of(post("/v1/completions", legacy_stream)));
        for (const auto& e : legacy_events) {
            CHECK(e["object"] == "text_completion");
            legacy_text += e["choices"][0]["text"].get<std::string>();
            if (!e["choices"][0]["logprobs"].is_null()) {
                for (const auto& x : e["choices"][0]["logprobs"]["token_logprobs"]) stream_lp.push_back(x);
                for (const auto& x : e["choices"][0]["logprobs"]["text_offset"]) stream_offsets.push_back(x);
            }
        }
        CHECK(legacy_text == legacy["choices"][0]["text"]);
        CHECK(stream_lp == L["token_logprobs"]);
        CHECK(stream_offsets == L["text_offset"]);
        CHECK(legacy_events.back()["choices"][0]["finish_reason"] == legacy["choices"][0]["finish_reason"]);
        // a list of prompts times n: prompt p's choice j at index p * n + j, as if asked alone
        const auto many =
            json_of("/v1/completions",
                    {{"prompt", {"one", "two"}}, {"n", 2}, {"temperature", 0.9}, {"seed", 4}, {"max_tokens", 8}});
        const auto alone = json_of("/v1/completions",
                                   {{"prompt", "two"}, {"n", 2}, {"temperature", 0.9}, {"seed", 4}, {"max_tokens", 8}});
        REQUIRE(many["choices"].size() == 4);
        for (std::size_t c = 0; c < 4; ++c) CHECK(many["choices"][c]["index"] == c);
        CHECK(many["choices"][2]["text"] == alone["choices"][0]["text"]);
        CHECK(many["choices"][3]["text"] == alone["choices"][1]["text"]);
        CHECK(many["usage"]["prompt_tokens"] == 6);

        // ---- bad fields: 400 with a message naming the field
        const std::vector<std::tuple<std::string, std::string, std::string>> bad = {
            {"/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"n":17})", "\"n\""},
            {"/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"stream":1})", "\"stream\""},
            {"/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"stream_options":{}})",
             "\"stream_options\""},
            {"/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"logprobs":3})", "\"logprobs\""},
            {"/v1/completions", R"({"max_tokens":3})", "\"prompt\""},
            {"/v1/completions", R"({"prompt":3})", "\"prompt\""},
            {"/v1/completions", R"({"prompt":[]})", "\"prompt\""},
            {"/v1/completions", R"({"prompt":""})", "\"prompt\""},
            {"/v1/completions", R"({"prompt":["a",""]})", "\"prompt[1]\""},
            {"/v1/completions", R"({"prompt":[1,99999]})", "\"prompt\""},
            {"/v1/completions", R"({"prompt":[[1],[-1]]})", "\"prompt[1]\""},
            {"/v1/completions", R"({"prompt":")" + std::string(200, 'x') + R"("})", "\"prompt\""},
            {"/v1/completions", R"({"prompt":["a","b","c","d","e"],"n":4})", "\"n\""},
            {"/v1/completions", R"({"prompt":"a","logprobs":true})", "\"logprobs\""},
            {"/v1/completions", R"({"prompt":"a","logprobs":21})", "\"logprobs\""},
            {"/v1/completions", R"({"prompt":"a","echo":true})", "\"echo\""},
            {"/v1/completions", R"({"prompt":"a","suffix":"b"})", "\"suffix\""},
            {"/v1/completions", R"({"prompt":"a","best_of":3})", "\"best_of\""},
            {"/v1/completions", R"({"prompt":"a","max_tokens":0})", "max_new_tokens"},
        };
        for (const auto& [path, body, field] : bad) {
            const HttpReply r = raw_http(server.port, post_request(body, "k", "application/json", path));
            INFO(path << " " << body.substr(0, 80) << " -> " << r.text.substr(0, 400));
            CHECK(r.status == 400);
            const auto error = nlohmann::json::parse(body_of(r.text))["error"];
            CHECK(error["message"].get<std::string>().find(field) != std::string::npos);
            CHECK(error["type"] == "invalid_request_error");
        }
        // the key and auth apply to the new endpoint too
        CHECK(raw_http(server.port, post_request(R"({"prompt":"a"})", "", "application/json", "/v1/completions"))
                  .status == 401);
        const std::string log = server.stop();
        CHECK(log.find("stream ended early") == std::string::npos);
    }

    TEST_CASE("apps/serve: a stream holds its --max-concurrency slot, and a client that hangs up stops generation") {
        TempDir dir("serve-hangup");
        testing::write_tiny_teacher(dir / "teacher.safetensors", 3, 4096);
        Server server(dir, "hangup", dir / "teacher.safetensors", "DISTILL_TEST_HANGUP_KEY", "k",
                      {"--max-concurrency", "1"});
        const nlohmann::json body = {{"messages", {{{"role", "user"}, {"content", "Tell me everything."}}}},
                                     {"temperature", 0},
                                     {"max_tokens", 4000}};
        // the whole answer, not streamed: how long it is
        const HttpReply whole = raw_http(server.port, post_request(body.dump(), "k"), 60);
        REQUIRE(whole.status == 200);
        const auto full = nlohmann::json::parse(body_of(whole.text))["usage"]["completion_tokens"].get<int>();
        MESSAGE("the greedy answer has " << full << " tokens");
        REQUIRE(full > 1000);  // long enough that a hang-up lands mid-answer

        nlohmann::json streamed = body;
        streamed["stream"] = true;
        {
            Socket client(server.port, 30);
            REQUIRE(client.connected);
            client.send(post_request(streamed.dump(), "k"));
            // the headers and a first event arrive while the answer is still being generated
            std::string got;
            char buf[4096];
            while (got.find("data: ") == std::string::npos) {
                const ssize_t n = ::recv(client.fd, buf, sizeof buf, 0);
                REQUIRE(n > 0);
                got.append(buf, std::size_t(n));
            }
            CHECK(got.starts_with("HTTP/1.1 200"));
            // the stream holds the only slot: another request is told to retry
            const HttpReply busy = raw_http(server.port, post_request(body.dump(), "k"));
            CHECK(busy.status == 503);
        }  // hang up mid-stream
        // the slot comes free once the server notices; generation stopped early, not run to the end
        HttpReply after;
        for (int i = 0; i < 200; ++i) {
            after = raw_http(server.port,
                             post_request(R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4})", "k"));
            if (after.status != 503) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        CHECK(after.status == 200);
        const std::string log = server.stop();
        INFO(log);
        const auto at = log.find("stream ended early after ");
        REQUIRE(at != std::string::npos);
        const int generated = std::atoi(log.c_str() + at + std::strlen("stream ended early after "));
        MESSAGE("the stream stopped after " << generated << " of " << full << " tokens");
        CHECK(generated < full);
    }

    TEST_CASE("apps/loadtest: rising concurrency against apps/serve, TTFT and latency percentiles, 503s counted") {
        TempDir dir("loadtest");
        testing::write_tiny_teacher(dir / "teacher.safetensors", 2, 128);
        Server server(dir, "loadtest", dir / "teacher.safetensors", "DISTILL_TEST_LOADTEST_KEY", "k",
                      {"--max-concurrency", "2"});
        Child run(
            {DISTILL_LOADTEST_BIN, "--url", server.url(), "--api-key-env", "DISTILL_TEST_LOADTEST_KEY", "--concurrency",
             "1,6", "--requests", "12", "--max-tokens", "16", "--out", (dir / "report.json").string()},
            {"DISTILL_TEST_LOADTEST_KEY=k"}, dir / "loadtest.log");
        REQUIRE_MESSAGE(run.wait(120) == 0, read_text(dir / "loadtest.log"));
        const auto report = nlohmann::json::parse(read_text(dir / "report.json"));
        REQUIRE(report["levels"].size() == 2);
        const auto& one = report["levels"][0];
        CHECK(one["concurrency"] == 1);
        CHECK(one["requests"] == 12);
        CHECK(one["ok"] == 12);  // one at a time: never over the server's limit
        CHECK(one["errors"].empty());
        CHECK(one["completion_tokens"].get<int>() >= 12);
        CHECK(one["ttft_ms"]["p50"].get<double>() > 0);
        CHECK(one["ttft_ms"]["p50"].get<double>() <= one["latency_ms"]["p50"].get<double>());
        CHECK(one["ttft_ms"]["p50"].get<double>() <= one["ttft_ms"]["p95"].get<double>());
        CHECK(one["ttft_ms"]["p95"].get<double>() <= one["ttft_ms"]["p99"].get<double>());
        CHECK(one["tokens_per_s"].get<double>() > 0);
        // six clients against two slots: each request answered or refused with 503, nothing else
        const auto& six = report["levels"][1];
        int refused = 0;
        for (const auto& [kind, count] : six["errors"].items()) {
            CHECK(kind == "503");
            refused += count.get<int>();
        }
        CHECK(six["ok"].get<int>() + refused == 12);
        CHECK(six["ok"].get<int>() >= 1);
        MESSAGE("loadtest: concurrency 1 ttft p50 " << one["ttft_ms"]["p50"] << " ms, " << one["tokens_per_s"]
                                                    << " tokens/s; concurrency 6: " << six["ok"] << " ok, " << refused
                                                    << " refused (503)");
        CHECK(read_text(dir / "loadtest.log").find("\"levels\"") != std::string::npos);  // the report on stdout
        server.stop();
        // loopback only
        Child elsewhere({DISTILL_LOADTEST_BIN, "--url", "http://example.com/v1"}, {}, dir / "elsewhere.log");
        CHECK(elsewhere.wait(30) == 2);
        CHECK(read_text(dir / "elsewhere.log").find("loopback") != std::string::npos);
    }

}  // TEST_SUITE
