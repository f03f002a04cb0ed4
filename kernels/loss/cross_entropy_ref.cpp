// kernels/loss/cross_entropy_ref.cpp — see cross_entropy_ref.h: the CUDA kernels' lanes and
// combination tree, one after another.
#include "kernels/loss/cross_entropy_ref.h"

#include <limits>
#include <vector>

namespace fp4qat::loss {

namespace {
float load(const void* p, bool bf16, int64_t i) {
  return bf16 ? bf16_to_float(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}
}  // namespace

void ce_forward_ref(const void* logits, bool bf16, int64_t N, int64_t V, const int64_t* targets, float* lse,
                    float* target_lp) {
  std::vector<MaxSum> lane(kLanes);
  for (int64_t r = 0; r < N; ++r) {
    const int64_t base = r * V;
    for (int t = 0; t < kLanes; ++t) {
      MaxSum a = maxsum_empty();
      for (int64_t c = t; c * kPiece < V; c += kLanes)
        for (int64_t j = c * kPiece; j < c * kPiece + kPiece && j < V; ++j) maxsum_add(a, load(logits, bf16, base + j));
      lane[t] = a;
    }
    // Within each warp, shuffle-down halving: lane l takes lane l + o (o = 16, 8, 4, 2, 1).
    std::vector<MaxSum> warp_sum(kLanes / kWarp);
    for (int w = 0; w < kLanes / kWarp; ++w) {
      MaxSum* v = lane.data() + w * kWarp;
      for (int o = kWarp / 2; o > 0; o >>= 1)
        for (int l = 0; l + o < kWarp; ++l) v[l] = maxsum_combine(v[l], v[l + o]);
      warp_sum[w] = v[0];
    }
    MaxSum all = warp_sum[0];
    for (int w = 1; w < kLanes / kWarp; ++w) all = maxsum_combine(all, warp_sum[w]);
    lse[r] = maxsum_lse(all);
    const int64_t t = targets[r];
    target_lp[r] = (t >= 0 && t < V) ? load(logits, bf16, base + t) - lse[r] : std::numeric_limits<float>::quiet_NaN();
  }
}

void ce_backward_ref(const void* logits, bool bf16, int64_t N, int64_t V, const int64_t* targets, const float* lse,
                     const float* g, void* grad) {
  for (int64_t r = 0; r < N; ++r)
    for (int64_t j = 0; j < V; ++j) {
      const float d = ce_grad(load(logits, bf16, r * V + j), lse[r], j == targets[r], g[r]);
      if (bf16)
        static_cast<uint16_t*>(grad)[r * V + j] = float_to_bf16(d);
      else
        static_cast<float*>(grad)[r * V + j] = d;
    }
}

}  // namespace fp4qat::loss
