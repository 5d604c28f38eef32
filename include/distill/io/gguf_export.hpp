#pragma once
/// @file gguf_export.hpp
/// A decoder student as a GGUF file llama.cpp runs: `io::gguf::save(file, model, options)`.
///
/// The file holds what llama.cpp's own converter (`convert_hf_to_gguf.py`) writes for the same
/// model in transformers' layout (`io::hf::save`), so llama.cpp loads it with its `gpt2`, `llama`,
/// `qwen2` or `phi3` architecture:
/// - metadata: `general.*`, the architecture's hyperparameters (`<arch>.context_length`,
///   `embedding_length`, `block_count`, `feed_forward_length`, `attention.head_count[_kv]`, the norm
///   epsilon, `rope.freq_base`, `rope.dimension_count`, rope scaling) and the tokenizer
///   (`tokenizer.ggml.*`, `tokenizer.chat_template`);
/// - tensors, named as llama.cpp names them (`token_embd`, `blk.N.attn_q`, ...). Llama's q and k
///   rows are permuted from transformers' rotate-half order back to the interleaved pairs llama.cpp's
///   `llama` rope rotates (the converter's `LlamaModel.permute`); Qwen2 and Phi-3 use rotate-half
///   (NEOX) rope in llama.cpp too and are written as they are. Llama 3 rope scaling is the
///   `rope_freqs.weight` factors the converter computes.
/// - tensor types by the converter's rule: norms, biases, 1-D tensors and learned positions stay
///   f32; every other matrix is stored as the requested type, or as `quant::storable`'s fallback
///   when its rows are not a whole number of the type's blocks.
///
/// Tokenizers: the byte tokenizer is written as a byte-level BPE (`gpt2` model) with the 256 byte
/// tokens, no merges and its special tokens as control tokens, so llama.cpp gives the same ids; a
/// Hugging Face byte-level BPE tokenizer.json (GPT-2, Llama 3, Qwen2, SmolLM pre-tokenizers) is
/// written with its tokens, merges, token types, special ids and chat template. A SentencePiece-style
/// tokenizer.json (BPE with byte fallback, '▁' for spaces: Llama 2, Mistral, Phi-3) is written as
/// llama.cpp's `llama` (SPM) vocabulary as the converter writes it without tokenizer.model, but with
/// scores from the merge ranks instead of its placeholder, so that llama.cpp merges in the BPE's
/// order; text handling llama.cpp's SPM tokenizer does not compute is refused (spm_add_space_prefix).
/// `check_exportable` applies save's refusals without writing, so a job fails before it trains.

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <numbers>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/byte_tokenizer.hpp"
#include "distill/error.hpp"
#include "distill/io/gguf.hpp"
#include "distill/io/hf.hpp"
#include "distill/io/quant.hpp"
#include "distill/student/transformer.hpp"

namespace distill::io::gguf {

/// How a student is exported.
struct ExportOptions {
    quant::type type = quant::type::F32;  ///< the type of every matrix (see the file comment)
    std::string model_type{};             ///< "" = io::hf::family_of(config); "phi3" asks for Phi-3's fused layout
    std::filesystem::path tokenizer{};    ///< the student's tokenizer.json (tokenizer_config.json beside it); "" = byte
    bool add_bos = true;                  ///< the byte tokenizer's: prompts start with <|bos|>
    std::string name = "distill student";  ///< general.name
};

/// The type `requested` gives the tensor `name` of `shape` (outermost first) under the converter's
/// rule and distill's fallbacks (file comment).
inline quant::type tensor_type(const std::string& name, const std::vector<std::int64_t>& shape, quant::type requested) {
    if (shape.size() < 2 || name.ends_with("_norm.weight") || !name.ends_with(".weight") ||
        name == "position_embd.weight" || name == "rope_freqs.weight")
        return quant::type::F32;
    return quant::storable(requested, shape.back());
}

/// llama.cpp's `general.file_type` (llama_ftype) for a file of `t`'s matrices.
inline std::uint32_t file_type(quant::type t) {
    switch (t) {
        case quant::type::F32:
            return 0;
        case quant::type::F16:
            return 1;
        case quant::type::Q4_0:
            return 2;
        case quant::type::Q8_0:
            return 7;
        case quant::type::Q4_K:
            return 14;  // MOSTLY_Q4_K_S: every matrix Q4_K
        case quant::type::BF16:
            return 32;
    }
    return 0;
}

namespace detail {

// GPT-2's bytes_to_unicode: the printable character byte-level BPE vocabularies use for each byte.
inline std::string byte_token(unsigned b) {
    unsigned cp = b;
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    if (!printable) {
        unsigned n = 0;  // the rank of b among the non-printable bytes, mapped above 255
        for (unsigned c = 0; c < b; ++c)
            if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255))) ++n;
        cp = 256 + n;
    }
    std::string s;
    if (cp < 0x80) {
        s.push_back(char(cp));
    } else {
        s.push_back(char(0xC0 | (cp >> 6)));
        s.push_back(char(0x80 | (cp & 0x3F)));
    }
    return s;
}

