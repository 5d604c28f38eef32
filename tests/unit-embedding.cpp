// The embedding task through the Distiller (pipeline/embedding.hpp): a small BERT teacher directory
// (random weights, the bert_uncased fixture tokenizer) distilled into a 1-layer student initialized from
// one of its layers. The student gets closer to the teacher than it started; the report's metrics
// equal an independent computation through the exported Hugging Face directory; frozen parameters stay
// as they were; a second run is skipped; bad jobs name their key.

#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <distill/distill.hpp>

#include "teacher_fixtures.hpp"

using namespace distill;
using distill::testing::TempDir;
using distill::testing::write_text;

#ifndef DISTILL_TEST_DATA_DIR
#define DISTILL_TEST_DATA_DIR "tests/reference/fixtures"
#endif

namespace {

using EmbeddingLoss = loss::Sum<loss::CosineEmbedding, loss::EmbeddingMSE, loss::AttentionKL>;
using EmbeddingDistiller = Distiller<teacher::EncoderModel<>, student::Encoder, EmbeddingLoss, optim::AdamW>;

const std::filesystem::path tokenizer_dir =
    std::filesystem::path(DISTILL_TEST_DATA_DIR) / "tokenizers" / "bert_uncased";

// A 2-layer BERT directory over the fixture's 912-id WordPiece vocabulary, random weights (seed 7).
void write_teacher(const std::filesystem::path& dir) {
    student::EncoderConfig c;
    c.vocab_size = 912;
    c.context_length = 40;
    c.d_model = 32;
    c.n_layers = 2;
    c.n_heads = 4;
    c.d_ff = 64;
    student::Encoder<float, device::Cpu> m(c, 1, 1);
    m.init(7);
    // BERT's N(0, 0.02) leaves the embeddings nearly unchanged through the blocks; weights 10x larger
    // make each layer matter, so a student of one of them starts measurably far from the teacher
    for (const auto& p : m.parameters())
        if (p.name.starts_with("encoder.layer.") && p.kind == parameter_kind::weight)
            for (std::int64_t i = 0; i < p.value.numel(); ++i) p.value.data()[i] *= 10.0f;
    io::hf::save(dir, m);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
        std::filesystem::copy_file(tokenizer_dir / f, dir / f, std::filesystem::copy_options::overwrite_existing);
}

// `n` short sentences of the fixture vocabulary's common words, varied by `salt`.
std::string sentences_jsonl(int n, int salt) {
    static const char* words[] = {"the", "a",   "is", "of",  "and",  "to", "in",  "it",   "that", "was",
                                  "he",  "for", "on", "are", "with", "as", "his", "they", "be",   "at"};
    std::string s;
    for (int i = 0; i < n; ++i) {
        std::string text;
        const int len = 3 + (i * 7 + salt) % 9;
        for (int w = 0; w < len; ++w) text += std::string(w ? " " : "") + words[(i * 13 + w * 5 + salt * 3) % 20];
        s += nlohmann::json{{"text", text + "."}}.dump() + "\n";
    }
    return s;
}

nlohmann::json base_job(const TempDir& dir) {
    return {{"task_type", "embedding"},
            {"teacher", {{"kind", "model"}, {"weights", (dir / "teacher").string()}, {"max_batch", 8}}},
            {"student_weights", (dir / "teacher").string()},
            {"student_layers", {1}},
            {"frozen_parameters", {"embeddings.word_embeddings.weight"}},
            {"training_data", (dir / "train.jsonl").string()},
            {"test_data", (dir / "test.jsonl").string()},
            {"hyperparameters",
             {{"learning_rate", 3e-3},
              {"batch_size", 8},
              {"max_steps", 40},
              {"warmup", 4},
              {"seed", 1},
              {"checkpoint_every", 20}}},
            {"loss", {{"cosine_embedding", {{"weight", 1.0}}}, {"attention_kl", {{"weight", 0.5}}}}},
            {"evaluation", {{"batch_size", 8}, {"latency_samples", 3}, {"recall_at", 3}}},
            {"output_dir", (dir / "out").string()},
            {"threads", 1}};
}

void write_data(const TempDir& dir) {
    std::filesystem::create_directories(dir / "teacher");
    write_teacher(dir / "teacher");
    write_text(dir / "train.jsonl", sentences_jsonl(64, 1));
    write_text(dir / "test.jsonl", sentences_jsonl(12, 5));
}

}  // namespace

