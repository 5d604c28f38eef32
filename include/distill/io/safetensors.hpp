#pragma once
/// @file safetensors.hpp
/// Reading and writing the safetensors format: an 8-byte little-endian header length N, N bytes of
/// JSON header `{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
/// "__metadata__": {str: str}}` (possibly padded with spaces), then the data buffer the offsets
/// point into. A file is validated completely when opened, and a model's parameters are loaded only
/// after every check has passed, so a bad file never leaves a model half-loaded.
///
/// **Checksum.** The format has no integrity check of its own, so a flipped bit in a weight would load
/// silently. Files distill writes carry `"distill.crc32c": "<8 hex digits>"` in `__metadata__`: the
/// CRC-32C of the header's canonical JSON (nlohmann's compact dump, keys sorted, without that entry
/// and without `__metadata__` when nothing else is in it) followed by the data buffer. When present
/// it is verified on open, and a mismatch is a `format_error`; files from other writers (PyTorch,
/// Hugging Face) have none and load as before. `metadata()` does not list the entry.

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "distill/detail/hash.hpp"
#include "distill/error.hpp"
#include "distill/io/durable.hpp"

// Tensors are copied between the file and memory without byte swapping.
static_assert(std::endian::native == std::endian::little,
              "distill's safetensors support assumes a little-endian host, the byte order of the format");

