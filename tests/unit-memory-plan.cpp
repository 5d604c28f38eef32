// The memory plan (eval/memory_plan.hpp, student/transformer_memory.hpp): the byte counts computed
// from a config without allocating equal the arenas the constructed objects allocate, and a job whose
// plan exceeds its memory_limit_gib is refused before the run allocates or writes anything.

#include <doctest/doctest.h>

#include <filesystem>
#include <string>

#include "distill/distill.hpp"
#include "distill/eval/memory_plan.hpp"
#include "distill/student/transformer_memory.hpp"
#include "teacher_fixtures.hpp"
#include "testing.hpp"

using namespace distill;

namespace {

student::TransformerConfig gpt2_layout() {
    return {.vocab_size = 61, .context_length = 12, .d_model = 24, .n_layers = 3, .n_heads = 3, .d_ff = 40};
}

student::TransformerConfig llama_layout() {
    student::TransformerConfig c = gpt2_layout();
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.norm = "rmsnorm";
    c.positions = "rope";
    c.mlp = "swiglu";
    c.d_ff = 36;
    c.qkv_bias = true;
    c.proj_bias = c.mlp_bias = c.tie_embeddings = false;
    return c;
}

}  // namespace

TEST_CASE("memory plan: transformer_memory equals the arenas a Transformer allocates") {
    using student::activations;
    for (bool llama : {false, true})
        for (int lora : {0, 1, 2})  // none; q,v; every target with dropout
            for (activations mode : {activations::training, activations::checkpointed, activations::inference,
                                     activations::training_fused})
                for (int batch : {1, 3}) {
                    student::TransformerConfig c = llama ? llama_layout() : gpt2_layout();
                    if (lora == 1) c.lora = {.rank = 4, .alpha = 8, .dropout = 0, .targets = {"q", "v"}};
                    if (lora == 2) {
                        c.lora = {.rank = 2, .alpha = 4, .dropout = 0.1, .targets = {"q", "k", "v", "o", "up", "down"}};
                        if (llama) c.lora.targets.insert(c.lora.targets.end(), {"gate", "head"});
                    }
                    INFO((llama ? "llama" : "gpt2"), " lora ", lora, " ", student::activations_name(mode), " batch ",
                         batch);
                    const student::TransformerMemory m = student::transformer_memory<float>(c, batch, mode);
                    student::Transformer<float, device::Cpu> net(c, batch, device::Cpu(1), mode);
                    // every mode but training attends fused where the kernels are (checkpointed included)
                    CHECK(net.fused_attention() == (DISTILL_CPU_FUSED_ATTENTION && mode != activations::training));
                    CHECK(m.activations == net.activation_bytes());
                    CHECK(m.backward_buffers == net.backward_buffer_bytes());
                    CHECK(m.gradients() == net.gradient_bytes());
                    CHECK(m.base_weights == sizeof(float) * net.arena_size());
                    CHECK(m.total() == net.arena_bytes());
                    REQUIRE(m.trainable.size() == net.parameters().size());
                    for (std::size_t i = 0; i < m.trainable.size(); ++i) {
                        CHECK(m.trainable[i].first == net.parameters()[i].name);
                        CHECK(m.trainable[i].second == net.parameters()[i].value.numel());
                    }
                    CHECK(student::kv_cache_bytes<float>(c, batch) == net.make_cache(batch).bytes());
                    // a device without the fused attention kernels keeps (T,T) maps in every mode
                    student::Transformer<float, device::Reference> ref(c, batch, device::Reference{}, mode);
                    const auto r = student::transformer_memory<float, device::Reference>(c, batch, mode);
                    CHECK(r.activations == ref.activation_bytes());
                    CHECK(r.backward_buffers == ref.backward_buffer_bytes());
                    CHECK(!ref.fused_attention());
                    // a fused mode holds a (B,H,T) log-sum-exp per kept layer instead of the map
                    if (net.fused_attention()) CHECK(m.activations < r.activations);
                }
}

