// tests/model/test_folder_check.cpp — a model folder's config.json checked against its tensors,
// and NaN / Inf weights refused, by every reader (issue 23, items 5 and 14): load_hf_folder
// (train.init_from, convert's calibration), the rollout side (eval, generate) in the BF16, NVFP4
// and MXFP8 layouts, and convert — each refusal naming the folder or file and the tensor, with
// nothing written.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <map>

#include "io/fs.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "model/hf_folder.h"
#include "model/qwen3_moe.h"
#include "qat/convert.h"
#include "rollout/serving.h"
#include "tests/common/test_util.h"

using namespace fp4qat;
using fp4qat::test::error_of;
using fp4qat::test::TempDir;

namespace {

model::ModelConfig small() {  // K = 64 and 32: multiples of both formats' blocks
  model::ModelConfig m;
  m.hidden_size = 64;
  m.num_hidden_layers = 2;
  m.head_dim = 16;
  m.moe_intermediate_size = 32;
  m.num_experts = 4;
  m.vocab_size = 32;
  return m;
}

// Every tensor of folder `dir`, copied.
std::map<std::string, at::Tensor> tensors_of(const std::string& dir) {
  hf::FolderReader r(dir);
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, file] : r.where()) out[name] = r.view(name).clone();
  return out;
}

// Folder `dir` rewritten to hold `t` in one model.safetensors, `config` as its config.json, and
// `keep` (other files of `from`) copied.
void write_folder(const std::string& dir, const std::map<std::string, at::Tensor>& t, const std::string& config,
                  const std::string& from = "", const std::vector<std::string>& keep = {}) {
  fs::make_dirs(dir);
  for (const auto& n : fs::list_dir(dir)) fs::remove_tree(dir + "/" + n);
  st::write_file(dir + "/model.safetensors", std::vector<std::pair<std::string, at::Tensor>>(t.begin(), t.end()));
  fs::write_text_atomic(dir + "/config.json", config);
  for (const auto& k : keep) fs::copy_file(from + "/" + k, dir + "/" + k);
}

std::string config_with(const model::ModelConfig& c, const std::string& key, const json::Value& v) {
  json::Value j = json::parse(model::hf_config_json(c), "config.json");
  j.set(key, v);
  return j.dump(2) + "\n";
}

// The message names every needle.
void expect_names(const std::string& e, const std::vector<std::string>& needles, const std::string& what) {
  EXPECT_FALSE(e.empty()) << what << ": accepted";
  for (const auto& n : needles) EXPECT_NE(e.find(n), std::string::npos) << what << ": should name '" << n << "': " << e;
}

std::string convert_error(const std::string& in, const std::string& out, qat::Format f) {
  qat::ConvertOptions o;
  o.format = f;
  o.engine = qat::Engine::kVllm;
  return error_of([&] { qat::convert_checkpoint(in, out, o); });
}

}  // namespace

