// kernels/gemm/scaled_bmm.cpp — see scaled_bmm.h.
#include "kernels/gemm/scaled_bmm.h"

#include <algorithm>

#include "kernels/bench_hooks.h"
#include "kernels/common/check.h"
#include "kernels/common/tuning.h"

#ifdef FP4QAT_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/cuda_kernels.h"
#endif
#ifdef FP4QAT_WITH_CUTLASS
#include "kernels/gemm_sm90/batched_gemm.h"
#include "kernels/gemm_sm90/grouped_gemm.h"
#endif

namespace fp4qat::gemm {

namespace {
thread_local const char* t_last_grouped = "none";

// The unfused epilogue: fp32 result [B, M, N] times alpha[b], one cast, then the selected rows.
at::Tensor epilogue_aten(at::Tensor y32, const at::Tensor& alpha, at::ScalarType out, const at::Tensor& rows) {
  const int64_t B = y32.size(0), N = y32.size(2);
  at::Tensor y = y32.mul_(alpha.reshape({B, 1, 1})).to(out);
  return rows.defined() ? y.reshape({-1, N}).index_select(0, rows) : y;
}

// y32 [B, M, N] (fp32) times alpha[b], rounded once to `out`, then the selected rows: one fused
// pass on CUDA (kernels/gemm/epilogue.cu) unless switched off, at:: ops otherwise.
at::Tensor scale_and_round(at::Tensor y32, const at::Tensor& alpha, at::ScalarType out, const at::Tensor& rows) {
#ifdef FP4QAT_WITH_CUDA
  if (y32.is_cuda() && fused_epilogue()) {  // kernels/bench_hooks.h
    namespace ck = fp4qat::cuda_kernels;
    const c10::cuda::CUDAGuard guard(y32.device());
    const int64_t B = y32.size(0), M = y32.size(1), N = y32.size(2);
    const int64_t T = rows.defined() ? rows.size(0) : B * M;
    at::Tensor y = at::empty({T, N}, y32.options().dtype(out));
    const at::Tensor al = alpha.reshape({B}).contiguous();
    const ck::OutType o = out == at::kFloat      ? ck::OutType::F32
                          : out == at::kBFloat16 ? ck::OutType::BF16
                                                 : ck::OutType::F16;
    ck::scale_rows_cast(y32.data_ptr<float>(), al.data_ptr<float>(),
                        rows.defined() ? rows.data_ptr<int64_t>() : nullptr, T, M, N, y.data_ptr(), o,
                        at::cuda::getCurrentCUDAStream().stream());
    return rows.defined() ? y : y.view({B, M, N});
  }
#endif
  return epilogue_aten(std::move(y32), alpha, out, rows);
}
}  // namespace

// The switches (kernels/bench_hooks.h) over the GEMM tuning, read once (kernels/common/tuning.h).
void set_fused_epilogue(bool on) {
  tuning::GemmTuning t = tuning::gemm_tuning();
  t.fused_epilogue = on;
  tuning::set_gemm_tuning(t);
}
bool fused_epilogue() { return tuning::gemm_tuning().fused_epilogue; }

void set_grouped_gemm(bool on) {
  tuning::GemmTuning t = tuning::gemm_tuning();
  t.grouped = on;
  tuning::set_gemm_tuning(t);
}
bool grouped_gemm_enabled() { return tuning::gemm_tuning().grouped; }

void set_batched_gemm_tile(int tile) {
  FP4QAT_CHECK(tile >= -1 && tile <= 1, "set_batched_gemm_tile: tile must be -1 (off), 0 or 1, got ", tile);
  tuning::GemmTuning t = tuning::gemm_tuning();
  t.batched_tile = tile;
  tuning::set_gemm_tuning(t);
}
int batched_gemm_tile() { return tuning::gemm_tuning().batched_tile; }
const char* last_grouped_kernel() { return t_last_grouped; }

bool grouped_gemm_supported(const at::Tensor& x, int64_t N, int64_t K, at::ScalarType out) {
#ifdef FP4QAT_WITH_CUTLASS
  if (!grouped_gemm_enabled() || !x.is_cuda() || x.scalar_type() != at::kBFloat16 || out != at::kBFloat16 ||
      N % 8 != 0 || K % 8 != 0 || N > INT32_MAX || K > INT32_MAX || x.size(0) > INT32_MAX)
    return false;
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  return prop->major == 9 && prop->minor == 0;
#else
  (void)x;
  (void)N;
  (void)K;
  (void)out;
  return false;
#endif
}

namespace {
#ifdef FP4QAT_WITH_CUTLASS
// The groups of a grouped GEMM: the experts with rows, their row counts, first rows in x and y,
// and weight index.
struct Groups {
  std::vector<int> m;
  std::vector<int64_t> x0, y0, we;
};
Groups groups_of(const std::vector<int64_t>& off, int64_t Mmax, bool rows_layout, const char* who) {
  Groups g;
  const int64_t E = static_cast<int64_t>(off.size()) - 1;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = off[e + 1] - off[e];
    FP4QAT_CHECK(n >= 0 && n <= Mmax, who, ": expert ", e, " has ", n, " rows, more than Mmax = ", Mmax);
    if (n == 0) continue;  // an expert without rows: no group
    g.m.push_back(static_cast<int>(n));
    g.x0.push_back(rows_layout ? off[e] : e * Mmax);
    g.y0.push_back(off[e]);
    g.we.push_back(e);
  }
  return g;
}

// One CUTLASS grouped GEMM into y (kernels/gemm_sm90/grouped_gemm.h): false when CUTLASS refuses
// the problem at run time.
bool run_grouped(const Groups& g, const at::Tensor& xc, const at::Tensor& wc, const at::Tensor& al, at::Tensor& y,
                 cuda_kernels::sm90::GroupedAlpha kind, int sms) {
  namespace sm90 = fp4qat::cuda_kernels::sm90;
  const int groups = static_cast<int>(g.m.size());
  const int N = static_cast<int>(wc.size(1)), K = static_cast<int>(wc.size(2));
  const int64_t bytes = static_cast<int64_t>(sm90::grouped_args_bytes(groups));
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  sm90::fill_grouped_args(host.data_ptr(), groups, N, K, g.m.data(), g.x0.data(), g.y0.data(), g.we.data(),
                          xc.data_ptr(), wc.data_ptr(), y.data_ptr(), al.data_ptr<float>(), kind);
  const at::Tensor dev = host.to(xc.device(), /*non_blocking=*/true);  // the host block stays valid until copied
  const size_t ws_bytes = sm90::grouped_workspace_bytes(dev.data_ptr(), groups, g.m.data(), N, K, sms, kind);
  at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes) + 1}, xc.options().dtype(at::kByte));
  return sm90::grouped_gemm_bf16(dev.data_ptr(), groups, g.m.data(), N, K, ws.data_ptr(), ws_bytes, sms,
                                 at::cuda::getCurrentCUDAStream().stream(), kind);
}
#endif
}  // namespace

