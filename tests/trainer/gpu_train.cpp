// tests/trainer/gpu_train.cpp — (label gpu) the trainer on CUDA against its own per-step NVFP4
// export run as the rollout side runs it (the mismatch probe): the same policy, |dlogp| exactly 0
// at every step, for top-k 2, 4 and 8 (each token's expert outputs summed in slot order on both
// sides, model/qwen3_moe.cpp).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <string>

#include "io/json.h"
#include "io/safetensors.h"
#include "tests/common/test_util.h"
#include "trainer/train.h"

using namespace fp4qat;

TEST(GpuTrain, ExportProbeIsExactlyZeroForEveryTopK) {
  FP4QAT_REQUIRE_GPU();
  for (const int64_t k : {2, 4, 8}) {
    SCOPED_TRACE(::testing::Message() << "top-" << k);
    test::TempDir d;
    config::Config c = test::small_moe_run(d.file("run"));
    c.model.num_experts = 16;
    c.model.num_experts_per_tok = k;
    c.train.device = "cuda";
    c.train.dtype = "bf16";
    c.train.batch_size = 8;
    c.train.seq_len = 64;
    c.qat.format = qat::Format::kNVFP4;
    c.exports.formats = {qat::Format::kNVFP4, qat::Format::kBF16};
    c.exports.probe_mismatch = true;
    train::Options o;
    o.quiet = true;
    train::run(c, o);
    std::ifstream f(d.file("run/metrics.jsonl"));
    std::string line;
    int probed = 0;
    while (std::getline(f, line)) {
      if (line.find("\"mismatch_mean\"") == std::string::npos) continue;
      const json::Value v = json::parse(line, "metrics.jsonl");
      EXPECT_EQ(v.at("mismatch_mean").as_double(), 0.0) << line;
      EXPECT_EQ(v.at("mismatch_max").as_double(), 0.0) << line;
      ++probed;
    }
    EXPECT_EQ(probed, c.train.steps);
  }
}

// train.activation_checkpointing on the GPU (bf16, NVFP4 expert QAT, top-8 of 16 experts, both
// backward modes): the forward without a graph and the recomputed one in backward are the same
// arithmetic, so losses, gradient norms and weights equal the run without checkpointing, bit for
// bit; and the run's peak memory is lower.
TEST(GpuTrain, ActivationCheckpointingChangesNoBitAndLowersPeakMemory) {
  FP4QAT_REQUIRE_GPU();
  for (const auto backward : {autograd::Backward::kHighPrecision, autograd::Backward::kDequantized}) {
    SCOPED_TRACE(static_cast<int>(backward));
    test::TempDir d;
    config::Config a = test::small_moe_run(d.file("a"));
    a.model.num_experts = 16;
    a.model.num_experts_per_tok = 8;
    a.model.num_hidden_layers = 4;
    a.model.hidden_size = 256;
    a.model.moe_intermediate_size = 128;
    a.train.device = "cuda";
    a.train.dtype = "bf16";
    a.train.batch_size = 8;
    a.train.seq_len = 256;
    a.train.grad_accum = 2;
    a.qat.format = qat::Format::kNVFP4;
    a.qat.backward = backward;
    a.exports.every = 0;
    train::Options o;
    o.quiet = true;
    const auto ra = train::run(a, o);
    config::Config b = a;
    b.train.out_dir = d.file("b");
    b.train.activation_checkpointing = true;
    const auto rb = train::run(b, o);
    ASSERT_EQ(ra.steps.size(), rb.steps.size());
    for (size_t i = 0; i < ra.steps.size(); ++i) {
      EXPECT_EQ(rb.steps[i].loss, ra.steps[i].loss) << "step " << i + 1;
      EXPECT_EQ(rb.steps[i].grad_norm, ra.steps[i].grad_norm) << "step " << i + 1;
    }
    st::Reader wa(d.file("a/checkpoints/step-3/model.safetensors")), wb(d.file("b/checkpoints/step-3/model.safetensors"));
    for (const auto& t : wa.tensors()) EXPECT_TRUE(test::bytes_equal(wb.view(t.name), wa.view(t.name))) << t.name;
    EXPECT_GT(ra.steps.back().peak_memory_gib, 0.0);
    EXPECT_LT(rb.steps.back().peak_memory_gib, ra.steps.back().peak_memory_gib);
    std::printf("peak memory: %.4f GiB without, %.4f GiB with activation checkpointing\n",
                ra.steps.back().peak_memory_gib, rb.steps.back().peak_memory_gib);
  }
}
