#pragma once
/// @file teacher/encoder_model.hpp
/// `teacher::EncoderModel`: a sentence-embedding teacher running in this process — a Hugging Face
/// BERT directory (config.json, model.safetensors, tokenizer.json, optionally sentence-transformers'
/// `1_Pooling/config.json` and `sentence_bert_config.json`, e.g. all-MiniLM-L6-v2) loaded into a
/// `student::Encoder`, with its tokenizer. It is the `embedding_teacher` of the `embedding` task:
/// the Distiller tokenizes every sentence with it (student and teacher read the same ids) and
/// forwards it on every training batch, so loss terms read its pooled embeddings, hidden states and
/// attention maps.
///
/// Needs PCRE2 (link distill::text): the tokenizer is `data::HfTokenizer`.
///
/// @code
/// distill::teacher::EncoderModel<> teacher({.weights = "all-MiniLM-L6-v2"});
/// auto ids = teacher.encode("A sentence.");            // [CLS] … [SEP], truncated to max_length()
/// teacher.forward(ids.data(), 1, int(ids.size()), nullptr);
/// auto embedding = teacher.network().pooled();          // (1, 384)
/// @endcode

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>
#include <nlohmann/json.hpp>

#include "distill/data/hf_tokenizer.hpp"
#include "distill/detail/hash.hpp"
#include "distill/device/cpu.hpp"
#include "distill/error.hpp"
#include "distill/io/hf.hpp"
#include "distill/signals.hpp"
#include "distill/student/encoder.hpp"
#include "distill/teacher.hpp"

namespace distill::teacher {

/// Keys of the job's `teacher` object for the `embedding` task (kind "model").
struct EncoderModelConfig {
    std::string weights{};  ///< the Hugging Face BERT directory
    int max_batch = 32;     ///< sentences forwarded at once
    /// Longest input in tokens, special tokens included; longer sentences are truncated, keeping the
    /// closing special token. 0: the directory's sentence_bert_config.json max_seq_length, else
    /// the model's max_position_embeddings.
    int max_length = 0;

    /// Throws `config_error` naming the field.
    void validate(const std::string& path = "teacher") const {
        if (weights.empty()) throw config_error(path + ".weights", "is required (a Hugging Face BERT directory)");
        if (max_batch < 1) throw config_error(path + ".max_batch", "must be >= 1, got " + std::to_string(max_batch));
        if (max_length < 0 || max_length == 1)
            throw config_error(path + ".max_length",
                               "must be 0 (the model's) or >= 2, got " + std::to_string(max_length));
    }
};

/// An in-process sentence-embedding teacher (see the file comment).
/// @tparam T scalar type of the network. @tparam Device a host-memory device (`device::Cpu`).
template <class T = float, class Device = device::Cpu>
class EncoderModel {
public:
    using network_type = student::Encoder<T, Device>;
    using scalar_type = T;
    using device_type = Device;

    static constexpr auto provides = boost::hana::make_set(signal::pooled, signal::hidden_states, signal::attentions);

    /// Loads `config.weights` and its tokenizer. Throws io_error / format_error naming the file,
    /// config_error naming the field.
    explicit EncoderModel(const EncoderModelConfig& config, Device device = Device{})
        : cfg_(validated(config)),
          dir_(cfg_.weights),
          tokenizer_(load_tokenizer(dir_.directory() / "tokenizer.json")),
          max_length_(resolve_max_length(cfg_, dir_)),
          net_(io::hf::encoder_config(dir_), cfg_.max_batch, max_length_, device) {
        io::hf::load(dir_, net_);
        if (tokenizer_.vocab_size() > net_.config().vocab_size)
            throw config_error("teacher.weights", dir_.directory().string() + ": the tokenizer has " +
                                                      std::to_string(tokenizer_.vocab_size()) +
                                                      " ids, more than the model's vocab_size " +
                                                      std::to_string(net_.config().vocab_size));
    }

