// autograd/nvfp4_linear.h — NVFP4 linear layers as torch::autograd::Functions
// (docs/spec/qat.md):
//   nvfp4_linear          y[*, N] = x[*, K] @ W[N, K]^T
//   nvfp4_grouped_linear  rows of x[T, K] grouped by expert (counts[E]), y[T, N], W[E, N, K]
// Forward: activations NVFP4 1x16 with the amax of the current input (per expert when grouped),
// weights NVFP4 1D or 2D with their own amax (per expert) or a given shared amax; the emulated
// NVFP4 GEMM: exact bf16 operands e2m1(q) * sb, fp32 accumulation, alpha = S_dec_x * S_dec_w
// applied once to the fp32 result. Backward (dY never quantized, GEMMs in the compute dtype):
//   high_precision: dX = dY W,        dW = dY^T X         (saves X and W)
//   dequantized:    dX = dY W_dq,     dW = dY^T X_dq      (saves packed X and W: codes + scales)
// Weights are always `[out, in]`.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "kernels/quantize.h"

namespace fp4qat::autograd {

enum class Backward { kHighPrecision, kDequantized };
Backward parse_backward(const std::string& s);  // "high_precision" | "dequantized"
const char* to_string(Backward b);

struct NVFP4LinearOptions {
  Blocks weight_blocks = Blocks::k1D;
  Backward backward = Backward::kHighPrecision;
  // The scale rules (kernels/common/nvfp4_rule.h): the weights' (Four Over Six or not; never
  // row-scaled), the activations' (Four Over Six, row-scaled: one S_dec per row, applied per output
  // row after the GEMM, y[m, n] = acc[m, n] * (S_dec_x[m] * S_dec_w)), and W4A16 (numerics.md:
  // only the weight is quantized, y = (X @ W_q^T) * S_dec_w with X in the compute dtype; the
  // dequantized backward then uses X itself).
  NVFP4Rules rules;
  // A static activation amax (the flashinfer_static serving profile, qat/recipe.h): float32 [] on
  // x's device. Every row (every expert's) is then quantized with this one amax, S_enc = 2688 /
  // amax, instead of the current input's; values past it saturate as numerics.md's clamps say
  // (block scales at 448, codes at +-6). Undefined: the current input's amax (per expert). The
  // activations' rule must be the default one (max6, per tensor).
  at::Tensor activation_amax;
};
// Refuses rules that cannot apply (row-scaled weights, rules with W4A16 activations), naming `who`.
void check_options(const NVFP4LinearOptions& opt, const char* who);

// x: [*, K] (bf16/f16/f32), w: [N, K] same dtype, K % 16 == 0. weight_amax: float32 [] on w's
// device (a gated pair's shared amax), or nullopt for w's own. Returns [*, N] in x's dtype.
// w_quantized: w's NVFP4 quantization computed earlier with the same blocks and amax
// (nvfp4_quantize_and_fake; e.g. kept while w is unchanged, across the micro-batches of an
// optimizer step): the forward uses it instead of quantizing w again. Its shapes are checked; that
// it is the quantization of w's current values is the caller's contract. The gradient still flows
// to w (high_precision backward uses w itself).
at::Tensor nvfp4_linear(const at::Tensor& x, const at::Tensor& w, const NVFP4LinearOptions& opt,
                        const std::optional<at::Tensor>& weight_amax = std::nullopt,
                        const NVFP4Operand* w_quantized = nullptr);

// x: [T, K] with rows sorted by expert; counts: int64 [E] on the CPU (sum = T; zero allowed);
// w: [E, N, K]; weight_amax: float32 [E] or nullopt. Returns [T, N].
// On CUDA the activations are quantized with per-expert amax either in place (unequal counts,
// high_precision, bf16 on Hopper: nvfp4_quantize_rows over each expert's row range, at any
// routing imbalance) or in a batch padded to
// Mmax = max(counts) rows ([E, Mmax, *]; when all counts are equal x itself is that batch, no
// copy; dequantized saves that padded packed batch); the forward GEMM is one CUTLASS grouped GEMM on Hopper (bf16:
// real rows only, alpha in its epilogue; kernels/gemm/scaled_bmm.h) or else one batched cuBLAS GEMM
// and a fused scale/round/gather pass; the backward GEMMs are grouped (at::_grouped_mm, bf16,
// padded case) or batched. No host synchronisation. Under heavy routing imbalance (see
// nvfp4_grouped_linear_pads) and on the CPU it loops over experts.
// w_quantized: as for nvfp4_linear ([E, N, K] values, per-expert S_dec [E]).
at::Tensor nvfp4_grouped_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& counts,
                                const NVFP4LinearOptions& opt,
                                const std::optional<at::Tensor>& weight_amax = std::nullopt,
                                const NVFP4Operand* w_quantized = nullptr);

// Whether a CUDA nvfp4_grouped_linear with these counts takes the padded path:
// max(counts) > 0 and E * max(counts) <= 2 * sum(counts) + 128; else it loops over experts.
bool nvfp4_grouped_linear_pads(const at::Tensor& counts);

// The forward alone on weights quantized elsewhere (the rollout side reads them from an export):
// w_values bf16 [N, K] / [E, N, K] = e2m1(q) * float(sb) (S_dec not applied), w_s_dec float32
// [] / [E] ("weight_scale_2"). The same operations as the forward of nvfp4_linear (high_precision)
// and nvfp4_grouped_linear, so a rollout forward on exported weights equals the trainer's.
// opt: the activations' side (rules.activations, rules.w4a16); its weight fields are unused.
at::Tensor nvfp4_linear_forward(const at::Tensor& x, const at::Tensor& w_values, const at::Tensor& w_s_dec,
                                const NVFP4LinearOptions& opt = {});
at::Tensor nvfp4_grouped_forward(const at::Tensor& x, const at::Tensor& w_values, const at::Tensor& w_s_dec,
                                 const at::Tensor& counts, const NVFP4LinearOptions& opt = {});

// The emulated NVFP4 GEMM on already quantized operands: (a[M, K] @ b[N, K]^T) * alpha with
// fp32 accumulation; a, b hold exact values (b is widened to a's dtype, exactly, if they differ:
// W4A16 in float32); alpha a float32 [] tensor, or [M] (one per row: row-scaled activations). No
// host sync.
at::Tensor emulated_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& alpha, at::ScalarType out);

}  // namespace fp4qat::autograd
