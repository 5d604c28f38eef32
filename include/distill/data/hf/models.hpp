#pragma once
/// @file models.hpp
/// The `model` of a tokenizer.json: BPE (byte-level as GPT-2/Llama-3/Qwen2, SentencePiece-style with
/// byte fallback as Llama-2/TinyLlama/Phi-3, continuing-subword prefix, end-of-word suffix,
/// ignore_merges), WordPiece (BERT) and WordLevel: the vocabulary, and how one pre-tokenized word
/// becomes ids, exactly as the `tokenizers` package does. Unigram (SentencePiece unigram, T5) and BPE
/// dropout are refused with a config_error.

#include <cstdint>
#include <functional>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "distill/data/hf/reader.hpp"
#include "distill/data/hf/unicode.hpp"
#include "distill/error.hpp"

namespace distill::data::hf {

/// A transparent string hash, so a Vocab is searched with a string_view, without a copy.
struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
/// Token -> id.
using Vocab = std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>>;

/// A tokenizer's model: its vocabulary, merges and settings, read from the `model` object.
struct Model {
    std::string type{};  ///< "BPE", "WordPiece" or "WordLevel"
    Vocab vocab{};
    std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges{};  ///< pair -> (rank, new id)
    std::string unk_token{}, prefix{}, suffix{};
    std::int32_t unk_id = -1;  ///< the id of unk_token, once resolve_unk() found it
    bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
    std::size_t max_chars = 100;

    /// Reads the `model` object `m`.
    void read(const Reader& r, const json& m) {
        type = r.type(m, "model", "model type", {"BPE", "WordPiece", "WordLevel", "Unigram"});
        if (type == "Unigram")
            r.fail("model.type",
                   "unsupported model type \"Unigram\" (supported: BPE, WordPiece, WordLevel); SentencePiece "
                   "unigram models such as T5's are not implemented");
        if (type == "BPE") {
            r.only(m, "model",
                   {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
                    "byte_fallback", "ignore_merges", "vocab", "merges"});
            if (const json* d = Reader::find(m, "dropout"))
                if (!d->is_number() || d->get<double>() != 0.0)
                    r.fail("model.dropout", "BPE dropout is not supported (it makes encoding random); set it to null");
            unk_token = r.opt_string(m, "model", "unk_token", "");
            prefix = r.opt_string(m, "model", "continuing_subword_prefix", "");
            suffix = r.opt_string(m, "model", "end_of_word_suffix", "");
            fuse_unk = r.opt_bool(m, "model", "fuse_unk", false);
            byte_fallback = r.opt_bool(m, "model", "byte_fallback", false);
            ignore_merges = r.opt_bool(m, "model", "ignore_merges", false);
            read_vocab(r, r.required(m, "model", "vocab"));
            if (const json* list = Reader::find(m, "merges")) read_merges(r, *list);
        } else if (type == "WordPiece") {
            r.only(m, "model", {"type", "unk_token", "continuing_subword_prefix", "max_input_chars_per_word", "vocab"});
            unk_token = r.opt_string(m, "model", "unk_token", "[UNK]");
            prefix = r.opt_string(m, "model", "continuing_subword_prefix", "##");
            if (const json* x = Reader::find(m, "max_input_chars_per_word"))
                max_chars = static_cast<std::size_t>(r.integer(*x, "model.max_input_chars_per_word", 0, INT32_MAX));
            read_vocab(r, r.required(m, "model", "vocab"));
        } else {
            r.only(m, "model", {"type", "unk_token", "vocab"});
            unk_token = r.opt_string(m, "model", "unk_token", "<unk>");
            read_vocab(r, r.required(m, "model", "vocab"));
        }
        if (!unk_token.empty() && type != "BPE" && !vocab.count(unk_token))
            r.fail("model.unk_token", "\"" + unk_token + "\" is not in the vocabulary");
    }

    /// Finds the id of the unknown token, after the vocabulary was checked (WordPiece and WordLevel
    /// have one; a BPE model may name one it does not have).
    void resolve_unk() {
        if (type == "WordPiece" || type == "WordLevel") unk_id = vocab.at(unk_token);
        if (type == "BPE" && !unk_token.empty()) {
            if (const auto it = vocab.find(unk_token); it != vocab.end()) unk_id = it->second;
        }
    }

