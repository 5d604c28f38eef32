#pragma once
/// @file rng.hpp
/// The library's one random number generator: xoshiro256** seeded through splitmix64.
/// Deterministic across platforms and compilers (no `std::` distributions, whose output is
/// implementation-defined), and its whole state is four words, so checkpoints can save it.

#include <array>
#include <cmath>
#include <cstdint>

namespace distill {

/// A seedable, copyable, serializable pseudo-random generator (xoshiro256**).
class Rng {
public:
    /// Seeds the four state words from `seed` with splitmix64, so nearby seeds give unrelated streams.
    explicit Rng(std::uint64_t seed = 0) noexcept {
        for (auto& s : state_) s = splitmix64(seed);
    }

    /// The next 64 random bits.
    std::uint64_t next() noexcept {
        const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
        const std::uint64_t t = state_[1] << 17;
        state_[2] ^= state_[0];
        state_[3] ^= state_[1];
        state_[1] ^= state_[2];
        state_[0] ^= state_[3];
        state_[2] ^= t;
        state_[3] = rotl(state_[3], 45);
        return result;
    }

    /// Uniform in [0, 1) with 53 random bits.
    double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

    /// Uniform integer in [0, n), n > 0 (Lemire's multiply-shift; the bias is below 2^-64 * n).
    std::uint64_t below(std::uint64_t n) noexcept {
        __extension__ typedef unsigned __int128 u128;  // GCC/Clang extension; silences -Wpedantic
        return static_cast<std::uint64_t>((static_cast<u128>(next()) * n) >> 64);
    }

    /// Standard normal by Box–Muller; the second value of each pair is cached.
    double normal() noexcept {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        double u1 = 0.0;
        while (u1 <= 0.0) u1 = uniform();
        const double u2 = uniform();
        const double r = std::sqrt(-2.0 * std::log(u1));
        spare_ = r * std::sin(2.0 * 3.14159265358979323846 * u2);
        has_spare_ = true;
        return r * std::cos(2.0 * 3.14159265358979323846 * u2);
    }

    /// The whole state, for checkpoints: four xoshiro words, the cached normal and its flag.
    struct state_type {
        std::array<std::uint64_t, 4> words;
        double spare;
        bool has_spare;
    };
    state_type state() const noexcept { return {state_, spare_, has_spare_}; }
    void set_state(const state_type& s) noexcept {
        state_ = s.words;
        spare_ = s.spare;
        has_spare_ = s.has_spare;
    }

private:
    static std::uint64_t rotl(std::uint64_t x, int k) noexcept { return (x << k) | (x >> (64 - k)); }
    static std::uint64_t splitmix64(std::uint64_t& x) noexcept {
        std::uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }

    std::array<std::uint64_t, 4> state_{};
    double spare_ = 0.0;
    bool has_spare_ = false;
};

}  // namespace distill