TEST_CASE("memory plan: the table, and check_fits refuses with it") {
    eval::MemoryPlan plan;
    plan.add("student weights", 3 << 20, "786,432 fp32");
    plan.add("teacher", 5 << 20, "in process", true);
    CHECK(plan.total() == 8 << 20);
    CHECK(plan.to_allocate() == 3 << 20);
    const std::string table = plan.table();
    CHECK(table.find("student weights") != std::string::npos);
    CHECK(table.find("3.0 MiB") != std::string::npos);
    CHECK(table.find("(loaded)") != std::string::npos);
    CHECK(table.find("total") != std::string::npos);
    CHECK_NOTHROW(eval::check_fits(plan, {8 << 20, "memory_limit_gib", true}, "memory_limit_gib"));
    CHECK_THROWS_WITH_AS(eval::check_fits(plan, {(8 << 20) - 1, "memory_limit_gib", true}, "memory_limit_gib"),
                         doctest::Contains("memory_limit_gib: the run needs 8.0 MiB"), config_error);
    // MemAvailable is free memory: what is loaded already is not compared with it
    CHECK_NOTHROW(eval::check_fits(plan, {3 << 20, "MemAvailable", false}, "memory"));
    CHECK_THROWS_AS(eval::check_fits(plan, {(3 << 20) - 1, "MemAvailable", false}, "memory"), config_error);
    CHECK(eval::memory_budget(0.5, plan).bytes == std::int64_t(1) << 29);
    // a transient part adds to the parts before it only: the peak is the larger of the two moments
    eval::MemoryPlan loading = plan;
    loading.add_transient("reading student_weights", 4 << 20);
    loading.add("optimizer state", 2 << 20);
    CHECK(loading.total() == (3 << 20) + (5 << 20) + (4 << 20));  // while reading: 12 MiB > 10 MiB after
    CHECK(loading.to_allocate() == (3 << 20) + (4 << 20));
    loading.add("loss workspace", 3 << 20);
    CHECK(loading.total() == (3 << 20) + (5 << 20) + (2 << 20) + (3 << 20));  // after: 13 MiB > 12 MiB
    CHECK(loading.table().find("(freed after loading)") != std::string::npos);
    const eval::MemoryBudget machine = eval::memory_budget(0, plan);  // this machine's: some memory, named
    CHECK(machine.bytes > 0);
    CHECK((machine.source == "MemAvailable" || machine.source == "cgroup memory.max"));
}

