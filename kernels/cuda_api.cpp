// kernels/cuda_api.cpp — at::Tensor glue for the CUDA kernels (kernels/cuda_kernels.h): checks,
// allocation through the caching allocator, the current CUDA stream. No host synchronisation.
#include "kernels/cuda_api.h"

#include <array>
#include <cmath>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/common/check.h"
#include "kernels/cuda_kernels.h"
#include "kernels/model/rms_norm_ref.h"

namespace fp4qat::cuda {

namespace ck = fp4qat::cuda_kernels;

namespace {

ck::InType in_type(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return ck::InType::F32;
    case at::kBFloat16:
      return ck::InType::BF16;
    case at::kHalf:
      return ck::InType::F16;
    default:
      FP4QAT_FAIL("CUDA quantize: unsupported dtype ", x.scalar_type());
  }
}

// Contiguous and 16-byte aligned (the kernels use 16-byte vector loads).
at::Tensor prepared(const at::Tensor& x) {
  at::Tensor c = x.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream().stream(); }

// The fused SwiGLU / RoPE operands.
void check_operand(const at::Tensor& t, const char* who, const char* name) {
  FP4QAT_CHECK(t.is_cuda() && t.is_contiguous() && (t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kFloat),
               who, ": ", name, " must be a contiguous bf16 or float32 CUDA tensor, got ", t.scalar_type(), " ",
               t.sizes(), " on ", t.device(), (t.is_contiguous() ? "" : " (not contiguous)"));
}
void check_like(const at::Tensor& t, const at::Tensor& ref, const char* who, const char* name, const char* ref_name) {
  check_operand(t, who, name);
  FP4QAT_CHECK(t.scalar_type() == ref.scalar_type() && t.device() == ref.device(), who, ": ", name, " must have ",
               ref_name, "'s dtype and device (", ref.scalar_type(), " on ", ref.device(), "), got ", t.scalar_type(),
               " on ", t.device());
}

// x [B, T, H, D] (or g) with cos / sin [T, D] or [B, T, D].
elementwise::RopeShape rope_shape(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const char* who,
                                  const char* x_name) {
  check_operand(x, who, x_name);
  check_like(cos, x, who, "cos", x_name);
  check_like(sin, x, who, "sin", x_name);
  FP4QAT_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, who, ": ", x_name, " must be [B, T, H, D] with D even, got ",
               x.sizes());
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  const bool per_batch = cos.dim() == 3;
  FP4QAT_CHECK(cos.sizes() == sin.sizes() &&
                   ((cos.dim() == 2 && cos.size(0) == T && cos.size(1) == D) ||
                    (per_batch && cos.size(0) == B && cos.size(1) == T && cos.size(2) == D)),
               who, ": cos and sin must be [T, D] or [B, T, D] for ", x_name, " ", x.sizes(), ", got ", cos.sizes(),
               " and ", sin.sizes());
  return {B, T, H, D, per_batch};
}

at::Tensor amax_like(const at::Tensor& x) {
  return x.dim() == 3 ? at::empty({x.size(0)}, x.options().dtype(at::kFloat))
                      : at::empty({}, x.options().dtype(at::kFloat));
}

struct Quantized {
  at::Tensor codes, scales, fake, s_dec;
};

// The 2026 rules (kernels/nvfp4/quantize_rules.cu): Four Over Six and / or row-scaled global
// scales, over E experts or over the row groups `row_off` (device int32 [groups + 1]) of x [T, K].
void run_rule(const at::Tensor& x, Blocks blocks, const at::Tensor& given, const NVFP4Rule& rule, Quantized& out,
              const int32_t* row_off = nullptr, int64_t groups = 0) {
  ck::Nvfp4RuleArgs a;
  a.x = x.data_ptr();
  a.type = in_type(x);
  a.E = x.dim() == 3 ? x.size(0) : 1;
  a.N = x.size(-2);
  a.K = x.size(-1);
  a.two_d = blocks == Blocks::k2D;
  a.rule = rule;
  a.given_amax = given.defined() ? given.data_ptr<float>() : nullptr;
  a.row_off = row_off;
  a.groups = groups;
  a.codes = out.codes.defined() ? out.codes.data_ptr<uint8_t>() : nullptr;
  a.scales = out.scales.defined() ? out.scales.data_ptr<uint8_t>() : nullptr;
  a.fake = out.fake.defined() ? reinterpret_cast<uint16_t*>(out.fake.data_ptr()) : nullptr;
  a.s_dec = out.s_dec.data_ptr<float>();
  at::Tensor ws = at::empty({static_cast<int64_t>(ck::nvfp4_rule_workspace_bytes(a))}, x.options().dtype(at::kByte));
  a.workspace = ws.data_ptr();
  ck::nvfp4_quantize_rule(a, stream());
}