namespace distill::io {

/// The element types the safetensors format names; the enumerator is the name used in the header.
enum class dtype { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

/// Every dtype, in the order error messages list them.
inline constexpr std::array<dtype, 10> all_dtypes = {dtype::F64, dtype::F32, dtype::F16, dtype::BF16, dtype::I64,
                                                     dtype::I32, dtype::I16, dtype::I8,  dtype::U8,   dtype::BOOL};

/// Bytes per element of `type`.
constexpr std::size_t dtype_size(dtype type) noexcept {
    switch (type) {
        case dtype::F64:
        case dtype::I64:
            return 8;
        case dtype::F32:
        case dtype::I32:
            return 4;
        case dtype::F16:
        case dtype::BF16:
        case dtype::I16:
            return 2;
        case dtype::I8:
        case dtype::U8:
        case dtype::BOOL:
            return 1;
    }
    return 0;
}

/// The name of `type` in a safetensors header, e.g. "BF16".
constexpr std::string_view dtype_name(dtype type) noexcept {
    switch (type) {
        case dtype::F64:
            return "F64";
        case dtype::F32:
            return "F32";
        case dtype::F16:
            return "F16";
        case dtype::BF16:
            return "BF16";
        case dtype::I64:
            return "I64";
        case dtype::I32:
            return "I32";
        case dtype::I16:
            return "I16";
        case dtype::I8:
            return "I8";
        case dtype::U8:
            return "U8";
        case dtype::BOOL:
            return "BOOL";
    }
    return "?";
}

/// The dtype a header names `name` (case-sensitive, as the format defines), or nullopt if none does.
constexpr std::optional<dtype> parse_dtype(std::string_view name) noexcept {
    for (dtype type : all_dtypes) {
        if (dtype_name(type) == name) return type;
    }
    return std::nullopt;
}

/// The `__metadata__` key of the checksum distill's writers record (see the file comment).
inline constexpr std::string_view checksum_key = "distill.crc32c";

/// Whether `type` is a floating-point dtype, i.e. one `safetensors_file::read` converts.
constexpr bool is_floating(dtype type) noexcept {
    return type == dtype::F64 || type == dtype::F32 || type == dtype::F16 || type == dtype::BF16;
}

/// IEEE 754 half precision bits to float; exact for every value, subnormals, infinities and NaNs.
inline float f16_to_float(std::uint16_t bits) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    const std::uint32_t exponent = (bits >> 10) & 0x1fu;
    const std::uint32_t mantissa = bits & 0x3ffu;
    if (exponent == 0) {
        // Zero or subnormal: mantissa * 2^-24, which float represents exactly.
        const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 0x1f) {
        // Infinity or NaN; the NaN payload is kept in the top mantissa bits.
        return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
    }
    // Rebias the exponent from 15 to 127.
    return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

/// bfloat16 bits to float: bfloat16 is the upper half of a float, so this is exact.
inline float bf16_to_float(std::uint16_t bits) noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

/// float to bfloat16 bits, rounding to nearest with ties to even; NaNs stay NaNs (and keep their sign).
inline std::uint16_t float_to_bf16(float value) noexcept {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    if (std::isnan(value)) {
        // Truncating could clear every mantissa bit and turn the NaN into infinity; set the quiet bit.
        return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
    }
    const std::uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

/// One tensor of a safetensors file: its name, element type, shape and byte range in the data buffer.
struct tensor_info {
    std::string name;
    dtype type = dtype::F32;
    std::vector<std::int64_t> shape;
    std::uint64_t begin = 0;  ///< first byte, relative to the start of the data buffer
    std::uint64_t end = 0;    ///< one past the last byte

    /// The number of elements, the product of `shape` (1 for a scalar). Precondition: it fits in int64,
    /// which safetensors_file has checked for every tensor it returns.
    std::int64_t numel() const noexcept {
        std::int64_t n = 1;
        for (std::int64_t d : shape) n *= d;
        return n;
    }
};

/// A model parameter bound by name for load_tensors and save_tensors: `data` points to `numel(shape)`
/// contiguous elements in row-major order.
/// @tparam T float or double; `const float` / `const double` for saving.
template <class T>
struct named_tensor {
    std::string name;
    T* data = nullptr;
    std::vector<std::int64_t> shape;
};

}  // namespace distill::io

namespace distill::detail {

/// "[2,3]", the way messages print a shape.
inline std::string shape_string(std::span<const std::int64_t> shape) {
    std::string text = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) text += ',';
        text += std::to_string(shape[i]);
    }
    return text + "]";
}

/// "'a', 'b', 'c' and 7 more": at most `limit` quoted names.
inline std::string name_list(const std::vector<std::string_view>& names, std::size_t limit = 10) {
    std::string text;
    for (std::size_t i = 0; i < names.size() && i < limit; ++i) {
        if (i) text += ", ";
        text += '\'';
        text.append(names[i]);
        text += '\'';
    }
    if (names.size() > limit) text += " and " + std::to_string(names.size() - limit) + " more";
    return text;
}

/// The product of `shape`, or nullopt if a dimension is negative or the product, or its size in bytes
/// at `element_size` bytes each, does not fit in int64.
inline std::optional<std::int64_t> checked_numel(std::span<const std::int64_t> shape, std::size_t element_size) {
    constexpr std::int64_t max = std::numeric_limits<std::int64_t>::max();
    std::int64_t n = 1;
    for (std::int64_t d : shape) {
        if (d < 0) return std::nullopt;
        if (d != 0 && n > max / d) return std::nullopt;
        n *= d;
    }
    if (n > max / static_cast<std::int64_t>(element_size)) return std::nullopt;
    return n;
}

/// Element `index` of a little-endian array of `Stored` at `src`, which need not be aligned.
template <class Stored>
Stored load_unaligned(const std::byte* src, std::size_t index) noexcept {
    Stored value;
    std::memcpy(&value, src + index * sizeof(Stored), sizeof(Stored));
    return value;
}

/// Hands `count` elements of `data`, each converted by `convert` to `Stored`, to `sink(bytes, size)`
/// in bounded chunks, so saving never needs a second copy of a whole tensor.
template <class Stored, class T, class Convert, class Sink>
void stream_converted(const T* data, std::size_t count, Convert convert, Sink&& sink) {
    constexpr std::size_t chunk = 16384;
    std::vector<Stored> buffer(std::min(count, chunk));
    for (std::size_t done = 0; done < count;) {
        const std::size_t n = std::min(chunk, count - done);
        for (std::size_t i = 0; i < n; ++i) buffer[i] = convert(data[done + i]);
        sink(static_cast<const void*>(buffer.data()), n * sizeof(Stored));
        done += n;
    }
}

/// Hands the bytes of `count` elements of `data` stored as `out` (F32, F64 or BF16) to `sink`.
template <class T, class Sink>
void stream_tensor(const T* data, std::size_t count, io::dtype out, Sink&& sink) {
    switch (out) {
        case io::dtype::F32:
            if constexpr (std::is_same_v<T, float>) {
                sink(static_cast<const void*>(data), count * sizeof(float));
            } else {
                stream_converted<float>(
                    data, count, [](T v) { return static_cast<float>(v); }, sink);
            }
            break;
        case io::dtype::F64:
            if constexpr (std::is_same_v<T, double>) {
                sink(static_cast<const void*>(data), count * sizeof(double));
            } else {
                stream_converted<double>(
                    data, count, [](T v) { return static_cast<double>(v); }, sink);
            }
            break;
        default:  // BF16
            stream_converted<std::uint16_t>(
                data, count, [](T v) { return io::float_to_bf16(static_cast<float>(v)); }, sink);
            break;
    }
}

/// The CRC-32C of a safetensors header's canonical text (see the file comment): `header` without the
/// checksum entry, dumped compactly with sorted keys. Continue it over the data buffer for the file's checksum.
inline std::uint32_t header_checksum(nlohmann::json header) {
    if (auto m = header.find("__metadata__"); m != header.end() && m->is_object()) {
        m->erase(std::string(io::checksum_key));
        if (m->empty()) header.erase(m);
    }
    const std::string text = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return crc32c(text.data(), text.size());
}

/// "0a1b2c3d": a checksum as the metadata records it.
inline std::string hex32(std::uint32_t v) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string s(8, '0');
    for (int i = 7; i >= 0; --i, v >>= 4) s[std::size_t(i)] = digits[v & 15u];
    return s;
}

