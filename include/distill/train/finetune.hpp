#pragma once
/// @file finetune.hpp
/// The finetune loop: epochs over a `data::SequenceDataset` shuffled with the run's seed, micro-batches
/// accumulated into optimizer steps, global-norm clipping, a learning-rate schedule, validation every
/// N steps and at each epoch end, early stopping with patience, checkpoints (the best one kept) that
/// resume bit-identically, `metrics.jsonl`, progress output, and guards against NaN/Inf and loss
/// explosions. The loss is a callback, so the Distiller's `loss::Sum` (teacher forward included)
/// plugs in where the default `CrossEntropy` sits. See docs/training.md.
///
/// @code
/// train::FinetuneConfig cfg{.num_epochs = 3, .batch_size = 16, .eval_every = 200, .patience = 3,
///                           .output_dir = "runs/a"};
/// optim::AdamW<float, device::Cpu> opt(model.parameters(), {.weight_decay = 0.1});
/// optim::Schedule schedule({.learning_rate = 3e-4, .warmup_steps = 100}, train::total_steps(cfg, train.size()));
/// train::FinetuneResult r = train::finetune(model, opt, schedule, train, &validation, cfg);
/// @endcode

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <nlohmann/json.hpp>

#include "distill/data/dataset.hpp"
#include "distill/detail/hash.hpp"
#include "distill/detail/rng.hpp"
#include "distill/error.hpp"
#include "distill/io/checkpoint.hpp"
#include "distill/io/durable.hpp"
#include "distill/io/reflect.hpp"
#include "distill/optim/clip.hpp"
#include "distill/optim/schedule.hpp"
#include "distill/optimizer.hpp"
#include "distill/parallel.hpp"
#include "distill/parameter.hpp"
#include "distill/train/progress.hpp"
#include "distill/train/zero.hpp"

namespace distill::train {

/// The loop's settings. A job's `hyperparameters` section holds one (`Hyperparameters::loop`,
/// pipeline/job.hpp) and sets the keys it shares with it; errors name them under
/// `FinetuneOptions::config_path`.
struct FinetuneConfig {
    int num_epochs = 1;                 ///< passes over the training set (when max_steps is 0)
    std::int64_t max_steps = 0;         ///< > 0: exactly this many optimizer steps, epochs continuing as needed
    int batch_size = 8;                 ///< sequences per micro-batch (<= the student's max_batch)
    int grad_accum = 1;                 ///< micro-batches per optimizer step; gradients are their mean
    double grad_clip = 1.0;             ///< max global gradient norm; 0 measures without clipping
    std::uint64_t seed = 0;             ///< shuffling, and the RNG a loss may draw from
    std::int64_t eval_every = 0;        ///< validate every N steps as well as at each epoch end (0: epoch ends only)
    int eval_batch_size = 0;            ///< 0: batch_size
    int patience = 0;                   ///< stop after this many validations without improvement (0: never)
    double min_delta = 0.0;             ///< a validation loss must beat the best by more than this to count
    std::int64_t checkpoint_every = 0;  ///< also checkpoint every N steps (0: at validations and the end only)
    int keep_last_n = 3;                ///< checkpoints kept besides the best and the latest
    std::int64_t log_every = 10;        ///< a metrics record and a progress line every N steps (0: only the last)
    double explosion_factor = 10.0;     ///< report a step loss above factor × its running mean (0: off)
    int explosion_warmup = 20;          ///< steps averaged before the running mean is trusted
    std::string output_dir{};           ///< metrics.jsonl and checkpoints/; empty: nothing is written
    bool resume = true;                 ///< continue from output_dir's latest checkpoint when there is one
    bool quiet = false;                 ///< no progress output