// A 2-layer folder whose config.json says 1 layer; a missing tensor; a tensor of the wrong
// shape: refused by load_hf_folder, the rollout loader and convert, naming the file and tensor.
TEST(ModelFolder, ConfigContradictingTheTensorsIsRefusedByEveryReader) {
  TempDir d;
  const model::ModelConfig c = small();
  model::Qwen3Moe m(c, 3);
  model::save_hf_folder(m, d.file("two"));
  const auto t = tensors_of(d.file("two"));
  write_folder(d.file("one"), t, config_with(c, "num_hidden_layers", int64_t{1}));
  const std::vector<std::string> one = {d.file("one/model.safetensors"), "unexpected tensor 'model.layers.1.",
                                        "num_hidden_layers 1"};
  expect_names(error_of([&] { model::load_hf_folder(d.file("one")); }), one, "load_hf_folder");
  expect_names(error_of([&] { rollout::load(d.file("one"), at::kCPU); }), one, "rollout::load");
  expect_names(convert_error(d.file("one"), d.file("out"), qat::Format::kMXFP8), one, "convert");
  EXPECT_FALSE(fs::exists(d.file("out")));

  auto missing = t;
  missing.erase("model.layers.1.self_attn.k_norm.weight");
  write_folder(d.file("missing"), missing, model::hf_config_json(c));
  const std::vector<std::string> gone = {d.file("missing"), "'model.layers.1.self_attn.k_norm.weight' missing"};
  expect_names(error_of([&] { model::load_hf_folder(d.file("missing")); }), gone, "load_hf_folder");
  expect_names(error_of([&] { rollout::load(d.file("missing"), at::kCPU); }), gone, "rollout::load");
  expect_names(convert_error(d.file("missing"), d.file("out"), qat::Format::kMXFP8), gone, "convert");

  auto shaped = t;
  shaped["model.layers.0.self_attn.q_norm.weight"] = at::ones({8});  // head_dim is 16
  write_folder(d.file("shaped"), shaped, model::hf_config_json(c));
  const std::vector<std::string> bad = {d.file("shaped/model.safetensors"),
                                        "'model.layers.0.self_attn.q_norm.weight' has shape [8]", "expects [16]"};
  expect_names(error_of([&] { model::load_hf_folder(d.file("shaped")); }), bad, "load_hf_folder");
  expect_names(error_of([&] { rollout::load(d.file("shaped"), at::kCPU); }), bad, "rollout::load");
  expect_names(convert_error(d.file("shaped"), d.file("out"), qat::Format::kNVFP4), bad, "convert");
  EXPECT_FALSE(fs::exists(d.file("out")));
  // The CLI: exit 1, one line, nothing written.
  const auto r = test::run_fp4qat(
      {"convert", "--in", d.file("one"), "--out", d.file("cli"), "--format", "mxfp8", "--device", "cpu"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("model.layers.1."), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d.file("cli")));
}

// tie_word_embeddings: true makes the head the embedding matrix (as in Hugging Face): an
// lm_head.weight beside it is refused unless it is an exact copy of the embeddings.
TEST(ModelFolder, TiedEmbeddingsWithADifferentHeadAreRefusedAndAnExactCopyIgnored) {
  TempDir d;
  const model::ModelConfig c = small();
  model::Qwen3Moe m(c, 4);
  model::save_hf_folder(m, d.file("untied"));
  auto t = tensors_of(d.file("untied"));
  write_folder(d.file("tied"), t, config_with(c, "tie_word_embeddings", true));
  const std::vector<std::string> needles = {d.file("tied/model.safetensors"), "'lm_head.weight'",
                                            "tie_word_embeddings"};
  expect_names(error_of([&] { model::load_hf_folder(d.file("tied")); }), needles, "load_hf_folder");
  expect_names(error_of([&] { rollout::load(d.file("tied"), at::kCPU); }), needles, "rollout::load");
  t["lm_head.weight"] = t.at("model.embed_tokens.weight").clone();
  write_folder(d.file("copy"), t, config_with(c, "tie_word_embeddings", true));
  const model::Qwen3Moe a = model::load_hf_folder(d.file("copy"));
  EXPECT_TRUE(a.config().tie_word_embeddings);
  EXPECT_NO_THROW(rollout::load(d.file("copy"), at::kCPU));
  t.erase("lm_head.weight");
  write_folder(d.file("plain"), t, config_with(c, "tie_word_embeddings", true));
  EXPECT_NO_THROW(model::load_hf_folder(d.file("plain")));
}

