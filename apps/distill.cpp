// `distill`: the command-line front end of the Distiller, installed with the library. It reads a job
// file and runs the generate → finetune → evaluate pipeline with one of a fixed set of Distiller types
// chosen from the job (teacher kind × loss terms). Any other composition is a few lines of C++: see
// docs/getting-started.md and examples/custom_distiller.cpp.
//
// Exit codes: 0 success, 1 runtime failure, 2 bad job or usage; failures print one line on stderr.

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <distill/distill.hpp>

namespace {

using namespace distill;

constexpr const char* usage_text =
    "NAME\n"
    "    distill - distill a teacher model into a small student, from a job file\n"
    "\n"
    "SYNOPSIS\n"
    "    distill run|generate|finetune|evaluate JOB.json [--quiet] [--threads N] [--precision fp32|bf16]\n"
    "    distill finetune JOB.json --stop-at STEP ...\n"
    "    distill export JOB.json [--gguf TYPES]\n"
    "    distill sweep JOB.json [--quiet] [--threads N] [--precision fp32|bf16]\n"
    "    distill status OUTPUT_DIR [--json]\n"
    "    distill inspect DATA.jsonl [--test TEST.jsonl] [--out DIR] [--json] [--tokenizer PATH]\n"
    "                   [--near-threshold J]\n"
    "    distill --help | --version\n"
    "\n"
    "COMMANDS\n"
    "    run        generate, finetune and evaluate; each stage resumes after a crash and is skipped when\n"
    "               its output is complete and matches the job\n"
    "    generate   the teacher answers the training and validation prompts\n"
    "               (OUTPUT_DIR/generate/synthetic.jsonl)\n"
    "    finetune   train the distilled student and the baseline (OUTPUT_DIR/student.safetensors,\n"
    "               OUTPUT_DIR/baseline.safetensors)\n"
    "    evaluate   measure teacher, baseline and student on the test set; write OUTPUT_DIR/report.json,\n"
    "               report.md and the SVG charts\n"
    "    export     write the trained student as GGUF files for llama.cpp, one per tensor type of the\n"
    "               job's export.gguf or --gguf (OUTPUT_DIR/gguf/student-<type>.gguf; docs/deployment.md)\n"
    "    sweep      tune the settings the job's \"sweep\" object names (learning rate, temperature, loss\n"
    "               weights, batch size, steps): a grid or random search with successive halving on the\n"
    "               validation loss, the teacher's answers generated once for every trial; resumes after a\n"
    "               crash; writes OUTPUT_DIR/sweep.md, sweep.json, sweep.svg and best_job.json\n"
    "               (docs/job-format.md, \"sweep\")\n"
    "    status     which stages of a run are done, training progress, the last metrics\n"
    "    inspect    what a data file holds before a teacher answers it: counts, malformed lines, lengths,\n"
    "               diversity, duplicate and near-duplicate prompts, labels, overlap with --test; writes\n"
    "               inspect.json, inspect.md and length histograms (SVG) to --out (default: DATA with its\n"
    "               extension replaced by .inspect) and prints a summary (docs/data.md)\n"
    "\n"
    "OPTIONS\n"
    "    -q, --quiet          no progress output (errors still go to stderr)\n"
    "    --threads N          CPU threads, 1..4096 (default: the job's \"threads\", else DISTILL_NUM_THREADS,\n"
    "                         else every core)\n"
    "    --precision P        fp32 or bf16: the arithmetic of the matrix products (default: the job's\n"
    "                         \"precision\", else fp32). bf16 needs oneDNN and a CPU with its bf16 matmul\n"
    "                         (AVX-512, AVX512-BF16 or AMX); elsewhere it is refused with the reason\n"
    "    --stop-at STEP       (finetune) pause the student's training after STEP, unfinished: no weights\n"
    "                         and no baseline yet; finetune again continues it, as if never paused (the\n"
    "                         sweep's rungs)\n"
    "    --gguf TYPES         (export) comma-separated tensor types instead of the job's export.gguf:\n"
    "                         f32, f16, bf16, q8_0, q4_0, q4_k\n"
    "    --json               (status, inspect) print the status or the inspection as JSON\n"
    "    --test FILE          (inspect) a test file: training prompts equal or near to its prompts\n"
    "    --out DIR            (inspect) where the report files go\n"
    "    --tokenizer PATH     (inspect) count tokens with a Hugging Face tokenizer.json (or a directory\n"
    "                         holding one) instead of the byte tokenizer; needs a build with PCRE2\n"
    "    --near-threshold J   (inspect) near duplicate: Jaccard of character 5-grams >= J, in (0, 1]\n"
    "                         (default 0.8)\n"
    "    -h, --help           this text\n"
    "    --version            the version and the optional parts this build has\n"
    "\n"
    "JOB\n"
    "    A JSON object: teacher, student, training/validation/test data, task type, generation,\n"
    "    hyperparameters, loss terms with weights, baseline, evaluation, export, cost (prices for the report's\n"
    "    cost table), output_dir, threads, precision.\n"
    "    Every key with its default: docs/job-format.md. Teachers of kind \"model\" feed every loss term;\n"
    "    \"openai\" and \"cache\" teachers feed \"hard_ce\" and, with top-k log-probabilities, \"topk_soft_kl\".\n"
    "    task_type \"embedding\": a BERT teacher directory (kind \"model\") into a student::Encoder, with\n"
    "    \"cosine_embedding\", \"embedding_mse\", \"attention_kl\" and \"hidden_mse\" (docs/minilm.md).\n"
    "\n"
    "ENVIRONMENT\n"
    "    DISTILL_NUM_THREADS  default thread count\n"
    "    the variable named by teacher.api_key_env (openai teachers) holds the API key; it is never\n"
    "    written to a file or a log\n"
    "\n"
    "MPI\n"
    "    Under mpirun -np N (or srun) a distill built with MPI runs data-parallel: the ranks share the\n"
    "    prompts of generate and evaluate (rank 0 merges, measures latency and writes the run's files)\n"
    "    and each step's micro-batches (hyperparameters.grad_accum must be a multiple of N); the job\n"
    "    key \"zero\": 1 shards the optimizer state over the ranks (ZeRO-1). See docs/scaling.md.\n"
    "\n"
    "EXIT STATUS\n"
    "    0 success, 1 runtime failure (I/O, a teacher that fails, an interrupted stage; for inspect,\n"
    "    malformed lines in a data file, after the report is written), 2 bad job or usage. A failure\n"
    "    prints one line on stderr naming the file, line or key and what was expected.\n";

/// A bad job or bad usage: exit code 2.
struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

using OnlineLoss = loss::Sum<loss::SoftKL, loss::ReverseKL, loss::JSD, loss::HardCE, loss::HiddenMSE, loss::AttentionKL,
                             loss::AttentionRelation>;
using TopKLoss = loss::Sum<loss::TopKSoftKL, loss::HardCE>;
using TextLoss = loss::Sum<loss::HardCE>;
using ModelTeacher = teacher::Model<student::Transformer>;
// Several teachers (the job's `teachers`): their mixed logits only, no hidden states or attention maps.
using EnsembleOnlineLoss = loss::Sum<loss::SoftKL, loss::ReverseKL, loss::JSD, loss::HardCE>;
using ModelEnsemble = teacher::Ensemble<ModelTeacher>;
#if defined(DISTILL_WITH_TEXT)
// The embedding task: a student::Encoder learns a teacher::EncoderModel's sentence embeddings.
using EmbeddingLoss = loss::Sum<loss::CosineEmbedding, loss::EmbeddingMSE, loss::AttentionKL, loss::HiddenMSE>;
#endif

/// What a loss term the command knows reads, from the term's own `needs`.
struct TermNeeds {
    std::string_view name;
    bool online;       ///< in-process signals: logits, hidden states, attention maps or q|k|v
    bool activations;  ///< hidden states, attention maps or q|k|v (the teacher must keep them)
    bool topk;         ///< cached top-k log-probabilities
};

template <class... Terms>
std::vector<TermNeeds> needs_of(std::type_identity<loss::Sum<Terms...>>) {
    return {TermNeeds{Terms::name, detail::needs_online<Terms>, loss::needs_activations<Terms>,
                      loss::term_needs<Terms, signal::topk_logprobs_t>}...};
}

// Every term a job may name (the union of the loss types below), and what each needs.
const std::vector<TermNeeds>& known_terms() {
    static const std::vector<TermNeeds> terms = [] {
        auto all = needs_of(std::type_identity<OnlineLoss>{});
        for (const auto& t : needs_of(std::type_identity<TopKLoss>{}))
            if (t.topk) all.push_back(t);
        return all;
    }();
    return terms;
}

const TermNeeds* find_term(std::string_view name) {
    for (const auto& t : known_terms())
        if (t.name == name) return &t;
    return nullptr;
}

template <class Teacher, class Loss, template <class, class> class Student = student::Transformer>
using CliDistiller = Distiller<Teacher, Student, Loss, optim::AdamW, device::Cpu>;

// The ranks of the run: this process alone, or those of mpirun when it started this one.
parallel::Communicator* ranks = &parallel::single();

struct Options {
    std::string command, target, precision, gguf;
    bool quiet = false, json = false;
    int threads = 0;
    std::string test, out, tokenizer;  // inspect
    double near_threshold = 0.8;
    bool inspect_options = false;  // one of the four above was given
    std::int64_t stop_at = 0;      // sweep trials: pause the student's training after this step
};

template <class Config>
Config read_config(const nlohmann::json& j, const std::string& path) {
    Config c;
    io::from_json(j, c, path);
    c.validate(path);
    return c;
}

// Runs the chosen stage on a constructed distiller. Errors here are runtime failures (exit 1).
template <class D>
int run_stage(D& d, const Options& o) {
    if (o.command == "generate") {
        d.generate();
        return 0;
    }
    if (o.command == "finetune") {
        d.finetune();
        return 0;
    }
    if (o.command == "export") {
        for (const auto& file : d.export_gguf()) std::printf("%s\n", file.string().c_str());
        return 0;
    }
    nlohmann::ordered_json report = o.command == "evaluate" ? d.evaluate() : d.run();
    if (!ranks->root()) return 0;  // rank 0 prints
    if (report.value("task_type", "") == "embedding") {
        std::printf("\n%s\n", report.value("summary", "").c_str());
        std::printf("report: %s\n", (d.output_dir() / "report.md").string().c_str());
    } else if (report.contains("models")) {
        std::printf("\n%s\nreport: %s\n", eval::render_markdown(report).c_str(),
                    (d.output_dir() / "report.md").string().c_str());
    }
    return 0;
}

// Builds the distiller (errors: bad job, exit 2), then runs the stage (errors: exit 1).
template <class Teacher, class Loss, template <class, class> class Student = student::Transformer, class... TeacherArgs>
int with_distiller(const Job& job, const Options& o, const device::Cpu& cpu, TeacherArgs&&... args) {
    std::optional<Teacher> teacher;
    std::optional<CliDistiller<Teacher, Loss, Student>> d;
    try {
        teacher.emplace(std::forward<TeacherArgs>(args)...);
    } catch (const distill::error& e) {
        throw usage_error(std::string("teacher: ") + e.what());
    }
    try {
        d.emplace(job, *teacher, cpu, DistillerOptions{o.quiet, stderr, ranks, o.stop_at});
    } catch (const distill::error& e) {
        throw usage_error(e.what());
    }
    return run_stage(*d, o);
}

// A job with several teachers of kind "model": each loaded (errors name teachers[i]), handed to the
// Distiller as a teacher::Ensemble with the job's names, weights and route.
template <class Loss>
int with_ensemble(const Job& job, const Options& o, const device::Cpu& cpu, bool activations) {
    std::vector<std::unique_ptr<ModelTeacher>> owned;
    std::vector<ModelEnsemble::Member> members;
    std::vector<std::string> names;
    for (std::size_t i = 0; i < job.teachers.size(); ++i) {
        const std::string at = "teachers[" + std::to_string(i) + "]";
        auto c = read_config<teacher::ModelConfig>(job.teacher_config(i), at);
        if (!job.teachers[i].contains("keep_activations")) c.keep_activations = activations;
        try {
            owned.push_back(std::make_unique<ModelTeacher>(c, cpu));
        } catch (const distill::error& e) {
            throw usage_error(at + ": " + e.what());
        }
        members.push_back({job.teacher_name(i), job.teacher_weight(i), owned.back().get()});
        names.push_back(job.teacher_name(i));
    }
    return with_distiller<ModelEnsemble, Loss>(job, o, cpu, std::move(members), teacher::parse_route(job.route, names));
}

// A job with teachers of different kinds (or several that do not run in process): each built from its
// teachers[i] object (errors name it) and seen through its answers (teacher::Any), for text-level
// distillation.
int with_any_ensemble(const Job& job, const Options& o, const device::Cpu& cpu) {
    std::vector<std::unique_ptr<teacher::Any>> owned;
    std::vector<teacher::Ensemble<teacher::Any>::Member> members;
    std::vector<std::string> names;
    for (std::size_t i = 0; i < job.teachers.size(); ++i) {
        const std::string at = "teachers[" + std::to_string(i) + "]";
        const std::string kind = job.teachers[i].value("kind", "");
        const nlohmann::json c = job.teacher_config(i);
        try {
            if (kind == "model") {
                auto mc = read_config<teacher::ModelConfig>(c, at);
                if (!c.contains("keep_activations")) mc.keep_activations = false;
                owned.push_back(std::make_unique<teacher::Any>(std::make_unique<ModelTeacher>(mc, cpu)));
            } else if (kind == "cache") {
                const auto cc = read_config<teacher::CacheConfig>(c, at);
                owned.push_back(std::make_unique<teacher::Any>(std::make_unique<teacher::Cache<false>>(cc)));
            } else if (kind == "openai") {
#if defined(DISTILL_WITH_HTTP)
                const auto oc = read_config<teacher::OpenAIConfig>(c, at);
                owned.push_back(std::make_unique<teacher::Any>(std::make_unique<teacher::OpenAI<>>(oc)));
#else
                throw usage_error(at + ".kind: \"openai\" teachers need HTTP; this distill was built without it");
#endif
            } else {
                throw usage_error(at + ".kind: \"" + kind +
                                  "\" teachers are built in code (teacher::Any, teacher::Ensemble; "
                                  "examples/multi_teacher.cpp); the distill command runs \"model\", \"openai\" "
                                  "and \"cache\" teachers");
            }
        } catch (const usage_error&) {
            throw;
        } catch (const distill::error& e) {
            throw usage_error(at + ": " + e.what());
        }
        members.push_back({job.teacher_name(i), job.teacher_weight(i), owned.back().get()});
        names.push_back(job.teacher_name(i));
    }
    return with_distiller<teacher::Ensemble<teacher::Any>, TextLoss>(job, o, cpu, std::move(members),
                                                                     teacher::parse_route(job.route, names));
}

device::Cpu make_device(const Job& job, const Options& o) {
    const int threads = o.threads > 0 ? o.threads : job.threads > 0 ? job.threads : device::Cpu().threads();
    if (job.precision == "bf16" && !device::Cpu::bf16_supported())
        throw usage_error("precision: \"bf16\" is refused: " + device::Cpu::bf16_unsupported_reason());
    return device::Cpu(threads, job.precision == "bf16" ? device::precision::bf16 : device::precision::fp32);
}

int dispatch(Job job, const Options& o) {
    if (!o.precision.empty()) job.precision = o.precision;
    const device::Cpu cpu = make_device(job, o);
    const std::string kind = job.teacher_kind();
    if (job.task_type == "embedding") {
        if (kind != "model")
            throw usage_error(
                "teacher.kind: the embedding task learns from an in-process encoder; expected \"model\" "
                "(a Hugging Face BERT directory), got \"" +
                kind + "\"");
#if defined(DISTILL_WITH_TEXT)
        const auto c = read_config<teacher::EncoderModelConfig>(job.teacher_config(), "teacher");
        return with_distiller<teacher::EncoderModel<>, EmbeddingLoss, student::Encoder>(job, o, cpu, c, cpu);
#else
        throw usage_error(
            "task_type: \"embedding\" reads Hugging Face tokenizers, which need PCRE2; this distill was "
            "built without it");
#endif
    }
    bool online = false, topk = false, activations = false;
    std::string online_term, topk_term;
    for (const auto& item : job.loss.items()) {
        const TermNeeds* t = find_term(item.key());
        if (!t) continue;  // the Distiller names an unknown term and the closest known one
        if (t->online && online_term.empty()) online_term = item.key();
        if (t->topk && topk_term.empty()) topk_term = item.key();
        online = online || t->online;
        topk = topk || t->topk;
        activations = activations || t->activations;
    }
    if (job.multi_teacher()) {
        std::size_t other = 0;  // the first teacher that does not run in this process
        while (other < job.teachers.size() && job.teachers[other].value("kind", "") == "model") ++other;
        if (other < job.teachers.size()) {
            if (online || topk)
                throw usage_error(
                    "loss." + (online ? online_term : topk_term) + " reads the teachers' distributions, but teachers[" +
                    std::to_string(other) + "] is of kind \"" + job.teachers[other].value("kind", "") +
                    "\": several teachers of which one does not run in this process are combined through "
                    "their answers (hard_ce); mixing distributions needs every teacher of kind \"model\"");
            return with_any_ensemble(job, o, cpu);
        }
        if (activations)
            throw usage_error(
                "loss: with several teachers only their logits are mixed; hidden_mse, attention_kl "
                "and attention_relation read one teacher's activations (drop them)");
        if (online && topk)
            throw usage_error(
                "loss: \"topk_soft_kl\" and full-logit terms cannot be mixed here; an in-process teacher "
                "gives full logits (use \"soft_kl\")");
        if (online) return with_ensemble<EnsembleOnlineLoss>(job, o, cpu, false);
        if (topk) return with_ensemble<TopKLoss>(job, o, cpu, false);
        return with_ensemble<TextLoss>(job, o, cpu, false);
    }
    if (kind != "model" && online)
        throw usage_error(
            "loss." + online_term + " needs the teacher's logits, hidden states or attention maps, " +
            "which a teacher of kind \"" + kind + "\" does not provide (it gives answers and at most " +
            "top-k log-probabilities); use \"topk_soft_kl\" and \"hard_ce\", or a teacher of kind \"model\"");
    if (online && topk)
        throw usage_error(
            "loss: \"topk_soft_kl\" and full-logit terms cannot be mixed here; an in-process teacher "
            "gives full logits (use \"soft_kl\")");
    const nlohmann::json tcfg = job.teacher_config();
    if (kind == "model") {
        auto c = read_config<teacher::ModelConfig>(tcfg, "teacher");
        if (!tcfg.contains("keep_activations"))  // the teacher keeps activations only for a loss that reads them
            c.keep_activations = activations;
        if (online) return with_distiller<ModelTeacher, OnlineLoss>(job, o, cpu, c, cpu);
        if (topk) return with_distiller<ModelTeacher, TopKLoss>(job, o, cpu, c, cpu);
        return with_distiller<ModelTeacher, TextLoss>(job, o, cpu, c, cpu);
    }
    if (kind == "cache") {
        const auto c = read_config<teacher::CacheConfig>(tcfg, "teacher");
        if (topk) return with_distiller<teacher::Cache<true>, TopKLoss>(job, o, cpu, c);
        return with_distiller<teacher::Cache<false>, TextLoss>(job, o, cpu, c);
    }
    if (kind == "custom")
        throw usage_error(
            "teacher.kind: \"custom\" teachers are built in code (examples/custom_distiller.cpp); the "
            "distill command runs \"model\", \"openai\" and \"cache\" teachers");
#if defined(DISTILL_WITH_HTTP)
    const auto c = read_config<teacher::OpenAIConfig>(tcfg, "teacher");
    if (topk && c.tokenizer != data::ByteTokenizer::id()) {
        // the endpoint's published tokenizer (the Distiller checks that it is the student's)
#if defined(DISTILL_WITH_TEXT)
        return with_distiller<teacher::OpenAI<data::HfTokenizer>, TopKLoss>(job, o, cpu, c);
#else
        throw usage_error("teacher.tokenizer: a published tokenizer needs PCRE2; this distill was built without it");
#endif
    }
    if (topk) return with_distiller<teacher::OpenAI<data::ByteTokenizer>, TopKLoss>(job, o, cpu, c);
    return with_distiller<teacher::OpenAI<>, TextLoss>(job, o, cpu, c);
#else
    throw usage_error("teacher.kind: \"openai\" needs HTTP support; this distill was built without cpp-httplib");
#endif
}

// Runs this program with `args` in a child process, its stdout to /dev/null and its stderr to `log`;
// the child is killed with the sweep (a sweep killed and rerun must not meet a trial still training).
// Returns the exit status, or 128 + the signal that ended it.
int run_child(const std::vector<std::string>& args, const std::filesystem::path& log) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const std::string log_path = log.string();
    const pid_t parent = getpid();
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid < 0) throw io_error(log, std::string("cannot start a trial: fork: ") + std::strerror(errno));
    if (pid == 0) {  // only async-signal-safe calls until exec
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        const int err = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        const int out = open("/dev/null", O_WRONLY);
        if (err < 0 || out < 0 || dup2(err, 2) < 0 || dup2(out, 1) < 0) _exit(127);
        execv("/proc/self/exe", argv.data());
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) throw io_error(log, std::string("waiting for a trial: ") + std::strerror(errno));
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