/// The value of 8 hex digits, or nullopt.
inline std::optional<std::uint32_t> parse_hex32(std::string_view s) {
    if (s.size() != 8) return std::nullopt;
    std::uint32_t v = 0;
    for (char c : s) {
        const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return std::nullopt;
        v = (v << 4) | std::uint32_t(d);
    }
    return v;
}

}  // namespace distill::detail

namespace distill::io {

/// A safetensors file, memory-mapped read-only and validated completely when opened: every tensor's
/// dtype, shape and byte range, the absence of overlaps and gaps in the data buffer, and the metadata.
/// Move-only; the mapping is released on destruction.
class safetensors_file {
public:
    /// The largest header accepted; real headers are kilobytes, and the cap keeps a corrupt length from
    /// making the JSON parser chew through a huge file.
    static constexpr std::uint64_t max_header_bytes = 100u << 20;

    /// Maps and validates `path`. Throws io_error if it cannot be read and format_error (line 0)
    /// naming the file, the tensor where one is involved, and the defect if its content is malformed.
    explicit safetensors_file(std::filesystem::path path) : path_(std::move(path)), map_(path_) { parse(); }

    safetensors_file(const safetensors_file&) = delete;
    safetensors_file& operator=(const safetensors_file&) = delete;
    safetensors_file(safetensors_file&&) noexcept = default;
    safetensors_file& operator=(safetensors_file&&) noexcept = default;
    ~safetensors_file() = default;

    /// The file's path.
    const std::filesystem::path& path() const noexcept { return path_; }

    /// Every tensor, ordered by position in the data buffer.
    const std::vector<tensor_info>& tensors() const noexcept { return tensors_; }

    /// The string-to-string `__metadata__` of the header (empty if it has none), without distill's checksum entry.
    const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

    /// The verified checksum of a file distill wrote (see the file comment), or nullopt for a file without one.
    std::optional<std::uint32_t> checksum() const noexcept { return checksum_; }

    /// The tensor named `name`, or nullptr if the file has none.
    const tensor_info* find(std::string_view name) const {
        const auto it = index_.find(name);
        return it == index_.end() ? nullptr : &tensors_[it->second];
    }

    /// The tensor named `name`. Throws format_error naming the file and the tensor if there is none.
    const tensor_info& at(std::string_view name) const {
        if (const tensor_info* info = find(name)) return *info;
        throw format_error(path_, 0,
                           "no tensor named '" + std::string(name) + "' (the file holds " +
                               std::to_string(tensors_.size()) + " tensors)");
    }

