#pragma once
/// @file model.hpp
/// `teacher::Model<Arch>`: a teacher running in this process, loaded from a safetensors checkpoint
/// whose metadata carries its config (`io::save_weights` writes such files) or from a Hugging Face
/// checkpoint directory (`io::hf`: GPT-2, Llama, Qwen2, Phi-3), with its tokenizer: the byte tokenizer,
/// or a published one (`tokenizer`, or the tokenizer.json of the Hugging Face directory) with its chat
/// template (data/load_chat_tokenizer.hpp).
///
/// It answers prompts by batched generation with a KV cache (greedy, temperature, top-k, top-p, with
/// a seed; max new tokens; stop tokens and stop sequences) and reports per generated token the
/// top-k log-probabilities of its full distribution; a `token_observer` watches each token as it is
/// generated and can stop a request (a streaming server), and `generate_tokens` takes prompts as
/// token ids, without the chat template (raw text completions). For online distillation it runs
/// teacher-forced forwards whose logits, hidden states, attention maps and q|k|v projections the loss
/// terms read. It provides every signal.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>
#include <nlohmann/json.hpp>

#include "distill/data/chat.hpp"
#include "distill/data/load_chat_tokenizer.hpp"
#include "distill/detail/hash.hpp"
#include "distill/detail/rng.hpp"
#include "distill/device/cpu.hpp"
#include "distill/error.hpp"
#include "distill/io/hf.hpp"
#include "distill/io/reflect.hpp"
#include "distill/io/weights.hpp"
#include "distill/signals.hpp"
#include "distill/teacher.hpp"
#include "distill/teacher/sampler.hpp"

namespace distill::teacher {

/// Where an in-process teacher comes from and how it batches. Keys are the JSON keys of a job's
/// `teacher` object of kind "model".
struct ModelConfig {
    std::string weights{};  ///< safetensors checkpoint, its config in the metadata; or a Hugging Face
                            ///< checkpoint directory (config.json + model.safetensors or shards)
    std::string config{};   ///< optional JSON file with the architecture config ("" = the metadata's)
    int max_batch = 16;     ///< sequences generated (or forwarded) at once
    /// The positions the network is built for, which size its activations and KV cache: 0 = the
    /// checkpoint's; fewer only for a rotary model (a checkpoint of 32 768 positions, answering
    /// prompts of a few hundred tokens, need not hold memory for 32 768).
    int context_length = 0;
    /// false: the network keeps only its logits (student::activations::inference: one layer's working
    /// memory, no hidden states, attention maps or q|k|v), for losses that read the teacher's logits
    /// and tokens alone — the `distill` command sets it so when the job's loss allows.
    bool keep_activations = true;
    /// "byte", or a tokenizer.json (or a directory holding one); "" = the tokenizer.json of a Hugging
    /// Face `weights` directory when it has one, else the byte tokenizer.
    std::string tokenizer{};
    data::ChatTemplateConfig chat_template{};  ///< how prompts become tokens

    /// Throws `config_error` naming the field.
    void validate(const std::string& path = "teacher") const {
        if (weights.empty())
            throw config_error(path + ".weights", "is required (a .safetensors file or a Hugging Face directory)");
        if (max_batch < 1) throw config_error(path + ".max_batch", "must be >= 1, got " + std::to_string(max_batch));
        if (context_length < 0)
            throw config_error(path + ".context_length",
                               "must be >= 0 (0: the checkpoint's), got " + std::to_string(context_length));
    }
};

/// A prompt already in token ids (a raw text completion, no chat template); `id` seeds its draws as
/// `Request::id` does.
struct TokenPrompt {
    std::string id{};
    std::vector<std::int32_t> ids{};
};

/// Watches generation token by token (serving streamed answers): `observe(i, answer, finished)` runs
/// after every token request `i` (its index in the span given to generate) gets, with its answer so
/// far — the text decoded so far, where a character still incomplete shows as U+FFFD, the tokens and
/// their log-probabilities. When `finished`, the answer is the final one the sink gets (stop
/// sequence cut). Returning false stops request `i` (a client that went away): it is answered with
/// finish_reason::error "cancelled" while the others of its batch go on.
using token_observer = std::function<bool(std::size_t, const Response&, bool)>;

/// An in-process teacher over a network architecture.
/// @tparam Arch a class template `Arch<T, Device>` with the `student::Transformer` interface (forward,
///         views, `make_cache`/`prefill`/`decode`/`next_logits`, `parameters()`, `config()`).
/// @tparam T scalar type of the network (`float`).
/// @tparam Device where it runs; on a device with its own memory, generation copies each step's
/// next-token logits to the host, where the sampler and the stop rules run.
template <template <class, class> class Arch, class T = float, class Device = device::Cpu>
class Model {
public:
    using network_type = Arch<T, Device>;
    using arch_config = typename network_type::config_type;
    using scalar_type = T;
    using device_type = Device;