at::Tensor grouped_scaled_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& alpha,
                             const std::vector<int64_t>& off, at::ScalarType out) {
  const bool rows_layout = x.dim() == 2;  // x [T, K]: expert e's rows at off[e]
  FP4QAT_CHECK((x.dim() == 3 || rows_layout) && w.dim() == 3 && x.size(-1) == w.size(2) &&
                   static_cast<int64_t>(off.size()) == w.size(0) + 1 && (rows_layout || x.size(0) == w.size(0)) &&
                   (!rows_layout || off.back() == x.size(0)),
               "grouped_scaled_mm: x [E, Mmax, K] or [T, K], w [E, N, K] and off [E + 1] do not fit: ", x.sizes(), ", ",
               w.sizes(), ", ", off.size());
  t_last_grouped = "none";
#ifdef FP4QAT_WITH_CUTLASS
  const int64_t E = w.size(0), Mmax = rows_layout ? x.size(0) : x.size(1), N = w.size(1), K = x.size(-1);
  if (w.scalar_type() != at::kBFloat16 || Mmax > INT32_MAX || !grouped_gemm_supported(x, N, K, out))
    return at::Tensor();
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  FP4QAT_CHECK(alpha.scalar_type() == at::kFloat && alpha.numel() == E && alpha.device() == x.device(),
               "grouped_scaled_mm: alpha must be float32 [E = ", E, "] on ", x.device());
  const Groups g = groups_of(off, Mmax, rows_layout, "grouped_scaled_mm");
  at::Tensor y = at::empty({off[E], N}, x.options().dtype(out));  // [T, N]
  const int groups = static_cast<int>(g.m.size());
  if (groups == 0) return y;
  const at::Tensor xc = x.contiguous(), wc = w.contiguous(), al = alpha.reshape({E}).contiguous();
  namespace sm90 = fp4qat::cuda_kernels::sm90;
  const int sms = prop->multiProcessorCount;
  const int tile = batched_gemm_tile();
  // Every expert has the same count M of rows, and x holds no padding rows (as [E, M, K] or as
  // [E * M, K]): x is the [E, M, K] batch and y the [E, M, N] batch — one batched GEMM.
  const int64_t M0 = off[1] - off[0];
  const bool equal = groups == E && (rows_layout || M0 == Mmax) &&
                     std::all_of(g.m.begin(), g.m.end(), [M0](int c) { return c == M0; });
  if (tile >= 0 && equal && M0 * std::max(N, K) <= INT32_MAX) {
    const auto bt = static_cast<sm90::BatchedTile>(tile);
    const int B = static_cast<int>(E), M = static_cast<int>(M0), n = static_cast<int>(N), k = static_cast<int>(K);
    const size_t ws_bytes = sm90::batched_workspace_bytes(B, M, n, k, sms, bt);
    at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes) + 1}, x.options().dtype(at::kByte));
    if (sm90::batched_gemm_bf16(xc.data_ptr(), wc.data_ptr(), y.data_ptr(), al.data_ptr<float>(), B, M, n, k,
                                ws.data_ptr(), ws_bytes, sms, bt, at::cuda::getCurrentCUDAStream().stream())) {
      t_last_grouped = "batched";
      return y;
    }
  }
  if (!run_grouped(g, xc, wc, al, y, sm90::GroupedAlpha::kPerGroup, sms)) return at::Tensor();
  t_last_grouped = "grouped";
  return y;