    /// The raw little-endian bytes of `info`. Precondition: `info` comes from this file's `tensors()`.
    std::span<const std::byte> bytes(const tensor_info& info) const {
        if (info.begin > info.end || info.end > data_.size()) {
            throw error(path_.string() + ": tensor_info '" + info.name + "' does not belong to this file");
        }
        return data_.subspan(static_cast<std::size_t>(info.begin), static_cast<std::size_t>(info.end - info.begin));
    }

    /// Converts the floating-point tensor `info` (F64, F32, F16 or BF16) into `out`, then drops the
    /// tensor's mapped pages from the process (`mapped_file::release`): loading a model tensor by tensor
    /// holds one tensor's pages at a time.
    /// Throws shape_error if `out.size()` is not `info.numel()` and format_error if the tensor holds integers.
    /// @tparam T float or double.
    template <class T>
    void read(const tensor_info& info, std::span<T> out) const {
        static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "read() converts to float or double");
        const std::span<const std::byte> src = bytes(info);
        const auto n = static_cast<std::size_t>(info.numel());
        if (out.size() != n) {
            throw shape_error(path_.string() + ": tensor '" + info.name + "' of shape " +
                              distill::detail::shape_string(info.shape) + " has " + std::to_string(n) +
                              " elements, the output holds " + std::to_string(out.size()));
        }
        switch (info.type) {
            case dtype::F64:
                for (std::size_t i = 0; i < n; ++i)
                    out[i] = static_cast<T>(distill::detail::load_unaligned<double>(src.data(), i));
                break;
            case dtype::F32:
                if constexpr (std::is_same_v<T, float>) {
                    if (n > 0) std::memcpy(out.data(), src.data(), n * sizeof(float));
                } else {
                    for (std::size_t i = 0; i < n; ++i) out[i] = distill::detail::load_unaligned<float>(src.data(), i);
                }
                break;
            case dtype::F16:
                for (std::size_t i = 0; i < n; ++i) {
                    out[i] =
                        static_cast<T>(f16_to_float(distill::detail::load_unaligned<std::uint16_t>(src.data(), i)));
                }
                break;
            case dtype::BF16:
                for (std::size_t i = 0; i < n; ++i) {
                    out[i] =
                        static_cast<T>(bf16_to_float(distill::detail::load_unaligned<std::uint16_t>(src.data(), i)));
                }
                break;
            default:
                throw format_error(path_, 0,
                                   "tensor '" + info.name + "' is " + std::string(dtype_name(info.type)) +
                                       ", not a floating-point dtype; read it with read_integers()");
        }
        const auto at = static_cast<std::size_t>(data_.data() - map_.bytes().data());
        map_.release(at + static_cast<std::size_t>(info.begin), at + static_cast<std::size_t>(info.end));
    }

    /// The integer tensor `info` (I64, I32, I16, I8, U8 or BOOL) widened to int64.
    /// Throws format_error if the tensor is floating-point or a BOOL byte is neither 0 nor 1.
    std::vector<std::int64_t> read_integers(const tensor_info& info) const {
        const std::span<const std::byte> src = bytes(info);
        const auto n = static_cast<std::size_t>(info.numel());
        std::vector<std::int64_t> out(n);
        const auto widen = [&]<class Stored>(Stored) {
            for (std::size_t i = 0; i < n; ++i)
                out[i] = static_cast<std::int64_t>(distill::detail::load_unaligned<Stored>(src.data(), i));
        };
        switch (info.type) {
            case dtype::I64:
                widen(std::int64_t{});
                break;
            case dtype::I32:
                widen(std::int32_t{});
                break;
            case dtype::I16:
                widen(std::int16_t{});
                break;
            case dtype::I8:
                widen(std::int8_t{});
                break;
            case dtype::U8:
                widen(std::uint8_t{});
                break;
            case dtype::BOOL:
                widen(std::uint8_t{});
                for (std::size_t i = 0; i < n; ++i) {
                    if (out[i] > 1) {
                        throw format_error(path_, 0,
                                           "tensor '" + info.name + "': BOOL element " + std::to_string(i) +
                                               " holds byte " + std::to_string(out[i]) + ", not 0 or 1");
                    }
                }
                break;
            default:
                throw format_error(path_, 0,
                                   "tensor '" + info.name + "' is " + std::string(dtype_name(info.type)) +
                                       ", not an integer dtype; read it with read()");
        }
        return out;
    }

private:
    using json = nlohmann::json;

