#pragma once
/// @file pipeline/sweep.hpp
/// `distill sweep`: tuning a job's settings by grid or random search with successive halving.
///
/// The job's `sweep` object (docs/job-format.md, "sweep") names the settings to vary by their path
/// in the job ("hyperparameters.learning_rate", "loss.soft_kl.weight", or a JSON pointer), each a
/// list of values (a grid: every combination) or a range {"min", "max", "scale": "log"|"linear"}
/// (random search: `trials` settings drawn with `seed`; lists are then drawn from too).
///
/// Successive halving, synchronous (every trial of a rung finishes before the next rung starts,
/// which on one machine costs nothing against asynchronous ASHA and makes the result independent of
/// timing): rung k trains each surviving trial to ceil(S / eta^(R-1-k)) of its S steps; the best
/// floor(n / eta) (at least 1) by the validation metric at that step (`metric`: the loss, or one
/// term, "hard_ce", when the space changes what the loss measures) go on, resuming from their
/// checkpoints. A trial's learning-rate schedule is laid out for its full S steps from the start
/// (the job keeps max_steps = S; the rung only pauses the loop, `DistillerOptions::stop_at`), so a
/// trial continued through the rungs equals one trained without a pause, bit for bit.
///
/// The state (every trial's settings and its validation loss at each rung it reached) is
/// `sweep_state.json`, written atomically after each trial's rung; a sweep run again continues where
/// it stopped. The outputs: `sweep.md` and `sweep.json` (the trials ranked), `sweep.svg` (validation
/// loss against steps per trial), `best_job.json` (the best trial's settings in the base job, a
/// runnable job without `sweep`).
///
/// This header holds the search and the bookkeeping; how a trial trains is the caller's callback
/// (apps/distill.cpp runs the finetune stage of the trial's job).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/detail/rng.hpp"
#include "distill/error.hpp"
#include "distill/eval/svg.hpp"
#include "distill/io/durable.hpp"
#include "distill/pipeline/job.hpp"
#include "distill/pipeline/run_dir.hpp"

