// autograd/nvfp4_linear.cpp — see nvfp4_linear.h.
#include "autograd/nvfp4_linear.h"

#include <torch/torch.h>

#include <algorithm>
#include <vector>

#include "autograd/common.h"
#include "autograd/grouped_bf16.h"
#include "kernels/common/check.h"
#include "kernels/gemm/scaled_bmm.h"

namespace fp4qat::autograd {

using detail::check_operands;
using detail::linear_grads;
using detail::offsets_of;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Backward parse_backward(const std::string& s) {
  if (s == "high_precision") return Backward::kHighPrecision;
  if (s == "dequantized") return Backward::kDequantized;
  FP4QAT_FAIL("unknown backward mode '", s, "' (expected high_precision or dequantized)");
}

const char* to_string(Backward b) { return b == Backward::kHighPrecision ? "high_precision" : "dequantized"; }

void check_options(const NVFP4LinearOptions& opt, const char* who) {
  check_rule(opt.rules.weights, opt.weight_blocks, who);
  check_rule(opt.rules.activations, Blocks::k1D, who);
  FP4QAT_CHECK(!opt.rules.weights.row_scaled, who,
               ": weights have one global scale per tensor (per expert), not per row");
  FP4QAT_CHECK(!opt.rules.w4a16 || opt.rules.activations.is_default(), who,
               ": W4A16 leaves the activations in the compute dtype; they take no scale rule");
  FP4QAT_CHECK(!opt.activation_amax.defined() ||
                   (!opt.rules.w4a16 && opt.rules.activations.is_default() && opt.activation_amax.numel() == 1 &&
                    opt.activation_amax.scalar_type() == at::kFloat),
               who, ": a static activation amax is one float32 value, for NVFP4 activations under the max6 rule");
}

at::Tensor emulated_gemm(const at::Tensor& a, const at::Tensor& b_in, const at::Tensor& alpha, at::ScalarType out) {
  const at::Tensor b = b_in.scalar_type() == a.scalar_type() ? b_in : b_in.to(a.scalar_type());  // exact values
  if (alpha.dim() == 1) return gemm::scaled_mm_rows(a, b, alpha, out);                           // one scale per row
  // CUDA: fp32 GEMM + one fused scale-and-round pass (kernels/gemm/scaled_bmm.h); the same arithmetic.
  if (a.is_cuda()) return gemm::scaled_bmm(a.unsqueeze(0), b.unsqueeze(0), alpha.reshape({1}), out).squeeze(0);
  return detail::mm_fp32_acc(a, b).mul_(alpha).to(out);
}

namespace {

// The rule travels through the autograd Functions' arguments as one integer.
int64_t pack_rule(const NVFP4Rule& r) {
  return (r.four_over_six ? 1 : 0) | (r.mse ? 2 : 0) | (r.row_scaled ? 4 : 0) | (r.e4m3_max == 448.0f ? 8 : 0);
}
NVFP4Rule unpack_rule(int64_t v) { return {(v & 1) != 0, (v & 8) ? 448.0f : 256.0f, (v & 2) != 0, (v & 4) != 0}; }
constexpr int64_t kW4A16 = 16;  // in the activations' integer: rules.w4a16
int64_t pack_activations(const NVFP4LinearOptions& o) {
  return pack_rule(o.rules.activations) | (o.rules.w4a16 ? kW4A16 : 0);
}
// x_amax: the static activation amax as the Functions carry it (an empty tensor: none).
NVFP4LinearOptions unpack_activations(int64_t v, const at::Tensor& x_amax) {
  NVFP4LinearOptions o;
  o.rules.activations = unpack_rule(v);
  o.rules.w4a16 = (v & kW4A16) != 0;
  if (x_amax.numel() > 0) o.activation_amax = x_amax.reshape({});
  return o;
}
std::optional<at::Tensor> static_amax(const NVFP4LinearOptions& o) {
  return o.activation_amax.defined() ? std::optional<at::Tensor>(o.activation_amax) : std::nullopt;
}

// The activations' operand of the emulated GEMM (x2 [M, K]): exact values and S_dec ([] per
// tensor, [M] row-scaled), or x2 itself and no S_dec (W4A16); `saved`: what the dequantized
// backward keeps of it (packed codes, scales, S_dec; or x2 itself).
struct ActOperand {
  at::Tensor values, s_dec;
  std::vector<at::Tensor> saved;
};
ActOperand quantize_activations(const at::Tensor& x2, const NVFP4LinearOptions& opt, bool deq) {
  if (opt.rules.w4a16) return {x2, at::Tensor(), {x2}};
  if (deq) {
    NVFP4Operand q = nvfp4_quantize_and_fake(x2, Blocks::k1D, static_amax(opt), opt.rules.activations);
    return {q.values, q.packed.s_dec, {q.packed.codes, q.packed.scales, q.packed.s_dec}};
  }
  NVFP4FakeQuant f = nvfp4_fake_quantize(x2, Blocks::k1D, static_amax(opt), opt.rules.activations);
  return {f.values, f.s_dec, {}};
}
// The GEMM's alpha: S_dec_x * S_dec_w (per row when row-scaled), or S_dec_w alone (W4A16).
at::Tensor alpha_of(const ActOperand& a, const at::Tensor& s_dec_w) {
  return a.s_dec.defined() ? a.s_dec * s_dec_w : s_dec_w;
}
// The activations the dequantized backward uses, from `saved` at index i: dequantized codes (3
// tensors) or X itself (1); advances i.
at::Tensor restore_activations(const std::vector<at::Tensor>& saved, size_t& i, bool kept, at::ScalarType dtype) {
  if (kept) return saved[i++];
  i += 3;
  return nvfp4_dequantize({saved[i - 3], saved[i - 2], saved[i - 1], Blocks::k1D}, dtype);
}

class NVFP4LinearFn : public torch::autograd::Function<NVFP4LinearFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_amax,
                            int64_t blocks, int64_t backward, int64_t weight_rule, int64_t activations,
                            const at::Tensor& x_amax, const at::Tensor& wq_values, const at::Tensor& wq_codes,
                            const at::Tensor& wq_scales, const at::Tensor& wq_s_dec) {
    const int64_t K = x.size(-1);
    const at::Tensor x2 = x.reshape({-1, K});
    const auto b = static_cast<Blocks>(blocks);
    const NVFP4Rule wr = unpack_rule(weight_rule);
    const NVFP4LinearOptions act = unpack_activations(activations, x_amax);
    const std::optional<at::Tensor> wa = w_amax.numel() ? std::optional<at::Tensor>(w_amax) : std::nullopt;
    const bool given = wq_values.numel() > 0;
    at::Tensor y;
    if (static_cast<Backward>(backward) == Backward::kDequantized) {
      const ActOperand qx = quantize_activations(x2, act, /*deq=*/true);
      const NVFP4Operand qw =
          given ? NVFP4Operand{{wq_codes, wq_scales, wq_s_dec, b}, wq_values} : nvfp4_quantize_and_fake(w, b, wa, wr);
      y = emulated_gemm(qx.values, qw.values, alpha_of(qx, qw.packed.s_dec), x.scalar_type());
      std::vector<at::Tensor> save = qx.saved;
      save.insert(save.end(), {qw.packed.codes, qw.packed.scales, qw.packed.s_dec});
      ctx->save_for_backward(save);
    } else {
      const ActOperand qx = quantize_activations(x2, act, /*deq=*/false);
      const NVFP4FakeQuant fw = given ? NVFP4FakeQuant{wq_values, wq_s_dec} : nvfp4_fake_quantize(w, b, wa, wr);
      y = emulated_gemm(qx.values, fw.values, alpha_of(qx, fw.s_dec), x.scalar_type());
      ctx->save_for_backward({x2, w});
    }
    ctx->saved_data["x_kept"] = act.rules.w4a16;
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
      size_t i = 0;
      xs = restore_activations(saved, i, ctx->saved_data["x_kept"].toBool(), dtype);
      ws = nvfp4_dequantize({saved[i], saved[i + 1], saved[i + 2], Blocks::k1D}, dtype);
    } else {
      xs = saved[0];
      ws = saved[1];
    }
    const at::Tensor dy = grads[0].reshape({-1, ws.size(0)}).to(dtype);
    auto [dx, dw] = linear_grads(dy, xs, ws);
    auto x_shape = grads[0].sizes().vec();
    x_shape.back() = ws.size(1);
    return {dx.reshape(x_shape), dw,           at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(),        at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The padded path allocates E * Mmax rows per operand instead of T: allowed up to twice T (plus
// a few rows, so that tiny batches pad too); heavier routing imbalance loops over experts.
constexpr int64_t kPadSlackRows = 128;

int64_t max_count(const std::vector<int64_t>& off) {
  int64_t m = 0;
  for (size_t e = 0; e + 1 < off.size(); ++e) m = std::max(m, off[e + 1] - off[e]);
  return m;
}

bool pads(const std::vector<int64_t>& off) {
  const int64_t E = static_cast<int64_t>(off.size()) - 1, T = off[E], Mmax = max_count(off);
  return Mmax > 0 && E * Mmax <= 2 * T + kPadSlackRows;
}

// Row t of x (the j-th row of expert e) -> row e * Mmax + j of a padded [E * Mmax, *] buffer: [T]
// int64 on `dev`, built in pinned host memory and copied asynchronously (no host synchronisation).
// Undefined when every expert has Mmax rows (T = E * Mmax): x is then already the padded layout.
at::Tensor pad_index(const std::vector<int64_t>& off, int64_t Mmax, const at::Device& dev) {
  const int64_t E = static_cast<int64_t>(off.size()) - 1;
  if (off[E] == E * Mmax) return at::Tensor();
  at::Tensor idx = at::empty({off[E]}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* p = idx.data_ptr<int64_t>();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t t = off[e]; t < off[e + 1]; ++t) p[t] = e * Mmax + (t - off[e]);
  return idx.to(dev, /*non_blocking=*/true);
}

// The expert of each row: int64 [T] on `dev` (row t of expert e: e), built in pinned host memory
// and copied asynchronously (no host synchronisation).
at::Tensor row_experts(const std::vector<int64_t>& off, const at::Device& dev) {
  const int64_t E = static_cast<int64_t>(off.size()) - 1;
  at::Tensor idx = at::empty({off[E]}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* p = idx.data_ptr<int64_t>();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t t = off[e]; t < off[e + 1]; ++t) p[t] = e;
  return idx.to(dev, /*non_blocking=*/true);
}

// [T, C] -> [E, Mmax, C]: expert e's rows first in slice e, zero rows after them (a view of x
// when idx is undefined: no padding rows).
at::Tensor pad_rows(const at::Tensor& x, const at::Tensor& idx, int64_t E, int64_t Mmax) {
  const int64_t C = x.size(1);
  if (!idx.defined()) return x.reshape({E, Mmax, C});
  return at::zeros({E * Mmax, C}, x.options()).index_copy_(0, idx, x).view({E, Mmax, C});
}

// [E, Mmax, C] -> the real rows [T, C].
at::Tensor unpad_rows(const at::Tensor& p, const at::Tensor& idx) {
  if (!idx.defined()) return p.reshape({-1, p.size(2)});
  return p.reshape({-1, p.size(2)}).index_select(0, idx);
}

// The forward of the grouped function given the quantized weights (values bf16 [E, N, K] =
// e2m1(q) * sb, S_dec float32 [E]): activations quantized per expert, the emulated NVFP4 GEMM.
// `deq` also returns the packed activations the dequantized backward saves.
struct GroupedForward {
  at::Tensor y;                     // [T, N] in x's dtype
  std::vector<at::Tensor> saved_x;  // deq: packed x, one [E, Mmax, *] triple (padded) or one per expert
  at::Tensor idx;                   // padded: the row index of pad_index()
  int64_t mmax = 0;
};

// Whether the grouped function runs in place on CUDA ("rows"): bf16, and both the grouped forward
// GEMM and at::_grouped_mm apply. Then the activations are quantized where they are (per-expert
// amax over row ranges, or per row) and no operand is padded, at any routing imbalance. The
// default recipe takes it for unequal counts in high_precision mode (equal ones make x the
// [E, M, K] batch as it is, quantized in one fused launch; the dequantized mode pads); the other
// recipes (Four Over Six, row-scaled activations, W4A16) always.
bool standard_recipe(const NVFP4LinearOptions& act) {
  return !act.rules.w4a16 && act.rules.activations.is_default() && !act.activation_amax.defined();
}
bool in_place(const at::Tensor& x, const at::Tensor& w, bool deq, const std::vector<int64_t>& off,
              const NVFP4LinearOptions& act) {
  const int64_t E = static_cast<int64_t>(off.size()) - 1;
  if (!x.is_cuda() || !detail::uses_grouped_mm(x, w.size(1)) ||
      !gemm::grouped_gemm_supported(x, w.size(1), w.size(2), x.scalar_type()))
    return false;
  return !standard_recipe(act) || (!deq && off[E] != E * max_count(off));
}

// act: the activations' rule and W4A16 (NVFP4LinearOptions); a rule other than the default, or
// W4A16, runs in place (`rows`) on CUDA, else the per-expert loop (never `padded`).
GroupedForward grouped_forward(const at::Tensor& x, const at::Tensor& w_values, const at::Tensor& w_s_dec,
                               const std::vector<int64_t>& off, bool padded, bool deq, bool rows,
                               const NVFP4LinearOptions& act) {
  const int64_t T = x.size(0), E = w_values.size(0), N = w_values.size(1);
  GroupedForward out;
  if (rows) {
    // In place: each expert's row range quantized with its own amax, or each row with its own
    // (row-scaled), by nvfp4_quantize_rows; W4A16 takes x as it is. Then one grouped GEMM with
    // alpha in its epilogue reading the rows where they are: alpha per expert (S_dec_x[e] *
    // S_dec_w[e], or S_dec_w[e] alone for W4A16) or per row (S_dec_x[t] * S_dec_w[e(t)]). Should
    // the GEMM refuse the problem at run time, the same operands go through one GEMM per expert.
    at::Tensor xv = x, s_dec_x;  // values [T, K]; S_dec [E] or [T] (undefined: W4A16)
    if (!act.rules.w4a16) {
      // A static amax: every row with that one amax (1x16 blocks never span two rows, so this is
      // each expert's slice quantized with it), S_dec the same for every expert.
      NVFP4Operand qx;
      if (act.activation_amax.defined()) {
        if (deq) {
          qx = nvfp4_quantize_and_fake(x, Blocks::k1D, act.activation_amax);
        } else {
          NVFP4FakeQuant f = nvfp4_fake_quantize(x, Blocks::k1D, act.activation_amax);
          qx.values = std::move(f.values);
          qx.packed.s_dec = std::move(f.s_dec);
        }
        qx.packed.s_dec = qx.packed.s_dec.reshape({1}).expand({E}).contiguous();
      } else {
        qx = nvfp4_quantize_rows(x, off, /*packed=*/deq, act.rules.activations);
      }
      xv = qx.values;
      s_dec_x = qx.packed.s_dec;
      if (deq) {
        // Saved per row ([T]) so that the backward dequantizes the rows in one launch: the same
        // product e2m1 * sb * S_dec as with the per-expert S_dec.
        const at::Tensor s_rows =
            act.rules.activations.row_scaled ? s_dec_x : s_dec_x.index_select(0, row_experts(off, x.device()));
        out.saved_x = {qx.packed.codes, qx.packed.scales, s_rows};
      }
    }
    const bool per_row = act.rules.activations.row_scaled && !act.rules.w4a16;
    const at::Tensor alpha = !s_dec_x.defined() ? w_s_dec                                                 // [E]
                             : per_row ? s_dec_x * w_s_dec.index_select(0, row_experts(off, x.device()))  // [T]
                                       : s_dec_x * w_s_dec;                                               // [E]
    out.y = per_row ? gemm::grouped_scaled_mm_rows(xv, w_values, alpha, off, x.scalar_type())
                    : gemm::grouped_scaled_mm(xv, w_values, alpha, off, x.scalar_type());
    if (out.y.defined()) return out;
    out.y = at::empty({T, N}, x.options());
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = off[e + 1] - off[e];
      if (n > 0)
        out.y.narrow(0, off[e], n)
            .copy_(emulated_gemm(xv.narrow(0, off[e], n), w_values[e], per_row ? alpha.narrow(0, off[e], n) : alpha[e],
                                 x.scalar_type()));
    }
    return out;
  }
  if (padded) {
    const int64_t Mmax = max_count(off);
    const at::Tensor idx = pad_index(off, Mmax, x.device());  // [T]
    out.idx = idx;
    out.mmax = Mmax;
    const at::Tensor x_pad = pad_rows(x, idx, E, Mmax);  // [E, Mmax, K]
    // Activations: one launch quantizes every expert with its own amax. Slice e of x_pad holds
    // expert e's rows followed by zero rows; zeros do not change max|x| (so amax and S_dec
    // are those of the expert's own slice), 1x16 blocks never span two rows (so each real
    // row's block scales and codes depend only on that row and S_dec), and zero rows quantize
    // to zero codes. The real rows are therefore quantized exactly as the per-expert slices
    // would be; an expert with no tokens gets amax 0 and an all-zero slice, never gathered.
    at::Tensor xq, s_dec_x;  // bf16 [E, Mmax, K], float32 [E]
    if (deq) {
      const NVFP4Operand qx = nvfp4_quantize_and_fake(x_pad, Blocks::k1D);
      xq = qx.values;
      s_dec_x = qx.packed.s_dec;
      out.saved_x = {qx.packed.codes, qx.packed.scales, qx.packed.s_dec};
    } else {
      const NVFP4FakeQuant fx = nvfp4_fake_quantize(x_pad, Blocks::k1D);
      xq = fx.values;
      s_dec_x = fx.s_dec;
    }
    // The emulated NVFP4 GEMM for all experts: bf16 operands, fp32 accumulation and output,
    // alpha[e] = S_dec_x[e] * S_dec_w[e] applied once in fp32, one rounding to x's dtype, and
    // the real rows gathered, in one pass over the fp32 result (kernels/gemm/scaled_bmm.h).
    // On Hopper with bf16, one CUTLASS GEMM applies alpha in its epilogue and writes the real
    // rows only (batched when every expert has Mmax rows, else grouped); elsewhere the batched
    // cuBLAS GEMM and the fused epilogue pass.
    const at::Tensor alpha = s_dec_x * w_s_dec;  // [E]
    out.y = gemm::grouped_scaled_mm(xq, w_values, alpha, off, x.scalar_type());
    if (!out.y.defined())
      out.y = gemm::scaled_bmm(xq, w_values, alpha, x.scalar_type(), idx).reshape({T, N});  // [T, N]
    return out;
  }
  out.y = at::empty({T, N}, x.options());
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = off[e + 1] - off[e];
    if (n == 0) continue;  // an expert with no tokens: nothing to compute, nothing saved
    // Activations: each expert's token slice has its own amax (or each row its own, row-scaled).
    const ActOperand qx = quantize_activations(x.narrow(0, off[e], n), act, deq);
    out.y.narrow(0, off[e], n).copy_(emulated_gemm(qx.values, w_values[e], alpha_of(qx, w_s_dec[e]), x.scalar_type()));
    if (deq && !act.rules.w4a16) out.saved_x.insert(out.saved_x.end(), qx.saved.begin(), qx.saved.end());
  }
  return out;
}

// dX [T, K] and dW [E, N, K] of a grouped linear on its real rows (dy [T, N], x [T, K], w [E, N, K],
// row offsets off). Every expert with the same row count M > 0: two batched GEMMs on the [E, M, *]
// views (what the padded path without padding rows and the BF16 experts, grouped_bf16.cpp, run;
// faster than the grouped kernel: bench/RESULTS.md session 22); otherwise the two at::_grouped_mm
// calls torch's own _grouped_mm backward makes (an expert with no tokens gets dW = 0).
std::pair<at::Tensor, at::Tensor> grouped_mm_grads(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                                                   const std::vector<int64_t>& off) {
  const int64_t E = w.size(0), T = dy.size(0), M = E > 0 ? off[1] - off[0] : 0;
  bool equal = M > 0 && T == E * M;
  for (int64_t e = 0; equal && e < E; ++e) equal = off[e + 1] - off[e] == M;
  if (equal) return batched_expert_grads(dy, x, w);
  const at::Tensor dyc = dy.contiguous();
  const at::Tensor offs = detail::device_offsets(off, dy.device());
  return {at::_grouped_mm(dyc, w.contiguous(), offs),       // [T, N] x [E, N, K] -> [T, K]
          at::_grouped_mm(dyc.t(), x.contiguous(), offs)};  // [N, T] x [T, K] -> [E, N, K]
}

// Grouped NVFP4 linear. On CUDA (unless pads() refuses) all experts run in one launch per step
// (see grouped_forward and nvfp4_linear.h: in-place or padded activation quantization, one grouped
// or batched GEMM each way); under heavier imbalance and on the CPU (the bit-exact reference) it
// loops over experts.
class NVFP4GroupedLinearFn : public torch::autograd::Function<NVFP4GroupedLinearFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& counts,
                            const at::Tensor& w_amax, int64_t blocks, int64_t backward, int64_t weight_rule,
                            int64_t activations, const at::Tensor& x_amax, const at::Tensor& wq_values,
                            const at::Tensor& wq_codes, const at::Tensor& wq_scales, const at::Tensor& wq_s_dec) {
    const int64_t T = x.size(0), E = w.size(0);
    const auto off = offsets_of(counts, T, E, "nvfp4_grouped_linear");
    const bool deq = static_cast<Backward>(backward) == Backward::kDequantized;
    const NVFP4Rule wr = unpack_rule(weight_rule);
    const NVFP4LinearOptions act = unpack_activations(activations, x_amax);
    const bool rows = in_place(x, w, deq, off, act);
    const bool padded = standard_recipe(act) && !rows && x.is_cuda() && pads(off);
    const std::optional<at::Tensor> wa = w_amax.numel() ? std::optional<at::Tensor>(w_amax) : std::nullopt;
    // Weights: one launch for all experts (per-expert or given amax), unless quantized already;
    // the packed codes and scales only where the dequantized backward saves them.
    NVFP4Operand qw;  // values [E, N, K], s_dec [E]
    if (wq_values.numel() > 0) {
      qw = NVFP4Operand{{wq_codes, wq_scales, wq_s_dec, static_cast<Blocks>(blocks)}, wq_values};
    } else if (deq) {
      qw = nvfp4_quantize_and_fake(w, static_cast<Blocks>(blocks), wa, wr);
    } else {
      NVFP4FakeQuant f = nvfp4_fake_quantize(w, static_cast<Blocks>(blocks), wa, wr);
      qw.values = std::move(f.values);
      qw.packed.s_dec = std::move(f.s_dec);
      qw.packed.blocks = static_cast<Blocks>(blocks);
    }
    std::vector<at::Tensor> saved_x;  // dequantized mode: packed x, one [E, Mmax, *] triple or one per expert
    GroupedForward f = grouped_forward(x, qw.values, qw.packed.s_dec, off, padded, deq, rows, act);
    const at::Tensor y = f.y;
    saved_x = std::move(f.saved_x);
    if (padded) {
      if (f.idx.defined()) ctx->saved_data["pad_idx"] = f.idx;  // absent: no padding rows
      ctx->saved_data["mmax"] = f.mmax;
    }
    std::vector<at::Tensor> save;
    if (deq) {
      save = {qw.packed.codes, qw.packed.scales, qw.packed.s_dec};
      if (!act.rules.w4a16)
        save.insert(save.end(), saved_x.begin(), saved_x.end());
      else
        save.push_back(x);  // W4A16: the activations themselves
    } else {
      save = {x, w};
    }
    ctx->save_for_backward(save);
    ctx->saved_data["backward"] = backward;
    ctx->saved_data["dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["off"] = c10::IValue(off);
    ctx->saved_data["padded"] = padded;
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["x_kept"] = act.rules.w4a16;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const auto off = ctx->saved_data["off"].toIntVector();
    const bool deq = static_cast<Backward>(ctx->saved_data["backward"].toInt()) == Backward::kDequantized;
    const at::Tensor dy = grads[0].to(dtype);  // [T, N]
    at::Tensor w_used;                         // [E, N, K]
    if (deq) {
      w_used = nvfp4_dequantize({saved[0], saved[1], saved[2], Blocks::k1D}, dtype);
    } else {
      w_used = saved[1];
    }
    const int64_t E = w_used.size(0), K = w_used.size(2);
    const auto grads_out = [](const at::Tensor& dx, const at::Tensor& dw) {
      return variable_list{dx,           dw,           at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
                           at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    };
    if (ctx->saved_data["rows"].toBool()) {  // in place (bf16): x as saved, or dequantized per row
      const at::Tensor xs = !deq ? saved[0]
                            : ctx->saved_data["x_kept"].toBool()
                                ? saved[3]
                                : nvfp4_dequantize({saved[3], saved[4], saved[5], Blocks::k1D}, dtype);  // [T, K]
      auto [dx, dw] = grouped_mm_grads(dy, xs, w_used, off);
      return grads_out(dx, dw);
    }
    if (ctx->saved_data["padded"].toBool()) {
      // Padding rows of dy_pad are zero: they add nothing to dW, and their dX rows are dropped;
      // an expert with no tokens gets dW = 0. GEMMs in the compute dtype, fp32 accumulation.
      const at::Tensor idx = ctx->saved_data.count("pad_idx") ? ctx->saved_data["pad_idx"].toTensor() : at::Tensor();
      const int64_t Mmax = ctx->saved_data["mmax"].toInt();
      if (idx.defined() && detail::uses_grouped_mm(dy, dy.size(1))) {
        // Padding rows, bf16 on CUDA: grouped GEMMs on the real rows (no padding rows computed).
        // (Without padding rows the batched GEMMs below run on views of dy and x.)
        const at::Tensor x_rows =
            deq ? unpad_rows(nvfp4_dequantize({saved[3], saved[4], saved[5], Blocks::k1D}, dtype), idx)  // [T, K]
                : saved[0];
        auto [dx, dw] = grouped_mm_grads(dy, x_rows, w_used, off);
        return grads_out(dx, dw);
      }
      const at::Tensor dy_pad = pad_rows(dy, idx, E, Mmax);  // [E, Mmax, N]
      const at::Tensor x_pad = deq ? nvfp4_dequantize({saved[3], saved[4], saved[5], Blocks::k1D}, dtype)
                                   : pad_rows(saved[0], idx, E, Mmax);  // [E, Mmax, K]
      const at::Tensor dx = unpad_rows(at::bmm(dy_pad, w_used), idx);   // [E, Mmax, K] -> [T, K]
      const at::Tensor dw = at::bmm(dy_pad.transpose(1, 2), x_pad);     // [E, N, K]
      return grads_out(dx, dw);
    }
    at::Tensor dx = at::zeros({off[E], K}, dy.options());
    at::Tensor dw = at::zeros_like(w_used);
    const bool x_kept = ctx->saved_data["x_kept"].toBool();
    size_t next_x = 3;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = off[e + 1] - off[e];
      if (n == 0) continue;  // no tokens: zero gradient for this expert's weight
      at::Tensor xe;
      if (deq && !x_kept) {
        xe = restore_activations(saved, next_x, false, dtype);
      } else {  // high_precision, or W4A16's dequantized backward: X itself
        xe = saved[deq ? 3 : 0].narrow(0, off[e], n);
      }
      auto [dxe, dwe] = linear_grads(dy.narrow(0, off[e], n), xe, w_used[e]);
      dx.narrow(0, off[e], n).copy_(dxe);
      dw[e].copy_(dwe);
    }
    return grads_out(dx, dw);
  }
};