TEST_CASE("memory plan: a Distiller's plan is the arenas of the run, and a job over memory_limit_gib is refused") {
    namespace fs = std::filesystem;
    using D = Distiller<teacher::Model<student::Transformer>, student::Transformer,
                        loss::Sum<loss::SoftKL, loss::HardCE>, optim::AdamW, device::Cpu>;
    // a world of its own (a tiny teacher, a few prompts): MathWorld's directory is unit-distiller's
    distill::testing::TempDir dir("memory-plan");
    distill::testing::write_tiny_teacher(dir / "teacher.safetensors", 1, 96);
    std::string prompts;
    for (int i = 0; i < 8; ++i) prompts += nlohmann::json{{"prompt", "add " + std::to_string(i)}}.dump() + "\n";
    distill::testing::write_text(dir / "train.jsonl", prompts);
    auto make_job = [&](const std::string& out) {
        return nlohmann::json{{"teacher", {{"kind", "model"}, {"weights", (dir / "teacher.safetensors").string()}}},
                              {"student",
                               {{"vocab_size", 263},
                                {"context_length", 96},
                                {"d_model", 24},
                                {"n_layers", 1},
                                {"n_heads", 2},
                                {"d_ff", 48}}},
                              {"training_data", (dir / "train.jsonl").string()},
                              {"task_type", "math"},
                              {"hyperparameters", {{"batch_size", 16}, {"max_steps", 2}}},
                              {"loss", {{"soft_kl", {{"weight", 1.0}}}, {"hard_ce", {{"weight", 0.5}}}}},
                              {"output_dir", (dir / out).string()}};
    };
    teacher::ModelConfig tc{
        .weights = (dir / "teacher.safetensors").string(), .max_batch = 16, .keep_activations = false};
    teacher::Model<student::Transformer> t(tc, device::Cpu(1));
    for (bool lora : {false, true}) {
        INFO("lora ", lora);
        nlohmann::json j = make_job(lora ? "memplan-lora" : "memplan");
        j["teacher"]["keep_activations"] = false;
        if (lora) j["lora"] = {{"rank", 4}, {"alpha", 8}, {"targets", {"qkv", "o"}}};
        const Job job = parse_job(j);
        D d(job, t, device::Cpu(1), {.quiet = true});
        const eval::MemoryPlan plan = d.memory_plan();
        // the same objects the finetune stage builds, allocated here to compare
        student::TransformerConfig sc = d.setup().student;
        sc.lora = job.lora;
        const int B = job.hyperparameters.loop.batch_size;
        // SoftKL + HardCE read no attention map: the stage trains in training_fused where the device
        // attends fused (student::training_activations), and the plan's row says so
        const student::activations mode = student::training_activations<float, device::Cpu>(false, false);
        CHECK(mode ==
              (DISTILL_CPU_FUSED_ATTENTION ? student::activations::training_fused : student::activations::training));
        student::Transformer<float, device::Cpu> s(sc, B, device::Cpu(1), mode);
        for (const auto& p : plan.parts())
            if (p.name == "student activations")
                CHECK(p.detail.starts_with(DISTILL_CPU_FUSED_ATTENTION ? "training_fused, fused attention, batch 16"
                                                                       : "training, unfused attention, batch 16"));
        optim::AdamW<float, device::Cpu> opt(s.parameters(), {}, device::Cpu(1));
        CHECK(plan.bytes_of(lora ? "student weights (frozen)" : "student weights") ==
              std::int64_t(sizeof(float) * s.arena_size()));
        CHECK(plan.bytes_of("student gradients") == std::int64_t(s.gradient_bytes()));
        CHECK(plan.bytes_of("optimizer state") == std::int64_t(opt.state_bytes()));
        CHECK(plan.bytes_of("student activations") ==
              std::int64_t(s.activation_bytes() + sizeof(std::int32_t) * B * sc.context_length));
        CHECK(plan.bytes_of("teacher") == std::int64_t(t.network().arena_bytes()));
        const std::int64_t student_total = plan.bytes_of(lora ? "student weights (frozen)" : "student weights") +
                                           plan.bytes_of("student LoRA adapters") + plan.bytes_of("student gradients") +
                                           plan.bytes_of("student activations");
        CHECK(student_total == std::int64_t(s.arena_bytes()));
        CHECK(plan.bytes_of("KV cache (on-policy sampling)") == 0);
        if (!lora) {  // on-policy sampling: the student's cache and the matrices each prefill packs into it
            nlohmann::json sampled = j;
            sampled["output_dir"] = (dir / "memplan-on-policy").string();
            sampled["on_policy"] = {{"lambda", 0.5}};
            const D od(parse_job(sampled), t, device::Cpu(1), {.quiet = true});
            const std::size_t packed = student::kv_cache_packed_bytes<float>(sc, device::Cpu(1));
            CHECK(od.memory_plan().bytes_of("KV cache (on-policy sampling)") ==
                  std::int64_t(s.make_cache(B).bytes() + packed));
            MESSAGE("on-policy KV cache: " << s.make_cache(B).bytes() << " bytes of keys and values, " << packed
                                           << " of packed matrices");
        }
        CHECK(plan.bytes_of("loss workspace") > 0);
        if (lora) CHECK(plan.bytes_of("student gradients") < plan.bytes_of("student LoRA adapters") + 64 * 4);

        // a limit below the plan: refused at construction, the table in the message, nothing written
        nlohmann::json tiny = j;
        tiny["memory_limit_gib"] = 0.001;
        tiny["output_dir"] = (dir / "memplan-refused").string();
        try {
            D refused(parse_job(tiny), t, device::Cpu(1), {.quiet = true});
            FAIL("a job over its memory_limit_gib was not refused");
        } catch (const config_error& e) {
            const std::string what = e.what();
            CHECK(what.find("memory_limit_gib: the run needs") != std::string::npos);
            for (const char* part : {"student weights", "student gradients", "optimizer state", "student activations",
                                     "teacher", "loss workspace", "total"})
                CHECK_MESSAGE(what.find(part) != std::string::npos, part);
        }
        CHECK(!fs::exists(dir / "memplan-refused"));
    }
    {  // activation checkpointing: the plan is the checkpointed student's arena, fused where the device is
        nlohmann::json j = make_job("memplan-checkpointed");
        j["activation_checkpointing"] = true;
        const Job job = parse_job(j);
        D d(job, t, device::Cpu(1), {.quiet = true});
        const eval::MemoryPlan plan = d.memory_plan();
        const int B = job.hyperparameters.loop.batch_size;
        const student::TransformerConfig sc = d.setup().student;
        student::Transformer<float, device::Cpu> s(sc, B, device::Cpu(1), student::activations::checkpointed);
        CHECK(plan.bytes_of("student activations") ==
              std::int64_t(s.activation_bytes() + sizeof(std::int32_t) * B * sc.context_length));
        for (const auto& p : plan.parts())
            if (p.name == "student activations")
                CHECK(p.detail.starts_with(DISTILL_CPU_FUSED_ATTENTION ? "checkpointed, fused attention, batch 16"
                                                                       : "checkpointed, unfused attention, batch 16"));
    }
    nlohmann::json bad = make_job("memplan-bad");
    bad["memory_limit_gib"] = -1;
    CHECK_THROWS_WITH_AS(parse_job(bad), doctest::Contains("memory_limit_gib: must be >= 0"), config_error);
}