Quantized run_nvfp4(const at::Tensor& x_in, Blocks blocks, const std::optional<at::Tensor>& amax, bool packed,
                    bool fake, const NVFP4Rule& rule) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = prepared(x_in);
  const int64_t E = x.dim() == 3 ? x.size(0) : 1, N = x.size(-2), K = x.size(-1);
  Quantized out;
  auto u8 = x.options().dtype(at::kByte);
  auto shape = x.sizes().vec();
  if (packed) {
    shape.back() = K / 2;
    out.codes = at::empty(shape, u8);
    shape.back() = K / 16;
    out.scales = at::empty(shape, u8);
  }
  if (fake) out.fake = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  if (rule.row_scaled)
    out.s_dec = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kFloat));
  else
    out.s_dec = amax_like(x);
  if (!rule.is_default()) {
    run_rule(x, blocks, amax ? amax->contiguous() : at::Tensor(), rule, out);
    return out;
  }
  at::Tensor ws = at::empty({static_cast<int64_t>(ck::nvfp4_workspace_bytes(E))}, u8);
  at::Tensor given;
  if (amax) given = amax->contiguous();
  ck::Nvfp4Args a;
  a.x = x.data_ptr();
  a.type = in_type(x);
  a.E = E;
  a.N = N;
  a.K = K;
  a.two_d = blocks == Blocks::k2D;
  a.given_amax = amax ? given.data_ptr<float>() : nullptr;
  a.codes = packed ? out.codes.data_ptr<uint8_t>() : nullptr;
  a.scales = packed ? out.scales.data_ptr<uint8_t>() : nullptr;
  a.fake = fake ? reinterpret_cast<uint16_t*>(out.fake.data_ptr()) : nullptr;
  a.s_dec = out.s_dec.data_ptr<float>();
  a.workspace = ws.data_ptr();
  ck::nvfp4_quantize(a, stream());
  return out;
}

}  // namespace

at::Tensor global_amax(const at::Tensor& x_in) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = prepared(x_in);
  at::Tensor out = amax_like(x);
  const int64_t E = x.dim() == 3 ? x.size(0) : 1;
  const int64_t per = E ? x.numel() / E : 0;
  if (per % 16 == 0) {
    ck::amax(x.data_ptr(), in_type(x), E, per, out.data_ptr<float>(), stream());
  } else {  // odd sizes (not used by the quantizers, which require K % 16 == 0)
    out.copy_(x.dim() == 3 ? x.abs().reshape({E, -1}).amax(1).to(at::kFloat) : x.abs().max().to(at::kFloat));
  }
  return out;
}

at::Tensor row_amax(const at::Tensor& x_in) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = prepared(x_in);
  at::Tensor out = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kFloat));
  const int64_t K = x.size(-1), rows = K ? x.numel() / K : 0;
  if (K % 16 == 0)
    ck::nvfp4_row_amax(x.data_ptr(), in_type(x), rows, K, out.data_ptr<float>(), stream());
  else
    out.copy_(x.abs().amax(-1).to(at::kFloat));
  return out;
}

NVFP4Tensor nvfp4_quantize(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax,
                           const NVFP4Rule& rule) {
  Quantized q = run_nvfp4(x, blocks, amax, /*packed=*/true, /*fake=*/false, rule);
  return {q.codes, q.scales.view(at::kFloat8_e4m3fn), q.s_dec, blocks};
}

NVFP4FakeQuant nvfp4_fake_quantize(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax,
                                   const NVFP4Rule& rule) {
  Quantized q = run_nvfp4(x, blocks, amax, /*packed=*/false, /*fake=*/true, rule);
  return {q.fake, q.s_dec};
}

