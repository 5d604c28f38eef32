// Tests of distill/io: atomic file writing, the safetensors reader and writer, and the integrity of the
// files distill reads back (weights, checkpoints, top-k caches: every byte flipped in turn). Every
// malformed-file test builds the bad bytes by hand, so each defect the reader promises to name is
// exercised alone.

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xtensor/xsort.hpp>

#include "distill/detail/rng.hpp"
#include "distill/device/cpu.hpp"
#include "distill/error.hpp"
#include "distill/io/checkpoint.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/io/topk_cache.hpp"
#include "distill/io/weights.hpp"
#include "distill/optim/adam.hpp"
#include "distill/student/transformer.hpp"
#include "distill/xview.hpp"

namespace fs = std::filesystem;
using distill::format_error;
using distill::io_error;
using distill::shape_error;
using distill::io::dtype;
using distill::io::named_tensor;
using distill::io::safetensors_file;
using doctest::Contains;

namespace {

/// A fresh directory under the system temp directory, removed with everything in it at scope exit.
struct temp_dir {
    fs::path path;

    temp_dir() {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() /
               ("distill-unit-io-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ignored;
        fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ignored);
        fs::remove_all(path, ignored);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;

    /// Writes `bytes` to `name` inside the directory and returns its path.
    fs::path file(const std::string& name, const std::string& bytes) const {
        const fs::path p = path / name;
        std::ofstream(p, std::ios::binary) << bytes;
        return p;
    }

    /// The names of the directory's entries, sorted.
    std::vector<std::string> entries() const {
        std::vector<std::string> names;
        for (const auto& entry : fs::directory_iterator(path)) names.push_back(entry.path().filename().string());
        std::sort(names.begin(), names.end());
        return names;
    }
};

std::string read_all(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// `value` as 8 little-endian bytes.
std::string le64(std::uint64_t value) {
    std::string bytes(8, '\0');
    std::memcpy(bytes.data(), &value, 8);
    return bytes;
}

/// A safetensors file: the header length, `header` and `data_size` bytes of data.
std::string safetensors_bytes(const std::string& header, std::size_t data_size) {
    return le64(header.size()) + header + std::string(data_size, '\x01');
}

/// Raw little-endian bytes of `values`.
template <class T>
std::string raw(std::initializer_list<T> values) {
    std::string bytes(values.size() * sizeof(T), '\0');
    std::memcpy(bytes.data(), std::data(values), bytes.size());
    return bytes;
}

void open_file(const fs::path& p) {
    safetensors_file file(p);
}

}  // namespace

// Asserts that opening a file made of `bytes` fails with a format_error whose message contains
// `message` and names the file.
#define CHECK_DEFECT(bytes, message)                                                          \
    do {                                                                                      \
        temp_dir dir_;                                                                        \
        const fs::path bad_ = dir_.file("bad.safetensors", bytes);                            \
        CHECK_THROWS_WITH_AS(open_file(bad_), Contains(message), format_error);               \
        CHECK_THROWS_WITH_AS(open_file(bad_), Contains(bad_.string().c_str()), format_error); \
    } while (false)

// ---------------------------------------------------------------------------------------------------
// Round trips

TEST_CASE("safetensors: F32 round trip keeps values, order, shapes and metadata") {
    temp_dir dir;
    const fs::path p = dir.path / "model.safetensors";
    const std::vector<float> w = {1.5f, -2.25f, 3.0e-8f, 1.0e30f, -0.0f, 7.0f};
    const float bias = 0.125f;
    const std::vector<named_tensor<const float>> tensors = {
        {"layer.weight", w.data(), {2, 3}}, {"layer.bias", &bias, {}}, {"empty", nullptr, {0, 4}}};
    const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "h\u00e9llo \"quoted\""}};
    distill::io::save_tensors<float>(p, tensors, dtype::F32, metadata);

    const std::string bytes = read_all(p);
    std::uint64_t header_size = 0;
    std::memcpy(&header_size, bytes.data(), 8);
    CHECK(header_size % 8 == 0);
    CHECK(dir.entries() == std::vector<std::string>{"model.safetensors"});

    const safetensors_file file(p);
    CHECK(file.path() == p);
    CHECK(file.metadata() == metadata);
    REQUIRE(file.tensors().size() == 3);
    // Ordered by offset, which is the order they were saved in (the empty tensor takes no bytes).
    CHECK(file.tensors()[0].name == "layer.weight");
    const auto& info = file.at("layer.weight");
    CHECK(info.type == dtype::F32);
    CHECK(info.shape == std::vector<std::int64_t>{2, 3});
    CHECK(info.numel() == 6);
    CHECK(info.end - info.begin == 24);
    CHECK(file.bytes(info).size() == 24);

    std::vector<float> back(6);
    file.read(info, std::span(back));
    CHECK(std::memcmp(back.data(), w.data(), 24) == 0);  // bit-exact, including -0.0

    float scalar = 0;
    file.read(file.at("layer.bias"), std::span(&scalar, 1));
    CHECK(scalar == bias);
    CHECK(file.at("layer.bias").shape.empty());
    CHECK(file.at("empty").numel() == 0);

    std::vector<double> as_double(6);
    file.read(info, std::span(as_double));
    CHECK(as_double[1] == -2.25);
    CHECK(file.find("nope") == nullptr);
}

TEST_CASE("safetensors: BF16 round trip is exact for representable values and rounds to nearest even") {
    temp_dir dir;
    const fs::path p = dir.path / "bf16.safetensors";
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float inf = std::numeric_limits<float>::infinity();
    // 1 + 2^-8 is a tie between 1 (even) and 1 + 2^-7; 1 + 3*2^-8 a tie between 1 + 2^-7 and 1 + 2^-6 (even);
    // 1.1f = 0x3F8CCCCD is nearer 0x3F8D than 0x3F8C.
    const std::vector<float> values = {1.0f, -2.5f,       0.15625f,    65536.0f, -0.0f,
                                       inf,  1.00390625f, 1.01171875f, 1.1f,     nan};
    const std::vector<named_tensor<const float>> tensors = {{"x", values.data(), {10}}};
    distill::io::save_tensors<float>(p, tensors, dtype::BF16);

    const safetensors_file file(p);
    const auto& info = file.at("x");
    CHECK(info.type == dtype::BF16);
    CHECK(info.end - info.begin == 20);
    std::vector<float> back(10);
    file.read(info, std::span(back));
    CHECK(back[0] == 1.0f);
    CHECK(back[1] == -2.5f);
    CHECK(back[2] == 0.15625f);
    CHECK(back[3] == 65536.0f);
    CHECK(std::signbit(back[4]));
    CHECK(back[4] == 0.0f);
    CHECK(back[5] == inf);
    CHECK(back[6] == 1.0f);
    CHECK(back[7] == 1.015625f);
    CHECK(back[8] == 1.1015625f);
    CHECK(std::isnan(back[9]));

    // A NaN whose payload lies only in the low 16 bits must not truncate to infinity.
    CHECK(std::isnan(distill::io::bf16_to_float(distill::io::float_to_bf16(std::bit_cast<float>(0x7f800001u)))));
    // The largest finite float rounds up to infinity, as round-to-nearest requires.
    CHECK(distill::io::bf16_to_float(distill::io::float_to_bf16(std::numeric_limits<float>::max())) == inf);
}

