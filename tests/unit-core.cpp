// Core: tensor views, arenas, the RNG, config reflection, the xtensor view, devices.

#include <doctest/doctest.h>

#include <cstdlib>
#include <set>

#include "distill/detail/arena.hpp"
#include "distill/detail/rng.hpp"
#include "distill/device/cpu.hpp"
#include "distill/io/reflect.hpp"
#include "distill/student/transformer.hpp"
#include "distill/version.hpp"
#include "distill/xview.hpp"

using namespace distill;

TEST_CASE("Tensor: shape, strides, indexing, reshape") {
    std::vector<float> mem(24);
    for (int i = 0; i < 24; ++i) mem[i] = float(i);
    Tensor<float> t(mem.data(), {2, 3, 4});
    CHECK(t.numel() == 24);
    CHECK(t.stride(0) == 12);
    CHECK(t.stride(2) == 1);
    CHECK(t.contiguous());
    CHECK(t(1, 2, 3) == 23.0f);
    CHECK(t[1](0, 1) == 13.0f);
    CHECK(t.reshape({6, 4})(5, 0) == 20.0f);
    CHECK(t.shape_string() == "[2, 3, 4]");
    CHECK_THROWS_WITH_AS(t.reshape({5, 5}), doctest::Contains("24 elements cannot take shape with 25"), shape_error);
    Tensor<const float> c = t;
    CHECK(c(0, 0, 1) == 1.0f);
}

TEST_CASE("xview: a tensor as an xtensor expression, no copy") {
    std::vector<float> mem(12);
    for (int i = 0; i < 12; ++i) mem[i] = float(i);
    Tensor<float> t(mem.data(), {3, 4});
    auto x = xview<2>(t);
    CHECK(x(2, 1) == 9.0f);
    x(0, 0) = 42.0f;
    CHECK(mem[0] == 42.0f);
    CHECK(xview<3>(t[0].reshape({2, 2, 1}))(1, 1, 0) == 3.0f);
    CHECK_THROWS_AS(xview<3>(t), shape_error);
}

TEST_CASE("xarray: a strided tensor of any device copied to the host, and a model's attention maps as views") {
    std::vector<float> mem(24);
    for (int i = 0; i < 24; ++i) mem[i] = float(i);
    const Tensor<const float> t(mem.data(), {2, 3, 4});
    const auto row = xarray(t[1], device::Cpu(1));  // (3,4), offset 12
    REQUIRE(row.shape().size() == 2);
    CHECK(row.shape()[0] == 3);
    CHECK(row(2, 3) == 23.0f);
    mem[23] = -1.0f;  // a copy, not a view
    CHECK(row(2, 3) == 23.0f);

    student::Transformer<float, device::Cpu> model({.d_model = 16, .n_layers = 2, .n_heads = 2}, 8);
    model.init(5);
    const std::vector<std::int32_t> tokens = {1, 2, 3, 4, 5, 6};
    model.forward(tokens.data(), 2, 3);
    const auto attention = xview<4>(model.attention(1));  // (B,H,T,T)
    CHECK(attention.shape()[1] == 2);
    // every row of a causal softmax sums to one and puts no weight on later positions
    const xt::xarray<float> sums = xt::sum(attention, {3});
    CHECK(xt::allclose(sums, 1.0f, 1e-5, 1e-5));
    CHECK(attention(1, 1, 0, 2) == 0.0f);
}

TEST_CASE("Arena: blocks are 64-byte aligned and zeroed") {
    detail::ArenaLayout layout;
    const auto a = layout.add<float>("a", {3});
    const auto b = layout.add<float>("b", {2, 5});
    detail::Arena<float, device::Cpu> arena(device::Cpu(1), layout.size());
    auto va = arena.view(layout.blocks()[a]);
    auto vb = arena.view(layout.blocks()[b]);
    CHECK(reinterpret_cast<std::uintptr_t>(va.data()) % 64 == 0);
    CHECK(reinterpret_cast<std::uintptr_t>(vb.data()) % 64 == 0);
    CHECK(vb.size(1) == 5);
    CHECK(vb(1, 4) == 0.0f);
    CHECK(layout.size() == 16 + 10);
}

