// tests/kernels/test_nvfp4_ref.cpp — properties of the CPU reference behind kernels/quantize.h:
// error bounds, 2D tile replication, packing order, 3-D per-expert semantics, shared amax,
// input dtypes, zero-scale blocks, and argument errors.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "kernels/common/check.h"
#include "kernels/common/formats.h"
#include "kernels/quantize.h"
#include "tests/common/test_util.h"

using fp4qat::Blocks;
using fp4qat::test::bytes_equal;

namespace {
at::Generator gen(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }
at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) { return at::randn(shape, gen(seed)); }
at::Tensor u8(const at::Tensor& t) { return t.view(at::kByte); }
}  // namespace

TEST(NVFP4Ref, DequantizeErrorIsWithinHalfAStep) {
  // Each element's error is at most half the spacing of the E2M1 grid around it, scaled by its
  // block's decode scale (sb * S_dec); elements beyond 6*scale are clamped (cannot happen here).
  for (auto blocks : {Blocks::k1D, Blocks::k2D}) {
    const at::Tensor x = randn({37, 128}, 11) * 3.0;
    const auto q = fp4qat::nvfp4_quantize(x, blocks);
    const at::Tensor dq = fp4qat::nvfp4_dequantize(q);
    const float s_dec = q.s_dec.item<float>();
    const at::Tensor sc = u8(q.scales);
    for (int64_t r = 0; r < x.size(0); ++r)
      for (int64_t k = 0; k < x.size(1); ++k) {
        const float scale = fp4qat::fmt::e4m3_to_float(sc[r][k / 16].item<uint8_t>()) * s_dec;
        const float xv = x[r][k].item<float>(), dv = dq[r][k].item<float>();
        const float a = std::fabs(xv) / scale;
        const float half_step = a < 2 ? 0.25f : (a < 4 ? 0.5f : 1.0f);
        ASSERT_LE(std::fabs(xv - dv), half_step * scale * 1.0001f) << "row " << r << " col " << k;
      }
    // and overall it is a good approximation of a Gaussian tensor
    EXPECT_LT(((dq - x).norm() / x.norm()).item<double>(), 0.2);
  }
}

TEST(NVFP4Ref, PackingOrderLowNibbleFirst) {
  // Row of 16: element 0 = 6 (max -> code 7), element 1 = -6 (code 15), rest 0.
  at::Tensor x = at::zeros({1, 16});
  x[0][0] = 6.0f;
  x[0][1] = -6.0f;
  x[0][3] = 3.0f;  // code 5, element 3 -> high nibble of byte 1
  const auto q = fp4qat::nvfp4_quantize(x, Blocks::k1D);
  EXPECT_EQ(q.codes[0][0].item<uint8_t>(), 0xF7);
  EXPECT_EQ(q.codes[0][1].item<uint8_t>(), 0x50);
  EXPECT_EQ(q.codes.sizes(), (std::vector<int64_t>{1, 8}));
  EXPECT_EQ(q.scales.sizes(), (std::vector<int64_t>{1, 1}));
}

TEST(NVFP4Ref, TwoDScalesAreReplicatedAcrossTileRows) {
  const at::Tensor x = randn({40, 64}, 3);  // 40 rows: the last tile has 8 rows (rest count as 0)
  const auto q = fp4qat::nvfp4_quantize(x, Blocks::k2D);
  const at::Tensor sc = u8(q.scales);
  const float factor = fp4qat::fmt::nvfp4_block_factor(fp4qat::fmt::nvfp4_s_enc(x.abs().max().item<float>()));
  for (int64_t t = 0; t < 3; ++t) {
    const int64_t r0 = t * 16, r1 = std::min<int64_t>(40, r0 + 16);
    for (int64_t b = 0; b < 4; ++b) {
      const float tile_max = x.slice(0, r0, r1).slice(1, b * 16, b * 16 + 16).abs().max().item<float>();
      const uint8_t want = fp4qat::fmt::nvfp4_block_scale(tile_max, factor);
      for (int64_t r = r0; r < r1; ++r) ASSERT_EQ(sc[r][b].item<uint8_t>(), want) << "row " << r << " block " << b;
    }
  }
  // 1D differs from 2D on random data (the mode switch does something).
  EXPECT_FALSE(at::equal(u8(fp4qat::nvfp4_quantize(x, Blocks::k1D).scales), sc));
}