inline nlohmann::json read_json_file(const std::filesystem::path& p) {
    std::ifstream in(p);
    if (!in) throw io_error(p, "cannot open");
    try {
        return nlohmann::json::parse(in);
    } catch (const nlohmann::json::parse_error& e) {
        throw format_error(p, 0, std::string("is not valid JSON: ") + e.what());
    }
}

// The text of a special token in tokenizer_config.json: a string or an AddedToken object.
inline std::string token_text(const nlohmann::json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
    return {};
}

// llama.cpp's name for a byte-level BPE tokenizer's pre-tokenizer (its regex), from tokenizer.json.
inline std::string pre_tokenizer_name(const nlohmann::json& tok, const std::filesystem::path& file) {
    static const std::map<std::string, std::string, std::less<>> by_regex = {
        {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
         "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
         "\\s+(?!\\S)|\\s+",
         "llama-bpe"},
        {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
         "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
         "\\s+(?!\\S)|\\s+",
         "qwen2"}};
    const nlohmann::json& pre = tok.contains("pre_tokenizer") ? tok["pre_tokenizer"] : nlohmann::json();
    auto is = [](const nlohmann::json& p, const char* type) { return p.is_object() && p.value("type", "") == type; };
    if (is(pre, "ByteLevel") && pre.value("use_regex", true)) return "gpt-2";
    if (is(pre, "Sequence") && pre.contains("pretokenizers") && pre["pretokenizers"].size() == 2) {
        const auto& a = pre["pretokenizers"][0];
        const auto& b = pre["pretokenizers"][1];
        if (is(a, "Split") && a.contains("pattern") && a["pattern"].contains("Regex") && is(b, "ByteLevel")) {
            if (auto it = by_regex.find(a["pattern"]["Regex"].get<std::string>()); it != by_regex.end())
                return it->second;
        }
        if (is(a, "Digits") && a.value("individual_digits", false) && is(b, "ByteLevel")) return "smollm";
    }
    throw config_error(file.string(), "its pre_tokenizer " + pre.dump().substr(0, 200) +
                                          " is not one llama.cpp names; GGUF export knows GPT-2's, Llama 3's, "
                                          "Qwen2's and SmolLM's byte-level pre-tokenizers");
}

// The vocabulary as llama.cpp's tables hold it: each row's text and token type, by id.
struct Vocabulary {
    std::vector<std::string> tokens;
    std::vector<std::int32_t> types;
    std::map<std::string, std::int64_t, std::less<>> ids;  // text -> id, of the tokenizer's own tokens
};

// llama.cpp's token types (llama_token_type).
enum token_type : std::int32_t { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };

// The texts tokenizer_config.json names as special tokens (transformers' all_special_tokens): the
// bos/eos/unk/sep/pad/cls/mask tokens and additional_special_tokens (extra_special_tokens).
inline std::set<std::string, std::less<>> named_special_tokens(const nlohmann::json& config) {
    std::set<std::string, std::less<>> names;
    for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"})
        if (config.contains(key))
            if (auto t = token_text(config[key]); !t.empty()) names.insert(std::move(t));
    for (const char* key : {"additional_special_tokens", "extra_special_tokens"})
        if (config.contains(key) && (config[key].is_array() || config[key].is_object()))
            for (const auto& v : config[key])
                if (auto t = token_text(v); !t.empty()) names.insert(std::move(t));
    return names;
}

// Whether a tokenizer.json is SentencePiece-style: BPE with byte fallback, spaces as '▁'.
inline bool sentencepiece_style(const nlohmann::json& tok) {
    const std::string dumped = tok.dump();
    return (tok.contains("model") && tok["model"].is_object() && tok["model"].value("byte_fallback", false)) ||
           dumped.find("\"type\":\"Metaspace\"") != std::string::npos ||
           dumped.find("\"type\":\"ByteFallback\"") != std::string::npos;
}

