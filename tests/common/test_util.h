// tests/common/test_util.h — helpers shared by the test suites: where the test vectors are, scratch
// folders, running the fp4qat binary without a shell, reading a vector file.
#pragma once
#include <functional>
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "kernels/common/check.h"
#include "trainer/config.h"

namespace fp4qat::test {

// A run of the small MoE the trainer tests share (2 layers, 4 experts of 32, hidden 64, vocab
// 32; 3 steps of 4 x 16 tokens on the CPU, no eval, no checkpoints) writing into `out`.
config::Config small_moe_run(const std::string& out);

// The repository's copy of the quantizer test vectors (tests/data/vectors, from shared/vectors;
// te/ holds TransformerEngine's reference outputs). Tests never read ../shared.
std::string vectors_dir();
std::vector<std::string> vector_files(const std::string& sub = "");  // every *.safetensors there (or in sub/), sorted

// A linear's output and gradients; optionally (ws defined) the operands its gradients are defined
// by: dx = g ws, dw = (xs^T g)^T, g the upstream gradient.
struct LinearGrads {
  at::Tensor y, dx, dw;
  at::Tensor g, xs, ws;
};
// How two results must agree: byte for byte, or within close_bf16 (another fp32 accumulation order,
// e.g. the GPU's batched GEMM against per-expert ones).
enum class Agree { kBytes, kCloseBf16 };
// A grouped linear (y [T, N], x_grad [T, K], w_grad [E, N, K], rows sorted by expert with
// `counts` rows each) equals the same linear run alone on each expert's rows: one(e, first_row,
// rows) gives that (and, where it gives the operands, the gradients equal their definition too);
// an expert with no rows gets a zero weight gradient.
void expect_grouped_equals_per_expert(const at::Tensor& y, const at::Tensor& x_grad, const at::Tensor& w_grad,
                                      const std::vector<int64_t>& counts,
                                      const std::function<LinearGrads(int64_t e, int64_t row, int64_t n)>& one,
                                      Agree agree = Agree::kBytes);

// A fresh empty folder under the system temp dir, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::vector<std::string> list() const;  // names in the folder (no "." / "..")
 private:
  std::string path_;
};

struct ProcResult {
  int exit_code = -1;  // -1: killed by a signal
  std::string out, err;
};
// Starts the built fp4qat binary with `args` (posix_spawn, no shell): stdin from /dev/null,
// stdout and stderr into the given files; the environment is this process's without the launch
// variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), plus `env`. Returns its pid.
pid_t spawn_fp4qat(const std::vector<std::string>& args, const std::vector<std::pair<std::string, std::string>>& env,
                   const std::string& out_path, const std::string& err_path);
// Runs the built fp4qat binary with `args` (spawn_fp4qat) to the end, capturing output.
ProcResult run_fp4qat(const std::vector<std::string>& args);

// Module names (without ".weight") of layer `layer`'s E routed experts in stacked order:
// gate_proj, up_proj of each expert when `gated`, else down_proj.
std::vector<std::string> expert_modules(int64_t layer, int64_t E, bool gated);

// The message of the fp4qat::Error that `f` throws ("" if it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const ::fp4qat::Error& e) {
    return e.what();
  }
  return "";
}

void write_bytes(const std::string& path, const std::string& bytes);
std::string read_bytes(const std::string& path);

// Byte-for-byte equality of two tensors (dtype, shape and raw bytes); a readable diff on failure.
::testing::AssertionResult bytes_equal(const at::Tensor& got, const at::Tensor& want);
// |a - b| <= 2^-7 |b| + 1e-3 max|b| elementwise, a and b of one shape and type (any device): one bf16
// ulp, or cancellation noise near zero — the effect of another fp32 accumulation order.
::testing::AssertionResult close_bf16(const at::Tensor& a, const at::Tensor& b);
// at::randn(shape) from a CPU generator seeded `seed` (the same values on every machine), as bf16 on
// the GPU.
at::Tensor randn_cuda(std::vector<int64_t> shape, uint64_t seed);

bool cuda_available();
#define FP4QAT_REQUIRE_GPU()                                                 \
  do {                                                                       \
    if (!::fp4qat::test::cuda_available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

}  // namespace fp4qat::test
