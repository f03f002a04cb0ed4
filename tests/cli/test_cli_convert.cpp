// tests/cli/test_cli_convert.cpp — `fp4qat convert` through the real binary: a sharded
// Hugging Face checkpoint (gate/up of an expert in different shards) becomes ModelOpt NVFP4 /
// MXFP8 with one output shard per input shard, bytes equal to the reference quantizer with the
// pair's shared amax, BF16 for the rest, calibrated input_scale, copied non-weight files and both
// config files; converting the trainer's BF16 export reproduces its NVFP4 export; bad input
// fails with one line naming the file or tensor and leaves the output folder as it was.
#include <gtest/gtest.h>

#include <set>
#include <torch/torch.h>

#include "kernels/quantize.h"
#include "io/fs.h"
#include "qat/gated_pairs.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "tests/common/test_util.h"
#include "model/hf_folder.h"
#include "model/qwen3_moe.h"
#include "trainer/train.h"

using namespace fp4qat;
using fp4qat::test::bytes_equal;
using fp4qat::test::run_fp4qat;
using fp4qat::test::TempDir;

namespace {

model::ModelConfig small() {
  model::ModelConfig m;
  m.hidden_size = 64;
  m.num_hidden_layers = 3;
  m.head_dim = 16;
  m.moe_intermediate_size = 32;
  m.num_experts = 4;
  m.vocab_size = 32;
  return m;
}

std::map<std::string, std::string> weight_map(const std::string& dir) {
  const std::string f = dir + "/model.safetensors.index.json";
  const json::Value index = json::parse(fs::read_text(f), f);
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : index.at("weight_map").as_object()) out[k] = v.as_string();
  return out;
}

std::map<std::string, at::Tensor> load_folder(const std::string& dir) {
  std::map<std::string, at::Tensor> out;
  std::map<std::string, std::unique_ptr<st::Reader>> readers;
  for (const auto& [name, file] : weight_map(dir)) {
    auto& r = readers[file];
    if (!r) r = std::make_unique<st::Reader>(dir + "/" + file);
    out[name] = r->view(name).clone();
  }
  return out;
}

void expect_one_line_failure(const std::vector<std::string>& args, const std::string& needle) {
  const auto r = run_fp4qat(args);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "should name '" << needle << "': " << r.err;
}

std::set<std::string> files_in(const std::string& dir) {
  const auto v = fs::list_dir(dir);
  return {v.begin(), v.end()};
}

}  // namespace

