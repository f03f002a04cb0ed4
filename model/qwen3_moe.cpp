// model/qwen3_moe.cpp — see qwen3_moe.h. The arithmetic follows Hugging Face's Qwen3-MoE modeling code
// (RMSNorm in fp32, RoPE with rotate-half, router softmax in fp32) so that logits agree.
#include "model/qwen3_moe.h"

#include <fstream>
#include <iterator>
#include <sstream>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>

#include <unistd.h>

#include "autograd/elementwise.h"
#include "autograd/permute_rows.h"
#include "autograd/rms_norm.h"
#include "kernels/common/check.h"
#include "io/names.h"

namespace fp4qat::model {

namespace {

// Activation checkpointing of one decoder layer: forward runs the layer without a graph and keeps
// its input; backward runs it again with one and backpropagates through it (the reentrant
// scheme of torch.utils.checkpoint), the parameters' gradients accumulating as they would
// without checkpointing. Outputs: the layer's (x out, then a MoE layer's aux, load, routed; the
// last two carry no gradient).
struct LayerRecompute : torch::CustomClassHolder {
  std::function<std::vector<at::Tensor>(const at::Tensor&)> run;
};

struct LayerCheckpoint : torch::autograd::Function<LayerCheckpoint> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const c10::intrusive_ptr<LayerRecompute>& f) {
    ctx->save_for_backward({x});
    ctx->saved_data["f"] = c10::IValue::make_capsule(f);
    std::vector<at::Tensor> out = f->run(x);
    if (out.size() > 2) ctx->mark_non_differentiable({out[2], out[3]});
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto f = c10::static_intrusive_pointer_cast<LayerRecompute>(ctx->saved_data["f"].toCapsule());
    const at::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    std::vector<at::Tensor> outs, gs;
    {
      at::AutoGradMode on(true);
      const std::vector<at::Tensor> y = f->run(x);
      for (size_t j = 0; j < 2 && j < y.size(); ++j)
        if (y[j].requires_grad()) {
          outs.push_back(y[j]);
          gs.push_back(grads[j].defined() ? grads[j] : at::zeros_like(y[j]));
        }
    }
    torch::autograd::backward(outs, gs);
    return {x.grad(), at::Tensor()};
  }
};

}  // namespace

namespace {

std::string L(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

// The rows of each of E experts from the routed experts sorted ascending (sorted [n], integers): each
// expert's end row, the number of ids <= e (int32 [E] on their device; where n fits int32), and
// the counts on the host, made from the ends in one copy.
autograd::ExpertRows expert_rows(const at::Tensor& sorted, int64_t E) {
  const int64_t n = sorted.numel();
  const bool i32 = n <= std::numeric_limits<int32_t>::max();
  const at::Tensor ends = at::searchsorted(sorted, at::arange(E, sorted.options()), /*out_int32=*/i32, /*right=*/true);
  const at::Tensor host = ends.to(at::kCPU).to(at::kLong);  // [E]
  at::Tensor counts = at::empty({E}, host.options());
  const int64_t* h = host.data_ptr<int64_t>();
  int64_t* c = counts.data_ptr<int64_t>();
  for (int64_t e = 0; e < E; ++e) c[e] = h[e] - (e > 0 ? h[e - 1] : 0);
  return {counts, i32 ? ends : at::Tensor()};
}

}  // namespace

// ---- model ----------------------------------------------------------------------------------
namespace {
// a * b, or a clear error naming what is being counted when it does not fit int64.
int64_t mul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  FP4QAT_CHECK(!__builtin_mul_overflow(a, b, &r), "model shape: the ", what, " overflow a 64-bit parameter count");
  return r;
}
int64_t add_count(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  FP4QAT_CHECK(!__builtin_add_overflow(a, b, &r), "model shape: the ", what, " overflow a 64-bit parameter count");
  return r;
}
}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  // w.to(x's dtype) * norm(x) (autograd::rms_norm_rows): on CUDA the warp-a-row kernels with the
  // weight's product fused where the row fits them (the q/k norms over the head dim; hidden sizes
  // up to 512), the unweighted kernels times w up to 1024, ATen's fused norm times w beyond; on
  // the CPU the float32 composite times w.
  return autograd::rms_norm_rows(x, eps, w);
}

bool is_moe_layer(const model::ModelConfig& c, int64_t i) {
  const auto& m = c.mlp_only_layers;
  return std::find(m.begin(), m.end(), i) == m.end() && c.num_experts > 0 && (i + 1) % c.decoder_sparse_step == 0;
}

