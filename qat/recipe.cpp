// qat/recipe.cpp — see recipe.h.
#include "qat/recipe.h"

#include "kernels/common/check.h"
#include "kernels/common/formats.h"

namespace fp4qat::qat {

Format parse_format(const std::string& s) {
  if (s == "nvfp4") return Format::kNVFP4;
  if (s == "mxfp8") return Format::kMXFP8;
  if (s == "bf16") return Format::kBF16;
  FP4QAT_FAIL("unknown format '", s, "' (expected nvfp4, mxfp8 or bf16)");
}

const char* to_string(Format f) {
  switch (f) {
    case Format::kNVFP4:
      return "nvfp4";
    case Format::kMXFP8:
      return "mxfp8";
    default:
      return "bf16";
  }
}

int64_t block_size(Format f) {
  switch (f) {
    case Format::kNVFP4:
      return fmt::kNvfp4Block;
    case Format::kMXFP8:
      return fmt::kMxfp8Block;
    default:
      return 1;
  }
}

Serving parse_serving(const std::string& s) {
  if (s == "fp4qat") return Serving::kFp4qat;
  if (s == "marlin") return Serving::kMarlin;
  if (s == "flashinfer_per_token") return Serving::kPerToken;
  if (s == "flashinfer_static") return Serving::kStatic;
  FP4QAT_FAIL("unknown serving profile '", s,
              "' (expected fp4qat, marlin, flashinfer_per_token or flashinfer_static)");
}

const char* to_string(Serving s) {
  switch (s) {
    case Serving::kMarlin:
      return "marlin";
    case Serving::kPerToken:
      return "flashinfer_per_token";
    case Serving::kStatic:
      return "flashinfer_static";
    default:
      return "fp4qat";
  }
}

NVFP4Rules Recipe::export_rules() const {
  NVFP4Rules r = nvfp4_rules();
  r.w4a16 = w4a16();
  return r;
}

NVFP4Rules Recipe::nvfp4_rules() const {
  NVFP4Rules r;
  for (NVFP4Rule* x : {&r.weights, &r.activations}) {
    x->e4m3_max = static_cast<float>(four_over_six_e4m3_max);
    x->mse = four_over_six_mse;
  }
  r.weights.four_over_six = four_over_six == FourOverSix::kWeights || four_over_six == FourOverSix::kAll;
  r.activations.four_over_six = four_over_six == FourOverSix::kActivations || four_over_six == FourOverSix::kAll;
  r.activations.row_scaled = activation_scale == ActivationScale::kRow || serving == Serving::kPerToken;
  r.w4a16 = w4a16() || serving == Serving::kMarlin;
  return r;
}

void Recipe::validate() const {
  FP4QAT_CHECK(four_over_six_e4m3_max == 256 || four_over_six_e4m3_max == 448,
               "qat.four_over_six_e4m3_max: must be 256 (TransformerEngine's) or 448 (FlashInfer's), got ",
               four_over_six_e4m3_max);
  const bool rules = four_over_six != FourOverSix::kNone || activation_scale != ActivationScale::kTensor || w4a16() ||
                     serving != Serving::kFp4qat;
  FP4QAT_CHECK(!rules || format == Format::kNVFP4,
               "qat: four_over_six, activation_scale, activations and serving apply to qat.format nvfp4, not ",
               to_string(format));
  FP4QAT_CHECK(!(w4a16() && activation_scale == ActivationScale::kRow),
               "qat.activation_scale: row needs qat.activations: nvfp4 (W4A16 leaves the activations in bf16)");
  FP4QAT_CHECK(serving == Serving::kFp4qat || !w4a16(), "qat.serving: ", to_string(serving),
               " serves a W4A4 checkpoint; with qat.activations: bf16 the W4A16 checkpoint is served as it is ",
               "(leave qat.serving: fp4qat)");
  FP4QAT_CHECK(serving != Serving::kMarlin || activation_scale == ActivationScale::kTensor,
               "qat.activation_scale: row does not apply with qat.serving: marlin (Marlin leaves the activations in "
               "bf16)");
  FP4QAT_CHECK(serving != Serving::kStatic || (activation_scale == ActivationScale::kTensor &&
                                               !nvfp4_rules().activations.four_over_six),
               "qat.serving: flashinfer_static quantizes activations with one static scale per layer and the max6 "
               "rule (leave qat.activation_scale: tensor and qat.four_over_six: none or weights)");
  FP4QAT_CHECK(!(nvfp4_rules().w4a16 && nvfp4_rules().activations.four_over_six),
               "qat.four_over_six: ", four_over_six == FourOverSix::kAll ? "all" : "activations",
               " needs quantized activations (qat.activations: bf16 and qat.serving: marlin leave them in bf16; use "
               "weights)");
}

}  // namespace fp4qat::qat