// Autograd Function arguments must be defined tensors: "no shared amax" travels as an empty one.
at::Tensor amax_arg(const std::optional<at::Tensor>& a, const at::Tensor& w) {
  return a ? *a : at::empty({0}, w.options().dtype(at::kFloat));
}
at::Tensor static_amax_arg(const NVFP4LinearOptions& o, const at::Tensor& x) {
  return amax_arg(static_amax(o), x);
}

// A weight quantized before the call, as the four tensor arguments of the Functions (empty ones
// when absent), after checking that it is w's shape and on w's device.
std::vector<at::Tensor> prequantized_args(const NVFP4Operand* q, const at::Tensor& w, const char* op) {
  if (!q) {
    const at::Tensor none = at::empty({0}, w.options());
    return {none, none, none, none};
  }
  auto packed_shape = w.sizes().vec();
  packed_shape.back() = w.size(-1) / 2;
  FP4QAT_CHECK(q->values.sizes() == w.sizes() && q->values.device() == w.device() &&
                   q->packed.codes.sizes() == c10::IntArrayRef(packed_shape) &&
                   q->packed.s_dec.numel() == (w.dim() == 3 ? w.size(0) : 1),
               op, ": the pre-quantized weight (values ", q->values.sizes(), ", codes ", q->packed.codes.sizes(),
               ") does not fit the weight ", w.sizes(), " on ", w.device());
  return {q->values, q->packed.codes, q->packed.scales, q->packed.s_dec};
}

}  // namespace