namespace distill::sweep {

/// One setting the sweep varies.
struct Dimension {
    std::string key;                       ///< as the job names it ("hyperparameters.learning_rate")
    std::string pointer;                   ///< the JSON pointer into the job ("/hyperparameters/learning_rate")
    std::vector<nlohmann::json> values{};  ///< a list (grid, or choices of a random search)
    bool range = false;                    ///< {"min", "max", "scale"} instead of a list
    double min = 0, max = 0;
    bool log = false;      ///< draw uniformly in log space
    bool integer = false;  ///< the job's value is an integer: draws are rounded
};

/// The job's `sweep` object, read and checked against the base job.
struct Spec {
    std::vector<Dimension> space{};
    int trials = 0;          ///< random search: this many trials (0: a grid, every combination)
    std::uint64_t seed = 0;  ///< of the random draws
    bool halving = true;     ///< successive halving (false: every trial to its full steps)
    double eta = 3;          ///< the reduction factor: 1/eta of a rung's trials go on
    int rungs = 3;           ///< rungs of halving, the last at the full steps
    /// What ranks the trials: "loss", the validation loss (the job's weighted sum of its terms), or
    /// the name of one term, its unweighted value on the validation set ("hard_ce": the student's
    /// cross-entropy on the teacher's answers, at temperature 1).
    std::string metric = "loss";
};

namespace detail {

inline std::string pointer_of(const std::string& key) {
    if (key.starts_with("/")) return key;
    std::string p;
    std::size_t at = 0;
    while (at <= key.size()) {
        const std::size_t dot = std::min(key.find('.', at), key.size());
        p += "/" + key.substr(at, dot - at);
        at = dot + 1;
    }
    return p;
}

inline double number(const nlohmann::json& j, const std::string& path) {
    if (!j.is_number()) throw config_error(path, "expected a number, got " + j.dump());
    return j.get<double>();
}

}  // namespace detail

/// Reads the `sweep` object `j` against `base` (the job without `sweep`). Throws config_error naming
/// the key ("sweep.space.hyperparameters.learning_rate: ...").
inline Spec parse_spec(const nlohmann::json& j, const nlohmann::json& base) {
    if (!j.is_object()) throw config_error("sweep", "expected an object with \"space\"");
    Spec s;
    for (const auto& item : j.items())
        if (item.key() != "space" && item.key() != "trials" && item.key() != "seed" && item.key() != "halving" &&
            item.key() != "metric")
            throw config_error("sweep." + item.key(), "unknown key (expected space, trials, seed, halving, metric)");
    if (!j.contains("space") || !j["space"].is_object() || j["space"].empty())
        throw config_error("sweep.space",
                           "is required: an object of settings to vary, e.g. "
                           "{\"hyperparameters.learning_rate\": [3e-3, 1e-2]}");
    bool random = false;
    for (const auto& item : j["space"].items()) {
        const std::string path = "sweep.space." + item.key();
        Dimension d{.key = item.key(), .pointer = detail::pointer_of(item.key())};
        const nlohmann::json::json_pointer ptr(d.pointer);
        if (ptr.empty()) throw config_error(path, "names no setting of the job");
        if (d.pointer == "/output_dir" || d.pointer.starts_with("/sweep") || d.pointer.starts_with("/teacher") ||
            d.pointer.starts_with("/training_data") || d.pointer.starts_with("/validation_data") ||
            d.pointer.starts_with("/generation"))
            throw config_error(path,
                               "cannot be varied: every trial shares the base job's teacher answers, data "
                               "and output_dir");
        if (!base.contains(ptr.parent_pointer()) || !base[ptr.parent_pointer()].is_object())
            throw config_error(path, "the job has no object \"" + ptr.parent_pointer().to_string() + "\" to set \"" +
                                         ptr.back() + "\" in");
        const bool has = base.contains(ptr);
        d.integer = has && base[ptr].is_number_integer();
        const nlohmann::json& v = item.value();
        if (v.is_array()) {
            if (v.empty()) throw config_error(path, "lists no value");
            for (const auto& x : v) {
                if (!(x.is_number() || x.is_string() || x.is_boolean()))
                    throw config_error(path, "expected numbers, strings or booleans, got " + x.dump());
                d.values.push_back(x);
            }
        } else if (v.is_object()) {
            for (const auto& k : v.items())
                if (k.key() != "min" && k.key() != "max" && k.key() != "scale")
                    throw config_error(path + "." + k.key(), "unknown key (expected min, max, scale)");
            if (!v.contains("min") || !v.contains("max")) throw config_error(path, "a range needs \"min\" and \"max\"");
            d.range = true;
            d.min = detail::number(v["min"], path + ".min");
            d.max = detail::number(v["max"], path + ".max");
            if (!(d.min < d.max) || !std::isfinite(d.min) || !std::isfinite(d.max))
                throw config_error(path, "needs finite min < max, got " + v["min"].dump() + " and " + v["max"].dump());
            const std::string scale = v.value("scale", "linear");
            if (scale != "linear" && scale != "log")
                throw config_error(path + ".scale", "expected \"linear\" or \"log\", got \"" + scale + "\"");
            d.log = scale == "log";
            if (d.log && !(d.min > 0)) throw config_error(path + ".min", "must be > 0 on a log scale");
            random = true;
        } else {
            throw config_error(path, "expected a list of values or a range {\"min\", \"max\", \"scale\"}");
        }
        s.space.push_back(std::move(d));
    }
    if (j.contains("trials")) {
        if (!j["trials"].is_number_integer() || j["trials"].get<std::int64_t>() < 1 ||
            j["trials"].get<std::int64_t>() > 10000)
            throw config_error("sweep.trials", "expected an integer in [1, 10000], got " + j["trials"].dump());
        s.trials = j["trials"].get<int>();
    } else if (random) {
        throw config_error("sweep.trials", "is required when a setting is a range (random search): how many trials");
    }
    if (j.contains("seed")) {
        if (!j["seed"].is_number_unsigned()) throw config_error("sweep.seed", "expected an integer >= 0");
        s.seed = j["seed"].get<std::uint64_t>();
    }
    if (j.contains("halving")) {
        const auto& h = j["halving"];
        if (h.is_boolean()) {
            s.halving = h.get<bool>();
        } else if (h.is_object()) {
            for (const auto& k : h.items())
                if (k.key() != "eta" && k.key() != "rungs")
                    throw config_error("sweep.halving." + k.key(), "unknown key (expected eta, rungs)");
            if (h.contains("eta")) {
                s.eta = detail::number(h["eta"], "sweep.halving.eta");
                if (!(s.eta >= 2) || !std::isfinite(s.eta))
                    throw config_error("sweep.halving.eta", "must be a number >= 2, got " + h["eta"].dump());
            }
            if (h.contains("rungs")) {
                if (!h["rungs"].is_number_integer() || h["rungs"].get<int>() < 1 || h["rungs"].get<int>() > 20)
                    throw config_error("sweep.halving.rungs",
                                       "expected an integer in [1, 20], got " + h["rungs"].dump());
                s.rungs = h["rungs"].get<int>();
            }
        } else {
            throw config_error("sweep.halving", "expected true, false or {\"eta\", \"rungs\"}");
        }
    }
    if (j.contains("metric")) {
        if (!j["metric"].is_string()) throw config_error("sweep.metric", "expected \"loss\" or a loss term's name");
        s.metric = j["metric"].get<std::string>();
        if (s.metric != "loss" &&
            !(base.contains("loss") && base["loss"].is_object() && base["loss"].contains(s.metric)))
            throw config_error("sweep.metric", "\"" + s.metric + "\" is neither \"loss\" nor a term of the job's loss");
    }
    // Trials are compared on one scale: the total changes meaning with the temperature and the weights,
    // a term with its own settings.
    for (const auto& d : s.space) {
        const bool changes_total = d.pointer.starts_with("/loss/") || d.pointer == "/hyperparameters/temperature";
        const bool changes_term =
            d.pointer.starts_with("/loss/" + s.metric + "/") && d.pointer != "/loss/" + s.metric + "/weight";
        if ((s.metric == "loss" && changes_total) || (s.metric != "loss" && changes_term))
            throw config_error("sweep.metric",
                               "is \"" + s.metric + "\", which " + d.key +
                                   " changes the meaning of: trials would be ranked on different scales; rank by a "
                                   "term it leaves alone, e.g. \"metric\": \"hard_ce\" (the student's "
                                   "cross-entropy on the teacher's answers)");
    }
    return s;
}

/// A sweep job file: the `sweep` object read against the rest, the base job.
struct SweepJob {
    Spec spec;
    nlohmann::json base;  ///< the job without `sweep`
    Job job;              ///< `base`, read and validated
};

/// Reads `path` (io_error, format_error naming the line, config_error naming the key).
inline SweepJob load_sweep_job(const std::filesystem::path& path) {
    const nlohmann::json j = read_job_json(path);
    if (!j.is_object()) throw config_error("(job)", "expected a JSON object at the top level");
    if (!j.contains("sweep"))
        throw config_error("sweep", "is required by distill sweep: the settings to vary (docs/job-format.md)");
    SweepJob s;
    s.base = j;
    s.base.erase("sweep");
    s.job = parse_job(s.base);
    s.spec = parse_spec(j["sweep"], s.base);
    return s;
}

/// One trial: its settings and its job.
struct Trial {
    std::string id;                     ///< "t03"
    nlohmann::ordered_json settings{};  ///< key → value, in the space's order
    nlohmann::json job{};               ///< the base job with the settings (no `sweep`, output_dir unset)
    std::int64_t full_steps = 0;        ///< hyperparameters.max_steps
};

/// The trials of `spec` over `base`: every combination of the lists (grid), or `spec.trials` draws.
/// Each trial's job is validated (config_error naming the trial and the key).
inline std::vector<Trial> make_trials(const Spec& spec, const nlohmann::json& base) {
    std::vector<nlohmann::ordered_json> settings;
    if (spec.trials == 0) {
        settings.push_back(nlohmann::ordered_json::object());
        for (const auto& d : spec.space) {
            std::vector<nlohmann::ordered_json> next;
            for (const auto& s : settings)
                for (const auto& v : d.values) {
                    auto t = s;
                    t[d.key] = v;
                    next.push_back(std::move(t));
                }
            settings = std::move(next);
        }
        if (settings.size() > 10000) throw config_error("sweep.space", "the grid has more than 10000 trials");
    } else {
        distill::Rng rng(spec.seed);
        for (int i = 0; i < spec.trials; ++i) {
            nlohmann::ordered_json t = nlohmann::ordered_json::object();
            for (const auto& d : spec.space) {
                const double u = rng.uniform();
                if (!d.range) {
                    t[d.key] = d.values[std::min(d.values.size() - 1, std::size_t(u * double(d.values.size())))];
                    continue;
                }
                double x = d.log ? std::exp(std::log(d.min) + u * (std::log(d.max) - std::log(d.min)))
                                 : d.min + u * (d.max - d.min);
                if (d.integer)
                    t[d.key] = std::int64_t(std::llround(x));
                else {
                    char buf[32];  // 4 significant digits: settings a person can read and retype
                    std::snprintf(buf, sizeof buf, "%.4g", x);
                    t[d.key] = std::stod(buf);
                }
            }
            settings.push_back(std::move(t));
        }
    }
    const int width = std::max<int>(2, int(std::to_string(settings.size() - 1).size()));  // t00, t01, ...
    std::vector<Trial> trials;
    for (std::size_t i = 0; i < settings.size(); ++i) {
        Trial t;
        const std::string n = std::to_string(i);
        t.id = "t" + std::string(std::size_t(width) - n.size(), '0') + n;
        t.settings = settings[i];
        t.job = base;
        for (const auto& d : spec.space) t.job[nlohmann::json::json_pointer(d.pointer)] = settings[i][d.key];
        try {
            const Job job = parse_job(t.job);
            t.full_steps = job.hyperparameters.loop.max_steps;
            if (t.full_steps <= 0)  // the rungs count steps, which epochs would leave to the data
                throw config_error("hyperparameters.max_steps", "must be > 0 in a sweep (the rungs count steps)");
        } catch (const config_error& e) {
            throw config_error("sweep.space", "trial " + t.id + " " + settings[i].dump() + ": " + e.what());
        }
        trials.push_back(std::move(t));
    }
    return trials;
}

/// The steps rung `k` of `rungs` trains a trial of `full` steps to: ceil(full / eta^(rungs-1-k)).
inline std::int64_t rung_steps(std::int64_t full, int k, int rungs, double eta) {
    const double s = double(full) / std::pow(eta, double(rungs - 1 - k));
    return std::clamp<std::int64_t>(std::int64_t(std::ceil(s - 1e-9)), 1, full);
}

/// What training a trial to a rung's step gave.
struct Outcome {
    double validation_loss = std::numeric_limits<double>::quiet_NaN();  ///< at the rung's step
    std::string error{};  ///< the trial failed (a non-finite loss): it ranks last and goes no further
};

/// Trains `trial` (its job, output_dir set to its directory) to step `stop_at` of its full steps,
/// continuing from where it stopped; returns the validation loss at that step.
using TrainFn = std::function<Outcome(const Trial& trial, const nlohmann::json& job, std::int64_t stop_at)>;

/// The last validation `metric` ("loss", or a term's name) at or before `step` in a finetune run's
/// metrics.jsonl (NaN: none).
inline double validation_loss_at(const std::filesystem::path& metrics, std::int64_t step,
                                 const std::string& metric = "loss") {
    std::ifstream in(metrics);
    double loss = std::numeric_limits<double>::quiet_NaN();
    std::int64_t at = -1;
    for (std::string line; std::getline(in, line);) {
        const auto j = nlohmann::json::parse(line, nullptr, false);
        if (!j.is_object() || j.value("kind", "") != "validation") continue;
        const std::int64_t s = j.value("step", std::int64_t(-1));
        if (s <= step && s >= at) {
            at = s;
            const nlohmann::json* v = metric == "loss" ? (j.contains("loss") ? &j["loss"] : nullptr)
                                      : j.contains("terms") && j["terms"].contains(metric) ? &j["terms"][metric]
                                                                                           : nullptr;
            loss = v && v->is_number() ? v->get<double>() : std::numeric_limits<double>::quiet_NaN();
        }
    }
    return loss;
}

/// A sweep in `dir` over `base` (the job without `sweep`); see the file comment.
class Sweep {
public:
    Sweep(Spec spec, nlohmann::json base, std::filesystem::path dir, std::vector<Trial> trials)
        : spec_(std::move(spec)), base_(std::move(base)), dir_(std::move(dir)), trials_(std::move(trials)) {
        nlohmann::json fp = {{"base", base_},
                             {"trials", nlohmann::json::array()},
                             {"halving", spec_.halving},
                             {"eta", spec_.eta},
                             {"metric", spec_.metric},
                             {"rungs", rungs()}};
        for (const auto& t : trials_) fp["trials"].push_back(t.settings.dump());
        fingerprint_ = distill::detail::sha(fp.dump());
        results_.assign(trials_.size(), {});
    }

