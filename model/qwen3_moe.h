// model/qwen3_moe.h — Qwen3-MoE decoder in LibTorch with the Hugging Face layout
// (docs/spec/checkpoint-format.md): embeddings, RMSNorm, grouped-query attention with
// q/k RMSNorm and RoPE (causal), MoE blocks (router -> softmax -> top-k, renormalised when
// norm_topk_prob -> SwiGLU experts run through the grouped path -> weighted combine) with a
// Switch-style load-balancing loss, optional dense layers, tied or untied head.
//
// Parameters are fp32 masters under Hugging Face names, except the experts of layer i, which
// are stacked: `model.layers.i.mlp.experts.gate_up_proj` [E, 2I, H] (rows 0..I-1 = gate_proj,
// I..2I-1 = up_proj; one amax per expert is then shared by the gated pair) and
// `model.layers.i.mlp.experts.down_proj` [E, H, I]. to_hf()/load_hf() are the one adapter to
// per-expert Hugging Face names. All weights are `[out, in]`.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/expert_dispatch.h"
#include "model/linear_policy.h"

namespace fp4qat::model {

struct ForwardOutput {
  at::Tensor logits;                    // [B, T, vocab] in the compute dtype
  at::Tensor aux_loss;                  // scalar fp32: mean over MoE layers of the Switch loss
  std::vector<at::Tensor> expert_load;  // per MoE layer: fraction of routed slots per expert [E]
  std::vector<at::Tensor> routed;       // per MoE layer: int64 [B, T, k], the experts each token went to
};

// Routing replay (R3, issue 22): the tokens where `replay` is true go to the given experts (the
// rollout engine's choice) instead of the router's top-k; their gate weights are the router's own
// probabilities at those experts, normalised as the model normalises its top-k (norm_topk_prob),
// so the router still gets gradients. Other tokens are routed as usual.
struct Routing {
  at::Tensor experts;  // int64 [B, T, moe_layers, k], each in [0, num_experts)
  at::Tensor replay;   // bool [B, T]
};

// Documents packed into the rows of a batch: attention stays inside a document (causal within
// it) and RoPE positions restart at each document, so each document is computed as if alone.
struct Packing {
  at::Tensor positions;  // int64 [B, T]: each token's position inside its document
  at::Tensor segments;   // int64 [B, T]: each token's document (equal ids attend to each other)
};

using Params = std::vector<std::pair<std::string, at::Tensor>>;

// Keys and values of the tokens seen so far, per layer ([B, kv_heads, S, head_dim], after q/k
// norm and RoPE), for incremental decoding: forward() with a cache appends to it.
struct KVCache {
  std::vector<at::Tensor> k, v;
  int64_t pos = 0;  // tokens already in the cache
};

// One master parameter under its Hugging Face tensor names. A stacked expert tensor
// [E, P*R, K] holds P members (gate_up: P = 2, gate rows first) of E experts; member (e, p) is
// rows [p*R, (p+1)*R) of expert e and is named names[e*P + p]. Other parameters have one name.
struct HfGroup {
  std::string param;  // model-internal name
  at::Tensor tensor;  // the master (detached view, shares storage)
  std::vector<std::string> names;
  int64_t parts = 1;
};

class Qwen3Moe {
 public:
  // Random initialisation (normal(0, 0.02) for matrices, ones for norms), seeded.
  Qwen3Moe(const model::ModelConfig& cfg, uint64_t seed);
  // Parameters allocated on `dev` (fp32) but not initialised, for a loader that fills every one
  // (load_hf): a served export skips the random initialisation and the host copy.
  static Qwen3Moe uninitialized(const model::ModelConfig& cfg, const at::Device& dev);

  const model::ModelConfig& config() const { return cfg_; }

  // Expert parallelism: keep only this rank's experts [d.rank() * E/n, (d.rank() + 1) * E/n)
  // of every stacked expert tensor (n = d.ranks()); forward() then hands each MoE layer's routed
  // rows to `d` (dist/expert_dispatch.h: all-to-alls; every member must run the same forwards).
  // `d` must outlive the model. Call before training starts.
  void shard_experts(ExpertDispatch& d);
  bool sharded() const { return ep_ != nullptr && ep_->ranks() > 1; }
  int64_t expert_offset() const { return expert_offset_; }  // first global expert held here
  int64_t local_experts() const;                            // experts held here (E when not sharded)
  static bool is_expert_param(const std::string& name);     // a stacked expert tensor
  Params& params() { return params_; }
  const Params& params() const { return params_; }
  const at::Tensor& param(const std::string& name) const;
  bool is_moe_layer(int64_t layer) const;
  void to(const at::Device& device);
  // Activation checkpointing per decoder layer (train.activation_checkpointing): a training
  // forward (grad mode, no cache) keeps only each layer's input and runs the layer again in
  // backward; gradients are those without it, bit for bit.
  void set_activation_checkpointing(bool on) { checkpoint_layers_ = on; }
  bool activation_checkpointing() const { return checkpoint_layers_; }

  // ids: int64 [B, T]. compute: bf16 or fp32. With a cache, ids are the tokens after the cached
  // ones (positions cache->pos...), attending to the cache and causally among themselves. With
  // `packing` (not with a cache), the rows hold several documents that do not see each other.
  // `counted` (bool [B, T]): the tokens the router's aux loss and expert_load count, padding left out
  // (all tokens when null; every token is routed and computed either way). `routing`: R3 replay.
  ForwardOutput forward(const at::Tensor& ids, at::ScalarType compute, LinearPolicy& policy, KVCache* cache = nullptr,
                        const Packing* packing = nullptr, const Routing* routing = nullptr,
                        const at::Tensor* counted = nullptr) const;

