// tests/qat/test_policy.cpp — qat/policy.h: glob matching, which modules are
// quantized (default experts, keep_first/last_n, pairs), errors for patterns that match nothing
// or half a pair, the expert forward equals the NVFP4 grouped function, and expert-only QAT
// training (quantized_only) updates the experts and nothing else.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kernels/common/check.h"
#include "io/safetensors.h"
#include "tests/common/test_util.h"
#include "qat/patterns.h"
#include "qat/policy.h"
#include "trainer/train.h"

namespace cfg = fp4qat::config;
using fp4qat::qat::glob_match;

namespace {
fp4qat::model::ModelConfig small_model() {
  fp4qat::model::ModelConfig m;
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
  fp4qat::qat::Recipe q;
  q.format = fp4qat::qat::Format::kNVFP4;
  fp4qat::qat::QatPolicy p(q, m);  // default: routed experts of every MoE layer
  EXPECT_EQ(p.quantized_params(),
            (std::set<std::string>{"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj",
                                   "model.layers.2.mlp.experts.gate_up_proj", "model.layers.2.mlp.experts.down_proj"}));
  q.selection.keep_first_n = 1;
  fp4qat::qat::QatPolicy p2(q, m);
  EXPECT_FALSE(p2.quantized("model.layers.0.mlp.experts.down_proj"));
  EXPECT_TRUE(p2.quantized("model.layers.2.mlp.experts.down_proj"));
  q = fp4qat::qat::Recipe();
  q.format = fp4qat::qat::Format::kNVFP4;
  q.selection.modules = {"model.layers.*.mlp.*_proj"};  // the dense layer's gate/up/down too
  fp4qat::qat::QatPolicy p3(q, m);
  EXPECT_TRUE(p3.quantized("model.layers.1.mlp.gate_proj.weight"));
  EXPECT_TRUE(p3.quantized("model.layers.1.mlp.up_proj.weight"));
}

TEST(QatPolicy, RejectsUnmatchedPatternsAndHalfPairs) {
  fp4qat::model::Qwen3Moe m(small_model(), 1);
  fp4qat::qat::Recipe q;
  q.format = fp4qat::qat::Format::kNVFP4;
  q.selection.modules = {"model.layers.*.mlp.experts.*", "model.layers.*.mlp.shared_expert.*"};
  expect_error([&] { fp4qat::qat::QatPolicy p(q, m); }, "shared_expert");
  q.selection.modules = {"model.layers.*.mlp.gate_proj"};
  expect_error([&] { fp4qat::qat::QatPolicy p(q, m); }, "up_proj");
  q.selection.modules = {"model.layers.*.mlp.experts.*.gate_proj"};
  expect_error([&] { fp4qat::qat::QatPolicy p(q, m); }, "gated pair");
}

// The per-expert activation amax a grouped linear observes (for static activation scales): each
// expert's max |x| over its rows, 0 for an expert without rows, whether the experts' ends come with
// the counts (the model's device-side ends) or are made from them; a later call keeps the running max.
TEST(QatPolicy, GroupedObservesEachExpertsActivationAmax) {
  fp4qat::model::Qwen3Moe m(small_model(), 2);
  fp4qat::qat::Recipe q;
  q.format = fp4qat::qat::Format::kNVFP4;
  fp4qat::qat::QatPolicy p(q, m);
  p.observe_without_grad = true;
  torch::NoGradGuard ng;
  const std::string name = "model.layers.0.mlp.experts.gate_up_proj";
  at::Tensor x = at::randn({10, 64}).to(at::kBFloat16);
  x[4][7] = -9.5;  // expert 2's largest magnitude is a negative value
  const std::vector<int64_t> c = {3, 0, 6, 1};
  const at::Tensor counts = at::tensor(c, at::kLong);
  auto expected = [&](const at::Tensor& xs) {
    std::vector<float> want;
    int64_t row = 0;
    for (const int64_t n : c) {
      want.push_back(n ? xs.narrow(0, row, n).abs().max().to(at::kFloat).item<float>() : 0.0f);
      row += n;
    }
    return at::tensor(want);
  };
  p.grouped(name, x, m.param(name), counts);
  const at::Tensor first = p.observed_input_amax().at(name).clone();
  EXPECT_TRUE(fp4qat::test::bytes_equal(first, expected(x))) << first;
  EXPECT_FLOAT_EQ(first[2].item<float>(), 9.5f);
  // With the ends given (int32 inclusive prefix sums), a smaller batch: the running max stays.
  const fp4qat::autograd::ExpertRows rows(counts, at::cumsum(counts, 0).to(at::kInt));
  p.grouped(name, x * 0.5, m.param(name), rows);
  EXPECT_TRUE(fp4qat::test::bytes_equal(p.observed_input_amax().at(name), first));
  p.grouped(name, x * 2, m.param(name), rows);
  EXPECT_TRUE(fp4qat::test::bytes_equal(p.observed_input_amax().at(name), expected(x * 2)));
}

TEST(QatPolicy, ExpertForwardIsTheNVFP4GroupedFunction) {
  fp4qat::model::Qwen3Moe m(small_model(), 2);
  fp4qat::qat::Recipe q;
  q.format = fp4qat::qat::Format::kNVFP4;
  q.weight_blocks = fp4qat::Blocks::k2D;
  fp4qat::qat::QatPolicy p(q, m);
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

TEST(QatPolicy, PlainGroupedRejectsBadCounts) {
  fp4qat::model::Qwen3Moe m(small_model(), 2);
  fp4qat::model::LinearPolicy plain;
  torch::NoGradGuard ng;
  const std::string name = "model.layers.0.mlp.experts.gate_up_proj";
  const at::Tensor x = at::randn({10, 64});
  // one count too few, and the wrong dtype: a clear error naming the tensor, not a bad read
  expect_error(
      [&] {
        plain.grouped(name, x, m.param(name), at::tensor(std::vector<int64_t>{3, 6, 1}, at::kLong));
      },
      "gate_up_proj: counts must be int64 [4]");
  expect_error(
      [&] {
        plain.grouped(name, x, m.param(name), at::tensor(std::vector<int32_t>{3, 0, 6, 1}, at::kInt));
      },
      "counts must be int64");
  EXPECT_EQ(plain.grouped(name, x, m.param(name), at::tensor(std::vector<int64_t>{3, 0, 6, 1}, at::kLong)).sizes(),
            (std::vector<int64_t>{10, m.param(name).size(1)}));
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
  c.qat.format = fp4qat::qat::Format::kNVFP4;
  c.qat.train = fp4qat::qat::TrainScope::kQuantizedOnly;
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

// qat.cache_weights: the quantization a forward uses is computed once per change of the weight
// (the same tensors are handed out while it is unchanged, also for a detached alias such as the
// exporter's), equals a fresh quantization of the compute copy, is recomputed after an in-place
// update (an optimizer step) — also of a dense gated partner whose amax it shares — and the
// forward is the same with and without the cache.
TEST(QatPolicy, WeightQuantizationIsCachedUntilTheWeightChanges) {
  fp4qat::model::Qwen3Moe m(small_model(), 2);
  fp4qat::qat::Recipe q;
  q.format = fp4qat::qat::Format::kNVFP4;
  q.selection.modules = {"model.layers.*.mlp.experts.*",
                         "model.layers.1.mlp.*"};  // experts, and layer 1's dense MLP (a gated pair)
  fp4qat::qat::QatPolicy p(q, m);
  const std::string name = "model.layers.0.mlp.experts.gate_up_proj";
  const fp4qat::NVFP4Operand* a = p.weight_quantization(name, m.param(name));
  ASSERT_NE(a, nullptr);
  const at::Tensor values = a->values;
  const fp4qat::NVFP4Operand fresh =
      fp4qat::nvfp4_quantize_and_fake(m.param(name).detach().to(at::kBFloat16), fp4qat::Blocks::k1D);
  EXPECT_TRUE(fp4qat::test::bytes_equal(a->values, fresh.values));
  EXPECT_TRUE(fp4qat::test::bytes_equal(a->packed.codes, fresh.packed.codes));
  EXPECT_TRUE(fp4qat::test::bytes_equal(a->packed.scales, fresh.packed.scales));
  EXPECT_TRUE(fp4qat::test::bytes_equal(a->packed.s_dec, fresh.packed.s_dec));
  // Unchanged weight (also through a detached alias): the very same tensors.
  EXPECT_TRUE(p.weight_quantization(name, m.param(name))->values.is_same(values));
  EXPECT_TRUE(p.weight_quantization(name, m.param(name).detach())->values.is_same(values));
  // The forward with the cache equals the forward without it.
  const at::Tensor x = at::randn({10, 64});
  const at::Tensor counts = at::tensor(std::vector<int64_t>{3, 0, 6, 1}, at::kLong);
  fp4qat::qat::Recipe off = q;
  off.cache_weights = false;
  fp4qat::qat::QatPolicy p_off(off, m);
  EXPECT_EQ(p_off.weight_quantization(name, m.param(name)), nullptr);
  {
    torch::NoGradGuard ng;
    EXPECT_TRUE(fp4qat::test::bytes_equal(p.grouped(name, x, m.param(name), counts),
                                          p_off.grouped(name, x, m.param(name), counts)));
  }
  // An in-place update (as the optimizer makes): a new quantization, of the new values.
  {
    torch::NoGradGuard ng;
    m.param(name).mul_(1.5);
  }
  const fp4qat::NVFP4Operand* b = p.weight_quantization(name, m.param(name));
  EXPECT_FALSE(b->values.is_same(values));
  EXPECT_TRUE(fp4qat::test::bytes_equal(
      b->values, fp4qat::nvfp4_fake_quantize(m.param(name).detach().to(at::kBFloat16), fp4qat::Blocks::k1D).values));
  // A dense gated pair shares max(amax_gate, amax_up): changing the partner alone refreshes it.
  const std::string gate = "model.layers.1.mlp.gate_proj.weight", up = "model.layers.1.mlp.up_proj.weight";
  const at::Tensor s_before = p.weight_quantization(gate, m.param(gate))->packed.s_dec.clone();
  {
    torch::NoGradGuard ng;
    m.param(up).mul_(4.0);  // up's amax now dominates the pair's
  }
  const at::Tensor shared = at::maximum(fp4qat::global_amax(m.param(gate).detach().to(at::kBFloat16)),
                                        fp4qat::global_amax(m.param(up).detach().to(at::kBFloat16)));
  const at::Tensor s_after = p.weight_quantization(gate, m.param(gate))->packed.s_dec;
  EXPECT_FALSE(at::equal(s_before, s_after));
  EXPECT_TRUE(fp4qat::test::bytes_equal(
      s_after, fp4qat::nvfp4_quantize(m.param(gate).detach().to(at::kBFloat16), fp4qat::Blocks::k1D, shared).s_dec));
  // Not cached for an MXFP8 recipe.
  fp4qat::qat::Recipe mx = q;
  mx.format = fp4qat::qat::Format::kMXFP8;
  fp4qat::qat::QatPolicy p_mx(mx, m);
  EXPECT_EQ(p_mx.weight_quantization(name, m.param(name)), nullptr);
}

// Training with the cache equals training without it, byte for byte (losses, checkpoint,
// exports), with gradient accumulation (several forwards per optimizer step use one quantization).
TEST(QatPolicy, CachedWeightsChangeNoResult) {
  fp4qat::test::TempDir d;
  auto run = [&](bool cache, const std::string& out) {
    cfg::Config c = fp4qat::test::small_moe_run(d.file(out));
    c.train.dtype = "fp32";
    c.train.grad_accum = 2;
    c.qat.format = fp4qat::qat::Format::kNVFP4;
    c.qat.backward = fp4qat::autograd::Backward::kDequantized;
    c.qat.cache_weights = cache;
    fp4qat::train::Options o;
    o.quiet = true;
    return fp4qat::train::run(c, o);
  };
  const auto a = run(true, "on"), b = run(false, "off");
  ASSERT_EQ(a.steps.size(), b.steps.size());
  ASSERT_GE(a.exports.size(), 2u);
  for (size_t i = 0; i < a.steps.size(); ++i) EXPECT_EQ(a.steps[i].loss, b.steps[i].loss) << "step " << i;
  const std::string ck = "/checkpoints/step-" + std::to_string(a.final_step) + "/model.safetensors";
  std::vector<std::string> files = {ck};
  for (const char* f : {"model-00001-of-00001.safetensors", "model.safetensors.index.json", "hf_quant_config.json"})
    files.push_back(std::string("/exports/latest/nvfp4/") + f);
  for (const auto& f : files) {
    const std::string on = fp4qat::test::read_bytes(d.file("on") + f);
    EXPECT_FALSE(on.empty()) << f << " missing";
    EXPECT_EQ(on, fp4qat::test::read_bytes(d.file("off") + f)) << f;
  }
}