    format_error defect(const std::string& what) const { return format_error(path_, 0, what); }

    void parse() {
        const std::span<const std::byte> file = map_.bytes();
        if (file.size() < 8) {
            throw defect("file is " + std::to_string(file.size()) +
                         " bytes, too short to hold the 8-byte header length");
        }
        const auto header_size = distill::detail::load_unaligned<std::uint64_t>(file.data(), 0);
        // Checked before the end of the file so that a garbage length gets the clearer of the two messages.
        if (header_size > max_header_bytes) {
            throw defect("header length " + std::to_string(header_size) + " exceeds the limit of " +
                         std::to_string(max_header_bytes) + " bytes");
        }
        if (header_size > file.size() - 8) {
            throw defect("header length " + std::to_string(header_size) + " runs past the end of the file (" +
                         std::to_string(file.size() - 8) + " bytes follow the length field)");
        }
        const auto* header_text = reinterpret_cast<const char*>(file.data() + 8);
        data_ = file.subspan(8 + static_cast<std::size_t>(header_size));

        json header;
        try {
            header = json::parse(header_text, header_text + header_size);
        } catch (const json::exception& e) {
            throw defect(std::string("header is not valid JSON: ") + e.what());
        }
        if (!header.is_object()) throw defect(std::string("header is not a JSON object but ") + header.type_name());

        for (const auto& [key, value] : header.items()) {
            if (key == "__metadata__") {
                parse_metadata(value);
            } else {
                tensors_.push_back(parse_entry(key, value));
            }
        }
        std::sort(tensors_.begin(), tensors_.end(), [](const tensor_info& a, const tensor_info& b) {
            return std::pair(a.begin, a.end) < std::pair(b.begin, b.end);
        });
        check_coverage();
        for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
        verify_checksum(header);
    }

    // The structure is sound; a file distill wrote must also have the bytes it was written with.
    void verify_checksum(const json& header) {
        const auto it = metadata_.find(std::string(checksum_key));
        if (it == metadata_.end()) return;
        const std::optional<std::uint32_t> recorded = distill::detail::parse_hex32(it->second);
        if (!recorded) {
            throw defect("__metadata__ \"" + std::string(checksum_key) + "\" must be 8 lowercase hex digits, found \"" +
                         it->second.substr(0, 16) + "\"");
        }
        // in chunks whose pages are dropped once summed (`mapped_file::release`): verifying a large
        // checkpoint holds one chunk of it in memory, not the file
        constexpr std::size_t chunk = std::size_t(4) << 20;
        const auto at = static_cast<std::size_t>(data_.data() - map_.bytes().data());
        std::uint32_t actual = distill::detail::header_checksum(header);
        for (std::size_t i = 0; i < data_.size(); i += chunk) {
            const std::size_t n = std::min(chunk, data_.size() - i);
            actual = distill::detail::crc32c(data_.data() + i, n, actual);
            map_.release(at + i, at + i + n);
        }
        if (actual != *recorded) {
            throw defect("checksum mismatch: __metadata__ records CRC-32C " + it->second +
                         ", the header and data give " + distill::detail::hex32(actual) +
                         " (a flipped bit or a modified file); refused");
        }
        metadata_.erase(it);
        checksum_ = actual;
    }

    void parse_metadata(const json& value) {
        if (!value.is_object()) {
            throw defect(std::string("__metadata__ must be an object of strings, found ") + value.type_name());
        }
        for (const auto& [key, text] : value.items()) {
            if (!text.is_string()) {
                throw defect("__metadata__ key '" + key + "' must map to a string, found " + text.type_name());
            }
            metadata_.emplace(key, text.get<std::string>());
        }
    }