bool nvfp4_grouped_linear_pads(const at::Tensor& counts) {
  FP4QAT_CHECK(counts.device().is_cpu() && counts.scalar_type() == at::kLong && counts.dim() == 1,
               "nvfp4_grouped_linear_pads: counts must be a CPU int64 tensor [E], got ", counts.sizes());
  return pads(offsets_of(counts, counts.sum().item<int64_t>(), counts.size(0), "nvfp4_grouped_linear"));
}

at::Tensor nvfp4_linear_forward(const at::Tensor& x, const at::Tensor& w_values, const at::Tensor& w_s_dec,
                                const NVFP4LinearOptions& opt) {
  FP4QAT_CHECK(w_values.dim() == 2 && x.size(-1) == w_values.size(1) && x.device() == w_values.device(),
               "nvfp4_linear_forward: x ", x.sizes(), " and weight values [out, in] ", w_values.sizes(), " do not fit");
  check_options(opt, "nvfp4_linear_forward");
  const int64_t K = x.size(-1);
  const ActOperand qx = quantize_activations(x.reshape({-1, K}), opt, /*deq=*/false);
  auto out_shape = x.sizes().vec();
  out_shape.back() = w_values.size(0);
  return emulated_gemm(qx.values, w_values, alpha_of(qx, w_s_dec), x.scalar_type()).reshape(out_shape);
}