    static constexpr auto provides = boost::hana::make_set(signal::tokens, signal::topk_logprobs, signal::logits,
                                                           signal::hidden_states, signal::attentions, signal::qkv);
    /// Batched float arithmetic may round differently for other batch compositions.
    static constexpr bool batch_invariant = false;

    /// Loads the checkpoint `config.weights` (and `config.config` when given). Throws io_error /
    /// format_error naming the file, config_error naming the field.
    explicit Model(const ModelConfig& config, Device device = Device{})
        : cfg_(validated(config)),
          template_(load_template(cfg_)),
          net_(frozen(sized(load_arch_config(cfg_), cfg_)), cfg_.max_batch, device, network_mode(cfg_)),
          cache_(net_.make_cache(cfg_.max_batch)) {
        load_weights();
    }

    /// Loads the checkpoint `config.weights` to answer through `chat_template` instead of the
    /// tokenizer `config` names (a Distiller's student, measured with the student's tokenizer).
    Model(const ModelConfig& config, data::ChatTokenizer chat_template, Device device = Device{})
        : cfg_(validated(config)),
          template_(std::move(chat_template)),
          net_(frozen(sized(load_arch_config(cfg_), cfg_)), cfg_.max_batch, device, network_mode(cfg_)),
          cache_(net_.make_cache(cfg_.max_batch)) {
        load_weights();
    }

    /// A teacher over a network built in memory (tests, a freshly trained model): parameters start
    /// at zero; set them through `network()` (`write_base` where its matrices are stored in bf16). The fingerprint
    /// follows the current parameters.
    Model(const arch_config& arch, const ModelConfig& config, Device device = Device{})
        : cfg_(config),
          template_(load_template(cfg_)),
          net_(frozen(arch), cfg_.max_batch, device, network_mode(cfg_)),
          cache_(net_.make_cache(cfg_.max_batch)) {
        if (cfg_.max_batch < 1)
            throw config_error("teacher.max_batch", "must be >= 1, got " + std::to_string(cfg_.max_batch));
        source_ = "in-memory";
        check_vocabulary();
    }

    /// The network, for online distillation and for setting weights.
    network_type& network() noexcept { return net_; }
    const network_type& network() const noexcept { return net_; }
    const ModelConfig& config() const noexcept { return cfg_; }
    const data::ChatTokenizer& chat_template() const noexcept { return template_; }
    /// The tokenizer its token ids (answers, top-k) belong to.
    std::string tokenizer_id() const { return template_.tokenizer_id(); }
    /// The tokenizer.json it reads ("" for the byte tokenizer).
    std::filesystem::path tokenizer_file() const { return data::tokenizer_file(tokenizer_of(cfg_)); }

    /// Hash of the architecture config and every parameter's name and bytes, the tokenizer and the
    /// chat template, and a precision other than fp32: two teachers with equal fingerprints answer
    /// identically.
    std::string fingerprint() const {
        std::string fp = "model:sha256=" + network_digest("distill.teacher.model.v1\n", net_) + ";" + template_.id();
        if (device::compute_precision_of(net_.device()) == device::precision::bf16) fp += ";precision=bf16";
        return fp;
    }