int64_t moe_layer_count(const model::ModelConfig& c) {
  int64_t n = 0;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) n += is_moe_layer(c, i) ? 1 : 0;
  return n;
}

std::string gib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f GiB", bytes / static_cast<double>(1ll << 30));
  return b;
}

ParameterCount parameter_count(const model::ModelConfig& c) {
  const std::pair<const char*, int64_t> positive[] = {{"vocab_size", c.vocab_size},
                                                      {"hidden_size", c.hidden_size},
                                                      {"num_hidden_layers", c.num_hidden_layers},
                                                      {"num_attention_heads", c.num_attention_heads},
                                                      {"num_key_value_heads", c.num_key_value_heads},
                                                      {"head_dim", c.head_dim},
                                                      {"decoder_sparse_step", c.decoder_sparse_step}};
  for (const auto& [k, v] : positive) FP4QAT_CHECK(v > 0, "model shape: ", k, " must be > 0, got ", v);
  FP4QAT_CHECK(c.num_experts >= 0, "model shape: num_experts must be >= 0, got ", c.num_experts);
  // Bounds far above any real model on what is counted in loops (the sizes are checked for
  // overflow and memory below).
  const std::pair<const char*, int64_t> bounded[] = {{"num_hidden_layers", c.num_hidden_layers},
                                                     {"num_attention_heads", c.num_attention_heads},
                                                     {"num_key_value_heads", c.num_key_value_heads},
                                                     {"decoder_sparse_step", c.decoder_sparse_step}};
  for (const auto& [k, v] : bounded)
    FP4QAT_CHECK(v <= (int64_t(1) << 16), "model shape: ", k, " = ", v, " is beyond any model (at most 65536)");
  FP4QAT_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, "model shape: num_attention_heads (",
               c.num_attention_heads, ") must be a multiple of num_key_value_heads (", c.num_key_value_heads, ")");
  FP4QAT_CHECK(c.num_experts == 0 || (c.num_experts_per_tok >= 1 && c.num_experts_per_tok <= c.num_experts),
               "model shape: num_experts_per_tok must be in [1, num_experts = ", c.num_experts, "], got ",
               c.num_experts_per_tok);
  FP4QAT_CHECK(c.max_position_embeddings > 0, "model shape: max_position_embeddings must be > 0, got ",
               c.max_position_embeddings);
  FP4QAT_CHECK(std::isfinite(c.rope_theta) && c.rope_theta > 0, "model shape: rope_theta must be finite and > 0, got ",
               c.rope_theta);
  FP4QAT_CHECK(std::isfinite(c.rms_norm_eps) && c.rms_norm_eps > 0,
               "model shape: rms_norm_eps must be finite and > 0, got ", c.rms_norm_eps);
  const int64_t H = c.hidden_size, hd = c.head_dim;
  const int64_t moe_layers = moe_layer_count(c);
  const int64_t dense_layers = c.num_hidden_layers - moe_layers;
  FP4QAT_CHECK(moe_layers == 0 || c.moe_intermediate_size > 0, "model shape: moe_intermediate_size must be > 0, got ",
               c.moe_intermediate_size);
  FP4QAT_CHECK(dense_layers == 0 || c.intermediate_size > 0, "model shape: intermediate_size must be > 0 (",
               dense_layers, " dense layers), got ", c.intermediate_size);
  ParameterCount pc;
  // Per layer: q, o [nH*hd, H]; k, v [nKV*hd, H]; three norms.
  const int64_t heads = add_count(c.num_attention_heads, c.num_key_value_heads, "attention heads");
  const int64_t attn = add_count(
      mul(mul(mul(2, heads, "attention projections"), hd, "attention projections"), H, "attention projections"),
      add_count(mul(2, H, "norms"), mul(2, hd, "norms"), "norms"), "attention projections");
  // Experts: gate_up [E, 2I, H] + down [E, H, I]; router [E, H].
  const char* what = "experts (num_experts x 3 x moe_intermediate_size x hidden_size)";
  const int64_t expert = moe_layers ? mul(mul(mul(3, c.moe_intermediate_size, what), H, what), c.num_experts, what) : 0;
  pc.experts = mul(expert, moe_layers, "experts of all MoE layers");
  const int64_t moe_rest = mul(c.num_experts, H, "routers (num_experts x hidden_size)");
  what = "dense MLPs (3 x intermediate_size x hidden_size)";
  const int64_t dense_mlp = dense_layers ? mul(mul(3, c.intermediate_size, what), H, what) : 0;
  const int64_t embed = mul(mul(c.vocab_size, H, "embeddings (vocab_size x hidden_size)"),
                            c.tie_word_embeddings ? 1 : 2, "embeddings and head");
  int64_t t = add_count(embed, H, "embeddings and head");
  t = add_count(t, mul(attn, c.num_hidden_layers, "attention of all layers"), "parameters");
  t = add_count(t, pc.experts, "parameters");
  t = add_count(t, mul(moe_rest, moe_layers, "routers of all MoE layers"), "parameters");
  pc.total = add_count(t, mul(dense_mlp, dense_layers, "dense MLPs of all layers"), "parameters");
  return pc;
}

