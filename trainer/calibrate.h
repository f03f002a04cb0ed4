// trainer/calibrate.h — activation calibration for post-training quantization (`fp4qat
// convert`): runs the model's BF16/FP32 forward on calibration batches and records, for every
// Linear (per expert for the routed experts), the largest |activation| entering it. NVFP4
// exports turn it into `input_scale` (qat/export.h). An expert that received no calibration
// token takes the largest value among its layer's experts.
#pragma once
#include <map>
#include <string>

#include "model/qwen3_moe.h"

namespace fp4qat::calib {

struct Options {
  std::string data = "synthetic";  // "synthetic" (the embedded corpus) or a token file path
  int64_t batches = 8, batch_size = 8, seq_len = 64;
  uint64_t seed = 1234;
  at::Device device = at::Device(at::kCPU);
};

// Module name (Hugging Face, without ".weight") -> activation amax.
std::map<std::string, float> input_amax(model::Qwen3Moe& model, const Options& opt);

}  // namespace fp4qat::calib