TEST_CASE("Rng: deterministic, seed-sensitive, state round trip, sane moments") {
    Rng a(1), b(1), c(2);
    CHECK(a.next() == b.next());
    CHECK(a.next() != c.next());
    auto s = a.state();
    const double n1 = a.normal();
    const double n2 = a.normal();
    a.set_state(s);
    CHECK(a.normal() == n1);
    CHECK(a.normal() == n2);
    double sum = 0, sq = 0;
    const int n = 20000;
    for (int i = 0; i < n; ++i) {
        const double x = c.normal();
        sum += x;
        sq += x * x;
    }
    CHECK(std::abs(sum / n) < 0.03);
    CHECK(std::abs(sq / n - 1.0) < 0.05);
    std::set<std::uint64_t> seen;
    for (int i = 0; i < 1000; ++i) seen.insert(c.below(7));
    CHECK(seen.size() == 7);
}

TEST_CASE("reflect: config JSON round trip and strict errors") {
    student::TransformerConfig cfg{.vocab_size = 100, .d_model = 64};
    auto j = io::to_json(cfg);
    CHECK(j["vocab_size"] == 100);
    CHECK(j["d_ff"] == 512);
    student::TransformerConfig back;
    io::from_json(j, back, "student");
    CHECK(back.vocab_size == 100);
    CHECK(back.d_model == 64);

    student::TransformerConfig c;
    CHECK_THROWS_WITH_AS(io::from_json(nlohmann::json{{"n_layer", 3}}, c, "student"),
                         doctest::Contains("student.n_layer: unknown key; did you mean \"n_layers\"?"), config_error);
    CHECK_THROWS_WITH_AS(io::from_json(nlohmann::json{{"d_model", "wide"}}, c, "student"),
                         doctest::Contains("student.d_model: expected an integer, got a string"), config_error);
    CHECK_THROWS_WITH_AS(io::from_json(nlohmann::json{{"d_model", 1.5}}, c, "student"),
                         doctest::Contains("student.d_model: expected an integer, got a number"), config_error);
    CHECK_THROWS_WITH_AS(io::from_json(nlohmann::json{{"d_model", 1e12}}, c, "student"),
                         doctest::Contains("student.d_model"), config_error);
    CHECK_THROWS_WITH_AS(io::from_json(nlohmann::json{{"d_model", 10000000000LL}}, c, "student"),
                         doctest::Contains("does not fit"), config_error);
    CHECK_THROWS_WITH_AS(io::from_json(nlohmann::json::array(), c, "student"),
                         doctest::Contains("student: expected an object, got an array"), config_error);
}

TEST_CASE("Cpu device: explicit and environment thread counts") {
    CHECK(device::Cpu(3).threads() == 3);
    CHECK_THROWS_WITH_AS(device::Cpu(0), doctest::Contains("device.threads: must be >= 1"), config_error);
    ::setenv("DISTILL_NUM_THREADS", "2", 1);
    CHECK(device::Cpu().threads() == 2);
    ::setenv("DISTILL_NUM_THREADS", "two", 1);
    CHECK_THROWS_WITH_AS(device::Cpu(),
                         doctest::Contains("DISTILL_NUM_THREADS: expected an integer in [1, 4096], got \"two\""),
                         config_error);
    ::unsetenv("DISTILL_NUM_THREADS");
    static_assert(device_policy<device::Cpu>);
    static_assert(device_policy<device::Reference>);
    CHECK(std::string(version()) == std::to_string(DISTILL_VERSION_MAJOR) + "." +
                                        std::to_string(DISTILL_VERSION_MINOR) + "." +
                                        std::to_string(DISTILL_VERSION_PATCH));
}