TEST(NVFP4Ref, StackedExpertsEachHaveTheirOwnAmax) {
  at::Tensor w = randn({3, 32, 64}, 5);
  w[1] *= 100.0;  // expert 1 has a much larger range
  for (auto blocks : {Blocks::k1D, Blocks::k2D}) {
    const auto q3 = fp4qat::nvfp4_quantize(w, blocks);
    ASSERT_EQ(q3.s_dec.sizes(), (std::vector<int64_t>{3}));
    for (int64_t e = 0; e < 3; ++e) {
      const auto q2 = fp4qat::nvfp4_quantize(w[e], blocks);
      EXPECT_TRUE(bytes_equal(q3.codes[e], q2.codes)) << "expert " << e;
      EXPECT_TRUE(bytes_equal(q3.scales[e], q2.scales)) << "expert " << e;
      EXPECT_TRUE(bytes_equal(q3.s_dec[e], q2.s_dec)) << "expert " << e;
    }
    EXPECT_NE(q3.s_dec[0].item<float>(), q3.s_dec[1].item<float>());
  }
}

TEST(NVFP4Ref, SharedAmaxForGatedPairs) {
  const at::Tensor gate = randn({2, 16, 32}, 8), up = randn({2, 16, 32}, 9) * 4.0;
  const at::Tensor a = at::maximum(fp4qat::global_amax(gate), fp4qat::global_amax(up));
  const auto qg = fp4qat::nvfp4_quantize(gate, Blocks::k1D, a);
  const auto qu = fp4qat::nvfp4_quantize(up, Blocks::k1D, a);
  EXPECT_TRUE(bytes_equal(qg.s_dec, qu.s_dec));
  // Up holds the larger amax: its own quantization equals the shared one; gate's does not.
  EXPECT_TRUE(bytes_equal(fp4qat::nvfp4_quantize(up, Blocks::k1D).s_dec, qu.s_dec));
  EXPECT_FALSE(at::equal(fp4qat::nvfp4_quantize(gate, Blocks::k1D).s_dec, qg.s_dec));
  // A given amax equal to the computed one gives identical bytes.
  const auto q_own = fp4qat::nvfp4_quantize(gate, Blocks::k2D);
  const auto q_given = fp4qat::nvfp4_quantize(gate, Blocks::k2D, fp4qat::global_amax(gate));
  EXPECT_TRUE(bytes_equal(q_own.codes, q_given.codes));
  EXPECT_TRUE(bytes_equal(q_own.scales, q_given.scales));
}

// A given amax below the tensor's (the flashinfer_static profile's static activation amax):
// numerics.md's clamps apply — a block whose max is past it gets the block scale 448 and codes
// clamped at +-6 — and every byte is the formula's, computed here by hand.
TEST(NVFP4Ref, GivenAmaxBelowTheInputSaturates) {
  namespace fmt = fp4qat::fmt;
  at::Tensor x = at::zeros({2, 32}, at::kFloat);
  x[0][0] = 100.0f;  // far past the given amax
  x[0][1] = -1.0f;
  x[0][2] = 7.0f;
  x[1][16] = 2.5f;  // within it
  const float amax = 10.0f;
  const auto q = fp4qat::nvfp4_quantize(x, Blocks::k1D, at::full({}, amax));
  const float s_enc = fmt::nvfp4_s_enc(amax), s_dec = fmt::nvfp4_s_dec(s_enc);
  EXPECT_EQ(q.s_dec.item<float>(), s_dec);
  const at::Tensor sc = u8(q.scales), codes = q.codes;
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t b = 0; b < 2; ++b) {
      const float bmax = x[r].narrow(0, b * 16, 16).abs().max().item<float>();
      const uint8_t want_sb = fmt::nvfp4_block_scale(bmax, fmt::nvfp4_block_factor(s_enc));
      ASSERT_EQ(sc[r][b].item<uint8_t>(), want_sb) << r << " " << b;
      const float enc = fminf(1.0f / (fmt::e4m3_to_float(want_sb) * s_dec), 3.4028235e38f);
      for (int64_t k = 0; k < 16; ++k) {
        const float v = x[r][b * 16 + k].item<float>() * enc;
        const uint8_t want = fmt::float_to_e2m1(fminf(fmaxf(v, -6.0f), 6.0f));
        const uint8_t byte = codes[r][(b * 16 + k) / 2].item<uint8_t>();
        const uint8_t got = (k % 2 == 0) ? (byte & 0xF) : (byte >> 4);
        if (v == 0.0f) {
          EXPECT_EQ(got & 0x7, 0) << r << " " << k;
        } else {
          EXPECT_EQ(got, want) << r << " " << b * 16 + k;
        }
      }
    }
  EXPECT_EQ(sc[0][0].item<uint8_t>(), 0x7E);  // 448: saturated
  EXPECT_EQ(codes[0][0].item<uint8_t>() & 0xF, 0x7);  // 100 -> +6
  EXPECT_NE(sc[1][1].item<uint8_t>(), 0x7E);          // 2.5 is within the amax
}

