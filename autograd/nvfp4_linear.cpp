// autograd/nvfp4_linear.cpp — see nvfp4_linear.h.
#include "autograd/nvfp4_linear.h"

#include <torch/torch.h>

#include <vector>

#include "kernels/common/check.h"
#ifdef FP4QAT_WITH_CUDA
#include "kernels/gemm/grouped_gemm.h"
#endif

namespace fp4qat::autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Backward parse_backward(const std::string& s) {
  if (s == "high_precision") return Backward::kHighPrecision;
  if (s == "dequantized") return Backward::kDequantized;
  FP4QAT_FAIL("unknown backward mode '", s, "' (expected high_precision or dequantized)");
}

const char* to_string(Backward b) { return b == Backward::kHighPrecision ? "high_precision" : "dequantized"; }

at::Tensor emulated_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& alpha, at::ScalarType out) {
  at::Tensor acc;
  if (a.is_cuda()) {
    acc = at::mm(a, b.t(), at::kFloat);  // bf16 operands, fp32 accumulation and output
  } else {
    acc = at::mm(a.to(at::kFloat), b.to(at::kFloat).t());  // the bf16 values are exact in fp32
  }
  return acc.mul_(alpha).to(out);
}

namespace {

void check_operands(const at::Tensor& x, const at::Tensor& w, int64_t w_dim, const char* op) {
  FP4QAT_CHECK(w.dim() == w_dim, op, ": weight must be ", w_dim, "-D, got ", w.sizes());
  FP4QAT_CHECK(x.size(-1) == w.size(-1), op, ": x has K = ", x.size(-1), " but the weight [.., out, in] has in = ",
               w.size(-1));
  FP4QAT_CHECK(x.scalar_type() == w.scalar_type(), op, ": x is ", x.scalar_type(), " but the weight is ", w.scalar_type());
  FP4QAT_CHECK(x.device() == w.device(), op, ": x is on ", x.device(), " but the weight on ", w.device());
}

// dX = dY B and dW = (A^T dY)^T, the same calls torch's own linear backward makes.
std::pair<at::Tensor, at::Tensor> linear_grads(const at::Tensor& dy, const at::Tensor& a, const at::Tensor& b) {
  return {dy.mm(b), a.t().mm(dy).t()};
}

class NVFP4LinearFn : public torch::autograd::Function<NVFP4LinearFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_amax,
                            int64_t blocks, int64_t backward) {
    const int64_t K = x.size(-1);
    const at::Tensor x2 = x.reshape({-1, K});
    const auto b = static_cast<Blocks>(blocks);
    const std::optional<at::Tensor> wa = w_amax.numel() ? std::optional<at::Tensor>(w_amax) : std::nullopt;
    at::Tensor y;
    if (static_cast<Backward>(backward) == Backward::kDequantized) {
      const NVFP4Operand qx = nvfp4_quantize_and_fake(x2, Blocks::k1D);
      const NVFP4Operand qw = nvfp4_quantize_and_fake(w, b, wa);
      y = emulated_gemm(qx.values, qw.values, qx.packed.s_dec * qw.packed.s_dec, x.scalar_type());
      ctx->save_for_backward({qx.packed.codes, qx.packed.scales, qx.packed.s_dec, qw.packed.codes, qw.packed.scales,
                              qw.packed.s_dec});
    } else {
      const NVFP4FakeQuant fx = nvfp4_fake_quantize(x2, Blocks::k1D);
      const NVFP4FakeQuant fw = nvfp4_fake_quantize(w, b, wa);
      y = emulated_gemm(fx.values, fw.values, fx.s_dec * fw.s_dec, x.scalar_type());
      ctx->save_for_backward({x2, w});
    }
    ctx->saved_data["backward"] = backward;
    ctx->saved_data["dtype"] = static_cast<int64_t>(x.scalar_type());
    auto out_shape = x.sizes().vec();
    out_shape.back() = w.size(0);
    return y.reshape(out_shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    at::Tensor xs, ws;
    if (static_cast<Backward>(ctx->saved_data["backward"].toInt()) == Backward::kDequantized) {
      xs = nvfp4_dequantize({saved[0], saved[1], saved[2], Blocks::k1D}, dtype);
      ws = nvfp4_dequantize({saved[3], saved[4], saved[5], Blocks::k1D}, dtype);
    } else {
      xs = saved[0];
      ws = saved[1];
    }
    const at::Tensor dy = grads[0].reshape({-1, ws.size(0)}).to(dtype);
    auto [dx, dw] = linear_grads(dy, xs, ws);
    auto x_shape = grads[0].sizes().vec();
    x_shape.back() = ws.size(1);
    return {dx.reshape(x_shape), dw, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// On CUDA with bf16 the grouped path issues one grouped GEMM for all experts
// (kernels/gemm/grouped_gemm.h); elsewhere it loops over experts.
bool g_grouped_gemm_failed = false;  // set once if cuBLAS refuses; then the loop is used
bool grouped_gemm_usable(const at::Tensor& x) {
#ifdef FP4QAT_WITH_CUDA
  return x.is_cuda() && x.scalar_type() == at::kBFloat16 && !g_grouped_gemm_failed;
#else
  (void)x;
  return false;
#endif
}

// Row offsets of each expert from host counts.
std::vector<int64_t> offsets_of(const at::Tensor& counts, int64_t T, int64_t E) {
  FP4QAT_CHECK(counts.device().is_cpu() && counts.scalar_type() == at::kLong && counts.dim() == 1 && counts.size(0) == E,
               "nvfp4_grouped_linear: counts must be a CPU int64 tensor [E = ", E, "], got ", counts.sizes());
  std::vector<int64_t> off(static_cast<size_t>(E) + 1, 0);
  const int64_t* c = counts.data_ptr<int64_t>();
  for (int64_t e = 0; e < E; ++e) {
    FP4QAT_CHECK(c[e] >= 0, "nvfp4_grouped_linear: negative count for expert ", e);
    off[e + 1] = off[e] + c[e];
  }
  FP4QAT_CHECK(off[E] == T, "nvfp4_grouped_linear: counts sum to ", off[E], " but x has ", T, " rows");
  return off;
}

class NVFP4GroupedLinearFn : public torch::autograd::Function<NVFP4GroupedLinearFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& counts,
                            const at::Tensor& w_amax, int64_t blocks, int64_t backward) {
    const int64_t T = x.size(0), E = w.size(0), N = w.size(1);
    const auto off = offsets_of(counts, T, E);
    const bool deq = static_cast<Backward>(backward) == Backward::kDequantized;
    const std::optional<at::Tensor> wa = w_amax.numel() ? std::optional<at::Tensor>(w_amax) : std::nullopt;
    // Weights: one launch for all experts (per-expert or given amax).
    NVFP4Operand qw = nvfp4_quantize_and_fake(w, static_cast<Blocks>(blocks), wa);
    at::Tensor y = at::empty({T, N}, x.options());
    std::vector<at::Tensor> saved_x;
    bool done = false;
#ifdef FP4QAT_WITH_CUDA
    if (grouped_gemm_usable(x)) {
      // Activations: each expert's token slice quantized with its own amax (one launch each;
      // a segmented kernel would make this one launch), then one grouped GEMM for all experts
      // with fp32 output, each row scaled once by its expert's alpha, one rounding to bf16.
      at::Tensor xq = at::empty({T, x.size(1)}, x.options().dtype(at::kBFloat16));
      at::Tensor alpha = at::empty({T, 1}, x.options().dtype(at::kFloat));
      for (int64_t e = 0; e < E; ++e) {
        const int64_t n = off[e + 1] - off[e];
        if (n == 0) continue;
        const NVFP4Operand qx = nvfp4_quantize_and_fake(x.narrow(0, off[e], n), Blocks::k1D);
        xq.narrow(0, off[e], n).copy_(qx.values);
        alpha.narrow(0, off[e], n).fill_(qx.packed.s_dec * qw.packed.s_dec[e]);
        if (deq) saved_x.insert(saved_x.end(), {qx.packed.codes, qx.packed.scales, qx.packed.s_dec});
      }
      try {
        y = gemm::grouped_nt_f32(xq, qw.values.contiguous(), off).mul_(alpha).to(x.scalar_type());
        done = true;
      } catch (const fp4qat::Error& ex) {
        TORCH_WARN("fp4qat: grouped GEMM unavailable, looping over experts: ", ex.what());
        g_grouped_gemm_failed = true;
        saved_x.clear();
      }
    }
#endif
    for (int64_t e = 0; e < E && !done; ++e) {
      const int64_t n = off[e + 1] - off[e];
      if (n == 0) continue;  // an expert with no tokens: nothing to compute, nothing saved
      const at::Tensor xe = x.narrow(0, off[e], n);
      // Activations: each expert's token slice has its own amax.
      const NVFP4Operand qx = nvfp4_quantize_and_fake(xe, Blocks::k1D);
      y.narrow(0, off[e], n).copy_(emulated_gemm(qx.values, qw.values[e], qx.packed.s_dec * qw.packed.s_dec[e],
                                                  x.scalar_type()));
      if (deq) {
        saved_x.insert(saved_x.end(), {qx.packed.codes, qx.packed.scales, qx.packed.s_dec});
      }
    }
    std::vector<at::Tensor> save;
    if (deq) {
      save = {qw.packed.codes, qw.packed.scales, qw.packed.s_dec};
      save.insert(save.end(), saved_x.begin(), saved_x.end());
    } else {
      save = {x, w};
    }
    ctx->save_for_backward(save);
    ctx->saved_data["backward"] = backward;
    ctx->saved_data["dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["off"] = c10::IValue(off);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const auto off = ctx->saved_data["off"].toIntVector();
    const bool deq = static_cast<Backward>(ctx->saved_data["backward"].toInt()) == Backward::kDequantized;
    const at::Tensor dy = grads[0].to(dtype);
    at::Tensor w_used;  // [E, N, K]
    if (deq) {
      w_used = nvfp4_dequantize({saved[0], saved[1], saved[2], Blocks::k1D}, dtype);
    } else {
      w_used = saved[1];
    }
    const int64_t E = w_used.size(0), K = w_used.size(2);
#ifdef FP4QAT_WITH_CUDA
    if (grouped_gemm_usable(dy)) {
      at::Tensor x_used;
      if (deq) {
        x_used = at::empty({off[E], K}, dy.options());
        size_t nx = 3;
        for (int64_t e = 0; e < E; ++e) {
          const int64_t n = off[e + 1] - off[e];
          if (n == 0) continue;
          x_used.narrow(0, off[e], n).copy_(nvfp4_dequantize({saved[nx], saved[nx + 1], saved[nx + 2], Blocks::k1D}, dtype));
          nx += 3;
        }
      } else {
        x_used = saved[0].contiguous();
      }
      const at::Tensor dyc = dy.contiguous(), wc = w_used.contiguous();
      try {
        return {gemm::grouped_nn(dyc, wc, off), gemm::grouped_wgrad(dyc, x_used, off, E), at::Tensor(), at::Tensor(),
                at::Tensor(), at::Tensor()};
      } catch (const fp4qat::Error& ex) {
        TORCH_WARN("fp4qat: grouped GEMM unavailable, looping over experts: ", ex.what());
        g_grouped_gemm_failed = true;
      }
    }
#endif
    at::Tensor dx = at::zeros({off[E], K}, dy.options());
    at::Tensor dw = at::zeros_like(w_used);
    size_t next_x = 3;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = off[e + 1] - off[e];
      if (n == 0) continue;  // no tokens: zero gradient for this expert's weight
      at::Tensor xe;
      if (deq) {
        xe = nvfp4_dequantize({saved[next_x], saved[next_x + 1], saved[next_x + 2], Blocks::k1D}, dtype);
        next_x += 3;
      } else {
        xe = saved[0].narrow(0, off[e], n);
      }
      auto [dxe, dwe] = linear_grads(dy.narrow(0, off[e], n), xe, w_used[e]);
      dx.narrow(0, off[e], n).copy_(dxe);
      dw[e].copy_(dwe);
    }
    return {dx, dw, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Autograd Function arguments must be defined tensors: "no shared amax" travels as an empty one.
at::Tensor amax_arg(const std::optional<at::Tensor>& a, const at::Tensor& w) {
  return a ? *a : at::empty({0}, w.options().dtype(at::kFloat));
}

}  // namespace

at::Tensor nvfp4_linear(const at::Tensor& x, const at::Tensor& w, const NVFP4LinearOptions& opt,
                        const std::optional<at::Tensor>& weight_amax) {
  check_operands(x, w, 2, "nvfp4_linear");
  return NVFP4LinearFn::apply(x, w, amax_arg(weight_amax, w), static_cast<int64_t>(opt.weight_blocks),
                              static_cast<int64_t>(opt.backward));
}

at::Tensor nvfp4_grouped_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& counts,
                                const NVFP4LinearOptions& opt, const std::optional<at::Tensor>& weight_amax) {
  check_operands(x, w, 3, "nvfp4_grouped_linear");
  FP4QAT_CHECK(x.dim() == 2, "nvfp4_grouped_linear: x must be [T, K], got ", x.sizes());
  offsets_of(counts, x.size(0), w.size(0));  // validate before autograd sees the arguments
  return NVFP4GroupedLinearFn::apply(x, w, counts, amax_arg(weight_amax, w),
                                     static_cast<int64_t>(opt.weight_blocks), static_cast<int64_t>(opt.backward));
}

}  // namespace fp4qat::autograd