namespace {
// A limit file's number (bytes), or 0 for "max", a missing or unreadable file, or a value so large
// that it means no limit (cgroup v1 writes 2^63 rounded down to the page size).
int64_t limit_in(const std::string& path) {
  std::ifstream f(path);
  std::string v;
  if (!(f >> v) || v.empty() || v.size() > 19 || v.find_first_not_of("0123456789") != std::string::npos) return 0;
  const unsigned long long n = std::stoull(v);
  return n >= (1ull << 60) ? 0 : static_cast<int64_t>(n);
}
}  // namespace

int64_t cgroup_memory_limit(const std::string& root, const std::string& self_cgroup) {
  std::string text = self_cgroup;
  if (text.empty()) {
    std::ifstream f("/proc/self/cgroup");
    text.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  int64_t best = 0;
  auto take = [&](int64_t v) {
    if (v > 0 && (best == 0 || v < best)) best = v;
  };
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {  // "hierarchy:controllers:path"
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string ctl = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    if (path.find("..") != std::string::npos) continue;  // stay inside the cgroup file system
    const bool v2 = ctl.empty(), v1 = ("," + ctl + ",").find(",memory,") != std::string::npos;
    if (!v2 && !v1) continue;
    const std::string base = v2 ? root : root + "/memory";
    const std::string file = v2 ? "/memory.max" : "/memory.limit_in_bytes";
    for (;;) {  // the cgroup and each ancestor up to the root
      take(limit_in(base + (path == "/" ? "" : path) + file));
      if (path.empty() || path == "/") break;
      const size_t slash = path.rfind('/');
      path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
    }
  }
  return best;
}

int64_t host_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  const int64_t phys = pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
  const int64_t cg = cgroup_memory_limit();
  return cg > 0 && (phys == 0 || cg < phys) ? cg : phys;
}

Qwen3Moe::Qwen3Moe(const model::ModelConfig& cfg, uint64_t seed) : Qwen3Moe(cfg, seed, Alloc::kRandom) {}

Qwen3Moe Qwen3Moe::uninitialized(const model::ModelConfig& cfg, const at::Device& dev) {
  return Qwen3Moe(cfg, 0, Alloc::kEmpty, dev);
}

Qwen3Moe::Qwen3Moe(const model::ModelConfig& cfg, uint64_t seed, Alloc alloc, const at::Device& dev)
    : cfg_(cfg), meta_(alloc == Alloc::kMeta), alloc_(alloc), empty_on_(dev) {
  const bool meta = meta_;
  // The fp32 masters are built here, on the host: refuse a shape that cannot fit before allocating.
  const ParameterCount pc = parameter_count(cfg);
  const int64_t ram = host_memory_bytes();
  FP4QAT_CHECK(meta || ram == 0 || pc.total <= ram / 4, "model shape: ", pc.total, " parameters (",
               gib(static_cast<double>(pc.total) * 4), " as fp32 masters, of which the experts ",
               gib(static_cast<double>(pc.experts) * 4), ") exceed this machine's memory (",
               gib(static_cast<double>(ram)), "); check model.num_experts, model.moe_intermediate_size, ",
               "model.hidden_size, model.vocab_size and model.num_hidden_layers");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t H = cfg.hidden_size, hd = cfg.head_dim, nH = cfg.num_attention_heads, nKV = cfg.num_key_value_heads;
  add("model.embed_tokens.weight", {cfg.vocab_size, H}, false, gen);
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    add(L(i) + "input_layernorm.weight", {H}, true, gen);
    add(L(i) + "self_attn.q_proj.weight", {nH * hd, H}, false, gen);
    add(L(i) + "self_attn.k_proj.weight", {nKV * hd, H}, false, gen);
    add(L(i) + "self_attn.v_proj.weight", {nKV * hd, H}, false, gen);
    add(L(i) + "self_attn.o_proj.weight", {H, nH * hd}, false, gen);
    add(L(i) + "self_attn.q_norm.weight", {hd}, true, gen);
    add(L(i) + "self_attn.k_norm.weight", {hd}, true, gen);
    add(L(i) + "post_attention_layernorm.weight", {H}, true, gen);
    if (is_moe_layer(i)) {
      const int64_t E = cfg.num_experts, I = cfg.moe_intermediate_size;
      add(L(i) + "mlp.gate.weight", {E, H}, false, gen);
      add(L(i) + "mlp.experts.gate_up_proj", {E, 2 * I, H}, false, gen);
      add(L(i) + "mlp.experts.down_proj", {E, H, I}, false, gen);
    } else {
      const int64_t I = cfg.intermediate_size;
      add(L(i) + "mlp.gate_proj.weight", {I, H}, false, gen);
      add(L(i) + "mlp.up_proj.weight", {I, H}, false, gen);
      add(L(i) + "mlp.down_proj.weight", {H, I}, false, gen);
    }
  }
  add("model.norm.weight", {H}, true, gen);
  if (!cfg.tie_word_embeddings) add("lm_head.weight", {cfg.vocab_size, H}, false, gen);
}

