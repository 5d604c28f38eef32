#pragma once
/// @file byte_tokenizer.hpp
/// The byte-level tokenizer: one token per byte plus a few special tokens for conversations. It needs
/// no vocabulary file, never fails to encode, and round-trips any byte string exactly.

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "distill/error.hpp"

namespace distill::data {

/// Byte-level tokenizer: ids 0..255 are the raw bytes, 256..262 the special tokens below.
class ByteTokenizer {
public:
    static constexpr std::int32_t bos = 256;          ///< start of a sequence
    static constexpr std::int32_t eos = 257;          ///< end of a sequence
    static constexpr std::int32_t pad = 258;          ///< padding in a batch
    static constexpr std::int32_t system = 259;       ///< starts a system turn
    static constexpr std::int32_t user = 260;         ///< starts a user turn
    static constexpr std::int32_t assistant = 261;    ///< starts an assistant turn
    static constexpr std::int32_t end_of_turn = 262;  ///< ends a turn

    /// The tokenizer's identity, recorded in fingerprints so that a model is never paired with the
    /// wrong tokenizer; bump it whenever the id assignment changes.
    static constexpr std::string_view id() { return "byte-v1"; }

    /// The number of token ids, 263.
    static constexpr std::int32_t vocab_size() { return 263; }

    /// The bytes of `text` as ids 0..255; never adds special tokens.
    std::vector<std::int32_t> encode(std::string_view text) const {
        std::vector<std::int32_t> ids;
        ids.reserve(text.size());
        for (char c : text) ids.push_back(static_cast<std::int32_t>(static_cast<unsigned char>(c)));
        return ids;
    }

    /// The bytes the ids stand for, special tokens rendered as their names (`<|bos|>`, `<|end|>`, ...)
    /// or dropped when `skip_special` is set. Throws distill::error for an id outside [0, vocab_size()).
    std::string decode(std::span<const std::int32_t> ids, bool skip_special = false) const {
        std::string text;
        text.reserve(ids.size());
        for (std::int32_t token : ids) {
            if (!is_special(token)) {
                text.push_back(static_cast<char>(static_cast<unsigned char>(token)));
            } else if (!skip_special) {
                text += token_name(token);
            }
        }
        return text;
    }

    /// Whether `token` is a special token. Throws distill::error for an id outside [0, vocab_size()).
    bool is_special(std::int32_t token) const {
        check(token);
        return token >= bos;
    }

    /// The text of `token`: the single byte for ids 0..255, the name such as `<|user|>` for special tokens.
    /// Throws distill::error for an id outside [0, vocab_size()).
    std::string_view token_name(std::int32_t token) const {
        check(token);
        if (token < bos) return {&bytes[static_cast<std::size_t>(token)], 1};
        return special_names[static_cast<std::size_t>(token - bos)];
    }

private:
    static void check(std::int32_t token) {
        if (token < 0 || token >= vocab_size()) {
            throw error("token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                        std::to_string(vocab_size()) + ") of tokenizer " + std::string(id()));
        }
    }

    // Backing storage for token_name's one-byte views.
    static constexpr std::array<char, 256> bytes = [] {
        std::array<char, 256> all{};
        for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<char>(static_cast<unsigned char>(i));
        return all;
    }();

    static constexpr std::array<std::string_view, 7> special_names = {
        "<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"};
};

}  // namespace distill::data