    /// "found a number" / "found an array of 3 elements": what a field holds, without dumping it.
    static std::string describe(const json& value) {
        if (value.is_array()) return "found an array of " + std::to_string(value.size()) + " elements";
        return std::string("found ") + value.type_name();
    }

    tensor_info parse_entry(const std::string& name, const json& entry) const {
        const std::string where = "tensor '" + name + "': ";
        if (!entry.is_object()) throw defect(where + "entry must be an object, " + describe(entry));
        const auto field = [&](const char* key) -> const json& {
            const auto it = entry.find(key);
            if (it == entry.end()) throw defect(where + "missing \"" + key + "\"");
            return *it;
        };

        tensor_info info;
        info.name = name;

        const json& type = field("dtype");
        if (!type.is_string()) throw defect(where + "\"dtype\" must be a string, " + describe(type));
        const auto& type_name = type.get_ref<const std::string&>();
        const std::optional<dtype> parsed = parse_dtype(type_name);
        if (!parsed) {
            std::string valid;
            for (dtype t : all_dtypes) valid += (valid.empty() ? "" : ", ") + std::string(dtype_name(t));
            throw defect(where + "unknown dtype \"" + type_name + "\" (valid: " + valid + ")");
        }
        info.type = *parsed;

        const json& shape = field("shape");
        if (!shape.is_array()) throw defect(where + "\"shape\" must be an array of integers, " + describe(shape));
        for (std::size_t i = 0; i < shape.size(); ++i) {
            const json& dim = shape[i];
            if (!dim.is_number_integer()) {
                throw defect(where + "\"shape\" must be an array of integers, element " + std::to_string(i) + " is " +
                             dim.type_name());
            }
            if (dim.is_number_unsigned() && dim.get<std::uint64_t>() > std::numeric_limits<std::int64_t>::max()) {
                throw defect(where + "shape dimension " + std::to_string(dim.get<std::uint64_t>()) + " is too large");
            }
            info.shape.push_back(dim.get<std::int64_t>());
        }
        if (std::any_of(info.shape.begin(), info.shape.end(), [](std::int64_t d) { return d < 0; })) {
            throw defect(where + "shape " + distill::detail::shape_string(info.shape) + " has a negative dimension");
        }
        const std::optional<std::int64_t> numel = distill::detail::checked_numel(info.shape, dtype_size(info.type));
        if (!numel) {
            throw defect(where + "shape " + distill::detail::shape_string(info.shape) + " has too many elements");
        }

        const json& offsets = field("data_offsets");
        const std::string offsets_rule =
            "\"data_offsets\" must be an array of two non-negative integers [begin, end], ";
        if (!offsets.is_array() || offsets.size() != 2) throw defect(where + offsets_rule + describe(offsets));
        for (std::size_t i = 0; i < 2; ++i) {
            if (!offsets[i].is_number_unsigned()) {
                throw defect(where + offsets_rule + "element " + std::to_string(i) + " is " +
                             (offsets[i].is_number_integer() ? "negative" : offsets[i].type_name()));
            }
        }
        info.begin = offsets[0].get<std::uint64_t>();
        info.end = offsets[1].get<std::uint64_t>();
        const std::string range = "[" + std::to_string(info.begin) + "," + std::to_string(info.end) + "]";
        if (info.end < info.begin) throw defect(where + "data_offsets " + range + " end before they begin");
        const auto needed = static_cast<std::uint64_t>(*numel) * dtype_size(info.type);
        if (info.end - info.begin != needed) {
            throw defect(where + "shape " + distill::detail::shape_string(info.shape) + " of " +
                         std::string(dtype_name(info.type)) + " needs " + std::to_string(needed) +
                         " bytes, data_offsets give " + std::to_string(info.end - info.begin));
        }
        if (info.end > data_.size()) {
            throw defect(where + "data_offsets " + range + " lie outside the data buffer of " +
                         std::to_string(data_.size()) + " bytes");
        }
        return info;
    }