TEST_CASE("safetensors: F64 round trip is exact, and F32/F64 convert both ways") {
    temp_dir dir;
    const std::vector<double> values = {0.1, 1.0e300, -4.9e-324, 1.0 / 3.0};
    const std::vector<named_tensor<const double>> tensors = {{"d", values.data(), {2, 2}}};

    distill::io::save_tensors<double>(dir.path / "f64.safetensors", tensors, dtype::F64);
    const safetensors_file f64(dir.path / "f64.safetensors");
    CHECK(f64.at("d").type == dtype::F64);
    std::vector<double> back(4);
    f64.read(f64.at("d"), std::span(back));
    CHECK(back == values);

    distill::io::save_tensors<double>(dir.path / "f32.safetensors", tensors);
    const safetensors_file f32(dir.path / "f32.safetensors");
    CHECK(f32.at("d").type == dtype::F32);
    f32.read(f32.at("d"), std::span(back));
    CHECK(back[0] == static_cast<double>(0.1f));
    CHECK(std::isinf(back[1]));

    const std::vector<float> floats = {0.5f, -3.0f};
    const std::vector<named_tensor<const float>> float_tensors = {{"f", floats.data(), {2}}};
    distill::io::save_tensors<float>(dir.path / "up.safetensors", float_tensors, dtype::F64);
    const safetensors_file up(dir.path / "up.safetensors");
    std::vector<float> floats_back(2);
    up.read(up.at("f"), std::span(floats_back));
    CHECK(floats_back == floats);
}

TEST_CASE("safetensors: F16 decodes known bit patterns exactly") {
    temp_dir dir;
    const std::string header = R"({"h":{"dtype":"F16","shape":[9],"data_offsets":[0,18]}})";
    const std::string data =
        raw<std::uint16_t>({0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x7C00, 0xFC00, 0x7E00, 0x8000});
    const fs::path p = dir.file("f16.safetensors", le64(header.size()) + header + data);

    const safetensors_file file(p);
    std::vector<float> v(9);
    file.read(file.at("h"), std::span(v));
    CHECK(v[0] == 1.0f);
    CHECK(v[1] == -2.0f);
    CHECK(v[2] == 65504.0f);
    CHECK(v[3] == std::ldexp(1.0f, -24));     // smallest subnormal
    CHECK(v[4] == std::ldexp(1023.0f, -24));  // largest subnormal
    CHECK(v[5] == std::numeric_limits<float>::infinity());
    CHECK(v[6] == -std::numeric_limits<float>::infinity());
    CHECK(std::isnan(v[7]));
    CHECK(v[8] == 0.0f);
    CHECK(std::signbit(v[8]));
}

TEST_CASE("safetensors: integer tensors widen to int64") {
    temp_dir dir;
    const std::string header = R"({"i32":{"dtype":"I32","shape":[3],"data_offsets":[0,12]},)"
                               R"("u8":{"dtype":"U8","shape":[2],"data_offsets":[12,14]},)"
                               R"("i8":{"dtype":"I8","shape":[1],"data_offsets":[14,15]},)"
                               R"("flag":{"dtype":"BOOL","shape":[2],"data_offsets":[15,17]},)"
                               R"("i64":{"dtype":"I64","shape":[1],"data_offsets":[17,25]},)"
                               R"("i16":{"dtype":"I16","shape":[1],"data_offsets":[25,27]}})";
    const std::string data = raw<std::int32_t>({-1, 7, 2147483647}) + raw<std::uint8_t>({200, 0}) +
                             raw<std::int8_t>({-128}) + raw<std::uint8_t>({1, 0}) + raw<std::int64_t>({-5000000000}) +
                             raw<std::int16_t>({-300});
    const safetensors_file file(dir.file("ints.safetensors", le64(header.size()) + header + data));

    CHECK(file.read_integers(file.at("i32")) == std::vector<std::int64_t>{-1, 7, 2147483647});
    CHECK(file.read_integers(file.at("u8")) == std::vector<std::int64_t>{200, 0});
    CHECK(file.read_integers(file.at("i8")) == std::vector<std::int64_t>{-128});
    CHECK(file.read_integers(file.at("flag")) == std::vector<std::int64_t>{1, 0});
    CHECK(file.read_integers(file.at("i64")) == std::vector<std::int64_t>{-5000000000});
    CHECK(file.read_integers(file.at("i16")) == std::vector<std::int64_t>{-300});

    std::vector<float> out(3);
    CHECK_THROWS_WITH_AS(file.read(file.at("i32"), std::span(out)), Contains("tensor 'i32' is I32"), format_error);
}

TEST_CASE("safetensors: a BOOL byte other than 0 or 1 is reported") {
    temp_dir dir;
    const std::string header = R"({"mask":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})";
    const safetensors_file file(dir.file("bool.safetensors", le64(header.size()) + header + raw<std::uint8_t>({1, 2})));
    CHECK_THROWS_WITH_AS(file.read_integers(file.at("mask")), Contains("tensor 'mask': BOOL element 1 holds byte 2"),
                         format_error);
}

TEST_CASE("safetensors: read errors name the file and the tensor") {
    temp_dir dir;
    const std::vector<float> w(6, 1.0f);
    const std::vector<named_tensor<const float>> tensors = {{"w", w.data(), {2, 3}}};
    const fs::path p = dir.path / "m.safetensors";
    distill::io::save_tensors<float>(p, tensors);
    const safetensors_file file(p);

    CHECK_THROWS_WITH_AS(file.at("missing"), Contains("no tensor named 'missing'"), format_error);
    CHECK_THROWS_WITH_AS(file.at("missing"), Contains(p.string().c_str()), format_error);
    std::vector<float> wrong(5);
    CHECK_THROWS_WITH_AS(file.read(file.at("w"), std::span(wrong)),
                         Contains("tensor 'w' of shape [2,3] has 6 elements, the output holds 5"), shape_error);
    CHECK_THROWS_WITH_AS(file.read_integers(file.at("w")), Contains("tensor 'w' is F32, not an integer dtype"),
                         format_error);
}

