// kernels/gemm/grouped_gemm.cpp — see grouped_gemm.h. cuBLAS is column-major: a row-major
// [R, C] buffer is a column-major [C, R] matrix with leading dimension C, so each row-major
// product is issued as its transpose.
#include "kernels/gemm/grouped_gemm.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublas_v2.h>

#include "kernels/common/check.h"

namespace fp4qat::gemm {

namespace {

struct Problem {
  cublasOperation_t ta, tb;
  int m, n, k, lda, ldb, ldc;
  const void* a;
  const void* b;
  void* c;
};

// Returns false when cuBLAS does not support the type combination (CUBLAS_STATUS_NOT_SUPPORTED).
bool run(const std::vector<Problem>& ps, cudaDataType_t abtype, cudaDataType_t ctype, cublasComputeType_t compute,
         const at::Device& dev) {
  if (ps.empty()) return true;
  const int G = static_cast<int>(ps.size());
  std::vector<cublasOperation_t> ta(G), tb(G);
  std::vector<int> m(G), n(G), k(G), lda(G), ldb(G), ldc(G), size(G, 1);
  std::vector<float> alpha(G, 1.0f), beta(G, 0.0f);
  at::Tensor ptrs = at::empty({3 * G}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  auto* p = reinterpret_cast<const void**>(ptrs.data_ptr());
  for (int g = 0; g < G; ++g) {
    const Problem& q = ps[g];
    ta[g] = q.ta;
    tb[g] = q.tb;
    m[g] = q.m;
    n[g] = q.n;
    k[g] = q.k;
    lda[g] = q.lda;
    ldb[g] = q.ldb;
    ldc[g] = q.ldc;
    p[g] = q.a;
    p[G + g] = q.b;
    p[2 * G + g] = q.c;
  }
  // Pointer arrays live in device memory; the pinned host copy is asynchronous (the caching host
  // allocator keeps the buffer alive until the copy has run).
  const at::Tensor dptrs = ptrs.to(dev, /*non_blocking=*/true);
  auto* d = reinterpret_cast<void**>(dptrs.data_ptr());
  cublasHandle_t h = at::cuda::getCurrentCUDABlasHandle();
  cublasPointerMode_t mode;
  FP4QAT_CHECK(cublasGetPointerMode(h, &mode) == CUBLAS_STATUS_SUCCESS, "cublasGetPointerMode failed");
  FP4QAT_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST) == CUBLAS_STATUS_SUCCESS, "cublasSetPointerMode failed");
  const cublasStatus_t st = cublasGemmGroupedBatchedEx(
      h, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(), const_cast<const void* const*>(d),
      abtype, lda.data(), const_cast<const void* const*>(d + G), abtype, ldb.data(), beta.data(), d + 2 * G,
      ctype, ldc.data(), G, size.data(), compute);
  cublasSetPointerMode(h, mode);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) return false;
  FP4QAT_CHECK(st == CUBLAS_STATUS_SUCCESS, "cublasGemmGroupedBatchedEx failed with status ", static_cast<int>(st));
  return true;
}

const char* const kNotSupported = "grouped GEMM: cublasGemmGroupedBatchedEx does not support this type combination";

void check_bf16_cuda(const at::Tensor& t, const char* name) {
  FP4QAT_CHECK(t.is_cuda() && t.scalar_type() == at::kBFloat16 && t.is_contiguous(), "grouped GEMM: ", name,
               " must be a contiguous bf16 CUDA tensor, got ", t.scalar_type(), " on ", t.device());
}

}  // namespace

