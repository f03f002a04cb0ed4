// qat/marlin.cpp — see marlin.h.
#include "qat/marlin.h"

#include <cmath>

#include "kernels/common/check.h"

namespace fp4qat::qat {

double marlin_scale_factor(const at::Tensor& scales) {
  FP4QAT_CHECK(scales.scalar_type() == at::kFloat8_e4m3fn, "marlin_scale_factor: E4M3 block scales expected, got ",
               scales.scalar_type());
  const at::Tensor s = scales.to(at::kFloat);
  const at::Tensor nz = s.masked_select(s > 0);
  if (nz.numel() == 0) return 1.0;
  // As vLLM: in float32, max * 2^7 against 448 * 2^7; both sides exact, so the ratio is that of
  // two E4M3 values: 2^k exactly or at least one float32 ulp away from it.
  const float max_val = nz.max().item<float>() * 128.0f;
  if (!(max_val < 448.0f * 128.0f)) return 1.0;
  return std::exp2(std::floor(std::log2(448.0f * 128.0f / max_val)));
}

at::Tensor marlin_kept_blocks(const at::Tensor& scales, double sf) {
  FP4QAT_CHECK(sf >= 1 && std::exp2(std::round(std::log2(sf))) == sf, "marlin_kept_blocks: sf ", sf,
               " is not a power of two >= 1");
  const at::Tensor s = scales.to(at::kFloat) * static_cast<float>(sf);  // exact: a power of two
  return (s >= std::ldexp(1.0f, -6)) | (s == 0);
}

at::Tensor marlin_global_scale(const at::Tensor& s_dec) { return s_dec.to(at::kBFloat16).to(at::kFloat); }

at::Tensor marlin_values(const at::Tensor& values, const at::Tensor& scales, double sf) {
  auto block_shape = values.sizes().vec();  // [..., N, K] -> [..., N, K/16, 16]
  FP4QAT_CHECK(!block_shape.empty() && block_shape.back() % 16 == 0 && scales.dim() == values.dim() &&
                   scales.size(-1) * 16 == values.size(-1),
               "marlin_values: values ", values.sizes(), " and block scales ", scales.sizes(), " do not fit");
  block_shape.back() /= 16;
  block_shape.push_back(16);
  const at::Tensor keep = marlin_kept_blocks(scales, sf).unsqueeze(-1);  // [..., N, K/16, 1]
  return at::where(keep, values.reshape(block_shape), at::zeros({}, values.options())).view(values.sizes());  // +0
}

NVFP4Operand marlin_operand(const NVFP4Operand& q, double sf) {
  FP4QAT_CHECK(q.packed.scales.defined() && q.values.defined(), "marlin_operand: the packed scales are needed");
  const at::Tensor keep = marlin_kept_blocks(q.packed.scales, sf);  // [..., N, K/16]
  NVFP4Operand m = q;
  m.values = marlin_values(q.values, q.packed.scales, sf);
  m.packed.scales = at::where(keep, q.packed.scales.view(at::kByte), at::zeros({}, keep.options().dtype(at::kByte)))
                        .view(at::kFloat8_e4m3fn);
  m.packed.s_dec = marlin_global_scale(q.packed.s_dec);
  return m;
}

}  // namespace fp4qat::qat
