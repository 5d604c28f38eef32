// distill sweep's search and bookkeeping (pipeline/sweep.hpp) with a stand-in for training: the
// halving schedule (which trials advance, the steps spent), a sweep killed and run again ending with
// the same ranking, failed trials, and the spec's errors naming the key.

#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>

#include "distill/pipeline/sweep.hpp"

namespace {

using nlohmann::json;
namespace sw = distill::sweep;

json base_job() {
    return json::parse(R"({
        "teacher": {"kind": "model", "weights": "t.safetensors"},
        "student": {"d_model": 64},
        "training_data": "train.jsonl",
        "validation_data": "val.jsonl",
        "hyperparameters": {"learning_rate": 0.01, "max_steps": 81, "temperature": 2.0, "batch_size": 32},
        "loss": {"soft_kl": {"weight": 1.0}, "hard_ce": {"weight": 1.0}}
    })");
}

json grid() {
    return json::parse(R"({"space": {"hyperparameters.learning_rate": [0.001, 0.01, 0.1],
                                     "hyperparameters.temperature": [1, 2, 4]},
                          "metric": "hard_ce"})");
}

// A stand-in for a trial's validation loss: best at lr 1e-2 and temperature 2, falling with steps.
double fake_loss(const json& job, std::int64_t steps) {
    const double lr = job["hyperparameters"]["learning_rate"], t = job["hyperparameters"]["temperature"];
    return std::pow(std::log10(lr) + 2, 2) + 0.1 * (t - 2) * (t - 2) + 10.0 / double(steps);
}

std::string read(const std::filesystem::path& p) {
    std::ifstream in(p);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct Dir {
    std::filesystem::path path;
    explicit Dir(const char* name) : path(std::filesystem::temp_directory_path() / name) {
        std::filesystem::remove_all(path);
    }
    ~Dir() { std::filesystem::remove_all(path); }
};

}  // namespace

TEST_CASE("sweep: rung steps are ceil(S / eta^(R-1-k)), the last the full steps") {
    CHECK(sw::rung_steps(81, 0, 3, 3) == 9);
    CHECK(sw::rung_steps(81, 1, 3, 3) == 27);
    CHECK(sw::rung_steps(81, 2, 3, 3) == 81);
    CHECK(sw::rung_steps(100, 0, 3, 3) == 12);  // 11.1 up
    CHECK(sw::rung_steps(100, 1, 3, 3) == 34);  // 33.3 up
    CHECK(sw::rung_steps(5, 0, 4, 3) == 1);     // at least one step
}

TEST_CASE("sweep: the metric is read from metrics.jsonl at the rung's step: the total or one term") {
    Dir d("distill_sweep_metrics");
    std::filesystem::create_directories(d.path);
    const auto file = d.path / "metrics.jsonl";
    distill::io::write_file_atomic(
        file, std::string(R"({"kind":"train","step":5,"loss":9.0})"
                          "\n"
                          R"({"kind":"validation","step":5,"loss":4.0,"terms":{"hard_ce":1.5,"soft_kl":2.5}})"
                          "\n"
                          R"({"kind":"validation","step":8,"loss":3.0,"pause":true,"terms":{"hard_ce":1.25}})"
                          "\n"
                          R"({"kind":"validation","step":10,"loss":2.0,"terms":{"hard_ce":1.0}})"
                          "\n"));
    CHECK(sw::validation_loss_at(file, 8) == 3.0);
    CHECK(sw::validation_loss_at(file, 9, "hard_ce") == 1.25);
    CHECK(sw::validation_loss_at(file, 7, "soft_kl") == 2.5);
    CHECK(std::isnan(sw::validation_loss_at(file, 10, "soft_kl")));  // not measured at step 10
    CHECK(std::isnan(sw::validation_loss_at(file, 4)));
}