// Whether llama.cpp's SPM tokenizer computes the tokenizer.json's text handling, which it does for
// Llama 2's form: normalizer Prepend("▁") + Replace(" ", "▁") without a pre-tokenizer (a '▁' before
// every text, llama.cpp's add_space_prefix), and for the same without Prepend or with a Metaspace
// pre-tokenizer that neither splits nor prepends. Metaspace's prepend schemes "first" and "always"
// are refused: they put no '▁' before text that starts with a space ("always", "first") or follows
// a special token ("first"), where llama.cpp does. Returns add_space_prefix.
inline bool spm_add_space_prefix(const nlohmann::json& tok, const std::filesystem::path& file) {
    const std::string space = "\xe2\x96\x81";  // ▁
    auto is = [](const nlohmann::json& p, const char* type) { return p.is_object() && p.value("type", "") == type; };
    bool prepend = false, replaced = false;
    const nlohmann::json norm = tok.contains("normalizer") ? tok["normalizer"] : nlohmann::json();
    const nlohmann::json steps = is(norm, "Sequence") ? norm.value("normalizers", nlohmann::json::array())
                                 : norm.is_null()     ? nlohmann::json::array()
                                                      : nlohmann::json::array({norm});
    for (const auto& n : steps) {
        if (is(n, "Prepend") && n.value("prepend", "") == space) {
            prepend = true;
        } else if (is(n, "Replace") && n.contains("pattern") && n["pattern"].value("String", "") == " " &&
                   n.value("content", "") == space) {
            replaced = true;
        } else {
            throw config_error(file.string(), "its normalizer step " + n.dump().substr(0, 200) +
                                                  " is not one llama.cpp's SentencePiece tokenizer computes; GGUF "
                                                  "export knows Prepend(\"▁\") and Replace(\" \", \"▁\")");
        }
    }
    const nlohmann::json pre = tok.contains("pre_tokenizer") ? tok["pre_tokenizer"] : nlohmann::json();
    if (is(pre, "Metaspace")) {
        if (pre.value("replacement", space) != space || pre.value("split", true))
            throw config_error(file.string(), "has a Metaspace pre-tokenizer " + pre.dump() +
                                                  "; llama.cpp's SentencePiece tokenizer computes the one with "
                                                  "replacement \"▁\" and split false (Llama 2's)");
        const std::string scheme = pre.contains("prepend_scheme")
                                       ? pre.value("prepend_scheme", "always")
                                       : (pre.value("add_prefix_space", true) ? "always" : "never");
        if (scheme != "never")
            throw config_error(file.string(),
                               "has a Metaspace pre-tokenizer with prepend_scheme \"" + scheme +
                                   "\", which puts no \"▁\" before text that starts with a space" +
                                   (scheme == "first" ? " or follows a special token" : "") +
                                   "; llama.cpp's SentencePiece tokenizer does, so its ids would differ (Llama 2's "
                                   "form, normalizer Prepend(\"▁\") + Replace(\" \", \"▁\"), is exported)");
        replaced = true;
    } else if (!pre.is_null()) {
        throw config_error(file.string(), "has the pre-tokenizer " + pre.dump().substr(0, 200) +
                                              "; a SentencePiece-style tokenizer for llama.cpp has none or Metaspace");
    }
    if (!replaced)
        throw config_error(file.string(),
                           "keeps spaces as spaces, but llama.cpp's SentencePiece tokenizer turns "
                           "them into \"▁\" (Replace(\" \", \"▁\") or Metaspace)");
    return prepend;
}

