// qat/gated_pairs.cpp — see gated_pairs.h.
#include "qat/gated_pairs.h"

#include "autograd/compute_cast.h"

#include "kernels/common/check.h"
#include "kernels/quantize.h"
#include "qat/patterns.h"

namespace fp4qat::qat {

namespace {
struct Rule {
  const char* first;
  const char* second;
};
constexpr Rule kRules[] = {{".gate_proj.weight", ".up_proj.weight"}, {".w1.weight", ".w3.weight"}};

}  // namespace

std::optional<GatedPartner> gated_partner(const std::string& name) {
  for (const auto& r : kRules) {
    const std::string a = r.first, b = r.second;
    if (ends_with(name, a)) return GatedPartner{name.substr(0, name.size() - a.size()) + b, true};
    if (ends_with(name, b)) return GatedPartner{name.substr(0, name.size() - b.size()) + a, false};
  }
  return std::nullopt;
}

at::Tensor compute_copy(const at::Tensor& master, at::ScalarType dtype) {
  return autograd::compute_cast(autograd::compute_cast(master, at::kBFloat16), dtype);
}

at::Tensor gated_pair_amax(const at::Tensor& first, const at::Tensor& second) {
  return at::maximum(global_amax(first), global_amax(second));
}

at::Tensor PairAmax::of(const std::string& name, const at::Tensor& values,
                        const std::function<at::Tensor(const std::string&)>& partner_values) {
  auto p = gated_partner(name);
  FP4QAT_CHECK(p.has_value(), "'", name, "' is not a member of a gated pair");
  if (auto it = waiting_.find(name); it != waiting_.end()) {
    at::Tensor a = it->second;
    waiting_.erase(it);
    return a;
  }
  at::Tensor a = gated_pair_amax(values, partner_values(p->partner));
  waiting_[p->partner] = a;
  return a;
}

}  // namespace fp4qat::qat