void Qwen3Moe::add(const std::string& name, std::vector<int64_t> shape, bool is_norm, at::Generator& gen) {
  at::Tensor t = meta_                     ? at::empty(shape, at::TensorOptions().device(at::kMeta))
                 : alloc_ == Alloc::kEmpty ? at::empty(shape, at::TensorOptions().device(empty_on_))
                 : is_norm                 ? at::ones(shape)
                                           : at::randn(shape, gen) * 0.02;
  params_.emplace_back(name, t.requires_grad_(true));
}

bool Qwen3Moe::is_moe_layer(int64_t i) const { return model::is_moe_layer(cfg_, i); }

const at::Tensor& Qwen3Moe::param(const std::string& name) const {
  for (const auto& [n, t] : params_)
    if (n == name) return t;
  FP4QAT_FAIL("model has no parameter '", name, "'");
}

void Qwen3Moe::to(const at::Device& device) {
  torch::NoGradGuard ng;
  for (auto& [n, t] : params_) t = t.detach().to(device).requires_grad_(true);
}

at::Tensor Qwen3Moe::attention(int64_t i, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                               at::ScalarType dt, LinearPolicy& policy, KVCache* cache, const at::Tensor& mask) const {
  const int64_t B = x.size(0), T = x.size(1), hd = cfg_.head_dim, nH = cfg_.num_attention_heads,
                nKV = cfg_.num_key_value_heads;
  const std::string p = L(i) + "self_attn.";
  auto proj = [&](const char* n) { return policy.linear(p + n + ".weight", x, param(p + n + ".weight")); };
  // RoPE on [B, T, heads, hd] (one kernel each way on CUDA: autograd/elementwise.h), then [B, heads, T, hd].
  auto normed = [&](const char* n, int64_t heads) {  // [B, T, heads, hd]
    return rms_norm(proj(n).view({B, T, heads, hd}), param(p + n[0] + "_norm.weight"), cfg_.rms_norm_eps);
  };
  at::Tensor q = autograd::rope(normed("q_proj", nH), cos, sin).transpose(1, 2);
  at::Tensor k = autograd::rope(normed("k_proj", nKV), cos, sin).transpose(1, 2);
  at::Tensor v = proj("v_proj").view({B, T, nKV, hd}).transpose(1, 2);
  int64_t past = 0;
  if (cache) {  // [B, nKV, past + T, hd]
    if (cache->k[i].defined()) {
      past = cache->k[i].size(2);
      k = at::cat({cache->k[i], k}, 2);
      v = at::cat({cache->v[i], v}, 2);
    }
    cache->k[i] = k;
    cache->v[i] = v;
  }
  // Grouped-query attention: on CUDA the kernels read each KV head for its nH / nKV query heads
  // (enable_gqa: no copies of K and V); on the CPU K and V are repeated (the reference arithmetic).
  const bool gqa = nKV != nH && x.is_cuda();
  if (nKV != nH && !gqa) {
    k = k.repeat_interleave(nH / nKV, 1);
    v = v.repeat_interleave(nH / nKV, 1);
  }
  at::Tensor o;
  if (mask.defined()) {  // packed documents: causal inside each one
    o = at::scaled_dot_product_attention(q, k, v, mask, 0.0, /*is_causal=*/false, std::nullopt, gqa);
  } else if (past == 0) {
    o = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, std::nullopt, gqa);
  } else {  // query t (position past + t) sees keys 0 .. past + t
    const at::Tensor qi = at::arange(T, at::TensorOptions().dtype(at::kLong).device(x.device())).unsqueeze(1);
    const at::Tensor kj = at::arange(past + T, at::TensorOptions().dtype(at::kLong).device(x.device())).unsqueeze(0);
    o = at::scaled_dot_product_attention(q, k, v, kj <= qi + past, 0.0, /*is_causal=*/false, std::nullopt, gqa);
  }
  o = o.transpose(1, 2).reshape({B, T, nH * hd});
  return policy.linear(p + "o_proj.weight", o, param(p + "o_proj.weight"));
}

