// The Distiller, the job file, per-task metrics and the report: job validation per defect class,
// the pipeline end to end on a tiny teacher (online and offline), stage skipping and refusal of
// output of another configuration, and the report's structure.

#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "distill/distill.hpp"
#include "teacher_fixtures.hpp"
#include "testing.hpp"

using namespace distill;
using distill::testing::TempDir;

namespace {

namespace fs = std::filesystem;

using OnlineDistiller =
    Distiller<teacher::Model<student::Transformer>, student::Transformer,
              loss::Sum<loss::SoftKL, loss::HardCE, loss::HiddenMSE, loss::AttentionKL>, optim::AdamW, device::Cpu>;
using OfflineDistiller = Distiller<teacher::Model<student::Transformer>, student::Transformer,
                                   loss::Sum<loss::TopKSoftKL, loss::HardCE>, optim::AdamW, device::Cpu>;

distill::testing::MathWorld& world() {
    static distill::testing::MathWorld w;
    return w;
}

template <class E = config_error>
std::string error_of(const nlohmann::json& j) {
    try {
        parse_job(j);
    } catch (const E& e) {
        return e.what();
    }
    return "(no error)";
}

// The weight decay the finetune stage gives optimizer `Opt` for `job`.
template <template <class, class> class Opt>
double optim_weight_decay(const Job& job) {
    return optimizer_config_of<Opt<float, device::Cpu>>(job).weight_decay;
}

teacher::ModelConfig teacher_config(const Job& job) {
    teacher::ModelConfig c;
    io::from_json(job.teacher_config(), c, "teacher");
    return c;
}

// The detail of a Distiller's memory plan row "student activations": the mode the finetune stage
// builds the distilled student in and its attention path ("training_fused, fused attention, batch ...").
template <class D>
std::string student_activations_row(const D& d) {
    const eval::MemoryPlan plan = d.memory_plan();
    for (const auto& p : plan.parts())
        if (p.name == "student activations") return p.detail;
    return "(no row)";
}

// What the finetune stage picks for a loss that reads no attention map or q|k|v: training_fused where
// device::Cpu has the fused kernels (student::training_activations), else training.
const std::string fused_training =
    DISTILL_CPU_FUSED_ATTENTION ? "training_fused, fused attention, " : "training, unfused attention, ";

std::string read(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("job: defaults, and every defect class names its JSON path") {
    const nlohmann::json minimal = {{"teacher", {{"kind", "model"}, {"weights", "t.safetensors"}}},
                                    {"training_data", "train.jsonl"},
                                    {"loss", {{"soft_kl", nlohmann::json::object()}}}};
    const Job job = parse_job(minimal);
    CHECK(job.task_type == "conversation");
    CHECK(job.primary_metric() == "bleu");
    CHECK(job.hyperparameters.loop.batch_size == 16);
    CHECK(job.generation.temperature == 0.0);
    CHECK(job.output_dir == "out");
    CHECK(job.teacher_kind() == "model");
    CHECK(!job.teacher_config().contains("kind"));

    auto with = [&](const char* key, nlohmann::json value) {
        nlohmann::json j = minimal;
        j[nlohmann::json::json_pointer(key)] = std::move(value);
        return j;
    };
    CHECK(error_of(with("/hyperparameters/learnig_rate", 0.1)) ==
          "hyperparameters.learnig_rate: unknown key; did you mean \"learning_rate\"?");
    CHECK(error_of(with("/outptu_dir", "x")) == "outptu_dir: unknown key; did you mean \"output_dir\"?");
    CHECK(error_of(with("/hyperparameters/batch_size", "16")) ==
          "hyperparameters.batch_size: expected an integer, got a string");
    CHECK(error_of(with("/hyperparameters/batch_size", 0)) == "hyperparameters.batch_size: must be >= 1, got 0");
    CHECK(error_of(with("/generation/top_p", 1.5)).starts_with("generation.top_p: must be in (0, 1]"));
    CHECK(error_of(with("/task_type", "poetry")).starts_with("task_type: expected \"conversation\""));
    CHECK(error_of(with("/teacher/kind", "oracle")).starts_with("teacher.kind: expected \"model\""));
    CHECK(error_of(with("/loss", nlohmann::json::object())).starts_with("loss: names no term"));
    nlohmann::json no_data = minimal;
    no_data.erase("training_data");
    CHECK(error_of(no_data) == "training_data: is required (a JSONL file)");
    CHECK(error_of(nlohmann::json::array()).starts_with("(job): expected a JSON object"));

    TempDir dir("job");
    distill::testing::write_text(dir / "bad.json", "{\n  \"teacher\": {\n    \"kind\": \"model\",,\n}");
    try {
        load_job(dir / "bad.json");
        FAIL("malformed JSON accepted");
    } catch (const format_error& e) {
        CHECK(e.line() == 3);
        CHECK(std::string(e.what()).find("not valid JSON") != std::string::npos);
    }
    CHECK_THROWS_AS(load_job(dir / "absent.json"), io_error);
}

TEST_CASE("job: hyperparameters are the stages' configs; each value has one default; errors name the job keys") {
    // the keys and defaults a job has always had (they enter the training fingerprints)
    CHECK(io::to_json(Hyperparameters{}) == nlohmann::json{{"learning_rate", 1e-3},
                                                           {"batch_size", 16},
                                                           {"num_epochs", 1},
                                                           {"max_steps", 0},
                                                           {"temperature", 2.0},
                                                           {"warmup", 0},
                                                           {"decay", "cosine"},
                                                           {"min_lr_ratio", 0.1},
                                                           {"weight_decay", 0.01},
                                                           {"grad_clip", 1.0},
                                                           {"grad_accum", 1},
                                                           {"seed", 0},
                                                           {"eval_every", 0},
                                                           {"patience", 0},
                                                           {"checkpoint_every", 50},
                                                           {"log_every", 10}});
    const nlohmann::json minimal = {{"teacher", {{"kind", "model"}, {"weights", "t.safetensors"}}},
                                    {"training_data", "train.jsonl"},
                                    {"loss", {{"soft_kl", nlohmann::json::object()}}}};
    nlohmann::json j = minimal;
    j["hyperparameters"] = {{"warmup", 7},           {"learning_rate", 0.01}, {"batch_size", 4},
                            {"checkpoint_every", 3}, {"decay", "linear"},     {"seed", 9}};
    const Job job = parse_job(j);
    // the job's keys set the fields of the configs the finetune stage hands to the loop and the schedule
    const train::FinetuneConfig loop = finetune_config_of(job.hyperparameters, "runs/x", true);
    CHECK(loop.batch_size == 4);
    CHECK(loop.checkpoint_every == 3);
    CHECK(loop.seed == 9);
    CHECK(loop.output_dir == "runs/x");
    CHECK(loop.quiet);
    CHECK(loop.keep_last_n == train::FinetuneConfig{}.keep_last_n);  // not a job key: the loop's default
    CHECK(loop.eval_batch_size == train::FinetuneConfig{}.eval_batch_size);
    const optim::ScheduleConfig schedule = schedule_config_of(job.hyperparameters);
    CHECK(schedule.warmup_steps == 7);
    CHECK(schedule.learning_rate == 0.01);
    CHECK(schedule.decay == "linear");
    CHECK(schedule.min_lr_ratio == optim::ScheduleConfig{}.min_lr_ratio);
    // where a job's default differs from a program's (the one decision, in Hyperparameters)
    CHECK(Hyperparameters{}.loop.batch_size == 16);
    CHECK(train::FinetuneConfig{}.batch_size == 8);
    CHECK(Hyperparameters{}.loop.checkpoint_every == 50);
    CHECK(train::FinetuneConfig{}.checkpoint_every == 0);
    CHECK(Hyperparameters{}.schedule.learning_rate == 1e-3);
    CHECK(optim::ScheduleConfig{}.learning_rate == 3e-4);

    // errors of the loop's and the schedule's checks name the job's keys, not schedule.* or training.*
    auto with = [&](const char* key, nlohmann::json value) {
        nlohmann::json k = minimal;
        k["hyperparameters"][key] = std::move(value);
        return k;
    };
    CHECK(error_of(with("warmup", -1)) == "hyperparameters.warmup: must be >= 0, got -1");
    CHECK(error_of(with("decay", "cosin")) ==
          "hyperparameters.decay: must be \"constant\", \"cosine\" or \"linear\", got \"cosin\"");
    CHECK(error_of(with("min_lr_ratio", 2)).starts_with("hyperparameters.min_lr_ratio: must be in [0, 1], got 2"));
    CHECK(error_of(with("learning_rate", 0)).starts_with("hyperparameters.learning_rate: must be a finite number > 0"));
    CHECK(error_of(with("grad_clip", -1)).starts_with("hyperparameters.grad_clip: must be a finite number >= 0"));
    CHECK(error_of(with("grad_accum", 0)) == "hyperparameters.grad_accum: must be >= 1, got 0");
    CHECK(error_of(with("log_every", -1)) == "hyperparameters.log_every: must be >= 0, got -1");
    CHECK(error_of(with("temperature", 0)).starts_with("hyperparameters.temperature: must be a finite number > 0"));
    CHECK(error_of(with("weight_decay", -1)).starts_with("hyperparameters.weight_decay: must be a finite number >= 0"));
    CHECK(error_of(with("warmpu", 3)) == "hyperparameters.warmpu: unknown key; did you mean \"warmup\"?");
    // a job built in code is checked by the same validate (the Distiller's constructor calls it)
    auto code_error = [&](auto change) -> std::string {
        Job k = parse_job(minimal);
        change(k.hyperparameters);
        try {
            k.validate();
        } catch (const config_error& e) {
            return e.what();
        }
        return "(no error)";
    };
    CHECK(code_error([](Hyperparameters& h) { h.schedule.warmup_steps = -2; }) ==
          "hyperparameters.warmup: must be >= 0, got -2");
    CHECK(code_error([](Hyperparameters& h) { h.schedule.decay = "step"; }).starts_with("hyperparameters.decay: "));
    CHECK(code_error([](Hyperparameters& h) { h.loop.batch_size = 0; }) ==
          "hyperparameters.batch_size: must be >= 1, got 0");
    // a loop setting that is not a job key keeps its own name under the section
    CHECK(code_error([](Hyperparameters& h) { h.loop.keep_last_n = 0; }) ==
          "hyperparameters.keep_last_n: must be >= 1, got 0");
}

TEST_CASE("job: the temperature and the weight decay reach the typed configs of the loss and the optimizer") {
    using L = loss::Sum<loss::SoftKL, loss::TopKSoftKL, loss::JSD, loss::HardCE>;
    nlohmann::json j = {{"teacher", {{"kind", "model"}, {"weights", "t.safetensors"}}},
                        {"training_data", "train.jsonl"},
                        {"loss", {{"soft_kl", {{"weight", 0.5}}}, {"topk_soft_kl", nlohmann::json::object()}}}};
    {
        const auto c = loss_config_of<L>(parse_job(j));
        CHECK(c.get<0>().weight == 0.5);
        CHECK(c.get<0>().config.temperature == 2.0);  // hyperparameters.temperature's default
        CHECK(c.get<1>().weight == 1.0);
        CHECK(c.get<1>().config.temperature == 1.0);  // cached top-k log-probabilities: stays at 1
        CHECK(c.get<2>().weight == 0.0);              // not named: weight 0, the term's own default
        CHECK(c.get<2>().config.temperature == 1.0);
        CHECK(c.get<3>().weight == 0.0);
    }
    j["hyperparameters"]["temperature"] = 4.0;
    j["loss"]["jsd"] = {{"temperature", 3.0}};
    {
        const auto c = loss_config_of<L>(parse_job(j));
        CHECK(c.get<0>().config.temperature == 4.0);
        CHECK(c.get<1>().config.temperature == 1.0);
        CHECK(c.get<2>().config.temperature == 3.0);  // its own
        CHECK(c.get<2>().weight == 1.0);
    }
    j["loss"] = {{"soft_kl", nlohmann::json::object()}};
    CHECK(loss_config_of<loss::SoftKL>(parse_job(j)).temperature == 4.0);  // a single term
    j["loss"]["soft_kl"]["temperature"] = 1.5;
    CHECK(loss_config_of<loss::SoftKL>(parse_job(j)).temperature == 1.5);

    CHECK(optim_weight_decay<optim::AdamW>(parse_job(j)) == 0.01);  // hyperparameters.weight_decay's default
    CHECK(optim_weight_decay<optim::Adam>(parse_job(j)) == 0.01);   // the job's, not Adam's 0
    j["hyperparameters"]["weight_decay"] = 0.05;
    CHECK(optim_weight_decay<optim::AdamW>(parse_job(j)) == 0.05);
    j["optimizer"] = {{"weight_decay", 0.2}};
    CHECK(optim_weight_decay<optim::AdamW>(parse_job(j)) == 0.2);  // the optimizer's own wins
    j["optimizer"] = {{"weight_decay", -1.0}};
    try {
        (void)optim_weight_decay<optim::AdamW>(parse_job(j));
        FAIL("a negative weight decay accepted");
    } catch (const config_error& e) {
        CHECK(std::string(e.what()).starts_with("optimizer.weight_decay"));
    }
}

TEST_CASE("Distiller: bad policy sections, data and combinations fail at construction with the key") {
    auto& w = world();
    auto construct = [&](const nlohmann::json& j) -> std::string {
        try {
            const Job job = parse_job(j);
            teacher::Model<student::Transformer> t(teacher_config(job));
            OnlineDistiller d(job, t, device::Cpu{}, {.quiet = true});
        } catch (const distill::error& e) {
            return e.what();
        }
        return "(no error)";
    };
    nlohmann::json j = w.job("bad");
    CHECK(construct(j) == "(no error)");
    auto with = [&](const char* key, nlohmann::json value) {
        nlohmann::json k = j;
        k[nlohmann::json::json_pointer(key)] = std::move(value);
        return k;
    };
    CHECK(construct(with("/student/d_modle", 8)) == "student.d_modle: unknown key; did you mean \"d_model\"?");
    CHECK(construct(with("/loss/sotf_kl", nlohmann::json::object())) ==
          "loss.sotf_kl: unknown key; did you mean \"soft_kl\"?");
    CHECK(construct(with("/loss/soft_kl/temperature", -1.0)).starts_with("loss.soft_kl.temperature"));
    CHECK(construct(with("/optimizer/beta1", 1.5)).starts_with("optimizer.beta1"));
    CHECK(construct(with("/hyperparameters/batch_size", 32)).starts_with("teacher.max_batch: is 16, smaller than"));
    CHECK(construct(with("/student/vocab_size", 300))
              .starts_with("student.vocab_size: is 300, more rows than the teacher's 263: online losses compare"));
    CHECK(construct(with("/student/vocab_size", 200)) ==
          "student.vocab_size: is 200, but the student's tokenizer byte-v1 has 263 ids");
    CHECK(construct(with("/tokenizer", (w.dir / "absent").string())).starts_with("tokenizer: is \""));
    CHECK(construct(with("/student/n_heads", 5)).starts_with("student"));
    CHECK(construct(with("/training_data", (w.dir / "absent.jsonl").string())).starts_with("training_data: "));
    distill::testing::write_text(w.dir / "broken.jsonl", "{\"prompt\": \"a\"}\n{\"prompt\": 3}\n");
    CHECK(construct(with("/training_data", (w.dir / "broken.jsonl").string())).find("broken.jsonl:2") !=
          std::string::npos);
    distill::testing::write_text(w.dir / "unlabeled.jsonl", "{\"prompt\": \"a\"}\n");
    CHECK(construct(with("/test_data", (w.dir / "unlabeled.jsonl").string())).find("has no reference") !=
          std::string::npos);
    {  // a teacher that keeps only its logits: fine for soft_kl + hard_ce, refused for hidden_mse
        nlohmann::json logits_only = with("/teacher/keep_activations", false);
        CHECK(construct(logits_only)
                  .starts_with("teacher.keep_activations: is false, but the loss reads the "
                               "teacher's hidden states"));
        logits_only["loss"]["hidden_mse"]["weight"] = 0.0;
        logits_only["loss"]["attention_kl"]["weight"] = 0.0;
        CHECK(construct(logits_only) == "(no error)");
        {  // a term of weight 0 is not read: no map is kept, the student attends fused (on device::Cpu)
            const Job lj = parse_job(logits_only);
            teacher::Model<student::Transformer> lt(teacher_config(lj));
            CHECK(student_activations_row(OnlineDistiller(lj, lt, device::Cpu{}, {.quiet = true}))
                      .starts_with(fused_training));
        }
        // and it computes the logits of one that keeps everything: equal up to float rounding, as the
        // lean one attends with the fused kernel (online softmax) where the full one keeps the maps
        teacher::Model<student::Transformer> full(teacher_config(parse_job(j))),
            lean(teacher_config(parse_job(logits_only)));
        CHECK(!lean.keeps_activations());
        const std::vector<std::int32_t> tokens = {256, 49, 43, 50, 61, 260};
        full.forward(tokens.data(), 1, int(tokens.size()));
        lean.forward(tokens.data(), 1, int(tokens.size()));
        double worst = 0;
        for (std::int64_t i = 0; i < full.logits().numel(); ++i)
            worst = std::max(worst, std::abs(double(full.logits().data()[i]) - lean.logits().data()[i]) /
                                        (1 + std::abs(double(full.logits().data()[i]))));
        CHECK(worst <= 1e-5);
        CHECK_THROWS_AS(lean.hidden_state(1), shape_error);
    }
    {  // export.gguf the student cannot be written as: refused now, not after finetune
        nlohmann::json exported = with("/export", {{"gguf", {"q8_0"}}});
        CHECK(construct(exported) == "(no error)");
        const nlohmann::json llama_blocks = {{"norm", "rmsnorm"}, {"positions", "rope"}, {"mlp", "swiglu"},
                                             {"qkv_bias", false}, {"proj_bias", false},  {"mlp_bias", false}};
        exported["student"].update(llama_blocks);
        exported["student"]["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}, {"original_context_length", 48}};
        CHECK(construct(exported) ==
              "export.gguf: cannot be written for this student: student.rope_scaling.type: is \"dynamic\" (NTK-aware "
              "scaling), which llama.cpp's llama does not compute");
        exported.erase("export");
        CHECK(construct(exported) == "(no error)");  // without export.gguf the student may train
    }
    // the offline distiller's top-k term needs top-k log-probabilities from the generation
    const Job job = parse_job(with("/loss", {{"topk_soft_kl", nlohmann::json::object()}}));
    teacher::Model<student::Transformer> t(teacher_config(job));
    try {
        OfflineDistiller d(job, t, device::Cpu{}, {.quiet = true});
        FAIL("accepted top_logprobs = 0");
    } catch (const config_error& e) {
        CHECK(e.field() == "generation.top_logprobs");
    }
}

TEST_CASE("Distiller online: run() writes the report; stages are skipped when complete and refuse other configs") {
    auto& w = world();
    const Job job = parse_job(w.job("online"));
    teacher::Model<student::Transformer> t(teacher_config(job));
    OnlineDistiller d(job, t, device::Cpu{}, {.quiet = true});
    static_assert(OnlineDistiller::online && !OfflineDistiller::online && OfflineDistiller::uses_topk);
    // attention_kl reads the student's maps: the finetune stage keeps them (training, unfused attention)
    CHECK(student_activations_row(d).starts_with("training, unfused attention, batch "));
    const nlohmann::ordered_json report = d.run();
    const fs::path out = job.output_dir;

    CHECK(report["task_type"] == "math");
    CHECK(report["primary_metric"] == "exact_match");
    CHECK(report["test_examples"] == 40);
    for (const char* m : {"teacher", "baseline", "student"}) {
        INFO(m);
        REQUIRE(report["models"].contains(m));
        const auto& r = report["models"][m];
        for (const char* key : {"parameters", "checkpoint_bytes", "peak_rss_bytes", "latency_ms_p50", "latency_ms_p95",
                                "responses_per_s", "tokens_per_s"})
            CHECK(r[key].is_number());
        CHECK(r["metrics"]["exact_match"].is_number());
        CHECK(r["metrics"]["perplexity"].get<double>() > 1.0);
        CHECK(r["latency_ms_p95"].get<double>() >= r["latency_ms_p50"].get<double>());
        CHECK(r["peak_rss_bytes"].get<double>() > 0);
    }
    CHECK(!report["models"]["teacher"]["metrics"].contains("teacher_agreement"));
    CHECK(report["models"]["student"]["metrics"]["teacher_agreement"].is_number());
    // the student and the baseline are the same architecture, far smaller than the teacher
    CHECK(report["models"]["student"]["parameters"] == report["models"]["baseline"]["parameters"]);
    CHECK(report["models"]["student"]["parameters"].get<double>() * 4 <
          report["models"]["teacher"]["parameters"].get<double>());
    CHECK(report["training"]["student"]["steps"] == 12);
    CHECK(report["training"]["baseline"]["steps"] == 12);  // the same budget
    for (const char* f : {"report.json", "report.md", "loss.svg", "models.svg", "student.safetensors",
                          "baseline.safetensors", "eval/student.answers.jsonl", "job.json"})
        CHECK_MESSAGE(fs::exists(out / f), f);
    const std::string md = read(out / "report.md");
    CHECK(md.find("| exact_match |") != std::string::npos);
    CHECK(md.find("student vs teacher") != std::string::npos);
    const std::string loss_svg = read(out / "loss.svg");
    for (const char* series :
         {"student train soft_kl", "student train attention_kl", "student validation", "baseline train"})
        CHECK_MESSAGE(loss_svg.find(series) != std::string::npos, series);
    // the per-term records of the distilled run
    CHECK(read(out / "student" / "metrics.jsonl").find("\"hidden_mse\"") != std::string::npos);

    // a second run skips every stage: nothing is rewritten
    const std::string done = read(out / "student" / "done.json"), json = read(out / "report.json");
    const auto weights_time = fs::last_write_time(out / "student.safetensors");
    OnlineDistiller again(job, t, device::Cpu{}, {.quiet = true});
    const auto report2 = again.run();
    CHECK(read(out / "student" / "done.json") == done);
    CHECK(read(out / "report.json") == json);
    CHECK(fs::last_write_time(out / "student.safetensors") == weights_time);
    CHECK(report2["models"]["student"]["metrics"] == report["models"]["student"]["metrics"]);

    // the cost table: the teacher's tokens from the answers on file, unpriced until the job sets prices
    const auto& cost = report["cost"];
    CHECK(cost["priced"] == false);
    CHECK(cost["teacher_billed"] == "per machine hour");
    CHECK(cost["generate"]["completion_tokens"].get<double>() > 0);
    CHECK(cost["generate"]["lines_without_usage"] == 0);
    CHECK(cost["serving_per_1000_requests"]["student"]["machine_hours"].get<double>() ==
          doctest::Approx(1000.0 / report["models"]["student"]["responses_per_s"].get<double>() / 3600.0));
    CHECK(cost["serving_per_1000_requests"]["student"]["cost"].is_null());
    {  // prices set later: the cost table is recomputed, nothing is measured again
        nlohmann::json priced = w.job("online");
        priced["cost"] = {{"machine_per_hour", 2.0}, {"teacher_machine_per_hour", 10.0}};
        const auto answers_time = fs::last_write_time(out / "eval" / "student.answers.jsonl");
        OnlineDistiller with_prices(parse_job(priced), t, device::Cpu{}, {.quiet = true});
        const auto r3 = with_prices.run();
        CHECK(fs::last_write_time(out / "eval" / "student.answers.jsonl") == answers_time);
        CHECK(r3["models"] == report["models"]);
        CHECK(r3["cost"]["serving_per_1000_requests"]["teacher"]["cost"].get<double>() ==
              doctest::Approx(10.0 * 1000.0 / report["models"]["teacher"]["responses_per_s"].get<double>() / 3600.0));
        CHECK(read(out / "report.md").find("## Cost") != std::string::npos);
        CHECK(detail::read_json_file(out / "report.json")["cost"] == r3["cost"]);
    }

    // answers in another file order (a later run appends retried answers): the same student
    {
        nlohmann::json j2 = w.job("online-reordered");
        const Job job2 = parse_job(j2);
        const fs::path out2 = job2.output_dir;
        fs::create_directories(out2 / "generate");
        fs::copy(out / "generate", out2 / "generate",
                 fs::copy_options::recursive | fs::copy_options::overwrite_existing);
        std::vector<std::string> lines;
        std::istringstream in(read(out / "generate" / "synthetic.jsonl"));
        for (std::string line; std::getline(in, line);) lines.push_back(line);
        std::string reversed;
        for (auto it = lines.rbegin(); it != lines.rend(); ++it) reversed += *it + "\n";
        distill::testing::write_text(out2 / "generate" / "synthetic.jsonl", reversed);
        OnlineDistiller d2(job2, t, device::Cpu{}, {.quiet = true});
        d2.finetune();
        CHECK(read(out2 / "student.safetensors") == read(out / "student.safetensors"));
    }

    {  // activation checkpointing: refused while a term reads the student's attention maps; without them
       // the same student, bit for bit, as the run without it (training_fused: both attend fused on Cpu)
        nlohmann::json j = w.job("online-checkpointed");
        j["activation_checkpointing"] = true;
        CHECK_THROWS_WITH_AS(OnlineDistiller(parse_job(j), t, device::Cpu{}, {.quiet = true}),
                             doctest::Contains("activation_checkpointing: is true, but the loss reads the student's "
                                               "attention maps"),
                             config_error);
        j["loss"].erase("attention_kl");
        j["student"]["n_layers"] = 3;
        j["baseline"]["enabled"] = false;
        nlohmann::json plain = j;
        plain["activation_checkpointing"] = false;
        plain["output_dir"] = j["output_dir"].get<std::string>() + "-plain";
        for (const auto& job_json : {j, plain}) {
            const fs::path o = job_json["output_dir"].get<std::string>();
            fs::create_directories(o / "generate");
            fs::copy(out / "generate", o / "generate",
                     fs::copy_options::recursive | fs::copy_options::overwrite_existing);
            OnlineDistiller d2(parse_job(job_json), t, device::Cpu{}, {.quiet = true});
            // the two runs attend alike: checkpointed, fused where training_fused is (device::Cpu)
            CHECK(student_activations_row(d2).starts_with(job_json["activation_checkpointing"].get<bool>()
                                                              ? std::string(DISTILL_CPU_FUSED_ATTENTION
                                                                                ? "checkpointed, fused attention, "
                                                                                : "checkpointed, unfused attention, ")
                                                              : fused_training));
            d2.finetune();
        }
        CHECK(read(fs::path(j["output_dir"].get<std::string>()) / "student.safetensors") ==
              read(fs::path(plain["output_dir"].get<std::string>()) / "student.safetensors"));
    }

    // other hyperparameters into the same directory: refused, naming the directory
    nlohmann::json other = w.job("online");
    other["hyperparameters"]["learning_rate"] = 1e-2;
    const Job job3 = parse_job(other);
    OnlineDistiller changed(job3, t, device::Cpu{}, {.quiet = true});
    try {
        changed.finetune();
        FAIL("a run of another configuration was reused");
    } catch (const teacher::fingerprint_error& e) {
        CHECK(std::string(e.what()).find((out / "student").string()) != std::string::npos);
    }

    // run_status reads it back
    const auto s = run_status(out);
    CHECK(s["generate"]["done"] == true);
    CHECK(s["generate"]["kept"].get<std::int64_t>() + s["generate"]["rejected"].get<std::int64_t>() == 160);
    CHECK(s["generate"]["kept"].get<std::int64_t>() == report["training"]["generate"]["accepted"].get<std::int64_t>());
    CHECK(s["student"]["done"] == true);
    CHECK(s["student"]["step"] == 12);
    CHECK(s["evaluate"]["done"] == true);
    CHECK(s["evaluate"]["student"].is_number());
}

TEST_CASE("Distiller offline: top-k log-probabilities from the generate stage's cache") {
    auto& w = world();
    nlohmann::json j = w.job("offline");
    j["loss"] = {{"topk_soft_kl", {{"weight", 1.0}, {"temperature", 1.0}}}, {"hard_ce", {{"weight", 1.0}}}};
    j["generation"]["top_logprobs"] = 8;
    j["test_data"] = "";
    const Job job = parse_job(j);
    teacher::Model<student::Transformer> t(teacher_config(job));
    OfflineDistiller d(job, t, device::Cpu{}, {.quiet = true});
    d.generate();
    CHECK(fs::exists(fs::path(job.output_dir) / "generate" / "synthetic.topk"));
    {  // the generate stage's inspection of its answers (docs/data.md)
        const fs::path gen = fs::path(job.output_dir) / "generate";
        const auto ins = nlohmann::json::parse(read(gen / "synthetic.inspect" / "inspect.json"));
        std::size_t answers = 0;
        for (const char c : read(gen / "synthetic.jsonl")) answers += c == '\n';
        CHECK(answers > 0);
        CHECK(ins["examples"] == answers);
        CHECK(ins["teacher_output"]["answers"] == answers);
        CHECK(ins["teacher_output"]["max_new_tokens"] == job.generation.max_new_tokens);
        CHECK(ins["messages_per_role"]["assistant"] == answers);
    }
    const auto summary = d.finetune();
    CHECK(summary["student"]["steps"] == 12);
    const std::string metrics = read(fs::path(job.output_dir) / "student" / "metrics.jsonl");
    CHECK(metrics.find("\"topk_soft_kl\"") != std::string::npos);
    // the first and the last training losses: the student learns the teacher's distribution
    std::vector<double> losses;
    std::istringstream in(metrics);
    for (std::string line; std::getline(in, line);) {
        const auto r = nlohmann::json::parse(line);
        if (r["kind"] == "train") losses.push_back(r["loss"].get<double>());
    }
    REQUIRE(losses.size() >= 2);
    CHECK(losses.back() < losses.front());
    CHECK_THROWS_WITH_AS(d.evaluate(), doctest::Contains("test_data"), config_error);
}

TEST_CASE("Distiller on-policy (GKD): sampled batches train, reproducibly across a resume; refusals name the key") {
    auto& w = world();
    nlohmann::json j = w.job("gkd");
    j["loss"] = {{"soft_kl", {{"weight", 1.0}}}};
    j["test_data"] = "";
    j["baseline"] = {{"enabled", false}};
    j["generation"] = {{"temperature", 1.0}, {"top_p", 1.0}, {"max_new_tokens", 40}, {"seed", 3}};
    const Job plain = parse_job(j);
    teacher::Model<student::Transformer> t(teacher_config(plain));
    OnlineDistiller(plain, t, device::Cpu{}, {.quiet = true}).generate();
    const fs::path gen = fs::path(plain.output_dir) / "generate";

    // λ = 0.5 with seq_kd: half the batches sampled by the student, the others by the teacher
    auto run_into = [&](const std::string& out, const nlohmann::json& on_policy) {
        nlohmann::json k = j;
        k["output_dir"] = (w.dir / out).string();
        if (!on_policy.is_null()) k["on_policy"] = on_policy;
        const Job job = parse_job(k);
        fs::create_directories(fs::path(job.output_dir) / "generate");
        fs::copy(gen, fs::path(job.output_dir) / "generate",
                 fs::copy_options::recursive | fs::copy_options::overwrite_existing);
        OnlineDistiller d(job, t, device::Cpu{}, {.quiet = true});
        return d.finetune();
    };
    const nlohmann::json op = {{"lambda", 0.5}, {"seq_kd", true}};
    const auto summary = run_into("gkd-a", op);
    CHECK(summary["student"]["steps"] == 12);
    CHECK(std::isfinite(summary["student"]["final_loss"].get<double>()));
    run_into("gkd-off", nullptr);
    const fs::path a = w.dir / "gkd-a";
    CHECK(read(a / "student.safetensors") != read(w.dir / "gkd-off" / "student.safetensors"));

    // resumed from step 5 after a crash: the same coins and samples, the same student
    const fs::path ck = a / "student" / "checkpoints";
    const std::string finished = read(a / "student.safetensors");
    for (const char* step : {"step-00000010", "step-00000012"}) fs::remove_all(ck / step);
    distill::testing::write_text(ck / "latest", "step-00000005\n");
    fs::remove(a / "student" / "done.json");
    fs::remove(a / "student.safetensors");
    REQUIRE(fs::exists(ck / "step-00000005"));
    const auto resumed = run_into("gkd-a", op);
    CHECK(resumed["student"]["steps"] == 12);
    CHECK(read(a / "student.safetensors") == finished);

    // on_policy's own sampling keys: generation's value again changes nothing, another one samples otherwise
    nlohmann::json same = op, colder = op;
    same["temperature"] = 1.0;
    colder["temperature"] = 0.5;
    run_into("gkd-same", same);
    run_into("gkd-colder", colder);
    CHECK(read(w.dir / "gkd-same" / "student.safetensors") == finished);
    CHECK(read(w.dir / "gkd-colder" / "student.safetensors") != finished);

    // refused: a loss that cannot score fresh samples, and λ out of range
    nlohmann::json offline = j;
    offline["loss"] = {{"topk_soft_kl", {{"weight", 1.0}, {"temperature", 1.0}}}};
    offline["generation"]["top_logprobs"] = 4;
    offline["on_policy"] = {{"lambda", 0.5}};
    try {
        OfflineDistiller d(parse_job(offline), t, device::Cpu{}, {.quiet = true});
        FAIL("an offline loss was accepted for on-policy batches");
    } catch (const config_error& e) {
        CHECK(e.field() == "on_policy.lambda");
        CHECK(std::string(e.what()).find("only a teacher running in process can score") != std::string::npos);
    }
    nlohmann::json bad = j;
    bad["on_policy"] = {{"lambda", 2}};
    CHECK(error_of(bad) == "on_policy.lambda: must be in [0, 1], got 2.000000");
    bad["on_policy"] = {{"lamda", 0.5}};
    CHECK(error_of(bad) == "on_policy.lamda: unknown key; did you mean \"lambda\"?");
}

#if defined(DISTILL_WITH_TEXT)
namespace {

using TextDistiller =
    Distiller<teacher::Model<student::Transformer>, student::Transformer, loss::HardCE, optim::AdamW, device::Cpu>;

// Two Hugging Face teacher directories with the qwen2 fixture tokenizer (903 ids) and a ChatML
// template: `padded` has 1024 embedding rows, `exact` the same network with the tokenizer's rows
// alone. Greedy answers end at position 40 (a position feature the <|im_end|> row reads), and the
// padding rows never win (the final LayerNorm's bias puts their logits near -30), so both teachers
// answer alike and their logits agree on every real token's column.
struct HfWorld {
    TempDir dir{"distiller-hf"};
    fs::path padded = dir / "padded", exact = dir / "exact";
    int ids = 0;
    HfWorld() {
        const fs::path tokenizers = fs::path(DISTILL_TEST_DATA_DIR) / "tokenizers";
        const std::string chatml =
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
            "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        ids = data::HfTokenizer(tokenizers / "qwen2" / "tokenizer.json").vocab_size();
        student::TransformerConfig c{
            .vocab_size = 1024, .context_length = 64, .d_model = 16, .n_layers = 1, .n_heads = 2, .d_ff = 32};
        student::Transformer<float, device::Cpu> big(c, 8);
        big.init(5);
        c.vocab_size = ids;
        student::Transformer<float, device::Cpu> small(c, 8);
        for (auto& p : big.parameters()) {
            float* v = p.value.data();
            if (p.name == "ln_f.bias") v[0] = 8.0f;
            if (p.name == "wpe.weight")  // feature 1: before or after position 40
                for (int pos = 0; pos < 64; ++pos) v[pos * 16 + 1] = pos < 40 ? -3.0f : 3.0f;
            if (p.name == "wte.weight") {
                for (int j = 0; j < 16; ++j) v[2 * 16 + j] = j == 1 ? 2.0f : 0.0f;  // <|im_end|> from position 40 on
                for (int r = ids; r < 1024; ++r)
                    for (int j = 0; j < 16; ++j) v[r * 16 + j] = j == 0 ? -4.0f : 0.0f;
            }
            for (auto& q : small.parameters())
                if (q.name == p.name) std::copy(v, v + q.value.numel(), q.value.data());
        }
        for (const auto& [to, net] : {std::pair{padded, &big}, std::pair{exact, &small}}) {
            io::hf::save(to, *net);
            fs::copy_file(tokenizers / "qwen2" / "tokenizer.json", to / "tokenizer.json");
            distill::testing::write_text(
                to / "tokenizer_config.json",
                nlohmann::json{{"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"}, {"chat_template", chatml}}
                    .dump());
        }
        std::string train, test;
        for (int i = 0; i < 24; ++i)
            train += nlohmann::json{{"prompt",
                                     "Question " + std::to_string(i) + ": what comes after " + std::to_string(i) + "?"}}
                         .dump() +
                     "\n";
        for (int i = 0; i < 4; ++i)
            test += nlohmann::json{{"prompt", "What is " + std::to_string(i) + " plus one?"},
                                   {"completion", std::to_string(i + 1)}}
                        .dump() +
                    "\n";
        distill::testing::write_text(dir / "train.jsonl", train);
        distill::testing::write_text(dir / "test.jsonl", test);
    }
    nlohmann::json job(const std::string& out, const fs::path& teacher, int student_vocab, const std::string& tokenizer,
                       nlohmann::json loss) const {
        return {{"teacher", {{"kind", "model"}, {"weights", teacher.string()}, {"max_batch", 8}}},
                {"student",
                 {{"vocab_size", student_vocab},
                  {"context_length", 64},
                  {"d_model", 16},
                  {"n_layers", 1},
                  {"n_heads", 2},
                  {"d_ff", 32}}},
                {"tokenizer", tokenizer},
                {"training_data", (dir / "train.jsonl").string()},
                {"test_data", (dir / "test.jsonl").string()},
                {"task_type", "qa"},
                {"generation", {{"max_new_tokens", 12}}},
                {"hyperparameters", {{"learning_rate", 1e-2}, {"batch_size", 8}, {"max_steps", 4}, {"log_every", 1}}},
                {"loss", std::move(loss)},
                {"baseline", {{"enabled", false}}},
                {"evaluation", {{"batch_size", 8}, {"latency_samples", 1}}},
                {"output_dir", (dir / out).string()}};
    }
};

HfWorld& hf_world() {
    static HfWorld w;
    return w;
}

std::vector<double> train_losses(const fs::path& run) {
    std::vector<double> losses;
    std::istringstream in(read(run / "student" / "metrics.jsonl"));
    for (std::string line; std::getline(in, line);) {
        const auto r = nlohmann::json::parse(line);
        if (r["kind"] == "train") losses.push_back(r["loss"].get<double>());
    }
    return losses;
}

}  // namespace

TEST_CASE("Distiller with a published tokenizer: the teacher's template end to end, padding rows trimmed") {
    auto& w = hf_world();
    const nlohmann::json loss = {{"soft_kl", {{"weight", 1.0}}}, {"hard_ce", {{"weight", 1.0}}}};
    // the student has the tokenizer's rows; the padded teacher's logits are cut to them
    const Job job = parse_job(w.job("padded", w.padded, w.ids, "", loss));
    teacher::Model<student::Transformer> t(teacher_config(job));
    const data::HfTokenizer tok(w.padded / "tokenizer.json");
    CHECK(t.tokenizer_id() == tok.id());
    CHECK(t.vocab_size() == 1024);
    OnlineDistiller d(job, t, device::Cpu{}, {.quiet = true});
    CHECK(d.chat_template().tokenizer_id() == tok.id());
    CHECK(d.alignment().match == data::vocab_match::padded);
    CHECK(d.alignment().logit_columns == w.ids);
    d.generate();
    const auto records = teacher::read_synthetic(fs::path(job.output_dir) / "generate" / "synthetic.jsonl");
    REQUIRE(records.size() >= 8);
    for (const auto& r : records) {
        CAPTURE(r.id);
        // the answer ends at <|im_end|> and its text is the tokenizer's decoding of its ids
        REQUIRE(!r.response.tokens.empty());
        CHECK(r.response.tokens.back() == *tok.token_to_id("<|im_end|>"));
        CHECK(r.tokenizer == tok.id());
        CHECK(r.response.text == tok.decode(r.response.tokens, /*skip_special_tokens=*/true));
        CHECK(r.response.usage.prompt_tokens == std::int64_t(tok.encode(tok.chat().render(r.prompt), false).size()));
    }
    CHECK(d.finetune()["student"]["steps"] == 4);
    const auto report = d.evaluate();
    CHECK(report["models"]["student"]["failed"] == 0);
    CHECK(report["models"]["teacher"]["failed"] == 0);

    // the same network without padding rows answers alike and trains the student to the same losses
    const Job same = parse_job(w.job("exact", w.exact, w.ids, "", loss));
    teacher::Model<student::Transformer> e(teacher_config(same));
    OnlineDistiller de(same, e, device::Cpu{}, {.quiet = true});
    CHECK(de.alignment().match == data::vocab_match::identical);
    de.generate();
    const auto exact_records = teacher::read_synthetic(fs::path(same.output_dir) / "generate" / "synthetic.jsonl");
    REQUIRE(exact_records.size() == records.size());
    for (std::size_t i = 0; i < records.size(); ++i) CHECK(exact_records[i].response.text == records[i].response.text);
    de.finetune();
    const auto a = train_losses(job.output_dir), b = train_losses(same.output_dir);
    REQUIRE(a.size() == 4);
    REQUIRE(b.size() == a.size());
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(a[i] == doctest::Approx(b[i]).epsilon(1e-6));

    // naming the teacher's tokenizer explicitly is the same tokenizer
    const Job named = parse_job(w.job("named", w.padded, w.ids, w.padded.string(), loss));
    CHECK(OnlineDistiller(named, t, device::Cpu{}, {.quiet = true}).alignment().match == data::vocab_match::padded);
}

TEST_CASE("Distiller: a student that starts from a Hugging Face directory leaves in transformers' layout") {
    auto& w = hf_world();
    const nlohmann::json loss = {{"soft_kl", {{"weight", 1.0}}}, {"hard_ce", {{"weight", 1.0}}}};
    nlohmann::json j = w.job("init", w.padded, 0, "", loss);
    j["student"] = nlohmann::json::object();  // the checkpoint's architecture
    j["student_weights"] = w.exact.string();
    const Job job = parse_job(j);
    teacher::Model<student::Transformer> t(teacher_config(job));
    OnlineDistiller d(job, t, device::Cpu{}, {.quiet = true});
    CHECK(d.chat_template().tokenizer_id() == t.tokenizer_id());  // the tokenizer.json beside the weights
    CHECK(d.alignment().match == data::vocab_match::padded);
    d.generate();
    d.finetune();
    // the student started as the teacher without its padding rows: their distributions agree at first
    const fs::path out = job.output_dir;
    std::istringstream metrics(read(out / "student" / "metrics.jsonl"));
    std::string first;
    std::getline(metrics, first);
    CHECK(nlohmann::json::parse(first)["terms"]["soft_kl"].get<double>() < 1e-6);
    // student_hf/ is a transformers directory (with the tokenizer) that computes what student.safetensors does
    REQUIRE(fs::exists(out / "student_hf" / "config.json"));
    CHECK(fs::exists(out / "student_hf" / "tokenizer.json"));
    CHECK(fs::exists(out / "student_hf" / "tokenizer_config.json"));
    teacher::Model<student::Transformer> hf({.weights = (out / "student_hf").string(), .max_batch = 1});
    teacher::Model<student::Transformer> saved({.weights = (out / "student.safetensors").string(), .max_batch = 1});
    CHECK(hf.tokenizer_id() == t.tokenizer_id());
    const std::vector<data::Message> prompt = {{"user", "What is 7 plus one?"}};
    const auto ids = hf.chat_template().encode_prompt(prompt);
    hf.forward(ids.data(), 1, int(ids.size()));
    saved.forward(ids.data(), 1, int(ids.size()));
    const auto a = hf.logits(), b = saved.logits();
    REQUIRE(a.numel() == b.numel());
    CHECK(std::equal(a.data(), a.data() + a.numel(), b.data()));
    // a student section that describes another architecture is refused by key
    j["student"] = {{"vocab_size", w.ids}, {"context_length", 64}, {"d_model", 32},
                    {"n_layers", 1},       {"n_heads", 2},         {"d_ff", 32}};
    CHECK_THROWS_WITH_AS(OnlineDistiller(parse_job(j), t, device::Cpu{}, {.quiet = true}),
                         doctest::Contains("student.d_model: is 32, but student_weights"), config_error);
}

TEST_CASE("Distiller: the job's student keys must be the checkpoint's; a rotary student may have fewer positions") {
    auto& w = hf_world();
    const nlohmann::json loss = {{"soft_kl", {{"weight", 1.0}}}, {"hard_ce", {{"weight", 1.0}}}};
    // a Llama-layout (rotary) checkpoint of 64 positions with the world's tokenizer
    student::TransformerConfig c{
        .vocab_size = w.ids, .context_length = 64, .d_model = 16, .n_layers = 1, .n_heads = 2, .d_ff = 32};
    c.norm = "rmsnorm";
    c.positions = "rope";
    c.mlp = "swiglu";
    c.qkv_bias = c.proj_bias = c.mlp_bias = false;
    student::Transformer<float, device::Cpu> llama(c, 1);
    llama.init(7);
    const fs::path rope = w.dir / "rope";
    io::hf::save(rope, llama);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(w.exact / f, rope / f);
    nlohmann::json j = w.job("rope-student", w.padded, 0, "", loss);
    j["student_weights"] = rope.string();
    teacher::Model<student::Transformer> t(teacher_config(parse_job(j)));
    auto activations_row = [&](const nlohmann::json& student) {
        j["student"] = student;
        OnlineDistiller d(parse_job(j), t, device::Cpu{}, {.quiet = true});
        const eval::MemoryPlan plan = d.memory_plan();
        for (const auto& part : plan.parts())
            if (part.name == "student activations") return part.detail;
        return std::string("(none)");
    };
    CHECK(activations_row({{"context_length", 32}}).find("batch 8 x 32") != std::string::npos);
    CHECK(activations_row(nlohmann::json::object()).find("batch 8 x 64") != std::string::npos);
    CHECK(activations_row({{"n_layers", 1}, {"d_model", 16}}).find("batch 8 x 64") != std::string::npos);  // equal keys
    CHECK_THROWS_WITH_AS(activations_row({{"context_length", 128}}),
                         doctest::Contains("student.context_length: is 128, but student_weights"), config_error);
    CHECK_THROWS_WITH_AS(activations_row({{"context_length", 128}}), doctest::Contains("fewer positions, not more"),
                         config_error);
    CHECK_THROWS_WITH_AS(activations_row({{"n_layers", 2}}), doctest::Contains("student.n_layers: is 2"), config_error);
    CHECK_THROWS_WITH_AS(activations_row({{"n_layer", 1}}), doctest::Contains("unknown key"), config_error);
    // learned positions (GPT-2) keep their count
    j["student_weights"] = w.exact.string();
    CHECK_THROWS_WITH_AS(activations_row({{"context_length", 32}}),
                         doctest::Contains("student.context_length: is 32, but student_weights"), config_error);
    // the teacher likewise: teacher.context_length builds a rotary teacher for fewer positions
    teacher::Model<student::Transformer> short_teacher(
        {.weights = rope.string(), .max_batch = 1, .context_length = 16});
    teacher::Model<student::Transformer> full_teacher({.weights = rope.string(), .max_batch = 1});
    CHECK(short_teacher.network().config().context_length == 16);
    const std::vector<std::int32_t> ids = {5, 9, 2, 7};
    short_teacher.forward(ids.data(), 1, 4);
    full_teacher.forward(ids.data(), 1, 4);
    const auto a = short_teacher.logits(), b = full_teacher.logits();
    REQUIRE(a.numel() == b.numel());
    for (std::int64_t i = 0; i < a.numel(); ++i) CHECK(a.data()[i] == doctest::Approx(b.data()[i]).epsilon(1e-6));
    CHECK_THROWS_WITH_AS(teacher::Model<student::Transformer>({.weights = rope.string(), .context_length = 65}),
                         doctest::Contains("teacher.context_length: is 65, but the checkpoint's model has only 64"),
                         config_error);
    CHECK_THROWS_WITH_AS(teacher::Model<student::Transformer>({.weights = w.exact.string(), .context_length = 16}),
                         doctest::Contains("learned positions"), config_error);
}

TEST_CASE("Distiller: LoRA on a Hugging Face student trains the adapters alone and exports merged and PEFT forms") {
    auto& w = hf_world();
    const nlohmann::json loss = {{"soft_kl", {{"weight", 1.0}}}, {"hard_ce", {{"weight", 1.0}}}};
    nlohmann::json j = w.job("lora", w.padded, 0, "", loss);
    j["student"] = nlohmann::json::object();
    j["student_weights"] = w.exact.string();
    j["lora"] = {{"rank", 4}, {"alpha", 8}, {"dropout", 0.05}, {"targets", {"qkv", "down"}}};
    const Job job = parse_job(j);
    CHECK(job.lora.rank == 4);
    teacher::Model<student::Transformer> t(teacher_config(job));
    OnlineDistiller d(job, t, device::Cpu{}, {.quiet = true});
    d.generate();
    CHECK(d.finetune()["student"]["steps"] == 4);
    const fs::path out = job.output_dir;
    // the checkpoints hold the adapters alone
    for (const auto& e : fs::directory_iterator(out / "student" / "checkpoints"))
        if (fs::exists(e.path() / "student.safetensors")) {
            io::safetensors_file ck(e.path() / "student.safetensors");
            CHECK(ck.tensors().size() == 4);
        }
    // the adapter in PEFT's format: GPT-2's fused c_attn and the MLP's c_proj
    const auto adapter_config = distill::testing::read_json(out / "student_adapter" / "adapter_config.json");
    CHECK(adapter_config["peft_type"] == "LORA");
    CHECK(adapter_config["r"] == 4);
    CHECK(adapter_config["lora_alpha"] == 8.0);
    CHECK(adapter_config["lora_dropout"] == 0.05);
    CHECK(adapter_config["fan_in_fan_out"] == true);
    CHECK(adapter_config["target_modules"] == nlohmann::json::array({"attn.c_attn", "mlp.c_proj"}));
    CHECK(adapter_config["base_model_name_or_path"] == w.exact.string());
    io::safetensors_file adapter(out / "student_adapter" / "adapter_model.safetensors");
    CHECK(adapter.tensors().size() == 4);
    // the base with the exported adapter computes what student.safetensors (merged) and student_hf/ do
    const io::hf::Directory init(w.exact);
    auto cfg = io::hf::transformer_config(init);
    const auto base_cfg = cfg;
    cfg.lora = job.lora;
    student::Transformer<float, device::Cpu> adapted(cfg, 1);
    io::hf::load(init, adapted);
    for (const auto& p : adapted.parameters()) {
        const auto v = distill::testing::read_tensor<float>(adapter, io::peft::tensor_name("gpt2", p.name));
        REQUIRE(std::int64_t(v.size()) == p.value.numel());
        std::copy(v.begin(), v.end(), p.value.data());
    }
    student::Transformer<float, device::Cpu> merged(base_cfg, 1), base(base_cfg, 1);
    io::load_weights(io::safetensors_file(out / "student.safetensors"), merged);
    io::hf::load(init, base);
    teacher::Model<student::Transformer> hf({.weights = (out / "student_hf").string(), .max_batch = 1});
    const std::vector<data::Message> prompt = {{"user", "What is 7 plus one?"}};
    const auto ids = hf.chat_template().encode_prompt(prompt);
    const int n = int(ids.size());
    adapted.forward(ids.data(), 1, n);
    merged.forward(ids.data(), 1, n);
    hf.forward(ids.data(), 1, n);
    distill::testing::check_close("merged", merged.logits().data(), adapted.logits().data(), adapted.logits().numel(),
                                  1e-4, 1e-4);
    CHECK(std::equal(merged.logits().data(), merged.logits().data() + merged.logits().numel(), hf.logits().data()));
    // the base is frozen: every weight but the adapted matrices is the checkpoint's, bit for bit
    bool moved = false;
    for (std::size_t i = 0; i < base.base_parameters().size(); ++i) {
        const auto& a = base.base_parameters()[i];
        const auto& b = merged.base_parameters()[i];
        const bool same = std::equal(a.value.data(), a.value.data() + a.value.numel(), b.value.data());
        const bool adapted_matrix = a.name.ends_with("attn.c_attn.weight") || a.name.ends_with("mlp.c_proj.weight");
        CAPTURE(a.name);
        if (adapted_matrix)
            moved = moved || !same;
        else
            CHECK(same);
    }
    CHECK(moved);
    // refusals name the field
    auto refusal = [&](const nlohmann::json& lora) -> std::string {
        nlohmann::json bad = j;
        bad["lora"] = lora;
        try {
            OnlineDistiller(parse_job(bad), t, device::Cpu{}, {.quiet = true});
        } catch (const config_error& e) {
            return e.what();
        }
        return "(no error)";
    };
    CHECK(refusal({{"rank", -2}, {"targets", {"qkv"}}}).starts_with("lora.rank: "));
    CHECK(refusal({{"rank", 4}, {"alpha", 0}, {"targets", {"qkv"}}}).starts_with("lora.alpha: "));
    CHECK(refusal({{"rank", 4}, {"dropout", 1}, {"targets", {"qkv"}}}).starts_with("lora.dropout: "));
    CHECK(refusal({{"rank", 4}, {"targets", {"wq"}}}).starts_with("lora.targets: unknown target \"wq\""));
    CHECK(refusal({{"rank", 4}, {"targets", {"head"}}}).starts_with("lora.targets: \"head\" needs an untied"));
    CHECK(refusal({{"rank", 4}, {"targets", {"gate"}}}).starts_with("lora.targets: \"gate\" needs the swiglu"));
    CHECK(refusal({{"rank", 4}, {"targets", {"q"}}}).starts_with("lora.targets: \"q\" has no PEFT module in a gpt2"));
    CHECK(refusal({{"rank", 4}, {"targets", {"qkv"}}, {"alhpa", 2}}).starts_with("lora.alhpa: unknown key"));
}

TEST_CASE("Distiller across tokenizers: logit-level losses refused, text distillation re-encodes the answers") {
    auto& w = hf_world();
    const nlohmann::json online_loss = {{"soft_kl", {{"weight", 1.0}}}, {"hard_ce", {{"weight", 1.0}}}};
    const nlohmann::json topk_loss = {{"topk_soft_kl", {{"weight", 1.0}}}, {"hard_ce", {{"weight", 1.0}}}};
    teacher::Model<student::Transformer> t(teacher_config(parse_job(w.job("x", w.padded, 263, "byte", online_loss))));
    auto refusal = [&](const nlohmann::json& j, auto type) -> std::string {
        try {
            typename decltype(type)::type d(parse_job(j), t, device::Cpu{}, {.quiet = true});
        } catch (const config_error& e) {
            return e.what();
        }
        return "(no error)";
    };
    const std::string want = "loss: the teacher's and the student's vocabularies differ (the teacher's tokenizer has " +
                             std::to_string(w.ids) + " tokens, the student's 263): logit-level losses";
    CHECK(refusal(w.job("x", w.padded, 263, "byte", online_loss), std::type_identity<OnlineDistiller>{})
              .starts_with(want));
    nlohmann::json topk = w.job("x", w.padded, 263, "byte", topk_loss);
    topk["generation"]["top_logprobs"] = 4;
    CHECK(refusal(topk, std::type_identity<OfflineDistiller>{}).starts_with(want));
    CHECK(refusal(w.job("x", w.padded, 263, "byte", online_loss), std::type_identity<OnlineDistiller>{})
              .find("use sequence-level distillation") != std::string::npos);
    // another published tokenizer: the first id whose token differs is named
    const fs::path llama3 = fs::path(DISTILL_TEST_DATA_DIR) / "tokenizers" / "llama3";
    CHECK(refusal(w.job("x", w.padded, 1024, llama3.string(), online_loss), std::type_identity<OnlineDistiller>{})
              .find("tokenizer has") != std::string::npos);

    // a student tokenizer GGUF export cannot hold refuses the job's export.gguf at construction; a
    // SentencePiece-style one is exported
    const nlohmann::json text_loss = {{"hard_ce", nlohmann::json::object()}};
    // (Metaspace with prepend_scheme "first": llama.cpp would put '▁' after every special token)
    nlohmann::json metaspace = w.job(
        "x", w.padded, 500, (fs::path(DISTILL_TEST_DATA_DIR) / "tokenizers" / "llama2_metaspace").string(), text_loss);
    metaspace["export"] = {{"gguf", {"f16"}}};
    const std::string refused = refusal(metaspace, std::type_identity<TextDistiller>{});
    CHECK(refused.starts_with("export.gguf: cannot be written for this student: "));
    CHECK(refused.find("prepend_scheme \"first\"") != std::string::npos);
    nlohmann::json spm =
        w.job("x", w.padded, 704, (fs::path(DISTILL_TEST_DATA_DIR) / "gguf" / "llama2").string(), text_loss);
    spm["export"] = {{"gguf", {"f16"}}};
    CHECK(refusal(spm, std::type_identity<TextDistiller>{}) == "(no error)");

    // sequence-level distillation into a byte-tokenizer student: the teacher's text, re-encoded
    const Job job = parse_job(w.job("text", w.padded, 263, "byte", {{"hard_ce", nlohmann::json::object()}}));
    TextDistiller d(job, t, device::Cpu{}, {.quiet = true});
    CHECK(d.alignment().match == data::vocab_match::different);
    CHECK(d.chat_template().tokenizer_id() == "byte-v1");
    d.generate();
    CHECK(d.finetune()["student"]["steps"] == 4);
    const auto losses = train_losses(job.output_dir);
    REQUIRE(losses.size() == 4);
    for (double l : losses) CHECK(std::isfinite(l));
    const auto report = d.evaluate();
    CHECK(report["models"]["student"]["failed"] == 0);
}
#endif

TEST_CASE("task metrics per task type, and agreement with the teacher") {
    const std::vector<std::string> refs = {"3+4=7. The answer is 7.", "The answer is 10."};
    auto m = eval::task_metrics("math", {"The answer is 7", "I think 11"}, refs, {"7", "10"});
    CHECK(m["exact_match"] == doctest::Approx(0.5));
    CHECK(m["teacher_agreement"] == doctest::Approx(0.5));
    auto n = eval::task_metrics("nli", {"Entailment", "neutral"}, {"entailment", "contradiction"});
    CHECK(n["accuracy"] == doctest::Approx(0.5));
    // classes entailment and contradiction: F1 1 and 0
    CHECK(n["macro_f1"] == doctest::Approx(0.5));
    CHECK(!n.contains("teacher_agreement"));
    auto q = eval::task_metrics("qa", {"The Paris", "in Rome"}, {"paris", "Rome"});
    CHECK(q["exact_match"] == doctest::Approx(0.5));
    CHECK(q["f1"] == doctest::Approx((1.0 + 2.0 / 3.0) / 2));
    auto s = eval::task_metrics("summarization", {"the cat sat on the mat"}, {"the cat sat on the mat"});
    CHECK(s.begin().key() == "rouge_l");  // the primary metric first
    CHECK(s["rouge_l"] == doctest::Approx(1.0));
    CHECK(s["bleu"] == doctest::Approx(100.0));
    auto c = eval::task_metrics("conversation", {"hello there friend"}, {"hello there"}, {"hello there friend"});
    CHECK(c.begin().key() == "bleu");
    CHECK(c["teacher_agreement"] == doctest::Approx(1.0));
    CHECK_THROWS_AS(eval::task_metrics("poetry", {}, {}), config_error);
    CHECK_THROWS_AS(eval::task_metrics("qa", {"a"}, {}), error);
}

TEST_CASE("cost: generate, finetune and serving per 1000 requests from the measurements and the prices") {
    nlohmann::ordered_json r = {{"task_type", "math"}, {"primary_metric", "exact_match"}, {"test_examples", 10}};
    r["timings"] = {{"generate_s", 3600.0}, {"finetune_s", 1800.0}};
    r["models"] = {{"teacher",
                    {{"responses_per_s", 1.0},
                     {"requests", 10},
                     {"prompt_tokens", 2000},
                     {"completion_tokens", 5000},
                     {"metrics", {{"exact_match", 0.8}}}}},
                   {"student",
                    {{"responses_per_s", 10.0},
                     {"requests", 10},
                     {"prompt_tokens", 2000},
                     {"completion_tokens", 4000},
                     {"metrics", {{"exact_match", 0.7}}}}}};
    eval::GeneratedTokens generated{.prompt = 1000000, .completion = 2000000, .answers = 100};

    // an in-process teacher: machine hours at each machine's price
    eval::CostConfig prices{.machine_per_hour = 2.0, .teacher_machine_per_hour = 10.0};
    auto c = eval::cost_section(r, generated, prices, false);
    CHECK(c["generate"]["cost"].get<double>() == doctest::Approx(10.0));  // 1 h of the teacher's machine
    CHECK(c["finetune"]["cost"].get<double>() == doctest::Approx(1.0));   // 0.5 h of the student's
    CHECK(c["distillation_cost"].get<double>() == doctest::Approx(11.0));
    CHECK(c["serving_per_1000_requests"]["teacher"]["cost"].get<double>() == doctest::Approx(10.0 * 1000 / 3600.0));
    CHECK(c["serving_per_1000_requests"]["student"]["cost"].get<double>() == doctest::Approx(2.0 * 100 / 3600.0));
    // 11 / ((25/9 - 1/18) / 1000) = 4040.8 requests
    CHECK(c["break_even_requests"] == 4041);
    r["cost"] = c;
    CHECK(eval::report_summary(r) == "−98% serving cost; keeps 88% of the teacher's exact_match");
    const std::string md = eval::render_markdown(r);
    CHECK(md.find("| finetune (student and baseline) | 0.500 h | 1 USD |") != std::string::npos);
    CHECK(md.find("pays for itself after 4041 requests") != std::string::npos);

    // an API teacher: its tokens at the token prices
    prices = {.currency = "EUR", .teacher_prompt_per_million = 0.27, .teacher_completion_per_million = 1.10};
    c = eval::cost_section(r, generated, prices, true);
    CHECK(c["generate"]["cost"].get<double>() == doctest::Approx(0.27 + 2.2));
    CHECK(c["finetune"]["cost"].get<double>() == 0.0);  // no machine price
    CHECK(c["serving_per_1000_requests"]["teacher"]["prompt_tokens"].get<double>() == doctest::Approx(200000));
    CHECK(c["serving_per_1000_requests"]["teacher"]["cost"].get<double>() == doctest::Approx(0.054 + 0.55));
    CHECK(c["serving_per_1000_requests"]["student"]["cost"].get<double>() == 0.0);
    CHECK(c["break_even_requests"].get<double>() == doctest::Approx(std::ceil(2.47 / (0.604 / 1000))));

    // no prices: quantities without money
    c = eval::cost_section(r, generated, {}, false);
    CHECK(c["priced"] == false);
    CHECK(c["generate"]["cost"].is_null());
    CHECK(c["serving_per_1000_requests"]["teacher"]["machine_hours"].get<double>() == doctest::Approx(1000 / 3600.0));
    CHECK(c["break_even_requests"].is_null());

    // the teacher's tokens are counted from the generate directory's files, torn lines skipped
    const TempDir tmp("cost-tokens");
    const fs::path dir = tmp.path;
    distill::testing::write_text(
        dir / "synthetic.jsonl",
        "{\"id\":\"a\",\"teacher\":{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}}\n"
        "{\"id\":\"b\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n{\"id\":");
    distill::testing::write_text(
        dir / "synthetic.rejected.jsonl",
        "{\"id\":\"c\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":9}}\n{\"id\":\"d\"}\n");
    distill::testing::write_text(dir / "synthetic.report.json", "{\"usage\":{\"prompt_tokens\":1000}}\n");
    const auto t = eval::count_generated_tokens(dir);
    CHECK(t.prompt == 9);
    CHECK(t.completion == 18);
    CHECK(t.answers == 4);
    CHECK(t.lines_without_usage == 1);

    CHECK_THROWS_WITH_AS(parse_job({{"teacher", {{"kind", "model"}}},
                                    {"training_data", "x.jsonl"},
                                    {"loss", {{"hard_ce", nlohmann::json::object()}}},
                                    {"cost", {{"machine_per_hour", -1}}}}),
                         doctest::Contains("cost.machine_per_hour"), config_error);
}

TEST_CASE("report: the table and the summary are computed from report.json's figures") {
    nlohmann::ordered_json r = {{"task_type", "math"}, {"primary_metric", "exact_match"}, {"test_examples", 10}};
    auto model = [](double params, double latency, double rss, double em) {
        return nlohmann::ordered_json{{"parameters", params},
                                      {"checkpoint_bytes", params * 4},
                                      {"peak_rss_bytes", rss},
                                      {"latency_ms_p50", latency},
                                      {"latency_ms_p95", latency},
                                      {"responses_per_s", 1000 / latency},
                                      {"tokens_per_s", 20000 / latency},
                                      {"metrics", {{"exact_match", em}}}};
    };
    r["models"] = {{"teacher", model(1000000, 10, 100e6, 0.8)},
                   {"baseline", model(100000, 2, 10e6, 0.2)},
                   {"student", model(100000, 2, 15e6, 0.72)}};
    CHECK(eval::report_summary(r) ==
          "−90% parameters, −80% latency, −85% memory; keeps 90% of the teacher's exact_match (baseline: 25%)");
    const std::string md = eval::render_markdown(r);
    CHECK(md.find("| exact_match | 0.8000 | 0.2000 | 0.7200 | keeps 90% |") != std::string::npos);
    CHECK(md.find("| parameters | 1.00M | 100.00k | 100.00k | −90% |") != std::string::npos);
    CHECK(md.find("| latency p50 (ms) | 10.00 | 2.00 | 2.00 | −80% |") != std::string::npos);
    CHECK(md.find("## Load test") == std::string::npos);

    // apps/loadtest's results for teacher and student (--report --name): their table and the ratio
    auto level = [](int c, double p95, int errors) {
        nlohmann::ordered_json l = {{"concurrency", c},
                                    {"requests_per_s", 10.0 * c},
                                    {"tokens_per_s", 300 * c},
                                    {"ttft_ms", {{"p50", 5.0}}},
                                    {"latency_ms", {{"p50", p95 / 2}, {"p95", p95}}}};
        l["errors"] = nlohmann::ordered_json::object();
        if (errors) l["errors"]["503"] = errors;
        return l;
    };
    r["loadtest"]["teacher"] = {{"p95_target_ms", 100.0},
                                {"sustained_concurrency", 2},
                                {"levels", {level(1, 40, 0), level(2, 90, 0), level(4, 180, 0)}}};
    r["loadtest"]["student"] = {{"p95_target_ms", 100.0},
                                {"sustained_concurrency", 8},
                                {"levels", {level(4, 30, 0), level(8, 60, 0), level(16, 95, 2)}}};
    const std::string with_load = eval::render_markdown(r);
    CHECK(with_load.find("| teacher | 4 | 40.00 | 1200 | 5.0 | 90.0 | 180.0 | 0 |") != std::string::npos);
    CHECK(with_load.find("| student | 16 | 160.00 | 4800 | 5.0 | 47.5 | 95.0 | 2 |") != std::string::npos);
    CHECK(with_load.find("- student: 8 concurrent requests with p95 latency under 100 ms and no errors") !=
          std::string::npos);
    CHECK(with_load.find("The student sustains 4.0x the teacher's concurrent requests under the same target.") !=
          std::string::npos);
    const std::string svg = eval::models_chart(r);
    CHECK(svg.find("baseline") != std::string::npos);
    CHECK(svg.find("</svg>") != std::string::npos);
}
