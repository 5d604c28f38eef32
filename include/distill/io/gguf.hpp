#pragma once
/// @file gguf.hpp
/// GGUF, the single-file model format of llama.cpp (ggml's `docs/gguf.md`, version 3): a header,
/// typed key/value metadata, tensor descriptions, then the tensors' bytes, each at a multiple of the
/// alignment (32 bytes unless `general.alignment` says otherwise). All integers are little-endian.
///
///     "GGUF" u32 version=3 | u64 n_tensors | u64 n_kv
///     n_kv  × { string key | u32 value_type | value }            string = u64 length + UTF-8 bytes
///     n_tensors × { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
///     padding to the alignment | tensor data (offsets relative to here)
///
/// A tensor's `ne` lists its dimensions innermost first: a PyTorch (out, in) weight is ne = [in, out],
/// and its rows are stored as ggml blocks of `quant::type` (io/quant.hpp). `Writer` builds a file
/// and writes it atomically; `File` maps one and checks every length, offset and type against the
/// file's size before anything reads it, so a truncated or corrupt file is a `format_error` naming
/// the file and the byte offset, never a crash.

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/error.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/quant.hpp"

namespace distill::io::gguf {

inline constexpr std::uint32_t version = 3;
inline constexpr std::uint64_t default_alignment = 32;

/// GGUF's metadata value types (gguf_metadata_value_type).
enum class value_type : std::uint32_t {
    u8 = 0,
    i8 = 1,
    u16 = 2,
    i16 = 3,
    u32 = 4,
    i32 = 5,
    f32 = 6,
    boolean = 7,
    string = 8,
    array = 9,
    u64 = 10,
    i64 = 11,
    f64 = 12
};

/// One metadata value: its GGUF type (for an array, also its elements' type) and the value as JSON
/// (numbers, a bool, a string, or an array of them).
struct Value {
    value_type type = value_type::u32;
    value_type element = value_type::u8;  ///< the elements' type when `type` is array
    nlohmann::json data{};
};

/// A tensor as the file describes it.
struct TensorInfo {
    std::string name;
    std::vector<std::int64_t> ne;  ///< dimensions, innermost first (GGUF's order)
    quant::type type = quant::type::F32;
    std::uint64_t offset = 0;  ///< from the start of the data section
    std::size_t bytes = 0;