at::Tensor Qwen3Moe::moe(int64_t i, const at::Tensor& x3, at::ScalarType dt, LinearPolicy& policy, at::Tensor* aux,
                         at::Tensor* load, const at::Tensor& replay_ids, const at::Tensor& replay,
                         at::Tensor* routed, const at::Tensor& counted) const {
  const int64_t H = cfg_.hidden_size, E = cfg_.num_experts, k = cfg_.num_experts_per_tok;
  const std::string p = L(i) + "mlp.";
  const at::Tensor x = x3.reshape({-1, H});  // [N, H]
  const int64_t N = x.size(0);
  const at::Tensor logits = policy.linear(p + "gate.weight", x, param(p + "gate.weight"));  // [N, E]
  const at::Tensor probs = at::softmax(logits.to(at::kFloat), 1);
  auto [topw, topi] = at::topk(probs, k, 1);  // [N, k]
  if (replay_ids.defined()) {  // R3: the given experts where replayed, the router's own scores at them
    topi = at::where(replay.reshape({N, 1}), replay_ids.reshape({N, k}), topi);
    topw = probs.gather(1, topi);
  }
  if (cfg_.norm_topk_prob) topw = topw / topw.sum(-1, true);
  *routed = topi.view({x3.size(0), x3.size(1), k});
  topw = topw.to(dt);

  // Switch load balancing: E * sum_e f_e * P_e (f_e: share of routed slots, P_e: mean prob).
  const at::Tensor onehot = at::one_hot(topi.reshape({-1}), E).to(at::kFloat);  // [N*k, E]
  if (!counted.defined()) {
    const at::Tensor f = onehot.mean(0);
    *aux = (f * probs.mean(0)).sum() * static_cast<double>(E);
    *load = f.detach();
  } else {  // over the counted tokens only (padding left out); none counted: 0
    const at::Tensor c = counted.reshape({N, 1}).to(at::kFloat);                   // [N, 1]
    const at::Tensor n = c.sum().clamp_min(1.0);
    const at::Tensor f = (onehot.view({N, k, E}).sum(1) * c).sum(0) / (n * static_cast<double>(k));  // [E]
    *aux = (f * ((probs * c).sum(0) / n)).sum() * static_cast<double>(E);
    *load = f.detach();
  }

  // Permute (token, slot) pairs by expert. Each expert's end row is found on the device (a search in
  // the sorted experts) for the grouped GEMMs; the counts go to the host in one copy, the layer's
  // only synchronisation (bincount on CUDA would add two: it reads the ids' min and max). Dispatch
  // and combine are permutations plus a sum over the k slots in slot order, never an atomic
  // accumulation (index_add on CUDA adds a token's k >= 3 expert outputs in a run-dependent order):
  // the forward, and the gradient reaching x, are the same bits in every run and on the rollout side.
  const at::Tensor flat_e = topi.reshape({-1});  // [N*k] slot j = (token j/k, slot j%k)
  // Sorted as the narrowest integers that hold the ids: the GPU's radix sort makes a pass a byte of
  // key (eight for int64); a stable sort's order is the same for any key type.
  const at::Tensor keys = flat_e.to(E < 256 ? at::kByte : E < 32768 ? at::kShort : at::kLong);
  // [N*k] the experts ascending, and the slot of each sorted row
  const auto [sorted_e, order] = at::sort(keys, /*stable=*/std::optional<bool>(true), /*dim=*/0, /*descending=*/false);
  const autograd::ExpertRows rows = expert_rows(sorted_e, E);
  const at::Tensor& counts = rows.counts;                             // [E] int64 on the CPU
  const at::Tensor slot_row = autograd::inverse_permutation(order);  // [N*k] sorted row of each slot
  const at::Tensor xs = autograd::replicate_rows(x, k, order, slot_row);  // [N*k, H] by expert
  at::Tensor y;
  if (!sharded()) {
    y = expert_mlp(p, xs, rows, policy);
  } else {
    y = ep_->run(xs, counts,
                 [&](const at::Tensor& rows, const at::Tensor& local) { return expert_mlp(p, rows, local, policy); });
  }
  // Back to (token, slot) order through the inverse permutation, weighted, summed over the slots.
  return autograd::combine_slots(y, topw, slot_row, order).view(x3.sizes());
}

