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

Qwen3Moe model_of_folder(const std::string& dir, const ModelConfig& cfg) {
  try {
    return Qwen3Moe(cfg, 0);  // refuses a shape that cannot be built, before allocating
  } catch (const Error& e) {
    FP4QAT_FAIL(dir, "/config.json: ", e.what());
  }
}

Qwen3Moe load_hf_folder(const std::string& dir) {
  Qwen3Moe model = model_of_folder(dir, read_hf_config(dir));
  hf::FolderReader files(dir);
  const auto expected = model.hf_names();
  for (const auto& [name, file] : files.where()) {
    const bool known = std::find(expected.begin(), expected.end(), name) != expected.end();
    FP4QAT_CHECK(known || name.find("rotary_emb.inv_freq") != std::string::npos, dir, ": unexpected tensor '", name,
                 "' (not part of a Qwen3-MoE model with this config)");
  }
  model.load_hf([&](const std::string& name) { return files.view(name).to(at::kFloat); });
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