    /// "model:<file> (<n> parameters)".
    std::string name() const {
        return "model:" + source_ + " (" + std::to_string(net_.config().parameter_count()) + " parameters)";
    }

    /// Ids the network can produce (its embedding rows, at least the tokenizer's ids).
    int vocab_size() const noexcept { return net_.config().vocab_size; }

    /// Requests handed over at once by the generate stage: one batch.
    int batch_size() const noexcept { return cfg_.max_batch; }

    /// Answers `requests` in batches of up to max_batch (see the file comment). A prompt that does not
    /// leave room for one answer token in the context is answered with finish_reason::error.
    /// `observe`, when given, watches every token as it is generated (`token_observer`).
    void generate(std::span<const Request> requests, const Sampling& sampling, const response_sink& sink,
                  const token_observer& observe = {}) {
        check(sampling);
        for (std::size_t first = 0; first < requests.size(); first += std::size_t(cfg_.max_batch)) {
            const std::size_t n = std::min<std::size_t>(std::size_t(cfg_.max_batch), requests.size() - first);
            std::vector<Prompt> batch;
            for (std::size_t i = first; i < first + n; ++i)
                batch.push_back(
                    {i, template_.encode_prompt(requests[i].messages), request_seed(sampling, requests[i])});
            generate_batch(batch, sampling, sink, observe);
        }
    }

    /// Answers prompts given as token ids, as `generate` does but without the chat template (raw
    /// text completions: `chat_template().encode_text`). Each is seeded by its id as a Request is.
    void generate_tokens(std::span<const TokenPrompt> prompts, const Sampling& sampling, const response_sink& sink,
                         const token_observer& observe = {}) {
        check(sampling);
        const int V = net_.config().vocab_size;
        for (std::size_t first = 0; first < prompts.size(); first += std::size_t(cfg_.max_batch)) {
            const std::size_t n = std::min<std::size_t>(std::size_t(cfg_.max_batch), prompts.size() - first);
            std::vector<Prompt> batch;
            for (std::size_t i = first; i < first + n; ++i) {
                for (std::int32_t t : prompts[i].ids)
                    if (t < 0 || t >= V)
                        throw config_error("prompt", "token id " + std::to_string(t) +
                                                         " is outside the vocabulary of " + std::to_string(V));
                batch.push_back({i, prompts[i].ids, request_seed(sampling, Request{.id = prompts[i].id})});
            }
            generate_batch(batch, sampling, sink, observe);
        }
    }

    // ---- teacher-forced forward (online distillation) ----------------------------------------------

    /// Runs the network on tokens(B,T) (B <= max_batch); the views below then hold its outputs.
    void forward(const std::int32_t* tokens, int B, int Tn) { net_.forward(tokens, B, Tn); }
    /// (B,T,V) logits of the last forward.
    Tensor<T> logits() const { return net_.logits(); }
    /// Whether the views below exist (`ModelConfig::keep_activations`).
    bool keeps_activations() const noexcept { return net_.keeps_activations(); }
    /// n_layers + 1 (embedding output, each block, final LayerNorm).
    int hidden_state_count() const noexcept { return net_.hidden_state_count(); }
    /// (B,T,C) hidden state i of the last forward.
    Tensor<T> hidden_state(int i) const { return net_.hidden_state(i); }
    /// (B,H,T,T) attention probabilities of layer l of the last forward.
    Tensor<T> attention(int l) const { return net_.attention(l); }
    /// (B,T,(H+2Hkv)hs) q|k|v projections of layer l of the last forward.
    Tensor<T> qkv(int l) const { return net_.qkv(l); }

private:
    // A prompt in ids with the seed of its draws; `request` indexes the span given to generate().
    struct Prompt {
        std::size_t request = 0;
        std::vector<std::int32_t> ids;
        std::uint64_t seed = 0;
    };