    /// The network, for the forward and the loss terms' views.
    network_type& network() noexcept { return net_; }
    const network_type& network() const noexcept { return net_; }
    const EncoderModelConfig& config() const noexcept { return cfg_; }
    const data::HfTokenizer& tokenizer() const noexcept { return tokenizer_; }
    /// The directory the weights, tokenizer and sentence-transformers files come from.
    const std::filesystem::path& directory() const noexcept { return dir_.directory(); }
    /// Longest input in tokens (see `EncoderModelConfig::max_length`).
    int max_length() const noexcept { return max_length_; }
    /// Sentences forwarded at once.
    int max_batch() const noexcept { return cfg_.max_batch; }

    /// `text` as the model reads it: the tokenizer's ids with its special tokens ([CLS] … [SEP]),
    /// truncated to `limit` (default `max_length()`) keeping the closing special token, as
    /// transformers' truncation does.
    std::vector<std::int32_t> encode(std::string_view text, int limit = 0) const {
        const int n = limit > 0 ? std::min(limit, max_length_) : max_length_;
        auto ids = tokenizer_.encode(text, true);
        if (static_cast<int>(ids.size()) > n) {
            const std::int32_t last = ids.back();
            ids.resize(static_cast<std::size_t>(n));
            if (tokenizer_.is_special(last)) ids.back() = last;
        }
        return ids;
    }

    /// Forwards tokens(B,T), right-padded rows of `lengths[b]` tokens (see `student::Encoder::forward`).
    void forward(const std::int32_t* tokens, int B, int Tn, const int* lengths) {
        net_.forward(tokens, B, Tn, lengths);
    }

    /// Hash of the architecture, every parameter and the tokenizer file, and the input length:
    /// equal fingerprints embed every sentence identically.
    std::string fingerprint() const {
        return "encoder:sha256=" + network_digest("distill.teacher.encoder.v1\n", net_) + ";" + tokenizer_.id() +
               ";max_length=" + std::to_string(max_length_);
    }

    /// "encoder:<dir> (<n> parameters)".
    std::string name() const {
        return "encoder:" + dir_.directory().string() + " (" + std::to_string(net_.config().parameter_count()) +
               " parameters)";
    }

private:
    static EncoderModelConfig validated(const EncoderModelConfig& c) {
        c.validate();
        return c;
    }

    // sentence-transformers' tokenizer.json asks for truncation and padding to a fixed length, which
    // data::HfTokenizer refuses rather than ignores; this teacher truncates (`encode`) and the
    // pipeline pads per batch, so both are cleared.
    static data::HfTokenizer load_tokenizer(const std::filesystem::path& file) {
        std::ifstream in(file, std::ios::binary);
        if (!in) throw io_error(file, "cannot open the teacher's tokenizer (a BERT directory holds tokenizer.json)");
        std::stringstream ss;
        ss << in.rdbuf();
        nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
        if (j.is_discarded() || !j.is_object()) throw format_error(file, 0, "not a JSON object");
        j["truncation"] = nullptr;
        j["padding"] = nullptr;
        std::optional<std::string> config;
        if (std::ifstream c(file.parent_path() / "tokenizer_config.json", std::ios::binary); c) {
            std::stringstream cs;
            cs << c.rdbuf();
            config = cs.str();
        }
        return data::HfTokenizer::from_json(j.dump(), config, file.string());
    }

    static int resolve_max_length(const EncoderModelConfig& c, const io::hf::Directory& dir) {
        const int positions = io::hf::encoder_config(dir).context_length;
        int n = c.max_length;
        if (n == 0) {
            n = positions;
            const auto st = dir.directory() / "sentence_bert_config.json";
            if (std::filesystem::exists(st)) {
                const nlohmann::json j = io::hf::detail::read_json(st);
                if (j.contains("max_seq_length") && j["max_seq_length"].is_number_integer())
                    n = std::min(positions, j["max_seq_length"].get<int>());
            }
        }
        if (n > positions)
            throw config_error("teacher.max_length", "is " + std::to_string(n) + ", more than the model's " +
                                                         std::to_string(positions) + " positions");
        return n;
    }

    EncoderModelConfig cfg_;
    io::hf::Directory dir_;
    data::HfTokenizer tokenizer_;
    int max_length_;
    network_type net_;
};

}  // namespace distill::teacher

BOOST_HANA_ADAPT_STRUCT(distill::teacher::EncoderModelConfig, weights, max_batch, max_length);
