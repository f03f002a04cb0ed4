// autograd/mxfp8_linear.cpp — see mxfp8_linear.h.
#include "autograd/mxfp8_linear.h"

#include <torch/torch.h>

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "autograd/common.h"
#include "kernels/common/check.h"
#include "kernels/common/formats.h"
#include "kernels/quantize.h"

namespace fp4qat::autograd {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check_mxfp8_operands(const at::Tensor& x, const at::Tensor& w, int64_t w_dim, const char* op) {
  FP4QAT_CHECK(x.defined() && w.defined(), op, ": undefined tensor");
  FP4QAT_CHECK(x.dim() >= 1, op, ": x must be [*, K], got a 0-D tensor");
  detail::check_operands(x, w, w_dim, op);
  const auto st = x.scalar_type();
  FP4QAT_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, op,
               ": dtype must be float32, bfloat16 or float16, got ", st);
  FP4QAT_CHECK(x.size(-1) % fmt::kMxfp8Block == 0, op, ": K = ", x.size(-1), " is not a multiple of ", fmt::kMxfp8Block,
               " (MXFP8 blocks are 1x32 along K)");
}

bool dequantized_mode(AutogradContext* ctx) {
  return static_cast<Backward>(ctx->saved_data["backward"].toInt()) == Backward::kDequantized;
}

// The forward of both Functions: quantizes x [T, K] and w [N, K] or [E, N, K] once each, saves
// what the backward mode needs (the originals, or the packed MXFP8 data + scales) and returns the
// dequantized GEMM operands: bf16 on CUDA (the fp32-accumulating GEMM's input), fp32 on the CPU;
// both hold the values e4m3 * 2^k exactly.
std::pair<at::Tensor, at::Tensor> quantize_and_save(AutogradContext* ctx, const at::Tensor& x2, const at::Tensor& w,
                                                    int64_t backward) {
  const MXFP8Tensor qx = mxfp8_quantize(x2), qw = mxfp8_quantize(w);
  ctx->saved_data["backward"] = backward;
  ctx->saved_data["dtype"] = static_cast<int64_t>(x2.scalar_type());
  if (dequantized_mode(ctx)) {
    ctx->save_for_backward({qx.data, qx.scales, qw.data, qw.scales});
  } else {
    ctx->save_for_backward({x2, w});
  }
  const auto dt = x2.is_cuda() ? at::kBFloat16 : at::kFloat;
  return {mxfp8_dequantize(qx, dt), mxfp8_dequantize(qw, dt)};
}

// The backward GEMM operands in x's dtype: the saved X [T, K] and W, or (dequantized mode) the
// saved packed operands dequantized.
std::pair<at::Tensor, at::Tensor> saved_operands(AutogradContext* ctx) {
  const auto s = ctx->get_saved_variables();
  const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
  if (dequantized_mode(ctx)) return {mxfp8_dequantize({s[0], s[1]}, dtype), mxfp8_dequantize({s[2], s[3]}, dtype)};
  return {s[0], s[1]};
}

class MXFP8LinearFn : public torch::autograd::Function<MXFP8LinearFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, int64_t backward) {
    const int64_t K = x.size(-1);
    const auto [xq, wq] = quantize_and_save(ctx, x.reshape({-1, K}), w, backward);  // [M, K], [N, K]
    const at::Tensor y = detail::mm_fp32_acc(xq, wq).to(x.scalar_type());           // one rounding
    auto out_shape = x.sizes().vec();
    out_shape.back() = w.size(0);
    return y.reshape(out_shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto [xs, ws] = saved_operands(ctx);                                      // [M, K], [N, K]
    const at::Tensor dy = grads[0].reshape({-1, ws.size(0)}).to(ws.scalar_type());  // [M, N]
    auto [dx, dw] = detail::linear_grads(dy, xs, ws);
    auto x_shape = grads[0].sizes().vec();
    x_shape.back() = ws.size(1);
    return {dx.reshape(x_shape), dw, at::Tensor()};
  }
};

