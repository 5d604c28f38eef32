#pragma once
// Shared test helpers: tolerant comparison that reports the worst element, random fills,
// and the finite-difference gradient checker.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "distill/detail/rng.hpp"
#include "distill/io/safetensors.hpp"

namespace distill::testing {

/// A JSON fixture file, parsed (the test fails when it cannot be opened).
inline nlohmann::json read_json(const std::filesystem::path& p) {
    std::ifstream in(p);
    REQUIRE_MESSAGE(in.good(), "cannot open " << p.string());
    return nlohmann::json::parse(in);
}

/// Tensor `name` of a fixture file, converted to T.
template <class T>
std::vector<T> read_tensor(const io::safetensors_file& f, const std::string& name) {
    const auto& info = f.at(name);
    std::vector<T> v(static_cast<std::size_t>(info.numel()));
    f.read<T>(info, v);
    return v;
}

/// Integer tensor `name` of a fixture file (token ids, targets) as int32.
inline std::vector<std::int32_t> read_ids(const io::safetensors_file& f, const std::string& name) {
    auto v = f.read_integers(f.at(name));
    return {v.begin(), v.end()};
}

/// |a - b| <= atol + rtol * |b| for every element; on failure names the worst index and both values.
template <class A, class B>
void check_close(const std::string& what, const A* actual, const B* expected, std::int64_t n, double atol,
                 double rtol) {
    std::int64_t worst = -1;
    double worst_excess = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        const double a = static_cast<double>(actual[i]), b = static_cast<double>(expected[i]);
        const double excess = std::abs(a - b) - (atol + rtol * std::abs(b));
        if (!(excess <= 0) && (worst < 0 || !(excess <= worst_excess))) {
            worst = i;
            worst_excess = excess;
            if (std::isnan(excess)) break;
        }
    }
    INFO(what << ": worst element " << worst << " of " << n << ": got "
              << (worst >= 0 ? static_cast<double>(actual[worst]) : 0.0) << ", expected "
              << (worst >= 0 ? static_cast<double>(expected[worst]) : 0.0) << " (atol " << atol << ", rtol " << rtol
              << ")");
    CHECK(worst < 0);
}

template <class T>
std::vector<T> random_vector(std::size_t n, std::uint64_t seed, double scale = 1.0) {
    Rng rng(seed);
    std::vector<T> v(n);
    for (auto& x : v) x = static_cast<T>(rng.normal() * scale);
    return v;
}

/// A copy of a vector whose first element lies `offset` elements past a 64-byte boundary. A kernel run
/// on buffers at several offsets shows whether its bits depend on where its buffers lie (they must
/// not: a resumed run, or another process, gets its buffers elsewhere).
template <class T>
struct Placed {
    std::vector<T> storage;
    T* data;
    std::size_t size;
    Placed(const std::vector<T>& v, int offset) : storage(v.size() + 2 * 64 / sizeof(T) + offset), size(v.size()) {
        const auto addr = reinterpret_cast<std::uintptr_t>(storage.data());
        data = storage.data() + (64 - addr % 64) % 64 / sizeof(T) + offset;
        std::copy(v.begin(), v.end(), data);
    }
    std::vector<T> values() const { return std::vector<T>(data, data + size); }
};

// Runs kernel(pointers) on copies of `buffers`, each placed `offset` elements past a 64-byte boundary,
// and returns the buffers' contents afterwards.
template <class T, class F>
std::vector<std::vector<T>> run_placed(const std::vector<std::vector<T>>& buffers, int offset, const F& kernel) {
    std::vector<Placed<T>> placed;
    placed.reserve(buffers.size());
    std::vector<T*> p;
    for (const auto& b : buffers) p.push_back(placed.emplace_back(b, offset).data);
    kernel(p);
    std::vector<std::vector<T>> after;
    for (const auto& x : placed) after.push_back(x.values());
    return after;
}

/// Central finite differences of `f` with respect to every element of `x`, compared with `analytic`.
/// The error of element i is |analytic_i - numeric_i| / max(|numeric_i|, floor), with floor = 1e-2 of
/// the largest |numeric| (so entries that are zero up to rounding do not dominate); checks max <= tol.
inline void check_gradient(const std::string& what, std::vector<double>& x, const std::function<double()>& f,
                           const std::vector<double>& analytic, double tol = 1e-6, double h = 1e-5) {
    std::vector<double> numeric(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double keep = x[i];
        x[i] = keep + h;
        const double fp = f();
        x[i] = keep - h;
        const double fm = f();
        x[i] = keep;
        numeric[i] = (fp - fm) / (2 * h);
    }
    double scale = 0;
    for (double v : numeric) scale = std::max(scale, std::abs(v));
    const double floor = std::max(1e-2 * scale, 1e-12);
    double err = 0;
    std::size_t worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double e = std::abs(analytic[i] - numeric[i]) / std::max(std::abs(numeric[i]), floor);
        if (e > err) {
            err = e;
            worst = i;
        }
    }
    INFO(what << ": max relative error " << err << " at element " << worst << " of " << x.size() << " (analytic "
              << analytic[worst] << ", numeric " << numeric[worst] << ")");
    CHECK(scale > 0);  // a check of an all-zero gradient proves nothing
    CHECK(err <= tol);
}

/// A scratch copy of a Hugging Face fixture directory (config.json, model.safetensors, ...) whose
/// files a test edits; removed on destruction.
struct ScratchCheckpoint {
    std::filesystem::path source, dir;
    explicit ScratchCheckpoint(std::filesystem::path from)
        : source(std::move(from)),
          dir(std::filesystem::temp_directory_path() / ("distill-scratch-" + std::to_string(::getpid()) + "-" +
                                                        std::to_string(reinterpret_cast<std::uintptr_t>(this)))) {
        std::filesystem::remove_all(dir);
        std::filesystem::copy(source, dir, std::filesystem::copy_options::recursive);
    }
    ~ScratchCheckpoint() { std::filesystem::remove_all(dir); }
    ScratchCheckpoint(const ScratchCheckpoint&) = delete;
    ScratchCheckpoint& operator=(const ScratchCheckpoint&) = delete;

    void edit_config(const std::function<void(nlohmann::json&)>& edit) const {
        std::ifstream in(dir / "config.json");
        nlohmann::json j = nlohmann::json::parse(in);
        edit(j);
        std::ofstream(dir / "config.json") << j.dump(2);
    }
    /// Rewrites model.safetensors with every tensor renamed by `rename` ("" drops it) plus `extra`
    /// (4 values each).
    void rewrite(const std::function<std::string(const std::string&)>& rename,
                 const std::vector<std::string>& extra = {}) const {
        io::safetensors_file f(source / "model.safetensors");
        std::vector<std::vector<float>> store;
        std::vector<io::named_tensor<const float>> tensors;
        for (const auto& t : f.tensors()) {
            const std::string name = rename(t.name);
            if (name.empty()) continue;
            auto& v = store.emplace_back(std::size_t(t.numel()));
            f.read(t, std::span<float>(v));
            tensors.push_back({name, v.data(), t.shape});
        }
        for (const auto& name : extra) {
            auto& v = store.emplace_back(4, 0.5f);
            tensors.push_back({name, v.data(), {4}});
        }
        io::save_tensors<float>(dir / "model.safetensors", tensors, io::dtype::F32, {{"format", "pt"}});
    }
};

}  // namespace distill::testing