TEST(CliConvert, ShardedCheckpointToNVFP4) {
  TempDir d;
  model::Qwen3Moe m(small(), 5);
  model::save_hf_folder(m, d.file("hf"), 3000);  // every tensor its own shard: pairs span shards
  fs::write_text_atomic(d.file("hf/tokenizer.json"), "{\"version\": \"1.0\"}\n");
  const auto in_map = weight_map(d.file("hf"));
  ASSERT_NE(in_map.at("model.layers.0.mlp.experts.1.gate_proj.weight"),
            in_map.at("model.layers.0.mlp.experts.1.up_proj.weight"));
  const auto r = run_fp4qat({"convert", "--in", d.file("hf"), "--out", d.file("nv"), "--format", "nvfp4", "--blocks",
                             "2d", "--keep-first-n", "1", "--device", "cpu", "--calib-batches", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::set<std::string> in_shards, out_shards;
  for (const auto& [n, f] : in_map) in_shards.insert(f);
  for (const auto& [n, f] : weight_map(d.file("nv"))) out_shards.insert(f);
  EXPECT_EQ(in_shards.size(), out_shards.size());
  EXPECT_EQ(fs::read_text(d.file("nv/tokenizer.json")), "{\"version\": \"1.0\"}\n");
  const auto in = load_folder(d.file("hf")), out = load_folder(d.file("nv"));
  int quantized = 0;
  for (const auto& [name, t] : in) {
    const bool expert = name.find(".experts.") != std::string::npos && name.rfind("model.layers.0.", 0) != 0;
    if (!expert) {
      EXPECT_TRUE(bytes_equal(out.at(name), t)) << name;  // BF16, unchanged
      continue;
    }
    std::optional<at::Tensor> a;
    if (auto p = qat::gated_partner(name)) a = at::maximum(global_amax(t), global_amax(in.at(p->partner)));
    const NVFP4Tensor q = nvfp4_quantize(t, Blocks::k2D, a);
    const std::string mod = name.substr(0, name.size() - 7);
    EXPECT_TRUE(bytes_equal(out.at(mod + ".weight"), q.codes)) << mod;
    EXPECT_TRUE(bytes_equal(out.at(mod + ".weight_scale"), q.scales)) << mod;
    EXPECT_TRUE(bytes_equal(out.at(mod + ".weight_scale_2"), q.s_dec)) << mod;
    EXPECT_GT(out.at(mod + ".input_scale").item<float>(), 0.f) << mod;
    if (auto p = qat::gated_partner(name)) {
      const std::string pm = p->partner.substr(0, p->partner.size() - 7);
      EXPECT_TRUE(bytes_equal(out.at(mod + ".input_scale"), out.at(pm + ".input_scale")));  // same input
    }
    ++quantized;
  }
  EXPECT_EQ(quantized, 2 * 4 * 3);
  const json::Value cfg = json::parse(fs::read_text(d.file("nv/config.json")), "config.json");
  EXPECT_EQ(cfg.at("num_experts").as_int(), 4);
  // Explicit module paths: every BF16 linear (attention, routers), layer 0's fused expert module
  // (its experts kept in BF16: keep-first; no single expert listed), lm_head; no wildcard.
  std::set<std::string> ignore;
  for (const auto& v : cfg.at("quantization_config").at("ignore").as_array()) ignore.insert(v.as_string());
  std::set<std::string> want = {"lm_head", "model.layers.0.mlp.experts"};
  for (int l = 0; l < 3; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj"}) want.insert(p + ".self_attn." + m);
    want.insert(p + ".mlp.gate");
  }
  EXPECT_EQ(ignore, want);
  const json::Value hq = json::parse(fs::read_text(d.file("nv/hf_quant_config.json")), "hf_quant_config.json");
  EXPECT_EQ(hq.at("quantization").at("exclude_modules"), cfg.at("quantization_config").at("ignore"));
  // MXFP8 of the same checkpoint.
  const auto r2 =
      run_fp4qat({"convert", "--in", d.file("hf"), "--out", d.file("mx"), "--format", "mxfp8", "--device", "cpu"});
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  const auto mx = load_folder(d.file("mx"));
  const std::string g = "model.layers.2.mlp.experts.3.gate_proj";
  const MXFP8Tensor q = mxfp8_quantize(in.at(g + ".weight"));
  EXPECT_TRUE(bytes_equal(mx.at(g + ".weight"), q.data));
  EXPECT_TRUE(bytes_equal(mx.at(g + ".weight_scale_inv"), q.scales));
  EXPECT_FALSE(fs::exists(d.file("mx/hf_quant_config.json")));
  // The vLLM layout (--engine vllm): the same bytes under weight_scale, modelopt MXFP8.
  const auto r3 = run_fp4qat({"convert", "--in", d.file("hf"), "--out", d.file("mxv"), "--format", "mxfp8", "--engine",
                              "vllm", "--device", "cpu"});
  ASSERT_EQ(r3.exit_code, 0) << r3.err;
  EXPECT_TRUE(bytes_equal(load_folder(d.file("mxv")).at(g + ".weight_scale"), q.scales));
  const json::Value cv = json::parse(fs::read_text(d.file("mxv/config.json")), "config.json");
  EXPECT_EQ(cv.at("quantization_config").at("quant_algo").as_string(), "MXFP8");
  // `fp4qat check-export`: each folder loads in its engine; the SGLang layout not in vLLM, naming
  // the scale it lacks; exit 1.
  for (const auto& [dir, engine] : std::vector<std::pair<std::string, std::string>>{
           {"nv", "vllm"}, {"nv", "sglang"}, {"mx", "sglang"}, {"mxv", "vllm"}}) {
    const auto c = run_fp4qat({"check-export", d.file(dir), "--engine", engine});
    EXPECT_EQ(c.exit_code, 0) << dir << " " << engine << ": " << c.err;
    EXPECT_NE(c.out.find("loads"), std::string::npos) << c.out;
  }
  const auto bad = run_fp4qat({"check-export", d.file("mx"), "--engine", "vllm"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find(g + ".weight_scale missing"), std::string::npos) << bad.err;
  EXPECT_EQ(run_fp4qat({"check-export", d.file("mx"), "--engine", "tgi"}).exit_code, 1);
}

TEST(CliConvert, ConvertingTheBF16ExportReproducesTheTrainersNVFP4Export) {
  TempDir d;
  config::Config c;
  c.model = small();
  c.train.steps = 2;
  c.train.batch_size = 4;
  c.train.seq_len = 16;
  c.train.device = "cpu";
  c.train.eval_every = 0;
  c.train.checkpoint_every = 0;
  c.train.out_dir = d.file("run");
  c.qat.format = fp4qat::qat::Format::kNVFP4;
  c.exports.formats = {fp4qat::qat::Format::kNVFP4, fp4qat::qat::Format::kBF16};
  train::Options o;
  o.quiet = true;
  train::run(c, o);
  const auto r = run_fp4qat({"convert", "--in", d.file("run/exports/latest/bf16"), "--out", d.file("conv"), "--format",
                             "nvfp4", "--device", "cpu", "--calib-batches", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto trained = load_folder(d.file("run/exports/latest/nvfp4")), conv = load_folder(d.file("conv"));
  EXPECT_EQ(trained.size(), conv.size());
  int same = 0;
  for (const auto& [name, t] : trained) {
    if (name.find("input_scale") != std::string::npos) continue;  // calibration data differs from training's
    EXPECT_TRUE(bytes_equal(conv.at(name), t)) << name;
    ++same;
  }
  EXPECT_GT(same, 3 * 4 * 3 * 3);
  EXPECT_EQ(
      json::parse(fs::read_text(d.file("conv/hf_quant_config.json")), "a").at("quantization"),
      json::parse(fs::read_text(d.file("run/exports/latest/nvfp4/hf_quant_config.json")), "b").at("quantization"));
}

TEST(CliConvert, BadInputFailsCleanly) {
  TempDir d;
  model::Qwen3Moe m(small(), 6);
  model::save_hf_folder(m, d.file("hf"), 1 << 20);
  const std::vector<std::string> base = {"convert",         "--in", d.file("hf"), "--device", "cpu",
                                         "--calib-batches", "1",    "--out"};
  auto with = [&](std::vector<std::string> extra, const std::string& out) {
    std::vector<std::string> a = base;
    a.push_back(out);
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  // A non-empty output folder is refused and kept as it was.
  fs::make_dir(d.file("busy"));
  fs::write_text_atomic(d.file("busy/keep.txt"), "mine");
  expect_one_line_failure(with({}, d.file("busy")), "not empty");
  EXPECT_EQ(files_in(d.file("busy")), (std::set<std::string>{"keep.txt"}));
  // Patterns that match nothing, and half a gated pair.
  expect_one_line_failure(with({"--exclude", "model.layers.*.mlp.shared_expert*"}, d.file("o1")), "shared_expert");
  expect_one_line_failure(with({"--exclude", "*.gate_proj"}, d.file("o2")), "gated partner");
  expect_one_line_failure(with({"--format", "fp8"}, d.file("o3")), "fp8");
  // A damaged shard: the error names the file; nothing is created.
  const std::string shard = d.file("hf/model-00001-of-00001.safetensors");
  std::string bytes = test::read_bytes(shard);
  test::write_bytes(shard, bytes.substr(0, bytes.size() - 100));
  expect_one_line_failure(with({}, d.file("o4")), "model-00001-of-00001.safetensors");
  test::write_bytes(shard, bytes);
  // NaN in an expert weight names the tensor.
  {
    auto t = load_folder(d.file("hf"));
    t["model.layers.1.mlp.experts.2.down_proj.weight"][0][0] = std::nan("");
    std::vector<std::pair<std::string, at::Tensor>> v(t.begin(), t.end());
    st::write_file(shard, v);
  }
  expect_one_line_failure(with({"--format", "mxfp8"}, d.file("o5")), "model.layers.1.mlp.experts.2.down_proj.weight");
  for (const char* o : {"o1", "o2", "o3", "o4", "o5"}) EXPECT_FALSE(fs::exists(d.file(o))) << o;
  test::write_bytes(shard, bytes);
  // --overwrite replaces the old contents only once the new output is complete.
  const auto r = run_fp4qat(with({"--overwrite", "--format", "mxfp8"}, d.file("busy")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(d.file("busy/keep.txt")));
  EXPECT_TRUE(fs::exists(d.file("busy/config.json")));
  for (const auto& n : fs::list_dir(d.path())) EXPECT_EQ(n.find(".tmp-"), std::string::npos) << n;
}

// The 2026 recipes through convert (issue 20): Four Over Six weights with W4A16 (no calibration,
// no input_scale, quant_algo W4A16_NVFP4, the recipe recorded), bytes equal to the reference with
// the rule and the pair's shared amax; refusals name the option and leave no output.
TEST(CliConvert, FourOverSixW4A16) {
  TempDir d;
  model::Qwen3Moe m(small(), 7);
  model::save_hf_folder(m, d.file("hf"), 1 << 30);
  const auto r =
      run_fp4qat({"convert", "--in", d.file("hf"), "--out", d.file("w4"), "--format", "nvfp4", "--scale-rule", "4over6",
                  "--e4m3-max", "448", "--activations", "bf16", "--device", "cpu"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto in = load_folder(d.file("hf")), out = load_folder(d.file("w4"));
  const NVFP4Rule rule{true, 448.0f, false, false};
  int quantized = 0;
  for (const auto& [name, t] : in) {
    if (name.find(".experts.") == std::string::npos) continue;
    std::optional<at::Tensor> a;
    if (auto p = qat::gated_partner(name)) a = at::maximum(global_amax(t), global_amax(in.at(p->partner)));
    const NVFP4Tensor q = nvfp4_quantize(t, Blocks::k1D, a, rule);
    const std::string mod = name.substr(0, name.size() - 7);
    EXPECT_TRUE(bytes_equal(out.at(mod + ".weight"), q.codes)) << mod;
    EXPECT_TRUE(bytes_equal(out.at(mod + ".weight_scale"), q.scales)) << mod;
    EXPECT_TRUE(bytes_equal(out.at(mod + ".weight_scale_2"), q.s_dec)) << mod;
    EXPECT_EQ(out.count(mod + ".input_scale"), 0u) << mod;
    ++quantized;
  }
  EXPECT_EQ(quantized, 3 * 4 * 3);
  const json::Value cfg = json::parse(fs::read_text(d.file("w4/config.json")), "config.json");
  const json::Value& qc = cfg.at("quantization_config");
  EXPECT_EQ(qc.at("quant_algo").as_string(), "W4A16_NVFP4");
  EXPECT_EQ(qc.at("config_groups").at("group_0").at("weights").at("num_bits").as_int(), 4);
  EXPECT_EQ(qc.at("fp4qat").at("four_over_six").at("e4m3_max").as_int(), 448);
  EXPECT_EQ(qc.at("fp4qat").at("activations").as_string(), "bf16");
  for (const auto& [args, needle] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--global-scale", "row"}, "--global-scale row"},
           {{"--activations", "bf16", "--activation-scale", "row"}, "--activation-scale row"},
           {{"--e4m3-max", "448"}, "--scale-rule 4over6"},
           {{"--activations", "bf16", "--activation-rule", "4over6"}, "--activation-rule 4over6"},
           {{"--activations", "fp8"}, "--activations 'fp8'"}}) {
    std::vector<std::string> a = {"convert", "--in", d.file("hf"), "--out", d.file("bad"), "--device", "cpu"};
    a.insert(a.end(), args.begin(), args.end());
    expect_one_line_failure(a, needle);
    EXPECT_FALSE(fs::exists(d.file("bad")));
  }
}
