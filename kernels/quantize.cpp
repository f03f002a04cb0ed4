// kernels/quantize.cpp — device dispatch and argument checks for kernels/quantize.h.
#include "kernels/quantize.h"

#include "kernels/common/check.h"
#include "kernels/common/formats.h"
#include "kernels/cuda_api.h"
#include "kernels/mxfp8/quantize_ref.h"
#include "kernels/nvfp4/quantize_4over6_ref.h"
#include "kernels/nvfp4/quantize_ref.h"

namespace fp4qat {

Blocks parse_blocks(const std::string& s) {
  if (s == "1d") return Blocks::k1D;
  if (s == "2d") return Blocks::k2D;
  FP4QAT_FAIL("unknown block mode '", s, "' (expected 1d or 2d)");
}

const char* to_string(Blocks b) { return b == Blocks::k1D ? "1d" : "2d"; }

void check_rule(const NVFP4Rule& r, Blocks b, const char* who) {
  FP4QAT_CHECK(!r.four_over_six || r.e4m3_max == 256.0f || r.e4m3_max == 448.0f, who,
               ": Four Over Six's E4M3 bound M must be 256 or 448, got ", r.e4m3_max);
  FP4QAT_CHECK(!(r.row_scaled && b == Blocks::k2D), who,
               ": row-scaled global scales need 1x16 blocks (1d); 16x16 tiles (2d) span 16 rows");
}

std::string describe(const NVFP4Rule& r) {
  std::string s = r.four_over_six ? std::string("4over6(M=") + (r.e4m3_max == 448.0f ? "448" : "256") +
                                        (r.mse ? ", mse)" : ", mae)")
                                  : std::string("max6");
  return r.row_scaled ? s + " + row-scaled" : s;
}

namespace {

void check_input(const at::Tensor& x, int64_t block, const char* op) {
  FP4QAT_CHECK(x.defined(), op, ": undefined tensor");
  FP4QAT_CHECK(x.dim() == 2 || x.dim() == 3, op, ": expected a 2-D [N, K] or 3-D [E, N, K] tensor, got ", x.dim(),
               "-D");
  const auto st = x.scalar_type();
  FP4QAT_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, op,
               ": input dtype must be float32, bfloat16 or float16, got ", st);
  FP4QAT_CHECK(x.size(-1) % block == 0, op, ": K = ", x.size(-1), " is not a multiple of ", block);
}

// [N, K] -> [1, N, K] view so the CPU reference loops over experts uniformly.
at::Tensor as_3d(const at::Tensor& x) { return x.dim() == 2 ? x.unsqueeze(0) : x; }

bool is_cuda(const at::Tensor& x) { return x.device().is_cuda(); }

at::Tensor amax_shape_like(const at::Tensor& x) {
  return x.dim() == 3 ? at::empty({x.size(0)}, x.options().dtype(at::kFloat))
                      : at::empty({}, x.options().dtype(at::kFloat));
}

void check_amax(const at::Tensor& x, const at::Tensor& a, bool rows = false) {
  FP4QAT_CHECK(a.scalar_type() == at::kFloat, "nvfp4_quantize: amax must be float32, got ", a.scalar_type());
  FP4QAT_CHECK(a.device() == x.device(), "nvfp4_quantize: amax is on ", a.device(), ", input on ", x.device());
  if (rows) {
    const auto want = x.sizes().slice(0, x.dim() - 1);
    FP4QAT_CHECK(a.sizes() == want, "nvfp4_quantize: a row-scaled amax must have shape ", want, " (one per row), got ",
                 a.sizes());
    return;
  }
  const bool ok = x.dim() == 3 ? (a.dim() == 1 && a.size(0) == x.size(0)) : a.dim() == 0;
  FP4QAT_CHECK(ok, "nvfp4_quantize: amax must have shape ", (x.dim() == 3 ? "[E]" : "[]"), " for a ", x.dim(),
               "-D input, got ", a.sizes());
}

void check_amax_values(const at::Tensor& a) {  // CPU
  const float* av = a.data_ptr<float>();
  for (int64_t i = 0; i < a.numel(); ++i)
    FP4QAT_CHECK(std::isfinite(av[i]) && av[i] >= 0.0f, "nvfp4_quantize: amax must be finite and >= 0, got ", av[i]);
}

// The 2026 rules on the CPU (kernels/nvfp4/quantize_4over6_ref.h): Four Over Six and / or
// row-scaled global scales, expert by expert.
NVFP4Tensor quantize_rule_cpu(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax_in,
                              const NVFP4Rule& rule) {
  const at::Tensor x3 = as_3d(x).to(at::kFloat).contiguous();
  const int64_t E = x3.size(0), N = x3.size(1), K = x3.size(2), nb = K / fmt::kNvfp4Block;
  auto u8 = x.options().dtype(at::kByte);
  at::Tensor codes = at::empty({E, N, K / 2}, u8), scales = at::empty({E, N, nb}, u8);
  at::Tensor s_dec =
      at::empty(rule.row_scaled ? std::vector<int64_t>{E, N} : std::vector<int64_t>{E}, x.options().dtype(at::kFloat));
  const at::Tensor a = amax_in ? amax_in->contiguous().reshape({E, -1})
                               : (rule.row_scaled ? at::Tensor() : global_amax(x).reshape({E, 1}));
  if (a.defined()) check_amax_values(a);
  for (int64_t e = 0; e < E; ++e) {
    const float* xe = x3.data_ptr<float>() + e * N * K;
    uint8_t* ce = codes.data_ptr<uint8_t>() + e * N * (K / 2);
    uint8_t* se = scales.data_ptr<uint8_t>() + e * N * nb;
    if (rule.row_scaled)
      ref::nvfp4_quantize_rows(xe, N, K, rule, a.defined() ? a.data_ptr<float>() + e * N : nullptr, ce, se,
                               s_dec.data_ptr<float>() + e * N);
    else
      ref::nvfp4_quantize_4over6(xe, N, K, a.data_ptr<float>()[e], blocks == Blocks::k2D, rule, ce, se,
                                 s_dec.data_ptr<float>() + e);
  }
  if (x.dim() == 2) {
    codes = codes.squeeze(0);
    scales = scales.squeeze(0);
    s_dec = s_dec.squeeze(0);
  }
  return {codes, scales.view(at::kFloat8_e4m3fn), s_dec, blocks};
}

}  // namespace

