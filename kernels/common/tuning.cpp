// kernels/common/tuning.cpp — see tuning.h.
#include "kernels/common/tuning.h"

#include <climits>
#include <mutex>
#include <optional>

#include "kernels/bench_hooks.h"
#include "kernels/common/check.h"
#include "kernels/common/env.h"

namespace fp4qat::tuning {

namespace {

// A decimal integer, the whole string, else an error naming the variable (kernels/common/env.h).
int64_t parse_int(const std::string& name, const std::string& value, const char*) {
  return env::parse_int(name.c_str(), value, INT64_MIN, INT64_MAX);
}
int64_t one_of(const std::string& name, const std::string& value, std::initializer_list<int64_t> ok,
               const char* allowed) {
  const int64_t v = parse_int(name, value, allowed);
  for (int64_t o : ok)
    if (v == o) return v;
  FP4QAT_FAIL(name, " must be ", allowed, ", got \"", value, "\"");
}
int64_t positive(const std::string& name, const std::string& value) {
  const int64_t v = parse_int(name, value, "a positive integer");
  FP4QAT_CHECK(v > 0, name, " must be a positive integer, got \"", value, "\"");
  return v;
}

std::mutex g_mu;
std::optional<Nvfp4Tuning> g_nvfp4;  // guarded by g_mu; empty until read or set
std::optional<GemmTuning> g_gemm;

}  // namespace

const char* const kNvfp4TuningVariables[9] = {
    "FP4QAT_NVFP4_KERNEL",      "FP4QAT_NVFP4_THREADS",     "FP4QAT_NVFP4_SLOT_BYTES",
    "FP4QAT_NVFP4_SLOTS",       "FP4QAT_NVFP4_L2HINT",      "FP4QAT_NVFP4_UNROLL",
    "FP4QAT_NVFP4_CHUNK_ELEMS", "FP4QAT_NVFP4_CTAS_PER_SM", "FP4QAT_NVFP4_LAG_BYTES"};

const char* to_string(Nvfp4Kernel k) {
  switch (k) {
    case Nvfp4Kernel::kFused:
      return "fused";
    case Nvfp4Kernel::kStaged:
      return "staged";
    case Nvfp4Kernel::kStaged2:
      return "staged2";
    case Nvfp4Kernel::kPark:
      return "park";
    case Nvfp4Kernel::kDefault:
      break;
  }
  return "";
}

Nvfp4Tuning Nvfp4Tuning::with(const std::string& name, const std::string& value) const {
  Nvfp4Tuning t = *this;
  const bool unset = value.empty();
  if (name == "FP4QAT_NVFP4_KERNEL") {
    if (unset)
      t.kernel = Nvfp4Kernel::kDefault;
    else if (value == "fused")
      t.kernel = Nvfp4Kernel::kFused;
    else if (value == "staged")
      t.kernel = Nvfp4Kernel::kStaged;
    else if (value == "staged2")
      t.kernel = Nvfp4Kernel::kStaged2;
    else if (value == "park")
      t.kernel = Nvfp4Kernel::kPark;
    else
      FP4QAT_FAIL(name, " must be fused, staged, staged2 or park, got \"", value, "\"");
  } else if (name == "FP4QAT_NVFP4_THREADS") {
    t.threads = unset ? 0 : one_of(name, value, {256, 384, 512}, "256, 384 or 512");
  } else if (name == "FP4QAT_NVFP4_SLOT_BYTES") {
    t.slot_bytes = unset ? 0 : positive(name, value);
  } else if (name == "FP4QAT_NVFP4_SLOTS") {
    t.slots = unset ? 0 : one_of(name, value, {2, 3, 4}, "2, 3 or 4");
  } else if (name == "FP4QAT_NVFP4_L2HINT") {
    t.l2hint = unset ? 0 : one_of(name, value, {0, 1, 2}, "0, 1 or 2");
  } else if (name == "FP4QAT_NVFP4_UNROLL") {
    t.unroll = unset ? 0 : one_of(name, value, {1, 2}, "1 or 2");
  } else if (name == "FP4QAT_NVFP4_CHUNK_ELEMS") {
    t.chunk_elems = unset ? 0 : positive(name, value);
  } else if (name == "FP4QAT_NVFP4_CTAS_PER_SM") {
    t.ctas_per_sm = unset ? 0 : positive(name, value);
  } else if (name == "FP4QAT_NVFP4_LAG_BYTES") {
    t.lag_bytes = unset ? 0 : positive(name, value);
  } else {
    FP4QAT_FAIL("unknown NVFP4 tuning variable \"", name, "\"");
  }
  return t;
}

Nvfp4Tuning nvfp4_tuning_from_env() {
  Nvfp4Tuning t;
  for (const char* name : kNvfp4TuningVariables)
    if (const auto v = env::get(name)) t = t.with(name, *v);
  return t;
}

GemmTuning gemm_tuning_from_env() {
  GemmTuning t;
  if (const auto v = env::get("FP4QAT_GROUPED_GEMM"))
    t.grouped = one_of("FP4QAT_GROUPED_GEMM", *v, {0, 1}, "0 (off) or 1") == 1;
  if (const auto v = env::get("FP4QAT_BATCHED_GEMM"))
    t.batched_tile = static_cast<int>(one_of("FP4QAT_BATCHED_GEMM", *v, {-1, 0, 1}, "-1 (off), 0 or 1"));
  return t;
}

Nvfp4Tuning nvfp4_tuning() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_nvfp4) g_nvfp4 = nvfp4_tuning_from_env();
  return *g_nvfp4;
}

GemmTuning gemm_tuning() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_gemm) g_gemm = gemm_tuning_from_env();
  return *g_gemm;
}

void set_nvfp4_tuning(const Nvfp4Tuning& t) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_nvfp4 = t;
}

void set_gemm_tuning(const GemmTuning& t) {
  FP4QAT_CHECK(t.batched_tile >= -1 && t.batched_tile <= 1, "GemmTuning::batched_tile must be -1 (off), 0 or 1, got ",
               t.batched_tile);
  std::lock_guard<std::mutex> lock(g_mu);
  g_gemm = t;
}

}  // namespace fp4qat::tuning
