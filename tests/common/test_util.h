// tests/common/test_util.h — helpers shared by the test suites: where shared/ is, scratch
// folders, running the fp4qat binary without a shell, reading a vector file.
#pragma once
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace fp4qat::test {

std::string shared_dir();   // $FP4QAT_SHARED or the configured ../shared
std::string vectors_dir();  // shared_dir()/vectors
std::vector<std::string> vector_files();  // every *.safetensors there, sorted

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
// Runs the built fp4qat binary with `args` (posix_spawn, no shell), capturing output.
ProcResult run_fp4qat(const std::vector<std::string>& args);

// Module names (without ".weight") of layer `layer`'s E routed experts in stacked order:
// gate_proj, up_proj of each expert when `gated`, else down_proj.
std::vector<std::string> expert_modules(int64_t layer, int64_t E, bool gated);

void write_bytes(const std::string& path, const std::string& bytes);
std::string read_bytes(const std::string& path);

// Byte-for-byte equality of two tensors (dtype, shape and raw bytes); a readable diff on failure.
::testing::AssertionResult bytes_equal(const at::Tensor& got, const at::Tensor& want);

bool cuda_available();
#define FP4QAT_REQUIRE_GPU() \
  do { if (!::fp4qat::test::cuda_available()) GTEST_SKIP() << "no CUDA device"; } while (0)

}  // namespace fp4qat::test
