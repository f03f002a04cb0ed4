// qat/recipe.h — the QAT recipe as one type, used by the trainer (`qat:` of a recipe YAML),
// `convert`, `quantize`, the exports and the rollout side: which format the selected linears
// are quantized to, with which blocks, which backward, and which modules (module selection:
// qat/selection.h), and the NVFP4 scale rules of the 2026 recipes (Four Over Six, row-scaled
// activations, W4A16).
//
// The format names are spelled once here: `nvfp4`, `mxfp8`, `bf16` (no quantization; a recipe's
// `qat.format: none` is the same value: training in the compute dtype).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "autograd/nvfp4_linear.h"  // autograd::Backward
#include "kernels/quantize.h"       // Blocks

namespace fp4qat::qat {

enum class Format { kBF16, kNVFP4, kMXFP8 };
// "nvfp4" | "mxfp8" | "bf16"; throws naming the value and the accepted names.
Format parse_format(const std::string& s);
const char* to_string(Format f);  // "nvfp4" | "mxfp8" | "bf16"
// The block size of a quantized format's scales along K (16 NVFP4, 32 MXFP8; 1 for BF16).
int64_t block_size(Format f);

// Which parameters train: all of them, or only the quantized ones (the rest frozen).
enum class TrainScope { kAll, kQuantizedOnly };

// Module selection of a recipe (qat/selection.h applies it): globs on Hugging Face module names
// (`*` matches any characters, dots included), minus `exclude`, minus the first/last layers kept.
struct Selection {
  std::vector<std::string> modules = {"model.layers.*.mlp.experts.*"};
  std::vector<std::string> exclude;           // globs; a matched module stays in BF16
  int64_t keep_first_n = 0, keep_last_n = 0;  // decoder layers kept in BF16
};

// Which NVFP4 operands use Four Over Six (kernels/common/nvfp4_rule.h).
enum class FourOverSix { kNone, kWeights, kActivations, kAll };
enum class ActivationScale { kTensor, kRow };  // one activation S_dec per tensor (per expert) or per row
enum class Activations { kNVFP4, kBF16 };      // kBF16: W4A16, only the weights are quantized
// The serving engine's activation arithmetic the trainer's forward reproduces (qat.serving; the
// README's engine x GPU table). The exported checkpoint stays the recipe's (NVFP4 W4A4 with
// input_scale); the profile is recorded in it ("fp4qat": {"serving": ...}) so that the rollout
// side and the per-step probe run the same arithmetic.
//   kFp4qat: activations quantized per expert with their current amax (fp4qat eval's own).
//   kMarlin: activations not quantized (Marlin W4A16: vLLM and SGLang serving NVFP4 on Hopper
//            and Ampere); input_scale is exported for SM100 engines but unused.
//   kPerToken: one global scale per token (row-scaled; vLLM nvfp4_per_token, FlashInfer per-token).
//   kStatic:   one static activation scale per layer and module, shared by the layer's experts:
//              S_enc = 1 / max_e(input_scale_e), as vLLM's FlashInfer / CUTLASS MoE backends on
//              SM100 take it. The trainer quantizes with the value of the latest export (each
//              export calibrates it from the activations seen since the previous one; before the
//              first, a calibration forward at set-up), so training and serving use one number
//              (qat/export.h static_activation_amax). Not reproduced: FlashInfer's own block-scale
//              arithmetic (rcp.approx, its E4M3 conversion) — the spec's rule is used.
enum class Serving { kFp4qat, kMarlin, kPerToken, kStatic };
Serving parse_serving(const std::string& s);  // "fp4qat" | "marlin" | "flashinfer_per_token" | "flashinfer_static"
const char* to_string(Serving s);

struct Recipe {
  Format format = Format::kBF16;  // qat.format: none (= bf16) | nvfp4 | mxfp8
  Selection selection;
  Blocks weight_blocks = Blocks::k1D;  // NVFP4 weight blocks: 1x16 or 16x16
  autograd::Backward backward = autograd::Backward::kHighPrecision;
  TrainScope train = TrainScope::kAll;
  // NVFP4: quantize each selected weight once per change (optimizer step, load) and reuse it in
  // every forward until the next change and in that step's export (costs the quantized copy's
  // memory: 2.56 bytes per selected weight element); false: quantize in every forward.
  bool cache_weights = true;
  // NVFP4 scale rules (qat.four_over_six, four_over_six_error, four_over_six_e4m3_max,
  // activation_scale, activations).
  FourOverSix four_over_six = FourOverSix::kNone;
  bool four_over_six_mse = false;       // four_over_six_error: mae | mse
  double four_over_six_e4m3_max = 256;  // 256 | 448
  ActivationScale activation_scale = ActivationScale::kTensor;
  Activations activations = Activations::kNVFP4;
  Serving serving = Serving::kFp4qat;  // qat.serving

  bool quantizes() const { return format != Format::kBF16; }
  // The rules of the training forward as one value: weights (Four Over Six for weights | all;
  // never row-scaled), activations (Four Over Six for activations | all; row-scaled by
  // activation_scale or the per-token profile), W4A16 (activations: bf16, or the Marlin profile).
  NVFP4Rules nvfp4_rules() const;
  // The rules of the exported checkpoint: the forward's, but W4A16 only for activations: bf16
  // (the Marlin profile exports the W4A4 checkpoint that engines serve W4A16 on Hopper).
  NVFP4Rules export_rules() const;
  bool w4a16() const { return activations == Activations::kBF16; }
  bool static_activations() const { return serving == Serving::kStatic; }  // one static amax per layer
  // Refuses what cannot apply, naming the qat.* key: the rules with a format other than nvfp4,
  // an E4M3 bound other than 256 / 448, activation rules under W4A16 or the Marlin profile, a
  // profile with activations: bf16 (a W4A16 checkpoint is served as it is).
  void validate() const;
};

}  // namespace fp4qat::qat
