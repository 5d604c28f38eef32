// ggml's tensor types: quantized bytes and dequantized floats against llama.cpp's own
// (fixtures/quant_golden.json, written by tests/reference/make_quant_golden.py through
// ggml_quantize_chunk and gguf-py), the error bounds of each quantizer, the size and name
// functions, and quant_matmul on Cpu against Reference.

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "distill/device/cpu.hpp"
#include "distill/device/reference.hpp"
#include "distill/io/quant.hpp"
#include "testing.hpp"

using namespace distill;
using distill::testing::random_vector;

namespace {

// fixtures/quant_golden.json (make_quant_golden.py): ggml's quantized bytes and floats.
const nlohmann::json& golden() {
    static const nlohmann::json g =
        distill::testing::read_json(std::string(DISTILL_TEST_DATA_DIR) + "/quant_golden.json");
    return g;
}

// fixtures/quant_dot_golden.json (tests/reference/make_quant_dot_golden.py): ggml's CPU backend's
// activation conversion and vec_dot, from llama.cpp's libggml-cpu.
const nlohmann::json& dot_golden() {
    static const nlohmann::json g =
        distill::testing::read_json(std::string(DISTILL_TEST_DATA_DIR) + "/quant_dot_golden.json");
    return g;
}

std::vector<std::byte> from_hex(const std::string& hex) {
    REQUIRE(hex.size() % 2 == 0);
    std::vector<std::byte> out(hex.size() / 2);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = std::byte(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
    return out;
}

std::vector<float> floats_from_hex(const std::string& hex) {
    const auto bytes = from_hex(hex);
    std::vector<float> out(bytes.size() / 4);
    std::memcpy(out.data(), bytes.data(), bytes.size());
    return out;
}

quant::type type_named(const std::string& s) {
    return quant::parse(s);
}

constexpr quant::type all_types[] = {quant::type::F32,  quant::type::F16,  quant::type::BF16,
                                     quant::type::Q8_0, quant::type::Q4_0, quant::type::Q4_K};

std::vector<std::byte> quantize(quant::type t, const std::vector<float>& x) {
    std::vector<std::byte> out(quant::row_bytes(t, std::int64_t(x.size())));
    quant::quantize_row(t, x.data(), std::int64_t(x.size()), out.data());
    return out;
}

std::vector<float> dequantize(quant::type t, const std::vector<std::byte>& q, std::int64_t n) {
    std::vector<float> y(static_cast<std::size_t>(n));
    quant::dequantize_row(t, q.data(), n, y.data());
    return y;
}

}  // namespace

TEST_CASE("quant: every golden row quantizes to llama.cpp's bytes, for every type") {
    const auto& g = golden();
    REQUIRE(g["rows"].size() >= 8);
    for (const auto& row : g["rows"]) {
        const auto x = floats_from_hex(row["x"]);
        REQUIRE(x.size() == row["n"].get<std::size_t>());
        for (const auto& item : row["types"].items()) {
            const std::string tname = item.key();
            const auto& want = item.value();
            const quant::type t = type_named(tname);
            const auto expected = from_hex(want["bytes"]);
            const auto got = quantize(t, x);
            REQUIRE(got.size() == expected.size());
            std::size_t first = got.size();
            for (std::size_t i = 0; i < got.size() && first == got.size(); ++i)
                if (got[i] != expected[i]) first = i;
            INFO(row["name"].get<std::string>() << " as " << tname << ": first differing byte " << first << " (block "
                                                << first / quant::block_bytes(t) << ")");
            CHECK(first == got.size());
        }
    }
}

TEST_CASE("quant: dequantizing llama.cpp's bytes gives ggml's floats bit for bit") {
    for (const auto& row : golden()["rows"]) {
        const std::int64_t n = row["n"];
        for (const auto& item : row["types"].items()) {
            const std::string tname = item.key();
            const auto& want = item.value();
            if (!want.contains("dequantized")) continue;  // the extra Q4_K rows pin bytes only
            const quant::type t = type_named(tname);
            const auto expected = floats_from_hex(want["dequantized"]);
            const auto got = dequantize(t, from_hex(want["bytes"]), n);
            std::int64_t first = -1;
            for (std::int64_t i = 0; i < n && first < 0; ++i)
                if (std::bit_cast<std::uint32_t>(got[std::size_t(i)]) !=
                    std::bit_cast<std::uint32_t>(expected[std::size_t(i)]))
                    first = i;
            INFO(row["name"].get<std::string>()
                 << " as " << tname << ": element " << first << " got " << (first >= 0 ? got[std::size_t(first)] : 0.f)
                 << ", ggml " << (first >= 0 ? expected[std::size_t(first)] : 0.f));
            CHECK(first < 0);
        }
    }
}

TEST_CASE("quant: fp16 and bf16 conversions of special values equal ggml's") {
    for (const auto& s : golden()["scalars"]) {
        const auto bits = static_cast<std::uint32_t>(std::stoul(s["f32"].get<std::string>(), nullptr, 16));
        const float f = std::bit_cast<float>(bits);
        INFO("fp32 bits " << s["f32"].get<std::string>() << " (" << f << ")");
        CHECK(quant::fp32_to_fp16(f) == std::stoul(s["f16"].get<std::string>(), nullptr, 16));
        CHECK(quant::fp32_to_bf16(f) == std::stoul(s["bf16"].get<std::string>(), nullptr, 16));
    }
}

TEST_CASE("quant: every fp16 and bf16 value survives fp32 and back; fp16 rounds to the nearer neighbour") {
    for (std::uint32_t h = 0; h < 65536; ++h) {
        const auto h16 = static_cast<std::uint16_t>(h);
        const float f = quant::fp16_to_fp32(h16), b = quant::bf16_to_fp32(h16);
        if (std::isnan(f)) {
            CHECK(std::isnan(quant::fp16_to_fp32(quant::fp32_to_fp16(f))));
        } else {
            REQUIRE(quant::fp32_to_fp16(f) == h16);
        }
        if (!std::isnan(b)) REQUIRE(quant::fp32_to_bf16(b) == h16);
    }
    // Values between two fp16 neighbours go to the nearer one (ties to even): checked on random floats.
    const auto xs = random_vector<float>(20000, 91, 100.0);
    for (float x : xs) {
        const float r = quant::fp16_to_fp32(quant::fp32_to_fp16(x));
        const float up = quant::fp16_to_fp32(static_cast<std::uint16_t>(quant::fp32_to_fp16(x) + 1));
        const float down = quant::fp16_to_fp32(static_cast<std::uint16_t>(quant::fp32_to_fp16(x) - 1));
        REQUIRE(std::fabs(r - x) <= std::fabs(up - x));
        REQUIRE(std::fabs(r - x) <= std::fabs(down - x));
    }
}

TEST_CASE("quant: round-trip errors stay within each format's bound") {
    const std::int64_t n = 256 * 4;
    const auto x = random_vector<float>(std::size_t(n), 17, 0.05);
    constexpr double fp16_rel = 1.0 / 2048;  // fp16 keeps 11 significant bits: relative rounding ≤ 2^-11
    SUBCASE("Q8_0: |x − q·d| ≤ d/2 per block, d = max|x| / 127 (plus d's own fp16 rounding)") {
        const auto q = quantize(quant::type::Q8_0, x);
        const auto y = dequantize(quant::type::Q8_0, q, n);
        for (std::int64_t b = 0; b < n / 32; ++b) {
            double amax = 0;
            for (int j = 0; j < 32; ++j) amax = std::max(amax, double(std::fabs(x[std::size_t(b * 32 + j)])));
            const double d = amax / 127;
            for (int j = 0; j < 32; ++j) {
                const std::size_t i = std::size_t(b * 32 + j);
                REQUIRE(std::fabs(double(y[i]) - x[i]) <= d * (0.5 + 127 * fp16_rel) + 1e-12);
            }
        }
    }
    SUBCASE("Q4_0: |x − (q−8)·d| ≤ |d|/2, except the far end clipped to 7·d: ≤ |d|") {
        const auto q = quantize(quant::type::Q4_0, x);
        const auto y = dequantize(quant::type::Q4_0, q, n);
        for (std::int64_t b = 0; b < n / 32; ++b) {
            double amax = 0, max = 0;
            for (int j = 0; j < 32; ++j)
                if (amax < std::fabs(x[std::size_t(b * 32 + j)])) {
                    amax = std::fabs(x[std::size_t(b * 32 + j)]);
                    max = x[std::size_t(b * 32 + j)];
                }
            const double d = std::fabs(max) / 8;
            for (int j = 0; j < 32; ++j) {
                const std::size_t i = std::size_t(b * 32 + j);
                const bool clipped = (x[i] / max) < -7.5 / 8;  // the opposite sign, beyond level 15
                const double err = std::fabs(double(y[i]) - x[i]);
                REQUIRE(err <= d * ((clipped ? 1.0 : 0.5) + 8 * fp16_rel) + 1e-12);
            }
        }
    }
    SUBCASE("Q4_K: within half a step of its sub-block's scale where not clamped; rms below 1/10 of the row's") {
        const auto q = quantize(quant::type::Q4_K, x);
        const auto y = dequantize(quant::type::Q4_K, q, n);
        double se = 0, sx = 0;
        for (std::int64_t b = 0; b < n / 256; ++b) {
            quant::block_q4_K blk;
            std::memcpy(&blk, q.data() + b * 144, 144);
            for (int s = 0; s < 8; ++s) {
                std::uint8_t sc, m;
                quant::detail::scale_min_k4(s, blk.scales, sc, m);
                const double step = double(quant::fp16_to_fp32(blk.d)) * sc;
                const double lo = -double(quant::fp16_to_fp32(blk.dmin)) * m, hi = lo + 15 * step;
                for (int l = 0; l < 32; ++l) {
                    const std::size_t i = std::size_t(b * 256 + s * 32 + l);
                    const double err = std::fabs(double(y[i]) - x[i]);
                    se += err * err;
                    sx += double(x[i]) * x[i];
                    if (x[i] >= lo && x[i] <= hi) REQUIRE(err <= step * (0.5 + 1e-5) + 1e-7);
                }
            }
        }
        CHECK(std::sqrt(se / sx) < 0.1);
    }
}

TEST_CASE("quant: sizes, names and parse") {
    CHECK(quant::block_elements(quant::type::Q4_K) == 256);
    CHECK(quant::block_elements(quant::type::Q8_0) == 32);
    CHECK(quant::block_elements(quant::type::BF16) == 1);
    CHECK(quant::row_bytes(quant::type::F32, 3) == 12);
    CHECK(quant::row_bytes(quant::type::F16, 5) == 10);
    CHECK(quant::row_bytes(quant::type::BF16, 5) == 10);
    CHECK(quant::row_bytes(quant::type::Q8_0, 64) == 68);
    CHECK(quant::row_bytes(quant::type::Q4_0, 96) == 54);
    CHECK(quant::row_bytes(quant::type::Q4_K, 512) == 288);
    for (quant::type t : all_types) {
        CHECK(quant::parse(quant::name(t)) == t);
        CHECK(quant::row_bytes(t, 0) == 0);
    }
    CHECK(quant::parse("Q4_K") == quant::type::Q4_K);
    CHECK(quant::parse("BF16") == quant::type::BF16);
    CHECK(quant::name(quant::type::Q4_K) == "q4_k");

    CHECK_THROWS_WITH_AS(quant::row_bytes(quant::type::Q4_K, 100),
                         "quant: a q4_k row of 100 elements is not a whole number of 256-element blocks", error);
    CHECK_THROWS_WITH_AS(quant::row_bytes(quant::type::Q8_0, 48),
                         "quant: a q8_0 row of 48 elements is not a whole number of 32-element blocks", error);
    CHECK_THROWS_AS(quant::row_bytes(quant::type::F32, -1), error);
    CHECK_THROWS_WITH_AS(quant::block_bytes(static_cast<quant::type>(7)), "quant: unsupported ggml type 7", error);
    try {
        (void)quant::parse("int8");
        FAIL("parse accepted int8");
    } catch (const config_error& e) {
        CHECK(e.field() == "export.gguf");
        CHECK(std::string(e.what()) ==
              "export.gguf: unknown tensor type \"int8\"; expected one of f32, f16, bf16, q8_0, q4_0, q4_k");
    }
}

TEST_CASE("quant: a non-finite weight is refused by the block formats, converted by F16 and BF16") {
    std::vector<float> x(256, 0.5f);
    x[40] = std::nanf("");
    std::vector<std::byte> out(quant::row_bytes(quant::type::F32, 256));  // room for every type
    for (quant::type t : {quant::type::Q8_0, quant::type::Q4_0, quant::type::Q4_K})
        CHECK_THROWS_WITH_AS(quant::quantize_row(t, x.data(), 256, out.data()),
                             doctest::Contains("non-finite value (nan at element 40)"), error);
    x[40] = INFINITY;
    CHECK_THROWS_AS(quant::quantize_row(quant::type::Q8_0, x.data(), 256, out.data()), error);
    quant::quantize_row(quant::type::F16, x.data(), 256, out.data());
    CHECK(std::isinf(dequantize(quant::type::F16, out, 256)[40]));
}

// ---- quant_matmul ---------------------------------------------------------------------------------

// The activations as quant_matmul multiplies them: `quantize_activations`' blocks dequantized
// (Q8_0: d·q; Q8_K: d·q), or the rounded floats.
static std::vector<float> converted_activations(quant::type t, const std::vector<float>& x) {
    const auto k = std::int64_t(x.size());
    std::vector<std::byte> a(quant::activation_row_bytes(t, k));
    quant::quantize_activations(t, x.data(), k, a.data());
    std::vector<float> out(x.size());
    if (t == quant::type::Q4_K) {
        for (std::int64_t i = 0; i < k / quant::qk_k; ++i) {
            quant::block_q8_K b;
            std::memcpy(&b, a.data() + i * std::int64_t(sizeof b), sizeof b);
            for (int c = 0; c < quant::qk_k; ++c) out[std::size_t(i * quant::qk_k + c)] = b.d * float(b.qs[c]);
        }
    } else {
        quant::dequantize_row(t == quant::type::Q4_0 ? quant::type::Q8_0 : t, a.data(), k, out.data());
    }
    return out;
}

TEST_CASE("quantize_activations: ggml's CPU bytes; each activation within half a quantization step") {
    const auto& g = dot_golden();
    const std::int64_t k = g["k"];
    for (const auto& [tname, entry] : g["types"].items()) {
        const quant::type t = type_named(tname);
        for (const auto& [aname, hex] : entry["converted"].items()) {
            CAPTURE(tname);
            CAPTURE(aname);
            const auto x = floats_from_hex(g["activations"][aname]);
            std::vector<std::byte> a(quant::activation_row_bytes(t, k));
            quant::quantize_activations(t, x.data(), k, a.data());
            CHECK(a == from_hex(hex));
            // the law, independent of ggml: |x − d·q| ≤ step/2 per block, step = max|x| / 127, plus
            // q times the fp16 rounding of a Q8_0 block's d
            const auto back = converted_activations(t, x);
            const std::int64_t block = t == quant::type::Q4_K ? 256 : quant::block_elements(t) > 1 ? 32 : 1;
            for (std::int64_t i = 0; i < k; i += block) {
                float amax = 0;
                for (std::int64_t c = i; c < i + block; ++c) amax = std::max(amax, std::fabs(x[std::size_t(c)]));
                // one element: its ulp in fp16 (10 stored bits; 2^-24 among subnormals) or bf16 (7)
                const double step = block == 1 ? std::max(std::ldexp(double(amax), t == quant::type::BF16 ? -7 : -10),
                                                          t == quant::type::F16 ? std::ldexp(1.0, -24) : 0.0)
                                               : amax / 127.0;
                const double d_rounding = block == 32 ? 127 * step * std::ldexp(1.0, -11) : 0.0;  // fp16 d
                for (std::int64_t c = i; c < i + block; ++c)
                    REQUIRE(std::fabs(double(back[std::size_t(c)]) - x[std::size_t(c)]) <=
                            0.5 * step * 1.001 + d_rounding);
            }
        }
    }
}

#if defined(DISTILL_QUANT_INT_KERNELS)
TEST_CASE("quantize_activations: Cpu's vectorized conversion writes the reference's bytes") {
    const std::int64_t k = 1024;
    std::vector<std::vector<float>> rows;
    for (std::uint64_t seed = 1; seed <= 4; ++seed) rows.push_back(random_vector<float>(std::size_t(k), seed));
    std::vector<float> ties(static_cast<std::size_t>(k));  // x · 127/max lands on halves
    for (std::int64_t c = 0; c < k; ++c) ties[std::size_t(c)] = float((c % 64) - 31.5f) / 31.5f * (c % 3 ? 1 : -1);
    rows.push_back(ties);
    std::vector<float> special = rows[0];
    std::fill(special.begin(), special.begin() + 256, 0.0f);  // an all-zero block (Q8_K: d = 0)
    special[300] = -5;                                        // two maxima of opposite signs: the first wins
    special[301] = 5;
    special[600] = 1e-30f;  // tiny among normal values
    rows.push_back(special);
    for (quant::type t : {quant::type::Q8_0, quant::type::Q4_0, quant::type::Q4_K})
        for (std::size_t r = 0; r < rows.size(); ++r) {
            CAPTURE(quant::name(t));
            CAPTURE(r);
            std::vector<std::byte> want(quant::activation_row_bytes(t, k)), got(want.size(), std::byte{0x5a});
            quant::quantize_activations(t, rows[r].data(), k, want.data());
            device::detail::quantize_activations(t, rows[r].data(), k, got.data());
            CHECK(got == want);
        }
}
#endif

TEST_CASE("quant_matmul: llama.cpp's vec_dot results for every weight type, on Reference and Cpu") {
    const auto& g = dot_golden();
    const std::int64_t k = g["k"];
    for (const auto& [tname, entry] : g["types"].items()) {
        const quant::type t = type_named(tname);
        for (const auto& [wname, whex] : g["weights"].items()) {
            const auto W = floats_from_hex(whex);
            const auto q = quantize(t, W);
            const auto wdeq = dequantize(t, q, k);
            for (const auto& [aname, ahex] : g["activations"].items()) {
                CAPTURE(tname);
                CAPTURE(wname);
                CAPTURE(aname);
                const auto x = floats_from_hex(ahex);
                const float want = floats_from_hex(entry["dots"][aname + "." + wname])[0];
                const auto a = converted_activations(t, x);
                double mag = 0;
                for (std::int64_t c = 0; c < k; ++c) mag += std::fabs(double(a[std::size_t(c)]) * wdeq[std::size_t(c)]);
                float y_ref = NAN, y_cpu = NAN;
                quant_matmul(device::Reference{}, x.data(), q.data(), t, &y_ref, 1, k, 1);
                quant_matmul(device::Cpu(1), x.data(), q.data(), t, &y_cpu, 1, k, 1);
                CHECK(std::fabs(double(y_ref) - want) <= 2e-6 * mag + 1e-30);
                CHECK(std::fabs(double(y_cpu) - want) <= 2e-6 * mag + 1e-30);
            }
        }
    }
}

TEST_CASE("quant_matmul: Cpu equals Reference to fp32 rounding for every type; any thread count, same bits") {
    const std::int64_t k = 256 * 3;
    device::Reference ref;
    // the last two are large enough (m·n·k >= 2^18) for Cpu to split the rows over its threads
    for (const auto& shape :
         {std::pair<std::int64_t, std::int64_t>{1, 13}, {3, 7}, {5, 17}, {2, 1}, {1, 2}, {1, 403}, {3, 151}}) {
        const std::int64_t m = shape.first, n = shape.second;
        const auto x = random_vector<float>(std::size_t(m * k), 5 + std::uint64_t(m));
        const auto W = random_vector<float>(std::size_t(n * k), 11 + std::uint64_t(n), 0.05);
        for (quant::type t : all_types) {
            const std::size_t rb = quant::row_bytes(t, k);
            std::vector<std::byte> q(rb * std::size_t(n));
            for (std::int64_t j = 0; j < n; ++j) quant::quantize_row(t, W.data() + j * k, k, q.data() + j * rb);
            std::vector<float> y_ref(std::size_t(m * n)), y1(y_ref.size(), NAN), y3(y_ref.size(), NAN);
            quant_matmul(ref, x.data(), q.data(), t, y_ref.data(), m, k, n);
            quant_matmul(device::Cpu(1), x.data(), q.data(), t, y1.data(), m, k, n);
            quant_matmul(device::Cpu(3), x.data(), q.data(), t, y3.data(), m, k, n);
            // Independently of the kernels' integer arithmetic: the converted activations times the
            // dequantized weights in double; the bound is fp32 summation error over k terms relative
            // to Σ|a||w|. The fp32 product x·w differs from it only by the activations' rounding.
            std::vector<float> wrow(static_cast<std::size_t>(k));
            for (std::int64_t i = 0; i < m; ++i) {
                const std::vector<float> xi(x.begin() + i * k, x.begin() + (i + 1) * k);
                const auto a = converted_activations(t, xi);
                for (std::int64_t j = 0; j < n; ++j) {
                    quant::dequantize_row(t, q.data() + j * rb, k, wrow.data());
                    double exact = 0, mag = 0, fp32 = 0, rounding = 0;
                    for (std::int64_t c = 0; c < k; ++c) {
                        const double w = wrow[std::size_t(c)];
                        exact += double(a[std::size_t(c)]) * w;
                        mag += std::fabs(double(a[std::size_t(c)]) * w);
                        fp32 += double(xi[std::size_t(c)]) * w;
                        rounding += std::fabs((double(a[std::size_t(c)]) - xi[std::size_t(c)]) * w);
                    }
                    const std::size_t o = std::size_t(i * n + j);
                    INFO(quant::name(t) << " m=" << m << " n=" << n << " y[" << i << "," << j << "]: cpu " << y1[o]
                                        << ", reference " << y_ref[o] << ", exact " << exact);
                    REQUIRE(std::fabs(double(y_ref[o]) - exact) <= 1e-5 * mag);
                    REQUIRE(std::fabs(double(y1[o]) - exact) <= 1e-5 * mag);
                    REQUIRE(std::fabs(exact - fp32) <= rounding + 1e-12);
                }
            }
            INFO(quant::name(t) << " m=" << m << " n=" << n);
            CHECK(std::memcmp(y1.data(), y3.data(), y1.size() * sizeof(float)) == 0);
        }
    }
}

TEST_CASE("quant_matmul: F32 weights give the fp32 GEMM; odd k for the 1-element types") {
    const std::int64_t m = 3, k = 37, n = 5;  // k not a multiple of any vector width
    const auto x = random_vector<float>(std::size_t(m * k), 3);
    const auto W = random_vector<float>(std::size_t(n * k), 4);
    std::vector<float> y_gemm(std::size_t(m * n));
    gemm(device::Reference{}, false, true, int(m), int(n), int(k), 1.0f, x.data(), int(k), W.data(), int(k), 0.0f,
         y_gemm.data(), int(n));
    for (quant::type t : {quant::type::F32, quant::type::F16, quant::type::BF16}) {
        const auto q = quantize(t, W);
        std::vector<float> y(std::size_t(m * n));
        quant_matmul(device::Cpu(2), x.data(), q.data(), t, y.data(), m, k, n);
        const double tol = t == quant::type::F32 ? 1e-5 : t == quant::type::F16 ? 3e-3 : 2e-2;
        distill::testing::check_close(std::string(quant::name(t)), y.data(), y_gemm.data(), m * n, tol, tol);
    }
    std::vector<float> y(1);
    CHECK_THROWS_AS(quant_matmul(device::Cpu(1), x.data(), nullptr, quant::type::Q8_0, y.data(), 1, 48, 1), error);
}

static_assert(device::quant_device<device::Cpu> && device::quant_device<device::Reference>);
static_assert(device::require_quant_kernels<device::Cpu>::value);
