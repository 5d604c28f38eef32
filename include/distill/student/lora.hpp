#pragma once
/// @file student/lora.hpp
/// `LoraConfig`: low-rank adapters (Hu et al. 2021, as Hugging Face PEFT defines them) on a
/// `student::Transformer`'s linear layers. Each adapted linear computes
/// y = W x + b + (alpha / rank) · B (A (dropout(x))), A (rank, in) drawn from U(-1/√in, 1/√in)
/// (PEFT's kaiming_uniform(a=√5)), B (out, rank) zeros; the base weights are frozen.

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include <boost/hana/adapt_struct.hpp>

#include "distill/error.hpp"

namespace distill::student {

/// Where adapters go and how they are shaped. `rank` 0 turns LoRA off (the default).
struct LoraConfig {
    int rank = 0;        ///< r: adapter rank; 0 = no adapters, every weight trains
    double alpha = 8;    ///< lora_alpha: the adapter's output is scaled by alpha / rank
    double dropout = 0;  ///< lora_dropout: inverted dropout on the adapter's input, training forwards only
    /// Linear layers to adapt: q, k, v (rows of the fused q|k|v projection, one adapter each), qkv
    /// (the whole fused projection, one adapter: GPT-2's c_attn), o (attention output), up, gate,
    /// down (MLP; with the gelu MLP `up` is c_fc and there is no gate), head (an untied LM head).
    std::vector<std::string> targets;

    bool enabled() const noexcept { return rank > 0; }
    double scaling() const noexcept { return alpha / rank; }

    /// Throws `config_error` naming `<path>.<field>` for the first field out of range (what needs
    /// no student: the job checks it when read).
    void validate(const std::string& path = "lora") const {
        auto fail = [&](const char* key, const std::string& what) { throw config_error(path + "." + key, what); };
        if (rank < 0 || rank > 65536) fail("rank", "must be in [0, 65536] (0 = off), got " + std::to_string(rank));
        if (!enabled()) return;
        if (!(alpha > 0 && alpha < 1e6)) fail("alpha", "must be in (0, 1e6), got " + std::to_string(alpha));
        if (!(dropout >= 0 && dropout < 1)) fail("dropout", "must be in [0, 1), got " + std::to_string(dropout));
        if (targets.empty()) fail("targets", "must name at least one of q, k, v, qkv, o, up, gate, down, head");
        for (std::size_t i = 0; i < targets.size(); ++i) {
            const auto& t = targets[i];
            if (target_index(t) < 0)
                fail("targets", "unknown target \"" + t + "\" (one of q, k, v, qkv, o, up, gate, down, head)");
            for (std::size_t j = 0; j < i; ++j)
                if (targets[j] == t) fail("targets", "names \"" + t + "\" twice");
        }
        if (has("qkv") && (has("q") || has("k") || has("v")))
            fail("targets", "\"qkv\" adapts the whole fused projection; it cannot be combined with q, k or v");
    }
    /// `validate`, and what needs the student's blocks: gate needs the SwiGLU MLP (`swiglu`), head
    /// an untied LM head (`tied_head` false).
    void validate(bool swiglu, bool tied_head, const std::string& path = "lora") const {
        validate(path);
        if (!enabled()) return;
        if (has("gate") && !swiglu)
            throw config_error(path + ".targets", "\"gate\" needs the swiglu MLP; this student's MLP is gelu");
        if (has("head") && tied_head)
            throw config_error(path + ".targets",
                               "\"head\" needs an untied LM head; this student ties it to the token embedding");
    }

    bool has(std::string_view target) const {
        for (const auto& t : targets)
            if (t == target) return true;
        return false;
    }

    /// The targets in the order adapters are laid out in every block (head last, outside the blocks).
    static constexpr std::array<std::string_view, 9> all_targets{"q",  "k",    "v",    "qkv", "o",
                                                                 "up", "gate", "down", "head"};
    static int target_index(std::string_view t) {
        for (std::size_t i = 0; i < all_targets.size(); ++i)
            if (all_targets[i] == t) return static_cast<int>(i);
        return -1;
    }
};

}  // namespace distill::student

BOOST_HANA_ADAPT_STRUCT(distill::student::LoraConfig, rank, alpha, dropout, targets);