    /// Throws config_error naming the first invalid field under `path`.
    void validate(const std::string& path = "training") const {
        auto at_least = [&](std::int64_t v, std::int64_t lo, const char* key) {
            if (v < lo)
                throw config_error(path + "." + key, "must be >= " + std::to_string(lo) + ", got " + std::to_string(v));
        };
        at_least(num_epochs, 1, "num_epochs");
        at_least(max_steps, 0, "max_steps");
        at_least(batch_size, 1, "batch_size");
        at_least(grad_accum, 1, "grad_accum");
        at_least(eval_every, 0, "eval_every");
        at_least(eval_batch_size, 0, "eval_batch_size");
        at_least(patience, 0, "patience");
        at_least(checkpoint_every, 0, "checkpoint_every");
        at_least(keep_last_n, 1, "keep_last_n");
        at_least(log_every, 0, "log_every");
        at_least(explosion_warmup, 1, "explosion_warmup");
        if (!(grad_clip >= 0) || !std::isfinite(grad_clip))
            throw config_error(path + ".grad_clip", "must be a finite number >= 0, got " + std::to_string(grad_clip));
        if (!(min_delta >= 0) || !std::isfinite(min_delta))
            throw config_error(path + ".min_delta", "must be a finite number >= 0, got " + std::to_string(min_delta));
        if (!(explosion_factor == 0 || explosion_factor > 1) || !std::isfinite(explosion_factor))
            throw config_error(path + ".explosion_factor",
                               "must be 0 (off) or > 1, got " + std::to_string(explosion_factor));
    }
};

/// Optimizer steps of one epoch over `examples` sequences.
inline std::int64_t steps_per_epoch(const FinetuneConfig& cfg, std::size_t examples) {
    const std::int64_t batches = (static_cast<std::int64_t>(examples) + cfg.batch_size - 1) / cfg.batch_size;
    return (batches + cfg.grad_accum - 1) / cfg.grad_accum;
}

/// Optimizer steps of the whole run (the length to give the schedule).
inline std::int64_t total_steps(const FinetuneConfig& cfg, std::size_t examples) {
    return cfg.max_steps > 0 ? cfg.max_steps : cfg.num_epochs * steps_per_epoch(cfg, examples);
}

/// Which pass a loss callback runs: `train` accumulates gradients, `eval` only measures.
enum class pass { train, eval };

/// One named loss term. The name is not copied: a literal or a loss's static `name`, which outlive
/// the step.
using LossTerm = std::pair<std::string_view, double>;

/// Up to 16 named terms held inline, so returning them allocates nothing (the training step is
/// allocation-free). push_back / emplace_back / iteration as on a vector; a 17th term throws.
class LossTerms {
public:
    static constexpr std::size_t capacity = 16;
    LossTerms() = default;
    LossTerms(std::initializer_list<LossTerm> terms) {
        for (const auto& t : terms) push_back(t);
    }
    void push_back(const LossTerm& t) { emplace_back(t.first, t.second); }
    template <class... Args>
    LossTerm& emplace_back(Args&&... args) {
        if (n_ == capacity)
            throw config_error("loss", "a loss callback returned more than " + std::to_string(capacity) + " terms");
        items_[n_] = LossTerm(std::forward<Args>(args)...);
        return items_[n_++];
    }
    std::size_t size() const noexcept { return n_; }
    bool empty() const noexcept { return n_ == 0; }
    LossTerm& operator[](std::size_t i) noexcept { return items_[i]; }
    const LossTerm& operator[](std::size_t i) const noexcept { return items_[i]; }
    LossTerm* begin() noexcept { return items_.data(); }
    LossTerm* end() noexcept { return items_.data() + n_; }
    const LossTerm* begin() const noexcept { return items_.data(); }
    const LossTerm* end() const noexcept { return items_.data() + n_; }

private:
    std::array<LossTerm, capacity> items_{};
    std::size_t n_ = 0;
};

/// A data-parallel run of `world` ranks shares each step's micro-batches among them: `grad_accum`
/// must be a multiple of `world`. Throws config_error naming `<path>.grad_accum`.
inline void check_data_parallel(const FinetuneConfig& cfg, int world, const std::string& path) {
    if (world > 1 && cfg.grad_accum % world != 0)
        throw config_error(path + ".grad_accum",
                           "is " + std::to_string(cfg.grad_accum) + ", but the " + std::to_string(world) +
                               " ranks of a data-parallel run share each step's micro-batches: make it a multiple "
                               "of " +
                               std::to_string(world) + " (the global batch is batch_size x grad_accum)");
}

/// What a loss callback returns for one micro-batch: the total (the mean over the batch's loss
/// tokens of the weighted sum of terms) and each named term as it enters the total.
struct LossValues {
    double total = 0;
    LossTerms terms{};
};

/// A loss callback for `Model`: `loss(model, batch, pass)` runs the model's forward on the batch,
/// computes the loss and, for `pass::train`, writes its gradients and calls `backward` (gradients
/// accumulate; the loop zeroes them once per step and averages over micro-batches).
template <class L, class Model>
concept loss_callback = requires(L& loss, Model& model, const data::Batch& batch) {
    { loss(model, batch, pass::train) } -> std::convertible_to<LossValues>;
};

/// The default loss: the student's masked next-token cross-entropy, one term named "ce".
struct CrossEntropy {
    /// Forward, masked cross-entropy and, for `pass::train`, backward of `model` on `batch`.
    template <class Model>
    LossValues operator()(Model& model, const data::Batch& batch, pass p) const {
        model.forward(batch.tokens.data(), batch.batch, batch.length);
        const double ce = static_cast<double>(model.cross_entropy(batch.targets.data()));
        if (p == pass::train) model.backward();
        return {ce, {{"ce", ce}}};
    }
};

/// One finished optimizer step, as hooks see it.
struct StepReport {
    std::int64_t step = 0;   ///< updates done (1-based)
    std::int64_t epoch = 0;  ///< 0-based
    double loss = 0, lr = 0, grad_norm = 0;
    std::optional<double> validation_loss{};            ///< when this step validated
    std::optional<std::filesystem::path> checkpoint{};  ///< when this step wrote one
};

/// Outputs and hooks of a run that are not configuration.
/// @tparam T scalar type.
template <class T>
struct FinetuneOptions {
    /// Parameters of owners other than the student (loss projections): already in the optimizer's
    /// list, listed here so checkpoints save and restore them.
    std::vector<Parameter<T>> extra{};
    /// A copy of the job configuration, stored in every checkpoint.
    nlohmann::json job_config{};
    /// Where progress goes (null: nowhere).
    std::FILE* progress = stderr;
    /// Called after every step (after its checkpoint, if any).
    std::function<void(const StepReport&)> on_step{};
    /// Where the loop's settings sit in the caller's configuration, for error messages
    /// ("<config_path>.batch_size: ..."): "hyperparameters" in a job file.
    std::string config_path = "training";
    /// The key that chose `output_dir`, for the message refusing a second run into it ("" = the
    /// config_path's "output_dir"; "output_dir" in a job file).
    std::string output_dir_key{};
    /// > 0: pause after this step — validate, checkpoint and return unfinished (`FinetuneResult::paused`);
    /// the same run started again continues from there, as if never paused (the schedule is the full
    /// run's). A pause's validation is a measurement only: it moves neither the best checkpoint nor
    /// early stopping. Not configuration: no part of a fingerprint (a hyperparameter sweep's rungs).
    std::int64_t stop_at = 0;
    /// The ranks of a data-parallel run (null: this process alone). Each rank computes the
    /// micro-batches m ≡ rank (mod size) of every step (`grad_accum` must be a multiple of the size),
    /// the gradients are summed over ranks, and every rank takes the same update; rank 0 writes
    /// `output_dir` (under ZeRO-1 each rank also its state shard of each checkpoint), which must be on
    /// a filesystem every rank reads (they resume from its checkpoints).
    parallel::Communicator* communicator = nullptr;
    /// 1: ZeRO-1 (train/zero.hpp) when `communicator` has several ranks — the optimizer must be built
    /// over this rank's `optim::Shard::of(total elements, rank, size)` and holds state for it alone;
    /// after each update the parameters are all-gathered, and each rank writes its state into the
    /// checkpoint (`optimizer-shard-R-of-N.safetensors`). 0: every rank holds the whole state. With
    /// one process it changes nothing. Any checkpoint resumes either way and with any world size.
    int zero = 0;
};

/// How a run ended.
struct FinetuneResult {
    std::int64_t steps = 0;  ///< updates done in total (before a resume included)
    std::int64_t epochs_completed = 0;
    bool early_stopped = false;
    bool resumed = false;  ///< started from a checkpoint
    bool paused = false;   ///< stopped at `FinetuneOptions::stop_at`, unfinished
    std::int64_t resumed_from_step = 0;
    std::int64_t best_step = -1;  ///< step of the best validation (-1: none)
    double best_validation_loss = std::numeric_limits<double>::quiet_NaN();
    double last_loss = std::numeric_limits<double>::quiet_NaN();
    std::int64_t loss_spikes = 0;                                ///< explosions reported by this process
    std::filesystem::path best_checkpoint{}, last_checkpoint{};  ///< empty without output_dir
};

/// The RNG's state as a checkpoint stores it (the spare normal as its bits).
struct RngRecord {
    std::vector<std::uint64_t> words{};  ///< the xoshiro state, 4 words
    std::uint64_t spare_bits = 0;
    bool has_spare = false;
};

/// What the run trains on, so a resume can refuse other data.
struct DatasetRecord {
    std::uint64_t size = 0;
    std::uint64_t fingerprint = 0;
};

/// The loop's own state, stored as "state" in every checkpoint's manifest (io/checkpoint.hpp) and
/// read back on resume through the same reflection as the configs (io/reflect.hpp). Doubles the
/// resume compares against are kept as their bits, so it continues with exactly the same values;
/// `best_loss`, `total_steps` and `lr_next` are for readers of the manifest.
struct LoopState {
    std::int64_t epoch = 0;
    std::int64_t cursor = 0;  ///< position in the epoch's example order
    std::int64_t epochs_completed = 0;
    RngRecord rng{};
    std::optional<std::uint64_t> best_loss_bits{};  ///< null: no validation yet
    std::optional<double> best_loss{};
    std::int64_t best_step = -1;
    int bad_validations = 0;
    bool stopped = false;
    bool finished = false;
    std::uint64_t loss_mean_bits = 0;  ///< the explosion guard's running mean
    std::int64_t loss_count = 0;
    std::int64_t total_steps = 0;
    double lr_next = 0;
    DatasetRecord dataset{};
};

}  // namespace distill::train

