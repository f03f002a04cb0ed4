// qat/marlin.h — the NVFP4 weights Marlin computes with: the weight side of the `marlin` serving
// profile (qat.serving: marlin; vLLM and SGLang serve NVFP4 checkpoints on Hopper and Ampere with
// Marlin's W4A16 kernels). Read from vllm==0.33.0's marlin_utils_fp4.py (the pinned engine,
// tests/engines): when a layer is loaded for Marlin,
//   * the E4M3 block scales of one weight tensor (all experts of a stacked tensor, both members of
//     w13) are multiplied by one power of two sf >= 1, the largest with max(sb) * sf <= 448
//     (_nvfp4_compute_scale_factor), re-encoded as S0E5M3 from half(sb * sf * 2^7), and every scale
//     with sb * sf * 2^7 < 2, i.e. sb * sf < 2^-6 (E4M3's subnormals when sf = 1), becomes 0: its
//     block of 16 weights is served as zeros. Larger scales survive exactly (at most 4 significant
//     bits, a power-of-two shift);
//   * the global scale weight_scale_2 (S_dec) is divided by sf and multiplies the kernel's bf16
//     output as a bf16 number (SGLang 0.5.23 converts it to bf16 in Python; its Marlin MoE kernel
//     source, a copy of vLLM's template, holds it as scalar_t2; vLLM 0.33 hands the kernel a
//     float32 that its bf16 epilogue is taken to convert alike): S_dec rounded to bf16 (the
//     power-of-two factors are exact). SGLang applies no sf and does not zero small scales, but its
//     kernel decodes an S0E5M3 byte without the top bit 2^-112 times too small: the same blocks
//     vanish (to ~1e-34 instead of 0).
// The effective weight is therefore e2m1(q) * (sb, or 0 when flushed) * bf16(S_dec). The export is
// not changed (engines with FP4 tensor cores read the same checkpoint); the trainer's forward and
// the rollout side use these values under the marlin profile. Not reproduced: Marlin's own
// accumulation order and the bf16 rounding of its output before the global scale multiplies it.
#pragma once
#include <ATen/ATen.h>

#include "kernels/quantize.h"

namespace fp4qat::qat {

// sf for one weight tensor's block scales (float8_e4m3fn, any shape; all experts and members
// together): 2^floor(log2(448 / max)) over the non-zero scales when max < 448, else (or when
// every scale is 0) 1.
double marlin_scale_factor(const at::Tensor& scales);

// Which blocks Marlin keeps: bool, scales' shape; false where 0 < sb and sb * sf < 2^-6.
at::Tensor marlin_kept_blocks(const at::Tensor& scales, double sf);

// values (e2m1 * sb, [..., N, K]) with the blocks Marlin flushes set to 0 (scales [..., N, K/16]).
at::Tensor marlin_values(const at::Tensor& values, const at::Tensor& scales, double sf);

// The operand Marlin computes with, from the recipe's quantized weight q (values e2m1 * sb,
// packed codes / scales / S_dec): flushed blocks' values and scale bytes 0, S_dec rounded to bf16.
// q.packed.scales must be defined; sf from marlin_scale_factor of the whole tensor.
NVFP4Operand marlin_operand(const NVFP4Operand& q, double sf);

// S_dec as the kernel multiplies by it: float32, rounded to bf16 (round to nearest even).
at::Tensor marlin_global_scale(const at::Tensor& s_dec);

}  // namespace fp4qat::qat
