// tests/kernels/test_4over6_ref.cpp — kernels/nvfp4/quantize_4over6_ref.h against the outputs of
// TransformerEngine's own reference quantizer (tests/data/vectors/te: Four Over Six with M 448
// and 256, MAE and MSE, 1x16 and 16x16; row-scaled global scales with and without 4over6), byte
// for byte; the standard-rule outputs of the same files against kernels/quantize.h; and the rules
// the vectors are thin on: a tie between the 4 and 6 candidates keeps 6, all-zero rows.
#include <gtest/gtest.h>

#include <dirent.h>

#include <algorithm>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "kernels/common/formats.h"
#include "kernels/nvfp4/quantize_4over6_ref.h"
#include "kernels/quantize.h"
#include "tests/common/test_util.h"

using fp4qat::test::bytes_equal;

namespace {

std::vector<std::string> te_files() {
  const std::string dir = fp4qat::test::vectors_dir() + "/te";
  std::vector<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n.size() > 12 && n.substr(n.size() - 12) == ".safetensors") out.push_back(dir + "/" + n);
    }
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

at::Tensor bytes_of(const std::vector<uint8_t>& v, std::vector<int64_t> shape) {
  return at::from_blob(const_cast<uint8_t*>(v.data()), shape, at::kByte).clone();
}

}  // namespace

TEST(TeVectors, FourOverSixAndRowScaledMatchTransformerEngine) {
  const auto files = te_files();
  ASSERT_GE(files.size(), 9u) << "expected TransformerEngine's vectors in " << fp4qat::test::vectors_dir() << "/te";
  int variants = 0, standard = 0;
  for (const auto& path : files) {
    fp4qat::st::Reader r(path);
    SCOPED_TRACE(path);
    const at::Tensor x = r.view("input").to(at::kFloat).contiguous();
    const int64_t M = x.size(0), K = x.size(1);
    const float* xp = x.data_ptr<float>();
    const float amax = fp4qat::global_amax(x).item<float>();
    std::vector<std::string> names;
    for (const auto& t : r.tensors())
      if (t.name != "input" && t.name.size() > 7 && t.name.compare(t.name.size() - 7, 7, ".weight") == 0)
        names.push_back(t.name.substr(0, t.name.size() - 7));
    for (const auto& v : names) {
      SCOPED_TRACE(v);
      const at::Tensor ec = r.view(v + ".weight"), es = r.view(v + ".weight_scale"), e2 = r.view(v + ".weight_scale_2");
      if (v == "nvfp4_1d" || v == "nvfp4_2d") {  // the standard rule: kernels/quantize.h
        const auto q = fp4qat::nvfp4_quantize(x, v == "nvfp4_1d" ? fp4qat::Blocks::k1D : fp4qat::Blocks::k2D);
        EXPECT_TRUE(bytes_equal(q.codes, ec));
        EXPECT_TRUE(bytes_equal(q.scales, es));
        EXPECT_TRUE(bytes_equal(q.s_dec, e2));
        ++standard;
        continue;
      }
      const bool rows = v.find("rows") != std::string::npos, four = v.find("4over6") != std::string::npos;
      ASSERT_TRUE(rows || four) << "unknown variant";
      fp4qat::ref::FourOverSix o;
      o.e4m3_max = v.find("_448_") != std::string::npos ? 448.0f : 256.0f;
      o.mse = v.find("_mse") != std::string::npos;
      std::vector<uint8_t> codes(M * K / 2), scales(M * K / 16);
      std::vector<float> s_dec(rows ? M : 1);
      if (rows)
        fp4qat::ref::nvfp4_quantize_rows(xp, M, K, four ? &o : nullptr, codes.data(), scales.data(), s_dec.data());
      else
        fp4qat::ref::nvfp4_quantize_4over6(xp, M, K, amax, v.find("_2d") != std::string::npos, o, codes.data(),
                                           scales.data(), s_dec.data());
      EXPECT_TRUE(bytes_equal(bytes_of(codes, {M, K / 2}), ec));
      EXPECT_TRUE(bytes_equal(bytes_of(scales, {M, K / 16}), es.view(at::kByte)));
      const at::Tensor s2 = at::from_blob(s_dec.data(), {static_cast<int64_t>(s_dec.size())}, at::kFloat).clone();
      EXPECT_TRUE(bytes_equal(rows ? s2 : s2.reshape({}), e2));
      ++variants;
    }
  }
  EXPECT_GE(variants, 100);  // 9 files x (8 4over6 + 5 row-scaled), 117 today
  EXPECT_GE(standard, 18);
}

TEST(FourOverSix, TieKeepsSixAndTheBetterCandidateWins) {
  // One non-zero element equal to the amax: with M = 256 both candidates reconstruct it exactly
  // (6 * 256 and 4 * 384 both give 1536), errors tie at 0 and the block keeps the max-6 scale.
  std::vector<float> x(16, 0.0f);
  x[3] = 1.0f;
  uint8_t codes[8], scale;
  float s_dec;
  for (bool mse : {false, true}) {
    fp4qat::ref::FourOverSix o{256.0f, mse};
    fp4qat::ref::nvfp4_quantize_4over6(x.data(), 1, 16, 1.0f, false, o, codes, &scale, &s_dec);
    EXPECT_EQ(scale, fp4qat::fmt::float_to_e4m3(256.0f)) << "a tie must keep 6";
    EXPECT_EQ(codes[1] >> 4, 7);  // x[3]: 6 (code 7) in the high nibble of byte 1
  }
  // A block whose values sit on the 4-grid: [4, 3, 2, 1.5, 1, ...] * s reconstruct exactly with
  // the max-4 scale (M = 256: sb4 = 384, enc 1) but not with max-6 (sb6 = 256, enc 1.5): 4 wins.
  std::vector<float> y = {4, 3, 2, 1.5f, 1, 0.5f, 0, 4, 3, 2, 1.5f, 1, 0.5f, 0, 4, 3};
  fp4qat::ref::FourOverSix o{256.0f, false};
  fp4qat::ref::nvfp4_quantize_4over6(y.data(), 1, 16, 4.0f, false, o, codes, &scale, &s_dec);
  uint8_t sb6, sb4;
  fp4qat::fmt::nvfp4_4over6_scales(4.0f, fp4qat::fmt::nvfp4_4over6_s_enc(4.0f, 256.0f), &sb6, &sb4);
  EXPECT_NE(sb6, sb4);
  EXPECT_EQ(scale, sb4);
}

TEST(RowScaled, AllZeroRowsGetScaleOneAndZeroCodes) {
  std::vector<float> x(3 * 32, 0.0f);
  for (int k = 0; k < 32; ++k) x[64 + k] = 0.25f * (k - 16);  // row 2 non-zero, rows 0 and 1 zero
  std::vector<uint8_t> codes(3 * 16, 0xAB), scales(3 * 2, 0xAB);
  std::vector<float> s_dec(3, -1.0f);
  for (bool four : {false, true}) {
    fp4qat::ref::FourOverSix o;
    fp4qat::ref::nvfp4_quantize_rows(x.data(), 3, 32, four ? &o : nullptr, codes.data(), scales.data(), s_dec.data());
    for (int r = 0; r < 2; ++r) {
      EXPECT_EQ(s_dec[r], 1.0f);
      for (int i = 0; i < 16; ++i) EXPECT_EQ(codes[r * 16 + i], 0);
      for (int i = 0; i < 2; ++i) EXPECT_EQ(scales[r * 2 + i], 0);
    }
    EXPECT_NE(s_dec[2], 1.0f);  // a row's own amax: each row is quantized as its own tensor
  }
}