BOOST_HANA_ADAPT_STRUCT(distill::train::RngRecord, words, spare_bits, has_spare);
BOOST_HANA_ADAPT_STRUCT(distill::train::DatasetRecord, size, fingerprint);
BOOST_HANA_ADAPT_STRUCT(distill::train::LoopState, epoch, cursor, epochs_completed, rng, best_loss_bits, best_loss,
                        best_step, bad_validations, stopped, finished, loss_mean_bits, loss_count, total_steps, lr_next,
                        dataset);

namespace distill::train {

/// The finetune loop over `Model`, `Optimizer`, `Schedule` and a loss callback (see the file comment).
/// @tparam Model a `student_model`. @tparam Optimizer an `optimizer_policy` over the model's scalar.
/// @tparam Schedule an `optim::lr_schedule`. @tparam Loss a `loss_callback` for Model.
template <class Model, class Optimizer, class Schedule, class Loss = CrossEntropy>
requires optimizer_policy<Optimizer> && optim::lr_schedule<Schedule> && loss_callback<Loss, Model>
class Finetuner {
public:
    using T = typename Model::scalar_type;
    static_assert(std::is_same_v<T, typename Optimizer::scalar_type>,
                  "Finetuner: model and optimizer scalar types differ");

    /// References to `model`, `optimizer`, `schedule`, the datasets and `loss` are kept: they must
    /// outlive the Finetuner. `validation` may be null (no validation, no early stopping).
    Finetuner(Model& model, Optimizer& optimizer, const Schedule& schedule, const data::SequenceDataset& train,
              const data::SequenceDataset* validation, FinetuneConfig config, Loss loss = {},
              FinetuneOptions<T> options = {})
        : model_(model),
          opt_(optimizer),
          schedule_(schedule),
          train_(train),
          val_(validation),
          cfg_(std::move(config)),
          loss_(std::move(loss)),
          options_(std::move(options)),
          rng_(cfg_.seed),
          clipper_(std::span<const Parameter<T>>(opt_.parameters())),
          comm_(options_.communicator ? *options_.communicator : parallel::single()) {
        cfg_.validate(options_.config_path);
        if (options_.zero != 0 && options_.zero != 1)
            throw config_error("zero", "expected 0 or 1 (ZeRO-1: optimizer state sharded over the ranks), got " +
                                           std::to_string(options_.zero));
        zero_ = options_.zero == 1 && comm_.size() > 1;
        if (zero_) {
            const std::size_t total = optim::total_elements<T>(opt_.parameters());
            const optim::Shard want = optim::Shard::of(total, comm_.rank(), comm_.size());
            if (!(zero::shard_of(opt_) == want))
                throw config_error("zero", "is 1, but the optimizer of rank " + std::to_string(comm_.rank()) +
                                               " was not built over its shard [" + std::to_string(want.lo) + ", " +
                                               std::to_string(want.hi) + ") (optim::Shard::of(total, rank, size))");
            if (!cfg_.output_dir.empty()) zero_root_ = std::filesystem::path(cfg_.output_dir) / "checkpoints";
        }
        if (comm_.size() > 1) {
            check_data_parallel(cfg_, comm_.size(), options_.config_path);
            constexpr memory_space memory = Model::device_type::memory;
            if (!comm_.reaches(memory))
                throw config_error("device",
                                   "a data-parallel run sums the gradients where they live, in this "
                                   "device's memory, and parallel::" +
                                       comm_.name() +
                                       " sums host memory only (device::Cuda needs parallel::Nccl, "
                                       "parallel/nccl.hpp)");
            // the shards' checkpoints and the all-gather's counts are written for host memory
            if (zero_ && memory != memory_space::host)
                throw config_error("zero",
                                   "is 1, but ZeRO-1 is implemented for host-memory devices only "
                                   "(device::Cpu); use 0 with this device");
            if (!comm_.root()) {  // rank 0 writes; the others train and read its checkpoints
                options_.progress = nullptr;
                cfg_.output_dir.clear();
            }
        }
        if (train_.empty()) throw config_error("training_data", "the training set is empty");
        const int eval_batch = cfg_.eval_batch_size ? cfg_.eval_batch_size : cfg_.batch_size;
        if constexpr (requires { model.max_batch(); }) {
            if (cfg_.batch_size > model.max_batch())
                throw config_error(key("batch_size"), "is " + std::to_string(cfg_.batch_size) +
                                                          ", the student was built for at most " +
                                                          std::to_string(model.max_batch()) + " sequences");
            if (eval_batch > model.max_batch())
                throw config_error(key("eval_batch_size"), "is " + std::to_string(eval_batch) +
                                                               ", the student was built for at most " +
                                                               std::to_string(model.max_batch()) + " sequences");
        }
        total_ = total_steps(cfg_, train_.size());
        if (!cfg_.output_dir.empty()) {
            out_ = cfg_.output_dir;
            std::error_code ec;
            std::filesystem::create_directories(out_, ec);
            if (ec) throw io_error(out_, "cannot create the output directory: " + ec.message());
            // before the store, which cleans up temporaries
            lock_ = io::directory_lock(
                out_, options_.output_dir_key.empty() ? key("output_dir") : options_.output_dir_key, "training");
            store_.emplace(out_ / "checkpoints");
            // shards written for a checkpoint a crash kept from committing
            for (const auto& entry : std::filesystem::directory_iterator(store_->root()))
                if (entry.path().filename().string().starts_with("zero-"))
                    std::filesystem::remove_all(entry.path(), ec);
        }
    }

