// io/names.cpp — see names.h.
#include "io/names.h"

#include <cctype>
#include <cstring>

namespace fp4qat::names {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_weight(const std::string& name) { return name.size() > std::strlen(kWeight) && ends_with(name, kWeight); }

std::string module_of(const std::string& weight_name) {
  return is_weight(weight_name) ? weight_name.substr(0, weight_name.size() - std::strlen(kWeight)) : weight_name;
}

int64_t layer_of(const std::string& name) {
  const std::string pre = "model.layers.";
  if (name.compare(0, pre.size(), pre) != 0) return -1;
  int64_t v = 0;
  size_t i = pre.size();
  for (; i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])); ++i) v = v * 10 + (name[i] - '0');
  return i == pre.size() ? -1 : v;
}

std::string fused_experts(const std::string& module) {
  const std::string tag = ".experts.";
  const size_t p = module.find(tag);
  return p == std::string::npos ? std::string() : module.substr(0, p + tag.size() - 1);
}

bool is_linear_weight(const std::string& name, int64_t rank) {
  return rank == 2 && ends_with(name, kWeight) && name.find("embed") == std::string::npos;
}

}  // namespace fp4qat::names