at::Tensor global_amax(const at::Tensor& x) {
  check_input(x, 1, "global_amax");
  if (is_cuda(x)) return cuda::global_amax(x);
  const at::Tensor x3 = as_3d(x).to(at::kFloat).contiguous();  // widening is exact
  at::Tensor out = amax_shape_like(x);
  float* o = out.data_ptr<float>();
  const int64_t per = x3.size(1) * x3.size(2);
  for (int64_t e = 0; e < x3.size(0); ++e) o[e] = ref::amax(x3.data_ptr<float>() + e * per, per);
  return out;
}

at::Tensor row_amax(const at::Tensor& x) {
  check_input(x, 1, "row_amax");
  if (is_cuda(x)) return cuda::row_amax(x);
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const int64_t K = x.size(-1), rows = K ? xf.numel() / K : 0;
  at::Tensor out = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kFloat));
  for (int64_t r = 0; r < rows; ++r) out.data_ptr<float>()[r] = ref::amax(xf.data_ptr<float>() + r * K, K);
  return out;
}

NVFP4Tensor nvfp4_quantize(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax_in,
                           const NVFP4Rule& rule) {
  check_input(x, fmt::kNvfp4Block, "nvfp4_quantize");
  check_rule(rule, blocks, "nvfp4_quantize");
  if (amax_in) check_amax(x, *amax_in, rule.row_scaled);
  if (is_cuda(x)) return cuda::nvfp4_quantize(x, blocks, amax_in, rule);
  if (!rule.is_default()) return quantize_rule_cpu(x, blocks, amax_in, rule);

  const at::Tensor a = amax_in ? amax_in->contiguous() : global_amax(x);
  const at::Tensor x3 = as_3d(x).to(at::kFloat).contiguous();
  const int64_t E = x3.size(0), N = x3.size(1), K = x3.size(2);
  auto u8 = x.options().dtype(at::kByte);
  at::Tensor codes = at::empty({E, N, K / 2}, u8);
  at::Tensor scales = at::empty({E, N, K / fmt::kNvfp4Block}, u8);
  at::Tensor s_dec = amax_shape_like(x);
  const float* av = a.data_ptr<float>();
  for (int64_t e = 0; e < E; ++e) {
    FP4QAT_CHECK(std::isfinite(av[e]) && av[e] >= 0.0f, "nvfp4_quantize: amax must be finite and >= 0, got ", av[e]);
    ref::nvfp4_quantize(x3.data_ptr<float>() + e * N * K, N, K, av[e], blocks == Blocks::k2D,
                        codes.data_ptr<uint8_t>() + e * N * (K / 2),
                        scales.data_ptr<uint8_t>() + e * N * (K / fmt::kNvfp4Block), s_dec.data_ptr<float>() + e);
  }
  if (x.dim() == 2) {
    codes = codes.squeeze(0);
    scales = scales.squeeze(0);
  }
  return {codes, scales.view(at::kFloat8_e4m3fn), s_dec, blocks};
}