NVFP4Operand nvfp4_quantize_and_fake(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax,
                                     const NVFP4Rule& rule) {
  Quantized q = run_nvfp4(x, blocks, amax, /*packed=*/true, /*fake=*/true, rule);
  return {{q.codes, q.scales.view(at::kFloat8_e4m3fn), q.s_dec, blocks}, q.fake};
}

at::Tensor nvfp4_dequantize(const NVFP4Tensor& q, at::ScalarType dtype) {
  const c10::cuda::CUDAGuard guard(q.codes.device());
  const at::Tensor codes = q.codes.contiguous(), scales = q.scales.contiguous().view(at::kByte);
  const at::Tensor s_dec = q.s_dec.contiguous();
  const int64_t E = codes.dim() == 3 ? codes.size(0) : 1, N = codes.size(-2), K = codes.size(-1) * 2;
  const bool bf16 = dtype == at::kBFloat16;
  at::Tensor out = at::empty(codes.dim() == 3 ? std::vector<int64_t>{E, N, K} : std::vector<int64_t>{N, K},
                             codes.options().dtype(bf16 ? at::kBFloat16 : at::kFloat));
  // Row-scaled (one S_dec per row): E * N "experts" of one row each.
  const bool rows = s_dec.dim() == codes.dim() - 1;
  ck::nvfp4_dequantize(codes.data_ptr<uint8_t>(), scales.data_ptr<uint8_t>(), s_dec.data_ptr<float>(), rows ? E * N : E,
                       rows ? 1 : N, K, out.data_ptr(), bf16, stream());
  return bf16 || dtype == at::kFloat ? out : out.to(dtype);
}

NVFP4Operand nvfp4_quantize_rows(const at::Tensor& x_in, const std::vector<int64_t>& off, bool packed,
                                 const NVFP4Rule& rule) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = prepared(x_in);
  const int64_t T = x.size(0), K = x.size(1), G = static_cast<int64_t>(off.size()) - 1;
  FP4QAT_CHECK(G < INT32_MAX && T < INT32_MAX, "nvfp4_quantize_rows: ", G, " groups of ", T,
               " rows: at most 2^31 - 2 of each");
  // The row offsets and each group's first slice (kernels/cuda_kernels.h), built in pinned host
  // memory and copied asynchronously; its first G + 1 entries are the row offsets alone.
  const int64_t R = ck::nvfp4_rows_slice_rows(in_type(x), K, /*fake=*/true);
  at::Tensor table = at::empty({2 * (G + 1)}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
  const ck::RowsTable rt = ck::nvfp4_rows_table(off.data(), G, R, table.data_ptr<int32_t>());
  const at::Tensor table_d = table.to(x.device(), /*non_blocking=*/true);
  auto u8 = x.options().dtype(at::kByte);
  Quantized q;
  if (packed) {
    q.codes = at::empty({T, K / 2}, u8);
    q.scales = at::empty({T, K / 16}, u8);
  }
  q.fake = at::empty({T, K}, x.options().dtype(at::kBFloat16));
  q.s_dec = at::empty({G}, x.options().dtype(at::kFloat));
  if (!rule.is_default()) {  // Four Over Six per group (row-scaled rules never reach here)
    run_rule(x, Blocks::k1D, at::Tensor(), rule, q, table_d.data_ptr<int32_t>(), G);
  } else {
    at::Tensor ws = at::empty({static_cast<int64_t>(ck::nvfp4_workspace_bytes(G))}, u8);
    ck::nvfp4_quantize_rows(x.data_ptr(), in_type(x), T, K, table_d.data_ptr<int32_t>(), G, R, rt.total_slices,
                            rt.max_slices, ws.data_ptr(), packed ? q.codes.data_ptr<uint8_t>() : nullptr,
                            packed ? q.scales.data_ptr<uint8_t>() : nullptr,
                            reinterpret_cast<uint16_t*>(q.fake.data_ptr()), q.s_dec.data_ptr<float>(), stream());
  }
  return {{q.codes, packed ? q.scales.view(at::kFloat8_e4m3fn) : at::Tensor(), q.s_dec, Blocks::k1D}, q.fake};
}

