// qat/recipe.cpp — see recipe.h.
#include "qat/recipe.h"

#include "kernels/common/check.h"
#include "kernels/common/formats.h"

namespace fp4qat::qat {

Format parse_format(const std::string& s) {
  if (s == "nvfp4") return Format::kNVFP4;
  if (s == "mxfp8") return Format::kMXFP8;
  if (s == "bf16") return Format::kBF16;
  FP4QAT_FAIL("unknown format '", s, "' (expected nvfp4, mxfp8 or bf16)");
}

const char* to_string(Format f) {
  switch (f) {
    case Format::kNVFP4:
      return "nvfp4";
    case Format::kMXFP8:
      return "mxfp8";
    default:
      return "bf16";
  }
}

int64_t block_size(Format f) {
  switch (f) {
    case Format::kNVFP4:
      return fmt::kNvfp4Block;
    case Format::kMXFP8:
      return fmt::kMxfp8Block;
    default:
      return 1;
  }
}

}  // namespace fp4qat::qat
