// tests/model/test_model_hf.cpp — Qwen3-MoE against Hugging Face `transformers` (CPU, fp32):
// a random model made by transformers loads into fp4qat with equal logits (rtol 1e-4); fp4qat
// saves it again (BF16 shards + index + config.json) and transformers loads that folder with
// logits equal to fp4qat's on the same saved weights. Also: model shape checks without Python.
#include <gtest/gtest.h>

#include <chrono>
#include <spawn.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include "kernels/common/check.h"
#include "io/fs.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "tests/common/test_util.h"
#include "model/hf_folder.h"
#include "model/qwen3_moe.h"

extern char** environ;
using fp4qat::test::TempDir;

namespace {

int run_python(const std::vector<std::string>& args) {
  std::vector<std::string> a = {FP4QAT_PYTHON, std::string(FP4QAT_SOURCE_DIR) + "/tests/model/hf_reference.py"};
  a.insert(a.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : a) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid;
  if (posix_spawn(&pid, FP4QAT_PYTHON, nullptr, nullptr, argv.data(), environ) != 0) return -1;
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

::testing::AssertionResult close(const at::Tensor& a, const at::Tensor& b, double rtol) {
  const double err = ((a - b).abs().max() / b.abs().max()).item<double>();
  if (err <= rtol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |a - b| / max |b| = " << err << " > " << rtol;
}

}  // namespace

TEST(ModelHF, TransformersRoundTrip) {
  TempDir d;
  const std::string hf = d.file("hf"), ours = d.file("ours");
  ASSERT_EQ(run_python({"make", hf}), 0)
      << "transformers could not make the reference model (scripts/setup installs it)";
  fp4qat::model::Qwen3Moe m = fp4qat::model::load_hf_folder(hf);
  EXPECT_EQ(m.config().num_hidden_layers, 3);
  EXPECT_FALSE(m.is_moe_layer(1));  // mlp_only_layers: [1]
  fp4qat::st::Reader ref(hf + "/reference.safetensors");
  const at::Tensor ids = ref.view("ids").clone();
  fp4qat::model::LinearPolicy plain;
  torch::NoGradGuard ng;
  const at::Tensor logits = m.forward(ids, at::kFloat, plain).logits;
  EXPECT_TRUE(close(logits, ref.view("logits"), 1e-4));

  fp4qat::model::save_hf_folder(m, ours, /*max_shard_bytes=*/64 * 1024);  // several shards
  EXPECT_TRUE(fp4qat::fs::exists(ours + "/model.safetensors.index.json"));
  EXPECT_TRUE(fp4qat::fs::exists(ours + "/config.json"));
  ASSERT_EQ(run_python({"logits", ours, hf + "/reference.safetensors", d.file("back.safetensors")}), 0);
  fp4qat::model::Qwen3Moe m2 = fp4qat::model::load_hf_folder(ours);  // the BF16-rounded weights
  fp4qat::st::Reader back(d.file("back.safetensors"));
  EXPECT_TRUE(close(m2.forward(ids, at::kFloat, plain).logits, back.view("logits"), 1e-4));
  // and saving refuses to overwrite
  EXPECT_THROW(fp4qat::model::save_hf_folder(m, ours), fp4qat::Error);
}

TEST(Model, ForwardShapesAuxLossAndGradients) {
  at::manual_seed(3);            // the same ids every run
  fp4qat::model::ModelConfig c;  // the tiny defaults
  fp4qat::model::Qwen3Moe m(c, 3);
  const at::Tensor ids = at::randint(0, c.vocab_size, {2, 9}, at::kLong);
  fp4qat::model::LinearPolicy plain;
  auto out = m.forward(ids, at::kFloat, plain);
  EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{2, 9, c.vocab_size}));
  EXPECT_EQ(out.expert_load.size(), static_cast<size_t>(c.num_hidden_layers));
  EXPECT_NEAR(out.expert_load[0].sum().item<double>(), 1.0, 1e-5);
  EXPECT_TRUE(std::isfinite(out.aux_loss.item<double>()) && out.aux_loss.item<double>() > 0.0);
  (out.logits.to(at::kFloat).logsumexp(-1).mean() + out.aux_loss).backward();
  for (const auto& [name, p] : m.params()) {
    ASSERT_TRUE(p.grad().defined()) << name << " got no gradient";
  }
  // bf16 compute runs and stays close to fp32
  torch::NoGradGuard ng;
  const at::Tensor lb = m.forward(ids, at::kBFloat16, plain).logits.to(at::kFloat);
  EXPECT_TRUE(close(lb, m.forward(ids, at::kFloat, plain).logits, 5e-2));
}