    /// Appends the ids of one pre-tokenized word; `tokenizer` names the tokenizer in errors.
    void tokenize(const std::string& word, std::vector<std::int32_t>& ids, const std::string& tokenizer) const {
        if (type == "BPE")
            bpe(word, ids, tokenizer);
        else if (type == "WordPiece")
            wordpiece(word, ids);
        else
            ids.push_back(lookup(word).value_or(unk_id));
    }

    /// The id of `s` in the vocabulary.
    std::optional<std::int32_t> lookup(std::string_view s) const {
        const auto it = vocab.find(s);
        if (it == vocab.end()) return std::nullopt;
        return it->second;
    }

private:
    void read_vocab(const Reader& r, const json& v) {
        const std::string path = "model.vocab";
        r.object(v, path);
        vocab.reserve(v.size());
        for (auto it = v.begin(); it != v.end(); ++it) {
            const std::string p = path + "[\"" + it.key().substr(0, 40) + "\"]";
            const auto id = static_cast<std::int32_t>(r.integer(it.value(), p, 0, max_token_id));
            if (it.key().size() > max_token_bytes) r.fail(p, "token longer than 65536 bytes");
            vocab.emplace(it.key(), id);
        }
    }

    void read_merges(const Reader& r, const json& list) {
        r.array(list, "model.merges");
        merges.reserve(list.size());
        for (std::size_t i = 0; i < list.size(); ++i) {
            const std::string p = "model.merges[" + std::to_string(i) + "]";
            const json& e = list[i];
            std::string a, b;
            if (e.is_string()) {  // the older "a b" form
                const std::string s = e.get<std::string>();
                const auto sp = s.find(' ');
                if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
                    r.fail(p, "must be two tokens separated by one space, got \"" + s.substr(0, 80) + "\"");
                a = s.substr(0, sp);
                b = s.substr(sp + 1);
            } else if (e.is_array() && e.size() == 2) {
                a = r.string(e[0], p + "[0]");
                b = r.string(e[1], p + "[1]");
            } else {
                r.fail(p, "must be \"a b\" or [\"a\", \"b\"], got " + Reader::type_name(e));
            }
            const auto ia = vocab.find(a), ib = vocab.find(b);
            if (ia == vocab.end()) r.fail(p, "merge token \"" + a.substr(0, 80) + "\" is not in the vocabulary");
            if (ib == vocab.end()) r.fail(p, "merge token \"" + b.substr(0, 80) + "\" is not in the vocabulary");
            const std::string merged =
                a + (prefix.empty() || b.compare(0, prefix.size(), prefix) != 0 ? b : b.substr(prefix.size()));
            const auto im = vocab.find(merged);
            if (im == vocab.end())
                r.fail(p, "the merged token \"" + merged.substr(0, 80) + "\" is not in the vocabulary");
            // a repeated pair keeps its last rank, as tokenizers' map does
            merges[pair_key(ia->second, ib->second)] = {static_cast<std::int32_t>(i), im->second};
        }
    }

    static std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
        return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
    }