MXFP8Tensor mxfp8_quantize(const at::Tensor& x_in) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = prepared(x_in);
  const int64_t K = x.size(-1), M = x.numel() / K;
  at::Tensor data = at::empty(x.sizes(), x.options().dtype(at::kByte));
  auto ssz = x.sizes().vec();
  ssz.back() = K / 32;
  at::Tensor scales = at::empty(ssz, x.options().dtype(at::kByte));
  ck::mxfp8_quantize(x.data_ptr(), in_type(x), M, K, data.data_ptr<uint8_t>(), scales.data_ptr<uint8_t>(), stream());
  return {data.view(at::kFloat8_e4m3fn), scales};
}

at::Tensor mxfp8_dequantize(const MXFP8Tensor& q, at::ScalarType dtype) {
  const c10::cuda::CUDAGuard guard(q.data.device());
  const at::Tensor d = q.data.contiguous().view(at::kByte), s = q.scales.contiguous();
  const int64_t K = d.size(-1), M = d.numel() / K;
  const bool bf16 = dtype == at::kBFloat16;
  at::Tensor out = at::empty(d.sizes(), d.options().dtype(bf16 ? at::kBFloat16 : at::kFloat));
  ck::mxfp8_dequantize(d.data_ptr<uint8_t>(), s.data_ptr<uint8_t>(), M, K, out.data_ptr(), bf16, stream());
  return bf16 || dtype == at::kFloat ? out : out.to(dtype);
}

void adamw_step(at::Tensor& p, const at::Tensor& g, at::Tensor& m, at::Tensor& v, const optim::AdamWScalars& s) {
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&p, &g, &m, &v})
    FP4QAT_CHECK(t->is_cuda() && t->scalar_type() == at::kFloat && t->is_contiguous() && t->sizes() == p.sizes() &&
                     t->device() == p.device(),
                 "adamw_step: p, g, m and v must be contiguous float32 CUDA tensors of one shape and device");
  c10::cuda::CUDAGuard guard(p.device());
  ck::adamw_step(p.data_ptr<float>(), g.data_ptr<float>(), m.data_ptr<float>(), v.data_ptr<float>(), p.numel(), s,
                 stream());
}

void adamw_step_many(const std::vector<at::Tensor>& p, const std::vector<at::Tensor>& g, const std::vector<at::Tensor>& m,
                     const std::vector<at::Tensor>& v, const std::vector<float>& decay, const optim::AdamWScalars& s) {
  const size_t n = p.size();
  FP4QAT_CHECK(g.size() == n && m.size() == n && v.size() == n && decay.size() == n,
               "adamw_step_many: p, g, m, v and decay must be lists of one length");
  if (n == 0) return;
  std::vector<ck::AdamWSegment> segs(n);
  for (size_t i = 0; i < n; ++i) {
    for (const at::Tensor* t : {&p[i], &g[i], &m[i], &v[i]})
      FP4QAT_CHECK(t->is_cuda() && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                       t->sizes() == p[i].sizes() && t->device() == p[0].device(),
                   "adamw_step_many: parameter ", i,
                   ": p, g, m and v must be contiguous float32 CUDA tensors of one shape, on one device");
    segs[i] = {p[i].data_ptr<float>(), g[i].data_ptr<float>(), m[i].data_ptr<float>(), v[i].data_ptr<float>(),
               p[i].numel(), decay[i]};
  }
  c10::cuda::CUDAGuard guard(p[0].device());
  ck::adamw_step_many(segs.data(), static_cast<int>(n), s, stream());
}

at::Tensor widen_bf16(const at::Tensor& x) {
  FP4QAT_CHECK(x.is_cuda() && x.scalar_type() == at::kBFloat16 && x.is_contiguous(),
               "widen_bf16: x must be a contiguous bf16 CUDA tensor, got ", x.scalar_type(), " on ", x.device());
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  ck::widen_bf16(reinterpret_cast<const uint16_t*>(x.data_ptr()), out.data_ptr<float>(), x.numel(), stream());
  return out;
}

