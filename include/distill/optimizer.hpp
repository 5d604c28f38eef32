#pragma once
/// @file optimizer.hpp
/// The `optimizer_policy` concept: what turns gradients into parameter updates.
///
/// **What an optimizer represents.** An object built once from a list of `Parameter<T>` views
/// gathered from every owner of trainable tensors (the student, and loss terms with learned
/// projections; see `optim::gather`) and a Hana-reflected config. It owns its state (momenta,
/// second moments) in one arena of its own, laid out at construction to mirror the parameters, and
/// never allocates afterwards. The learning rate is *not* part of its config: the training loop asks
/// a schedule (`optim/schedule.hpp`) for the rate of each step and passes it to `step`, so the
/// schedule is a pure function of the step number and a checkpoint only needs the step.
///
/// **Minimal complete definition** (for an optimizer `o` over scalar type `T`):
/// - `scalar_type` (= `T`), `device_type` (a `device_policy`), `config_type` (Hana-reflected, with
///   `validate(path)`);
/// - `o.step(lr)` — one update of every parameter from its gradient at learning rate `lr`;
/// - `o.zero_grad()` — zeroes every parameter's gradient (all owners at once);
/// - `o.steps()` / `o.set_steps(n)` — updates taken so far (Adam's bias correction and SGD's
///   first-momentum step read it; checkpoints save and restore it);
/// - `o.parameters()` — the parameters it updates, in construction order;
/// - `o.state()` — named views of every state tensor (`exp_avg.<param>`, ...), in a fixed order;
/// - `o.config()`.
///
/// **Laws.**
/// - *State is complete:* restoring the parameters, the values of `state()` and `steps()` into a
///   fresh optimizer makes every later update bit-identical to the uninterrupted one (resume relies
///   on it; tested in `tests/unit-training.cpp`).
/// - *Deterministic:* the update is element-wise, so it is bit-identical for any thread count.
/// - *Reference semantics:* `optim::Sgd`, `optim::Adam` and `optim::AdamW` follow `torch.optim.SGD`,
///   `Adam` and `AdamW` (1.13, `foreach=False`) formula for formula, including the bias correction;
///   20-step trajectories match PyTorch's to a relative 1e-5 (`tests/reference/make_optim_golden.py`).
/// - Gradients are read, never written, by `step`.
///
/// **Example.**
/// @code
/// student::Transformer<float, device::Cpu> model(cfg, 8);
/// optim::AdamW<float, device::Cpu> opt(optim::gather(model.parameters(), loss.parameters()),
///                                      {.weight_decay = 0.1});
/// optim::WarmupThen<optim::CosineDecay> schedule{.warmup_steps = 100, .then = {.base_lr = 3e-4, .steps = 900}};
/// for (std::int64_t s = 0; s < 1000; ++s) {
///     opt.zero_grad();
///     /* forward, loss, backward */
///     optim::clip_grad_norm<float>(opt.parameters(), 1.0, model.device());
///     opt.step(schedule.lr(s));
/// }
/// @endcode

#include <concepts>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "distill/device.hpp"
#include "distill/parameter.hpp"
#include "distill/tensor.hpp"

namespace distill {

/// One named tensor of optimizer state (a view into the optimizer's state arena), shaped like the
/// parameter it belongs to. Checkpoints save it under `name`.
/// @tparam T scalar type.
template <class T>
struct StateTensor {
    std::string name{};
    Tensor<T> value{};
};

/// An optimizer over `Parameter<scalar_type>` lists (see the file comment for the full contract).
template <class O>
concept optimizer_policy = device_policy<typename O::device_type> &&
    requires(O& o, const O& co, double lr, std::int64_t n) {
    typename O::scalar_type;
    typename O::config_type;
    o.step(lr);
    o.zero_grad();
    { co.steps() } -> std::convertible_to<std::int64_t>;
    o.set_steps(n);
    { co.parameters() } -> std::convertible_to<std::span<const Parameter<typename O::scalar_type>>>;
    { co.state() } -> std::convertible_to<std::span<const StateTensor<typename O::scalar_type>>>;
    { co.config() } -> std::convertible_to<const typename O::config_type&>;
};

}  // namespace distill
