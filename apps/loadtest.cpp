// A load tester for an OpenAI-compatible server on this machine (apps/serve, or any other on
// loopback): at each concurrency level it keeps that many streamed completion requests in flight
// until --requests of them have been answered, and measures time to first token (the first
// server-sent event carrying text), whole-request latency, throughput and errors. Prints one JSON
// report (and writes it atomically to --out).
//
//   loadtest --url http://127.0.0.1:8080/v1 [--api-key-env VAR] [--model NAME] [--endpoint chat|completions]
//            [--concurrency 1,2,4,8] [--requests 32] [--max-tokens 64] [--prompt TEXT] [--temperature 0]
//            [--timeout 60] [--out FILE] [--p95-target-ms MS] [--svg FILE] [--report REPORT.json --name MODEL]
//
// --p95-target-ms: the highest level whose p95 latency stays under the target with no errors is the
// concurrency the server sustains ("sustained_concurrency"). --svg: p50/p95 latency and p50 time to
// first token against concurrency. --report: the result goes into a run's report.json under
// "loadtest"."<MODEL>" (MODEL: teacher, student, ...), and report.md is written again with a load-test
// table and, with the teacher's and the student's, the ratio of the concurrency each sustains.
//
// Loopback only (127.0.0.1, localhost, [::1]): it is a tool to measure one's own server, not to load
// someone else's. The key comes from the environment variable --api-key-env names, never the command
// line. Per level: "requests", "ok", "errors" (by kind: an HTTP status, "transport", "stream" for an
// answer without [DONE] or with an error event), "wall_s", "requests_per_s", "tokens_per_s"
// (completion tokens of the answered requests over the level's wall time, from the usage chunk),
// "ttft_ms" and "latency_ms" {p50, p95, p99, mean, max} over the answered requests (nearest rank).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

// distill first: httplib.h's <resolv.h> defines a `_res` macro that breaks Eigen parsed after it.
#include <distill/eval/report.hpp>
#include <distill/eval/svg.hpp>
#include <distill/io/durable.hpp>

#include <httplib.h>
#include <nlohmann/json.hpp>