namespace {
void check_ce(const at::Tensor& logits, const at::Tensor& targets, const char* who) {
  FP4QAT_CHECK(logits.is_cuda() && logits.dim() == 2 && logits.is_contiguous() &&
                   (logits.scalar_type() == at::kBFloat16 || logits.scalar_type() == at::kFloat),
               who, ": logits must be contiguous bf16 or float32 CUDA [N, V], got ", logits.scalar_type(), " ",
               logits.sizes(), " on ", logits.device());
  FP4QAT_CHECK(targets.device() == logits.device() && targets.scalar_type() == at::kLong && targets.is_contiguous() &&
                   targets.dim() == 1 && targets.size(0) == logits.size(0),
               who, ": targets must be contiguous int64 [", logits.size(0), "] on the logits' device, got ",
               targets.scalar_type(), " ", targets.sizes());
}
}  // namespace

std::pair<at::Tensor, at::Tensor> ce_forward(const at::Tensor& logits, const at::Tensor& targets) {
  check_ce(logits, targets, "ce_forward");
  c10::cuda::CUDAGuard guard(logits.device());
  const int64_t N = logits.size(0), V = logits.size(1);
  at::Tensor lse = at::empty({N}, logits.options().dtype(at::kFloat)), lp = at::empty_like(lse);
  ck::ce_forward(logits.data_ptr(), logits.scalar_type() == at::kBFloat16, N, V, targets.data_ptr<int64_t>(),
                 lse.data_ptr<float>(), lp.data_ptr<float>(), stream());
  return {lse, lp};
}

at::Tensor ce_backward(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse, const at::Tensor& g) {
  check_ce(logits, targets, "ce_backward");
  for (const at::Tensor* t : {&lse, &g})
    FP4QAT_CHECK(t->device() == logits.device() && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                     t->dim() == 1 && t->size(0) == logits.size(0),
                 "ce_backward: lse and g must be contiguous float32 [", logits.size(0), "] on the logits' device");
  c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor grad = at::empty_like(logits);
  ck::ce_backward(logits.data_ptr(), logits.scalar_type() == at::kBFloat16, logits.size(0), logits.size(1),
                  targets.data_ptr<int64_t>(), lse.data_ptr<float>(), g.data_ptr<float>(), grad.data_ptr(), stream());
  return grad;
}

at::Tensor swiglu_forward(const at::Tensor& h) {
  check_operand(h, "swiglu_forward", "h");
  FP4QAT_CHECK(h.dim() == 2 && h.size(1) % 2 == 0, "swiglu_forward: h must be [T, 2I], got ", h.sizes());
  c10::cuda::CUDAGuard guard(h.device());
  const int64_t T = h.size(0), I = h.size(1) / 2;
  at::Tensor out = at::empty({T, I}, h.options());
  ck::swiglu_forward(h.data_ptr(), h.scalar_type() == at::kBFloat16, T, I, out.data_ptr(), stream());
  return out;
}

at::Tensor swiglu_backward(const at::Tensor& h, const at::Tensor& g) {
  check_operand(h, "swiglu_backward", "h");
  check_like(g, h, "swiglu_backward", "g", "h");
  FP4QAT_CHECK(h.dim() == 2 && h.size(1) % 2 == 0 && g.dim() == 2 && g.size(0) == h.size(0) &&
                   g.size(1) == h.size(1) / 2,
               "swiglu_backward: h must be [T, 2I] and g [T, I], got ", h.sizes(), " and ", g.sizes());
  c10::cuda::CUDAGuard guard(h.device());
  at::Tensor dh = at::empty(h.sizes(), h.options());
  ck::swiglu_backward(h.data_ptr(), g.data_ptr(), h.scalar_type() == at::kBFloat16, h.size(0),
                                h.size(1) / 2, dh.data_ptr(), stream());
  return dh;
}

at::Tensor rope_forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const elementwise::RopeShape s = rope_shape(x, cos, sin, "rope_forward", "x");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options());
  ck::rope_forward(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), x.scalar_type() == at::kBFloat16, s,
                             out.data_ptr(), stream());
  return out;
}