    void check(const Sampling& sampling) const {
        sampling.validate();
        if (sampling.top_logprobs > net_.config().vocab_size)
            throw config_error("generation.top_logprobs",
                               "exceeds the vocabulary of " + std::to_string(net_.config().vocab_size));
    }

    // Everything one sequence of a batch accumulates while it is generated.
    struct Sequence {
        std::size_t request = 0;           // index into the span given to generate()
        std::vector<std::int32_t> prompt;  // prompt ids
        Rng rng;
        Response out;
        std::vector<std::size_t> text_end;  // out.text.size() after each token, for stop-sequence trimming
        bool done = false;
    };

    static const ModelConfig& validated(const ModelConfig& c) {
        c.validate();
        return c;
    }

    // The checkpoint's architecture built for `context_length` positions (a rotary model only).
    static arch_config sized(arch_config a, const ModelConfig& c) {
        if (c.context_length == 0) return a;
        if constexpr (requires { a.rope(); }) {
            if (!a.rope() || c.context_length > a.context_length)
                throw config_error("teacher.context_length",
                                   "is " + std::to_string(c.context_length) + ", but the checkpoint's model has " +
                                       (a.rope() ? "only " + std::to_string(a.context_length) + " positions"
                                                 : "learned positions, whose count it must keep (" +
                                                       std::to_string(a.context_length) + "); leave it 0"));
            a.context_length = c.context_length;
            return a;
        }
        throw config_error("teacher.context_length", "applies to rotary Transformer teachers; leave it 0");
    }

    // A teacher's network is never trained: under bf16 storage its matrices are held in bf16 alone
    // even when it keeps activations (TransformerConfig::frozen).
    static arch_config frozen(arch_config a) {
        if constexpr (requires { a.frozen; }) a.frozen = true;
        return a;
    }

    static student::activations network_mode(const ModelConfig& c) {
        return c.keep_activations ? student::activations::training : student::activations::inference;
    }

    static bool is_hf(const ModelConfig& c) { return std::filesystem::is_directory(c.weights); }

    // What `tokenizer` stands for: as given, or the Hugging Face directory holding a tokenizer.json.
    static std::string tokenizer_of(const ModelConfig& c) {
        if (c.tokenizer.empty() && is_hf(c) &&
            std::filesystem::exists(std::filesystem::path(c.weights) / "tokenizer.json"))
            return c.weights;
        return c.tokenizer;
    }

    static data::ChatTokenizer load_template(const ModelConfig& c) {
        return data::load_chat_tokenizer(tokenizer_of(c), c.chat_template,
                                         c.tokenizer.empty() ? "teacher.weights" : "teacher.tokenizer");
    }

    static arch_config load_arch_config(const ModelConfig& c) {
        if (is_hf(c)) {
            if (!c.config.empty())
                throw config_error("teacher.config",
                                   "must be empty for a Hugging Face directory (its config.json is used)");
            return io::hf::checked_transformer_config(io::hf::Directory(c.weights));
        }
        if (c.config.empty()) {
            io::safetensors_file file(c.weights);
            return io::load_weights_config<arch_config>(file);
        }
        std::ifstream in(c.config);
        if (!in) throw io_error(c.config, "cannot open for reading");
        nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
        if (j.is_discarded()) throw format_error(c.config, 0, "not valid JSON");
        arch_config a{};
        try {
            io::from_json(j, a, "");
            a.validate("config");
        } catch (const config_error& e) {
            throw format_error(c.config, 0, e.what());
        }
        io::check_parameter_count(io::safetensors_file(c.weights), a);  // before the network is laid out
        return a;
    }

    void load_weights() {
        if (is_hf(cfg_))
            io::hf::load(io::hf::Directory(cfg_.weights), net_);
        else
            io::load_weights(io::safetensors_file(cfg_.weights), net_);
        source_ = std::filesystem::path(cfg_.weights).filename().string();
        check_vocabulary();
    }

    void check_vocabulary() const {
        if (net_.config().vocab_size < template_.vocab_size())
            throw config_error("teacher.weights", "the network's vocabulary of " +
                                                      std::to_string(net_.config().vocab_size) +
                                                      " ids is smaller than tokenizer " + template_.tokenizer_id() +
                                                      "'s " + std::to_string(template_.vocab_size()));
    }

