// tests/kernels/test_vectors.cpp — every file of tests/data/vectors (a copy of shared/vectors: an independent
// implementation of numerics.md) reproduced byte for byte by the CPU path of kernels/quantize.h.
#include <gtest/gtest.h>

#include "kernels/quantize.h"
#include "io/safetensors.h"
#include "tests/common/test_util.h"

using fp4qat::test::bytes_equal;

namespace {

void expect_nvfp4(const fp4qat::st::Reader& r, const std::string& prefix, const fp4qat::NVFP4Tensor& q) {
  EXPECT_TRUE(bytes_equal(q.codes, r.view(prefix + ".weight"))) << r.path() << " " << prefix << ".weight";
  EXPECT_TRUE(bytes_equal(q.scales, r.view(prefix + ".weight_scale"))) << r.path() << " " << prefix << ".weight_scale";
  EXPECT_TRUE(bytes_equal(q.s_dec, r.view(prefix + ".weight_scale_2")))
      << r.path() << " " << prefix << ".weight_scale_2";
}

}  // namespace

TEST(Vectors, DirectoryIsThere) {
  // The vector tests must not pass vacuously: the folder and its cases are required.
  const auto files = fp4qat::test::vector_files();
  ASSERT_GE(files.size(), 16u) << "expected the test vectors in " << fp4qat::test::vectors_dir();
}

TEST(Vectors, SingleTensorCasesMatchBytes) {
  int cases = 0, mx_cases = 0;
  for (const auto& path : fp4qat::test::vector_files()) {
    fp4qat::st::Reader r(path);
    if (!r.contains("input")) continue;
    SCOPED_TRACE(path);
    ++cases;
    const at::Tensor x = r.view("input");
    expect_nvfp4(r, "nvfp4_1d", fp4qat::nvfp4_quantize(x, fp4qat::Blocks::k1D));
    expect_nvfp4(r, "nvfp4_2d", fp4qat::nvfp4_quantize(x, fp4qat::Blocks::k2D));
    if (r.contains("mxfp8.weight")) {
      ++mx_cases;
      const auto q = fp4qat::mxfp8_quantize(x);
      EXPECT_TRUE(bytes_equal(q.data, r.view("mxfp8.weight")));
      EXPECT_TRUE(bytes_equal(q.scales, r.view("mxfp8.weight_scale_inv")));
    }
  }
  EXPECT_GE(cases, 14);
  EXPECT_GE(mx_cases, 13);
}

TEST(Vectors, GatedPairsShareAmax) {
  int cases = 0;
  for (const auto& path : fp4qat::test::vector_files()) {
    fp4qat::st::Reader r(path);
    if (!r.contains("gate")) continue;
    SCOPED_TRACE(path);
    ++cases;
    const at::Tensor g = r.view("gate"), u = r.view("up");
    const at::Tensor a = at::maximum(fp4qat::global_amax(g), fp4qat::global_amax(u));
    for (auto [blocks, tag] :
         {std::pair{fp4qat::Blocks::k1D, "nvfp4_1d"}, std::pair{fp4qat::Blocks::k2D, "nvfp4_2d"}}) {
      const auto qg = fp4qat::nvfp4_quantize(g, blocks, a);
      const auto qu = fp4qat::nvfp4_quantize(u, blocks, a);
      expect_nvfp4(r, std::string("gate.") + tag, qg);
      expect_nvfp4(r, std::string("up.") + tag, qu);
      EXPECT_TRUE(bytes_equal(qg.s_dec, qu.s_dec));
    }
  }
  EXPECT_GE(cases, 2);
}
