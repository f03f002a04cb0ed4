// model/hf_folder.cpp — see hf_folder.h.
#include "model/hf_folder.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>

#include "io/fs.h"
#include "io/hf_folder.h"
#include "io/json.h"
#include "io/publish.h"
#include "io/safetensors.h"
#include "kernels/common/check.h"

namespace fp4qat::model {

Qwen3Moe model_of_folder(const std::string& dir, const ModelConfig& cfg, const at::Device& dev) {
  try {
    return Qwen3Moe::uninitialized(cfg, dev);  // refuses a shape that cannot be built, before allocating
  } catch (const Error& e) {
    FP4QAT_FAIL(dir, "/config.json: ", e.what());
  }
}

namespace {

// config.json's shape in a few words, for messages.
std::string shape_words(const ModelConfig& c) {
  return "num_hidden_layers " + std::to_string(c.num_hidden_layers) + ", num_experts " +
         std::to_string(c.num_experts) + ", hidden_size " + std::to_string(c.hidden_size) + ", vocab_size " +
         std::to_string(c.vocab_size) + ", tie_word_embeddings " + (c.tie_word_embeddings ? "true" : "false");
}

}  // namespace

void check_folder_tensors(hf::FolderReader& files, const ModelConfig& cfg, const HeldAs& held_as) {
  const std::string& dir = files.dir();
  const std::string cfg_path = dir + "/config.json";
  auto at_file = [&](const std::string& name) { return dir + "/" + files.where().at(name); };
  // Before any name is listed: a config whose experts alone outnumber the folder's tensors many
  // times over is refused from the counts (no list of 10^9 expert names is built for it).
  parameter_count(cfg);  // the shape is valid (read_hf_config checked it; the loop below is bounded)
  const int64_t moe_layers = moe_layer_count(cfg);
  const double expert_tensors = 3.0 * static_cast<double>(moe_layers) * static_cast<double>(cfg.num_experts);
  const double held = static_cast<double>(files.where().size());
  FP4QAT_CHECK(expert_tensors <= 4 * held + 1024, dir, ": config.json describes a model of at least ",
               expert_tensors, " expert tensors (", shape_words(cfg), ") but the folder holds ", files.where().size(),
               " tensors; config.json does not describe these files");

  std::vector<std::string> problems;
  size_t count = 0;
  auto problem = [&](std::string m) {
    if (++count <= 6) problems.push_back(std::move(m));
  };
  std::map<std::string, bool> expected;  // every tensor the folder should hold
  for (const auto& [name, shape] : Qwen3Moe::hf_shapes(cfg)) {
    const ExpectedTensors want = held_as ? held_as(name, shape) : ExpectedTensors{{name, {shape, std::nullopt}}};
    for (const auto& [n, e] : want) {
      expected[n] = true;
      if (!files.has(n)) {
        problem("tensor '" + n + "' missing (config.json's model has it)");
        continue;
      }
      const st::TensorInfo& t = files.info(n);
      const bool scalar_ok = e.shape.empty() && t.shape == std::vector<int64_t>{1};
      if (t.shape != e.shape && !scalar_ok)
        problem(at_file(n) + ": tensor '" + n + "' has shape " + st::shape_str(t.shape) + ", config.json's model " +
                (n == name ? "" : "(as '" + name + "' " + st::shape_str(shape) + ") ") + "expects " +
                st::shape_str(e.shape));
      if (e.dtype && t.dtype != *e.dtype)
        problem(at_file(n) + ": tensor '" + n + "' is " + st::dtype_name(t.dtype) + ", expected " +
                st::dtype_name(*e.dtype));
    }
  }
  for (const auto& [name, file] : files.where()) {
    if (expected.count(name) || name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    if (name == "lm_head.weight" && cfg.tie_word_embeddings && files.has("model.embed_tokens.weight")) {
      const at::Tensor head = files.view(name), embed = files.view("model.embed_tokens.weight");
      if (head.sizes() == embed.sizes() && at::equal(head.to(at::kFloat), embed.to(at::kFloat))) continue;  // a copy
      problem(at_file(name) + ": tensor 'lm_head.weight' differs from model.embed_tokens.weight while " + cfg_path +
              " says tie_word_embeddings: true (the head is then the embedding matrix and lm_head.weight would be "
              "ignored); set tie_word_embeddings to false or remove the tensor");
      continue;
    }
    problem(at_file(name) + ": unexpected tensor '" + name + "' (not part of the Qwen3-MoE model " + cfg_path +
            " describes: " + shape_words(cfg) + ")");
  }
  if (problems.empty()) return;
  std::string msg = dir + ": the tensors do not match config.json: ";
  for (size_t i = 0; i < problems.size(); ++i) msg += (i ? "; " : "") + problems[i];
  if (count > problems.size()) msg += "; and " + std::to_string(count - problems.size()) + " more";
  FP4QAT_FAIL(msg);
}

Qwen3Moe load_hf_folder(const std::string& dir) {
  const ModelConfig cfg = read_hf_config(dir);
  hf::FolderReader files(dir);
  check_folder_tensors(files, cfg);
  Qwen3Moe model = model_of_folder(dir, cfg);
  model.load_hf([&](const std::string& name) {
    const at::Tensor t = files.view(name);
    st::check_finite(t, name, dir + "/" + files.where().at(name));
    return t.to(at::kFloat);
  });
  return model;
}

void save_hf_folder(const Qwen3Moe& model, const std::string& dir, int64_t max_shard_bytes) {
  FP4QAT_CHECK(!fs::exists(dir), dir, ": already exists; refusing to overwrite");
  const std::string parent = fs::parent_dir(dir);
  FP4QAT_CHECK(fs::is_dir(parent), dir, ": parent folder '", parent, "' does not exist");
  io::write_folder_atomic(dir, [&](const std::string& tmp) {
    hf::ShardedWriter w(tmp, max_shard_bytes);
    for (const auto& [name, t] : model.to_hf(at::kBFloat16)) w.add(name, t);
    w.finish();
    fs::write_text_atomic(tmp + "/config.json", hf_config_json(model.config()));
  });
}

}  // namespace fp4qat::model