    void generate_batch(std::vector<Prompt>& prompts, const Sampling& s, const response_sink& sink,
                        const token_observer& observe) {
        const int V = net_.config().vocab_size, Tmax = net_.config().context_length, k = s.top_logprobs;
        std::vector<Sequence> seqs;
        for (auto& p : prompts) {
            if (int(p.ids.size()) >= Tmax) {
                sink(p.request, Response::failure("prompt of " + std::to_string(p.ids.size()) +
                                                  " tokens leaves no room for an answer in the context of " +
                                                  std::to_string(Tmax) + " tokens"));
                continue;
            }
            if (p.ids.empty()) {
                sink(p.request, Response::failure("the prompt is empty"));
                continue;
            }
            Sequence q;
            q.request = p.request;
            q.prompt = std::move(p.ids);
            q.rng = Rng(p.seed);
            q.out.k = k;
            q.out.usage.prompt_tokens = std::int64_t(q.prompt.size());
            seqs.push_back(std::move(q));
        }
        if (seqs.empty()) return;

        // rows[r] is the sequence in cache row r; the batch shrinks only when it is re-prefilled.
        std::vector<std::size_t> rows(seqs.size());
        for (std::size_t r = 0; r < rows.size(); ++r) rows[r] = r;
        prefill(seqs, rows, /*with_generated=*/false);

        std::vector<std::int32_t> next(rows.size());
        for (;;) {
            const T* logits = next_logits_on_host();  // (B,V)
            bool any_active = false;
            for (std::size_t r = 0; r < rows.size(); ++r) {
                Sequence& q = seqs[rows[r]];
                if (q.done) continue;
                step(q, logits + std::int64_t(r) * V, V, Tmax, s);
                if (observe && !observe(q.request, q.out, q.done) && !q.done) {
                    q.out = Response::failure("cancelled");
                    q.done = true;
                }
                any_active |= !q.done;
            }
            if (!any_active) break;
            // A finished row keeps being fed padding; when one would run past the context, the
            // still-active sequences are re-prefilled into a smaller batch instead.
            bool overflow = false;
            for (std::size_t r = 0; r < rows.size(); ++r)
                overflow |= seqs[rows[r]].done && cache_.length(int(r)) >= Tmax;
            if (overflow) {
                std::vector<std::size_t> active;
                for (std::size_t r : rows)
                    if (!seqs[r].done) active.push_back(r);
                rows = std::move(active);
                prefill(seqs, rows, /*with_generated=*/true);
                next.resize(rows.size());
                continue;
            }
            for (std::size_t r = 0; r < rows.size(); ++r) {
                const Sequence& q = seqs[rows[r]];
                next[r] = q.done ? template_.pad() : q.out.tokens.back();
            }
            net_.decode(cache_, next.data(), int(rows.size()));
        }
        if constexpr (requires { cache_.release_packed(); }) cache_.release_packed();  // held while generating only
        for (auto& q : seqs) sink(q.request, std::move(q.out));
    }

    // The next-token logits (B,V) where the sampler reads them: in place on a host-memory device,
    // else copied into a buffer sized once (the one transfer per decoding step: B x V values).
    const T* next_logits_on_host() {
        const Tensor<T> logits = net_.next_logits();
        if constexpr (Device::memory == memory_space::host) {
            return logits.data();
        } else {
            host_logits_.resize(std::size_t(net_.max_batch()) * std::size_t(net_.config().vocab_size));
            net_.device().copy(host_logits_.data(), logits.data(), sizeof(T) * std::size_t(logits.numel()));
            return host_logits_.data();
        }
    }

