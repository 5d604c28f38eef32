#pragma once
/// @file openai.hpp
/// `teacher::OpenAI`: any OpenAI-compatible chat-completions endpoint as a teacher (OpenAI, vLLM,
/// llama.cpp's server, TGI, DeepSeek, Together, `apps/serve`, ...), over cpp-httplib (HTTPS
/// through OpenSSL).
///
/// **Needs cpp-httplib**, a compiled library: link the CMake target `distill::http` (Debian
/// `libcpp-httplib-dev`), which also passes the flags its header must be compiled with. The rest of
/// distill does not need it, and the umbrella header includes this file only when `DISTILL_WITH_HTTP`
/// is defined (as `distill::http` does).
///
/// **Requests.** Up to `concurrency` requests are in flight, each on its own connection. A request
/// is retried on connection errors, timeouts, malformed answers and HTTP 408/413/429/5xx, with
/// exponential backoff and jitter, waiting at least what a `Retry-After` header asks for; after
/// `max_retries` retries it fails (the generate stage counts it and retries it in its next run).
/// Other 4xx answers fail the request at once; 401/403 (a bad key) and 404 (a bad URL) fail the
/// whole run, since every request would get them.
///
/// **Secrets.** The API key is read from the environment variable *named* in `api_key_env` and is
/// kept in memory only: it is in no fingerprint, name, error message, log line or file (an error
/// body that echoes it is scrubbed).
///
/// **Log-probabilities** become top-k data for the student only when the endpoint's model uses the
/// student's tokenizer, which the config's `tokenizer` declares: `OpenAI<data::ByteTokenizer>` needs
/// `tokenizer = "byte-v1"`; `OpenAI<data::HfTokenizer>` (or a tokenizer with its interface,
/// constructed from a tokenizer.json path) reads the published tokenizer `tokenizer` names (a tokenizer.json or a
/// directory holding one). Either provides `signal::topk_logprobs`, maps every `top_logprobs` entry
/// by its exact `bytes` (or its text when an endpoint gives none) onto the tokenizer's ids, and counts
/// what does not map (openai::map_logprobs_counted: per answer in `Response::mapping`, in total in
/// `stats().mapping`). Whether that tokenizer is the student's is the Distiller's check (it compares
/// the vocabularies). `OpenAI<>` provides text only, which the type states at compile time and
/// `name()` at startup.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>
#include <nlohmann/json.hpp>
// httplib.h pulls in <resolv.h>, whose `#define _res (*__res_state())` breaks Eigen's product
// kernels (they name a parameter `_res`) when Eigen is parsed after it: parse Eigen first.
#include <Eigen/Core>

#include <httplib.h>

#include "distill/data/vocab_alignment.hpp"
#include "distill/detail/hash.hpp"
#include "distill/detail/rng.hpp"
#include "distill/error.hpp"
#include "distill/signals.hpp"
#include "distill/teacher.hpp"
#include "distill/teacher/openai_format.hpp"

namespace distill::teacher {

/// An OpenAI-compatible endpoint. Keys are the JSON keys of a job's `teacher` object of kind "openai".
struct OpenAIConfig {
    std::string base_url = "https://api.openai.com/v1";  ///< requests go to base_url + "/chat/completions"
    std::string model{};                                 ///< the model name the endpoint expects
    std::string api_key_env{};  ///< name of the environment variable holding the key ("" = no key)
    /// The endpoint model's tokenizer: "byte-v1", or the published tokenizer it uses (a tokenizer.json
    /// or a directory holding one); "" = unknown (text only)
    std::string tokenizer{};
    int concurrency = 4;             ///< requests in flight
    double request_timeout_s = 60;   ///< longest wait for a response to progress
    double connect_timeout_s = 10;   ///< longest wait to connect
    int max_retries = 6;             ///< retries per request after the first attempt
    double backoff_initial_s = 0.5;  ///< first backoff; doubles per retry, with jitter
    double backoff_max_s = 30;       ///< backoff cap
    double max_retry_after_s = 120;  ///< longest Retry-After honoured (a larger one is capped)

