#pragma once
/// @file reflect.hpp
/// One generic mapping between Hana-reflected structs and JSON, used for every config in distill.
/// Reading is strict: an unknown key is an error naming its JSON path and the closest valid key; a
/// value of the wrong type names the path and the expected type; missing keys keep their defaults.
///
/// A struct may be reflected with accessors that reach into configs it holds
/// (BOOST_HANA_ADAPT_ADT, each accessor returning a reference): its keys are then a section of a
/// file that sets those configs' fields, and `validate_part` makes their checks name the section's
/// keys (a job's `hyperparameters.warmup` is the schedule's `warmup_steps`).

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <boost/hana/accessors.hpp>
#include <boost/hana/concept/struct.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/keys.hpp>
#include <boost/hana/members.hpp>
#include <boost/hana/string.hpp>
#include <nlohmann/json.hpp>

#include "distill/error.hpp"

namespace distill::io {

namespace detail {

template <class T>
struct is_vector : std::false_type {};
template <class T, class A>
struct is_vector<std::vector<T, A>> : std::true_type {};
template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};

// Levenshtein distance, for "did you mean" hints.
inline std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diag = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
            diag = up;
        }
    }
    return row[b.size()];
}

inline std::string type_name(const nlohmann::json& j) {
    if (j.is_number_integer()) return "an integer";
    if (j.is_number()) return "a number";
    const std::string name = j.type_name();
    return (name[0] == 'a' || name[0] == 'o' ? "an " : "a ") + name;
}

template <class T>
std::string expected_name() {
    if constexpr (std::is_same_v<T, bool>)
        return "a boolean";
    else if constexpr (std::is_integral_v<T>)
        return "an integer";
    else if constexpr (std::is_floating_point_v<T>)
        return "a number";
    else if constexpr (std::is_same_v<T, std::string>)
        return "a string";
    else if constexpr (is_vector<T>::value)
        return "an array";
    else
        return "an object";
}

}  // namespace detail

/// A reflected struct (declared with BOOST_HANA_DEFINE_STRUCT or BOOST_HANA_ADAPT_STRUCT).
template <class S>
concept reflected = boost::hana::Struct<S>::value;

template <class T>
nlohmann::json to_json(const T& value);

/// Reads `j` into `out`, strictly (see the file comment). `path` prefixes error messages.
template <class T>
void from_json(const nlohmann::json& j, T& out, const std::string& path) {
    using namespace detail;
    auto wrong = [&] { return config_error(path, "expected " + expected_name<T>() + ", got " + type_name(j)); };
    if constexpr (std::is_same_v<T, bool>) {
        if (!j.is_boolean()) throw wrong();
        out = j.get<bool>();
    } else if constexpr (std::is_integral_v<T>) {
        if (!j.is_number_integer()) throw wrong();
        if (j.is_number_unsigned() ? j.get<std::uint64_t>() > std::uint64_t(std::numeric_limits<T>::max())
                                   : (j.get<std::int64_t>() < std::int64_t(std::numeric_limits<T>::min()) ||
                                      (j.get<std::int64_t>() > 0 && std::uint64_t(j.get<std::int64_t>()) >
                                                                        std::uint64_t(std::numeric_limits<T>::max()))))
            throw config_error(path, "integer " + j.dump() + " does not fit the field");
        out = j.get<T>();
    } else if constexpr (std::is_floating_point_v<T>) {
        if (!j.is_number()) throw wrong();
        out = j.get<T>();
    } else if constexpr (std::is_same_v<T, std::string>) {
        if (!j.is_string()) throw wrong();
        out = j.get<std::string>();
    } else if constexpr (std::is_same_v<T, nlohmann::json>) {
        out = j;  // a policy's own section, parsed strictly by whoever knows its type
    } else if constexpr (is_optional<T>::value) {
        if (j.is_null()) {
            out.reset();
        } else {
            typename T::value_type v{};
            from_json(j, v, path);
            out = std::move(v);
        }
    } else if constexpr (is_vector<T>::value) {
        if (!j.is_array()) throw wrong();
        out.clear();
        for (std::size_t i = 0; i < j.size(); ++i) {
            typename T::value_type v{};
            from_json(j[i], v, path + "[" + std::to_string(i) + "]");
            out.push_back(std::move(v));
        }
    } else {
        static_assert(reflected<T>, "distill::io::from_json: the type is not a Hana-reflected struct");
        if (!j.is_object()) throw wrong();
        std::vector<std::string> keys;
        boost::hana::for_each(boost::hana::keys(out),
                              [&](auto key) { keys.emplace_back(boost::hana::to<const char*>(key)); });
        for (const auto& item : j.items()) {
            const std::string& key = item.key();  // a plain reference: clang 14 cannot capture bindings
            if (std::find(keys.begin(), keys.end(), key) != keys.end()) continue;
            auto closest = std::min_element(keys.begin(), keys.end(), [&](const auto& a, const auto& b) {
                return edit_distance(key, a) < edit_distance(key, b);
            });
            throw config_error(
                path.empty() ? key : path + "." + key,
                "unknown key" + (closest != keys.end() ? "; did you mean \"" + *closest + "\"?" : std::string()));
        }
        boost::hana::for_each(boost::hana::accessors<T>(), [&](auto pair) {
            const char* key = boost::hana::to<const char*>(boost::hana::first(pair));
            if (auto it = j.find(key); it != j.end())
                from_json(*it, boost::hana::second(pair)(out), path.empty() ? key : path + "." + key);
        });
    }
}