    void wordpiece(const std::string& word, std::vector<std::int32_t>& ids) const {
        std::size_t chars = 0;
        for (std::size_t i = 0; i < word.size(); ++i) chars += (static_cast<unsigned char>(word[i]) & 0xC0) != 0x80;
        if (chars > max_chars) {
            ids.push_back(unk_id);
            return;
        }
        std::vector<std::int32_t> sub;
        std::size_t start = 0;
        std::string candidate;
        while (start < word.size()) {
            std::size_t end = word.size();
            std::optional<std::int32_t> found;
            while (start < end) {
                candidate.clear();
                if (start > 0) candidate = prefix;
                candidate.append(word, start, end - start);
                if ((found = lookup(candidate))) break;
                --end;  // back off one character
                while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80) --end;
            }
            if (!found) {
                ids.push_back(unk_id);
                return;
            }
            sub.push_back(*found);
            start = end;
        }
        ids.insert(ids.end(), sub.begin(), sub.end());
    }

    struct Symbol {
        std::int32_t id;
        std::int32_t prev, next;
        bool removed;
    };

    /// BPE on one word: the characters (with prefix/suffix, byte fallback and unk handling), then the
    /// merges by rank, leftmost first, exactly as tokenizers' Word::merge_all.
    void bpe(const std::string& word, std::vector<std::int32_t>& ids, const std::string& tokenizer) const {
        if (word.empty()) return;
        if (ignore_merges)
            if (const auto id = lookup(word)) {
                ids.push_back(*id);
                return;
            }
        std::vector<Symbol> syms;
        syms.reserve(word.size());
        auto add = [&](std::int32_t id) {
            syms.push_back(
                {id, static_cast<std::int32_t>(syms.size()) - 1, static_cast<std::int32_t>(syms.size()) + 1, false});
        };
        std::int32_t pending_unk = -1;
        std::string s;
        for (std::size_t i = 0; i < word.size();) {
            const std::size_t b = i;
            next_utf8(word, i);
            s.clear();
            if (b > 0) s = prefix;
            s.append(word, b, i - b);
            if (i == word.size()) s += suffix;
            if (const auto id = lookup(s)) {
                if (pending_unk >= 0) {
                    add(pending_unk);
                    pending_unk = -1;
                }
                add(*id);
                continue;
            }
            if (byte_fallback) {
                std::vector<std::int32_t> bytes;
                bool all = true;
                for (unsigned char c : s) {
                    static constexpr char hex[] = "0123456789ABCDEF";
                    const char name[7] = {'<', '0', 'x', hex[c >> 4], hex[c & 15], '>', 0};
                    const auto id = lookup(std::string_view(name, 6));
                    if (!id) {
                        all = false;
                        break;
                    }
                    bytes.push_back(*id);
                }
                if (all) {
                    // tokenizers adds the byte tokens without flushing a pending unknown first
                    for (std::int32_t id : bytes) add(id);
                    continue;
                }
            }
            if (unk_id >= 0) {
                if (pending_unk >= 0 && !fuse_unk) add(pending_unk);
                if (!(pending_unk >= 0 && fuse_unk)) pending_unk = unk_id;
            } else if (!unk_token.empty()) {
                throw error("tokenizer " + tokenizer + ": the unknown token \"" + unk_token +
                            "\" is not in the vocabulary");
            }
        }
        if (pending_unk >= 0) add(pending_unk);
        if (syms.empty()) return;
        syms.back().next = -1;
        merge_all(syms);
        for (const auto& sym : syms)
            if (!sym.removed) ids.push_back(sym.id);
    }

    struct Merge {
        std::int32_t pos, rank, new_id;
        bool operator<(const Merge& o) const {  // a max-heap: the lowest rank, then the leftmost, on top
            return rank != o.rank ? rank > o.rank : pos > o.pos;
        }
    };

    const std::pair<std::int32_t, std::int32_t>* find_merge(std::int32_t a, std::int32_t b) const {
        const auto it = merges.find(pair_key(a, b));
        return it == merges.end() ? nullptr : &it->second;
    }

    void merge_all(std::vector<Symbol>& syms) const {
        std::priority_queue<Merge> queue;
        for (std::size_t i = 0; i + 1 < syms.size(); ++i)
            if (const auto* m = find_merge(syms[i].id, syms[i + 1].id))
                queue.push({static_cast<std::int32_t>(i), m->first, m->second});
        while (!queue.empty()) {
            const Merge top = queue.top();
            queue.pop();
            Symbol& cur = syms[static_cast<std::size_t>(top.pos)];
            if (cur.removed || cur.next < 0) continue;
            const auto next_pos = static_cast<std::size_t>(cur.next);
            const Symbol right = syms[next_pos];
            const auto* m = find_merge(cur.id, right.id);
            if (m == nullptr || m->second != top.new_id) continue;  // an expired entry
            cur.id = top.new_id;
            cur.next = right.next;
            syms[next_pos].removed = true;
            if (right.next >= 0) syms[static_cast<std::size_t>(right.next)].prev = top.pos;
            if (cur.prev >= 0)
                if (const auto* pm = find_merge(syms[static_cast<std::size_t>(cur.prev)].id, cur.id))
                    queue.push({cur.prev, pm->first, pm->second});
            if (cur.next >= 0)
                if (const auto* nm = find_merge(cur.id, syms[static_cast<std::size_t>(cur.next)].id))
                    queue.push({top.pos, nm->first, nm->second});
        }
    }
};

}  // namespace distill::data::hf