// A SentencePiece-style tokenizer.json as llama.cpp's `llama` (SPM) vocabulary, with the texts and
// token types llama.cpp's converter writes for it (gguf-py's LlamaHfVocab): the model's vocabulary
// by id (<0xNN> byte tokens BYTE, the tokens tokenizer_config.json names CONTROL, the rest NORMAL),
// then the added tokens past it (CONTROL when named, else USER_DEFINED). The converter's scores
// are a placeholder (-1000 for all), with which llama.cpp merges left to right; these make its
// merges the BPE's: a token some merge yields scores -(1 + the rank of the first such merge), every
// other token -(1 + the number of merges), below all (docs/deployment.md).
inline Vocabulary spm_vocabulary(Writer& w, const nlohmann::json& tok, const nlohmann::json& config,
                                 const std::filesystem::path& file, std::int64_t rows) {
    const nlohmann::json& model = tok["model"];
    const bool add_space_prefix = spm_add_space_prefix(tok, file);
    if (model.value("ignore_merges", false))
        throw config_error(file.string(), "sets ignore_merges, which llama.cpp's SentencePiece tokenizer does not do");
    const auto& vocab = model.at("vocab");
    for (unsigned b = 0; b < 256; ++b) {  // llama.cpp's byte fallback looks every byte up
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        if (!vocab.contains(name))
            throw config_error(file.string(), std::string("has byte fallback but no byte token ") + name +
                                                  "; llama.cpp's SentencePiece tokenizer needs all 256");
    }
    Vocabulary v;
    auto place = [&](std::int64_t id, const std::string& text, std::int32_t type) {
        if (id < 0) throw format_error(file, 0, "has a negative token id");
        if (id >= rows)
            throw config_error(file.string(), "has token id " + std::to_string(id) + " (" + text +
                                                  "), but the model has only " + std::to_string(rows) +
                                                  " embedding rows");
        if (std::int64_t(v.tokens.size()) <= id) {
            v.tokens.resize(std::size_t(id) + 1);
            v.types.resize(std::size_t(id) + 1, 0);
        }
        v.tokens[std::size_t(id)] = text;
        v.types[std::size_t(id)] = type;
        v.ids[text] = id;
    };
    const auto names = named_special_tokens(config);
    std::map<std::int64_t, std::string> added;
    if (tok.contains("added_tokens"))
        for (const auto& a : tok["added_tokens"]) added[a.at("id").get<std::int64_t>()] = a.at("content");
    const auto base = std::int64_t(vocab.size());
    for (const auto& [text, id_json] : vocab.items()) {
        const auto id = id_json.get<std::int64_t>();
        const auto a = added.find(id);
        const std::string& t = a != added.end() ? a->second : text;  // transformers' get_vocab(): the added text
        const bool is_byte = t.size() == 6 && t.starts_with("<0x") && t.ends_with(">") &&
                             std::isxdigit(static_cast<unsigned char>(t[3])) &&
                             std::isxdigit(static_cast<unsigned char>(t[4]));
        place(id, t, is_byte ? byte : names.contains(t) ? control : normal);
    }
    for (const auto& [id, text] : added)
        if (id >= base) place(id, text, names.contains(text) ? control : user_defined);

    std::map<std::string, std::int64_t, std::less<>> rank;  // a token's first merge
    std::int64_t n_merges = 0;
    for (const auto& m : model.at("merges")) {
        std::string joined;
        if (m.is_array()) {
            joined = m.at(0).get<std::string>() + m.at(1).get<std::string>();
        } else {
            joined = m.get<std::string>();
            if (const auto sp = joined.find(' '); sp != std::string::npos) joined.erase(sp, 1);
        }
        rank.emplace(std::move(joined), n_merges++);
    }
    v.tokens.resize(std::size_t(rows));
    v.types.resize(std::size_t(rows), 0);
    nlohmann::json scores = nlohmann::json::array();
    for (std::size_t i = 0; i < v.tokens.size(); ++i) {
        if (v.types[i] == 0) {  // rows no token uses, as the converter pads
            v.tokens[i] = "[PAD" + std::to_string(i) + "]";
            v.types[i] = unused;
        }
        const auto r = rank.find(v.tokens[i]);
        scores.push_back(float(-(1 + (r != rank.end() ? r->second : n_merges))));
    }
    w.set("tokenizer.ggml.model", value_type::string, "llama");
    w.set("tokenizer.ggml.pre", value_type::string, "default");
    w.set_array("tokenizer.ggml.tokens", value_type::string, v.tokens);
    w.set_array("tokenizer.ggml.scores", value_type::f32, std::move(scores));
    w.set_array("tokenizer.ggml.token_type", value_type::i32, v.types);
    w.set("tokenizer.ggml.add_space_prefix", value_type::boolean, add_space_prefix);
    return v;
}

// A byte-level BPE tokenizer.json as llama.cpp's `gpt2` vocabulary: tokens, token types and merges.
inline Vocabulary byte_level_vocabulary(Writer& w, const nlohmann::json& tok, const std::filesystem::path& file,
                                        std::int64_t rows) {
    const nlohmann::json& model = tok["model"];
    const std::string pre = pre_tokenizer_name(tok, file);
    Vocabulary v;
    auto& tokens = v.tokens;
    auto& types = v.types;
    auto& ids = v.ids;
    auto place = [&](std::int64_t id, std::string text, std::int32_t type) {
        if (id < 0) throw format_error(file, 0, "has a negative token id");
        if (id >= rows)
            throw config_error(file.string(), "has token id " + std::to_string(id) + " (" + text +
                                                  "), but the model has only " + std::to_string(rows) +
                                                  " embedding rows");
        if (std::int64_t(tokens.size()) <= id) {
            tokens.resize(std::size_t(id) + 1);
            types.resize(std::size_t(id) + 1, 0);
        }
        tokens[std::size_t(id)] = std::move(text);
        types[std::size_t(id)] = type;
    };
    for (const auto& [text, id] : model.at("vocab").items()) {
        place(id.get<std::int64_t>(), text, 1);  // normal
        ids[text] = id.get<std::int64_t>();
    }
    if (tok.contains("added_tokens"))
        for (const auto& a : tok["added_tokens"]) {
            const auto id = a.at("id").get<std::int64_t>();
            place(id, a.at("content").get<std::string>(), a.value("special", false) ? 3 : 4);  // control, user
            ids[a.at("content").get<std::string>()] = id;
        }
    tokens.resize(std::size_t(rows));
    types.resize(std::size_t(rows), 0);
    for (std::size_t i = 0; i < tokens.size(); ++i)
        if (types[i] == 0) {  // rows no token uses: the converter's "[PAD<i>]", unused
            tokens[i] = "[PAD" + std::to_string(i) + "]";
            types[i] = 5;
        }
    nlohmann::json merges = nlohmann::json::array();
    for (const auto& m : model.at("merges"))
        merges.push_back(m.is_array() ? m[0].get<std::string>() + " " + m[1].get<std::string>() : m.get<std::string>());

    w.set("tokenizer.ggml.model", value_type::string, "gpt2");
    w.set("tokenizer.ggml.pre", value_type::string, pre);
    w.set_array("tokenizer.ggml.tokens", value_type::string, tokens);
    w.set_array("tokenizer.ggml.token_type", value_type::i32, types);
    w.set_array("tokenizer.ggml.merges", value_type::string, std::move(merges));
    return v;
}

