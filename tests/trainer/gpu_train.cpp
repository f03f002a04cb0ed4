// tests/trainer/gpu_train.cpp — (label gpu) the trainer on CUDA against its own per-step NVFP4
// export run as the rollout side runs it (the mismatch probe): the same policy, |dlogp| exactly 0
// at every step, for top-k 2, 4 and 8 (each token's expert outputs summed in slot order on both
// sides, model/qwen3_moe.cpp).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <string>

#include "io/json.h"
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