// The experts' SwiGLU MLP on rows sorted by (local) expert: xs [T, H], counts [El] -> [T, H].
at::Tensor Qwen3Moe::expert_mlp(const std::string& p, const at::Tensor& xs, const autograd::ExpertRows& rows,
                                LinearPolicy& policy) const {
  const at::Tensor h = policy.grouped(p + "experts.gate_up_proj", xs, param(p + "experts.gate_up_proj"), rows);
  const at::Tensor act = autograd::swiglu(h);  // [T, I]: one kernel each way on CUDA (autograd/elementwise.h)
  return policy.grouped(p + "experts.down_proj", act, param(p + "experts.down_proj"), rows);
}

bool Qwen3Moe::is_expert_param(const std::string& name) {
  return names::ends_with(name, "mlp.experts.gate_up_proj") || names::ends_with(name, "mlp.experts.down_proj");
}

int64_t Qwen3Moe::local_experts() const { return sharded() ? cfg_.num_experts / ep_->ranks() : cfg_.num_experts; }

void Qwen3Moe::shard_experts(ExpertDispatch& ep) {
  const int64_t n = ep.ranks(), E = cfg_.num_experts;
  FP4QAT_CHECK(!ep_, "shard_experts: the model is sharded already");
  FP4QAT_CHECK(E % n == 0, "model.num_experts (", E, ") must be divisible by parallel.ep (", n, ")");
  ep_ = &ep;
  if (n == 1) return;
  const int64_t El = E / n;
  expert_offset_ = ep.rank() * El;
  torch::NoGradGuard ng;
  for (auto& [name, t] : params_)
    if (is_expert_param(name)) t = t.detach().narrow(0, expert_offset_, El).clone().requires_grad_(t.requires_grad());
}

std::vector<at::Tensor> Qwen3Moe::layer(int64_t i, const at::Tensor& x_in, const at::Tensor& cos, const at::Tensor& sin,
                                        at::ScalarType dt, LinearPolicy& policy, KVCache* cache, const at::Tensor& mask,
                                        const at::Tensor& ids_l, const at::Tensor& replay_l,
                                        const at::Tensor& counted) const {
  at::Tensor x = x_in + attention(i, rms_norm(x_in, param(L(i) + "input_layernorm.weight"), cfg_.rms_norm_eps), cos,
                                  sin, dt, policy, cache, mask);
  const at::Tensor hn = rms_norm(x, param(L(i) + "post_attention_layernorm.weight"), cfg_.rms_norm_eps);
  if (is_moe_layer(i)) {
    at::Tensor aux, load, routed;
    x = x + moe(i, hn, dt, policy, &aux, &load, ids_l, replay_l, &routed, counted);
    return {x, aux, load, routed};
  }
  const std::string p = L(i) + "mlp.";
  const at::Tensor g = policy.linear(p + "gate_proj.weight", hn, param(p + "gate_proj.weight"));
  const at::Tensor u = policy.linear(p + "up_proj.weight", hn, param(p + "up_proj.weight"));
  return {x + policy.linear(p + "down_proj.weight", at::silu(g) * u, param(p + "down_proj.weight"))};
}