TEST_CASE("safetensors: safetensors_file is move-only and stays valid when moved") {
    static_assert(!std::is_copy_constructible_v<safetensors_file>);
    static_assert(!std::is_copy_assignable_v<safetensors_file>);
    static_assert(std::is_nothrow_move_constructible_v<safetensors_file>);

    temp_dir dir;
    const std::vector<float> w = {4.0f, 5.0f};
    const std::vector<named_tensor<const float>> tensors = {{"w", w.data(), {2}}};
    distill::io::save_tensors<float>(dir.path / "m.safetensors", tensors);
    safetensors_file first(dir.path / "m.safetensors");
    safetensors_file second(std::move(first));
    std::vector<float> back(2);
    second.read(second.at("w"), std::span(back));
    CHECK(back == w);
}

// This process's resident memory (VmRSS of /proc/self/status: anonymous, file and shared pages,
// as a temporary directory may be tmpfs), in KiB.
static long resident_kib() {
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
        if (line.starts_with("VmRSS:")) return std::stol(line.substr(6));
    return -1;
}

TEST_CASE("safetensors: read drops the tensor's mapped pages once copied, and reads it again unchanged") {
    temp_dir dir;
    std::vector<float> w(std::size_t(8) << 20);  // 32 MiB
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = float(i % 977) - 488.0f;
    const float tail = 3.5f;
    const std::vector<named_tensor<const float>> tensors = {{"big", w.data(), {std::int64_t(w.size())}},
                                                            {"tail", &tail, {}}};
    distill::io::save_tensors<float>(dir.path / "m.safetensors", tensors);
    std::vector<float> back(w.size(), 1.0f);  // its pages touched before the measurements
    const long before = resident_kib();
    REQUIRE(before >= 0);
    const safetensors_file file(dir.path / "m.safetensors");  // its checksum verified chunk by chunk
    CHECK(file.checksum().has_value());
    CHECK(resident_kib() - before < 1024);
    // the measurement sees the mapping: touching every page of the tensor makes them resident
    const auto bytes = file.bytes(file.at("big"));
    std::uint64_t sum = 0;
    for (std::size_t i = 3; i < bytes.size(); i += 4096) sum += std::uint64_t(bytes[i]);  // high bytes
    CHECK(sum > 0);
    CHECK(resident_kib() - before > 30 * 1024);
    file.read(file.at("big"), std::span(back));
    CHECK(resident_kib() - before < 1024);  // at most the two partial pages at its ends
    CHECK(back == w);
    std::fill(back.begin(), back.end(), 0.0f);
    file.read(file.at("big"), std::span(back));  // mapped again from the page cache
    CHECK(back == w);
    float t = 0;
    file.read(file.at("tail"), std::span(&t, 1));  // the neighbour shares a page, which stays
    CHECK(t == tail);
}

TEST_CASE("safetensors: an unreadable path is an io_error naming it") {
    temp_dir dir;
    CHECK_THROWS_WITH_AS(open_file(dir.path / "absent.safetensors"), Contains("absent.safetensors: cannot open"),
                         io_error);
    CHECK_THROWS_WITH_AS(open_file(dir.path), Contains("not a regular file"), io_error);
}

// ---------------------------------------------------------------------------------------------------
// One test per defect the reader reports

TEST_CASE("safetensors defect: file shorter than 8 bytes") {
    CHECK_DEFECT(std::string("abc"), "file is 3 bytes, too short to hold the 8-byte header length");
    CHECK_DEFECT(std::string(), "file is 0 bytes");
}

TEST_CASE("safetensors defect: header length past the end of the file") {
    CHECK_DEFECT(le64(100) + "{}", "header length 100 runs past the end of the file (2 bytes follow");
}

TEST_CASE("safetensors defect: header length over the limit") {
    CHECK_DEFECT(le64((100u << 20) + 1) + "{}", "header length 104857601 exceeds the limit of 104857600 bytes");
    CHECK_DEFECT(le64(~std::uint64_t{0}) + "{}", "exceeds the limit");
}

TEST_CASE("safetensors defect: header is not valid JSON") {
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": )", 0), "header is not valid JSON: ");
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": )", 0), "parse error");  // nlohmann's own explanation
    CHECK_DEFECT(safetensors_bytes("", 0), "header is not valid JSON");
}

TEST_CASE("safetensors defect: header is not an object") {
    CHECK_DEFECT(safetensors_bytes("[1, 2]", 0), "header is not a JSON object but array");
    // Absurd nesting is rejected without exhausting the stack.
    CHECK_DEFECT(safetensors_bytes(std::string(100000, '[') + std::string(100000, ']'), 0),
                 "header is not a JSON object");
}

TEST_CASE("safetensors defect: entry is not an object") {
    CHECK_DEFECT(safetensors_bytes(R"({"w": 5})", 0), "tensor 'w': entry must be an object, found number");
}

TEST_CASE("safetensors defect: dtype missing") {
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", 4),
                 "tensor 'w': missing \"dtype\"");
}

TEST_CASE("safetensors defect: dtype not a string") {
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})", 4),
                 "tensor 'w': \"dtype\" must be a string, found number");
}

TEST_CASE("safetensors defect: unknown dtype") {
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}})", 1),
                 "tensor 'w': unknown dtype \"F8\" (valid: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
}

TEST_CASE("safetensors defect: shape missing") {
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", 4),
                 "tensor 'w': missing \"shape\"");
}

TEST_CASE("safetensors defect: shape not an array of integers") {
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": "2x3", "data_offsets": [0, 24]}})", 24),
                 "tensor 'w': \"shape\" must be an array of integers, found string");
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [2, 3.0], "data_offsets": [0, 24]}})", 24),
                 "tensor 'w': \"shape\" must be an array of integers, element 1 is number");
}

TEST_CASE("safetensors defect: data_offsets missing") {
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [1]}})", 4),
                 "tensor 'w': missing \"data_offsets\"");
}