// The last line of a file, without the "distill: " prefix.
std::string last_line(const std::filesystem::path& path) {
    std::ifstream in(path);
    std::string line, last;
    while (std::getline(in, line))
        if (!line.empty()) last = line;
    return last.starts_with("distill: ") ? last.substr(9) : last;
}

// `distill sweep`: the teacher answers once into OUTPUT_DIR/shared; every trial's finetune reads
// those answers (its generate/ links there) and pauses at each rung (pipeline/sweep.hpp). Each
// trial-rung is `distill finetune TRIAL.json --stop-at STEP` in a child process: a trial trains as
// that command trains it alone (a process's earlier trials leave no trace in its arithmetic, which
// heap layout can otherwise reach through the alignment of vectorized sums).
int sweep_command(const Options& o) {
    namespace fs = std::filesystem;
    if (ranks->size() > 1) throw usage_error("sweep: runs in one process (not under mpirun)");
    sweep::SweepJob sj;
    std::vector<sweep::Trial> trials;
    try {
        sj = sweep::load_sweep_job(o.target);
        if (sj.job.task_type == "embedding")
            throw config_error("task_type", "\"embedding\" is not swept by distill sweep (language tasks only)");
        if (sj.job.validation_data.empty())
            throw config_error("validation_data", "is required by a sweep: trials are ranked by validation loss");
        trials = sweep::make_trials(sj.spec, sj.base);
    } catch (const distill::error& e) {
        throw usage_error(e.what());
    }
    const fs::path dir = sj.job.output_dir;
    sweep::Sweep sw(sj.spec, sj.base, dir, std::move(trials));
    auto say = [&](const std::string& line) {
        if (!o.quiet) std::fprintf(stderr, "%s\n", line.c_str());
    };
    // the teacher's answers, once, for every trial
    nlohmann::json shared = sj.base;
    shared["output_dir"] = (dir / "shared").string();
    Options go = o;
    go.command = "generate";
    say("sweep: " + std::to_string(sw.trials().size()) + " trials; the teacher answers once into " +
        (dir / "shared").string());
    dispatch(parse_job(shared), go);
    const fs::path answers = fs::absolute(dir / "shared" / "generate");
    sw.run(
        [&](const sweep::Trial& trial, const nlohmann::json& trial_job, std::int64_t stop_at) {
            const fs::path out = trial_job["output_dir"].get<std::string>();
            const fs::path link = out / "generate";
            fs::create_directories(out);
            if (!fs::exists(fs::symlink_status(link))) fs::create_directory_symlink(answers, link);
            io::write_file_atomic(out / "trial.json", trial_job.dump(2) + "\n");
            std::vector<std::string> args = {"distill", "finetune", (out / "trial.json").string(), "--quiet"};
            if (stop_at < trial.full_steps) args.insert(args.end(), {"--stop-at", std::to_string(stop_at)});
            if (o.threads > 0) args.insert(args.end(), {"--threads", std::to_string(o.threads)});
            if (!o.precision.empty()) args.insert(args.end(), {"--precision", o.precision});
            const fs::path log = out / ("finetune-" + std::to_string(stop_at) + ".stderr");
            const int rc = run_child(args, log);
            if (rc == 2) throw usage_error("trial " + trial.id + ": " + last_line(log));
            if (rc == 1)  // the trial failed (a non-finite loss, ...): ranked last, the sweep goes on
                return sweep::Outcome{std::numeric_limits<double>::quiet_NaN(), last_line(log)};
            if (rc != 0)
                throw error("sweep: trial " + trial.id + "'s training ended with status " + std::to_string(rc) + " (" +
                            log.string() + "); run the sweep again to continue");
            return sweep::Outcome{sweep::validation_loss_at(RunDir(out).metrics("student"), stop_at, sw.metric()), ""};
        },
        say);
    std::ifstream md(dir / "sweep.md");
    const std::string table((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
    std::printf("%s\nranking: %s\nbest job: %s\n", table.c_str(), (dir / "sweep.json").string().c_str(),
                (dir / "best_job.json").string().c_str());
    return 0;
}

int status(const Options& o) {
    const auto s = run_status(o.target);
    if (o.json) {
        std::printf("%s\n", s.dump(2).c_str());
        return 0;
    }
    const auto& g = s["generate"];
    std::printf("run: %s\n", o.target.c_str());
    if (g.contains("skipped"))
        std::printf("generate  %s\n", g.value("skipped", "").c_str());
    else if (g.contains("examples"))
        std::printf("generate  %s (%lld prompts: %lld answers kept, %lld rejected, %lld failed)\n",
                    g.value("done", false) ? "done" : "incomplete", g.value("examples", 0LL), g.value("kept", 0LL),
                    g.value("rejected", 0LL), g.value("failed", 0LL));
    else
        std::printf("generate  not started\n");
    for (const char* name : {"student", "baseline"}) {
        const auto& f = s[name];
        if (f.contains("skipped")) {
            std::printf("%-9s %s\n", name, f.value("skipped", "").c_str());
            continue;
        }
        std::printf("%-9s %s", name, f.value("done", false) ? "done" : f.contains("step") ? "training" : "not started");
        if (f.contains("step")) std::printf(" (step %lld, loss %.4f", f.value("step", 0LL), f.value("loss", 0.0));
        if (f.contains("validation_loss")) std::printf(", validation %.4f", f.value("validation_loss", 0.0));
        if (f.contains("step")) std::printf(")");
        std::printf("\n");
    }
    const auto& e = s["evaluate"];
    if (e.value("done", false)) {
        std::printf("evaluate  done (%s:", e.value("primary_metric", "").c_str());
        for (const char* m : {"teacher", "baseline", "student"})
            if (e.contains(m) && e[m].is_number()) std::printf(" %s %.4f", m, e[m].get<double>());
        std::printf(")\n          %s\n", e.value("summary", "").c_str());
    } else {
        std::printf("evaluate  not done\n");
    }
    return 0;
}

// `distill inspect`: the report files, then the summary (or the JSON) on stdout. Exit 1 when either
// file has malformed lines.
int inspect(const Options& o) {
    data::InspectOptions opts;
    opts.near_threshold = o.near_threshold;
    opts.test = o.test;
    for (const std::string& f : {o.target, o.test})
        if (!f.empty() && !std::filesystem::is_regular_file(f)) throw usage_error(f + ": no such file");
    if (!o.tokenizer.empty() && o.tokenizer != "byte") {
#if defined(DISTILL_WITH_TEXT)
        std::shared_ptr<const data::HfTokenizer> tok;
        try {
            tok = std::make_shared<const data::HfTokenizer>(data::tokenizer_file(o.tokenizer, "--tokenizer"));
        } catch (const distill::error& e) {
            throw usage_error(e.what());
        }
        opts.count_tokens = [tok](std::string_view text) { return tok->encode(text, false).size(); };
        opts.tokenizer_name = o.tokenizer;
#else
        throw usage_error("--tokenizer: published tokenizers need PCRE2; this distill was built without it");
#endif
    }
    const data::Inspection r = data::inspect(o.target, opts);
    std::filesystem::path out = o.out;
    if (out.empty()) out = std::filesystem::path(o.target).replace_extension(".inspect");
    data::write_inspection(r, out);
    if (o.json)
        std::printf("%s\n", data::to_json(r).dump(2).c_str());
    else
        std::printf("%sreport: %s\n", data::summary(r).c_str(), (out / "inspect.md").string().c_str());
    const std::size_t bad = r.malformed.size() + r.test_malformed.size();
    if (bad == 0) return 0;
    std::fprintf(stderr, "distill: %zu malformed lines (%s lists them)\n", bad, (out / "inspect.md").string().c_str());
    return 1;
}

Options parse_args(int argc, char** argv) {
    Options o;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--quiet" || a == "-q") {
            o.quiet = true;
        } else if (a == "--json") {
            o.json = true;
        } else if (a == "--precision") {
            if (i + 1 >= argc) throw usage_error("--precision needs fp32 or bf16");
            o.precision = argv[++i];
            if (o.precision != "fp32" && o.precision != "bf16")
                throw usage_error("--precision: expected fp32 or bf16, got " + o.precision);
        } else if (a == "--gguf") {
            if (i + 1 >= argc) throw usage_error("--gguf needs a comma-separated list of tensor types");
            o.gguf = argv[++i];
        } else if (a == "--test" || a == "--out" || a == "--tokenizer") {
            if (i + 1 >= argc) throw usage_error(a + " needs a path");
            (a == "--test" ? o.test : a == "--out" ? o.out : o.tokenizer) = argv[++i];
            o.inspect_options = true;
        } else if (a == "--near-threshold") {
            if (i + 1 >= argc) throw usage_error("--near-threshold needs a number in (0, 1]");
            char* end = nullptr;
            o.near_threshold = std::strtod(argv[++i], &end);
            if (*end != '\0' || !(o.near_threshold > 0 && o.near_threshold <= 1))
                throw usage_error("--near-threshold: expected a number in (0, 1], got " + std::string(argv[i]));
            o.inspect_options = true;
        } else if (a == "--stop-at") {
            if (i + 1 >= argc) throw usage_error("--stop-at needs a step number");
            char* end = nullptr;
            const long long n = std::strtoll(argv[++i], &end, 10);
            if (*end != '\0' || n < 1)
                throw usage_error("--stop-at: expected a step >= 1, got " + std::string(argv[i]));
            o.stop_at = n;
        } else if (a == "--threads") {
            if (i + 1 >= argc) throw usage_error("--threads needs a number");
            char* end = nullptr;
            const long n = std::strtol(argv[++i], &end, 10);
            if (*end != '\0' || n < 1 || n > 4096)
                throw usage_error("--threads: expected 1..4096, got " + std::string(argv[i]));
            o.threads = static_cast<int>(n);
        } else if (a.starts_with("-")) {
            throw usage_error("unknown option " + a + " (see distill --help)");
        } else {
            positional.push_back(a);
        }
    }
    if (positional.size() != 2) throw usage_error("expected a command and one argument (see distill --help)");
    o.command = positional[0];
    o.target = positional[1];
    static const std::set<std::string> commands = {"run",    "generate", "finetune", "evaluate",
                                                   "export", "status",   "inspect",  "sweep"};
    if (!commands.count(o.command)) throw usage_error("unknown command \"" + o.command + "\" (see distill --help)");
    if (o.stop_at > 0 && o.command != "finetune") throw usage_error("--stop-at is an option of finetune");
    if (o.inspect_options && o.command != "inspect")
        throw usage_error("--test, --out, --tokenizer and --near-threshold are options of inspect");
    return o;
}

}  // namespace