ForwardOutput Qwen3Moe::forward(const at::Tensor& ids, at::ScalarType dt, LinearPolicy& policy, KVCache* cache,
                                const Packing* packing, const Routing* routing, const at::Tensor* counted) const {
  FP4QAT_CHECK(ids.dim() == 2 && ids.scalar_type() == at::kLong, "model input must be int64 [B, T], got ", ids.sizes());
  const int64_t moe_layers = moe_layer_count(cfg_);
  if (routing) {
    const auto& e = routing->experts;
    FP4QAT_CHECK(e.dim() == 4 && e.scalar_type() == at::kLong && e.size(0) == ids.size(0) &&
                     e.size(1) == ids.size(1) && e.size(2) == moe_layers && e.size(3) == cfg_.num_experts_per_tok,
                 "forward: replayed experts must be int64 [B, T, moe_layers, k] = [", ids.size(0), ", ", ids.size(1),
                 ", ", moe_layers, ", ", cfg_.num_experts_per_tok, "], got ", e.sizes(), " ", e.scalar_type());
    FP4QAT_CHECK(routing->replay.sizes() == ids.sizes() && routing->replay.scalar_type() == at::kBool,
                 "forward: the replay mask must be bool [B, T] like the ids ", ids.sizes());
    FP4QAT_CHECK(e.numel() == 0 || (e.min().item<int64_t>() >= 0 && e.max().item<int64_t>() < cfg_.num_experts),
                 "forward: a replayed expert id is outside [0, ", cfg_.num_experts, ")");
  }
  FP4QAT_CHECK(!counted || (counted->sizes() == ids.sizes() && counted->scalar_type() == at::kBool),
               "forward: the counted-token mask must be bool [B, T] like the ids ", ids.sizes());
  const at::Tensor counted_d = counted ? counted->to(ids.device()) : at::Tensor();
  const int64_t T = ids.size(1), hd = cfg_.head_dim;
  const int64_t pos0 = cache ? cache->pos : 0;
  FP4QAT_CHECK(pos0 + T <= cfg_.max_position_embeddings, "sequence of ", pos0 + T,
               " tokens exceeds max_position_embeddings ", cfg_.max_position_embeddings);
  if (cache && cache->k.empty()) {
    cache->k.resize(static_cast<size_t>(cfg_.num_hidden_layers));
    cache->v.resize(static_cast<size_t>(cfg_.num_hidden_layers));
  }
  // RoPE tables in fp32, cast like Hugging Face does.
  const auto fopt = at::TensorOptions().dtype(at::kFloat).device(ids.device());
  const at::Tensor inv =
      1.0 / at::pow(cfg_.rope_theta, at::arange(0, hd, 2, fopt.dtype(at::kLong)).to(at::kFloat) / hd);
  at::Tensor freqs, mask;  // [T, hd/2] or, packed, [B, T, hd/2]; mask bool [B, 1, T, T]
  if (packing) {
    FP4QAT_CHECK(!cache, "forward: packed documents cannot be decoded with a KV cache");
    FP4QAT_CHECK(packing->positions.sizes() == ids.sizes() && packing->segments.sizes() == ids.sizes(),
                 "forward: packing positions and segments must be [B, T] like the ids ", ids.sizes());
    FP4QAT_CHECK(T == 0 || packing->positions.max().item<int64_t>() < cfg_.max_position_embeddings,
                 "forward: a packed position exceeds max_position_embeddings ", cfg_.max_position_embeddings);
    freqs = packing->positions.to(ids.device()).to(at::kFloat).unsqueeze(-1) * inv;
    const at::Tensor seg = packing->segments.to(ids.device());
    const at::Tensor causal = at::ones({T, T}, ids.options().dtype(at::kBool)).tril();
    mask = (seg.unsqueeze(2) == seg.unsqueeze(1)).logical_and(causal).unsqueeze(1);
  } else {
    freqs = at::outer(at::arange(pos0, pos0 + T, fopt), inv);
  }
  const at::Tensor emb = at::cat({freqs, freqs}, -1);
  const at::Tensor cos = emb.cos().to(dt), sin = emb.sin().to(dt);  // [T, hd] or, packed, [B, T, hd]

  // The rows looked up in the fp32 table, then cast (the same values as looking up in a cast copy):
  // no compute-dtype copy of the whole vocabulary each forward, and the table's gradient is summed
  // in fp32 directly (no bf16 gradient of the table, then cast). At Qwen3's 151,936 x 2048 table
  // in bf16 the cast copy and that gradient are 0.6 GB each.
  at::Tensor x = at::embedding(param("model.embed_tokens.weight"), ids).to(dt);
  ForwardOutput out;
  std::vector<at::Tensor> auxes;
  const bool checkpoint = checkpoint_layers_ && !cache && at::GradMode::is_enabled();
  for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i) {
    at::Tensor ids_l, replay_l;
    if (routing && is_moe_layer(i)) {
      const int64_t m = static_cast<int64_t>(out.routed.size());
      ids_l = routing->experts.select(2, m).to(x.device());  // [B, T, k]
      replay_l = routing->replay.to(x.device());
    }
    std::vector<at::Tensor> r;
    if (checkpoint) {
      auto f = c10::make_intrusive<LayerRecompute>();
      f->run = [this, i, cos, sin, dt, &policy, mask, ids_l, replay_l, counted_d](const at::Tensor& xin) {
        return layer(i, xin, cos, sin, dt, policy, nullptr, mask, ids_l, replay_l, counted_d);
      };
      r = LayerCheckpoint::apply(x, f);
    } else {
      r = layer(i, x, cos, sin, dt, policy, cache, mask, ids_l, replay_l, counted_d);
    }
    x = r[0];
    if (r.size() > 1) {
      auxes.push_back(r[1]);
      out.expert_load.push_back(r[2]);
      out.routed.push_back(r[3]);
    }
  }
  x = rms_norm(x, param("model.norm.weight"), cfg_.rms_norm_eps);
  const std::string head = cfg_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  out.logits = policy.linear(head, x, param(head));
  out.aux_loss = auxes.empty() ? at::zeros({}, fopt) : at::stack(auxes).mean();
  if (cache) cache->pos += T;
  return out;
}