// tokenizer.ggml.* and tokenizer.chat_template of a Hugging Face tokenizer.json for a model of
// `rows` embedding rows: byte-level BPE as llama.cpp's `gpt2` vocabulary, SentencePiece-style BPE
// as its `llama` one.
inline void hf_tokenizer_metadata(Writer& w, const std::filesystem::path& file, std::int64_t rows) {
    const nlohmann::json tok = read_json_file(file);
    const std::string kind = tok.contains("model") && tok["model"].is_object() ? tok["model"].value("type", "") : "";
    if (kind != "BPE")
        throw config_error(file.string(), "is a " + (kind.empty() ? std::string("model-less") : kind) +
                                              " tokenizer; GGUF export writes BPE tokenizers (byte-level or "
                                              "SentencePiece-style)");
    const auto config_file = file.parent_path() / "tokenizer_config.json";
    const nlohmann::json config =
        std::filesystem::exists(config_file) ? read_json_file(config_file) : nlohmann::json::object();
    const Vocabulary v = sentencepiece_style(tok) ? spm_vocabulary(w, tok, config, file, rows)
                                                  : byte_level_vocabulary(w, tok, file, rows);
    const auto& ids = v.ids;
    for (const auto& [key, gguf_key] : std::map<std::string, std::string>{{"bos_token", "bos_token_id"},
                                                                          {"eos_token", "eos_token_id"},
                                                                          {"unk_token", "unknown_token_id"},
                                                                          {"pad_token", "padding_token_id"}}) {
        if (!config.contains(key)) continue;
        const std::string text = token_text(config[key]);
        if (text.empty()) continue;
        const auto it = ids.find(text);
        if (it == ids.end())
            throw config_error(config_file.string() + "." + key,
                               "names \"" + text + "\", which is not a token of " + file.string());
        w.set("tokenizer.ggml." + gguf_key, value_type::u32, std::uint32_t(it->second));
    }
    // Whether llama.cpp adds BOS/EOS (and a separator between pairs), read as the converter reads it:
    // from the post-processor's template, else tokenizer_config's add_bos_token / add_eos_token.
    bool add_bos = config.value("add_bos_token", false), add_eos = config.value("add_eos_token", false);
    const std::string bos = config.contains("bos_token") ? token_text(config["bos_token"]) : "";
    const std::string eos = config.contains("eos_token") ? token_text(config["eos_token"]) : "";
    const nlohmann::json post = tok.contains("post_processor") ? tok["post_processor"] : nlohmann::json();
    const nlohmann::json processors = post.is_object() && post.contains("processors") ? post["processors"]
                                      : post.is_object()                              ? nlohmann::json::array({post})
                                                                                      : nlohmann::json::array();
    auto special = [](const nlohmann::json& piece) -> std::string {
        return piece.contains("SpecialToken") ? piece["SpecialToken"].value("id", "") : "";
    };
    for (const auto& p : processors) {
        if (p.value("type", "") != "TemplateProcessing") continue;
        const auto& single = p.value("single", nlohmann::json::array());
        if (single.size() > 1) {
            add_bos = !special(single.front()).empty() && special(single.front()) == bos;
            add_eos = !special(single.back()).empty() && special(single.back()) == eos;
        }
        auto pair = p.value("pair", nlohmann::json::array());
        if (!pair.empty() && add_bos && special(pair.front()) == bos) pair.erase(pair.begin());
        if (!pair.empty() && add_eos && special(pair.back()) == eos) pair.erase(pair.end() - 1);
        if (pair.size() > 2) {  // A <middle> B: a separator only when the middle is the sep/eos token
            const std::string middle = special(pair[1]);
            const std::string sep = config.contains("sep_token") ? token_text(config["sep_token"]) : "";
            w.set("tokenizer.ggml.add_sep_token", value_type::boolean,
                  !add_eos && !middle.empty() && (middle == sep || middle == eos));
        }
    }
    w.set("tokenizer.ggml.add_bos_token", value_type::boolean, add_bos);
    w.set("tokenizer.ggml.add_eos_token", value_type::boolean, add_eos);
    std::string chat_template;
    if (config.contains("chat_template") && config["chat_template"].is_string()) {
        chat_template = config["chat_template"].get<std::string>();
    } else if (config.contains("chat_template") && config["chat_template"].is_array()) {
        for (const auto& t : config["chat_template"])
            if (t.value("name", "") == "default") chat_template = t.value("template", "");
    } else if (const auto jinja = file.parent_path() / "chat_template.jinja"; std::filesystem::exists(jinja)) {
        std::ifstream in(jinja);
        chat_template.assign(std::istreambuf_iterator<char>(in), {});
    }
    if (!chat_template.empty()) w.set("tokenizer.chat_template", value_type::string, chat_template);
}