/// Writes any reflected struct (or supported value) as JSON, every field included.
template <class T>
nlohmann::json to_json(const T& value) {
    using namespace detail;
    if constexpr (std::is_arithmetic_v<T> || std::is_same_v<T, std::string> || std::is_same_v<T, nlohmann::json>) {
        return value;
    } else if constexpr (is_optional<T>::value) {
        return value ? to_json(*value) : nlohmann::json(nullptr);
    } else if constexpr (is_vector<T>::value) {
        nlohmann::json a = nlohmann::json::array();
        for (const auto& v : value) a.push_back(to_json(v));
        return a;
    } else {
        static_assert(reflected<T>, "distill::io::to_json: the type is not a Hana-reflected struct");
        nlohmann::json o = nlohmann::json::object();
        boost::hana::for_each(boost::hana::accessors<T>(), [&](auto pair) {
            o[boost::hana::to<const char*>(boost::hana::first(pair))] = to_json(boost::hana::second(pair)(value));
        });
        return o;
    }
}

/// Runs `part.validate("")` — the checks of a reflected config `part` that `section`, a reflected
/// struct, holds and exposes fields of under keys of its own — and re-throws its config_error naming
/// the key `section` gives the field, under `path`: `validate_part(hyperparameters, schedule,
/// "hyperparameters")` reports the schedule's `warmup_steps` as `hyperparameters.warmup`. A field
/// the section does not expose keeps its own name. `part.validate(p)` must name a field `p.<field>`.
template <reflected Section, reflected Part>
void validate_part(const Section& section, const Part& part, const std::string& path) {
    namespace hana = boost::hana;
    try {
        part.validate("");
    } catch (const config_error& e) {
        const std::string& field = e.field();  // ".<field of part>"
        const std::string name = field.substr(1);
        std::string key = name;
        hana::for_each(hana::accessors<Part>(), [&](auto member) {
            if (name != hana::to<const char*>(hana::first(member))) return;
            const auto& target = hana::second(member)(part);
            hana::for_each(hana::accessors<Section>(), [&](auto exposed) {
                const auto& at = hana::second(exposed)(section);
                if constexpr (std::is_same_v<std::remove_cvref_t<decltype(at)>, std::remove_cvref_t<decltype(target)>>)
                    if (std::addressof(at) == std::addressof(target)) key = hana::to<const char*>(hana::first(exposed));
            });
        });
        throw config_error(path.empty() ? key : path + "." + key, std::string(e.what()).substr(field.size() + 2));
    }
}

}  // namespace distill::io
