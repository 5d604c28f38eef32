// docs/getting-started.md, "A first program": distill a teacher into a student in a few lines.
#include <distill/distill.hpp>

#include <cstdio>

int main() {
    using namespace distill;
    student::Transformer<float, device::Cpu> teacher({.d_model = 128, .n_layers = 4}, 8),
        student({.d_model = 32, .n_layers = 1}, 8);
    teacher.init(1);  // in real use: io::load_weights(io::safetensors_file("teacher.safetensors"), teacher)
    student.init(2);
    using Loss = loss::Sum<loss::SoftKL, loss::AttentionKL>;  // soft labels + attention transfer
    Loss distill_loss({}, loss::dims_of(student, teacher, 8));
    loss::Workspace<float, device::Cpu> ws(distill_loss, loss::dims_of(student, teacher, 8));
    optim::AdamW<float, device::Cpu> opt(student.parameters(), {});
    loss::teacher_outputs<float> from_teacher;
    Rng rng(3);
    for (int step = 0; step < 20; ++step) {
        auto batch = data::make_reversal_batch(rng, 8, 2, 4);  // any (B,T) token batch
        teacher.forward(batch.tokens.data(), 8, batch.length);
        loss::collect_outputs(teacher, from_teacher);
        student.forward(batch.tokens.data(), 8, batch.length);
        opt.zero_grad();
        const float value = distill_loss(ws.begin(student, from_teacher, {}));
        ws.finish();
        student.backward(ws.d_hidden(), ws.d_attention(), ws.d_qkv());
        opt.step(1e-3);
        if (step % 5 == 0) std::printf("step %2d  distillation loss %.4f\n", step, value);
    }
}