// The byte tokenizer as a byte-level BPE without merges (file comment) and its chat template.
inline void byte_tokenizer_metadata(Writer& w, std::int64_t rows, bool add_bos) {
    using data::ByteTokenizer;
    if (rows < ByteTokenizer::vocab_size())
        throw config_error("student.vocab_size", "is " + std::to_string(rows) + ", smaller than the byte tokenizer's " +
                                                     std::to_string(ByteTokenizer::vocab_size()) + " ids");
    const ByteTokenizer tok;
    nlohmann::json tokens = nlohmann::json::array(), types = nlohmann::json::array();
    for (std::int64_t i = 0; i < rows; ++i) {
        if (i < 256) {
            tokens.push_back(byte_token(unsigned(i)));
            types.push_back(1);
        } else if (i < ByteTokenizer::vocab_size()) {
            tokens.push_back(std::string(tok.token_name(std::int32_t(i))));
            types.push_back(3);
        } else {
            tokens.push_back("[PAD" + std::to_string(i) + "]");
            types.push_back(5);
        }
    }
    w.set("tokenizer.ggml.model", value_type::string, "gpt2");
    w.set("tokenizer.ggml.pre", value_type::string, "default");
    w.set_array("tokenizer.ggml.tokens", value_type::string, std::move(tokens));
    w.set_array("tokenizer.ggml.token_type", value_type::i32, std::move(types));
    w.set_array("tokenizer.ggml.merges", value_type::string, nlohmann::json::array());
    w.set("tokenizer.ggml.bos_token_id", value_type::u32, std::uint32_t(ByteTokenizer::bos));
    w.set("tokenizer.ggml.eos_token_id", value_type::u32, std::uint32_t(ByteTokenizer::eos));
    w.set("tokenizer.ggml.eot_token_id", value_type::u32, std::uint32_t(ByteTokenizer::end_of_turn));
    w.set("tokenizer.ggml.padding_token_id", value_type::u32, std::uint32_t(ByteTokenizer::pad));
    w.set("tokenizer.ggml.add_bos_token", value_type::boolean, add_bos);
    // data::ByteChatFormat in Jinja: <|role|>content<|end|> per turn, then <|assistant|>
    w.set("tokenizer.chat_template", value_type::string,
          "{%- for message in messages -%}"
          "{%- if message['role'] == 'system' or message['role'] == 'user' -%}<|{{ message['role'] }}|>"
          "{%- else -%}<|assistant|>{%- endif -%}"
          "{{ message['content'] }}<|end|>"
          "{%- endfor -%}"
          "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}");
}

// Llama's q/k rows: transformers' rotate-half order (per head: the first halves, then the second
// halves of each pair) -> llama.cpp's interleaved pairs; the converter's LlamaModel.permute.
// rows = heads · head_size, each `cols` wide (1 for a bias).
inline std::vector<float> interleave_rope_rows(const float* in, std::int64_t heads, std::int64_t head_size,
                                               std::int64_t cols) {
    std::vector<float> out(std::size_t(heads * head_size * cols));
    const std::int64_t half = head_size / 2;
    for (std::int64_t h = 0; h < heads; ++h)
        for (std::int64_t i = 0; i < half; ++i)
            for (std::int64_t j = 0; j < 2; ++j)
                std::copy_n(in + (h * head_size + j * half + i) * cols, cols,
                            out.begin() + (h * head_size + 2 * i + j) * cols);
    return out;
}