    /// Throws `config_error` naming the field.
    void validate(const std::string& path = "teacher") const {
        if (base_url.find("://") == std::string::npos)
            throw config_error(path + ".base_url",
                               "expected http://host[:port][/prefix] or https://..., got \"" + base_url + "\"");
        if (model.empty()) throw config_error(path + ".model", "is required");
        if (concurrency < 1 || concurrency > 256) throw config_error(path + ".concurrency", "must be in [1, 256]");
        if (!(request_timeout_s > 0)) throw config_error(path + ".request_timeout_s", "must be > 0");
        if (!(connect_timeout_s > 0)) throw config_error(path + ".connect_timeout_s", "must be > 0");
        if (max_retries < 0) throw config_error(path + ".max_retries", "must be >= 0");
        if (!(backoff_initial_s >= 0) || !(backoff_max_s >= backoff_initial_s))
            throw config_error(path + ".backoff_max_s", "must be >= backoff_initial_s >= 0");
        if (!(max_retry_after_s >= 0)) throw config_error(path + ".max_retry_after_s", "must be >= 0");
    }
};

/// What happened to the requests of this teacher so far (all runs of `generate`).
struct OpenAIStats {
    std::uint64_t attempts = 0;  ///< HTTP requests sent
    std::uint64_t retries = 0;   ///< attempts after a transient failure
    std::uint64_t connection_errors = 0;
    std::uint64_t timeouts = 0;
    std::uint64_t rate_limited = 0;   ///< 429
    std::uint64_t server_errors = 0;  ///< 5xx, 408, 413
    std::uint64_t malformed = 0;      ///< 200 with a body that is not a chat completion
    std::uint64_t failed = 0;         ///< requests given up on
    TokenMapping mapping{};           ///< how the answers' tokens mapped onto the tokenizer (summed)
};

/// A teacher behind an OpenAI-compatible endpoint (see the file comment).
/// @tparam Tokenizer the student's tokenizer, when the endpoint's model shares it (then top-k
///         log-probabilities are mapped onto it); `void` for text only.
template <class Tokenizer = void>
class OpenAI {
public:
    static constexpr bool maps_logprobs = !std::is_void_v<Tokenizer>;
    static constexpr auto provides = signal::sampled_tokens<maps_logprobs>;
    /// Every request stands alone.
    static constexpr bool batch_invariant = true;
    using tokenizer_type = std::conditional_t<maps_logprobs, Tokenizer, void>;
    /// What holds the tokenizer (an unused placeholder for a text-only teacher).
    using tokenizer_storage = std::conditional_t<maps_logprobs, Tokenizer, int>;

    /// Checks the config and reads the API key from the environment; with a tokenizer, reads the
    /// one `tokenizer` names. Throws config_error naming the field or the environment variable (never
    /// its value); io_error / format_error for a tokenizer file that cannot be read.
    explicit OpenAI(OpenAIConfig config) : OpenAI(std::move(config), nullptr) {}

    /// As above, with the endpoint's tokenizer already loaded (`config.tokenizer` still names it, for
    /// the record).
    OpenAI(OpenAIConfig config, std::shared_ptr<const tokenizer_storage> tokenizer) : cfg_(std::move(config)) {
        cfg_.validate();
        // base_url = origin [path prefix] [?query]; the query (e.g. Azure's api-version) follows the route.
        const auto query_at = cfg_.base_url.find('?');
        const std::string query = query_at == std::string::npos ? std::string() : cfg_.base_url.substr(query_at);
        const std::string url = cfg_.base_url.substr(0, query_at);
        const auto scheme = url.find("://");
        const auto slash = url.find('/', scheme + 3);
        origin_ = url.substr(0, slash);
        path_ = (slash == std::string::npos ? std::string() : url.substr(slash));
        while (!path_.empty() && path_.back() == '/') path_.pop_back();
        path_ += "/chat/completions" + query;
        if (!cfg_.api_key_env.empty()) {
            const char* key = std::getenv(cfg_.api_key_env.c_str());
            if (!key || !*key)
                throw config_error("teacher.api_key_env",
                                   "the environment variable " + cfg_.api_key_env + " is not set or empty");
            key_ = key;
        }
        if constexpr (maps_logprobs) {
            if constexpr (requires { Tokenizer::id(); }) {  // a tokenizer without a file (byte-v1)
                if (cfg_.tokenizer != Tokenizer::id())
                    throw config_error("teacher.tokenizer",
                                       "is \"" + cfg_.tokenizer + "\", but OpenAI<" + std::string(Tokenizer::id()) +
                                           "> maps log-probabilities onto " + std::string(Tokenizer::id()) +
                                           ": they can be used only when the endpoint's model has that tokenizer "
                                           "(use teacher::OpenAI<> for text only)");
                tok_ = tokenizer ? std::move(tokenizer) : std::make_shared<const Tokenizer>();
            } else {
                if (!tokenizer) tokenizer = load_tokenizer(cfg_.tokenizer);
                tok_ = std::move(tokenizer);
            }
            table_ = std::make_shared<const openai::TokenTable>(*tok_);
        }
    }

