// A user's program, built four ways by the packaging tests (find_package, add_subdirectory,
// FetchContent, and the single header with one compiler command): online distillation of a deeper
// teacher into a small student with soft KL + hidden-state matching + attention transfer, AdamW.
// It fails (exit 1) unless the distillation loss goes down.
#include <distill/distill.hpp>

#include <cstdio>

int main() {
    using namespace distill;
    using Loss = loss::Sum<loss::SoftKL, loss::HiddenMSE, loss::AttentionKL>;
    const student::TransformerConfig scfg{
        .vocab_size = 263, .context_length = 11, .d_model = 32, .n_layers = 1, .n_heads = 2, .d_ff = 64};
    const student::TransformerConfig tcfg{
        .vocab_size = 263, .context_length = 11, .d_model = 64, .n_layers = 2, .n_heads = 4, .d_ff = 128};
    const int B = 8;
    student::Transformer<float, device::Cpu> student(scfg, B), teacher(tcfg, B);
    student.init(1);
    teacher.init(2);

    Loss::config cfg;
    io::from_json(nlohmann::json::parse(R"({"soft_kl": {"weight": 1.0, "temperature": 2.0},
                                             "hidden_mse": {"weight": 0.5}, "attention_kl": {"weight": 0.5}})"),
                  cfg, "loss");
    const loss::dims dims = loss::dims_of(student, teacher, B);
    Loss distill_loss(cfg, dims);
    loss::Workspace<float, device::Cpu> ws(distill_loss, dims);
    optim::AdamW<float, device::Cpu> opt(optim::gather(student.parameters(), distill_loss.parameters()), {});

    Rng rng(3);
    loss::teacher_outputs<float> teacher_out;
    std::vector<std::uint8_t> mask;
    float first = 0, last = 0;
    for (int step = 0; step < 30; ++step) {
        auto batch = data::make_reversal_batch(rng, B, 2, 4);
        mask.assign(batch.targets.size(), 0);
        for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = batch.targets[i] >= 0;
        teacher.forward(batch.tokens.data(), B, batch.length);  // live teacher: logits, hidden states, attention
        loss::collect_outputs(teacher, teacher_out);
        student.forward(batch.tokens.data(), B, batch.length);
        opt.zero_grad();
        auto ctx = ws.begin(student, teacher_out, Tensor<const std::uint8_t>(mask.data(), {B, batch.length}));
        last = distill_loss(ctx);
        ws.finish();
        student.backward(ws.d_hidden(), ws.d_attention(), ws.d_qkv());
        opt.step(3e-3);
        if (step == 0) first = last;
    }
    std::printf("distill %s consumer: distillation loss %.4f -> %.4f\n", version(), first, last);
    return last < first ? 0 : 1;
}