    /// Runs (or resumes) training to its end: all epochs or max_steps, or early stopping.
    /// Throws numeric_error on a non-finite loss or gradient (before that step's update; the last
    /// checkpoint stays the latest), format_error when the checkpoint to resume from is damaged.
    FinetuneResult run() {
        FinetuneResult result;
        const auto device = model_device();
        if (!begin(result)) return result;  // the checkpoint says the run had already finished
        if (pause_at(step_)) {              // paused there before
            fill(result);
            result.paused = true;
            return result;
        }
        Progress progress(options_.progress, cfg_.quiet, total_, cfg_.log_every);
        const std::int64_t first_step = step_;
        data::Batch batch;
        std::vector<std::int64_t> rows;
        const std::size_t n = train_.size();

        while (step_ < total_) {
            if (cursor_ >= static_cast<std::int64_t>(n)) {  // next epoch
                ++epoch_;
                order_ = data::shuffled_order(n, rng_);
                cursor_ = 0;
            }
            const auto t0 = std::chrono::steady_clock::now();
            opt_.zero_grad();
            int micro = 0;
            double loss_sum = 0;
            for (auto& t : term_sums_) t.second = 0;  // the names stay: no allocation once the terms are known
            std::int64_t tokens = 0;
            while (micro < cfg_.grad_accum && cursor_ < static_cast<std::int64_t>(n)) {
                const std::int64_t take =
                    std::min<std::int64_t>(cfg_.batch_size, static_cast<std::int64_t>(n) - cursor_);
                if (micro % comm_.size() == comm_.rank()) {  // this rank's share of the step
                    rows.assign(order_.begin() + cursor_, order_.begin() + cursor_ + take);
                    train_.make_batch(rows, batch);
                    batch.step = step_;
                    batch.micro = micro;
                    // LoRA dropout: masks from (seed, step, micro-batch), so that a resumed run draws the same
                    if constexpr (requires { model_.lora_dropout(std::uint64_t(0)); })
                        model_.lora_dropout(
                            detail::mix64(cfg_.seed, std::uint64_t(step_) * 4096 + std::uint64_t(micro)));
                    const LossValues lv = loss_(model_, batch, pass::train);
                    check_loss(lv, "");
                    loss_sum += lv.total;
                    add_terms(term_sums_, lv.terms, 1.0);
                    tokens += batch.real_tokens;
                }
                cursor_ += take;
                ++micro;
            }
            if (comm_.size() > 1) sum_over_ranks(loss_sum, tokens);
            const std::span<const Parameter<T>> params(opt_.parameters());
            if (micro > 1) clipper_.scale(T(1) / static_cast<T>(micro), device);
            const double grad_norm = clipper_(cfg_.grad_clip, device);
            if (!std::isfinite(grad_norm)) throw gradient_error(params);
            const double lr = schedule_.lr(step_);
            opt_.step(lr);
            if (zero_) zero::gather_parameters<T>(comm_, opt_.parameters(), value_runs_);
            ++step_;
            const double loss = loss_sum / micro;
            for (auto& t : term_sums_) t.second /= micro;
            const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            const double tokens_per_s = seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0;
            result.last_loss = loss;
            watch_explosion(loss, progress, result);

            const bool last_step = step_ >= total_;
            if (!out_.empty() && ((cfg_.log_every > 0 && step_ % cfg_.log_every == 0) || last_step)) {
                nlohmann::json rec = {
                    {"kind", "train"}, {"step", step_},          {"epoch", epoch_},  {"loss", loss},
                    {"lr", lr},        {"grad_norm", grad_norm}, {"tokens", tokens}, {"tokens_per_s", tokens_per_s}};
                for (const auto& [name, value] : term_sums_) rec["terms"][name] = value;
                append_metrics(rec);
            }
            progress.step(step_, first_step, epoch_, loss, lr, grad_norm, tokens_per_s);

            StepReport report{step_, epoch_, loss, lr, grad_norm, std::nullopt, std::nullopt};
            const bool epoch_end = cursor_ >= static_cast<std::int64_t>(n);
            bool improved = false;
            const bool scheduled = (cfg_.eval_every > 0 && step_ % cfg_.eval_every == 0) || epoch_end || last_step;
            const bool pause = !last_step && pause_at(step_);
            if (pause && !scheduled && val_ && !val_->empty()) {  // a measurement only (see stop_at)
                const LossValues v = evaluate();
                report.validation_loss = v.total;
                nlohmann::json rec = {{"kind", "validation"}, {"step", step_}, {"epoch", epoch_},
                                      {"loss", v.total},      {"best", false}, {"pause", true}};
                for (const auto& [name, value] : v.terms) rec["terms"][name] = value;
                append_metrics(rec);
            } else if (val_ && !val_->empty() && scheduled) {
                const LossValues v = evaluate();
                report.validation_loss = v.total;
                improved = !best_loss_ || v.total < *best_loss_ - cfg_.min_delta;
                if (improved) {
                    best_loss_ = v.total;
                    best_step_ = step_;
                    bad_validations_ = 0;
                } else {
                    ++bad_validations_;
                    if (cfg_.patience > 0 && bad_validations_ >= cfg_.patience) stopped_ = true;
                }
                nlohmann::json rec = {{"kind", "validation"},   {"step", step_},    {"epoch", epoch_},
                                      {"loss", v.total},        {"best", improved}, {"best_loss", *best_loss_},
                                      {"best_step", best_step_}};
                for (const auto& [name, value] : v.terms) rec["terms"][name] = value;
                append_metrics(rec);
                char msg[200];
                std::snprintf(msg, sizeof msg, "validation at step %lld: loss %.4f%s", static_cast<long long>(step_),
                              v.total,
                              improved   ? " (best)"
                              : stopped_ ? " (no improvement; early stopping)"
                                         : "");
                progress.message(msg);
            }
            const bool finished = stopped_ || last_step;
            if ((store_ || !zero_root_.empty()) &&
                (report.validation_loss || finished || pause ||
                 (cfg_.checkpoint_every > 0 && step_ % cfg_.checkpoint_every == 0))) {
                finished_ = finished;
                std::vector<std::filesystem::path> shards;
                const auto staging = zero_root_ / ("zero-" + io::detail::step_name(step_));
                if (zero_) {  // every rank its state shard, then rank 0 the checkpoint that attaches them
                    std::error_code ec;
                    std::filesystem::create_directories(staging, ec);
                    if (ec) throw io_error(staging, "cannot create the directory: " + ec.message());
                    for (int r = 0; r < comm_.size(); ++r)
                        shards.push_back(staging / zero::shard_file_name(r, comm_.size()));
                    zero::write_shard(shards[std::size_t(comm_.rank())], opt_);
                    comm_.barrier();
                }
                if (store_) {
                    const auto dir = store_->save(step_, model_, std::span<const Parameter<T>>(options_.extra), opt_,
                                                  order_, loop_state(), job_config(), shards, !zero_);
                    if (improved) store_->set_best(dir);
                    store_->prune(cfg_.keep_last_n);
                    report.checkpoint = dir;
                    last_checkpoint_ = dir;
                    if (zero_) std::filesystem::remove(staging);  // emptied by the save
                }
                if (zero_) comm_.barrier();
            }
            if (epoch_end) ++epochs_completed_;
            if (options_.on_step) options_.on_step(report);
            if (finished) break;
            if (pause) {
                result.paused = true;
                break;
            }
        }
        progress.finish();
        if constexpr (requires { model_.lora_eval(); }) model_.lora_eval();
        fill(result);
        return result;
    }