    std::int64_t elements() const {
        std::int64_t n = 1;
        for (auto d : ne) n *= d;
        return n;
    }
};

namespace detail {

inline std::size_t scalar_bytes(value_type t) {
    switch (t) {
        case value_type::u8:
        case value_type::i8:
        case value_type::boolean:
            return 1;
        case value_type::u16:
        case value_type::i16:
            return 2;
        case value_type::u32:
        case value_type::i32:
        case value_type::f32:
            return 4;
        case value_type::u64:
        case value_type::i64:
        case value_type::f64:
            return 8;
        default:
            return 0;  // string, array: variable
    }
}

inline std::uint64_t align_up(std::uint64_t n, std::uint64_t alignment) {
    return (n + alignment - 1) / alignment * alignment;
}

// Appends the little-endian bytes of `v` (x86-64 and aarch64 are little-endian; see the static_assert).
template <class T>
void put(std::string& out, T v) {
    static_assert(std::endian::native == std::endian::little, "GGUF is little-endian");
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    out.append(b, sizeof(T));
}

inline void put_string(std::string& out, std::string_view s) {
    put<std::uint64_t>(out, s.size());
    out.append(s);
}

// An integer metadata value of type T, refused when `v` is not an integer in T's range.
template <class T>
void put_integer(std::string& out, const nlohmann::json& v, const std::string& key) {
    bool ok = v.is_number_integer();
    if (ok && v.is_number_unsigned())
        ok = v.get<std::uint64_t>() <= std::uint64_t(std::numeric_limits<T>::max());
    else if (ok)
        ok = v.get<std::int64_t>() >= std::int64_t(std::numeric_limits<T>::min()) &&
             (v.get<std::int64_t>() < 0 ||
              std::uint64_t(v.get<std::int64_t>()) <= std::uint64_t(std::numeric_limits<T>::max()));
    if (!ok) throw error("gguf: metadata " + key + " is " + v.dump() + ", which is not a value of its type");
    put<T>(out, v.is_number_unsigned() ? T(v.get<std::uint64_t>()) : T(v.get<std::int64_t>()));
}

inline void put_scalar(std::string& out, value_type t, const nlohmann::json& v, const std::string& key) {
    auto check = [&](bool ok) {
        if (!ok) throw error("gguf: metadata " + key + " is " + v.dump() + ", which is not a value of its type");
    };
    switch (t) {
        case value_type::u8:
            put_integer<std::uint8_t>(out, v, key);
            break;
        case value_type::i8:
            put_integer<std::int8_t>(out, v, key);
            break;
        case value_type::u16:
            put_integer<std::uint16_t>(out, v, key);
            break;
        case value_type::i16:
            put_integer<std::int16_t>(out, v, key);
            break;
        case value_type::u32:
            put_integer<std::uint32_t>(out, v, key);
            break;
        case value_type::i32:
            put_integer<std::int32_t>(out, v, key);
            break;
        case value_type::u64:
            put_integer<std::uint64_t>(out, v, key);
            break;
        case value_type::i64:
            put_integer<std::int64_t>(out, v, key);
            break;
        case value_type::f32:
            check(v.is_number());
            put<float>(out, v.get<float>());
            break;
        case value_type::f64:
            check(v.is_number());
            put<double>(out, v.get<double>());
            break;
        case value_type::boolean:
            check(v.is_boolean());
            put<std::uint8_t>(out, v.get<bool>() ? 1 : 0);
            break;
        case value_type::string:
            check(v.is_string());
            put_string(out, v.get_ref<const std::string&>());
            break;
        case value_type::array:
            throw error("gguf: metadata " + key + ": arrays of arrays are not written");
    }
}

}  // namespace detail

/// Builds a GGUF file: metadata in the order set (a key set twice keeps its first place), tensors in
/// the order added, each quantized to its type when written.
class Writer {
public:
    /// Sets a scalar or string value.
    void set(const std::string& key, value_type type, nlohmann::json value) {
        assign(key, Value{type, value_type::u8, std::move(value)});
    }
    /// Sets an array of `element` values.
    void set_array(const std::string& key, value_type element, nlohmann::json values) {
        if (!values.is_array()) throw error("gguf: metadata " + key + " must be an array");
        assign(key, Value{value_type::array, element, std::move(values)});
    }

    /// Adds a tensor of `shape` (outermost first, as PyTorch lists it) holding `values` (row-major),
    /// stored as `type`. Throws distill::error when the innermost dimension is not a whole number of
    /// the type's blocks.
    void add_tensor(std::string name, std::vector<std::int64_t> shape, quant::type type, std::vector<float> values) {
        std::int64_t n = 1;
        for (auto d : shape) n *= d;
        if (shape.empty() || std::int64_t(values.size()) != n)
            throw error("gguf: tensor " + name + " has " + std::to_string(values.size()) + " values for its shape");
        const std::int64_t row = shape.back();
        if (row % quant::block_elements(type) != 0)
            throw error("gguf: tensor " + name + " has rows of " + std::to_string(row) + " values, not a multiple of " +
                        std::string(quant::name(type)) + "'s block of " + std::to_string(quant::block_elements(type)));
        TensorInfo info{std::move(name), {shape.rbegin(), shape.rend()}, type, 0, 0};
        info.bytes = quant::row_bytes(type, row) * std::size_t(n / row);
        tensors_.push_back({std::move(info), std::move(values)});
    }

    const std::vector<std::pair<std::string, Value>>& metadata() const noexcept { return metadata_; }