at::Tensor nvfp4_dequantize(const NVFP4Tensor& q, at::ScalarType dtype) {
  FP4QAT_CHECK(q.codes.dim() == 2 || q.codes.dim() == 3, "nvfp4_dequantize: codes must be 2-D or 3-D");
  FP4QAT_CHECK(q.codes.scalar_type() == at::kByte, "nvfp4_dequantize: codes must be uint8");
  const int64_t K = q.codes.size(-1) * 2;
  FP4QAT_CHECK(q.scales.dim() == q.codes.dim() && q.scales.size(-1) * fmt::kNvfp4Block == K &&
                   q.scales.size(-2) == q.codes.size(-2),
               "nvfp4_dequantize: scales ", q.scales.sizes(), " do not match codes ", q.codes.sizes());
  const int64_t E = q.codes.dim() == 3 ? q.codes.size(0) : 1;
  const bool rows = q.s_dec.dim() == q.codes.dim() - 1;  // row-scaled: one S_dec per row
  const int64_t n_dec = rows ? E * q.codes.size(-2) : E;
  FP4QAT_CHECK(q.s_dec.scalar_type() == at::kFloat && q.s_dec.numel() == n_dec,
               "nvfp4_dequantize: s_dec must be float32 with ", n_dec, " element(s), got ", q.s_dec.sizes());
  if (is_cuda(q.codes)) return cuda::nvfp4_dequantize(q, dtype);
  const at::Tensor codes = as_3d(q.codes).contiguous();
  const at::Tensor scales = as_3d(q.scales).contiguous().view(at::kByte);
  const at::Tensor s_dec = q.s_dec.contiguous();
  const int64_t N = codes.size(1);
  at::Tensor out = at::empty({E, N, K}, q.codes.options().dtype(at::kFloat));
  // One S_dec per expert (N rows at a time), or per row (one row at a time).
  const int64_t step = rows ? 1 : N;
  for (int64_t i = 0; i < n_dec; ++i)
    ref::nvfp4_dequantize(codes.data_ptr<uint8_t>() + i * step * (K / 2),
                          scales.data_ptr<uint8_t>() + i * step * (K / fmt::kNvfp4Block), s_dec.data_ptr<float>()[i],
                          step, K, out.data_ptr<float>() + i * step * K);
  if (q.codes.dim() == 2) out = out.squeeze(0);
  return out.to(dtype);
}

NVFP4FakeQuant nvfp4_fake_quantize(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax_in,
                                   const NVFP4Rule& rule) {
  check_input(x, fmt::kNvfp4Block, "nvfp4_fake_quantize");
  check_rule(rule, blocks, "nvfp4_fake_quantize");
  if (amax_in) check_amax(x, *amax_in, rule.row_scaled);
  if (is_cuda(x)) return cuda::nvfp4_fake_quantize(x, blocks, amax_in, rule);
  // Reference: quantize, then decode with a unit global scale: e2m1(q) * sb, exact in bf16.
  NVFP4Operand o = nvfp4_quantize_and_fake(x, blocks, amax_in, rule);
  return {o.values, o.packed.s_dec};
}

NVFP4Operand nvfp4_quantize_and_fake(const at::Tensor& x, Blocks blocks, const std::optional<at::Tensor>& amax_in,
                                     const NVFP4Rule& rule) {
  check_input(x, fmt::kNvfp4Block, "nvfp4_quantize_and_fake");
  check_rule(rule, blocks, "nvfp4_quantize_and_fake");
  if (amax_in) check_amax(x, *amax_in, rule.row_scaled);
  if (is_cuda(x)) return cuda::nvfp4_quantize_and_fake(x, blocks, amax_in, rule);
  NVFP4Tensor q = nvfp4_quantize(x, blocks, amax_in, rule);
  NVFP4Tensor unit = q;
  unit.s_dec = at::ones_like(q.s_dec);
  return {q, nvfp4_dequantize(unit, at::kBFloat16)};
}