    /// Token-weighted mean loss (and terms) over the validation set, in dataset order, no gradients.
    LossValues evaluate() {
        if constexpr (requires { model_.lora_eval(); }) model_.lora_eval();  // no dropout outside training forwards
        LossValues out;
        if (!val_ || val_->empty()) return out;
        const std::int64_t bs = cfg_.eval_batch_size ? cfg_.eval_batch_size : cfg_.batch_size;
        const auto n = static_cast<std::int64_t>(val_->size());
        double weight = 0;
        std::vector<std::int64_t> rows;
        data::Batch batch;
        for (std::int64_t i = 0; i < n; i += bs) {
            rows.clear();
            for (std::int64_t k = i; k < std::min(n, i + bs); ++k) rows.push_back(k);
            val_->make_batch(rows, batch);
            const LossValues lv = loss_(model_, batch, pass::eval);
            check_loss(lv, "validation ");
            const double w = static_cast<double>(batch.loss_tokens);
            out.total += w * lv.total;
            add_terms(out.terms, lv.terms, w);
            weight += w;
        }
        if (weight > 0) {
            out.total /= weight;
            for (auto& t : out.terms) t.second /= weight;
        }
        return out;
    }

    /// Optimizer steps this run is configured for.
    std::int64_t total() const noexcept { return total_; }

private:
    /// Whether the run pauses after `step` (FinetuneOptions::stop_at).
    bool pause_at(std::int64_t step) const noexcept {
        return options_.stop_at > 0 && step >= options_.stop_at && step < total_;
    }

