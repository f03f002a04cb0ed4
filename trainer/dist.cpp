// trainer/dist.cpp — see dist.h.
#include "trainer/dist.h"

#include <cstdlib>
#include <string>

#include "kernels/common/check.h"

namespace fp4qat::dist {

std::unique_ptr<ProcessGroup> from_environment() {
  const char* ws = std::getenv("WORLD_SIZE");
  if (ws && *ws) {
    char* end = nullptr;
    const long n = std::strtol(ws, &end, 10);
    FP4QAT_CHECK(end && *end == '\0' && n >= 1, "WORLD_SIZE='", ws, "' is not a positive integer");
    FP4QAT_CHECK(n == 1, "WORLD_SIZE=", n, ": multi-process training needs the c10d process group, not built yet");
  }
  return std::make_unique<SingleProcess>();
}

}  // namespace fp4qat::dist
