// model/config.cpp — see config.h.
#include "model/config.h"

#include "model/qwen3_moe.h"

#include "io/fs.h"
#include "io/json.h"
#include "kernels/common/check.h"

namespace fp4qat::model {

ModelConfig read_hf_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  FP4QAT_CHECK(fs::exists(path), path, ": not found (expected a Hugging Face model folder)");
  const json::Value j = json::parse(fs::read_text(path), path);
  const json::Value* mt = j.find("model_type");
  FP4QAT_CHECK(mt && mt->is_string() && mt->as_string() == "qwen3_moe", path, ": model_type must be \"qwen3_moe\"");
  ModelConfig m;
  auto geti = [&](const char* k, int64_t& v) {
    if (const json::Value* x = j.find(k)) v = x->as_int(path + ": " + k);
  };
  auto getd = [&](const char* k, double& v) {
    if (const json::Value* x = j.find(k)) v = x->as_double(path + ": " + k);
  };
  auto getb = [&](const char* k, bool& v) {
    if (const json::Value* x = j.find(k)) v = x->as_bool(path + ": " + k);
  };
  geti("vocab_size", m.vocab_size);
  geti("hidden_size", m.hidden_size);
  geti("num_hidden_layers", m.num_hidden_layers);
  geti("num_attention_heads", m.num_attention_heads);
  geti("num_key_value_heads", m.num_key_value_heads);
  // (no division by a zero or negative head count: the shape check below refuses it by name)
  m.head_dim = m.num_attention_heads > 0 && m.hidden_size > 0 ? m.hidden_size / m.num_attention_heads : 0;
  geti("head_dim", m.head_dim);
  geti("intermediate_size", m.intermediate_size);
  geti("moe_intermediate_size", m.moe_intermediate_size);
  geti("num_experts", m.num_experts);
  geti("num_local_experts", m.num_experts);  // the name transformers 5 writes
  geti("num_experts_per_tok", m.num_experts_per_tok);
  getb("norm_topk_prob", m.norm_topk_prob);
  getd("rms_norm_eps", m.rms_norm_eps);
  getd("rope_theta", m.rope_theta);
  if (const json::Value* rp = j.find("rope_parameters")) {  // transformers 5 layout
    if (const json::Value* t = rp->find("rope_theta"))
      m.rope_theta = t->as_double(path + ": rope_parameters.rope_theta");
  }
  geti("max_position_embeddings", m.max_position_embeddings);
  getb("tie_word_embeddings", m.tie_word_embeddings);
  geti("decoder_sparse_step", m.decoder_sparse_step);
  getd("router_aux_loss_coef", m.router_aux_loss_coef);
  m.mlp_only_layers.clear();
  if (const json::Value* x = j.find("mlp_only_layers"))
    for (const auto& v : x->as_array(path + ": mlp_only_layers"))
      m.mlp_only_layers.push_back(v.as_int(path + ": mlp_only_layers"));
  // Every reader (eval, generate, convert, train.init_from, check-export) gets a shape that can be
  // built, checked before any per-layer loop or allocation (parameter_count).
  try {
    parameter_count(m);
  } catch (const Error& e) {
    FP4QAT_FAIL(path, ": ", e.what());
  }
  return m;
}

std::string hf_config_json(const ModelConfig& m) {
  json::Value only = json::Value::array();
  for (int64_t l : m.mlp_only_layers) only.push_back(l);
  json::Value j = json::Value::object({
      {"architectures", json::Value::array({"Qwen3MoeForCausalLM"})},
      {"model_type", "qwen3_moe"},
      {"vocab_size", m.vocab_size},
      {"hidden_size", m.hidden_size},
      {"num_hidden_layers", m.num_hidden_layers},
      {"num_attention_heads", m.num_attention_heads},
      {"num_key_value_heads", m.num_key_value_heads},
      {"head_dim", m.head_dim},
      {"intermediate_size", m.intermediate_size},
      {"moe_intermediate_size", m.moe_intermediate_size},
      {"num_experts", m.num_experts},
      {"num_experts_per_tok", m.num_experts_per_tok},
      {"norm_topk_prob", m.norm_topk_prob},
      {"rms_norm_eps", m.rms_norm_eps},
      {"rope_theta", m.rope_theta},
      {"max_position_embeddings", m.max_position_embeddings},
      {"tie_word_embeddings", m.tie_word_embeddings},
      {"decoder_sparse_step", m.decoder_sparse_step},
      {"mlp_only_layers", only},
      {"router_aux_loss_coef", m.router_aux_loss_coef},
      {"hidden_act", "silu"},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"torch_dtype", "bfloat16"},
  });
  return j.dump(2) + "\n";
}

}  // namespace fp4qat::model