    /// The path of one of the loop's settings in the caller's configuration (error messages).
    std::string key(const char* name) const { return options_.config_path + "." + name; }

    auto model_device() const {
        if constexpr (requires { model_.device(); })
            return model_.device();
        else
            return typename Model::device_type{};
    }

    /// Restores from the latest checkpoint or starts fresh; false when the run had already finished.
    bool begin(FinetuneResult& result) {
        std::optional<std::filesystem::path> latest;
        if (store_) latest = store_->latest();
        if (comm_.size() > 1) {  // rank 0's choice; every rank restores from that checkpoint
            const std::string chosen = comm_.broadcast_string(latest ? latest->string() : std::string());
            latest.reset();
            if (!chosen.empty()) latest = std::filesystem::path(chosen);
        }
        if (latest && !cfg_.resume)
            throw config_error(key("resume"),
                               "is false, but " + out_.string() +
                                   " already holds checkpoints of a run; choose an empty output_dir or resume");
        if (!latest) {
            order_ = data::shuffled_order(train_.size(), rng_);
            if (!out_.empty()) io::write_file_atomic(out_ / "metrics.jsonl", std::string_view());
            return true;
        }
        std::optional<io::Checkpoint> ck;
        try {
            ck.emplace(io::Checkpoint::open(*latest));
        } catch (const format_error& e) {
            if (!store_) throw;
            throw format_error(e.path(), e.line(), refusal_hint(e, *latest));
        }
        const LoopState s = read_state(*ck, *latest);
        if (s.dataset.size != train_.size() || s.dataset.fingerprint != train_.fingerprint())
            throw config_error("training_data",
                               "differs from the data the checkpoint " + latest->string() +
                                   " was trained on (size or content); resuming would not continue that run");
        const bool flat = zero_ || zero::sharded(*ck);  // state re-sliced from whichever layout it has
        ck->restore(model_, std::span<const Parameter<T>>(options_.extra), opt_, order_, !flat);
        if (flat) zero::restore_state(*ck, opt_);
        step_ = ck->step();
        epoch_ = s.epoch;
        cursor_ = s.cursor;
        epochs_completed_ = s.epochs_completed;
        Rng::state_type rs;
        for (std::size_t i = 0; i < rs.words.size(); ++i) rs.words[i] = s.rng.words[i];
        rs.spare = std::bit_cast<double>(s.rng.spare_bits);
        rs.has_spare = s.rng.has_spare;
        rng_.set_state(rs);
        if (s.best_loss_bits) best_loss_ = std::bit_cast<double>(*s.best_loss_bits);
        best_step_ = s.best_step;
        bad_validations_ = s.bad_validations;
        stopped_ = s.stopped;
        finished_ = s.finished;
        loss_mean_ = std::bit_cast<double>(s.loss_mean_bits);
        loss_count_ = s.loss_count;
        last_checkpoint_ = *latest;
        result.resumed = true;
        result.resumed_from_step = step_;
        truncate_metrics(step_);
        if (finished_) {
            fill(result);
            return false;
        }
        return true;
    }

    /// The loop's own state for the checkpoint manifest (see `LoopState`).
    nlohmann::json loop_state() const {
        const auto rs = rng_.state();
        LoopState st;
        st.epoch = epoch_;
        st.cursor = cursor_;
        st.epochs_completed = epochs_completed_ + (cursor_ >= static_cast<std::int64_t>(train_.size()) ? 1 : 0);
        st.rng = {std::vector<std::uint64_t>(rs.words.begin(), rs.words.end()), std::bit_cast<std::uint64_t>(rs.spare),
                  rs.has_spare};
        if (best_loss_) {
            st.best_loss_bits = std::bit_cast<std::uint64_t>(*best_loss_);
            st.best_loss = *best_loss_;
        }
        st.best_step = best_step_;
        st.bad_validations = bad_validations_;
        st.stopped = stopped_;
        st.finished = finished_;
        st.loss_mean_bits = std::bit_cast<std::uint64_t>(loss_mean_);
        st.loss_count = loss_count_;
        st.total_steps = total_;
        st.lr_next = schedule_.lr(step_);
        st.dataset = {train_.size(), train_.fingerprint()};
        return io::to_json(st);
    }

