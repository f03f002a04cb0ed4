// qat/quantize_checkpoint.h — quantize the `.weight` tensors of one safetensors file into the
// serving layouts of checkpoint-format.md (NVFP4 ModelOpt, MXFP8), copying everything else.
// Used by `fp4qat quantize`; the rules per tensor are the ones training and export use.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "kernels/quantize.h"
#include "qat/recipe.h"

namespace fp4qat::qat {

struct QuantizeFileOptions {
  Format format = Format::kNVFP4;            // nvfp4 | mxfp8
  Blocks blocks = Blocks::k1D;               // NVFP4 only
  NVFP4Rule rule;                            // NVFP4 only: max6 | Four Over Six; per-tensor | per-row S_dec
  at::Device device = at::Device(at::kCPU);  // where the quantization runs; same bytes either way
  bool error_stats = false;                  // fill TensorReport::rel_rmse / max_abs_err
};

struct TensorReport {
  std::string name;
  std::vector<int64_t> shape;
  bool quantized = false;
  double rel_rmse = 0, max_abs_err = 0;  // of dequantize(quantize(x)) vs x (when requested)
};

// True when `name`/dtype/rank make a tensor a quantization target: a F32/BF16/F16 tensor of rank
// 2 ([out, in]) or 3 ([E, out, in]) whose name ends in ".weight".
bool is_quantizable(const std::string& name, at::ScalarType dtype, int64_t rank);

// Reads `in`, writes `out` atomically (no output file on any error). NVFP4 with a row-scaled
// rule writes weight_scale_2 as F32 [M] (one per row; [E, M] for stacked experts) and gives gated
// pairs no shared amax (every row has its own); other rules share the pair's amax as always. Throws fp4qat::Error
// naming the file or tensor on bad input (non-finite values, K not a multiple of the block, a
// gated pair with one member missing, ...).
std::vector<TensorReport> quantize_file(const std::string& in, const std::string& out, const QuantizeFileOptions& opt);

}  // namespace fp4qat::qat