    /// The id of the tokenizer the answers' token ids belong to.
    std::string tokenizer_id() const requires maps_logprobs { return std::string(tok_->id()); }

    /// The number of ids of that tokenizer.
    int vocab_size() const requires maps_logprobs { return int(tok_->vocab_size()); }

    /// The endpoint tokenizer's vocabulary, for the Distiller's comparison with the student's.
    data::VocabInfo vocab_info(std::string name) const
        requires(maps_logprobs&& requires(const tokenizer_storage& t) { t.vocab_info(std::string()); }) {
        return tok_->vocab_info(std::move(name));
    }

    /// The endpoint's tokenizer.
    const tokenizer_storage& tokenizer() const requires maps_logprobs { return *tok_; }

    OpenAI(const OpenAI&) = delete;
    OpenAI& operator=(const OpenAI&) = delete;

    /// "openai:" + endpoint + model + what it provides; no key (and no user info or query string of
    /// the URL, where some gateways put credentials).
    std::string fingerprint() const {
        return "openai:" + public_url() + ";model=" + cfg_.model + ";tokens=" + tokens_id();
    }

    /// "openai:<model> at <url>", and "(text only)" when log-probabilities cannot be used.
    std::string name() const {
        return "openai:" + cfg_.model + " at " + public_url() +
               (maps_logprobs ? std::string() : std::string(" (text only: its tokenizer is not the student's)"));
    }

    /// Enough requests to keep every connection busy.
    int batch_size() const noexcept { return 4 * cfg_.concurrency; }

    const OpenAIConfig& config() const noexcept { return cfg_; }

    /// Counts of attempts, retries and failures so far.
    OpenAIStats stats() const {
        std::lock_guard lock(stats_mutex_);
        return stats_;
    }

    /// Sends every request (up to `concurrency` at once) and calls `sink` as each answer arrives.
    /// Throws config_error when the endpoint refuses the key (401/403) or has no such route (404),
    /// and rethrows what `sink` throws; either stops the other requests first.
    void generate(std::span<const Request> requests, const Sampling& sampling, const response_sink& sink) {
        sampling.validate();
        Sampling s = sampling;
        if constexpr (!maps_logprobs) s.top_logprobs = 0;  // nothing could use them
        std::atomic<std::size_t> next{0};
        std::atomic<bool> abort{false};
        std::mutex sink_mutex;
        std::exception_ptr failure;
        auto worker = [&] {
            httplib::Client client = make_client();
            for (;;) {
                const std::size_t i = next.fetch_add(1);
                if (i >= requests.size() || abort) return;
                Response r;
                try {
                    r = answer(client, requests[i], s, abort);
                } catch (...) {
                    std::lock_guard lock(sink_mutex);
                    if (!failure) failure = std::current_exception();
                    abort = true;
                    return;
                }
                std::lock_guard lock(sink_mutex);
                if (abort) return;
                try {
                    sink(i, std::move(r));
                } catch (...) {
                    if (!failure) failure = std::current_exception();
                    abort = true;
                    return;
                }
            }
        };
        const int n = std::max(1, std::min<int>(cfg_.concurrency, int(requests.size())));
        std::vector<std::thread> threads;
        for (int t = 0; t < n; ++t) threads.emplace_back(worker);
        for (auto& t : threads) t.join();
        if (failure) std::rethrow_exception(failure);
    }

private:
    // The base URL without "user:password@", query and fragment: what may appear in files and logs.
    std::string public_url() const {
        std::string url = cfg_.base_url.substr(0, cfg_.base_url.find_first_of("?#"));
        const auto scheme = url.find("://");
        const auto at = url.find('@', scheme + 3), slash = url.find('/', scheme + 3);
        if (at != std::string::npos && (slash == std::string::npos || at < slash))
            url.erase(scheme + 3, at - scheme - 2);
        return url;
    }

