// tests/dist/gpu_dist.cpp — multi-GPU training through NCCL (label gpu; skipped with fewer
// than 2 GPUs): 2 processes of build/fp4qat on cuda:0 and cuda:1 against the equivalent
// 1-process run (grad_accum 2, the same global batch), data parallel (dp=2) and expert parallel
// (ep=2). bf16 compute and CUDA's atomics make bitwise equality no goal here: the losses agree
// within bf16 tolerance, and the exports have the single-process layout (every expert, one index).
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cmath>
#include <map>
#include <sstream>

#include "io/hf_folder.h"
#include "io/fs.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "tests/dist/dist_util.h"

using fp4qat::test::TempDir;
namespace json = fp4qat::json;

namespace {

std::vector<std::string> recipe(const std::string& out, int64_t grad_accum,
                                const std::vector<std::string>& extra = {}) {
  return fp4qat::test::recipe_args(
      "train", "default.yaml",
      {"train.steps=4", "train.eval_every=0", "train.checkpoint_every=0", "train.device=cuda",
       "optim.warmup_steps=1", "qat.format=nvfp4", "export.formats=[nvfp4]", "parallel.timeout_s=120",
       "train.grad_accum=" + std::to_string(grad_accum), "train.out_dir=" + out},
      extra);
}

std::vector<double> losses(const std::string& out) {
  std::vector<double> v;
  std::istringstream in(fp4qat::test::read_bytes(out + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) {
      const json::Value j = json::parse(line, "metrics.jsonl");
      if (const json::Value* l = j.find("loss")) v.push_back(l->as_double());
    }
  return v;
}

std::map<std::string, std::vector<int64_t>> shapes(const std::string& dir) {
  std::map<std::string, std::vector<int64_t>> out;
  const fp4qat::hf::FolderReader files(dir);
  for (const auto& [name, file] : files.where()) {
    fp4qat::st::Reader r(dir + "/" + file);
    out[name] = r.view(name).sizes().vec();
  }
  return out;
}

}  // namespace

TEST(GpuDist, TwoGpusOverNcclMatchOneGpu) {
  FP4QAT_REQUIRE_GPU();
  if (torch::cuda::device_count() < 2) GTEST_SKIP() << "fewer than 2 GPUs";
  ASSERT_TRUE(fp4qat::test::have_nccl()) << "a CUDA build must have the NCCL backend";
  TempDir d;
  const std::string one = d.file("one");
  const auto r1 = fp4qat::test::run_fp4qat(recipe(one, 2));
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  const auto l1 = losses(one);
  ASSERT_EQ(l1.size(), 4u);
  for (const char* mode : {"parallel.dp=2", "parallel.ep=2"}) {
    const std::string two = d.file(mode[9] == 'd' ? "dp" : "ep");
    const auto rs = fp4qat::test::run_ranks(2, recipe(two, 1, {"--set", mode}), 300);
    for (const auto& r : rs) ASSERT_EQ(r.exit_code, 0) << mode << ": " << r.err;
    const auto l2 = losses(two);
    ASSERT_EQ(l2.size(), 4u) << mode;
    for (size_t i = 0; i < l1.size(); ++i)
      EXPECT_NEAR(l1[i], l2[i], 2e-2 * std::abs(l1[i])) << mode << " step " << i + 1;
    EXPECT_EQ(shapes(one + "/exports/latest/nvfp4"), shapes(two + "/exports/latest/nvfp4")) << mode;
  }
}