// Grouped MXFP8 linear. x and W are quantized once (MXFP8 blocks never cross rows and there is no
// global scale, so a token's quantization does not depend on its expert); on CUDA with bf16 each
// GEMM is one at::_grouped_mm, elsewhere (and on the CPU, the bit-exact reference) a loop over
// experts.
class MXFP8GroupedLinearFn : public torch::autograd::Function<MXFP8GroupedLinearFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& counts,
                            int64_t backward) {
    const int64_t T = x.size(0), E = w.size(0), N = w.size(1);
    const auto off = detail::offsets_of(counts, T, E, "mxfp8_grouped_linear");
    const auto [xq, wq] = quantize_and_save(ctx, x, w, backward);  // [T, K], [E, N, K]
    ctx->saved_data["off"] = c10::IValue(off);
    const bool grouped = detail::uses_grouped_mm(x, N);
    ctx->saved_data["grouped_mm"] = grouped;
    if (grouped) {
      // bf16 operands, fp32 accumulation, bf16 output: one rounding (no alpha to apply).
      const at::Tensor offs = detail::device_offsets(off, x.device());
      ctx->saved_data["offs"] = offs;
      return at::_grouped_mm(xq, wq.transpose(1, 2), offs);  // [T, K] x [E, K, N] -> [T, N]
    }
    at::Tensor y = at::empty({T, N}, x.options());
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = off[e + 1] - off[e];
      if (n == 0) continue;
      // fp32 accumulator, one rounding to x's dtype in the copy
      y.narrow(0, off[e], n).copy_(detail::mm_fp32_acc(xq.narrow(0, off[e], n), wq[e]));
    }
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto [xs, ws] = saved_operands(ctx);  // [T, K], [E, N, K]
    const auto off = ctx->saved_data["off"].toIntVector();
    const int64_t E = ws.size(0), T = xs.size(0);
    const at::Tensor dy = grads[0].to(ws.scalar_type()).contiguous();  // [T, N]
    if (ctx->saved_data["grouped_mm"].toBool()) {
      const at::Tensor offs = ctx->saved_data["offs"].toTensor();
      const at::Tensor dx = at::_grouped_mm(dy, ws.contiguous(), offs);      // [T, N] x [E, N, K] -> [T, K]
      const at::Tensor dw = at::_grouped_mm(dy.t(), xs.contiguous(), offs);  // [N, T] x [T, K] -> [E, N, K]
      // An expert without tokens gets dW = 0; not every architecture's kernel writes empty groups.
      for (int64_t e = 0; e < E; ++e)
        if (off[e + 1] == off[e]) dw[e].zero_();
      return {dx, dw, at::Tensor(), at::Tensor()};
    }
    at::Tensor dx = at::empty({T, xs.size(1)}, dy.options());
    at::Tensor dw = at::zeros_like(ws);  // an expert without tokens keeps dW = 0
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = off[e + 1] - off[e];
      if (n == 0) continue;
      auto [dxe, dwe] = detail::linear_grads(dy.narrow(0, off[e], n), xs.narrow(0, off[e], n), ws[e]);
      dx.narrow(0, off[e], n).copy_(dxe);
      dw[e].copy_(dwe);
    }
    return {dx, dw, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor mxfp8_linear(const at::Tensor& x, const at::Tensor& w, Backward backward) {
  check_mxfp8_operands(x, w, 2, "mxfp8_linear");
  return MXFP8LinearFn::apply(x, w, static_cast<int64_t>(backward));
}

at::Tensor mxfp8_grouped_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& counts, Backward backward) {
  check_mxfp8_operands(x, w, 3, "mxfp8_grouped_linear");
  FP4QAT_CHECK(x.dim() == 2, "mxfp8_grouped_linear: x must be [T, K], got ", x.sizes());
  detail::offsets_of(counts, x.size(0), w.size(0), "mxfp8_grouped_linear");  // before autograd sees them
  return MXFP8GroupedLinearFn::apply(x, w, counts, static_cast<int64_t>(backward));
}

}  // namespace fp4qat::autograd
