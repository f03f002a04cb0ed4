// tests/trainer/test_qat_policy.cpp — trainer/qat_policy.h: glob matching, which modules are
// quantized (default experts, keep_first/last_n, pairs), errors for patterns that match nothing
// or half a pair, the expert forward equals the NVFP4 grouped function, and expert-only QAT
// training (quantized_only) updates the experts and nothing else.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kernels/common/check.h"
#include "qat/safetensors.h"
#include "tests/common/test_util.h"
#include "qat/patterns.h"
#include "trainer/qat_policy.h"
#include "trainer/train.h"

namespace cfg = fp4qat::config;
using fp4qat::qat::glob_match;

namespace {
cfg::ModelConfig small_model() {
  cfg::ModelConfig m;
  m.hidden_size = 64;
  m.num_hidden_layers = 3;
  m.head_dim = 16;
  m.moe_intermediate_size = 32;
  m.intermediate_size = 64;
  m.num_experts = 4;
  m.vocab_size = 16;
  m.mlp_only_layers = {1};
  return m;
}
void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    FAIL() << "expected an error mentioning " << needle;
  } catch (const fp4qat::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(QatPolicy, GlobMatch) {
  EXPECT_TRUE(glob_match("model.layers.*.mlp.experts.*", "model.layers.12.mlp.experts.3.gate_proj"));
  EXPECT_FALSE(glob_match("model.layers.*.mlp.experts.*", "model.layers.1.mlp.gate_proj"));
  EXPECT_TRUE(glob_match("*", "anything"));
  EXPECT_TRUE(glob_match("lm_head", "lm_head"));
  EXPECT_FALSE(glob_match("lm_head", "lm_head2"));
  EXPECT_TRUE(glob_match("*.self_attn*", "model.layers.0.self_attn.q_proj"));
}

TEST(QatPolicy, SelectsModules) {
  fp4qat::model::Qwen3Moe m(small_model(), 1);
  cfg::QatConfig q;
  q.format = "nvfp4";
  fp4qat::qatp::QatPolicy p(q, m);  // default: routed experts of every MoE layer
  EXPECT_EQ(p.quantized_params(), (std::set<std::string>{
                                      "model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj",
                                      "model.layers.2.mlp.experts.gate_up_proj", "model.layers.2.mlp.experts.down_proj"}));
  q.keep_first_n = 1;
  fp4qat::qatp::QatPolicy p2(q, m);
  EXPECT_FALSE(p2.quantized("model.layers.0.mlp.experts.down_proj"));
  EXPECT_TRUE(p2.quantized("model.layers.2.mlp.experts.down_proj"));
  q = cfg::QatConfig();
  q.format = "nvfp4";
  q.modules = {"model.layers.*.mlp.*_proj"};  // the dense layer's gate/up/down too
  fp4qat::qatp::QatPolicy p3(q, m);
  EXPECT_TRUE(p3.quantized("model.layers.1.mlp.gate_proj.weight"));
  EXPECT_TRUE(p3.quantized("model.layers.1.mlp.up_proj.weight"));
}

TEST(QatPolicy, RejectsUnmatchedPatternsAndHalfPairs) {
  fp4qat::model::Qwen3Moe m(small_model(), 1);
  cfg::QatConfig q;
  q.format = "nvfp4";
  q.modules = {"model.layers.*.mlp.experts.*", "model.layers.*.mlp.shared_expert.*"};
  expect_error([&] { fp4qat::qatp::QatPolicy p(q, m); }, "shared_expert");
  q.modules = {"model.layers.*.mlp.gate_proj"};
  expect_error([&] { fp4qat::qatp::QatPolicy p(q, m); }, "up_proj");
  q.modules = {"model.layers.*.mlp.experts.*.gate_proj"};
  expect_error([&] { fp4qat::qatp::QatPolicy p(q, m); }, "gated pair");
}

TEST(QatPolicy, ExpertForwardIsTheNVFP4GroupedFunction) {
  fp4qat::model::Qwen3Moe m(small_model(), 2);
  cfg::QatConfig q;
  q.format = "nvfp4";
  q.weight_blocks = "2d";
  fp4qat::qatp::QatPolicy p(q, m);
  torch::NoGradGuard ng;
  const at::Tensor x = at::randn({10, 64});
  const at::Tensor counts = at::tensor(std::vector<int64_t>{3, 0, 6, 1}, at::kLong);
  const std::string name = "model.layers.0.mlp.experts.gate_up_proj";
  const at::Tensor y = p.grouped(name, x, m.param(name), counts);
  fp4qat::autograd::NVFP4LinearOptions o{fp4qat::Blocks::k2D, fp4qat::autograd::Backward::kHighPrecision};
  // The forward quantizes the compute copy: the bf16 cast of the fp32 master.
  const at::Tensor wc = m.param(name).to(at::kBFloat16).to(at::kFloat);
  EXPECT_TRUE(fp4qat::test::bytes_equal(y, fp4qat::autograd::nvfp4_grouped_linear(x, wc, counts, o)));
  EXPECT_FALSE(at::equal(y, fp4qat::autograd::nvfp4_grouped_linear(x, m.param(name), counts, o)));
  // and the whole model's logits move, but stay close to the unquantized ones
  const at::Tensor ids = at::randint(0, 16, {2, 8}, at::kLong);
  fp4qat::model::LinearPolicy plain;
  const at::Tensor lq = m.forward(ids, at::kFloat, p).logits, lp = m.forward(ids, at::kFloat, plain).logits;
  EXPECT_FALSE(at::equal(lq, lp));
  EXPECT_LT(((lq - lp).norm() / lp.norm()).item<double>(), 0.2);
}

TEST(QatPolicy, ExpertOnlyTrainingUpdatesOnlyExperts) {
  fp4qat::test::TempDir d;
  cfg::Config c;
  c.model = small_model();
  c.train.steps = 3;
  c.train.batch_size = 4;
  c.train.seq_len = 16;
  c.train.dtype = "fp32";
  c.train.device = "cpu";
  c.train.eval_every = 0;
  c.train.out_dir = d.file("run");
  c.qat.format = "nvfp4";
  c.qat.train = "quantized_only";
  fp4qat::train::Options o;
  o.quiet = true;
  const auto r = fp4qat::train::run(c, o);
  ASSERT_EQ(r.final_step, 3);
  fp4qat::model::Qwen3Moe init(c.model, c.train.seed);
  fp4qat::st::Reader after(d.file("run/checkpoints/step-3/model.safetensors"));
  for (const auto& [name, p0] : init.params()) {
    const bool expert = name.find("mlp.experts.") != std::string::npos;
    EXPECT_EQ(at::equal(after.view(name), p0.detach()), !expert) << name;
  }
}