TEST(Model, LoadRejectsMissingAndUnexpectedTensors) {
  TempDir d;
  fp4qat::model::ModelConfig c;
  fp4qat::model::Qwen3Moe m(c, 1);
  fp4qat::model::save_hf_folder(m, d.file("ok"));
  EXPECT_NO_THROW(fp4qat::model::load_hf_folder(d.file("ok")));
  // A folder whose single file lacks one tensor and has a stray one.
  auto t = m.to_hf(at::kBFloat16);
  t.pop_back();
  t.emplace_back("model.layers.0.mlp.experts.99.gate_proj.weight", at::zeros({4, 4}));
  fp4qat::fs::make_dir(d.file("bad"));
  fp4qat::st::write_file(d.file("bad/model.safetensors"), t);
  fp4qat::test::write_bytes(d.file("bad/config.json"), fp4qat::model::hf_config_json(c));
  try {
    fp4qat::model::load_hf_folder(d.file("bad"));
    FAIL() << "expected an error";
  } catch (const fp4qat::Error& e) {
    EXPECT_NE(std::string(e.what()).find("experts.99"), std::string::npos) << e.what();
  }
}

TEST(Model, ParameterCountIsWhatTheModelAllocates) {
  std::vector<fp4qat::model::ModelConfig> shapes(4);  // the tiny defaults, then variations
  shapes[1].tie_word_embeddings = true;
  shapes[1].mlp_only_layers = {0};
  shapes[2].num_hidden_layers = 4;
  shapes[2].decoder_sparse_step = 2;  // layers 1 and 3 are MoE
  shapes[3].num_experts = 0;          // dense
  for (size_t i = 0; i < shapes.size(); ++i) {
    fp4qat::model::Qwen3Moe m(shapes[i], 1);
    int64_t total = 0, experts = 0;
    for (const auto& [name, p] : m.params()) {
      total += p.numel();
      if (name.find(".mlp.experts.") != std::string::npos) experts += p.numel();
    }
    const auto pc = fp4qat::model::parameter_count(shapes[i]);
    EXPECT_EQ(pc.total, total) << "shape " << i;
    EXPECT_EQ(pc.experts, experts) << "shape " << i;
  }
}

