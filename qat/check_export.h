// qat/check_export.h — `fp4qat check-export`: does a serving engine load every tensor of an
// exported (or converted) Hugging Face folder, and miss none? Neither vLLM nor SGLang says so
// itself (vLLM's weight tracking is off for quantized models; SGLang skips names it does not
// know), so a wrong name fails silently at serving time; this checker is the project's own
// guard, from the files alone (config.json, hf_quant_config.json, the safetensors headers; no
// tensor data is read but the NVFP4 global and block scales).
//
// What an engine expects, per format (docs/spec/checkpoint-format.md):
//   NVFP4 (modelopt, quant_algo NVFP4): X.weight U8 [out, in/2], X.weight_scale F8_E4M3
//     [out, in/16], X.weight_scale_2 F32 [], X.input_scale F32 [];
//   W4A16 (modelopt, quant_algo W4A16_NVFP4): the same without X.input_scale (and block scales
//     never negative zero: Marlin re-encodes them assuming a zero sign bit);
//   MXFP8 (quant_method mxfp8): X.weight F8_E4M3 [out, in] and the E8M0 scales U8 [out, in/32] named
//     X.weight_scale (vLLM) or X.weight_scale_inv (SGLang);
//   BF16: X.weight only.
// Checked: the format's keys in config.json (and hf_quant_config.json for ModelOpt); the exclusion
// lists (explicit module paths, the same under every key, covering exactly the modules kept in
// BF16); every linear module of the model (from config.json: attention, routers, experts or
// dense MLPs, lm_head unless tied) present with exactly the tensors above (none missing, none the
// engine would not load), with the right dtypes and shapes; gated pairs (gate/up, q/k/v) sharing
// weight_scale_2; the other tensors of the model (embeddings, norms) present; a tokenizer
// (a warning when missing: vLLM then loads an empty one).
#pragma once
#include <string>
#include <vector>

#include "qat/export.h"  // Engine

namespace fp4qat::qat {

struct ExportCheck {
  std::string format;  // "nvfp4", "w4a16_nvfp4", "mxfp8" or "bf16"
  int64_t quantized_modules = 0, bf16_modules = 0, tensors = 0;
  std::vector<std::string> errors;    // what the engine would fail on or silently get wrong
  std::vector<std::string> warnings;  // what it would serve, but probably not as meant
  bool ok() const { return errors.empty(); }
};

// Checks folder `dir` for `engine` (kAny: every engine — an MXFP8 folder then fits one engine's
// scale name, which is reported). Throws only for a folder that cannot be read at all (no
// config.json, a corrupt index or safetensors header), naming the file.
ExportCheck check_export(const std::string& dir, Engine engine);

}  // namespace fp4qat::qat