    // Prefills cache rows with the sequences `rows` names: their prompts, plus what they generated so
    // far when re-prefilling (then the last generated token is fed here instead of by decode).
    void prefill(std::vector<Sequence>& seqs, const std::vector<std::size_t>& rows, bool with_generated) {
        int Tn = 0;
        std::vector<int> lengths;
        for (std::size_t r : rows) {
            const int n = int(seqs[r].prompt.size() + (with_generated ? seqs[r].out.tokens.size() : 0));
            lengths.push_back(n);
            Tn = std::max(Tn, n);
        }
        std::vector<std::int32_t> tokens(rows.size() * std::size_t(Tn), template_.pad());
        for (std::size_t i = 0; i < rows.size(); ++i) {
            const Sequence& q = seqs[rows[i]];
            std::int32_t* row = tokens.data() + i * std::size_t(Tn);
            std::copy(q.prompt.begin(), q.prompt.end(), row);
            if (with_generated) std::copy(q.out.tokens.begin(), q.out.tokens.end(), row + q.prompt.size());
        }
        cache_.reset();
        net_.prefill(cache_, tokens.data(), lengths.data(), int(rows.size()), Tn);
    }

    // Chooses sequence q's next token from its logits row and applies every stop rule.
    void step(Sequence& q, const T* logits, int V, int Tmax, const Sampling& s) {
        const double lse = log_sum_exp(logits, V);
        const std::int32_t token = sampler_.sample(logits, V, s, q.rng);
        Response& out = q.out;
        out.tokens.push_back(token);
        out.token_logprobs.push_back(static_cast<float>(double(logits[token]) - lse));
        if (s.top_logprobs > 0) {
            const std::size_t at = out.top_ids.size();
            out.top_ids.resize(at + std::size_t(s.top_logprobs));
            out.top_logprobs.resize(at + std::size_t(s.top_logprobs));
            sampler_.top_logprobs(logits, V, s.top_logprobs, lse, out.top_ids.data() + at,
                                  out.top_logprobs.data() + at);
        }
        const std::size_t before = out.text.size();
        // The whole answer is decoded again: a character may span several ids, and a decoder may
        // change a token's text by what precedes it (a leading space, a byte-fallback run).
        out.text = template_.decode(out.tokens);
        q.text_end.push_back(out.text.size());
        out.usage.completion_tokens = std::int64_t(out.tokens.size());

        if (template_.is_stop_token(token)) return finish(q, finish_reason::stop);
        for (const auto& stop : s.stop) {
            // (+4: re-decoding may have completed a character that ended the text before)
            const std::size_t from = before + 1 >= stop.size() + 4 ? before + 1 - stop.size() - 4 : 0;
            const std::size_t at = out.text.find(stop, from);
            if (at == std::string::npos) continue;
            // Drop the tokens that only make up the stop sequence, and the text from it on.
            std::size_t keep = out.tokens.size();
            while (keep > 0 && (keep == 1 ? 0 : q.text_end[keep - 2]) >= at) --keep;
            truncate(out, keep);
            out.text.resize(at);
            return finish(q, finish_reason::stop);
        }
        if (int(out.tokens.size()) >= s.max_new_tokens || int(q.prompt.size() + out.tokens.size()) >= Tmax)
            return finish(q, finish_reason::length);
    }

    static void truncate(Response& out, std::size_t n) {
        out.tokens.resize(n);
        out.token_logprobs.resize(n);
        out.top_ids.resize(n * std::size_t(out.k));
        out.top_logprobs.resize(n * std::size_t(out.k));
        out.usage.completion_tokens = std::int64_t(n);
    }

    static void finish(Sequence& q, finish_reason why) {
        q.done = true;
        q.out.finish = why;
    }

    ModelConfig cfg_;
    data::ChatTokenizer template_;
    network_type net_;
    decltype(std::declval<network_type&>().make_cache(1)) cache_;
    Sampler sampler_;
    std::vector<T> host_logits_;  // next-token logits copied off a device with its own memory
    std::string source_{};
};

}  // namespace distill::teacher

BOOST_HANA_ADAPT_STRUCT(distill::teacher::ModelConfig, weights, config, max_batch, context_length, keep_activations,
                        tokenizer, chat_template);
