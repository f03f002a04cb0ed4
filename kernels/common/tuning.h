// kernels/common/tuning.h — the kernels' tuning knobs: one typed struct per family, read once
// (thread-safe, at first use) from the environment, then passed down by the dispatch. No launch
// calls getenv. An empty variable counts as unset; any other value outside the listed ones throws
// fp4qat::Error naming the variable. Benchmarks and tests replace the values through
// kernels/bench_hooks.h (set_nvfp4_tuning, set_gemm_tuning); production code only reads them.
#pragma once
#include <cstdint>
#include <string>

namespace fp4qat::tuning {

// NVFP4 quantize (kernels/nvfp4/quantize_dispatch.cu). Every field at its default (0 / kDefault)
// gives the measured defaults (bench/RESULTS.md, H100); the dispatch documents them. Shapes that
// only these knobs select are compiled in bench/dev/ (fp4qat_nvfp4_dev), not in kernels/.
enum class Nvfp4Kernel { kDefault, kFused, kStaged, kStaged2, kPark };
struct Nvfp4Tuning {
  Nvfp4Kernel kernel = Nvfp4Kernel::kDefault;  // FP4QAT_NVFP4_KERNEL: fused | staged | staged2 | park
  int64_t threads = 0;                         // FP4QAT_NVFP4_THREADS: 256 | 512 (fused, staged2) | 384 (Four Over Six); 0: default
  int64_t slot_bytes = 0;   // FP4QAT_NVFP4_SLOT_BYTES: > 0, bytes per slot (staged2, park); 0: default
  int64_t slots = 0;        // FP4QAT_NVFP4_SLOTS: 2 | 3 | 4, shared slots per CTA (staged2); 0: default
  int64_t l2hint = 0;       // FP4QAT_NVFP4_L2HINT: 0 | 1 | 2 (fused, bf16)
  int64_t unroll = 0;       // FP4QAT_NVFP4_UNROLL: 1 | 2 (fused, bf16); 0: default (1)
  int64_t chunk_elems = 0;  // FP4QAT_NVFP4_CHUNK_ELEMS: > 0 (fused); 0: default
  int64_t ctas_per_sm = 0;  // FP4QAT_NVFP4_CTAS_PER_SM: > 0 (fused); 0: occupancy
  int64_t lag_bytes = 0;    // FP4QAT_NVFP4_LAG_BYTES: > 0 (fused); 0: default

  // A copy with the knob of environment variable `name` set from `value` (as the environment
  // would; "" resets it to its default). Throws fp4qat::Error naming the variable on a bad value
  // or an unknown name.
  Nvfp4Tuning with(const std::string& name, const std::string& value) const;
};
// The names of the variables above, in declaration order.
extern const char* const kNvfp4TuningVariables[9];
const char* to_string(Nvfp4Kernel k);  // "" for kDefault

// The NVFP4 knobs in effect: read from the environment at the first call, unless set first.
Nvfp4Tuning nvfp4_tuning();

// The NVFP4 GEMM path (kernels/gemm/scaled_bmm.cpp).
struct GemmTuning {
  bool grouped = true;         // FP4QAT_GROUPED_GEMM: 1 (default) | 0 — the CUTLASS grouped GEMM
  int batched_tile = 0;        // FP4QAT_BATCHED_GEMM: -1 (off) | 0 (default) | 1 — the batched form's tile
  bool fused_epilogue = true;  // no variable (benchmarks and tests only): the fused epilogue kernel
};
GemmTuning gemm_tuning();

// Read the variables now (what the first call of nvfp4_tuning / gemm_tuning does).
Nvfp4Tuning nvfp4_tuning_from_env();
GemmTuning gemm_tuning_from_env();

}  // namespace fp4qat::tuning