TEST(Model, ImpossibleShapesAreRefusedBeforeAnyAllocation) {
  fp4qat::model::ModelConfig c;
  c.num_experts = int64_t{1} << 50;  // 2^50 x 3 x 64 x 128 overflows int64
  std::string e = fp4qat::test::error_of([&] { fp4qat::model::Qwen3Moe m(c, 1); });
  EXPECT_NE(e.find("experts (num_experts x 3 x moe_intermediate_size x hidden_size) overflow"), std::string::npos) << e;
  c.num_experts = int64_t{1} << 30;  // 2.6e13 parameters: fits int64, not any machine
  e = fp4qat::test::error_of([&] { fp4qat::model::Qwen3Moe m(c, 1); });
  EXPECT_NE(e.find("exceed this machine's memory"), std::string::npos) << e;
  EXPECT_NE(e.find("model.num_experts"), std::string::npos) << e;
  c = fp4qat::model::ModelConfig{};
  c.head_dim = -4;
  e = fp4qat::test::error_of([&] { fp4qat::model::Qwen3Moe m(c, 1); });
  EXPECT_NE(e.find("head_dim must be > 0, got -4"), std::string::npos) << e;
  // A Hugging Face folder whose config.json asks for too much: the error names the file.
  TempDir d;
  fp4qat::fs::make_dir(d.file("huge"));
  c = fp4qat::model::ModelConfig{};
  c.num_experts = int64_t{1} << 50;
  fp4qat::test::write_bytes(d.file("huge/config.json"), fp4qat::model::hf_config_json(c));
  e = fp4qat::test::error_of([&] { fp4qat::model::load_hf_folder(d.file("huge")); });
  EXPECT_NE(e.find(d.file("huge") + "/config.json: "), std::string::npos) << e;
  EXPECT_NE(e.find("overflow"), std::string::npos) << e;
}

// config.json shapes that used to crash or hang a reader (issue 23, items 1, 2 and 5): a zero or
// negative head count (the head_dim division: SIGFPE), INT64_MIN / -1, 2^40 layers (a per-layer
// loop for minutes), top-k 0, rope_theta 0, rms_norm_eps -1 — each refused at once by
// read_hf_config, naming the file and the key, before any loop or allocation.
TEST(ModelHF, ImpossibleConfigJsonIsRefusedNamingFileAndKey) {
  TempDir d;
  const std::string base =
      R"("model_type": "qwen3_moe", "vocab_size": 32, "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 2, "moe_intermediate_size": 32, "num_experts": 4,
         "num_experts_per_tok": 2)";
  namespace fs = fp4qat::fs;
  namespace json = fp4qat::json;
  fs::write_text_atomic(d.file("config.json"), "{" + base + "}\n");
  EXPECT_NO_THROW(fp4qat::model::read_hf_config(d.path()));
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"("num_attention_heads": 0)", "num_attention_heads"},
      {R"("hidden_size": -9223372036854775808, "num_attention_heads": -1)", "must be > 0"},
      {R"("num_hidden_layers": 1099511627776)", "num_hidden_layers"},
      {R"("num_experts_per_tok": 0)", "num_experts_per_tok"},
      {R"("num_experts_per_tok": 5)", "num_experts_per_tok"},
      {R"("rope_theta": 0)", "rope_theta"},
      {R"("rms_norm_eps": -1)", "rms_norm_eps"},
      {R"("num_key_value_heads": 3)", "multiple of num_key_value_heads"},
      {R"("vocab_size": 4611686018427387904)", "vocab_size"},
  };
  for (const auto& [extra, needle] : bad) {
    json::Value j = json::parse("{" + base + "}", "base");
    const json::Value more = json::parse("{" + extra + "}", "extra");
    for (const auto& [k, v] : more.as_object()) j.set(k, v);
    fs::write_text_atomic(d.file("config.json"), j.dump() + "\n");
    const auto t0 = std::chrono::steady_clock::now();
    try {
      fp4qat::model::read_hf_config(d.path());
      ADD_FAILURE() << "accepted: " << extra;
    } catch (const std::exception& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(d.file("config.json")), std::string::npos) << extra << ": " << m;
      EXPECT_NE(m.find(needle), std::string::npos) << "should name '" << needle << "': " << m;
    }
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0) << extra;
  }
}