TEST_CASE("safetensors defect: data_offsets not two non-negative integers") {
    const std::string rule = "tensor 'w': \"data_offsets\" must be an array of two non-negative integers";
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", 4),
                 (rule + " [begin, end], found an array of 3 elements").c_str());
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 4),
                 (rule + " [begin, end], element 0 is negative").c_str());
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": {"a": 1}}})", 4),
                 (rule + " [begin, end], found object").c_str());
}

TEST_CASE("safetensors defect: negative shape dimension") {
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 0]}})", 0),
                 "tensor 'w': shape [2,-3] has a negative dimension");
}

TEST_CASE("safetensors defect: element count overflows") {
    CHECK_DEFECT(
        safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", 0),
        "tensor 'w': shape [4294967296,4294967296] has too many elements");
    // The element count fits, its size in bytes does not.
    CHECK_DEFECT(
        safetensors_bytes(R"({"w": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", 0),
        "tensor 'w': shape [4611686018427387904] has too many elements");
    CHECK_DEFECT(
        safetensors_bytes(R"({"w": {"dtype": "F64", "shape": [18446744073709551615], "data_offsets": [0, 0]}})", 0),
        "tensor 'w': shape dimension 18446744073709551615 is too large");
}

TEST_CASE("safetensors defect: byte size disagrees with shape and dtype") {
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 20),
                 "tensor 'w': shape [2,3] of F32 needs 24 bytes, data_offsets give 20");
}

TEST_CASE("safetensors defect: data_offsets reversed") {
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 8),
                 "tensor 'w': data_offsets [8,4] end before they begin");
}

TEST_CASE("safetensors defect: data_offsets outside the data buffer") {
    CHECK_DEFECT(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}})", 20),
                 "tensor 'w': data_offsets [0,24] lie outside the data buffer of 20 bytes");
}

TEST_CASE("safetensors defect: overlapping tensors") {
    CHECK_DEFECT(safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]},)"
                                   R"( "b": {"dtype": "F32", "shape": [6], "data_offsets": [16, 40]}})",
                                   40),
                 "tensors 'a' (bytes 0..24) and 'b' (bytes 16..40) overlap");
}

TEST_CASE("safetensors defect: bytes of the data buffer that belong to no tensor") {
    CHECK_DEFECT(safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                                   R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}})",
                                   24),
                 "bytes 8..16 of the data buffer belong to no tensor (the gap before tensor 'b')");
    CHECK_DEFECT(safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12),
                 "bytes 0..4 of the data buffer belong to no tensor (the gap before tensor 'a')");
    CHECK_DEFECT(safetensors_bytes(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 12),
                 "bytes 8..12 of the data buffer belong to no tensor (after tensor 'a')");
    CHECK_DEFECT(safetensors_bytes("{}", 3),
                 "bytes 0..3 of the data buffer belong to no tensor (the file has no tensors)");
}

TEST_CASE("safetensors defect: __metadata__ not a string-to-string object") {
    CHECK_DEFECT(safetensors_bytes(R"({"__metadata__": ["x"]})", 0),
                 "__metadata__ must be an object of strings, found array");
    CHECK_DEFECT(safetensors_bytes(R"({"__metadata__": {"epoch": 3}})", 0),
                 "__metadata__ key 'epoch' must map to a string, found number");
}

TEST_CASE("safetensors: header padding, an empty file of tensors and metadata only are valid") {
    temp_dir dir;
    const safetensors_file padded(
        dir.file("p.safetensors", safetensors_bytes(R"({"__metadata__": {"k": "v"}}    )", 0)));
    CHECK(padded.tensors().empty());
    CHECK(padded.metadata().at("k") == "v");
}

// ---------------------------------------------------------------------------------------------------
// load_tensors / save_tensors

namespace {

constexpr float sentinel = -777.0f;

/// Saves tensors "a" (2x3, values 0..5) and "b" (4, values 10..13) to `dir`/model.safetensors.
fs::path save_model(const temp_dir& dir) {
    const std::vector<float> a = {0, 1, 2, 3, 4, 5};
    const std::vector<float> b = {10, 11, 12, 13};
    const std::vector<named_tensor<const float>> tensors = {{"a", a.data(), {2, 3}}, {"b", b.data(), {4}}};
    const fs::path p = dir.path / "model.safetensors";
    distill::io::save_tensors<float>(p, tensors);
    return p;
}

bool untouched(const std::vector<float>& v) {
    return std::all_of(v.begin(), v.end(), [](float x) { return x == sentinel; });
}

}  // namespace

TEST_CASE("load_tensors: loads every target when names and shapes match") {
    temp_dir dir;
    const safetensors_file file(save_model(dir));
    std::vector<double> a(6, sentinel), b(4, sentinel);
    const std::vector<named_tensor<double>> targets = {{"b", b.data(), {4}}, {"a", a.data(), {2, 3}}};
    distill::io::load_tensors<double>(file, targets);
    CHECK(a == std::vector<double>{0, 1, 2, 3, 4, 5});
    CHECK(b == std::vector<double>{10, 11, 12, 13});
}

TEST_CASE("load_tensors: a missing tensor is reported and nothing is loaded") {
    temp_dir dir;
    const safetensors_file file(save_model(dir));
    std::vector<float> a(6, sentinel), b(4, sentinel), c(2, sentinel);
    const std::vector<named_tensor<float>> targets = {
        {"a", a.data(), {2, 3}}, {"b", b.data(), {4}}, {"c", c.data(), {2}}};
    CHECK_THROWS_WITH_AS(distill::io::load_tensors<float>(file, targets),
                         Contains("missing 1 tensor(s) the model expects: 'c'"), format_error);
    CHECK_THROWS_WITH_AS(distill::io::load_tensors<float>(file, targets), Contains(file.path().string().c_str()),
                         format_error);
    CHECK(untouched(a));
    CHECK(untouched(b));
    CHECK(untouched(c));
}

TEST_CASE("load_tensors: an unexpected tensor is reported and nothing is loaded") {
    temp_dir dir;
    const safetensors_file file(save_model(dir));
    std::vector<float> a(6, sentinel);
    const std::vector<named_tensor<float>> targets = {{"a", a.data(), {2, 3}}};
    CHECK_THROWS_WITH_AS(distill::io::load_tensors<float>(file, targets),
                         Contains("1 unexpected tensor(s) the model does not have: 'b'"), format_error);
    CHECK(untouched(a));
}

