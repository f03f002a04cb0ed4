// trainer/adamw.h — the optimizer, named as llm.c names gpt2_update: AdamW with decoupled weight
// decay on matrices, in fp32, and its schedule (linear warmup, then cosine decay to
// lr * min_lr_ratio).
#pragma once
#include <functional>
#include <ATen/ATen.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "trainer/config.h"

namespace fp4qat::train {

// The moments of every parameter, in the model's parameter order; undefined for a frozen one.
struct AdamWState {
  std::vector<at::Tensor> m, v;  // exp_avg, exp_avg_sq (fp32, shaped as the parameter)
};

// Zero moments for the parameters that train (`trains(name)`; every one when null). A frozen
// parameter (expert-only fine-tuning freezes all but the quantized modules) gets none: no gradient
// ever reaches it, and its 8 bytes a parameter of moments would only take memory.
AdamWState adamw_init(const std::vector<std::pair<std::string, at::Tensor>>& params,
                      const std::function<bool(const std::string&)>& trains = nullptr);

// One AdamW step of optimizer step t (1-based) on every parameter that has a gradient: the
// gradient times `grad_scale` (global-norm clipping), bias-corrected moments, weight decay
// p *= 1 - lr * weight_decay on matrices (dim >= 2), then p -= lr / bc1 * m / (sqrt(v / bc2) + eps).
// On the CPU as a sequence of tensor operations; on a GPU (float32 contiguous parameters) one fused
// kernel a parameter (kernels/optim/adamw_ref.h), whose float32 rounding may differ from the
// sequence's in the last bit.
void adamw_update(std::vector<std::pair<std::string, at::Tensor>>& params, AdamWState& st, const config::OptimConfig& o,
                  double lr, double grad_scale, int64_t t);

// The clipping factor for a gradient of global norm `grad_norm`: 1, or grad_clip / (norm + 1e-6).
double clip_scale(const config::OptimConfig& o, double grad_norm);

// The learning rate of 0-based step `step` of `total_steps`.
double learning_rate(const config::OptimConfig& o, int64_t step, int64_t total_steps);

}  // namespace fp4qat::train