#else
  (void)alpha;
  (void)out;
  return at::Tensor();
#endif
}

at::Tensor grouped_scaled_mm_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& alpha,
                                  const std::vector<int64_t>& off, at::ScalarType out) {
  FP4QAT_CHECK(x.dim() == 2 && w.dim() == 3 && x.size(1) == w.size(2) &&
                   static_cast<int64_t>(off.size()) == w.size(0) + 1 && off.back() == x.size(0),
               "grouped_scaled_mm_rows: x [T, K], w [E, N, K] and off [E + 1] do not fit: ", x.sizes(), ", ", w.sizes(),
               ", ", off.size());
  FP4QAT_CHECK(alpha.scalar_type() == at::kFloat && alpha.dim() == 1 && alpha.size(0) == x.size(0) &&
                   alpha.device() == x.device(),
               "grouped_scaled_mm_rows: alpha must be float32 [T = ", x.size(0), "] on ", x.device(), ", got ",
               alpha.sizes(), " ", alpha.scalar_type(), " on ", alpha.device());
  t_last_grouped = "none";
#ifdef FP4QAT_WITH_CUTLASS
  const int64_t T = x.size(0), N = w.size(1), K = x.size(1);
  if (w.scalar_type() != at::kBFloat16 || !grouped_gemm_supported(x, N, K, out)) return at::Tensor();
  const c10::cuda::CUDAGuard guard(x.device());
  const Groups g = groups_of(off, T, /*rows_layout=*/true, "grouped_scaled_mm_rows");
  at::Tensor y = at::empty({T, N}, x.options().dtype(out));  // [T, N]
  if (g.m.empty()) return y;
  const at::Tensor xc = x.contiguous(), wc = w.contiguous(), al = alpha.contiguous();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  namespace sm90 = fp4qat::cuda_kernels::sm90;
  // Every expert has the same count M of rows: x is the [E, M, K] batch — one batched GEMM whose
  // epilogue reads alpha per row (unless the batched form is switched off).
  const int64_t E = w.size(0), M0 = off[1] - off[0];
  const bool equal =
      static_cast<int64_t>(g.m.size()) == E && std::all_of(g.m.begin(), g.m.end(), [M0](int c) { return c == M0; });
  if (batched_gemm_tile() >= 0 && equal && M0 * std::max(N, K) <= INT32_MAX) {
    const int B = static_cast<int>(E), M = static_cast<int>(M0), n = static_cast<int>(N), k = static_cast<int>(K);
    const size_t ws_bytes = sm90::batched_rows_workspace_bytes(B, M, n, k, sms);
    at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes) + 1}, x.options().dtype(at::kByte));
    if (sm90::batched_gemm_bf16_rows(xc.data_ptr(), wc.data_ptr(), y.data_ptr(), al.data_ptr<float>(), B, M, n, k,
                                     ws.data_ptr(), ws_bytes, sms, at::cuda::getCurrentCUDAStream().stream())) {
      t_last_grouped = "batched_rows";
      return y;
    }
  }
  if (!run_grouped(g, xc, wc, al, y, sm90::GroupedAlpha::kPerRow, sms)) return at::Tensor();
  t_last_grouped = "grouped_rows";
  return y;