    /// The tensors, sorted by offset, must tile the data buffer exactly: the format allows no overlaps
    /// and no unowned bytes (which could hide data or a truncated write).
    void check_coverage() const {
        std::uint64_t cursor = 0;
        const tensor_info* previous = nullptr;
        const auto bytes_of = [](const tensor_info& t) {
            return "bytes " + std::to_string(t.begin) + ".." + std::to_string(t.end);
        };
        for (const tensor_info& t : tensors_) {
            if (t.begin < cursor) {
                throw defect("tensors '" + previous->name + "' (" + bytes_of(*previous) + ") and '" + t.name + "' (" +
                             bytes_of(t) + ") overlap");
            }
            if (t.begin > cursor) {
                throw defect("bytes " + std::to_string(cursor) + ".." + std::to_string(t.begin) +
                             " of the data buffer belong to no tensor (the gap before tensor '" + t.name + "')");
            }
            cursor = t.end;
            previous = &t;
        }
        if (cursor < data_.size()) {
            throw defect("bytes " + std::to_string(cursor) + ".." + std::to_string(data_.size()) +
                         " of the data buffer belong to no tensor (" +
                         (previous ? "after tensor '" + previous->name + "'" : std::string("the file has no tensors")) +
                         ")");
        }
    }

    std::filesystem::path path_;
    io::mapped_file map_;
    std::span<const std::byte> data_;  // the data buffer, inside map_
    std::vector<tensor_info> tensors_;
    std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in tensors_
    std::map<std::string, std::string> metadata_;
    std::optional<std::uint32_t> checksum_;
};

/// Loads every tensor of `file` into the matching target, converting to T. All checks run before any
/// data is copied, so on error no target has been touched: every target must exist in the file with
/// exactly its shape and a floating-point dtype, and the file must hold no tensor that is not a target.
/// Throws format_error naming the missing and unexpected tensors, shape_error naming the tensor and
/// both shapes, or distill::error for duplicate or null targets. With `read` false it only checks
/// (null targets allowed): a caller that stores tensors its own way reads them afterwards.
/// @tparam T float or double; give it explicitly when passing a vector: `load_tensors<float>(file, params)`.
template <class T>
void load_tensors(const safetensors_file& file, std::span<const named_tensor<T>> targets, bool read = true) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "load_tensors loads float or double");
    const std::string where = file.path().string() + ": ";

    std::set<std::string_view> wanted;
    std::vector<std::string_view> missing;
    for (const named_tensor<T>& target : targets) {
        if (!wanted.insert(target.name).second) {
            throw error(where + "load_tensors: target '" + target.name + "' is listed twice");
        }
        if (!file.find(target.name)) missing.push_back(target.name);
    }
    std::vector<std::string_view> unexpected;
    for (const tensor_info& info : file.tensors()) {
        if (!wanted.contains(info.name)) unexpected.push_back(info.name);
    }
    if (!missing.empty() || !unexpected.empty()) {
        std::string what = "tensors do not match the model:";
        if (!missing.empty()) {
            what += " missing " + std::to_string(missing.size()) +
                    " tensor(s) the model expects: " + distill::detail::name_list(missing);
            if (!unexpected.empty()) what += ";";
        }
        if (!unexpected.empty()) {
            what += " " + std::to_string(unexpected.size()) +
                    " unexpected tensor(s) the model does not have: " + distill::detail::name_list(unexpected);
        }
        throw format_error(file.path(), 0, what);
    }

    for (const named_tensor<T>& target : targets) {
        const tensor_info& info = *file.find(target.name);
        if (info.shape != target.shape) {
            throw shape_error(where + "tensor '" + target.name + "': expected shape " +
                              distill::detail::shape_string(target.shape) + ", found " +
                              distill::detail::shape_string(info.shape));
        }
        if (!is_floating(info.type)) {
            throw format_error(file.path(), 0,
                               "tensor '" + target.name + "' is " + std::string(dtype_name(info.type)) +
                                   ", but the model expects a floating-point tensor");
        }
        if (read && target.data == nullptr && info.numel() > 0) {
            throw error(where + "load_tensors: target '" + target.name + "' has no data pointer");
        }
    }

    if (!read) return;
    for (const named_tensor<T>& target : targets) {
        const tensor_info& info = *file.find(target.name);
        file.read(info, std::span<T>(target.data, static_cast<std::size_t>(info.numel())));
    }
}

