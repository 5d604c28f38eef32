// The evaluation metrics over a corpus of responses (default 10 000): corpus BLEU (sacreBLEU's 13a
// tokenizer and statistics) and mean ROUGE-L F1 (rouge-score's tokenizer), against the packages
// themselves (benchmarks/reference/bench_metrics.py: sacrebleu.corpus_bleu and
// rouge_scorer.RougeScorer(["rougeL"])) on the same texts in the same invocation; the scores must
// agree to 0.01 before the times count. Single-threaded on both sides.
//
//   bench_metrics [--responses 10000] [--reps 3] [--no-reference]

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "common.hpp"
#include "distill/detail/rng.hpp"
#include "distill/eval/metrics.hpp"

int main(int argc, char** argv) {
    using namespace distill;
    int n = 10000, reps = 3;
    bool reference = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--responses" && i + 1 < argc)
            n = std::stoi(argv[++i]);
        else if (a == "--reps" && i + 1 < argc)
            reps = std::stoi(argv[++i]);
        else if (a == "--no-reference")
            reference = false;
        else {
            std::fprintf(stderr, "usage: bench_metrics [--responses N] [--reps R] [--no-reference]\n");
            return 2;
        }
    }
    // Responses of 10-60 words with punctuation and numbers; each hypothesis a noisy copy of its
    // reference (words dropped, replaced, inserted), as a student's answers are of the teacher's.
    const std::vector<std::string> words = {
        "the",  "a",    "cat",    "dog",   "sat",  "on",   "mat",   "house", "quickly", "slowly",  "answer",
        "is",   "of",   "and",    "to",    "in",   "we",   "they",  "model", "teacher", "student", "learns",
        "from", "data", "3.5",    "1,000", "-2",   "e.g.", "don't", ",",     ".",       "!",       "?",
        "(see", "it)",  "tokens", "each",  "step", "loss", "falls", "rises", "x=3",     "y",       "42"};
    Rng rng(7);
    std::vector<std::string> refs(static_cast<std::size_t>(n)), hyps(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
        std::string r, h;
        const int len = 10 + int(rng.below(51));
        for (int w = 0; w < len; ++w) {
            const std::string& word = words[rng.below(words.size())];
            r += (w ? " " : "") + word;
            const auto u = rng.below(100);
            if (u < 12) continue;                                                     // dropped
            const std::string& out = u < 22 ? words[rng.below(words.size())] : word;  // replaced
            h += (h.empty() ? "" : " ") + out;
            if (u >= 95) h += " " + words[rng.below(words.size())];  // inserted
        }
        refs[std::size_t(i)] = r;
        hyps[std::size_t(i)] = h;
    }

    auto time = [&](auto&& f) {
        f();
        return 1e3 * bench::median_seconds(reps, f);
    };
    double bleu = 0, rouge = 0;
    const double bleu_ms = time([&] { bleu = eval::corpus_bleu(hyps, refs).score; });
    const double rouge_ms = time([&] { rouge = eval::mean_rouge_l_f1(hyps, refs); });
    std::printf("workload: corpus BLEU and mean ROUGE-L F1 over %d responses (mean %.0f characters), 1 thread\n", n,
                [&] {
                    double c = 0;
                    for (const auto& r : refs) c += double(r.size());
                    return c / n;
                }());
    std::printf("distill: BLEU %.4f in %.1f ms, ROUGE-L F1 %.6f in %.1f ms (median of %d)\n", bleu, bleu_ms, rouge,
                rouge_ms, reps);

    bench::Result rb, rr;
    rb.workload = "BLEU (sacreBLEU 13a), " + std::to_string(n) + " responses";
    rr.workload = "ROUGE-L F1 (rouge-score), " + std::to_string(n) + " responses";
    rb.distill = bleu_ms;
    rr.distill = rouge_ms;
    rb.unit = rr.unit = "ms";
    rb.higher_is_better = rr.higher_is_better = false;
    rb.threads = rr.threads = 1;
    rb.bound = rr.bound = "-";
    if (reference) {
        // the texts go to the reference through a file: the same bytes on both sides
        char path[] = "/tmp/distill_bench_metrics_XXXXXX";
        const int fd = mkstemp(path);
        if (fd < 0) {
            std::perror("mkstemp");
            return 1;
        }
        close(fd);
        {
            std::ofstream out(path);
            for (int i = 0; i < n; ++i) {
                nlohmann::json pair;
                pair["h"] = hyps[std::size_t(i)];
                pair["r"] = refs[std::size_t(i)];
                out << pair.dump() << "\n";
            }
        }
        const char* env = std::getenv("DISTILL_METRICS_PYTHON");
        const std::string py = env && *env ? env : "python3";
        const auto ref =
            bench::run_reference("bench_metrics.py --input " + std::string(path) + " --reps " + std::to_string(reps),
                                 "bleu_ms", py, "sacrebleu, rouge_score");
        std::remove(path);
        if (ref.value > 0) {
            const double rbleu = ref.line["bleu"].get<double>(), rrouge = ref.line["rouge_l_f1"].get<double>();
            if (std::abs(rbleu - bleu) > 0.01 || std::abs(rrouge - rouge) > 1e-4) {
                std::fprintf(stderr, "validation failed: BLEU %.4f vs sacrebleu %.4f, ROUGE-L %.6f vs %.6f\n", bleu,
                             rbleu, rouge, rrouge);
                return 1;
            }
            std::printf("validated: the scores agree with sacrebleu %s and rouge-score\n",
                        ref.line.value("sacrebleu", std::string("?")).c_str());
            rb.pytorch = ref.value;
            rr.pytorch = ref.line["rouge_ms"].get<double>();
            rb.torch = "sacrebleu " + ref.line.value("sacrebleu", std::string("?"));
            rr.torch = "rouge-score";
            std::printf("ratio distill / Python: BLEU %.1fx, ROUGE-L %.1fx\n", rb.pytorch / bleu_ms,
                        rr.pytorch / rouge_ms);
        }
    }
    bench::emit(rb);
    bench::emit(rr);
    return 0;
}