#else
  (void)out;
  return at::Tensor();
#endif
}

at::Tensor scaled_bmm(const at::Tensor& a, const at::Tensor& w, const at::Tensor& alpha, at::ScalarType out,
                      const at::Tensor& rows) {
  FP4QAT_CHECK(a.dim() == 3 && w.dim() == 3 && a.size(0) == w.size(0) && a.size(2) == w.size(2),
               "scaled_bmm: a [B, M, K] and w [B, N, K] do not fit: ", a.sizes(), " and ", w.sizes());
  FP4QAT_CHECK(a.scalar_type() == w.scalar_type() && a.device() == w.device(),
               "scaled_bmm: a and w must have one dtype and device, got ", a.scalar_type(), " on ", a.device(), " and ",
               w.scalar_type(), " on ", w.device());
  FP4QAT_CHECK(alpha.scalar_type() == at::kFloat && alpha.numel() == a.size(0) && alpha.device() == a.device(),
               "scaled_bmm: alpha must be float32 [B = ", a.size(0), "] on ", a.device(), ", got ", alpha.sizes(), " ",
               alpha.scalar_type(), " on ", alpha.device());
  FP4QAT_CHECK(out == at::kFloat || out == at::kBFloat16 || out == at::kHalf, "scaled_bmm: unsupported output dtype ",
               out);
  FP4QAT_CHECK(!rows.defined() || (rows.scalar_type() == at::kLong && rows.dim() == 1 && rows.device() == a.device()),
               "scaled_bmm: rows must be int64 [T] on ", a.device());
  if (!a.is_cuda())  // the reference: widen the exact operands to fp32 first
    return scale_and_round(at::bmm(a.to(at::kFloat), w.to(at::kFloat).transpose(1, 2)), alpha, out, rows);
  return scale_and_round(at::bmm(a, w.transpose(1, 2), at::kFloat), alpha, out, rows);  // fp32 accumulation and output
}

at::Tensor scaled_mm_rows(const at::Tensor& a, const at::Tensor& w, const at::Tensor& alpha, at::ScalarType out) {
  FP4QAT_CHECK(a.dim() == 2 && w.dim() == 2 && a.size(1) == w.size(1),
               "scaled_mm_rows: a [M, K] and w [N, K] do not fit: ", a.sizes(), " and ", w.sizes());
  FP4QAT_CHECK(a.scalar_type() == w.scalar_type() && a.device() == w.device(),
               "scaled_mm_rows: a and w must have one dtype and device");
  FP4QAT_CHECK(alpha.scalar_type() == at::kFloat && alpha.dim() == 1 && alpha.size(0) == a.size(0) &&
                   alpha.device() == a.device(),
               "scaled_mm_rows: alpha must be float32 [M = ", a.size(0), "] on ", a.device(), ", got ", alpha.sizes());
  const int64_t M = a.size(0), N = w.size(0);
  // Each row a batch of one: [M, 1, N] with alpha[m], the epilogue of scaled_bmm.
  const at::Tensor y32 = a.is_cuda() ? at::mm(a, w.t(), at::kFloat) : at::mm(a.to(at::kFloat), w.to(at::kFloat).t());
  return scale_and_round(y32.view({M, 1, N}), alpha, out, at::Tensor()).view({M, N});
}

}  // namespace fp4qat::gemm