// Quantized folders are checked in their own layout: NVFP4 (codes, block scales, weight_scale_2,
// input_scale) and MXFP8 (vLLM's weight_scale) load; a scale missing, a stray tensor or a NaN
// global scale is refused by name.
TEST(ModelFolder, QuantizedExportsAreCheckedInTheirOwnLayout) {
  TempDir d;
  const model::ModelConfig c = small();
  model::Qwen3Moe m(c, 5);
  model::save_hf_folder(m, d.file("hf"));
  qat::ConvertOptions o;
  for (const auto& mod : qat::select_modules(d.file("hf"), o)) o.input_amax[mod] = 1.0f;
  qat::convert_checkpoint(d.file("hf"), d.file("nvfp4"), o);
  o.format = qat::Format::kMXFP8;
  o.engine = qat::Engine::kVllm;
  qat::convert_checkpoint(d.file("hf"), d.file("mxfp8"), o);
  EXPECT_EQ(rollout::load(d.file("nvfp4"), at::kCPU).policy->quantized_count(), 4u);
  EXPECT_EQ(rollout::load(d.file("mxfp8"), at::kCPU).policy->quantized_count(), 4u);
  const std::string cfg = fs::read_text(d.file("nvfp4/config.json"));
  const std::vector<std::string> keep = {"hf_quant_config.json"};
  const std::string x = "model.layers.1.mlp.experts.2.down_proj";
  auto t = tensors_of(d.file("nvfp4"));
  t.erase(x + ".input_scale");
  write_folder(d.file("a"), t, cfg, d.file("nvfp4"), keep);
  expect_names(error_of([&] { rollout::load(d.file("a"), at::kCPU); }), {d.file("a"), x + ".input_scale' missing"},
               "missing input_scale");
  t = tensors_of(d.file("nvfp4"));
  t[x + ".weight_zero_point"] = at::zeros({}, at::kFloat);
  write_folder(d.file("b"), t, cfg, d.file("nvfp4"), keep);
  expect_names(error_of([&] { rollout::load(d.file("b"), at::kCPU); }),
               {d.file("b/model.safetensors"), "unexpected tensor '" + x + ".weight_zero_point'"}, "stray tensor");
  t = tensors_of(d.file("nvfp4"));
  t[x + ".weight_scale"] = t[x + ".weight_scale"].narrow(1, 0, 1).contiguous();
  write_folder(d.file("c"), t, cfg, d.file("nvfp4"), keep);
  expect_names(error_of([&] { rollout::load(d.file("c"), at::kCPU); }),
               {x + ".weight_scale' has shape [64, 1]", "expects [64, 2]"}, "block scales' shape");
  t = tensors_of(d.file("nvfp4"));
  t[x + ".weight_scale_2"] = at::full({}, std::numeric_limits<float>::infinity());
  write_folder(d.file("e"), t, cfg, d.file("nvfp4"), keep);
  expect_names(error_of([&] { rollout::load(d.file("e"), at::kCPU); }),
               {d.file("e/model.safetensors"), x + ".weight' contains NaN or Inf"}, "an infinite global scale");
  // MXFP8 (vLLM's layout, weight_scale): SGLang's scale name beside it is a tensor no engine loads.
  auto mx = tensors_of(d.file("mxfp8"));
  mx[x + ".weight_scale_inv"] = mx.at(x + ".weight_scale").clone();
  write_folder(d.file("f"), mx, fs::read_text(d.file("mxfp8/config.json")));
  expect_names(error_of([&] { rollout::load(d.file("f"), at::kCPU); }),
               {d.file("f/model.safetensors"), "unexpected tensor '" + x + ".weight_scale_inv'"}, "MXFP8 stray scale");
}

// NaN / Inf weights: refused by load_hf_folder, the rollout loader, convert (a norm it only
// copies, too) and `eval` (exit 1, not val_loss null), naming the tensor and its file.
TEST(ModelFolder, NonFiniteWeightsAreRefusedByEveryReader) {
  TempDir d;
  const model::ModelConfig c = small();
  model::Qwen3Moe m(c, 6);
  model::save_hf_folder(m, d.file("hf"));
  auto t = tensors_of(d.file("hf"));
  t["model.norm.weight"][3] = std::nan("");
  write_folder(d.file("nan"), t, model::hf_config_json(c));
  const std::vector<std::string> nan = {d.file("nan/model.safetensors"), "'model.norm.weight' contains NaN or Inf"};
  expect_names(error_of([&] { model::load_hf_folder(d.file("nan")); }), nan, "load_hf_folder");
  expect_names(error_of([&] { rollout::load(d.file("nan"), at::kCPU); }), nan, "rollout::load");
  expect_names(convert_error(d.file("nan"), d.file("out"), qat::Format::kMXFP8), nan, "convert");
  EXPECT_FALSE(fs::exists(d.file("out")));
  t = tensors_of(d.file("hf"));
  t["model.layers.0.mlp.experts.1.up_proj.weight"][0][5] = -std::numeric_limits<float>::infinity();
  write_folder(d.file("inf"), t, model::hf_config_json(c));
  const auto r = test::run_fp4qat({"eval", "--model", d.file("inf"), "--device", "cpu", "--synthetic-batches", "1",
                                   "--exact-match", "0"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("'model.layers.0.mlp.experts.1.up_proj.weight' contains NaN or Inf"), std::string::npos)
      << r.err;
  EXPECT_EQ(r.out.find("val_loss"), std::string::npos) << r.out;
}