at::Tensor rope_backward(const at::Tensor& g, const at::Tensor& cos, const at::Tensor& sin) {
  const elementwise::RopeShape s = rope_shape(g, cos, sin, "rope_backward", "g");
  c10::cuda::CUDAGuard guard(g.device());
  at::Tensor dx = at::empty(g.sizes(), g.options());
  ck::rope_backward(g.data_ptr(), cos.data_ptr(), sin.data_ptr(), g.scalar_type() == at::kBFloat16, s,
                              dx.data_ptr(), stream());
  return dx;
}

namespace {
// y [R = N k, H], w [N, k], slot_row int64 [R]: N, k, H.
std::array<int64_t, 3> combine_shape(const at::Tensor& y, const at::Tensor& w, const at::Tensor& slot_row,
                                     const char* who) {
  check_operand(y, who, "y");
  check_like(w, y, who, "w", "y");
  FP4QAT_CHECK(y.dim() == 2 && w.dim() == 2 && w.size(1) >= 1 && y.size(0) == w.numel() && y.size(1) % 8 == 0, who,
               ": y must be [N k, H] with H % 8 == 0 and w [N, k], got ", y.sizes(), " and ", w.sizes());
  FP4QAT_CHECK(slot_row.is_cuda() && slot_row.device() == y.device() && slot_row.scalar_type() == at::kLong &&
                   slot_row.is_contiguous() && slot_row.numel() == y.size(0),
               who, ": slot_row must be contiguous int64 [", y.size(0), "] on ", y.device(), ", got ",
               slot_row.scalar_type(), " ", slot_row.sizes(), " on ", slot_row.device());
  return {w.size(0), w.size(1), y.size(1)};
}
}  // namespace

at::Tensor moe_combine_forward(const at::Tensor& y, const at::Tensor& w, const at::Tensor& slot_row) {
  const auto [N, k, H] = combine_shape(y, w, slot_row, "moe_combine_forward");
  c10::cuda::CUDAGuard guard(y.device());
  at::Tensor out = at::empty({N, H}, y.options());
  ck::moe_combine_forward(y.data_ptr(), w.data_ptr(), slot_row.data_ptr<int64_t>(), y.scalar_type() == at::kBFloat16,
                          N, k, H, out.data_ptr(), stream());
  return out;
}

std::pair<at::Tensor, at::Tensor> moe_combine_backward(const at::Tensor& y, const at::Tensor& w,
                                                       const at::Tensor& slot_row, const at::Tensor& g) {
  const auto [N, k, H] = combine_shape(y, w, slot_row, "moe_combine_backward");
  check_like(g, y, "moe_combine_backward", "g", "y");
  FP4QAT_CHECK(g.dim() == 2 && g.size(0) == N && g.size(1) == H, "moe_combine_backward: g must be [N, H] = [", N, ", ",
               H, "], got ", g.sizes());
  c10::cuda::CUDAGuard guard(y.device());
  at::Tensor dy = at::empty(y.sizes(), y.options()), dw = at::empty(w.sizes(), w.options());
  ck::moe_combine_backward(y.data_ptr(), w.data_ptr(), slot_row.data_ptr<int64_t>(), g.data_ptr(),
                           y.scalar_type() == at::kBFloat16, N, k, H, dy.data_ptr(), dw.data_ptr(), stream());
  return {dy, dw};
}