/// Writes `tensors` to `path` as a safetensors file with element type `out` (F32, BF16 or F64), in the
/// given order, with `metadata` as `__metadata__` plus the checksum entry (see the file comment). BF16
/// rounds to nearest even and keeps NaNs; a double goes to BF16 through float. The header is padded with
/// spaces to a multiple of 8 bytes so that the data buffer is aligned. The file is replaced atomically
/// and tensors are streamed, not buffered whole (they are read twice: once for the checksum).
/// Throws distill::error for invalid input (duplicate, empty or reserved names, negative dimensions,
/// null data, an unsupported `out`) before anything is written, and io_error if writing fails.
/// @tparam T float or double; give it explicitly when passing a vector: `save_tensors<float>(path, params)`.
template <class T>
void save_tensors(const std::filesystem::path& path, std::span<const named_tensor<const T>> tensors,
                  dtype out = dtype::F32, const std::map<std::string, std::string>& metadata = {}) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "save_tensors saves float or double");
    const std::string where = path.string() + ": save_tensors: ";
    if (out != dtype::F32 && out != dtype::BF16 && out != dtype::F64) {
        throw error(where + "cannot write dtype " + std::string(dtype_name(out)) + "; use F32, BF16 or F64");
    }

    std::map<std::string, std::string> meta = metadata;
    meta.erase(std::string(checksum_key));
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!meta.empty()) header["__metadata__"] = meta;
    std::set<std::string_view> names;
    std::uint64_t offset = 0;
    for (const named_tensor<const T>& t : tensors) {
        if (t.name.empty() || t.name == "__metadata__") {
            throw error(where + "'" + t.name + "' cannot be a tensor name");
        }
        if (!names.insert(t.name).second) throw error(where + "tensor '" + t.name + "' is listed twice");
        const std::optional<std::int64_t> numel = distill::detail::checked_numel(t.shape, dtype_size(out));
        if (!numel) {
            throw error(where + "tensor '" + t.name + "' has invalid shape " + distill::detail::shape_string(t.shape));
        }
        if (t.data == nullptr && *numel > 0) throw error(where + "tensor '" + t.name + "' has no data pointer");
        const std::uint64_t size = static_cast<std::uint64_t>(*numel) * dtype_size(out);
        header[t.name] = {{"dtype", dtype_name(out)},
                          {"shape", t.shape},
                          {"data_offsets", nlohmann::ordered_json::array({offset, offset + size})}};
        offset += size;
    }

    std::string text;
    try {
        // dump() refuses names and metadata that are not valid UTF-8; so does the checksum's canonical form.
        std::uint32_t crc = distill::detail::header_checksum(nlohmann::json::parse(header.dump()));
        for (const named_tensor<const T>& t : tensors) {
            distill::detail::stream_tensor(
                t.data, static_cast<std::size_t>(*distill::detail::checked_numel(t.shape, 1)), out,
                [&](const void* p, std::size_t n) { crc = distill::detail::crc32c(p, n, crc); });
        }
        meta[std::string(checksum_key)] = distill::detail::hex32(crc);
        header["__metadata__"] = meta;
        text = header.dump();
    } catch (const nlohmann::json::exception& e) {
        throw error(where + "cannot encode the header: " + e.what());
    }
    text.append((8 - text.size() % 8) % 8, ' ');
    const std::uint64_t header_size = text.size();

    atomic_writer writer(path);
    writer.write(&header_size, sizeof header_size);
    writer.write(text.data(), text.size());
    for (const named_tensor<const T>& t : tensors) {
        distill::detail::stream_tensor(t.data, static_cast<std::size_t>(*distill::detail::checked_numel(t.shape, 1)),
                                       out, [&](const void* p, std::size_t n) { writer.write(p, n); });
    }
    writer.commit();
}

}  // namespace distill::io
