// kernels/quantize.h — the one C++ entry point per quantization operation, on at::Tensor.
// Each function dispatches on the input's device: CPU tensors run the reference
// (kernels/*/quantize_ref.cpp), CUDA tensors run the kernels (kernels/cuda_api.h: kernels/nvfp4/,
// kernels/mxfp8/quantize.cu) on the current CUDA stream with no host synchronisation. Same bytes either way.
//
// Layout: a 2-D input is one tensor x[N, K]; a 3-D input is E stacked experts x[E, N, K], each
// with its own global amax / S_dec (unless a shared amax is given). Rows are `[out, in]` for
// weights; blocks always run along the last dimension K.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

#include "kernels/common/nvfp4_rule.h"

namespace fp4qat {

enum class Blocks { k1D, k2D };             // 1x16 blocks, or 16x16 tiles (weights)
Blocks parse_blocks(const std::string& s);  // "1d" | "2d"
const char* to_string(Blocks b);

// The scale rule (kernels/common/nvfp4_rule.h) is a last, defaulted argument of each NVFP4
// quantizer: max6 with one global scale per tensor / expert unless asked otherwise. A row-scaled
// rule gives S_dec per row ([N] or [E, N]) and takes a given amax of that shape.
void check_rule(const NVFP4Rule& rule, Blocks blocks, const char* who);  // refuses M not 256/448, rows + 2d
std::string describe(const NVFP4Rule& rule);  // "max6", "4over6(M=256, mae)", "... + row-scaled"

struct NVFP4Tensor {
  at::Tensor codes;   // uint8          [..., N, K/2]  two E2M1 codes a byte, element 2i low nibble
  at::Tensor scales;  // float8_e4m3fn  [..., N, K/16] block decode scales, linear layout
  at::Tensor s_dec;   // float32        [] (2-D input) or [E] (3-D input): "weight_scale_2";
                      //                [N] or [E, N] when row-scaled (s_dec.dim() == codes.dim() - 1)
  Blocks blocks = Blocks::k1D;
};

struct MXFP8Tensor {
  at::Tensor data;    // float8_e4m3fn  [..., N, K]
  at::Tensor scales;  // uint8          [..., N, K/32] E8M0 bytes ("weight_scale_inv")
};

// Global amax max|x|: float32 [] for 2-D x, [E] (per expert) for 3-D x. Stays on x's device.
at::Tensor global_amax(const at::Tensor& x);

// Per-row amax max_k |x[..., n, k]|: float32 [N] or [E, N] (the row-scaled rule's amax).
at::Tensor row_amax(const at::Tensor& x);

// NVFP4 quantize. x: f32/bf16/f16, 2-D or 3-D, K % 16 == 0. amax: optional float32 of the
// shape amax(x) returns (a shared amax, e.g. max(amax_gate, amax_up)), or of row_amax(x) for a
// row-scaled rule; computed when absent.
NVFP4Tensor nvfp4_quantize(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax = std::nullopt,
                           const NVFP4Rule& rule = {});

// e2m1(q) * float(sb) * S_dec, computed in float32, then cast to `dtype`.
at::Tensor nvfp4_dequantize(const NVFP4Tensor& q, at::ScalarType dtype = at::kFloat);

// Fused quantize-dequantize for the QAT forward ("fake quant"): the same quantization as
// nvfp4_quantize, returned as the exact bf16 operand of the emulated NVFP4 GEMM.
struct NVFP4FakeQuant {
  at::Tensor values;  // bfloat16 [..., N, K] = e2m1(q) * float(sb): exact in bf16; S_dec NOT applied
  at::Tensor s_dec;   // float32 [] or [E]: applied once as the GEMM's alpha (numerics.md)
};
NVFP4FakeQuant nvfp4_fake_quantize(const at::Tensor& x, Blocks blocks,
                                   const std::optional<at::Tensor>& amax = std::nullopt, const NVFP4Rule& rule = {});

// Both in one pass (the QAT forward of the `dequantized` backward mode, which saves the packed
// operand): packed codes/scales/S_dec and the bf16 fake-quant values of the same quantization.
struct NVFP4Operand {
  NVFP4Tensor packed;
  at::Tensor values;  // bfloat16, as NVFP4FakeQuant::values
};
NVFP4Operand nvfp4_quantize_and_fake(const at::Tensor& x, Blocks blocks,
                                     const std::optional<at::Tensor>& amax = std::nullopt, const NVFP4Rule& rule = {});

// The activations of a grouped linear, unpadded: x [T, K] with rows sorted by group, off: host
// row offsets [G + 1] (off[0] = 0, off[G] = T; empty groups allowed). Each group is quantized in
// 1x16 blocks with its own amax — for every group, the bytes nvfp4_quantize_and_fake gives for
// the row slice x[off[g]:off[g+1]] alone. Returns packed codes [T, K/2] / scales [T, K/16] (when
// `packed`), values bf16 [T, K], s_dec float32 [G] (a group without rows: amax 0, S_dec 1).
// With a row-scaled rule the groups do not matter: each row is its own tensor, s_dec [T].
NVFP4Operand nvfp4_quantize_rows(const at::Tensor& x, const std::vector<int64_t>& off, bool packed = false,
                                 const NVFP4Rule& rule = {});

// MXFP8 quantize. x: f32/bf16/f16, 2-D or 3-D, K % 32 == 0.
MXFP8Tensor mxfp8_quantize(const at::Tensor& x);
at::Tensor mxfp8_dequantize(const MXFP8Tensor& q, at::ScalarType dtype = at::kFloat);

}  // namespace fp4qat