    int rungs() const { return spec_.halving ? spec_.rungs : 1; }
    /// What ranks the trials (Spec::metric).
    const std::string& metric() const { return spec_.metric; }
    const std::vector<Trial>& trials() const { return trials_; }
    const std::filesystem::path& dir() const { return dir_; }
    std::filesystem::path state_file() const { return dir_ / "sweep_state.json"; }
    std::filesystem::path trial_dir(const Trial& t) const { return dir_ / "trials" / t.id; }

    /// The trial's job: the base with its settings, training the student only, into its directory.
    nlohmann::json trial_job(const Trial& t) const {
        nlohmann::json j = t.job;
        j["output_dir"] = trial_dir(t).string();
        j["baseline"]["enabled"] = false;
        j["export"] = {{"gguf", nlohmann::json::array()}};
        return j;
    }

    /// Runs the sweep (continuing a stopped one), then writes the outputs. `say` gets progress lines.
    void run(const TrainFn& train, const std::function<void(const std::string&)>& say = {}) {
        std::filesystem::create_directories(dir_);
        load_state();
        std::vector<std::size_t> active(trials_.size());
        for (std::size_t i = 0; i < active.size(); ++i) active[i] = i;
        for (int k = 0; k < rungs(); ++k) {
            for (const std::size_t i : active) {
                if (results_[i].size() > std::size_t(k)) continue;  // done before a restart
                const std::int64_t steps = rung_steps(trials_[i].full_steps, k, rungs(), spec_.eta);
                if (say)
                    say("sweep: rung " + std::to_string(k + 1) + "/" + std::to_string(rungs()) + ", trial " +
                        trials_[i].id + " " + trials_[i].settings.dump() + " to step " + std::to_string(steps));
                Outcome o = train(trials_[i], trial_job(trials_[i]), steps);
                Result r{steps, o.validation_loss, o.error};
                if (o.error.empty() && !std::isfinite(o.validation_loss)) r.error = "no validation loss";
                results_[i].push_back(r);
                if (say)
                    say("sweep: trial " + trials_[i].id +
                        (r.error.empty() ? " validation loss " + eval::detail::num(r.loss) : " failed: " + r.error));
                save_state();
            }
            if (k + 1 == rungs()) break;
            active = survivors(active, k);
        }
        write_outputs();
    }