TEST_CASE("load_tensors: long lists of names are cut after ten") {
    temp_dir dir;
    const safetensors_file file(save_model(dir));
    std::vector<float> buffer(1, sentinel);
    std::vector<named_tensor<float>> targets;
    for (int i = 0; i < 13; ++i) targets.push_back({"t" + std::to_string(i), buffer.data(), {1}});
    CHECK_THROWS_WITH_AS(
        distill::io::load_tensors<float>(file, targets),
        Contains("missing 13 tensor(s) the model expects: 't0', 't1', 't2', 't3', 't4', 't5', 't6', "
                 "'t7', 't8', 't9' and 3 more; 2 unexpected tensor(s) the model does not have: 'a', 'b'"),
        format_error);
    CHECK(untouched(buffer));
}

TEST_CASE("load_tensors: a shape mismatch names tensor and both shapes, and nothing is loaded") {
    temp_dir dir;
    const safetensors_file file(save_model(dir));
    std::vector<float> a(6, sentinel), b(4, sentinel);
    // "a" matches and comes first: it must still not be loaded when "b" does not fit.
    const std::vector<named_tensor<float>> targets = {{"a", a.data(), {2, 3}}, {"b", b.data(), {2, 2}}};
    CHECK_THROWS_WITH_AS(distill::io::load_tensors<float>(file, targets),
                         Contains("tensor 'b': expected shape [2,2], found [4]"), shape_error);
    CHECK(untouched(a));
    CHECK(untouched(b));
}

TEST_CASE("save_tensors: invalid input is refused before anything is written") {
    temp_dir dir;
    const float x = 1.0f;
    const fs::path p = dir.path / "out.safetensors";
    const std::vector<named_tensor<const float>> duplicate = {{"w", &x, {1}}, {"w", &x, {1}}};
    CHECK_THROWS_WITH_AS(distill::io::save_tensors<float>(p, duplicate), Contains("tensor 'w' is listed twice"),
                         distill::error);
    const std::vector<named_tensor<const float>> negative = {{"w", &x, {-1}}};
    CHECK_THROWS_WITH_AS(distill::io::save_tensors<float>(p, negative), Contains("invalid shape [-1]"), distill::error);
    const std::vector<named_tensor<const float>> fine = {{"w", &x, {1}}};
    CHECK_THROWS_WITH_AS(distill::io::save_tensors<float>(p, fine, dtype::I32), Contains("cannot write dtype I32"),
                         distill::error);
    CHECK(dir.entries().empty());
}

// ---------------------------------------------------------------------------------------------------
// Atomic writing

TEST_CASE("write_file_atomic: creates and replaces a file and leaves no temp file") {
    temp_dir dir;
    const fs::path p = dir.path / "out.json";
    distill::io::write_file_atomic(p, std::string_view("first"));
    CHECK(read_all(p) == "first");
    const std::string second = "second, longer";
    distill::io::write_file_atomic(p, std::as_bytes(std::span(second.data(), second.size())));
    CHECK(read_all(p) == second);
    CHECK(dir.entries() == std::vector<std::string>{"out.json"});
}

TEST_CASE("write_file_atomic: an unwritable location fails with io_error and keeps the old file") {
    temp_dir dir;
    const fs::path p = dir.file("out.json", "old content");

    // The temp file cannot be created when its name is taken by a directory; this fails even for root.
    const fs::path blocker = dir.path / ("out.json.tmp." + std::to_string(::getpid()));
    fs::create_directory(blocker);
    CHECK_THROWS_WITH_AS(distill::io::write_file_atomic(p, std::string_view("new")),
                         Contains((p.string() + ": cannot create temp file").c_str()), io_error);
    CHECK(read_all(p) == "old content");
    fs::remove(blocker);

    // A read-only directory; root ignores permissions, so this half only runs for other users.
    if (::geteuid() != 0) {
        fs::permissions(dir.path, fs::perms::owner_read | fs::perms::owner_exec);
        CHECK_THROWS_WITH_AS(distill::io::write_file_atomic(p, std::string_view("new")), Contains("Permission denied"),
                             io_error);
        fs::permissions(dir.path, fs::perms::owner_all);
        CHECK(read_all(p) == "old content");
    }
    CHECK(dir.entries() == std::vector<std::string>{"out.json"});
}

TEST_CASE("write_file_atomic: a write that runs out of space keeps the old file and removes the temp file") {
    temp_dir dir;
    const fs::path p = dir.file("out.bin", "old content");
    const std::string big(64 * 1024, 'x');

    // A file size limit makes write() fail part way (EFBIG) just as a full disk would.
    rlimit saved{};
    ::getrlimit(RLIMIT_FSIZE, &saved);
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit limited = saved;
    limited.rlim_cur = 4096;
    ::setrlimit(RLIMIT_FSIZE, &limited);
    std::string message;
    try {
        distill::io::write_file_atomic(p, std::string_view(big));
    } catch (const io_error& e) {
        message = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &saved);
    std::signal(SIGXFSZ, old_handler);

    CHECK(message.find(p.string() + ": cannot write temp file") != std::string::npos);
    CHECK(message.find("File too large") != std::string::npos);
    CHECK(read_all(p) == "old content");
    CHECK(dir.entries() == std::vector<std::string>{"out.bin"});
}

TEST_CASE("write_file_atomic: a failed rename keeps the target and removes the temp file") {
    temp_dir dir;
    const fs::path target = dir.path / "occupied";
    fs::create_directories(target / "child");
    CHECK_THROWS_WITH_AS(distill::io::write_file_atomic(target, std::string_view("x")), Contains("cannot rename"),
                         io_error);
    CHECK(fs::is_directory(target / "child"));
    CHECK(dir.entries() == std::vector<std::string>{"occupied"});
}

TEST_CASE("atomic_writer: destroyed without commit leaves the old content and no temp file") {
    temp_dir dir;
    const fs::path p = dir.file("state.bin", "old content");
    {
        distill::io::atomic_writer writer(p);
        writer.write("partial", 7);
        CHECK(fs::exists(writer.temp_path()));
        CHECK(writer.temp_path().parent_path() == p.parent_path());
    }
    CHECK(read_all(p) == "old content");
    CHECK(dir.entries() == std::vector<std::string>{"state.bin"});
}

TEST_CASE("atomic_writer: streams several writes and commits them as one") {
    temp_dir dir;
    const fs::path p = dir.file("state.bin", "old content");
    distill::io::atomic_writer writer(p);
    writer.write("new ", 4);
    CHECK(read_all(p) == "old content");  // nothing visible before commit
    const std::string rest = "content";
    writer.write(std::as_bytes(std::span(rest.data(), rest.size())));
    writer.commit();
    CHECK(read_all(p) == "new content");
    CHECK(dir.entries() == std::vector<std::string>{"state.bin"});
    CHECK_THROWS_WITH_AS(writer.write("x", 1), Contains("closed"), io_error);
    CHECK_THROWS_AS(writer.commit(), io_error);
}