  // Hugging Face adapter: per-expert names, tensors converted to `dtype`.
  Params to_hf(at::ScalarType dtype) const;
  // Copies every parameter from `get(hf_name)` (throws naming a missing or misshaped tensor),
  // except the parameters (HfGroup::param) in `filled`: the caller has written those already.
  void load_hf(const std::function<at::Tensor(const std::string&)>& get, const std::set<std::string>& filled = {});
  std::vector<std::string> hf_names() const;
  std::vector<HfGroup> hf_groups() const;  // the one internal <-> Hugging Face name mapping
  // The Hugging Face tensor names and shapes of a model of shape `cfg`, in hf_views order,
  // without allocating it: hf_groups() of a model whose parameters are shape-only (meta) tensors.
  // The shape is checked as the constructor checks it, but not against this machine's memory
  // (a folder may be converted, shard by shard, on a machine that could not hold the model).
  static std::vector<std::pair<std::string, std::vector<int64_t>>> hf_shapes(const model::ModelConfig& cfg);

 private:
  enum class Alloc { kRandom, kMeta, kEmpty };  // kEmpty: at::empty on empty_on_
  Qwen3Moe(const model::ModelConfig& cfg, uint64_t seed, Alloc alloc, const at::Device& dev = at::kCPU);
  Params hf_views() const;  // views of the masters under Hugging Face names
  void add(const std::string& name, std::vector<int64_t> shape, bool is_norm, at::Generator& gen);
  // cos, sin: [T, hd], or [B, 1, T, hd] with packing; mask: bool [B, 1, T, T] (packing) or undefined
  at::Tensor attention(int64_t layer, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                       at::ScalarType dt, LinearPolicy& policy, KVCache* cache, const at::Tensor& mask) const;
  // replay_ids: int64 [B, T, k] and replay: bool [B, T] (Routing, this layer's slice) or undefined;
  // *routed: the experts used, int64 [B, T, k].
  // counted: bool [B, T] or undefined (ForwardOutput's aux loss and load over those tokens only).
  at::Tensor moe(int64_t layer, const at::Tensor& x, at::ScalarType dt, LinearPolicy& policy, at::Tensor* aux,
                 at::Tensor* load, const at::Tensor& replay_ids, const at::Tensor& replay, at::Tensor* routed,
                 const at::Tensor& counted) const;
  at::Tensor expert_mlp(const std::string& p, const at::Tensor& xs, const autograd::ExpertRows& rows,
                        LinearPolicy& policy) const;
  model::ModelConfig cfg_;
  Params params_;
  bool meta_ = false;  // parameters are shape-only (hf_shapes)
  Alloc alloc_ = Alloc::kRandom;
  bool checkpoint_layers_ = false;
  // Decoder layer i on x [B, T, H]: {x out} for a dense layer, {x out, aux, load, routed} for a
  // MoE layer (moe()'s outputs); ids_l, replay_l: this layer's replay (or undefined).
  std::vector<at::Tensor> layer(int64_t i, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                at::ScalarType dt, LinearPolicy& policy, KVCache* cache, const at::Tensor& mask,
                                const at::Tensor& ids_l, const at::Tensor& replay_l, const at::Tensor& counted) const;
  at::Device empty_on_ = at::kCPU;
  ExpertDispatch* ep_ = nullptr;
  int64_t expert_offset_ = 0;
};

// Parameter counts of a model shape, checked before anything is allocated: every dimension must
// be positive (num_experts may be 0: dense) and the counts must fit int64; otherwise throws,
// naming the field. `experts` counts the stacked expert tensors (sharded under expert
// parallelism), `total` everything.
struct ParameterCount {
  int64_t total = 0;
  int64_t experts = 0;
};
ParameterCount parameter_count(const model::ModelConfig& cfg);
// Whether layer `i` of shape `cfg` is a MoE layer (not in mlp_only_layers, every
// decoder_sparse_step-th, and the model has experts); Qwen3Moe::is_moe_layer asks this.
bool is_moe_layer(const model::ModelConfig& cfg, int64_t i);
// Qwen3's RMSNorm: w * (x * rsqrt(mean(x^2) + eps)), the normalisation in float32, rounded to x's
// dtype before the weight (cast to x's dtype) multiplies it, as Hugging Face and the engines do.
// x [..., D], w [D]. On the CPU the composite of ATen ops (the reference arithmetic); on CUDA the
// normalisation is ATen's fused RMSNorm kernel (one kernel each way instead of about seven; the
// same formula, its own reduction order).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps);
// How many layers of shape `cfg` are MoE layers (is_moe_layer over its num_hidden_layers, which
// the caller has bounded: parameter_count / read_hf_config check the shape first).
int64_t moe_layer_count(const model::ModelConfig& cfg);
// Memory this process may use in bytes: the machine's physical memory, or the cgroup's limit when
// that is lower (containers); 0 when unknown.
int64_t host_memory_bytes();
// The tightest memory limit of this process's cgroup and its ancestors in bytes (cgroup v2
// memory.max, v1 memory.limit_in_bytes), 0 when there is none. `root`: the cgroup file system;
// `self_cgroup`: the text of /proc/self/cgroup (parameters for tests).
int64_t cgroup_memory_limit(const std::string& root = "/sys/fs/cgroup", const std::string& self_cgroup = "");
// `bytes` as "12.3 GiB", for messages.
std::string gib(double bytes);

}  // namespace fp4qat::model