    /// The manifest's loop state of checkpoint `dir`; every field must be there (a format_error
    /// naming the manifest otherwise).
    static LoopState read_state(const io::Checkpoint& ck, const std::filesystem::path& dir) {
        const auto manifest = dir / "manifest.json";
        LoopState st;
        try {
            const nlohmann::json& j = ck.state();
            const nlohmann::json keys = io::to_json(st);
            if (j.is_object())
                for (const auto& k : keys.items())
                    if (!j.contains(k.key())) throw config_error("state." + k.key(), "is missing");
            io::from_json(j, st, "state");
            if (st.rng.words.size() != 4) throw config_error("state.rng.words", "expected 4 words");
        } catch (const config_error& e) {
            throw format_error(manifest, 0, e.what());
        }
        return st;
    }

    nlohmann::json job_config() const {
        return {
            {"training", io::to_json(cfg_)}, {"optimizer", io::to_json(opt_.config())}, {"job", options_.job_config}};
    }

    void fill(FinetuneResult& r) const {
        r.steps = step_;
        r.epochs_completed = epochs_completed_;
        r.early_stopped = stopped_;
        r.best_step = best_step_;
        if (best_loss_) r.best_validation_loss = *best_loss_;
        if (store_) {
            if (auto b = store_->best()) r.best_checkpoint = *b;
            r.last_checkpoint = last_checkpoint_;
        }
    }

    template <class Sums>
    static void add_terms(Sums& sums, const LossTerms& terms, double weight) {
        for (const auto& term : terms) {
            const std::string_view name = term.first;  // a plain copy: clang 14 cannot capture bindings
            const double value = term.second;
            auto it = std::find_if(sums.begin(), sums.end(), [&](const auto& s) { return s.first == name; });
            if (it == sums.end())
                sums.emplace_back(name, weight * value);
            else
                it->second += weight * value;
        }
    }

    std::string last_good() const {
        return last_checkpoint_.empty() ? std::string("none was written")
                                        : "the last good checkpoint is " + last_checkpoint_.string();
    }

    /// NaN/Inf guard on the loss: names the step (the update that would have been), epoch and term.
    void check_loss(const LossValues& lv, const char* what) const {
        auto bad = [&](std::string_view term, double v) {
            throw numeric_error("step " + std::to_string(step_ + 1) + " (epoch " + std::to_string(epoch_) +
                                "): " + what + "loss term '" + std::string(term) + "' is " + describe(v) +
                                "; training stopped before the update (" + last_good() + ")");
        };
        for (const auto& [name, value] : lv.terms)
            if (!std::isfinite(value)) bad(name, value);
        if (!std::isfinite(lv.total)) bad("total", lv.total);
    }

    /// NaN/Inf guard on the gradients: names the step, the parameter and the element.
    numeric_error gradient_error(std::span<const Parameter<T>> params) const {
        std::string where = "a gradient";
        if (auto bad = optim::find_nonfinite<T>(params, model_device()))
            where = "the gradient of '" + params[bad->parameter].name + "' (element " + std::to_string(bad->element) +
                    ") is " + describe(bad->value);
        return numeric_error("step " + std::to_string(step_ + 1) + " (epoch " + std::to_string(epoch_) + "): " + where +
                             "; training stopped before the update (" + last_good() + ")");
    }

