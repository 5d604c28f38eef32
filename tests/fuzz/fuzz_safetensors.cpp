// Fuzz target: io::safetensors_file (header, dtypes, shapes, offsets, coverage, the distill checksum),
// reading every tensor, the model config in the metadata, and loading a small model from the file.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "distill/device/cpu.hpp"
#include "distill/error.hpp"
#include "distill/io/safetensors.hpp"
#include "distill/io/weights.hpp"
#include "distill/student/transformer.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static distill::fuzz::MemFile file("safetensors");
    using namespace distill;
    const auto& path = file.set(data, size);
    try {
        const io::safetensors_file f(path);
        for (const auto& t : f.tensors()) {
            if (io::is_floating(t.type)) {
                std::vector<float> v(static_cast<std::size_t>(t.numel()));
                f.read<float>(t, v);
            } else {
                (void)f.read_integers(t);
            }
        }
        const auto cfg = io::load_weights_config<student::TransformerConfig>(f);
        // A model is built only when it is small: the memory a config asks for is bounded by the
        // file's size through load_weights_config's check, but activations are not.
        if (cfg.parameter_count() <= (1 << 16) &&
            std::int64_t(cfg.context_length) * (cfg.vocab_size + 4 * cfg.d_model + cfg.d_ff) <= (1 << 18)) {
            student::Transformer<float, device::Cpu> model(cfg, 1, device::Cpu(1));
            io::load_weights(f, model);
        }
    } catch (const distill::error&) {
    }
    return 0;
}
