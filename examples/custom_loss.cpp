// A loss term written by a user, plugged into loss::Sum next to the library's SoftKL without
// touching the library: a cosine loss between the student's and the teacher's final hidden states.
// It is a `loss_policy` because it has what the concept asks for (a name, the signals it needs, a
// Hana-reflected config, a constructor from config and dims, and a call that returns the value and
// adds its gradient to the sinks) — no base class, no registration.
//
// The program distills a deeper teacher into a student for a few dozen plain SGD steps on one
// batch of random tokens and checks that both terms went down.
//
//   custom_loss [--steps 40]

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <boost/hana/adapt_struct.hpp>
#include <boost/hana/set.hpp>

#include "distill/distill.hpp"

namespace my {

/// Keys of the term's JSON object.
struct FinalCosineConfig {
    double eps = 1e-8;  ///< floor of the vector norms
};

/// 1 − cos(student final hidden state, teacher final hidden state), averaged over the positions
/// that count. Needs the teacher's hidden states; the widths must agree (no projection here).
class FinalCosine {
public:
    using config = FinalCosineConfig;
    static constexpr char name[] = "final_cosine";
    static constexpr auto needs = boost::hana::make_set(distill::signal::hidden_states);

    FinalCosine(const config& c, const distill::loss::dims& d) : cfg_(c) {
        if (d.student.d_model != d.teacher.d_model)
            throw distill::config_error("final_cosine", "needs equal widths, got student " +
                                                            std::to_string(d.student.d_model) + " and teacher " +
                                                            std::to_string(d.teacher.d_model));
    }

    template <class T, class Device>
    T operator()(const distill::loss::context<T, Device>& ctx) {
        const int last = static_cast<int>(ctx.student->hidden_states.size()) - 1;
        const auto& s = ctx.student->hidden_states.back();  // (B,T,C), after the final LayerNorm
        const auto& t = ctx.teacher->hidden_states.back();
        const auto grad = ctx.d_hidden_accumulate(last);  // zeroed on first touch; we add to it
        const std::int64_t N = std::int64_t(ctx.batch()) * ctx.length(), C = s.size(2), count = ctx.count();
        if (count == 0) return T(0);
        double value = 0;
        for (std::int64_t n = 0; n < N; ++n) {
            if (!ctx.counts(n)) continue;
            const T* x = s.data() + n * C;
            const T* y = t.data() + n * C;
            T dot = 0, xx = 0, yy = 0;
            for (std::int64_t c = 0; c < C; ++c) {
                dot += x[c] * y[c];
                xx += x[c] * x[c];
                yy += y[c] * y[c];
            }
            const T nx = std::max(std::sqrt(xx), T(cfg_.eps)), ny = std::max(std::sqrt(yy), T(cfg_.eps));
            const T cos = dot / (nx * ny);
            value += 1.0 - double(cos);
            // d(1 - cos)/dx = -(y / (|x||y|) - cos x / |x|²), times the weight and 1/count
            const T scale = ctx.weight / T(count);
            for (std::int64_t c = 0; c < C; ++c)
                grad.data()[n * C + c] -= scale * (y[c] / (nx * ny) - cos * x[c] / (nx * nx));
        }
        return static_cast<T>(value / double(count));
    }

    // optional: names the term in the compile-time message when a teacher lacks hidden states
    DISTILL_LOSS_TERM_CHECKS(my::FinalCosine)

private:
    config cfg_;
};

/// What an in-process teacher declares it provides (the library's teacher::Model provides these and more).
struct InProcessTeacher {
    static constexpr auto provides =
        boost::hana::make_set(distill::signal::tokens, distill::signal::logits, distill::signal::hidden_states);
};

}  // namespace my

BOOST_HANA_ADAPT_STRUCT(my::FinalCosineConfig, eps);

int main(int argc, char** argv) {
    using namespace distill;
    int steps = 40;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--steps" && i + 1 < argc) {
            steps = std::atoi(argv[++i]);
        } else {
            std::fprintf(stderr, "usage: custom_loss [--steps N]\n");
            return 2;
        }
    }

    // the library's term and the user's, weighted from JSON like any job's loss section
    using Loss = loss::Sum<loss::SoftKL, my::FinalCosine>;
    static_assert(loss::loss_policy<Loss, float, device::Cpu>);
    static_assert(loss::check_needs<my::InProcessTeacher, Loss>());
    Loss::config cfg;
    io::from_json(nlohmann::json::parse(R"({"soft_kl": {"weight": 1.0, "temperature": 2.0},
                                             "final_cosine": {"weight": 0.5}})"),
                  cfg, "loss");

    const int B = 4, T = 32, V = 64;
    const student::TransformerConfig scfg{
        .vocab_size = V, .context_length = T, .d_model = 32, .n_layers = 1, .n_heads = 2, .d_ff = 64};
    const student::TransformerConfig tcfg{
        .vocab_size = V, .context_length = T, .d_model = 32, .n_layers = 3, .n_heads = 4, .d_ff = 128};
    student::Transformer<float, device::Cpu> student(scfg, B), teacher(tcfg, B);
    student.init(1);
    teacher.init(2);
    for (auto& p : teacher.parameters())  // a teacher with sharper opinions than its initialization
        for (std::int64_t i = 0; i < p.value.numel(); ++i)
            if (p.kind == parameter_kind::weight || p.kind == parameter_kind::embedding) p.value.data()[i] *= 6.0f;

    const loss::dims dims = loss::dims_of(student, teacher, B);
    Loss loss(cfg, dims);
    loss::Workspace<float, device::Cpu> ws(loss, dims);

    Rng rng(3);
    std::vector<std::int32_t> tokens(std::size_t(B) * T);
    std::vector<std::uint8_t> mask(tokens.size(), 1);
    for (int b = 0; b < B; ++b) mask[std::size_t(b) * T] = 0;  // the first position of each row is "prompt"
    loss::teacher_outputs<float> teacher_out;
    std::array<double, 2> first{}, last{};
    for (auto& t : tokens) t = std::int32_t(rng.below(V));
    teacher.forward(tokens.data(), B, T);  // one fixed batch: the teacher's outputs are computed once
    loss::collect_outputs(teacher, teacher_out);
    for (int step = 0; step < steps; ++step) {
        student.forward(tokens.data(), B, T);
        student.zero_grad();
        auto ctx = ws.begin(student, teacher_out, Tensor<const std::uint8_t>(mask.data(), {B, T}));
        const float total = loss(ctx);
        ws.finish();
        student.backward(ws.d_hidden(), ws.d_attention(), ws.d_qkv());
        for (auto& p : student.parameters())  // plain SGD
            for (std::int64_t i = 0; i < p.value.numel(); ++i) p.value.data()[i] -= 0.5f * p.grad.data()[i];
        if (step == 0) first = loss.values();
        last = loss.values();
        if (step % 10 == 0 || step == steps - 1)
            std::printf("step %3d  total %.4f  soft_kl %.4f  final_cosine %.4f\n", step, total, last[0], last[1]);
    }
    const bool learned = last[0] < first[0] && last[1] < first[1];
    std::printf("%s\n", learned ? "both terms went down" : "the loss did not go down");
    return learned ? 0 : 1;
}