// ---- Hugging Face adapter -------------------------------------------------------------------
// The one place that maps internal names to Hugging Face names: views (no copies) of the master
// parameters under their HF names; to_hf converts them, load_hf copies into them.
std::vector<HfGroup> Qwen3Moe::hf_groups() const {
  std::vector<HfGroup> out;
  for (const auto& [name, t] : params_) {
    HfGroup g{name, t.detach(), {}, 1};                        // the detached tensor shares storage with the parameter
    if (names::ends_with(name, "mlp.experts.gate_up_proj")) {  // [E, 2I, H]
      const std::string base = name.substr(0, name.size() - std::string("gate_up_proj").size());
      g.parts = 2;
      for (int64_t e = 0; e < t.size(0); ++e) {
        g.names.push_back(base + std::to_string(expert_offset_ + e) + ".gate_proj.weight");
        g.names.push_back(base + std::to_string(expert_offset_ + e) + ".up_proj.weight");
      }
    } else if (names::ends_with(name, "mlp.experts.down_proj")) {  // [E, H, I]
      const std::string base = name.substr(0, name.size() - std::string("down_proj").size());
      for (int64_t e = 0; e < t.size(0); ++e)
        g.names.push_back(base + std::to_string(expert_offset_ + e) + ".down_proj.weight");
    } else {
      g.names.push_back(name);
    }
    out.push_back(std::move(g));
  }
  return out;
}

Params Qwen3Moe::hf_views() const {
  Params out;
  for (const auto& g : hf_groups()) {
    if (g.tensor.dim() != 3) {
      out.emplace_back(g.names[0], g.tensor);
      continue;
    }
    const int64_t R = g.tensor.size(1) / g.parts;
    for (int64_t e = 0; e < g.tensor.size(0); ++e)
      for (int64_t p = 0; p < g.parts; ++p) out.emplace_back(g.names[e * g.parts + p], g.tensor[e].narrow(0, p * R, R));
  }
  return out;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> Qwen3Moe::hf_shapes(const model::ModelConfig& cfg) {
  const Qwen3Moe layout(cfg, 0, Alloc::kMeta);
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (const auto& [name, v] : layout.hf_views()) out.emplace_back(name, v.sizes().vec());
  return out;
}

std::vector<std::string> Qwen3Moe::hf_names() const {
  std::vector<std::string> out;
  for (const auto& [name, v] : hf_views()) out.push_back(name);
  return out;
}

Params Qwen3Moe::to_hf(at::ScalarType dtype) const {
  Params out = hf_views();
  for (auto& [name, v] : out) v = v.to(dtype).contiguous();
  return out;
}

void Qwen3Moe::load_hf(const std::function<at::Tensor(const std::string&)>& get, const std::set<std::string>& filled) {
  torch::NoGradGuard ng;
  std::set<std::string> skip;  // the Hugging Face names of the parameters in `filled`
  for (const auto& g : hf_groups())
    if (filled.count(g.param)) skip.insert(g.names.begin(), g.names.end());
  for (auto& [name, view] : hf_views()) {
    if (skip.count(name)) continue;
    const at::Tensor t = get(name);
    FP4QAT_CHECK(t.sizes() == view.sizes(), "tensor '", name, "' has shape ", t.sizes(), ", expected ", view.sizes());
    view.copy_(t);
  }
}

}  // namespace fp4qat::model