    std::string tokens_id() const {
        if constexpr (maps_logprobs)
            return tokenizer_id();
        else
            return "text";
    }

    // The published tokenizer `spec` names, read once (a directory stands for its tokenizer.json).
    static std::shared_ptr<const tokenizer_storage> load_tokenizer(
        const std::string& spec) requires std::is_constructible_v<tokenizer_storage, std::filesystem::path> {
        if (spec.empty())
            throw config_error("teacher.tokenizer",
                               "is required to use the endpoint's log-probabilities: the endpoint model's published "
                               "tokenizer (a tokenizer.json or a directory holding one)");
        std::filesystem::path p = spec;
        std::error_code ec;
        if (std::filesystem::is_directory(p, ec)) p /= "tokenizer.json";
        if (!std::filesystem::is_regular_file(p, ec))
            throw config_error("teacher.tokenizer", "is \"" + spec +
                                                        "\": expected the endpoint model's tokenizer.json or a "
                                                        "directory holding one (" +
                                                        p.string() + " does not exist)");
        return std::make_shared<const tokenizer_storage>(p);
    }

    httplib::Client make_client() const {
        httplib::Client client(origin_);
        auto split = [](double s, auto&& set) {
            const auto us = std::int64_t(s * 1e6);
            set(time_t(us / 1000000), time_t(us % 1000000));
        };
        split(cfg_.connect_timeout_s, [&](time_t a, time_t b) { client.set_connection_timeout(a, b); });
        split(cfg_.request_timeout_s, [&](time_t a, time_t b) { client.set_read_timeout(a, b); });
        split(cfg_.request_timeout_s, [&](time_t a, time_t b) { client.set_write_timeout(a, b); });
        client.set_keep_alive(true);
        if (!key_.empty()) client.set_bearer_token_auth(key_);
        return client;
    }

    // The key must not leave this object, not even inside an error body that echoes a header.
    std::string scrub(std::string text) const {
        if (!key_.empty())
            for (std::size_t at; (at = text.find(key_)) != std::string::npos;) text.replace(at, key_.size(), "***");
        if (text.size() > 300) text = text.substr(0, 300) + "...";
        return text;
    }

    void count(std::uint64_t OpenAIStats::*field, std::uint64_t n = 1) {
        std::lock_guard lock(stats_mutex_);
        stats_.*field += n;
    }

    // Sleeps `seconds` in slices, returning early when the run is aborted.
    static void pause(double seconds, const std::atomic<bool>& abort) {
        using clock = std::chrono::steady_clock;
        const auto until =
            clock::now() + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(seconds));
        while (!abort) {
            const auto left = until - clock::now();
            if (left <= clock::duration::zero()) return;
            std::this_thread::sleep_for(std::min<clock::duration>(std::chrono::milliseconds(20), left));
        }
    }