namespace {
// x [..., D] (or g) for the short-row RMSNorm: the row length D.
int64_t rms_rows_len(const at::Tensor& x, const char* who, const char* name) {
  check_operand(x, who, name);
  FP4QAT_CHECK(x.dim() >= 1 && norm::rows_supported(x.size(-1)), who, ": ", name,
               " must be [..., D] with D a positive multiple of 32, at most ", norm::kMaxRowLen, ", got ", x.sizes());
  return x.size(-1);
}

// The weight of a weighted short-row RMSNorm: [D] in x's dtype on x's device, contiguous, D <= 512.
void rms_weight_check(const at::Tensor& w, const at::Tensor& x, int64_t D, const char* who) {
  FP4QAT_CHECK(w.defined(), who, ": w is undefined");
  FP4QAT_CHECK(w.dim() == 1 && w.size(0) == D && w.scalar_type() == x.scalar_type() && w.device() == x.device() &&
                   w.is_contiguous(),
               who, ": w must be contiguous [D = ", D, "] ", x.scalar_type(), " on ", x.device(), ", got ", w.sizes(),
               " ", w.scalar_type(), " on ", w.device());
  FP4QAT_CHECK(norm::weighted_rows_supported(D), who, ": with a weight the row length D must be at most ",
               norm::kMaxWeightedRowLen, ", got ", D);
}
// The forward's rstd handed to a backward: contiguous float32 [rows] on x's device.
void rms_rstd_check(const at::Tensor& rstd, const at::Tensor& x, int64_t rows, const char* who) {
  FP4QAT_CHECK(rstd.device() == x.device() && rstd.scalar_type() == at::kFloat && rstd.is_contiguous() &&
                   rstd.numel() == rows,
               who, ": rstd must be contiguous float32 with ", rows, " elements on ", x.device(), ", got ",
               rstd.scalar_type(), " ", rstd.sizes(), " on ", rstd.device());
}
}  // namespace

std::pair<at::Tensor, at::Tensor> rms_norm_rows_forward(const at::Tensor& x, double eps, const at::Tensor& w) {
  const int64_t D = rms_rows_len(x, "rms_norm_rows_forward", "x");
  FP4QAT_CHECK(std::isfinite(eps) && eps >= 0, "rms_norm_rows_forward: eps must be finite and >= 0, got ", eps);
  if (w.defined()) rms_weight_check(w, x, D, "rms_norm_rows_forward");
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.numel() / D;
  at::Tensor y = at::empty(x.sizes(), x.options()), rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  ck::rms_norm_rows_forward(x.data_ptr(), x.scalar_type() == at::kBFloat16, rows, D, static_cast<float>(eps),
                            y.data_ptr(), rstd.data_ptr<float>(), stream(), w.defined() ? w.data_ptr() : nullptr);
  return {y, rstd};
}

std::pair<at::Tensor, at::Tensor> rms_norm_rows_backward_weighted(const at::Tensor& x, const at::Tensor& g,
                                                                  const at::Tensor& rstd, const at::Tensor& w) {
  const int64_t D = rms_rows_len(x, "rms_norm_rows_backward_weighted", "x");
  check_like(g, x, "rms_norm_rows_backward_weighted", "g", "x");
  FP4QAT_CHECK(g.sizes() == x.sizes(), "rms_norm_rows_backward_weighted: g must have x's shape ", x.sizes(), ", got ",
               g.sizes());
  rms_weight_check(w, x, D, "rms_norm_rows_backward_weighted");
  const int64_t rows = x.numel() / D;
  rms_rstd_check(rstd, x, rows, "rms_norm_rows_backward_weighted");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = at::empty(x.sizes(), x.options()), dw = at::empty({D}, x.options());
  at::Tensor partial = at::empty({norm::weight_scratch_rows(rows), D}, x.options().dtype(at::kFloat));
  ck::rms_norm_rows_backward(x.data_ptr(), g.data_ptr(), rstd.data_ptr<float>(), x.scalar_type() == at::kBFloat16,
                             rows, D, dx.data_ptr(), stream(), w.data_ptr(), dw.data_ptr(), partial.data_ptr<float>());
  return {dx, dw};
}

at::Tensor rms_norm_rows_backward(const at::Tensor& x, const at::Tensor& g, const at::Tensor& rstd) {
  const int64_t D = rms_rows_len(x, "rms_norm_rows_backward", "x");
  check_like(g, x, "rms_norm_rows_backward", "g", "x");
  FP4QAT_CHECK(g.sizes() == x.sizes(), "rms_norm_rows_backward: g must have x's shape ", x.sizes(), ", got ",
               g.sizes());
  const int64_t rows = x.numel() / D;
  rms_rstd_check(rstd, x, rows, "rms_norm_rows_backward");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = at::empty(x.sizes(), x.options());
  ck::rms_norm_rows_backward(x.data_ptr(), g.data_ptr(), rstd.data_ptr<float>(), x.scalar_type() == at::kBFloat16,
                             rows, D, dx.data_ptr(), stream());
  return dx;
}

}  // namespace fp4qat::cuda