TEST_CASE("embedding task: a BERT teacher distilled into a 1-layer encoder through the Distiller") {
    TempDir dir("embedding-task");
    write_data(dir);
    const Job job = parse_job(base_job(dir));
    const device::Cpu cpu(1);
    teacher::EncoderModel<> teacher({.weights = (dir / "teacher").string(), .max_batch = 8}, cpu);
    EmbeddingDistiller d(job, teacher, cpu, {.quiet = true});
    const auto report = d.run();

    REQUIRE(report["task_type"] == "embedding");
    const auto& models = report["models"];
    const double student = models["student"]["metrics"]["mean_cosine"];
    const double baseline = models["baseline"]["metrics"]["mean_cosine"];
    CHECK(models["teacher"]["metrics"]["mean_cosine"].get<double>() == doctest::Approx(1.0).epsilon(1e-6));
    CHECK(student > baseline + 0.3);  // distillation moved the student towards the teacher (0.35 → 0.97)
    CHECK(student <= 1.0);
    CHECK(models["student"]["size"]["layers"] == 1);
    CHECK(models["teacher"]["size"]["layers"] == 2);
    CHECK(models["student"]["speed"]["latency_p50_ms"].get<double>() > 0);
    CHECK(report["recall_at"] == 3);
    for (const char* f : {"student.safetensors", "report.json", "report.md", "student_hf/config.json",
                          "student_hf/model.safetensors", "student_hf/tokenizer.json", "student/metrics.jsonl"})
        CHECK_MESSAGE(std::filesystem::exists(d.output_dir() / f), f);

    // the report's figures, recomputed through the exported Hugging Face directory: the student_hf
    // directory loads as a teacher of its own, and its embeddings agree with the teacher's as reported
    teacher::EncoderModel<> exported({.weights = (d.output_dir() / "student_hf").string(), .max_batch = 8}, cpu);
    const auto test = data::read_examples(dir / "test.jsonl");
    const auto rows = detail::sentence_rows(teacher, test, teacher.max_length());
    const auto a = eval::agreement(detail::embed_rows(exported.network(), rows, 4),
                                   detail::embed_rows(teacher.network(), rows, 4), 3);
    CHECK(a.mean_cosine == doctest::Approx(student).epsilon(1e-5));
    CHECK(a.recall_at_k == doctest::Approx(models["student"]["metrics"]["recall_at_3"].get<double>()));

    // the frozen word embeddings are the teacher's, bit for bit; layer 0 started from the teacher's
    // layer 1 and moved
    io::safetensors_file trained(d.output_dir() / "student.safetensors");
    io::safetensors_file original(dir / "teacher" / "model.safetensors");
    auto tensor = [](const io::safetensors_file& f, const std::string& name) {
        std::vector<float> v(std::size_t(f.at(name).numel()));
        f.read(f.at(name), std::span<float>(v));
        return v;
    };
    CHECK(tensor(trained, "embeddings.word_embeddings.weight") ==
          tensor(original, "embeddings.word_embeddings.weight"));
    CHECK(tensor(trained, "encoder.layer.0.attention.self.query.weight") !=
          tensor(original, "encoder.layer.1.attention.self.query.weight"));

    // `distill status` reads the run back: no generate stage, no baseline run, the report's metric
    const auto status = run_status(d.output_dir());
    CHECK(status["task_type"] == "embedding");
    CHECK(status["generate"]["done"] == true);
    CHECK(status["student"]["done"] == true);
    CHECK(status["evaluate"]["student"].get<double>() == doctest::Approx(student));

    // a second run finds every stage complete and returns the same report
    EmbeddingDistiller again(job, teacher, cpu, {.quiet = true});
    CHECK(again.run() == report);
}

TEST_CASE("embedding task: bad jobs name the key") {
    TempDir dir("embedding-bad");
    write_data(dir);
    const device::Cpu cpu(1);
    teacher::EncoderModel<> teacher({.weights = (dir / "teacher").string(), .max_batch = 8}, cpu);
    auto refused = [&](const std::function<void(nlohmann::json&)>& edit) -> std::string {
        nlohmann::json j = base_job(dir);
        edit(j);
        try {
            EmbeddingDistiller d(parse_job(j), teacher, cpu, {.quiet = true});
            d.finetune();
        } catch (const distill::error& e) {
            return e.what();
        }
        return "(accepted)";
    };
    CHECK(refused([](auto& j) { j["task_type"] = "qa"; }).find("task_type") != std::string::npos);
    CHECK(refused([](auto& j) { j["student_layers"] = {0, 2}; }).find("student_layers[1]") != std::string::npos);
    CHECK(refused([](auto& j) { j["frozen_parameters"] = {"encoder.layer.9."}; }).find("frozen_parameters[0]") !=
          std::string::npos);
    CHECK(refused([](auto& j) { j["hyperparameters"]["batch_size"] = 16; }).find("teacher.max_batch") !=
          std::string::npos);
    CHECK(refused([](auto& j) { j["tokenizer"] = "byte"; }).find("tokenizer") != std::string::npos);
    CHECK(refused([](auto& j) {
              j["loss"] = {{"cosine_embedding", {{"weight", 1.0}}}, {"nope", {}}};
          }).find("loss") != std::string::npos);

    // {"text": ...} lines are read as sentences; a line without a known field names the formats
    write_text(dir / "bad.jsonl", "{\"text\": \"one sentence.\"}\n{\"sentence\": \"x\"}\n");
    try {
        (void)data::read_examples(dir / "bad.jsonl");
        FAIL("a line without text was accepted");
    } catch (const format_error& e) {
        CHECK(std::string(e.what()).find("bad.jsonl:2") != std::string::npos);
        CHECK(std::string(e.what()).find("\"text\"") != std::string::npos);
    }
}
