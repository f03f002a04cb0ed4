// bench/dev/gpu_nvfp4_variants.cpp — (label gpu, executable fp4qat_dev_gpu_tests) the benchmark-only
// NVFP4 quantize variants of bench/dev/nvfp4_variants.cu give the CPU reference's bytes, and each
// really ran: the rows of tests/kernels/gpu_quantize.cpp's NVFP4KernelVariantsMatchReference whose
// shapes kernels/ no longer compiles. Also: without the registration, such a knob is refused with
// an error naming it.
#include <gtest/gtest.h>

#include "bench/dev/nvfp4_variants.h"
#include "kernels/bench_hooks.h"
#include "kernels/common/check.h"
#include "tests/common/test_util.h"
#include "tests/kernels/gpu_quantize_util.h"

using namespace fp4qat::test::gpu_quantize;

TEST(GpuQuantizeDev, NVFP4BenchVariantsMatchReference) {
  FP4QAT_REQUIRE_GPU();
  fp4qat::dev::register_nvfp4_variants();
  check_nvfp4_variants({{"staged", "256", "0", "1"},
                        {"fused", "512", "0", "1"},
                        {"fused", "256", "0", "2"},
                        {"fused", "256", "1", "1"},
                        {"fused", "256", "1", "2"},
                        {"fused", "256", "2", "1"},
                        {"fused", "256", "2", "2"},
                        {"staged2", "256", "0", "1", "16384", "3"},
                        {"staged2", "512", "0", "1", "16384", "4"},
                        {"staged2", "256", "0", "1", "4096", "4"}});
}

// CPU only, but in this executable: a bad value names its variable.
TEST(GpuQuantizeDev, TuningRejectsBadValuesNamingTheVariable) {
  const fp4qat::tuning::Nvfp4Tuning t;
  for (const char* name : fp4qat::tuning::kNvfp4TuningVariables) {
    try {
      (void)t.with(name, "x7");
      ADD_FAILURE() << name << " accepted x7";
    } catch (const fp4qat::Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW((void)t.with("FP4QAT_NVFP4_THREADS", "128"), fp4qat::Error);
  EXPECT_THROW((void)t.with("FP4QAT_NVFP4_SLOTS", "5"), fp4qat::Error);
  EXPECT_EQ(t.with("FP4QAT_NVFP4_THREADS", "512").threads, 512);
  EXPECT_EQ(t.with("FP4QAT_NVFP4_THREADS", "512").with("FP4QAT_NVFP4_THREADS", "").threads, 0);
}