TEST_CASE("atomic_writer: a moved writer commits once, the moved-from one does nothing") {
    temp_dir dir;
    const fs::path p = dir.path / "moved.bin";
    distill::io::atomic_writer first(p);
    first.write("abc", 3);
    distill::io::atomic_writer second(std::move(first));
    second.commit();
    CHECK(read_all(p) == "abc");
    CHECK(dir.entries() == std::vector<std::string>{"moved.bin"});
}

TEST_CASE("append_durably: appends whole records, creating the file, and reports failures") {
    temp_dir dir;
    const fs::path p = dir.path / "log.jsonl";
    distill::io::append_durably(p, "{\"step\":1}\n");
    distill::io::append_durably(p, "{\"step\":2}\n");
    CHECK(read_all(p) == "{\"step\":1}\n{\"step\":2}\n");

    const fs::path nowhere = dir.path / "no-such-dir" / "log.jsonl";
    CHECK_THROWS_WITH_AS(distill::io::append_durably(nowhere, "x\n"),
                         Contains((nowhere.string() + ": cannot open for appending").c_str()), io_error);
}

TEST_CASE("truncate_to_last_line: cuts a torn last record, leaves complete files alone") {
    temp_dir dir;
    const fs::path p = dir.file("log.jsonl", "{\"a\":1}\n{\"a\":2}\n{\"a\":");
    CHECK(distill::io::truncate_to_last_line(p) == 5);
    CHECK(read_all(p) == "{\"a\":1}\n{\"a\":2}\n");
    CHECK(distill::io::truncate_to_last_line(p) == 0);  // complete: untouched
    CHECK(read_all(p) == "{\"a\":1}\n{\"a\":2}\n");
    const fs::path torn_only = dir.file("torn.jsonl", "{\"a\"");
    CHECK(distill::io::truncate_to_last_line(torn_only) == 4);
    CHECK(read_all(torn_only).empty());
    CHECK(distill::io::truncate_to_last_line(dir.path / "absent.jsonl") == 0);
}

TEST_CASE("truncate_durably and copy_file_atomic: cut and copy, failures name the file") {
    temp_dir dir;
    const fs::path p = dir.file("data.bin", "0123456789");
    distill::io::truncate_durably(p, 4);
    CHECK(read_all(p) == "0123");
    const fs::path absent = dir.path / "absent.bin";
    CHECK_THROWS_WITH_AS(distill::io::truncate_durably(absent, 0),
                         Contains((absent.string() + ": cannot open for truncating").c_str()), io_error);
    const fs::path copy = dir.path / "copy.bin";
    distill::io::copy_file_atomic(p, copy);
    CHECK(read_all(copy) == "0123");
    CHECK_THROWS_WITH_AS(distill::io::copy_file_atomic(absent, copy), Contains(absent.string().c_str()), io_error);
    CHECK(read_all(copy) == "0123");  // a failed copy leaves the target as it was
}

TEST_CASE("directory_lock: one holder per directory, named by the caller's key; released on destruction") {
    temp_dir dir;
    {
        distill::io::directory_lock first(dir.path, "output_dir", "training");
        try {
            distill::io::directory_lock second(dir.path, "output_dir", "training");
            FAIL("the second lock was granted");
        } catch (const distill::config_error& e) {
            CHECK(e.field() == "output_dir");
            CHECK(std::string(e.what()).starts_with("output_dir: another process is training into"));
        }
    }
    distill::io::directory_lock again(dir.path, "output_dir", "training");  // the first one is gone
}

// ---------------------------------------------------------------------------------------------------
// Integrity: the checksum of the safetensors files distill writes, and every byte of a small weights
// file, checkpoint and top-k cache flipped in turn. Each load must end in a distill::error or load
// exactly what was written: never a crash, never a silently different model.

namespace {

/// A 224-parameter transformer and AdamW over it, with non-zero optimizer state.
struct TinyRun {
    using Model = distill::student::Transformer<float, distill::device::Cpu>;
    static distill::student::TransformerConfig config() {
        return {.vocab_size = 16, .context_length = 4, .d_model = 4, .n_layers = 1, .n_heads = 1, .d_ff = 4};
    }
    Model model{config(), 1, distill::device::Cpu(1)};
    distill::optim::AdamW<float, distill::device::Cpu> opt{model.parameters(), {}, distill::device::Cpu(1)};

    explicit TinyRun(std::uint64_t seed, int steps) {
        model.init(seed);
        distill::Rng rng(seed);
        for (int s = 0; s < steps; ++s) {
            for (const auto& p : opt.parameters())
                for (std::int64_t i = 0; i < p.grad.numel(); ++i) p.grad.data()[i] = static_cast<float>(rng.normal());
            opt.step(1e-2);
        }
    }
    std::string weights() const {
        return {reinterpret_cast<const char*>(model.parameter_data()), model.arena_size() * sizeof(float)};
    }
    std::string state() const {
        std::string s;
        for (const auto& t : opt.state())
            s.append(reinterpret_cast<const char*>(t.value.data()), static_cast<std::size_t>(t.value.numel()) * 4);
        return s + std::to_string(opt.steps());
    }
};

/// Flips one bit of every byte of `path` in turn (bit i % 8 of byte i, so every bit position is hit),
/// calls `load()` after each flip and restores the byte. `load` returns whether what it loaded equals
/// what was written; a distill::error counts as a clean refusal. Returns {refused, loaded intact}.
template <class Load>
std::pair<std::size_t, std::size_t> flip_every_byte(const fs::path& path, Load load) {
    const std::string original = read_all(path);
    std::size_t refused = 0, intact = 0;
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    REQUIRE(f);
    for (std::size_t i = 0; i < original.size(); ++i) {
        const char flipped = static_cast<char>(original[i] ^ (1 << (i % 8)));
        f.seekp(static_cast<std::streamoff>(i));
        f.put(flipped);
        f.flush();
        try {
            if (load())
                ++intact;
            else
                FAIL_CHECK(path.filename().string() << ": byte " << i << " flipped loaded a different value");
        } catch (const distill::error&) {
            ++refused;
        }
        f.seekp(static_cast<std::streamoff>(i));
        f.put(original[i]);
        f.flush();
    }
    CHECK(read_all(path) == original);
    return {refused, intact};
}

}  // namespace