NVFP4Operand nvfp4_quantize_rows(const at::Tensor& x, const std::vector<int64_t>& off, bool packed,
                                 const NVFP4Rule& rule) {
  check_input(x, fmt::kNvfp4Block, "nvfp4_quantize_rows");
  check_rule(rule, Blocks::k1D, "nvfp4_quantize_rows");
  FP4QAT_CHECK(x.dim() == 2, "nvfp4_quantize_rows: x must be [T, K], got ", x.sizes());
  FP4QAT_CHECK(off.size() >= 2 && off.front() == 0 && off.back() == x.size(0),
               "nvfp4_quantize_rows: row offsets must run from 0 to T = ", x.size(0));
  for (size_t g = 0; g + 1 < off.size(); ++g)
    FP4QAT_CHECK(off[g + 1] >= off[g], "nvfp4_quantize_rows: row offsets decrease at group ", g);
  if (rule.row_scaled) {  // each row its own tensor: the groups do not matter
    NVFP4Operand o = nvfp4_quantize_and_fake(x, Blocks::k1D, std::nullopt, rule);
    if (!packed) o.packed.codes = o.packed.scales = at::Tensor();
    return o;
  }
  if (is_cuda(x)) return cuda::nvfp4_quantize_rows(x, off, packed, rule);
  // The reference: each group's row slice quantized alone.
  const int64_t G = static_cast<int64_t>(off.size()) - 1, K = x.size(1);
  std::vector<at::Tensor> codes, scales, values;
  at::Tensor s_dec = at::empty({G}, x.options().dtype(at::kFloat));
  for (int64_t g = 0; g < G; ++g) {
    const int64_t n = off[g + 1] - off[g];
    if (n == 0) {
      s_dec[g].fill_(fmt::nvfp4_s_dec(fmt::nvfp4_s_enc(0.0f)));
      continue;
    }
    const NVFP4Operand q = nvfp4_quantize_and_fake(x.narrow(0, off[g], n), Blocks::k1D, std::nullopt, rule);
    codes.push_back(q.packed.codes);
    scales.push_back(q.packed.scales);
    values.push_back(q.values);
    s_dec[g].copy_(q.packed.s_dec);
  }
  auto cat = [&](const std::vector<at::Tensor>& v, int64_t cols, at::ScalarType t) {
    return v.empty() ? at::empty({0, cols}, x.options().dtype(t)) : at::cat(v, 0);
  };
  NVFP4Operand out{{packed ? cat(codes, K / 2, at::kByte) : at::Tensor(),
                    packed ? cat(scales, K / 16, at::kFloat8_e4m3fn) : at::Tensor(), s_dec, Blocks::k1D},
                   cat(values, K, at::kBFloat16)};
  return out;
}

MXFP8Tensor mxfp8_quantize(const at::Tensor& x) {
  check_input(x, fmt::kMxfp8Block, "mxfp8_quantize");
  if (is_cuda(x)) return cuda::mxfp8_quantize(x);
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const int64_t K = x.size(-1), M = x.numel() / K;  // experts are independent row sets: flatten
  at::Tensor data = at::empty(x.sizes(), x.options().dtype(at::kByte));
  auto ssz = x.sizes().vec();
  ssz.back() = K / fmt::kMxfp8Block;
  at::Tensor scales = at::empty(ssz, x.options().dtype(at::kByte));
  ref::mxfp8_quantize(xf.data_ptr<float>(), M, K, data.data_ptr<uint8_t>(), scales.data_ptr<uint8_t>());
  return {data.view(at::kFloat8_e4m3fn), scales};
}

at::Tensor mxfp8_dequantize(const MXFP8Tensor& q, at::ScalarType dtype) {
  FP4QAT_CHECK(q.data.dim() >= 1 && q.data.size(-1) % fmt::kMxfp8Block == 0, "mxfp8_dequantize: bad data shape ",
               q.data.sizes());
  const int64_t K = q.data.size(-1), M = q.data.numel() / K;
  FP4QAT_CHECK(q.scales.scalar_type() == at::kByte && q.scales.numel() == M * (K / fmt::kMxfp8Block),
               "mxfp8_dequantize: scales ", q.scales.sizes(), " do not match data ", q.data.sizes());
  if (is_cuda(q.data)) return cuda::mxfp8_dequantize(q, dtype);
  const at::Tensor d = q.data.contiguous().view(at::kByte);
  const at::Tensor s = q.scales.contiguous();
  at::Tensor out = at::empty(q.data.sizes(), q.data.options().dtype(at::kFloat));
  ref::mxfp8_dequantize(d.data_ptr<uint8_t>(), s.data_ptr<uint8_t>(), M, K, out.data_ptr<float>());
  return out.to(dtype);
}

}  // namespace fp4qat
