// qat/gated_pairs.cpp — see gated_pairs.h.
#include "qat/gated_pairs.h"

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

}  // namespace fp4qat::qat