TEST_CASE("sweep: successive halving over a 3 x 3 grid keeps the best third at each rung") {
    Dir d("distill_sweep_halving");
    const json base = base_job();
    const sw::Spec spec = sw::parse_spec(grid(), base);
    auto trials = sw::make_trials(spec, base);
    REQUIRE(trials.size() == 9);
    // keys in the space's (alphabetical) order, the last varying fastest
    CHECK(trials[4].settings.dump() == R"({"hyperparameters.learning_rate":0.01,"hyperparameters.temperature":2})");
    sw::Sweep s(spec, base, d.path, trials);
    std::vector<std::pair<std::string, std::int64_t>> calls;
    s.run([&](const sw::Trial& t, const json& job, std::int64_t stop_at) {
        calls.emplace_back(t.id, stop_at);
        CHECK(job["output_dir"] == (d.path / "trials" / t.id).string());
        CHECK(job["baseline"]["enabled"] == false);
        CHECK(job["hyperparameters"]["max_steps"] == 81);  // the schedule stays the full run's
        return sw::Outcome{fake_loss(job, stop_at), ""};
    });
    // rung 1: all nine to 9 steps; rung 2: lr 1e-2 (t03, t04, t05) to 27; rung 3: t04 to 81
    REQUIRE(calls.size() == 13);
    for (int i = 0; i < 9; ++i) CHECK(calls[std::size_t(i)].second == 9);
    CHECK(calls[9] == std::pair<std::string, std::int64_t>{"t03", 27});
    CHECK(calls[10] == std::pair<std::string, std::int64_t>{"t04", 27});
    CHECK(calls[11] == std::pair<std::string, std::int64_t>{"t05", 27});
    CHECK(calls[12] == std::pair<std::string, std::int64_t>{"t04", 81});
    CHECK(s.steps_spent() == 6 * 9 + 2 * 27 + 81);
    CHECK(s.full_grid_steps() == 9 * 81);
    const auto out = json::parse(read(d.path / "sweep.json"));
    CHECK(out["steps_spent"] == 189);
    CHECK(out["full_grid_steps"] == 729);
    CHECK(out["best"]["trial"] == "t04");
    CHECK(out["best"]["validation_loss"].get<double>() == doctest::Approx(10.0 / 81));
    CHECK(out["ranking"][1]["trial"] == "t03");  // 27 steps: 0.1 + 10/27 before t05's 0.4 + 10/27
    CHECK(out["ranking"][1]["rungs"].size() == 2);
    const auto best = json::parse(read(d.path / "best_job.json"));
    CHECK(best["hyperparameters"]["learning_rate"] == 0.01);
    CHECK(best["hyperparameters"]["temperature"] == 2);
    CHECK(best["output_dir"] == (d.path / "best").string());
    CHECK_FALSE(best.contains("sweep"));
    CHECK_NOTHROW(distill::parse_job(best));
    CHECK(read(d.path / "sweep.md").find("| 1 | t04 | 0.01 | 2 | 81 | 9: ") != std::string::npos);
    CHECK(read(d.path / "sweep.svg").starts_with("<svg"));
}

TEST_CASE("sweep: without halving every trial trains to its full steps") {
    Dir d("distill_sweep_full");
    json g = grid();
    g["halving"] = false;
    const json base = base_job();
    const sw::Spec spec = sw::parse_spec(g, base);
    sw::Sweep s(spec, base, d.path, sw::make_trials(spec, base));
    int n = 0;
    s.run([&](const sw::Trial&, const json& job, std::int64_t stop_at) {
        ++n;
        CHECK(stop_at == 81);
        return sw::Outcome{fake_loss(job, stop_at), ""};
    });
    CHECK(n == 9);
    CHECK(s.steps_spent() == 729);
}

TEST_CASE("sweep: a sweep killed mid-rung and run again trains only what was left, to the same ranking") {
    Dir a("distill_sweep_whole"), b("distill_sweep_killed");
    const json base = base_job();
    const sw::Spec spec = sw::parse_spec(grid(), base);
    auto train = [](const sw::Trial&, const json& job, std::int64_t stop_at) {
        return sw::Outcome{fake_loss(job, stop_at), ""};
    };
    sw::Sweep(spec, base, a.path, sw::make_trials(spec, base)).run(train);
    int calls = 0;
    struct killed {};
    // killed during its 11th trial-rung (rung 2's second trial)
    CHECK_THROWS_AS(sw::Sweep(spec, base, b.path, sw::make_trials(spec, base))
                        .run([&](const sw::Trial& t, const json& job, std::int64_t s) {
                            if (++calls == 11) throw killed{};
                            return train(t, job, s);
                        }),
                    killed);
    CHECK_FALSE(std::filesystem::exists(b.path / "sweep.json"));
    std::vector<std::string> rerun;
    sw::Sweep(spec, base, b.path, sw::make_trials(spec, base))
        .run([&](const sw::Trial& t, const json& job, std::int64_t s) {
            rerun.push_back(t.id + "@" + std::to_string(s));
            return train(t, job, s);
        });
    CHECK(rerun == std::vector<std::string>{"t04@27", "t05@27", "t04@81"});
    auto ranking = [](const std::filesystem::path& dir) {
        auto j = json::parse(read(dir / "sweep.json"));
        return j["ranking"].dump() + j["steps_spent"].dump();
    };
    CHECK(ranking(a.path) == ranking(b.path));
    // a sweep of another space in the same directory is refused, naming the state file
    json other = grid();
    other["space"]["hyperparameters.temperature"] = {1, 2};
    const sw::Spec spec2 = sw::parse_spec(other, base);
    CHECK_THROWS_WITH_AS(sw::Sweep(spec2, base, b.path, sw::make_trials(spec2, base)).run(train),
                         doctest::Contains("sweep_state.json belongs to another sweep"), distill::config_error);
}

TEST_CASE("sweep: a trial that fails ranks last and goes no further") {
    Dir d("distill_sweep_failed");
    const json base = base_job();
    const sw::Spec spec = sw::parse_spec(grid(), base);
    sw::Sweep s(spec, base, d.path, sw::make_trials(spec, base));
    s.run([&](const sw::Trial& t, const json& job, std::int64_t stop_at) {
        if (t.id == "t04") return sw::Outcome{std::nan(""), "loss is NaN at step 3"};
        return sw::Outcome{fake_loss(job, stop_at), ""};
    });
    const auto out = json::parse(read(d.path / "sweep.json"));
    CHECK(out["best"]["trial"] == "t03");  // temperature 1, the next best
    CHECK(out["ranking"].back()["trial"] == "t04");
    CHECK(out["ranking"].back()["rungs"][0]["error"] == "loss is NaN at step 3");
    CHECK(out["ranking"].back()["validation_loss"].is_null());
}

