// model/linear_policy.h — the hook through which the model runs every linear: the model knows no
// quantized format; a policy decides which linears go through autograd/'s quantized functions
// (qat/policy.h for training, rollout/serving.h for an exported folder).
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "autograd/expert_rows.h"

namespace fp4qat::model {

// How the model's linears run. The default computes y = x W^T in the compute dtype; a QAT
// policy (qat/policy.h) overrides it for the modules it matches. `name` is the weight's name.
class LinearPolicy {
 public:
  virtual ~LinearPolicy() = default;
  // x [*, in], w [out, in] -> [*, out]
  virtual at::Tensor linear(const std::string& name, const at::Tensor& x, const at::Tensor& w);
  // x [T, in] with rows sorted by expert (autograd/expert_rows.h), w [E, out, in] -> [T, out]
  virtual at::Tensor grouped(const std::string& name, const at::Tensor& x, const at::Tensor& w,
                             const autograd::ExpertRows& rows);
};

}  // namespace fp4qat::model