    /// Writes the file atomically (temp, fsync, rename): a crash leaves the previous file or none.
    void write(const std::filesystem::path& path) const {
        std::uint64_t alignment = default_alignment;
        for (const auto& [key, v] : metadata_)
            if (key == "general.alignment") alignment = v.data.get<std::uint64_t>();
        std::string head;
        head.append("GGUF");
        detail::put<std::uint32_t>(head, version);
        detail::put<std::uint64_t>(head, tensors_.size());
        detail::put<std::uint64_t>(head, metadata_.size());
        for (const auto& [key, v] : metadata_) {
            detail::put_string(head, key);
            detail::put<std::uint32_t>(head, std::uint32_t(v.type));
            if (v.type != value_type::array) {
                detail::put_scalar(head, v.type, v.data, key);
                continue;
            }
            detail::put<std::uint32_t>(head, std::uint32_t(v.element));
            detail::put<std::uint64_t>(head, v.data.size());
            for (const auto& e : v.data) detail::put_scalar(head, v.element, e, key);
        }
        std::uint64_t offset = 0;
        for (const auto& t : tensors_) {
            detail::put_string(head, t.info.name);
            detail::put<std::uint32_t>(head, std::uint32_t(t.info.ne.size()));
            for (auto d : t.info.ne) detail::put<std::uint64_t>(head, std::uint64_t(d));
            detail::put<std::uint32_t>(head, std::uint32_t(t.info.type));
            detail::put<std::uint64_t>(head, offset);
            offset = detail::align_up(offset + t.info.bytes, alignment);
        }
        head.resize(detail::align_up(head.size(), alignment), '\0');
        atomic_writer out(path);
        out.write(head.data(), head.size());
        std::vector<std::byte> buffer;
        const std::byte zeros[64] = {};
        for (const auto& t : tensors_) {
            buffer.resize(t.info.bytes);
            const std::int64_t row = t.info.ne.front(), rows = t.info.elements() / row;
            const std::size_t stride = quant::row_bytes(t.info.type, row);
            for (std::int64_t r = 0; r < rows; ++r)
                quant::quantize_row(t.info.type, t.values.data() + r * row, row,
                                    buffer.data() + std::size_t(r) * stride);
            out.write(buffer.data(), buffer.size());
            const std::uint64_t pad = detail::align_up(t.info.bytes, alignment) - t.info.bytes;
            if (pad) out.write(zeros, pad);
        }
        out.commit();
    }

private:
    struct Pending {
        TensorInfo info;
        std::vector<float> values;
    };

    void assign(const std::string& key, Value v) {
        for (auto& [k, old] : metadata_)
            if (k == key) {
                old = std::move(v);
                return;
            }
        metadata_.emplace_back(key, std::move(v));
    }

    std::vector<std::pair<std::string, Value>> metadata_;
    std::vector<Pending> tensors_;
};

/// A GGUF file, mapped and checked: metadata, tensor descriptions and the tensors' bytes.
class File {
public:
    /// Throws io_error when the file cannot be read, format_error (naming the file and the byte
    /// offset) when it is not a GGUF v2/v3 file distill can read: a bad magic, a length or offset
    /// past the end, an unknown value type, a tensor type other than f32, f16, bf16, q8_0, q4_0, q4_k.
    explicit File(std::filesystem::path path) : path_(std::move(path)), map_(path_), bytes_(map_.bytes()) { parse(); }

    const std::filesystem::path& path() const noexcept { return path_; }
    std::uint32_t version() const noexcept { return version_; }
    const std::vector<std::pair<std::string, Value>>& metadata() const noexcept { return metadata_; }
    const std::vector<TensorInfo>& tensors() const noexcept { return tensors_; }

    /// The value of `key`, or nullptr.
    const Value* find(std::string_view key) const {
        for (const auto& [k, v] : metadata_)
            if (k == key) return &v;
        return nullptr;
    }
    /// The value of `key`; a format_error naming the key when the file lacks it.
    const Value& at(std::string_view key) const {
        if (const Value* v = find(key)) return *v;
        throw format_error(path_, 0, "has no metadata key " + std::string(key));
    }
    /// The tensor named `name`; a format_error naming it when the file lacks it.
    const TensorInfo& tensor(std::string_view name) const {
        for (const auto& t : tensors_)
            if (t.name == name) return t;
        throw format_error(path_, 0, "has no tensor " + std::string(name));
    }