TEST_CASE("sweep: random search draws within the ranges, reproducibly from the seed") {
    const json base = base_job();
    const json j =
        json::parse(R"({"space": {"hyperparameters.learning_rate": {"min": 1e-4, "max": 1e-1, "scale": "log"},
                                            "hyperparameters.batch_size": {"min": 8, "max": 64},
                                            "loss.soft_kl.weight": [0.5, 1.0]},
                                  "trials": 20, "seed": 7, "metric": "hard_ce"})");
    const auto spec = sw::parse_spec(j, base);
    const auto t1 = sw::make_trials(spec, base), t2 = sw::make_trials(spec, base);
    REQUIRE(t1.size() == 20);
    bool low = false, high = false;
    for (std::size_t i = 0; i < t1.size(); ++i) {
        CHECK(t1[i].settings == t2[i].settings);
        const double lr = t1[i].settings["hyperparameters.learning_rate"];
        CHECK(lr >= 1e-4);
        CHECK(lr <= 1e-1);
        low = low || lr < 1e-3;
        high = high || lr > 1e-2;
        CHECK(t1[i].settings["hyperparameters.batch_size"].is_number_integer());  // the job's is an integer
        const double w = t1[i].job["loss"]["soft_kl"]["weight"];
        CHECK((w == 0.5 || w == 1.0));
    }
    CHECK((low && high));  // log scale: both ends of three decades are reached in 20 draws
}

TEST_CASE("sweep: bad specs name the key") {
    const json base = base_job();
    auto err = [&](const char* spec) {
        try {
            (void)sw::make_trials(sw::parse_spec(json::parse(spec), base), base);
        } catch (const distill::config_error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    CHECK(err(R"({"space": {}})").starts_with("sweep.space: is required"));
    CHECK(err(R"({"space": {"hyperparameters.learning_rate": [1e-3]}, "rungs": 2})") ==
          "sweep.rungs: unknown key (expected space, trials, seed, halving, metric)");
    // the total changes meaning with the temperature and the weights; a term with its own settings
    CHECK(err(R"({"space": {"hyperparameters.temperature": [1, 2]}})")
              .starts_with("sweep.metric: is \"loss\", which hyperparameters.temperature changes the meaning of"));
    CHECK(err(R"({"space": {"loss.hard_ce.weight": [0.5, 1]}})").starts_with("sweep.metric: is \"loss\", which"));
    CHECK(err(R"({"space": {"loss.soft_kl.temperature": [1, 2]}, "metric": "soft_kl"})")
              .starts_with("sweep.metric: is \"soft_kl\", which loss.soft_kl.temperature changes"));
    CHECK(err(R"({"space": {"loss.soft_kl.temperature": [1, 2]}, "metric": "hard_ce"})") == "no error");
    CHECK(err(R"({"space": {"loss.hard_ce.weight": [0.5, 1]}, "metric": "hard_ce"})") == "no error");
    CHECK(err(R"({"space": {"hyperparameters.learning_rate": [1e-3]}, "metric": "jsd"})") ==
          "sweep.metric: \"jsd\" is neither \"loss\" nor a term of the job's loss");
    CHECK(err(R"({"space": {"hyperparameters.learning_rate": []}})") ==
          "sweep.space.hyperparameters.learning_rate: lists no value");
    CHECK(err(R"({"space": {"hyperparameters.learning_rate": {"min": 0, "max": 1, "scale": "log"}}, "trials": 2})") ==
          "sweep.space.hyperparameters.learning_rate.min: must be > 0 on a log scale");
    CHECK(err(R"({"space": {"hyperparameters.learning_rate": {"min": 1e-3, "max": 1e-2}}})")
              .starts_with("sweep.trials: is required when a setting is a range"));
    CHECK(err(R"({"space": {"optimiser.beta1": [0.9]}})")
              .starts_with("sweep.space.optimiser.beta1: the job has no object \"/optimiser\""));
    CHECK(err(R"({"space": {"output_dir": ["a", "b"]}})").starts_with("sweep.space.output_dir: cannot be varied"));
    CHECK(err(R"({"space": {"hyperparameters.learning_rate": [1e-3]}, "halving": {"eta": 1}})") ==
          "sweep.halving.eta: must be a number >= 2, got 1");
    // each trial's job is read as a job: the error names the trial and the job's key
    CHECK(err(R"({"space": {"hyperparameters.learning_rate": [1e-3, -1]}})") ==
          "sweep.space: trial t01 {\"hyperparameters.learning_rate\":-1}: hyperparameters.learning_rate: must be a "
          "finite number > 0, got -1.000000");
    CHECK(err(R"({"space": {"hyperparameters.learnig_rate": [1e-3]}})").find("did you mean \"learning_rate\"") !=
          std::string::npos);
}