    /// The trials of `active` that go on from rung `k`: the best floor(n / eta), at least 1, by
    /// validation loss (failed trials last, ties by order).
    std::vector<std::size_t> survivors(std::vector<std::size_t> active, int k) const {
        std::stable_sort(active.begin(), active.end(),
                         [&](std::size_t a, std::size_t b) { return key(a, k) < key(b, k); });
        std::size_t keep = std::max<std::size_t>(1, std::size_t(std::floor(double(active.size()) / spec_.eta + 1e-9)));
        active.resize(std::min(keep, active.size()));
        while (!active.empty() && !results_[active.back()][std::size_t(k)].error.empty()) active.pop_back();
        std::sort(active.begin(), active.end());
        return active;
    }

    /// Steps spent: every trial's furthest rung; and the full grid's: every trial to its full steps.
    std::int64_t steps_spent() const {
        std::int64_t n = 0;
        for (const auto& r : results_)
            if (!r.empty()) n += r.back().steps;
        return n;
    }
    std::int64_t full_grid_steps() const {
        std::int64_t n = 0;
        for (const auto& t : trials_) n += t.full_steps;
        return n;
    }

    /// The ranking: every trial, furthest rung first, then by its validation loss there.
    nlohmann::ordered_json table() const {
        std::vector<std::size_t> order(trials_.size());
        for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
            const int ra = int(results_[a].size()), rb = int(results_[b].size());
            if (ra != rb) return ra > rb;
            return ra == 0 ? false : key(a, ra - 1) < key(b, rb - 1);
        });
        nlohmann::ordered_json rows = nlohmann::ordered_json::array();
        for (const std::size_t i : order) {
            nlohmann::ordered_json row = {{"trial", trials_[i].id}, {"settings", trials_[i].settings}};
            const auto& r = results_[i];
            row["steps"] = r.empty() ? 0 : r.back().steps;
            row["full_steps"] = trials_[i].full_steps;
            row["validation_loss"] =
                r.empty() || !r.back().error.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(r.back().loss);
            row["rungs"] = nlohmann::ordered_json::array();
            for (const auto& x : r) {
                nlohmann::ordered_json c = {{"steps", x.steps}};
                c["validation_loss"] = x.error.empty() ? nlohmann::ordered_json(x.loss) : nlohmann::ordered_json();
                if (!x.error.empty()) c["error"] = x.error;
                row["rungs"].push_back(c);
            }
            rows.push_back(row);
        }
        return rows;
    }

    /// The best trial's job (the base with its settings, output_dir `<dir>/best`).
    nlohmann::json best_job() const {
        const auto rows = table();
        const std::string id = rows.at(0)["trial"];
        for (const auto& t : trials_)
            if (t.id == id) {
                nlohmann::json j = t.job;
                j["output_dir"] = (dir_ / "best").string();
                return j;
            }
        return {};
    }

    /// The validation curves: the rung results, with the trial's own validations where its
    /// metrics.jsonl is there.
    std::vector<eval::Series> curves() const {
        std::vector<eval::Series> out;
        for (std::size_t i = 0; i < trials_.size(); ++i) {
            if (results_[i].empty()) continue;
            eval::Series s{trials_[i].id, {}, {}};
            std::vector<std::pair<double, double>> points;
            for (const auto& r : results_[i])
                if (r.error.empty()) points.emplace_back(double(r.steps), r.loss);
            std::ifstream in(trial_dir(trials_[i]) / "student" / "metrics.jsonl");
            for (std::string line; std::getline(in, line);) {
                const auto j = nlohmann::json::parse(line, nullptr, false);
                if (j.is_object() && j.value("kind", "") == "validation" && j.contains("loss") &&
                    j.value("step", std::int64_t(0)) <= results_[i].back().steps) {
                    const double v = spec_.metric == "loss"
                                         ? j.value("loss", 0.0)
                                         : j.value(nlohmann::json::json_pointer("/terms/" + spec_.metric), 0.0);
                    points.emplace_back(j.value("step", 0.0), v);
                }
            }
            std::sort(points.begin(), points.end());
            points.erase(std::unique(points.begin(), points.end(),
                                     [](const auto& a, const auto& b) { return a.first == b.first; }),
                         points.end());
            for (const auto& [x, y] : points) {
                s.x.push_back(x);
                s.y.push_back(y);
            }
            out.push_back(std::move(s));
        }
        return out;
    }

    /// sweep.json, sweep.md, sweep.svg and best_job.json, each written atomically.
    void write_outputs() const {
        const auto rows = table();
        const std::int64_t spent = steps_spent(), full = full_grid_steps();
        nlohmann::ordered_json j = {{"fingerprint", fingerprint_},
                                    {"method", spec_.halving ? "successive halving" : "full grid"},
                                    {"metric", spec_.metric},
                                    {"eta", spec_.eta},
                                    {"rungs", rungs()},
                                    {"trials", trials_.size()},
                                    {"steps_spent", spent},
                                    {"full_grid_steps", full},
                                    {"fraction_of_full_grid", full > 0 ? double(spent) / double(full) : 0.0},
                                    {"best", rows.at(0)},
                                    {"ranking", rows}};
        io::write_file_atomic(dir_ / "sweep.json", j.dump(2) + "\n");
        std::string md = "# Sweep\n\n";
        char buf[256];
        std::snprintf(
            buf, sizeof buf,
            "%s over %zu trials%s: %lld steps spent, %lld for every trial to its full steps (%.1f%%).\n\n",
            spec_.halving ? "Successive halving" : "Full grid", trials_.size(),
            spec_.halving
                ? (", eta " + eval::detail::num(spec_.eta) + ", " + std::to_string(rungs()) + " rungs").c_str()
                : "",
            (long long)spent, (long long)full, full > 0 ? 100.0 * double(spent) / double(full) : 0.0);
        md += buf;
        md += "| rank | trial |";
        for (const auto& d : spec_.space) md += " " + d.key + " |";
        md += " steps | validation " + spec_.metric + " per rung |\n|---|---|";
        for (std::size_t i = 0; i < spec_.space.size(); ++i) md += "---|";
        md += "---|---|\n";
        int rank = 0;
        for (const auto& row : rows) {
            md += "| " + std::to_string(++rank) + " | " + row["trial"].get<std::string>() + " |";
            for (const auto& d : spec_.space) md += " " + row["settings"][d.key].dump() + " |";
            md += " " + std::to_string(row["steps"].get<std::int64_t>()) + " |";
            std::string per;
            for (const auto& c : row["rungs"]) {
                if (!per.empty()) per += ", ";
                per += std::to_string(c["steps"].get<std::int64_t>()) + ": " +
                       (c["validation_loss"].is_number() ? eval::detail::num(c["validation_loss"].get<double>())
                                                         : "failed (" + c.value("error", std::string()) + ")");
            }
            md += " " + per + " |\n";
        }
        md += "\nBest job: `best_job.json` (run it with `distill run`).\n";
        io::write_file_atomic(dir_ / "sweep.md", md);
        io::write_file_atomic(dir_ / "sweep.svg", eval::line_chart("Validation " + spec_.metric + " per trial", "step",
                                                                   "validation " + spec_.metric, curves()));
        io::write_file_atomic(dir_ / "best_job.json", best_job().dump(2) + "\n");
    }