at::Tensor grouped_nt_f32(const at::Tensor& x, const at::Tensor& w, const std::vector<int64_t>& off) {
  check_bf16_cuda(x, "x");
  check_bf16_cuda(w, "w");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t E = w.size(0), N = w.size(1), K = w.size(2), T = x.size(0);
  at::Tensor y = at::empty({T, N}, x.options().dtype(at::kFloat));
  std::vector<Problem> ps;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = off[e + 1] - off[e];
    if (rows == 0) continue;
    // y_e^T [N, rows] = W_e [N, K] (col-major [K, N], transposed) * x_e^T [K, rows]
    ps.push_back({CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(rows), int(K), int(K), int(K), int(N),
                  static_cast<const char*>(w.data_ptr()) + e * N * K * 2,
                  static_cast<const char*>(x.data_ptr()) + off[e] * K * 2,
                  static_cast<char*>(y.data_ptr()) + off[e] * N * 4});
  }
  if (run(ps, CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F, x.device())) return y;
  // bf16 x bf16 -> fp32 is not offered by the grouped API: use fp32 operands holding the same
  // (bf16-exact) values with bf16 tensor-core math — down-converting them to bf16 is exact.
  const at::Tensor xf = x.to(at::kFloat), wf = w.to(at::kFloat);
  for (size_t i = 0; i < ps.size(); ++i) {
    const int64_t e = (static_cast<const char*>(ps[i].a) - static_cast<const char*>(w.data_ptr())) / (N * K * 2);
    const int64_t r0 = (static_cast<const char*>(ps[i].b) - static_cast<const char*>(x.data_ptr())) / (K * 2);
    ps[i].a = static_cast<const char*>(wf.data_ptr()) + e * N * K * 4;
    ps[i].b = static_cast<const char*>(xf.data_ptr()) + r0 * K * 4;
  }
  FP4QAT_CHECK(run(ps, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_16BF, x.device()), kNotSupported);
  return y;
}

at::Tensor grouped_nn(const at::Tensor& dy, const at::Tensor& w, const std::vector<int64_t>& off) {
  check_bf16_cuda(dy, "dy");
  check_bf16_cuda(w, "w");
  const c10::cuda::CUDAGuard guard(dy.device());
  const int64_t E = w.size(0), N = w.size(1), K = w.size(2), T = dy.size(0);
  at::Tensor dx = at::zeros({T, K}, dy.options());
  std::vector<Problem> ps;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = off[e + 1] - off[e];
    if (rows == 0) continue;
    // dx_e^T [K, rows] = W_e^T [K, N] (row-major [N, K] = col-major [K, N]) * dy_e^T [N, rows]
    ps.push_back({CUBLAS_OP_N, CUBLAS_OP_N, int(K), int(rows), int(N), int(K), int(N), int(K),
                  static_cast<const char*>(w.data_ptr()) + e * N * K * 2,
                  static_cast<const char*>(dy.data_ptr()) + off[e] * N * 2,
                  static_cast<char*>(dx.data_ptr()) + off[e] * K * 2});
  }
  FP4QAT_CHECK(run(ps, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F, dy.device()), kNotSupported);
  return dx;
}

at::Tensor grouped_wgrad(const at::Tensor& dy, const at::Tensor& x, const std::vector<int64_t>& off, int64_t E) {
  check_bf16_cuda(dy, "dy");
  check_bf16_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(dy.device());
  const int64_t N = dy.size(1), K = x.size(1);
  at::Tensor dw = at::zeros({E, N, K}, dy.options());
  std::vector<Problem> ps;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = off[e + 1] - off[e];
    if (rows == 0) continue;
    // dW_e^T [K, N] = x_e^T [K, rows] (row-major [rows, K] = col-major [K, rows]) * dy_e [rows, N]
    ps.push_back({CUBLAS_OP_N, CUBLAS_OP_T, int(K), int(N), int(rows), int(K), int(N), int(K),
                  static_cast<const char*>(x.data_ptr()) + off[e] * K * 2,
                  static_cast<const char*>(dy.data_ptr()) + off[e] * N * 2,
                  static_cast<char*>(dw.data_ptr()) + e * N * K * 2});
  }
  FP4QAT_CHECK(run(ps, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F, dy.device()), kNotSupported);
  return dw;
}

}  // namespace fp4qat::gemm