namespace {

struct Options {
    std::string url, api_key_env, model = "default", endpoint = "chat", prompt = "Tell me a story.", out;
    std::string svg, report, name;
    double p95_target_ms = 0;
    std::vector<int> concurrency = {1, 2, 4, 8};
    int requests = 32, max_tokens = 64;
    double temperature = 0, timeout = 60;
};

[[noreturn]] void usage(const std::string& why) {
    std::fprintf(stderr,
                 "loadtest: %s\nusage: loadtest --url http://127.0.0.1:PORT/v1 [--api-key-env VAR] [--model NAME]\n"
                 "                [--endpoint chat|completions] [--concurrency 1,2,4,8] [--requests 32]\n"
                 "                [--max-tokens 64] [--prompt TEXT] [--temperature 0] [--timeout 60] [--out FILE]\n"
                 "                [--p95-target-ms MS] [--svg FILE] [--report REPORT.json --name MODEL]\n",
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
        auto number = [&](const std::string& v, double lo, double hi) {
            char* end = nullptr;
            const double x = std::strtod(v.c_str(), &end);
            if (end == v.c_str() || *end || !(x >= lo && x <= hi))
                usage(a + " expects a number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v);
            return x;
        };
        if (a == "--url")
            o.url = value();
        else if (a == "--api-key-env")
            o.api_key_env = value();
        else if (a == "--model")
            o.model = value();
        else if (a == "--endpoint") {
            o.endpoint = value();
            if (o.endpoint != "chat" && o.endpoint != "completions")
                usage("--endpoint expects chat or completions, got " + o.endpoint);
        } else if (a == "--concurrency") {
            o.concurrency.clear();
            const std::string list = value();
            for (std::size_t at = 0; at <= list.size();) {
                const std::size_t comma = std::min(list.find(',', at), list.size());
                o.concurrency.push_back(int(number(list.substr(at, comma - at), 1, 1024)));
                at = comma + 1;
            }
        } else if (a == "--requests")
            o.requests = int(number(value(), 1, 1e6));
        else if (a == "--max-tokens")
            o.max_tokens = int(number(value(), 1, 1e6));
        else if (a == "--prompt")
            o.prompt = value();
        else if (a == "--temperature")
            o.temperature = number(value(), 0, 100);
        else if (a == "--timeout")
            o.timeout = number(value(), 0.1, 3600);
        else if (a == "--out")
            o.out = value();
        else if (a == "--p95-target-ms")
            o.p95_target_ms = number(value(), 0.001, 1e7);
        else if (a == "--svg")
            o.svg = value();
        else if (a == "--report")
            o.report = value();
        else if (a == "--name")
            o.name = value();
        else if (a == "--help" || a == "-h")
            usage("measures an OpenAI-compatible server on loopback");
        else
            usage("unknown argument " + a);
    }
    if (o.url.empty()) usage("--url is required");
    if (o.report.empty() != o.name.empty()) usage("--report and --name go together (the model the server runs)");
    if (!o.report.empty() && !std::filesystem::is_regular_file(o.report))
        usage("--report: " + o.report + " is not a file (a run's report.json)");
    return o;
}

// "http://HOST:PORT/PREFIX" split; HOST must be a loopback name.
struct Endpoint {
    std::string host;
    int port = 80;
    std::string prefix;
};

Endpoint parse_url(const std::string& url) {
    if (!url.starts_with("http://")) usage("--url must start with http:// (loopback only), got " + url);
    std::string rest = url.substr(7);
    const std::size_t slash = rest.find('/');
    Endpoint e;
    e.prefix = slash == std::string::npos ? "" : rest.substr(slash);
    while (!e.prefix.empty() && e.prefix.back() == '/') e.prefix.pop_back();
    std::string authority = rest.substr(0, slash);
    std::size_t colon = authority.rfind(':');
    if (colon != std::string::npos && authority.find(']', colon) == std::string::npos) {
        char* end = nullptr;
        const long p = std::strtol(authority.c_str() + colon + 1, &end, 10);
        if (*end || p < 1 || p > 65535) usage("--url has a bad port: " + url);
        e.port = int(p);
        authority.resize(colon);
    }
    if (authority.size() > 2 && authority.front() == '[' && authority.back() == ']')
        authority = authority.substr(1, authority.size() - 2);
    if (authority != "127.0.0.1" && authority != "localhost" && authority != "::1")
        usage("--url must name a loopback host (127.0.0.1, localhost, [::1]), got \"" + authority + "\"");
    e.host = authority;
    return e;
}

// One request's outcome.
struct Sample {
    std::string error;  // "" = answered
    double ttft_ms = -1, latency_ms = 0;
    std::int64_t tokens = 0;
};

// Sends one streamed request and reads its events as they arrive.
Sample one_request(const Options& o, const Endpoint& e, const std::string& key, const std::string& body) {
    httplib::Client client(e.host, e.port);
    const auto to = std::chrono::microseconds(std::int64_t(o.timeout * 1e6));
    client.set_connection_timeout(to);
    client.set_read_timeout(to);
    client.set_write_timeout(to);
    httplib::Request req;
    req.method = "POST";
    req.path = e.prefix + (o.endpoint == "chat" ? "/chat/completions" : "/completions");
    req.headers = {{"Content-Type", "application/json"}, {"Accept", "text/event-stream"}};
    if (!key.empty()) req.headers.emplace("Authorization", "Bearer " + key);
    req.body = body;
    Sample s;
    std::string pending;
    bool done = false, failed = false;
    const auto t0 = std::chrono::steady_clock::now();
    auto ms = [&] { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(); };
    req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
        pending.append(data, n);
        for (std::size_t end; (end = pending.find("\n\n")) != std::string::npos; pending.erase(0, end + 2)) {
            const std::string event = pending.substr(0, end);
            if (!event.starts_with("data: ")) continue;  // comments, other fields
            const std::string payload = event.substr(6);
            if (payload == "[DONE]") {
                done = true;
                continue;
            }
            const auto j = nlohmann::json::parse(payload, nullptr, false);
            if (j.is_discarded() || !j.is_object() || j.contains("error")) {
                failed = true;
                continue;
            }
            if (auto u = j.find("usage"); u != j.end() && u->is_object())
                s.tokens = u->value("completion_tokens", std::int64_t(0));
            if (s.ttft_ms < 0)
                if (auto c = j.find("choices"); c != j.end() && c->is_array())
                    for (const auto& choice : *c) {
                        const nlohmann::json* piece = nullptr;
                        if (auto d = choice.find("delta");
                            d != choice.end() && d->is_object() && d->contains("content"))
                            piece = &(*d)["content"];
                        else if (auto t = choice.find("text"); t != choice.end())
                            piece = &*t;
                        if (piece && piece->is_string() && !piece->get<std::string>().empty()) s.ttft_ms = ms();
                    }
        }
        return true;
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    const bool sent = client.send(req, res, err);
    s.latency_ms = ms();
    if (!sent)
        s.error = "transport";
    else if (res.status != 200)
        s.error = std::to_string(res.status);
    else if (!done || failed)
        s.error = "stream";
    return s;
}

// Nearest-rank percentiles and mean/max of `v` (empty: nulls).
nlohmann::json stats(std::vector<double> v) {
    if (v.empty()) return {{"p50", nullptr}, {"p95", nullptr}, {"p99", nullptr}, {"mean", nullptr}, {"max", nullptr}};
    std::sort(v.begin(), v.end());
    auto pct = [&](double p) {
        const std::size_t rank = std::size_t(std::max(1.0, std::ceil(p / 100.0 * double(v.size()))));
        return v[std::min(rank, v.size()) - 1];
    };
    double sum = 0;
    for (double x : v) sum += x;
    auto round = [](double x) { return std::round(x * 100) / 100; };
    return {{"p50", round(pct(50))},
            {"p95", round(pct(95))},
            {"p99", round(pct(99))},
            {"mean", round(sum / double(v.size()))},
            {"max", round(v.back())}};
}

}  // namespace

int main(int argc, char** argv) try {
    const Options o = parse(argc, argv);
    const Endpoint e = parse_url(o.url);
    std::string key;
    if (!o.api_key_env.empty()) {
        const char* k = std::getenv(o.api_key_env.c_str());
        if (!k || !*k) usage("the environment variable " + o.api_key_env + " (--api-key-env) is not set or empty");
        key = k;
    }
    nlohmann::json body = {{"model", o.model},
                           {"max_tokens", o.max_tokens},
                           {"temperature", o.temperature},
                           {"stream", true},
                           {"stream_options", {{"include_usage", true}}}};
    if (o.endpoint == "chat")
        body["messages"] = {{{"role", "user"}, {"content", o.prompt}}};
    else
        body["prompt"] = o.prompt;
    const std::string text = body.dump();

    nlohmann::json levels = nlohmann::json::array();
    for (const int c : o.concurrency) {
        std::atomic<int> next{0};
        std::mutex m;
        std::vector<Sample> samples;
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<std::thread> workers;
        for (int w = 0; w < c; ++w)
            workers.emplace_back([&] {
                while (next++ < o.requests) {
                    Sample s = one_request(o, e, key, text);
                    std::lock_guard lock(m);
                    samples.push_back(std::move(s));
                }
            });
        for (auto& t : workers) t.join();
        const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::vector<double> ttft, latency;
        std::map<std::string, int> errors;
        std::int64_t tokens = 0;
        for (const auto& s : samples) {
            if (!s.error.empty()) {
                ++errors[s.error];
                continue;
            }
            latency.push_back(s.latency_ms);
            if (s.ttft_ms >= 0) ttft.push_back(s.ttft_ms);
            tokens += s.tokens;
        }
        const int ok = int(latency.size());
        nlohmann::json level = {{"concurrency", c},
                                {"requests", samples.size()},
                                {"ok", ok},
                                {"errors", errors},
                                {"wall_s", std::round(wall * 1000) / 1000},
                                {"requests_per_s", std::round(double(ok) / wall * 100) / 100},
                                {"tokens_per_s", std::round(double(tokens) / wall * 10) / 10},
                                {"completion_tokens", tokens},
                                {"ttft_ms", stats(ttft)},
                                {"latency_ms", stats(latency)}};
        std::fprintf(stderr, "loadtest: concurrency %d: %d/%zu ok, %.1f req/s, %.0f tokens/s, ttft p50 %s ms\n", c, ok,
                     samples.size(), double(ok) / wall, double(tokens) / wall, level["ttft_ms"]["p50"].dump().c_str());
        levels.push_back(std::move(level));
    }
    nlohmann::json report = {{"url", o.url},
                             {"endpoint", o.endpoint},
                             {"model", o.model},
                             {"max_tokens", o.max_tokens},
                             {"requests_per_level", o.requests},
                             {"levels", levels}};
    if (o.p95_target_ms > 0) {
        report["p95_target_ms"] = o.p95_target_ms;
        report["sustained_concurrency"] = nullptr;
        for (const auto& l : levels)
            if (l["errors"].empty() && l["latency_ms"]["p95"].is_number() &&
                l["latency_ms"]["p95"].get<double>() <= o.p95_target_ms)
                report["sustained_concurrency"] = l["concurrency"];
    }
    const std::string out = report.dump(2) + "\n";
    if (!o.out.empty()) distill::io::write_file_atomic(o.out, out);
    if (!o.svg.empty()) {
        std::vector<distill::eval::Series> series = {
            {"latency p50", {}, {}}, {"latency p95", {}, {}}, {"time to first token p50", {}, {}}};
        for (const auto& l : levels) {
            const double c = l["concurrency"].get<double>();
            auto point = [&](distill::eval::Series& s, const nlohmann::json& v) {
                s.x.push_back(c);
                s.y.push_back(v.is_number() ? v.get<double>() : std::nan(""));
            };
            point(series[0], l["latency_ms"]["p50"]);
            point(series[1], l["latency_ms"]["p95"]);
            point(series[2], l["ttft_ms"]["p50"]);
        }
        distill::io::write_file_atomic(o.svg, distill::eval::line_chart("Latency against concurrency: " + o.model,
                                                                        "concurrent requests", "ms", series));
    }
    if (!o.report.empty()) {  // into the run's report, which is then rendered again
        std::ifstream in(o.report, std::ios::binary);
        auto run = nlohmann::ordered_json::parse(in, nullptr, false);
        if (!run.is_object() || !run.contains("models"))
            throw distill::format_error(o.report, 0, "is not a distill report (no \"models\")");
        run["loadtest"][o.name] = nlohmann::ordered_json::parse(report.dump());
        distill::io::write_file_atomic(std::filesystem::path(o.report).replace_filename("report.md"),
                                       distill::eval::render_markdown(run));
        distill::io::write_file_atomic(o.report, run.dump(2) + "\n");
    }
    std::fputs(out.c_str(), stdout);
    return 0;
} catch (const std::exception& ex) {
    std::fprintf(stderr, "loadtest: %s\n", ex.what());
    return 1;
}
