// The quickstart: a GPT-style student learns to reverse short strings with plain SGD, prints its
// loss as it learns, answers a few held-out prompts greedily, and saves its weights.
//
// (The full generate -> finetune -> evaluate distillation pipeline replaces this demonstration once
// the Distiller lands; the building blocks it shows are the ones the Distiller composes.)
//
//   quickstart [--steps N] [--threads N] [--out DIR]

#include <cstdio>
#include <cstdlib>
#include <string>

#include <distill/distill.hpp>

int main(int argc, char** argv) try {
    using namespace distill;
    int max_steps = 2000, threads = 0;
    std::string out = "out/quickstart";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--steps" && i + 1 < argc)
            max_steps = std::atoi(argv[++i]);
        else if (a == "--threads" && i + 1 < argc)
            threads = std::atoi(argv[++i]);
        else if (a == "--out" && i + 1 < argc)
            out = argv[++i];
        else {
            std::fprintf(stderr, "usage: quickstart [--steps N] [--threads N] [--out DIR]\n");
            return 2;
        }
    }
    const device::Cpu cpu = threads > 0 ? device::Cpu(threads) : device::Cpu();
    const student::TransformerConfig cfg{.vocab_size = data::ByteTokenizer::vocab_size(),
                                         .context_length = 11,
                                         .d_model = 64,
                                         .n_layers = 2,
                                         .n_heads = 4,
                                         .d_ff = 256};
    const int B = 32, min_len = 2, max_len = 4;
    student::Transformer<float, device::Cpu> model(cfg, B, cpu);
    model.init(1);
    std::printf("distill %s quickstart: student with %lld parameters, %d threads\n", version(),
                static_cast<long long>(cfg.parameter_count()), cpu.threads());
    std::printf("task: reverse strings of %d-%d letters, e.g. <bos>abc<end>cba<eos>\n\n", min_len, max_len);
    std::printf("%8s %12s\n", "step", "loss");

    Rng rng(2);
    float ema = 0;
    int step = 0;
    for (; step < max_steps; ++step) {
        auto batch = data::make_reversal_batch(rng, B, min_len, max_len);
        model.forward(batch.tokens.data(), B, batch.length);
        const float loss = model.cross_entropy(batch.targets.data());
        model.zero_grad();
        model.backward();
        float* w = model.parameter_data();
        const float* g = model.gradient_data();
        for (std::size_t i = 0; i < model.arena_size(); ++i) w[i] -= 0.3f * g[i];  // plain SGD
        ema = step ? 0.9f * ema + 0.1f * loss : loss;
        if (step % 100 == 0) std::printf("%8d %12.4f\n", step, loss);
        if (ema < 0.01f) break;
    }
    std::printf("%8d %12.4f  (smoothed; stopped)\n\n", step, ema);

    // Greedy answers to held-out prompts: one forward per generated token.
    data::ByteTokenizer tok;
    Rng test_rng(12345);
    int right = 0;
    const int shown = 8;
    auto test = data::make_reversal_batch(test_rng, shown, min_len, max_len);
    for (int i = 0; i < shown; ++i) {
        std::vector<std::int32_t> seq;
        const std::int32_t* row = test.tokens.data() + std::size_t(i) * test.length;
        for (int t = 0; t < test.length; ++t) {
            seq.push_back(row[t]);
            if (row[t] == data::ByteTokenizer::end_of_turn) break;
        }
        const std::string prompt = tok.decode(std::span(seq).subspan(1, seq.size() - 2));
        while (static_cast<int>(seq.size()) < cfg.context_length && seq.back() != data::ByteTokenizer::eos) {
            model.forward(seq.data(), 1, static_cast<int>(seq.size()));
            const float* logits = model.logits().data() + (seq.size() - 1) * std::size_t(cfg.vocab_size);
            seq.push_back(static_cast<std::int32_t>(std::max_element(logits, logits + cfg.vocab_size) - logits));
        }
        std::string answer;
        for (std::size_t t = prompt.size() + 2; t < seq.size() && seq[t] < 256; ++t) answer += char(seq[t]);
        const bool ok = answer == std::string(prompt.rbegin(), prompt.rend());
        right += ok;
        std::printf("  %-6s -> %-6s %s\n", prompt.c_str(), answer.c_str(), ok ? "ok" : "wrong");
    }
    std::printf("\n%d of %d held-out strings reversed exactly\n", right, shown);

    std::filesystem::create_directories(out);
    io::save_weights(std::filesystem::path(out) / "student.safetensors", model);
    std::printf("weights: %s/student.safetensors\n", out.c_str());
    return 0;
} catch (const distill::error& e) {
    std::fprintf(stderr, "quickstart: %s\n", e.what());
    return 1;
}
