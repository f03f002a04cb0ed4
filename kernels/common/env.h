// kernels/common/env.h — environment variables, read through one typed helper: the launch
// environment (dist/: RANK, WORLD_SIZE, ...) and the benchmark tuning knobs (kernels/) alike.
// A malformed or out-of-range value is an error naming the variable, never a silent default.
#pragma once
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

#include "kernels/common/check.h"

namespace fp4qat::env {

// The variable's value; nullopt when unset or empty.
inline std::optional<std::string> get(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

// `value` of variable `name` as an integer in [lo, hi]; throws naming the variable otherwise.
inline int64_t parse_int(const char* name, const std::string& value, int64_t lo, int64_t hi) {
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(value.c_str(), &end, 10);
  FP4QAT_CHECK(!value.empty() && end && *end == '\0' && errno == 0 && n >= lo && n <= hi, name, "='", value,
               "' is not an integer in [", lo, ", ", hi, "]");
  return static_cast<int64_t>(n);
}

// The variable as an integer in [lo, hi]; nullopt when unset or empty.
inline std::optional<int64_t> get_int(const char* name, int64_t lo, int64_t hi) {
  const auto v = get(name);
  if (!v) return std::nullopt;
  return parse_int(name, *v, lo, hi);
}

}  // namespace fp4qat::env