TEST(NVFP4Ref, InputDtypesWidenExactly) {
  const at::Tensor xb = randn({16, 64}, 21).to(at::kBFloat16);
  const at::Tensor xh = xb.to(at::kHalf);  // bf16 values with small exponents are exact in fp16
  const auto qf = fp4qat::nvfp4_quantize(xb.to(at::kFloat), Blocks::k1D);
  for (const at::Tensor& x : {xb, xh}) {
    const auto q = fp4qat::nvfp4_quantize(x, Blocks::k1D);
    EXPECT_TRUE(bytes_equal(q.codes, qf.codes));
    EXPECT_TRUE(bytes_equal(q.scales, qf.scales));
    EXPECT_TRUE(bytes_equal(q.s_dec, qf.s_dec));
  }
  const auto mf = fp4qat::mxfp8_quantize(xb.to(at::kFloat));
  const auto mb = fp4qat::mxfp8_quantize(xb);
  EXPECT_TRUE(bytes_equal(mb.data, mf.data));
  EXPECT_TRUE(bytes_equal(mb.scales, mf.scales));
}

TEST(NVFP4Ref, ZeroScaleBlockDecodesToZero) {
  // One huge block and one tiny block in the same tensor: the tiny block's scale underflows to 0,
  // enc becomes FLT_MAX, codes saturate, and everything decodes to 0.
  at::Tensor x = at::zeros({1, 32});
  x[0][0] = 1e30f;
  x[0].slice(0, 16, 32).fill_(1e-30f);
  const auto q = fp4qat::nvfp4_quantize(x, Blocks::k1D);
  EXPECT_EQ(u8(q.scales)[0][1].item<uint8_t>(), 0);
  EXPECT_EQ(q.codes[0][8].item<uint8_t>(), 0x77);  // saturated codes, as the rule produces
  const at::Tensor dq = fp4qat::nvfp4_dequantize(q);
  EXPECT_TRUE(at::equal(dq[0].slice(0, 16, 32), at::zeros({16})));
}

TEST(NVFP4Ref, AllZeroTensor) {
  const auto q = fp4qat::nvfp4_quantize(at::zeros({3, 16}), Blocks::k2D);
  EXPECT_EQ(q.s_dec.item<float>(), 1.0f);
  EXPECT_EQ(u8(q.scales).sum().item<int64_t>(), 0);
  EXPECT_EQ(q.codes.sum().item<int64_t>(), 0);
}

TEST(NVFP4Ref, ArgumentErrors) {
  EXPECT_THROW(fp4qat::nvfp4_quantize(at::zeros({4, 24}), Blocks::k1D), fp4qat::Error);  // K % 16
  EXPECT_THROW(fp4qat::mxfp8_quantize(at::zeros({4, 48})), fp4qat::Error);               // K % 32
  EXPECT_THROW(fp4qat::nvfp4_quantize(at::zeros({16}), Blocks::k1D), fp4qat::Error);     // rank
  EXPECT_THROW(fp4qat::nvfp4_quantize(at::zeros({4, 16}, at::kDouble), Blocks::k1D), fp4qat::Error);
  EXPECT_THROW(fp4qat::nvfp4_quantize(at::zeros({2, 4, 16}), Blocks::k1D, at::ones({})), fp4qat::Error);  // amax shape
  try {
    fp4qat::nvfp4_quantize(at::zeros({4, 24}), Blocks::k1D);
  } catch (const fp4qat::Error& e) {
    EXPECT_NE(std::string(e.what()).find("K = 24"), std::string::npos) << e.what();
  }
}

TEST(MXFP8Ref, DequantizeIsCloseAndBlocksArePowersOfTwo) {
  const at::Tensor x = randn({9, 96}, 31) * 10.0;
  const auto q = fp4qat::mxfp8_quantize(x);
  const at::Tensor dq = fp4qat::mxfp8_dequantize(q);
  EXPECT_LT(((dq - x).norm() / x.norm()).item<double>(), 0.05);
  // Per block: scale = 2^(e8m0-127) >= amax/448, and < 2 * amax/448.
  const at::Tensor sc = q.scales;
  for (int64_t r = 0; r < 9; ++r)
    for (int64_t b = 0; b < 3; ++b) {
      const float amax = x[r].slice(0, b * 32, b * 32 + 32).abs().max().item<float>();
      const float s = fp4qat::fmt::e8m0_to_float(sc[r][b].item<uint8_t>());
      EXPECT_GE(s, amax / 448.0f);
      EXPECT_LT(s, 2.0f * amax / 448.0f);
    }
}