// The memory a process may use (issue 23): the cgroup limit of the process's cgroup or an ancestor,
// v2 (memory.max, "max" = none) and v1 (memory.limit_in_bytes, ~2^63 = none); none, or an
// unreadable value, gives 0.
TEST(HostMemory, CgroupLimitOfTheProcessOrItsAncestors) {
  fp4qat::test::TempDir d;
  const std::string root = d.path();
  fp4qat::fs::make_dirs(root + "/a/b");
  fp4qat::test::write_bytes(root + "/a/b/memory.max", "max\n");
  fp4qat::test::write_bytes(root + "/a/memory.max", "1073741824\n");
  EXPECT_EQ(fp4qat::model::cgroup_memory_limit(root, "0::/a/b\n"), int64_t(1) << 30);
  fp4qat::test::write_bytes(root + "/a/b/memory.max", "536870912\n");  // the tighter one wins
  EXPECT_EQ(fp4qat::model::cgroup_memory_limit(root, "0::/a/b\n"), int64_t(1) << 29);
  EXPECT_EQ(fp4qat::model::cgroup_memory_limit(root, "0::/\n"), 0);  // no limit at the root
  EXPECT_EQ(fp4qat::model::cgroup_memory_limit(root, "0::/a/../..\n"), 0);  // never outside root
  fp4qat::fs::make_dirs(root + "/memory/x");
  fp4qat::test::write_bytes(root + "/memory/memory.limit_in_bytes", "9223372036854771712\n");  // v1: none
  fp4qat::test::write_bytes(root + "/memory/x/memory.limit_in_bytes", "2147483648\n");
  EXPECT_EQ(fp4qat::model::cgroup_memory_limit(root, "7:cpu,cpuacct:/x\n5:memory:/x\n"), int64_t(1) << 31);
  fp4qat::test::write_bytes(root + "/memory/x/memory.limit_in_bytes", "12abc\n");
  EXPECT_EQ(fp4qat::model::cgroup_memory_limit(root, "5:memory:/x\n"), 0);
  // This machine: at most its physical memory, and at most a cgroup limit there is.
  const int64_t here = fp4qat::model::host_memory_bytes(), cg = fp4qat::model::cgroup_memory_limit();
  EXPECT_GT(here, 0);
  if (cg > 0) {
    EXPECT_LE(here, cg);
  }
}

// The router's aux loss and expert load over the counted tokens only (padding left out, issue 24):
// a row with trailing padding and the mask of its real tokens gives the aux loss and load of the
// row without the padding (causal: the real tokens do not see it), while counting every token
// does not; every token is still computed (the logits of the real tokens are the same).
TEST(ModelForward, AuxLossCountsOnlyTheCountedTokens) {
  fp4qat::model::ModelConfig c;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.head_dim = 16;
  c.moe_intermediate_size = 32;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.vocab_size = 32;
  fp4qat::model::Qwen3Moe m(c, 9);
  fp4qat::model::LinearPolicy plain;
  torch::NoGradGuard ng;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(2);
  const at::Tensor doc = at::randint(1, 32, {1, 10}, gen);
  const at::Tensor padded = at::cat({doc, at::zeros({1, 14}, at::kLong)}, 1);  // [1, 24]
  const at::Tensor real = at::arange(24).lt(10).unsqueeze(0);
  const auto alone = m.forward(doc, at::kFloat, plain);
  const auto masked = m.forward(padded, at::kFloat, plain, nullptr, nullptr, nullptr, &real);
  const auto all = m.forward(padded, at::kFloat, plain);
  EXPECT_NEAR(masked.aux_loss.item<double>(), alone.aux_loss.item<double>(), 1e-6);
  EXPECT_GT(std::abs(all.aux_loss.item<double>() - alone.aux_loss.item<double>()), 1e-4);
  for (size_t l = 0; l < alone.expert_load.size(); ++l)
    EXPECT_TRUE(at::allclose(masked.expert_load[l], alone.expert_load[l], 0, 1e-6)) << "layer " << l;
  EXPECT_TRUE(at::allclose(masked.logits.narrow(1, 0, 10), alone.logits, 1e-5, 1e-5));
  const at::Tensor bad = at::ones({1, 23}, at::kBool);
  EXPECT_THROW(m.forward(padded, at::kFloat, plain, nullptr, nullptr, nullptr, &bad), fp4qat::Error);
}