    /// The stored bytes of `t` (ggml blocks of its type).
    std::span<const std::byte> bytes(const TensorInfo& t) const {
        return {bytes_.data() + data_start_ + t.offset, t.bytes};
    }
    /// `t`'s values as floats (row-major, innermost dimension last in memory).
    std::vector<float> dequantize(const TensorInfo& t) const {
        std::vector<float> out(std::size_t(t.elements()));
        const std::int64_t row = t.ne.front(), rows = t.elements() / row;
        const std::size_t stride = quant::row_bytes(t.type, row);
        const std::byte* src = bytes(t).data();
        for (std::int64_t r = 0; r < rows; ++r)
            quant::dequantize_row(t.type, src + std::size_t(r) * stride, row, out.data() + r * row);
        return out;
    }

private:
    static bool readable_type(std::uint32_t t) {
        using enum quant::type;
        for (quant::type r : {F32, F16, BF16, Q8_0, Q4_0, Q4_K})
            if (t == std::uint32_t(r)) return true;
        return false;
    }
    [[noreturn]] void fail(std::uint64_t at, const std::string& what) const {
        throw format_error(path_, 0, "byte " + std::to_string(at) + ": " + what);
    }
    void need(std::uint64_t n, const char* what) const {
        if (n > size_ - pos_)
            fail(pos_, std::string(what) + " runs past the end of the file (" + std::to_string(size_) + " bytes)");
    }
    template <class T>
    T get(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    std::string get_string(const char* what) {
        const auto n = get<std::uint64_t>(what);
        need(n, what);
        std::string s(reinterpret_cast<const char*>(bytes_.data()) + pos_, std::size_t(n));
        pos_ += n;
        return s;
    }
    nlohmann::json get_scalar(value_type t, const std::string& key) {
        switch (t) {
            case value_type::u8:
                return get<std::uint8_t>(key.c_str());
            case value_type::i8:
                return get<std::int8_t>(key.c_str());
            case value_type::u16:
                return get<std::uint16_t>(key.c_str());
            case value_type::i16:
                return get<std::int16_t>(key.c_str());
            case value_type::u32:
                return get<std::uint32_t>(key.c_str());
            case value_type::i32:
                return get<std::int32_t>(key.c_str());
            case value_type::u64:
                return get<std::uint64_t>(key.c_str());
            case value_type::i64:
                return get<std::int64_t>(key.c_str());
            case value_type::f32:
                return get<float>(key.c_str());
            case value_type::f64:
                return get<double>(key.c_str());
            case value_type::boolean: {
                const auto b = get<std::uint8_t>(key.c_str());
                if (b > 1) fail(pos_ - 1, "metadata " + key + " is a bool of value " + std::to_string(b));
                return b == 1;
            }
            case value_type::string:
                return get_string(key.c_str());
            default:
                fail(pos_ - 4, "metadata " + key + " has value type " + std::to_string(std::uint32_t(t)) +
                                   ", expected 0..12 (arrays of arrays are not read)");
        }
    }
    value_type get_type(const std::string& key, bool element) {
        const auto t = get<std::uint32_t>("a value type");
        if (t > 12 || (element && t == std::uint32_t(value_type::array)))
            fail(pos_ - 4,
                 "metadata " + key + " has value type " + std::to_string(t) +
                     (element ? ", expected 0..12 other than 9 (array) for an array's elements" : ", expected 0..12"));
        return value_type(t);
    }

    void parse() {
        size_ = bytes_.size();
        if (size_ < 4 || std::memcmp(bytes_.data(), "GGUF", 4) != 0) fail(0, "is not a GGUF file (no \"GGUF\" magic)");
        pos_ = 4;
        version_ = get<std::uint32_t>("the version");
        if (version_ != 2 && version_ != 3)
            fail(4, "is GGUF version " + std::to_string(version_) + ", expected 2 or 3");
        const auto n_tensors = get<std::uint64_t>("the tensor count");
        const auto n_kv = get<std::uint64_t>("the metadata count");
        // Every entry takes at least 12 bytes: a bound that stops absurd counts before any allocation.
        if (n_kv > size_ / 12 || n_tensors > size_ / 12) fail(8, "declares more entries than the file can hold");
        std::uint64_t alignment = default_alignment;
        for (std::uint64_t i = 0; i < n_kv; ++i) {
            std::string key = get_string("a metadata key");
            Value v;
            v.type = get_type(key, false);
            if (v.type == value_type::array) {
                v.element = get_type(key, true);
                const auto n = get<std::uint64_t>("an array length");
                const std::size_t least = std::max<std::size_t>(detail::scalar_bytes(v.element), 8);
                if (n > (size_ - pos_) / least)
                    fail(pos_ - 8, "metadata " + key + " declares " + std::to_string(n) +
                                       " elements, more than the file can hold");
                v.data = nlohmann::json::array();
                for (std::uint64_t j = 0; j < n; ++j) v.data.push_back(get_scalar(v.element, key));
            } else {
                v.data = get_scalar(v.type, key);
            }
            if (key == "general.alignment") {
                if (v.type != value_type::u32 || v.data.get<std::uint64_t>() == 0 ||
                    (v.data.get<std::uint64_t>() & (v.data.get<std::uint64_t>() - 1)) != 0)
                    fail(pos_, "general.alignment must be a u32 power of two");
                alignment = v.data.get<std::uint64_t>();
            }
            metadata_.emplace_back(std::move(key), std::move(v));
        }
        for (std::uint64_t i = 0; i < n_tensors; ++i) {
            TensorInfo t;
            t.name = get_string("a tensor name");
            const auto n_dims = get<std::uint32_t>("a tensor's dimension count");
            if (n_dims < 1 || n_dims > 4)
                fail(pos_ - 4, "tensor " + t.name + " has " + std::to_string(n_dims) + " dimensions, expected 1 to 4");
            for (std::uint32_t d = 0; d < n_dims; ++d) {
                const auto n = get<std::uint64_t>("a tensor dimension");
                if (n < 1 || n > (std::uint64_t(1) << 40))
                    fail(pos_ - 8, "tensor " + t.name + " has dimension " + std::to_string(n));
                t.ne.push_back(std::int64_t(n));
            }
            const auto type = get<std::uint32_t>("a tensor type");
            if (!readable_type(type))
                fail(pos_ - 4, "tensor " + t.name + " has ggml type " + std::to_string(type) +
                                   ", which distill does not read (it reads f32, f16, bf16, q8_0, q4_0, q4_k)");
            t.type = quant::type(type);
            t.offset = get<std::uint64_t>("a tensor offset");
            if (t.ne.front() % quant::block_elements(t.type) != 0)
                fail(pos_ - 8, "tensor " + t.name + " has rows of " + std::to_string(t.ne.front()) +
                                   " values, not a multiple of its type's block");
            if (t.offset % alignment != 0) fail(pos_ - 8, "tensor " + t.name + " is not aligned");
            if (t.elements() > (std::int64_t(1) << 40)) fail(pos_ - 8, "tensor " + t.name + " is too large");
            t.bytes = quant::row_bytes(t.type, t.ne.front()) * std::size_t(t.elements() / t.ne.front());
            tensors_.push_back(std::move(t));
        }
        data_start_ = detail::align_up(pos_, alignment);
        for (const auto& t : tensors_)
            if (data_start_ > size_ || t.offset > size_ - data_start_ || t.bytes > size_ - data_start_ - t.offset)
                fail(data_start_ + t.offset,
                     "tensor " + t.name + " (" + std::to_string(t.bytes) + " bytes) runs past the end of the file");
    }

    std::filesystem::path path_;
    mapped_file map_;
    std::span<const std::byte> bytes_;
    std::uint64_t size_ = 0, pos_ = 0, data_start_ = 0;
    std::uint32_t version_ = 0;
    std::vector<std::pair<std::string, Value>> metadata_;
    std::vector<TensorInfo> tensors_;
};

}  // namespace distill::io::gguf