at::Tensor nvfp4_grouped_forward(const at::Tensor& x, const at::Tensor& w_values, const at::Tensor& w_s_dec,
                                 const at::Tensor& counts, const NVFP4LinearOptions& opt) {
  FP4QAT_CHECK(w_values.dim() == 3 && x.size(-1) == w_values.size(2) && x.device() == w_values.device(),
               "nvfp4_grouped_forward: x ", x.sizes(), " and weight values [E, out, in] ", w_values.sizes(),
               " do not fit");
  FP4QAT_CHECK(x.dim() == 2, "nvfp4_grouped_forward: x must be [T, K], got ", x.sizes());
  const auto off = offsets_of(counts, x.size(0), w_values.size(0), "nvfp4_grouped_forward");
  check_options(opt, "nvfp4_grouped_forward");
  const at::Tensor xc = x.contiguous();
  const bool rows = in_place(xc, w_values, false, off, opt);
  return grouped_forward(xc, w_values, w_s_dec, off, standard_recipe(opt) && !rows && x.is_cuda() && pads(off), false,
                         rows, opt)
      .y;
}

at::Tensor nvfp4_linear(const at::Tensor& x, const at::Tensor& w, const NVFP4LinearOptions& opt,
                        const std::optional<at::Tensor>& weight_amax, const NVFP4Operand* w_quantized) {
  check_operands(x, w, 2, "nvfp4_linear");
  check_options(opt, "nvfp4_linear");
  const auto q = prequantized_args(w_quantized, w, "nvfp4_linear");
  return NVFP4LinearFn::apply(x, w, amax_arg(weight_amax, w), static_cast<int64_t>(opt.weight_blocks),
                              static_cast<int64_t>(opt.backward), pack_rule(opt.rules.weights), pack_activations(opt),
                              static_amax_arg(opt, x), q[0], q[1], q[2], q[3]);
}

at::Tensor nvfp4_grouped_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& counts,
                                const NVFP4LinearOptions& opt, const std::optional<at::Tensor>& weight_amax,
                                const NVFP4Operand* w_quantized) {
  check_operands(x, w, 3, "nvfp4_grouped_linear");
  FP4QAT_CHECK(x.dim() == 2, "nvfp4_grouped_linear: x must be [T, K], got ", x.sizes());
  offsets_of(counts, x.size(0), w.size(0), "nvfp4_grouped_linear");  // validate before autograd sees the arguments
  check_options(opt, "nvfp4_grouped_linear");
  const auto q = prequantized_args(w_quantized, w, "nvfp4_grouped_linear");
  return NVFP4GroupedLinearFn::apply(x, w, counts, amax_arg(weight_amax, w), static_cast<int64_t>(opt.weight_blocks),
                                     static_cast<int64_t>(opt.backward), pack_rule(opt.rules.weights),
                                     pack_activations(opt), static_amax_arg(opt, x), q[0], q[1], q[2], q[3]);
}

}  // namespace fp4qat::autograd
