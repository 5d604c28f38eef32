// Fuzz target: strict JSON reflection (io::from_json) into the configs a job holds, then their
// validate(). The first input byte picks the struct; the rest is the JSON text. Mode 12 is a whole
// job file: parse_job, then its student and teacher sections as the Distiller reads them. A loss::Sum config is
// also used to build the loss, which sizes its projections from the config and fixed model dims.

#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "distill/data/chat.hpp"
#include "distill/data/jsonl.hpp"
#include "distill/error.hpp"
#include "distill/io/reflect.hpp"
#include "distill/loss/attention_kl.hpp"
#include "distill/loss/attention_relation.hpp"
#include "distill/loss/hard_ce.hpp"
#include "distill/loss/hidden_mse.hpp"
#include "distill/loss/jsd.hpp"
#include "distill/loss/reverse_kl.hpp"
#include "distill/loss/soft_kl.hpp"
#include "distill/loss/sum.hpp"
#include "distill/optim/adam.hpp"
#include "distill/optim/schedule.hpp"
#include "distill/optim/sgd.hpp"
#include "distill/pipeline/generate.hpp"
#include "distill/pipeline/job.hpp"
#include "distill/student/transformer.hpp"
#include "distill/teacher.hpp"
#include "distill/teacher/cache.hpp"
#include "distill/teacher/model.hpp"
#include "distill/train/finetune.hpp"

namespace {

using Loss = distill::loss::Sum<distill::loss::SoftKL, distill::loss::TopKSoftKL, distill::loss::ReverseKL,
                                distill::loss::JSD, distill::loss::HardCE, distill::loss::HiddenMSE,
                                distill::loss::AttentionKL, distill::loss::AttentionRelation>;

template <class Config>
Config read(const nlohmann::json& j) {
    Config c{};
    distill::io::from_json(j, c, "config");
    c.validate("config");
    // What was read writes back and reads again to the same JSON.
    const nlohmann::json out = distill::io::to_json(c);
    Config again{};
    distill::io::from_json(out, again, "config");
    if (distill::io::to_json(again) != out) __builtin_trap();
    return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace distill;
    if (size < 1) return 0;
    const nlohmann::json j = nlohmann::json::parse(data + 1, data + size, nullptr, false);
    if (j.is_discarded()) return 0;
    try {
        switch (data[0] % 13) {
            case 0:
                (void)read<train::FinetuneConfig>(j);
                break;
            case 1:
                (void)read<teacher::Sampling>(j);
                break;
            case 2: {
                Loss::config c{};
                io::from_json(j, c, "loss");
                const loss::dims d{.student = {.vocab_size = 8, .d_model = 4, .n_layers = 2, .n_heads = 2},
                                   .teacher = {.vocab_size = 8, .d_model = 6, .n_layers = 3, .n_heads = 3},
                                   .max_batch = 2,
                                   .max_length = 4};
                const Loss l(c, d);
                (void)l;
                break;
            }
            case 3:
                (void)read<student::TransformerConfig>(j);
                break;
            case 4:
                (void)read<data::JsonlConfig>(j);
                break;
            case 5:
                (void)read<optim::AdamConfig>(j);
                break;
            case 6:
                (void)read<optim::ScheduleConfig>(j);
                break;
            case 7:
                (void)read<optim::SgdConfig>(j);
                break;
            case 8:
                (void)read<teacher::ModelConfig>(j);
                break;
            case 9:
                (void)read<teacher::CacheConfig>(j);
                break;
            case 10:
                (void)read<GenerateConfig>(j);
                break;
            case 11:
                (void)read<data::ChatTemplateConfig>(j);
                break;
            default: {
                const Job job = parse_job(j);
                (void)read<student::TransformerConfig>(job.student);
                if (job.teacher_kind() == "model") (void)read<teacher::ModelConfig>(job.teacher_config());
                if (job.teacher_kind() == "cache") (void)read<teacher::CacheConfig>(job.teacher_config());
                break;
            }
        }
    } catch (const distill::error&) {
    }
    return 0;
}