    // One request with its retries.
    Response answer(httplib::Client& client, const Request& q, const Sampling& s, const std::atomic<bool>& abort) {
        const std::string body = openai::dump(openai::make_request(cfg_.model, q.messages, s, request_seed(s, q)));
        Rng jitter(detail::mix64(0x6a17e5, detail::fnv1a64(q.id)));
        std::string last;
        for (int attempt = 0; attempt <= cfg_.max_retries && !abort; ++attempt) {
            if (attempt > 0) count(&OpenAIStats::retries);
            count(&OpenAIStats::attempts);
            std::optional<double> retry_after;
            auto res = client.Post(path_, body, "application/json");
            if (!res) {
                const auto e = res.error();
                const bool timeout = e == httplib::Error::Read || e == httplib::Error::ConnectionTimeout;
                count(timeout ? &OpenAIStats::timeouts : &OpenAIStats::connection_errors);
                last = "connection error: " + httplib::to_string(e);
            } else if (res->status == 200) {
                try {
                    auto j = nlohmann::json::parse(res->body);
                    auto c = openai::parse_completion(j);
                    if constexpr (maps_logprobs) {
                        if (s.top_logprobs > 0 && c.logprobs.empty() && !c.response.text.empty())
                            return fail("the endpoint returned no logprobs although top_logprobs = " +
                                        std::to_string(s.top_logprobs) + " was asked for (it may not support them)");
                        if (!c.logprobs.empty()) {
                            const auto m = openai::map_logprobs_counted(c.response, c.logprobs, s.top_logprobs, *table_,
                                                                        text_ids(c.response.text), tokenizer_id());
                            std::lock_guard lock(stats_mutex_);
                            stats_.mapping += m;
                        }
                    }
                    return std::move(c.response);
                } catch (const nlohmann::json::exception& e) {
                    count(&OpenAIStats::malformed);
                    last = "malformed response: " + scrub(e.what());
                } catch (const openai::mapping_error& e) {
                    return fail(scrub(e.what()));  // a property of the answer: asking again would not help
                } catch (const openai::protocol_error& e) {
                    count(&OpenAIStats::malformed);
                    last = "malformed response: " + scrub(e.what());
                }
            } else if (openai::retryable_status(res->status)) {
                count(res->status == 429 ? &OpenAIStats::rate_limited : &OpenAIStats::server_errors);
                last = "HTTP " + std::to_string(res->status) + ": " + scrub(error_message(res->body));
                if (res->has_header("Retry-After"))
                    retry_after = openai::parse_retry_after(res->get_header_value("Retry-After"), std::time(nullptr));
            } else if (res->status == 401 || res->status == 403) {
                throw config_error("teacher.api_key_env",
                                   "the endpoint " + cfg_.base_url + " refused the API key" +
                                       (cfg_.api_key_env.empty() ? std::string(" (none was configured)")
                                                                 : " from " + cfg_.api_key_env) +
                                       ": HTTP " + std::to_string(res->status) + ": " +
                                       scrub(error_message(res->body)));
            } else if (res->status == 404) {
                throw config_error("teacher.base_url", "the endpoint answered HTTP 404 for " + origin_ + path_ + ": " +
                                                           scrub(error_message(res->body)) +
                                                           " (check base_url and model)");
            } else {
                return fail("HTTP " + std::to_string(res->status) + ": " + scrub(error_message(res->body)));
            }
            if (attempt == cfg_.max_retries) break;
            double wait = openai::backoff_delay(attempt, cfg_.backoff_initial_s, cfg_.backoff_max_s, jitter);
            if (retry_after) wait = std::max(wait, std::min(*retry_after, cfg_.max_retry_after_s));
            pause(wait, abort);
        }
        return fail(last.empty() ? std::string("aborted")
                                 : last + " (after " + std::to_string(cfg_.max_retries + 1) + " attempts)");
    }

    // The ids the tokenizer gives an answer's text, without added special tokens.
    std::vector<std::int32_t> text_ids(const std::string& text) const requires maps_logprobs {
        if constexpr (requires { tok_->encode(text, false); })
            return tok_->encode(text, false);
        else
            return tok_->encode(text);
    }

    Response fail(std::string why) {
        count(&OpenAIStats::failed);
        return Response::failure(std::move(why));
    }

    // The API's error message from an error body, or the start of the body.
    static std::string error_message(const std::string& body) {
        auto j = nlohmann::json::parse(body, nullptr, false);
        if (!j.is_discarded() && j.is_object() && j.contains("error")) {
            const auto& e = j["error"];
            if (e.is_object() && e.contains("message") && e["message"].is_string())
                return e["message"].get<std::string>();
            if (e.is_string()) return e.get<std::string>();
        }
        return body.substr(0, 200);
    }

    OpenAIConfig cfg_;
    std::shared_ptr<const tokenizer_storage> tok_;
    std::shared_ptr<const openai::TokenTable> table_;
    std::string origin_, path_;
    std::string key_;
    mutable std::mutex stats_mutex_;
    OpenAIStats stats_;
};

}  // namespace distill::teacher

BOOST_HANA_ADAPT_STRUCT(distill::teacher::OpenAIConfig, base_url, model, api_key_env, tokenizer, concurrency,
                        request_timeout_s, connect_timeout_s, max_retries, backoff_initial_s, backoff_max_s,
                        max_retry_after_s);