TEST_CASE("safetensors checksum: written by save_tensors, verified on open, hidden from metadata()") {
    temp_dir dir;
    const fs::path p = dir.path / "w.safetensors";
    const std::vector<float> w = {1.0f, 2.0f, 3.0f};
    const std::vector<named_tensor<const float>> tensors = {{"w", w.data(), {3}}};
    distill::io::save_tensors<float>(p, tensors, dtype::BF16, {{"note", "x"}});
    CHECK(read_all(p).find("\"distill.crc32c\":\"") != std::string::npos);
    {
        const safetensors_file f(p);
        CHECK(f.checksum().has_value());
        CHECK(f.metadata() == std::map<std::string, std::string>{{"note", "x"}});
    }
    // A flipped bit in the data, which the structure checks cannot see.
    std::string bytes = read_all(p);
    bytes[bytes.size() - 1] ^= 0x01;
    CHECK_DEFECT(bytes, "checksum mismatch");
    // A malformed recorded value.
    bytes = read_all(p);
    const auto at = bytes.find("\"distill.crc32c\":\"") + 18;
    bytes[at] = 'X';
    CHECK_DEFECT(bytes, "must be 8 lowercase hex digits");
    // Files of other writers carry no checksum and load as before.
    const std::string header = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
    temp_dir other;
    const safetensors_file plain(other.file("plain.safetensors", safetensors_bytes(header, 4)));
    CHECK(!plain.checksum());
    // A checksum entry in the caller's metadata is replaced by the real one.
    distill::io::save_tensors<float>(p, tensors, dtype::F32, {{"distill.crc32c", "00000000"}});
    CHECK(safetensors_file(p).checksum().has_value());
}

TEST_CASE("corrupted inputs: every byte of a weights file flipped is refused or loads identical weights") {
    temp_dir dir;
    const TinyRun written(1, 0);
    const fs::path p = dir.path / "student.safetensors";
    distill::io::save_weights(p, written.model);
    TinyRun fresh(2, 0);
    const std::string before = fresh.weights();
    const auto [refused, intact] = flip_every_byte(p, [&] {
        const safetensors_file f(p);
        const auto cfg = distill::io::load_weights_config<distill::student::TransformerConfig>(f);
        distill::io::load_weights(f, fresh.model);
        const bool same = distill::io::to_json(cfg) == distill::io::to_json(TinyRun::config()) &&
                          fresh.weights() == written.weights();
        std::memcpy(fresh.model.parameter_data(), before.data(), before.size());
        return same;
    });
    MESSAGE(p.filename().string() << ": " << refused << " flips refused, " << intact << " loaded intact");
    // Loading intact happens where a flipped padding byte of the header becomes NUL, at which the JSON
    // parser stops: the header and data are unchanged. Everything else is refused.
    CHECK(refused + intact == read_all(p).size());
    CHECK(intact < 32);
    CHECK(fresh.weights() == before);  // no refused load touched the model
}

TEST_CASE("corrupted inputs: every byte of a checkpoint flipped is refused or restores exactly") {
    temp_dir dir;
    TinyRun written(1, 2);
    distill::io::CheckpointStore store(dir.path / "checkpoints");
    const std::vector<std::int64_t> order = {2, 0, 3, 1};
    const fs::path ck = store.save(3, written.model, {}, written.opt, order, {{"epoch", 1}}, {{"job", "x"}});
    TinyRun fresh(2, 0);
    const std::string weights_before = fresh.weights(), state_before = fresh.state();
    std::size_t total = 0, refused_all = 0;
    for (const char* name : {"manifest.json", "student.safetensors", "training.safetensors"}) {
        const auto [refused, intact] = flip_every_byte(ck / name, [&] {
            std::vector<std::int64_t> got;
            distill::io::Checkpoint::open(ck).restore(fresh.model, {}, fresh.opt, got);
            return got == order && fresh.weights() == written.weights() && fresh.state() == written.state();
        });
        MESSAGE(std::string(name) << ": " << refused << " flips refused, " << intact << " restored intact");
        total += read_all(ck / name).size();
        refused_all += refused;
    }
    CHECK(refused_all == total);
    CHECK(fresh.weights() == weights_before);
    CHECK(fresh.state() == state_before);
    // and the untouched checkpoint still restores exactly
    std::vector<std::int64_t> got;
    distill::io::Checkpoint::open(ck).restore(fresh.model, {}, fresh.opt, got);
    CHECK(got == order);
    CHECK(fresh.weights() == written.weights());
    CHECK(fresh.state() == written.state());
}

TEST_CASE("corrupted inputs: every byte of a top-k cache flipped is refused or reads identical records") {
    temp_dir dir;
    const distill::io::topk_header h{.k = 2, .vocab_size = 263, .fingerprint = "fp:1", .tokenizer = "byte-v1"};
    const std::vector<std::int32_t> tokens = {104, 105, 33}, top = {104, 97, 105, 98, 33, 46};
    const std::vector<float> lp = {-0.1f, -2.5f, -0.2f, -3.0f, -0.05f, -4.0f};
    const std::string bytes = distill::io::encode_topk_header(h) +
                              distill::io::encode_topk_record("abcde", 2, tokens, top, lp) +
                              distill::io::encode_topk_record("b", 2, std::span(tokens).first(1),
                                                              std::span(top).first(2), std::span(lp).first(2));
    const fs::path p = dir.file("c.topk", bytes);
    const auto snapshot = [](const distill::io::topk_file& f) {
        std::string s = std::to_string(f.header().version) + "|" + std::to_string(f.header().k) + "|" +
                        std::to_string(f.header().vocab_size) + "|" + f.header().fingerprint + "|" +
                        f.header().tokenizer;
        for (std::size_t i = 0; i < f.size(); ++i) {
            const auto& r = f[i];
            s += "|" + std::string(r.id) + ":";
            s.append(reinterpret_cast<const char*>(r.tokens.data()), r.tokens.size_bytes());
            s.append(reinterpret_cast<const char*>(r.top_ids.data()), r.top_ids.size_bytes());
            s.append(reinterpret_cast<const char*>(r.top_logprobs.data()), r.top_logprobs.size_bytes());
            s.append(reinterpret_cast<const char*>(r.tail_mass.data()), r.tail_mass.size_bytes());
        }
        return s;
    };
    const std::string want = snapshot(distill::io::topk_file(p));
    const auto [refused, intact] = flip_every_byte(p, [&] {
        CHECK(distill::io::topk_complete_prefix(p) <= bytes.size());
        return snapshot(distill::io::topk_file(p)) == want;
    });
    MESSAGE("c.topk: " << refused << " flips refused, " << intact << " read intact");
    CHECK(refused == bytes.size());
}