// Llama 3 rope scaling as llama.cpp reads it: one factor per rotary frequency (the converter's
// LlamaModel.generate_extra_tensors).
inline std::vector<float> llama3_rope_factors(const student::TransformerConfig& c) {
    const auto& rs = c.rope_scaling;
    const int dim = c.head_size();
    const double low_wavelen = rs.original_context_length / rs.low_freq_factor;
    const double high_wavelen = rs.original_context_length / rs.high_freq_factor;
    std::vector<float> factors;
    for (int i = 0; i < dim; i += 2) {
        const float freq = 1.0f / std::pow(float(c.rope_theta), float(i) / float(dim));
        const double wavelen = 2 * std::numbers::pi / freq;
        if (wavelen < high_wavelen) {
            factors.push_back(1.0f);
        } else if (wavelen > low_wavelen) {
            factors.push_back(float(rs.factor));
        } else {
            const double smooth = (rs.original_context_length / wavelen - rs.low_freq_factor) /
                                  (rs.high_freq_factor - rs.low_freq_factor);
            factors.push_back(float(1 / ((1 - smooth) / rs.factor + smooth)));
        }
    }
    return factors;
}

// The llama.cpp architecture `options` export a student of config `c` as; throws config_error when
// none computes its blocks or llama.cpp lacks its rope scaling.
inline std::string architecture(const student::TransformerConfig& c, const ExportOptions& options) {
    const std::string inferred = hf::family_of(c);
    const std::string arch = options.model_type.empty() ? inferred : options.model_type;
    if (arch != inferred && !(arch == "phi3" && inferred == "llama" && !c.qkv_bias && !c.mlp_bias && !c.proj_bias))
        throw config_error("model_type",
                           "\"" + arch + "\" cannot hold this student's blocks; \"" + inferred + "\" can");
    if (c.rope_scaling.type == "dynamic")
        throw config_error("student.rope_scaling.type",
                           "is \"dynamic\" (NTK-aware scaling), which llama.cpp's " + arch + " does not compute");
    if (arch == "phi3" && c.rope_scaling.type != "none")
        throw config_error("student.rope_scaling.type", "must be \"none\" for a phi3 export");
    return arch;
}

// The tokenizer's metadata: `options.tokenizer`'s, or the byte tokenizer's.
inline void tokenizer_metadata(Writer& w, const student::TransformerConfig& c, const ExportOptions& options) {
    if (options.tokenizer.empty())
        byte_tokenizer_metadata(w, c.vocab_size, options.add_bos);
    else
        hf_tokenizer_metadata(w, options.tokenizer, c.vocab_size);
}

}  // namespace detail

/// Throws config_error when `save` would refuse a student of config `c` with `options` (its
/// architecture, rope scaling or tokenizer; see `save`), so that a job can be refused before it
/// trains. Reads the tokenizer's files.
inline void check_exportable(const student::TransformerConfig& c, const ExportOptions& options = {}) {
    (void)detail::architecture(c, options);
    Writer scratch;
    detail::tokenizer_metadata(scratch, c, options);
}

