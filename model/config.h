// model/config.h — the shape of a Qwen3-MoE model under its Hugging Face config.json names, and
// config.json reading and writing.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fp4qat::model {

struct ModelConfig {  // Hugging Face Qwen3-MoE fields (config.json names)
  int64_t vocab_size = 512;
  int64_t hidden_size = 128;
  int64_t num_hidden_layers = 2;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 2;
  int64_t head_dim = 32;
  int64_t intermediate_size = 256;  // dense MLP layers (mlp_only_layers)
  int64_t moe_intermediate_size = 64;
  int64_t num_experts = 8;
  int64_t num_experts_per_tok = 2;
  bool norm_topk_prob = true;
  double rms_norm_eps = 1e-6;
  double rope_theta = 1e6;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  std::vector<int64_t> mlp_only_layers;
  int64_t decoder_sparse_step = 1;
  double router_aux_loss_coef = 0.001;
};

// Reads `dir`/config.json (errors name that file).
ModelConfig read_hf_config(const std::string& dir);
// The config.json text of a model of shape `cfg`.
std::string hf_config_json(const ModelConfig& cfg);

}  // namespace fp4qat::model