private:
    struct Result {
        std::int64_t steps = 0;
        double loss = std::numeric_limits<double>::quiet_NaN();
        std::string error{};
    };

    // The ranking key at rung k: failed trials last.
    std::pair<int, double> key(std::size_t i, int k) const {
        const auto& r = results_[i][std::size_t(k)];
        return r.error.empty() ? std::pair{0, r.loss} : std::pair{1, 0.0};
    }

    void load_state() {
        if (!std::filesystem::exists(state_file())) return;
        const auto j = distill::detail::read_json_file(state_file());
        if (j.value("fingerprint", "") != fingerprint_)
            throw config_error("output_dir", state_file().string() +
                                                 " belongs to another sweep (another base job, "
                                                 "space or halving); choose another output_dir or delete it");
        const auto& t = j.at("trials");
        for (std::size_t i = 0; i < trials_.size() && i < t.size(); ++i)
            for (const auto& r : t[i].at("results"))
                results_[i].push_back({r.at("steps").get<std::int64_t>(),
                                       r.at("validation_loss").is_number() ? r.at("validation_loss").get<double>()
                                                                           : std::numeric_limits<double>::quiet_NaN(),
                                       r.value("error", std::string())});
    }

    void save_state() const {
        nlohmann::ordered_json j = {{"fingerprint", fingerprint_}, {"trials", nlohmann::ordered_json::array()}};
        for (std::size_t i = 0; i < trials_.size(); ++i) {
            nlohmann::ordered_json t = {
                {"id", trials_[i].id}, {"settings", trials_[i].settings}, {"results", nlohmann::ordered_json::array()}};
            for (const auto& r : results_[i]) {
                nlohmann::ordered_json x = {{"steps", r.steps}};
                x["validation_loss"] =
                    std::isfinite(r.loss) ? nlohmann::ordered_json(r.loss) : nlohmann::ordered_json();
                if (!r.error.empty()) x["error"] = r.error;
                t["results"].push_back(x);
            }
            j["trials"].push_back(t);
        }
        io::write_file_atomic(state_file(), j.dump(2) + "\n");
    }

    Spec spec_;
    nlohmann::json base_;
    std::filesystem::path dir_;
    std::vector<Trial> trials_;
    std::vector<std::vector<Result>> results_;
    std::string fingerprint_;
};

}  // namespace distill::sweep