TEST_CASE("top-k cache: version 1 files (no header checksum) are still read and appended to") {
    temp_dir dir;
    // A version 1 header as the first release wrote it: 32 fixed bytes, the strings, zero padding.
    std::string v1 = "DSTLTOPK";
    const auto put = [&](std::uint32_t v) { v1.append(reinterpret_cast<const char*>(&v), 4); };
    put(1), put(40), put(1), put(263), put(2), put(3);
    v1 += "fpbyt";
    v1.resize(40, '\0');
    const std::vector<std::int32_t> tokens = {104}, top = {104};
    const std::vector<float> lp = {-0.5f};
    v1 += distill::io::encode_topk_record("a", 1, tokens, top, lp, 1);
    const fs::path p = dir.file("old.topk", v1);
    const distill::io::topk_file f(p);
    CHECK(f.header().version == 1);
    CHECK(f.header().fingerprint == "fp");
    REQUIRE(f.size() == 1);
    CHECK(f[0].id == "a");
    CHECK(distill::io::topk_complete_prefix(p) == v1.size());
    // a version 2 record appended to it is a checksum mismatch, not a silent misread
    const fs::path mixed = dir.file("mixed.topk", v1 + distill::io::encode_topk_record("b", 1, tokens, top, lp));
    CHECK_THROWS_WITH_AS(distill::io::topk_file{mixed}, Contains("record checksum mismatch"), format_error);
}

TEST_CASE("checkpoint bounds: an oversized manifest or pointer file is refused before it is parsed or copied") {
    temp_dir dir;
    TinyRun run(1, 1);
    distill::io::CheckpointStore store(dir.path / "checkpoints");
    const fs::path ck = store.save(1, run.model, {}, run.opt, std::vector<std::int64_t>{0}, {}, {});
    // a sparse 65 MiB manifest: refused by its size, without reading it
    fs::resize_file(ck / "manifest.json", distill::io::Checkpoint::max_manifest_bytes + 1);
    CHECK_THROWS_WITH_AS(distill::io::Checkpoint::open(ck), Contains("over the limit of 67108864"), format_error);
    std::ofstream(dir.path / "checkpoints" / "latest", std::ios::binary) << std::string(5000, 's');
    CHECK_THROWS_WITH_AS(store.latest(), Contains("5000 bytes, expected step-NNNNNNNN"), format_error);
}

// Found by fuzz_checkpoint (with the manifest's checksums recomputed): a float out of int64's range in
// "step" was converted with get<int64_t>(), which is undefined behaviour; numbers are now checked first.
TEST_CASE("checkpoint (fuzz regression): manifest numbers of the wrong kind are refused, not converted") {
    temp_dir dir;
    TinyRun run(1, 1);
    distill::io::CheckpointStore store(dir.path / "checkpoints");
    const fs::path ck = store.save(1, run.model, {}, run.opt, std::vector<std::int64_t>{0}, {}, {});
    const std::string original = read_all(ck / "manifest.json");
    const auto with = [&](const std::function<void(nlohmann::json&)>& edit) {
        nlohmann::json m = nlohmann::json::parse(original);
        edit(m);
        m["checksum"] = distill::io::detail::manifest_checksum(m);
        std::ofstream(ck / "manifest.json", std::ios::binary) << m.dump(1);
        try {
            distill::io::Checkpoint::open(ck);
        } catch (const format_error& e) {
            return std::string(e.what());
        }
        return std::string("no format_error");
    };
    CHECK(with([](nlohmann::json& m) { m["step"] = -9.2e19; }).find("\"step\" is not a 64-bit integer") !=
          std::string::npos);
    CHECK(with([](nlohmann::json& m) { m["optimizer_steps"] = 18446744073709551615u; }).find("optimizer_steps") !=
          std::string::npos);
    CHECK(with([](nlohmann::json& m) { m["files"]["student.safetensors"]["bytes"] = 1e30; }).find("\"bytes\"") !=
          std::string::npos);
    CHECK(with([](nlohmann::json& m) {
              m["files"]["training.safetensors"]["crc32c"] = 4294967296u;
          }).find("\"crc32c\"") != std::string::npos);
    CHECK(with([](nlohmann::json&) {}) == "no format_error");
}

TEST_CASE("xarray and xview: a checkpoint's tensors and a top-k cache's records as N-d arrays") {
    temp_dir dir;
    const std::vector<float> w = {1, 2, 3, 4, 5, 6}, b = {0.5f};
    const std::vector<named_tensor<const float>> tensors = {{"w", w.data(), {2, 3}}, {"b", b.data(), {}}};
    const fs::path p = dir.path / "weights.safetensors";
    distill::io::save_tensors<float>(p, tensors, dtype::BF16);
    const safetensors_file file(p);
    const auto x = distill::xarray(file, "w");
    REQUIRE(x.dimension() == 2);
    CHECK(x.shape()[1] == 3);
    CHECK(x(1, 2) == 6.0f);  // small integers are exact in bf16
    CHECK(xt::sum(xt::view(x, xt::all(), 0))() == 5.0f);
    CHECK(distill::xarray<double>(file, "b").dimension() == 0);
    CHECK_THROWS_WITH_AS(distill::xarray(file, "v"), Contains("no tensor named 'v'"), distill::format_error);

    const distill::io::topk_header h{.k = 2, .vocab_size = 263, .fingerprint = "fp:1", .tokenizer = "byte-v1"};
    const std::vector<std::int32_t> tokens = {104, 105, 33}, top = {104, 97, 105, 98, 33, 46};
    const std::vector<float> lp = {-0.1f, -2.5f, -0.2f, -3.0f, -0.05f, -4.0f};
    const distill::io::topk_file cache(dir.file(
        "c.topk", distill::io::encode_topk_header(h) + distill::io::encode_topk_record("a", 2, tokens, top, lp)));
    const auto arrays = distill::xview(cache[0]);
    CHECK(arrays.top_ids.shape()[0] == 3);
    CHECK(arrays.top_ids(2, 1) == 46);
    CHECK(arrays.top_logprobs(1, 0) == -0.2f);
    CHECK(xt::argmax(xt::view(arrays.top_logprobs, 2, xt::all()))() == 0);
}