// The MXFP8 subnormal-scale rule (numerics.md): blocks whose amax / 448 is a subnormal <= 2^-127
// get e8m0 0 and q = e4m3_rne(x / 2^-127), not the zero codes of an underflowed scale; a block just
// above gets code 1. Expected codes from float_to_e4m3_soft on x * 2^127 (exact in float32).
TEST(MXFP8Ref, SubnormalScalesKeepCodeZeroAndQuantizeAgainstTwoToMinus127) {
  std::vector<float> v(3 * 32);
  for (int j = 0; j < 32; ++j) {
    v[j] = (j % 2 ? -1.0f : 1.0f) * static_cast<float>(j + 1) * std::ldexp(1.0f, -140);       // s << 2^-127
    v[32 + j] = (j == 5 ? 448.0f : 0.001f * static_cast<float>(j)) * std::ldexp(1.0f, -127);  // s == 2^-127
    v[64 + j] = (j == 9 ? 448.0f * std::ldexp(1.0f, -127) * 1.0001f : 0.0f);                  // s > 2^-127
  }
  const at::Tensor x = at::from_blob(v.data(), {3, 32}, at::kFloat).clone();
  const auto q = fp4qat::mxfp8_quantize(x);
  ASSERT_EQ(q.scales.flatten()[0].item<uint8_t>(), 0);
  ASSERT_EQ(q.scales.flatten()[1].item<uint8_t>(), 0);
  ASSERT_EQ(q.scales.flatten()[2].item<uint8_t>(), 1);
  const at::Tensor d = q.data.view(at::kByte).flatten();
  int nonzero = 0;
  for (int j = 0; j < 64; ++j) {
    const uint8_t want = fp4qat::fmt::float_to_e4m3_soft(v[j] * std::ldexp(1.0f, 127));
    EXPECT_EQ(d[j].item<uint8_t>(), want) << "element " << j;
    nonzero += (want & 0x7f) != 0;
  }
  EXPECT_GT(nonzero, 40);  // the old rule (scale 2^-126 or zero codes) would lose these
  const at::Tensor dq = fp4qat::mxfp8_dequantize(q);
  EXPECT_EQ(dq[1][5].item<float>(), 448.0f * std::ldexp(1.0f, -127));
}

// nvfp4_quantize_rows (CPU): each group's rows quantized alone, in place; an empty group gets
// S_dec 1; groups with different magnitudes get different S_dec (so a shared amax would fail);
// bad row offsets are refused, naming the function.
TEST(NVFP4Ref, RowGroupsAreQuantizedEachAlone) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(31);
  const at::Tensor x = at::cat({at::randn({5, 32}, gen), at::randn({3, 32}, gen) * 100}, 0).to(at::kBFloat16);
  const std::vector<int64_t> off = {0, 5, 5, 8};
  const fp4qat::NVFP4Operand q = fp4qat::nvfp4_quantize_rows(x, off, /*packed=*/true);
  ASSERT_EQ(q.values.sizes(), x.sizes());
  ASSERT_EQ(q.packed.s_dec.numel(), 3);
  EXPECT_EQ(q.packed.s_dec[1].item<float>(), 1.0f);
  EXPECT_NE(q.packed.s_dec[0].item<float>(), q.packed.s_dec[2].item<float>());
  for (int64_t g : {0, 2}) {
    const at::Tensor slice = x.narrow(0, off[g], off[g + 1] - off[g]);
    const fp4qat::NVFP4Operand e = fp4qat::nvfp4_quantize_and_fake(slice, Blocks::k1D);
    EXPECT_TRUE(bytes_equal(q.values.narrow(0, off[g], off[g + 1] - off[g]), e.values)) << g;
    EXPECT_TRUE(bytes_equal(q.packed.codes.narrow(0, off[g], off[g + 1] - off[g]), e.packed.codes)) << g;
    EXPECT_TRUE(bytes_equal(q.packed.s_dec[g], e.packed.s_dec)) << g;
  }
  EXPECT_THROW(fp4qat::nvfp4_quantize_rows(x, {0, 9}), fp4qat::Error);
  EXPECT_THROW(fp4qat::nvfp4_quantize_rows(x, {0, 6, 5, 8}), fp4qat::Error);
}
