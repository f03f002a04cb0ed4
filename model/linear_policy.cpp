// model/linear_policy.cpp — see linear_policy.h.
#include "model/linear_policy.h"

#include "autograd/compute_cast.h"
#include "autograd/grouped_bf16.h"

namespace fp4qat::model {

at::Tensor LinearPolicy::linear(const std::string&, const at::Tensor& x, const at::Tensor& w) {
  return at::linear(x, autograd::compute_cast(w, x.scalar_type()));
}

at::Tensor LinearPolicy::grouped(const std::string& name, const at::Tensor& x, const at::Tensor& w,
                                 const autograd::ExpertRows& rows) {
  return autograd::grouped_linear(name, x, w, rows);
}

}  // namespace fp4qat::model
