// Fuzz target: the readers of a Hugging Face checkpoint's config.json (io::hf::Directory,
// transformer_config / checked_transformer_config for gpt2, llama, qwen2 and phi3, encoder_config for
// bert with its sentence-transformers 1_Pooling/config.json), then loading the model the config
// describes from the tensors beside it. The first input byte picks the committed transformers
// checkpoint whose model.safetensors lies beside the config (tests/reference/fixtures/hf/); the rest
// is config.json, optionally followed by the line "--8<--" and a 1_Pooling/config.json.

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "distill/device/cpu.hpp"
#include "distill/error.hpp"
#include "distill/io/hf.hpp"
#include "distill/student/encoder.hpp"
#include "distill/student/transformer.hpp"
#include "fuzz_common.hpp"

namespace fs = std::filesystem;

namespace {

constexpr std::array<const char*, 6> families = {"gpt2", "gpt2-bf16", "llama", "qwen2", "phi3", "bert"};

// One directory per fixture on tmpfs (when there is one), holding a copy of its model.safetensors;
// config.json and 1_Pooling/config.json are rewritten per input.
const std::array<fs::path, families.size()>& directories() {
    static const distill::fuzz::ScratchDir scratch("distill-fuzz-hf-config");
    static const auto dirs =
        distill::fuzz::fixture_copies(scratch, families, DISTILL_FIXTURE_DIR, "model.safetensors", "1_Pooling");
    return dirs;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace distill;
    if (size < 1) return 0;
    const fs::path& dir = directories()[data[0] % families.size()];
    std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
    const bool has_pooling = rest.find("\n--8<--\n") != std::string_view::npos;
    fuzz::write_file(dir / "config.json", fuzz::next_part(rest, "\n--8<--\n"));
    if (has_pooling)
        fuzz::write_file(dir / "1_Pooling" / "config.json", rest);
    else
        fs::remove(dir / "1_Pooling" / "config.json");
    try {
        const io::hf::Directory ckpt(dir);
        if (ckpt.model_type() == "bert") {
            const student::EncoderConfig c = io::hf::encoder_config(ckpt);
            io::hf::check_parameter_count(ckpt, c.parameter_count());
            // activations are laid out for 4 positions whatever context_length says
            if (std::int64_t(c.n_layers) * c.n_heads <= (1 << 10) && std::int64_t(c.d_ff) * c.n_layers <= (1 << 16)) {
                student::Encoder<float, device::Cpu> model(c, 1, std::min(c.context_length, 4), device::Cpu(1));
                io::hf::load(ckpt, model);
            }
        } else {
            const student::TransformerConfig c = io::hf::checked_transformer_config(ckpt);
            // A model is built only when it is small: parameters are bounded by the tensors beside the
            // config (checked_transformer_config), but a rotary model's context_length, which sizes
            // the activations and attention maps, is not.
            const std::int64_t T = c.context_length;
            if (T * (c.vocab_size + 4 * c.d_model + c.fc_width()) <= (1 << 18) &&
                T * T * c.n_heads * c.n_layers <= (1 << 20)) {
                student::Transformer<float, device::Cpu> model(c, 1, device::Cpu(1));
                io::hf::load(ckpt, model);
            }
        }
    } catch (const distill::error&) {
    }
    return 0;
}