    static std::string describe(double v) { return std::isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf"; }

    /// The explosion guard: a loss above factor × its running mean is reported (stderr and metrics),
    /// not fatal — a spike can recover, and the NaN guard stops what does not.
    void watch_explosion(double loss, Progress& progress, FinetuneResult& result) {
        if (cfg_.explosion_factor > 0 && loss_count_ >= cfg_.explosion_warmup &&
            loss > cfg_.explosion_factor * loss_mean_ && loss_mean_ > 0) {
            ++result.loss_spikes;
            char msg[256];
            std::snprintf(msg, sizeof msg,
                          "warning: step %lld: loss %.4g is %.1fx its running mean %.4g (explosion_factor %g)",
                          static_cast<long long>(step_), loss, loss / loss_mean_, loss_mean_, cfg_.explosion_factor);
            progress.message(msg);
            if (cfg_.quiet && options_.progress)
                std::fprintf(options_.progress, "%s\n", msg);  // warnings survive --quiet
            append_metrics({{"kind", "event"},
                            {"event", "loss_explosion"},
                            {"step", step_},
                            {"loss", loss},
                            {"running_mean", loss_mean_}});
        }
        // Mean of the first steps, then an exponential moving average over ~50 steps.
        ++loss_count_;
        if (loss_count_ <= cfg_.explosion_warmup)
            loss_mean_ += (loss - loss_mean_) / static_cast<double>(loss_count_);
        else
            loss_mean_ = 0.98 * loss_mean_ + 0.02 * loss;
    }

    // Data parallelism: the step's gradients, loss, terms and tokens summed over the ranks. The
    // gradients go in as few calls as there are contiguous runs of them (the student's arena is one),
    // in the device's memory (MPI for host memory, NCCL for device::Cuda's).
    void sum_over_ranks(double& loss_sum, std::int64_t& tokens) {
        if (grad_runs_.empty())  // the parameters never move: their runs are found once
            for (const auto& p : opt_.parameters()) {
                T* g = p.grad.data();
                const auto n = std::size_t(p.grad.numel());
                if (!grad_runs_.empty() && grad_runs_.back().first + grad_runs_.back().second == g)
                    grad_runs_.back().second += n;
                else
                    grad_runs_.emplace_back(g, n);
            }
        for (auto [g, n] : grad_runs_) comm_.all_reduce_sum(Model::device_type::memory, g, n);
        // Rank 0 computes micro-batch 0 of every step, so it always knows the terms' names; a rank
        // that computed nothing this step adds zeros in the same order.
        const auto terms = std::size_t(comm_.all_reduce_max(std::int64_t(term_sums_.size())));
        rank_sums_.assign(2 + terms, 0.0);
        rank_sums_[0] = loss_sum;
        rank_sums_[1] = double(tokens);
        const bool known = term_sums_.size() == terms;
        if (known)
            for (std::size_t i = 0; i < terms; ++i) rank_sums_[2 + i] = term_sums_[i].second;
        comm_.all_reduce_sum(rank_sums_.data(), rank_sums_.size());
        loss_sum = rank_sums_[0];
        tokens = std::int64_t(rank_sums_[1]);
        if (known)
            for (std::size_t i = 0; i < terms; ++i) term_sums_[i].second = rank_sums_[2 + i];
    }

    void append_metrics(const nlohmann::json& record) const {
        if (out_.empty()) return;
        io::append_durably(out_ / "metrics.jsonl", record.dump() + "\n");
    }

    /// After a crash, metrics.jsonl may hold records of steps after the checkpoint resumed from; they
    /// are dropped (atomically) so the resumed run's log reads like an uninterrupted one.
    void truncate_metrics(std::int64_t step) const {
        if (out_.empty()) return;
        const auto path = out_ / "metrics.jsonl";
        if (!std::filesystem::exists(path)) return;
        std::ifstream in(path);
        std::string line, kept;
        while (std::getline(in, line)) {
            const auto j = nlohmann::json::parse(line, nullptr, false);
            if (j.is_discarded()) continue;  // a torn last line of a crashed write
            if (j.contains("step") && j["step"].is_number_integer() && j["step"].get<std::int64_t>() > step) continue;
            kept += line + "\n";
        }
        io::write_file_atomic(path, kept);
    }

    /// The refusal message of a damaged checkpoint, with the newest older checkpoint that verifies.
    std::string refusal_hint(const format_error& e, const std::filesystem::path& bad) const {
        std::string msg = std::string(e.what()).substr(e.path().string().size() + (e.line() ? 0 : 2));
        msg += ". Cannot resume from " + bad.filename().string();
        const auto all = store_->list();
        for (auto it = all.rbegin(); it != all.rend(); ++it) {
            if (*it == bad) continue;
            try {
                (void)io::Checkpoint::open(*it);
                return msg + "; " + it->filename().string() + " is intact: write \"" + it->filename().string() +
                       "\" into " + (store_->root() / "latest").string() + " to resume from it";
            } catch (const error&) {
            }
        }
        return msg + "; no older intact checkpoint was found";
    }

    Model& model_;
    Optimizer& opt_;
    const Schedule& schedule_;
    const data::SequenceDataset& train_;
    const data::SequenceDataset* val_;
    FinetuneConfig cfg_;
    Loss loss_;
    FinetuneOptions<T> options_;
    Rng rng_;
    optim::GradClipper<T> clipper_;                            // clipping without allocation
    parallel::Communicator& comm_;                             // the ranks of a data-parallel run
    std::vector<std::pair<T*, std::size_t>> grad_runs_;        // contiguous gradient ranges (sum_over_ranks)
    std::vector<std::pair<T*, std::size_t>> value_runs_;       // contiguous parameter ranges (ZeRO-1 all-gather)
    bool zero_ = false;                                        // ZeRO-1 over several ranks
    std::filesystem::path zero_root_{};                        // every rank's checkpoints/ (ZeRO-1 shards)
    std::vector<double> rank_sums_;                            // loss, tokens, terms (sum_over_ranks)
    std::vector<std::pair<std::string, double>> term_sums_{};  // the step's loss terms, kept across steps
    std::filesystem::path out_{};
    io::directory_lock lock_;
    std::optional<io::CheckpointStore> store_{};
    std::filesystem::path last_checkpoint_{};

    std::int64_t total_ = 0, step_ = 0, epoch_ = 0, cursor_ = 0, epochs_completed_ = 0;
    std::vector<std::int64_t> order_{};
    std::optional<double> best_loss_{};
    std::int64_t best_step_ = -1;
    int bad_validations_ = 0;
    bool stopped_ = false, finished_ = false;
    double loss_mean_ = 0;
    std::int64_t loss_count_ = 0;
};

/// Runs the finetune loop once (see `Finetuner`).
template <class Model, class Optimizer, class Schedule, class Loss = CrossEntropy>
FinetuneResult finetune(Model& model, Optimizer& optimizer, const Schedule& schedule,
                        const data::SequenceDataset& train, const data::SequenceDataset* validation,
                        const FinetuneConfig& config, Loss loss = {},
                        FinetuneOptions<typename Model::scalar_type> options = {}) {
    Finetuner<Model, Optimizer, Schedule, Loss> f(model, optimizer, schedule, train, validation, config,
                                                  std::move(loss), std::move(options));
    return f.run();
}

}  // namespace distill::train

BOOST_HANA_ADAPT_STRUCT(distill::train::FinetuneConfig, num_epochs, max_steps, batch_size, grad_accum, grad_clip, seed,
                        eval_every, eval_batch_size, patience, min_delta, checkpoint_every, keep_last_n, log_every,
                        explosion_factor, explosion_warmup, output_dir, resume, quiet);