/// Writes `model` (a `student::Transformer`) to `file` as GGUF v3 (see the file comment), atomically.
/// Throws config_error when no llama.cpp architecture computes the student's blocks, for rope scaling
/// llama.cpp does not have (dynamic NTK), or for a tokenizer it cannot hold (`check_exportable`).
template <class Model>
void save(const std::filesystem::path& file, const Model& model, const ExportOptions& options = {}) {
    static_assert(std::is_same_v<typename Model::config_type, student::TransformerConfig>,
                  "io::gguf::save writes decoder students (student::Transformer)");
    const auto& c = model.config();
    const std::string arch = detail::architecture(c, options);

    Writer w;
    const std::string a = arch + ".";
    w.set("general.architecture", value_type::string, arch);
    w.set("general.type", value_type::string, "model");
    w.set("general.name", value_type::string, options.name);
    w.set(a + "context_length", value_type::u32, std::uint32_t(c.context_length));
    w.set(a + "embedding_length", value_type::u32, std::uint32_t(c.d_model));
    w.set(a + "feed_forward_length", value_type::u32, std::uint32_t(c.d_ff));
    w.set(a + "block_count", value_type::u32, std::uint32_t(c.n_layers));
    w.set(a + "attention.head_count", value_type::u32, std::uint32_t(c.n_heads));
    if (arch == "gpt2") {
        w.set(a + "attention.layer_norm_epsilon", value_type::f32, float(c.norm_eps));
    } else {
        w.set(a + "attention.head_count_kv", value_type::u32, std::uint32_t(c.kv_heads()));
        w.set(a + "attention.layer_norm_rms_epsilon", value_type::f32, float(c.norm_eps));
        w.set(a + "rope.freq_base", value_type::f32, float(c.rope_theta));
        if (arch != "qwen2")  // qwen2's converter leaves it to llama.cpp's default, the head size
            w.set(a + "rope.dimension_count", value_type::u32, std::uint32_t(c.head_size()));
        if (c.rope_scaling.type == "linear") {
            w.set(a + "rope.scaling.type", value_type::string, "linear");
            w.set(a + "rope.scaling.factor", value_type::f32, float(c.rope_scaling.factor));
        }
        if (arch == "llama") {  // transformers' LlamaConfig records head_dim, which the converter copies
            w.set(a + "attention.key_length", value_type::u32, std::uint32_t(c.head_size()));
            w.set(a + "attention.value_length", value_type::u32, std::uint32_t(c.head_size()));
            w.set(a + "vocab_size", value_type::u32, std::uint32_t(c.vocab_size));
        }
        if (arch == "phi3") {
            w.set(a + "rope.scaling.original_context_length", value_type::u32, std::uint32_t(c.context_length));
            w.set(a + "attention.sliding_window", value_type::u32, 0u);  // none, as transformers' null
        }
    }
    w.set("general.file_type", value_type::u32, file_type(options.type));
    w.set("general.quantization_version", value_type::u32, 2u);  // ggml's QK layout version
    detail::tokenizer_metadata(w, c, options);

    const auto host = hf::detail::host_parameters(model);
    auto add = [&](std::string name, std::vector<std::int64_t> shape, const float* data) {
        std::int64_t n = 1;
        for (auto d : shape) n *= d;
        const quant::type t = tensor_type(name, shape, options.type);
        w.add_tensor(std::move(name), std::move(shape), t, std::vector<float>(data, data + n));
    };
    const std::int64_t hs = c.head_size(), q_rows = std::int64_t(c.n_heads) * hs,
                       kv_rows = std::int64_t(c.kv_heads()) * hs;
    if (c.rope_scaling.type == "llama3") {
        const auto f = detail::llama3_rope_factors(c);
        add("rope_freqs.weight", {std::int64_t(f.size())}, f.data());
    }
    for (std::size_t k = 0; k < model.base_parameters().size(); ++k) {
        const auto& p = model.base_parameters()[k];
        const float* data = host.data() + model.image_offset(k);
        std::vector<std::int64_t> shape(p.value.shape().begin(), p.value.shape().begin() + p.value.rank());
        const std::string& n = p.name;
        if (n == "wte.weight") {
            add("token_embd.weight", shape, data);
            continue;
        }
        if (n == "wpe.weight") {
            add("position_embd.weight", shape, data);
            continue;
        }
        if (n == "lm_head.weight") {
            add("output.weight", shape, data);
            continue;
        }
        if (n.starts_with("ln_f.")) {
            add("output_norm" + n.substr(4), shape, data);
            continue;
        }
        // h.{l}.{part}.{weight|bias}
        const std::size_t dot = n.find('.', 2), last = n.rfind('.');
        const std::string blk = "blk." + n.substr(2, dot - 2) + ".", part = n.substr(dot + 1, last - dot - 1),
                          kind = n.substr(last);
        const std::int64_t cols = shape.size() == 2 ? shape[1] : 1;
        auto rows_of = [&](std::int64_t rows) {
            auto s = shape;
            s[0] = rows;
            return s;
        };
        if (part == "ln_1")
            add(blk + "attn_norm" + kind, shape, data);
        else if (part == "ln_2")
            add(blk + "ffn_norm" + kind, shape, data);
        else if (part == "attn.c_proj")
            add(blk + "attn_output" + kind, shape, data);
        else if (part == "mlp.c_proj")
            add(blk + "ffn_down" + kind, shape, data);
        else if (part == "attn.c_attn" && (arch == "gpt2" || arch == "phi3"))
            add(blk + "attn_qkv" + kind, shape, data);
        else if (part == "attn.c_attn") {
            const float* k = data + q_rows * cols;
            const float* v = k + kv_rows * cols;
            if (arch == "llama") {
                add(blk + "attn_q" + kind, rows_of(q_rows),
                    detail::interleave_rope_rows(data, c.n_heads, hs, cols).data());
                add(blk + "attn_k" + kind, rows_of(kv_rows),
                    detail::interleave_rope_rows(k, c.kv_heads(), hs, cols).data());
            } else {
                add(blk + "attn_q" + kind, rows_of(q_rows), data);
                add(blk + "attn_k" + kind, rows_of(kv_rows), k);
            }
            add(blk + "attn_v" + kind, rows_of(kv_rows), v);
        } else if (part == "mlp.c_fc" && (arch == "gpt2" || arch == "phi3")) {
            add(blk + "ffn_up" + kind, shape, data);  // phi3: gate|up fused, as llama.cpp's phi3 reads it
        } else if (part == "mlp.c_fc") {
            add(blk + "ffn_gate" + kind, rows_of(c.d_ff), data);
            add(blk + "ffn_up" + kind, rows_of(c.d_ff), data + std::int64_t(c.d_ff) * cols);
        } else {
            throw error("io::gguf: no " + arch + " tensor for the student's parameter " + n);
        }
    }
    std::filesystem::create_directories(file.parent_path().empty() ? std::filesystem::path(".") : file.parent_path());
    w.write(file);
}

}  // namespace distill::io::gguf
