// rollout/serving.h — the rollout side: a model loaded from an exported (or converted) Hugging
// Face folder — BF16, ModelOpt NVFP4 or MXFP8 — through the safetensors reader only (never from
// trainer memory), run as a serving engine runs it: NVFP4 codes, block scales and
// `weight_scale_2` from the files, activations quantized dynamically as in training (NVFP4 1x16
// blocks with the amax of the current input, per expert, or by the export's recorded recipe:
// Four Over Six, per row, or left in bf16 for W4A16; MXFP8 1x32), the emulated GEMM of
// numerics.md (autograd/nvfp4_linear.h's forward-only functions, so on the same device the
// arithmetic is the trainer's). Gate and up of an expert run with one weight_scale_2 (the
// gate's, as engines fuse them; a checkpoint where they differ gets a warning).
#pragma once
#include <map>
#include <memory>
#include <string>

#include "autograd/nvfp4_linear.h"
#include "io/hf_folder.h"
#include "model/qwen3_moe.h"
#include "qat/recipe.h"

namespace fp4qat::rollout {

using qat::Format;

// Serves the quantized modules of a loaded export; other linears run in the compute dtype.
class ServingPolicy : public model::LinearPolicy {
 public:
  struct Weight {
    at::Tensor values;  // bf16 [N, K] or [E, P*R, K]: e2m1(q) * sb (NVFP4) or the MXFP8 value
    at::Tensor s_dec;   // NVFP4: float32 [] or [E] (weight_scale_2); MXFP8: undefined
    // flashinfer_static: float32 [], the static activation amax of the module's (all its
    // experts') activations, from the largest input_scale (qat/export.h); else undefined.
    at::Tensor act_amax;
  };
  // act: the NVFP4 activations' side of the export's recipe (rules.activations, rules.w4a16).
  ServingPolicy(Format f, std::map<std::string, Weight> w, autograd::NVFP4LinearOptions act = {})
      : format_(f), weights_(std::move(w)), act_(act) {}
  at::Tensor linear(const std::string& name, const at::Tensor& x, const at::Tensor& w) override;
  at::Tensor grouped(const std::string& name, const at::Tensor& x, const at::Tensor& w,
                     const autograd::ExpertRows& rows) override;
  size_t quantized_count() const { return weights_.size(); }
  void to(const at::Device& dev);

 private:
  Format format_;
  std::map<std::string, Weight> weights_;  // by model parameter name
  autograd::NVFP4LinearOptions act_;
  // act_, with the module's static activation amax when it has one.
  autograd::NVFP4LinearOptions options(const Weight& w) const;
};

struct Loaded {
  std::unique_ptr<model::Qwen3Moe> model;  // quantized weights hold their dequantized values
  std::unique_ptr<ServingPolicy> policy;
  Format format = Format::kBF16;
};

// Loads `dir` onto `device` (throws naming the file or tensor on a malformed folder). Served with
// the serving profile the export records (qat.serving; "fp4qat" when none), or `serving_override`
// ("fp4qat" | "marlin" | "flashinfer_per_token" | "flashinfer_static"; all but fp4qat for NVFP4 W4A4
// checkpoints only; flashinfer_static quantizes each layer's activations with the static scale
// engines derive from its largest input_scale, warning where that scale is not one fp4qat writes):
// how `fp4qat eval --serving` asks what another engine would compute from the same files.
// cache: device copies of shard files kept across loads (hf::ShardCache; the RL loop's sampler
// keeps one, so that an export's frozen shard, the previous export's file, is not read again).
Loaded load(const std::string& dir, const at::Device& device, const std::string& serving_override = "",
            hf::ShardCache* cache = nullptr);

// Log-probabilities of ids[:, 1:] given ids[:, :-1] (autograd::target_logprobs): float32 [B, T-1];
// no gradient.
at::Tensor token_logprobs(const model::Qwen3Moe& m, model::LinearPolicy& p, const at::Tensor& ids, at::ScalarType dt);

}  // namespace fp4qat::rollout
