#pragma once
/// @file post_processors.hpp
/// The `post_processor` of a tokenizer.json for a single sequence: TemplateProcessing,
/// BertProcessing, RobertaProcessing, ByteLevel (offsets only) and Sequence, read into the special
/// token ids that go before and after the encoded text.

#include <cstdint>
#include <string>
#include <vector>

#include "distill/data/hf/reader.hpp"

namespace distill::data::hf {

/// The single-sequence part of a post-processor: ids before and after the sequence.
struct PostProcessor {
    std::vector<std::int32_t> before{}, after{};

    /// Adds what the post-processor at `path` puts around a sequence (a Sequence: each in turn).
    void read(const Reader& r, const json& j, const std::string& path, int depth = 0) {
        r.nesting(path, depth);
        const std::string t =
            r.type(j, path, "post-processor",
                   {"TemplateProcessing", "BertProcessing", "RobertaProcessing", "ByteLevel", "Sequence"});
        if (t == "Sequence") {
            r.sequence(j, path, "processors", [&](const json& e, const std::string& at) { read(r, e, at, depth + 1); });
        } else if (t == "ByteLevel") {
            r.only(j, path, {"type", "add_prefix_space", "trim_offsets", "use_regex"});  // offsets only
        } else if (t == "BertProcessing" || t == "RobertaProcessing") {
            if (t == "BertProcessing")
                r.only(j, path, {"type", "sep", "cls"});
            else
                r.only(j, path, {"type", "sep", "cls", "trim_offsets", "add_prefix_space"});
            const json& sep = r.required(j, path, "sep");
            const json& cls = r.required(j, path, "cls");
            // a wrapper around what earlier processors added
            before.insert(before.begin(), named_id(r, cls, path + ".cls"));
            after.push_back(named_id(r, sep, path + ".sep"));
        } else {  // TemplateProcessing
            r.only(j, path, {"type", "single", "pair", "special_tokens"});
            const json& single = r.array(r.required(j, path, "single"), path + ".single");
            const json* specials = Reader::find(j, "special_tokens");
            std::vector<std::int32_t> ids_before, ids_after;
            bool seen_sequence = false;
            for (std::size_t i = 0; i < single.size(); ++i) {
                const std::string p = path + ".single[" + std::to_string(i) + "]";
                const json& piece = r.object(single[i], p);
                if (const json* s = Reader::find(piece, "Sequence")) {
                    r.object(*s, p + ".Sequence");
                    if (r.req_string(*s, p + ".Sequence", "id") != "A")
                        r.fail(p + ".Sequence.id", "a single-sequence template can only hold the sequence A");
                    if (seen_sequence) r.fail(p, "the sequence appears twice");
                    seen_sequence = true;
                } else if (const json* sp = Reader::find(piece, "SpecialToken")) {
                    const std::string name =
                        r.req_string(r.object(*sp, p + ".SpecialToken"), p + ".SpecialToken", "id");
                    if (!specials || !specials->is_object() || !specials->contains(name))
                        r.fail(p + ".SpecialToken.id", "\"" + name + "\" is not in " + path + ".special_tokens");
                    const json& def = (*specials)[name];
                    const std::string dp = path + ".special_tokens[\"" + name + "\"]";
                    r.object(def, dp);
                    const json& ids = r.array(r.required(def, dp, "ids"), dp + ".ids");
                    if (ids.size() > 1024) r.fail(dp + ".ids", "more than 1024 ids");
                    for (std::size_t k = 0; k < ids.size(); ++k)
                        (seen_sequence ? ids_after : ids_before)
                            .push_back(static_cast<std::int32_t>(
                                r.integer(ids[k], dp + ".ids[" + std::to_string(k) + "]", 0, max_token_id)));
                } else {
                    r.fail(p, "must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
                }
            }
            if (!seen_sequence) r.fail(path + ".single", "has no Sequence A");
            before.insert(before.end(), ids_before.begin(), ids_before.end());
            after.insert(after.begin(), ids_after.begin(), ids_after.end());
        }
    }

private:
    // The id of a post-processor's special token: [name, id] (Bert/Roberta) checked against the name.
    static std::int32_t named_id(const Reader& r, const json& j, const std::string& path) {
        if (!j.is_array() || j.size() != 2 || !j[0].is_string())
            r.fail(path, "must be [\"token\", id], got " + j.dump().substr(0, 80));
        return static_cast<std::int32_t>(r.integer(j[1], path + "[1]", 0, max_token_id));
    }
};

}  // namespace distill::data::hf
