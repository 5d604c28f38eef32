// Fuzz target: a sharded Hugging Face checkpoint's model.safetensors.index.json (io::hf::Directory:
// weight_map, shard names, the shard count bound, every tensor in the shard the index names, no
// tensor in two shards), then the config check against the tensors and loading the model from the
// shards. An input holds the index and the two shards (model-00001-of-00002.safetensors,
// model-00002-of-00002.safetensors) separated by the line "--8<--"; config.json beside them is the
// committed sharded GPT-2 fixture's (tests/reference/fixtures/hf/gpt2-sharded/).

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "distill/device/cpu.hpp"
#include "distill/error.hpp"
#include "distill/io/hf.hpp"
#include "distill/student/transformer.hpp"
#include "fuzz_common.hpp"

namespace fs = std::filesystem;

namespace {}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace distill;
    static const fuzz::ScratchDir scratch("distill-fuzz-hf-index");  // three files are written per input
    static const fs::path dir = [] {
        const fs::path d = scratch.path();
        fs::copy_file(fs::path(DISTILL_FIXTURE_DIR) / "gpt2-sharded" / "config.json", d / "config.json",
                      fs::copy_options::overwrite_existing);
        return d;
    }();
    std::string_view rest(reinterpret_cast<const char*>(data), size);
    fuzz::write_file(dir / "model.safetensors.index.json", fuzz::next_part(rest, "\n--8<--\n"));
    fuzz::write_file(dir / "model-00001-of-00002.safetensors", fuzz::next_part(rest, "\n--8<--\n"));
    fuzz::write_file(dir / "model-00002-of-00002.safetensors", rest);
    try {
        const io::hf::Directory ckpt(dir);
        for (const auto& name : ckpt.tensor_names())
            if (!ckpt.find(name) || ckpt.find(name)->second == nullptr) __builtin_trap();
        const student::TransformerConfig c = io::hf::checked_transformer_config(ckpt);
        student::Transformer<float, device::Cpu> model(c, 1, device::Cpu(1));
        io::hf::load(ckpt, model);
    } catch (const distill::error&) {
    }
    return 0;
}