// A failure: one line on stderr and the exit code; under mpirun, every rank stops with it (the others
// would otherwise wait for this one in their next collective call).
int fail(int code, const char* what) {
    if (ranks->size() == 1) {
        std::fprintf(stderr, "distill: %s\n", what);
        return code;
    }
    std::fprintf(stderr, "distill (rank %d of %d): %s\n", ranks->rank(), ranks->size(), what);
    std::fflush(stderr);
    ranks->abort(code);
    return code;  // not reached (abort is [[noreturn]], which GCC does not see through a virtual call)
}

int main(int argc, char** argv) {
#if defined(DISTILL_WITH_MPI)
    std::unique_ptr<parallel::Mpi> mpi;
    if (parallel::launched_by_mpi()) {
        mpi = std::make_unique<parallel::Mpi>(&argc, &argv);
        ranks = mpi.get();
    }
#endif
    if (argc >= 2 && (std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h")) {
        std::fputs(usage_text, stdout);
        return 0;
    }
    if (argc >= 2 && std::string_view(argv[1]) == "--version") {
        std::printf("distill %s\n", distill::version());
        std::printf("built with: http %s, published tokenizers %s, oneDNN %s, OpenMP %s, MPI %s\n",
#if defined(DISTILL_WITH_HTTP)
                    "yes",
#else
                    "no (cpp-httplib not found)",
#endif
#if defined(DISTILL_WITH_TEXT)
                    "yes",
#else
                    "no (PCRE2 not found)",
#endif
#if defined(DISTILL_WITH_DNNL)
                    "yes",
#else
                    "no",
#endif
#if defined(_OPENMP)
                    "yes",
#else
                    "no",
#endif
#if defined(DISTILL_WITH_MPI)
                    "yes");
#else
                    "no (MPI not found)");
#endif
        const std::string bf16 = device::Cpu::bf16_unsupported_reason();
        std::printf("bf16 precision: %s\n", bf16.empty() ? "available on this CPU" : ("no: " + bf16).c_str());
        return 0;
    }
    try {
        const Options o = parse_args(argc, argv);
        if (o.command == "inspect") return inspect(o);
        if (o.command == "sweep") return sweep_command(o);
        if (o.command == "status") {
            try {
                return status(o);
            } catch (const distill::error& e) {
                throw usage_error(e.what());
            }
        }
        Job job;
        try {
            job = load_job(o.target);
            if (o.command == "export") {
                if (!o.gguf.empty()) {
                    job.exports.gguf.clear();
                    for (std::size_t at = 0; at <= o.gguf.size();) {
                        const std::size_t comma = std::min(o.gguf.find(',', at), o.gguf.size());
                        job.exports.gguf.push_back(o.gguf.substr(at, comma - at));
                        at = comma + 1;
                    }
                    job.validate();
                }
                if (job.exports.gguf.empty())
                    throw usage_error(
                        "export: the job's export.gguf names no tensor type; give --gguf, e.g. q8_0,q4_k");
            }
        } catch (const config_error& e) {
            if (e.field() == "sweep")  // a sweep job's other key
                throw usage_error(
                    "sweep: is read by distill sweep only; run the job it writes, "
                    "OUTPUT_DIR/best_job.json, or remove \"sweep\"");
            throw usage_error(e.what());
        } catch (const distill::error& e) {
            throw usage_error(e.what());
        }
        return dispatch(job, o);
    } catch (const usage_error& e) {
        return fail(2, e.what());
    } catch (const std::exception& e) {
        return fail(1, e.what());
    }
}
