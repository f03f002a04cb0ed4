// qat/patterns.cpp — see patterns.h.
#include "qat/patterns.h"

#include <cctype>

namespace fp4qat::qat {

bool glob_match(const std::string& p, const std::string& t) {
  size_t pi = 0, ti = 0, star = std::string::npos, mark = 0;
  while (ti < t.size()) {
    if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = ti;
    } else if (pi < p.size() && p[pi] == t[ti]) {
      ++pi;
      ++ti;
    } else if (star != std::string::npos) {
      pi = star + 1;
      ti = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out(1);
  for (char c : s) {
    if (c == '.')
      out.emplace_back();
    else
      out.back() += c;
  }
  return out;
}

bool numeric(const std::string& c) {
  if (c.empty()) return false;
  for (char ch : c)
    if (!std::isdigit(static_cast<unsigned char>(ch))) return false;
  return true;
}

// Components [0, n) joined by dots; numbered components from the `first_wild`-th on become `*`.
std::string join(const std::vector<std::string>& c, size_t n, int first_wild) {
  std::string out;
  int seen = 0;
  for (size_t i = 0; i < n; ++i) {
    const bool wild = numeric(c[i]) && seen++ >= first_wild;
    out += (i ? "." : "") + (wild ? std::string("*") : c[i]);
  }
  return out;
}

}  // namespace

std::vector<std::string> exclude_patterns(const std::set<std::string>& excluded,
                                          const std::set<std::string>& quantized) {
  std::set<std::string> out;
  auto clean = [&](const std::string& pattern) {
    for (const auto& q : quantized)
      if (glob_match(pattern, q)) return false;
    return true;
  };
  for (const auto& m : excluded) {
    const std::vector<std::string> c = split(m);
    std::vector<std::string> candidates;
    for (int wild : {0, 1}) {
      for (size_t d = 1; d < c.size(); ++d)  // ancestors, shortest first (none ending in a number)
        if (!numeric(c[d - 1])) candidates.push_back(join(c, d, wild) + "*");
      candidates.push_back(join(c, c.size(), wild));
    }
    candidates.push_back(m);
    for (const auto& cand : candidates)
      if (clean(cand)) {
        out.insert(cand);
        break;
      }
  }
  return {out.begin(), out.end()};
}

std::vector<std::string> exclude_list(const std::set<std::string>& excluded, const std::set<std::string>& quantized) {
  std::set<std::string> out;
  for (const auto& m : excluded) {
    const std::string fused = names::fused_experts(m);  // "<...>.experts", or "" for a non-expert
    if (fused.empty()) {
      out.insert(m);
      continue;
    }
    // An expert: the engines exclude a layer's experts together or not at all (any listed path
    // under <...>.experts excludes the whole fused MoE), so only the fused module is listed, and
    // only when none of its experts is quantized.
    const std::string prefix = fused + ".";
    const auto it = quantized.lower_bound(prefix);
    if (it == quantized.end() || it->compare(0, prefix.size(), prefix) != 0) out.insert(fused);
  }
  return {out.begin(), out.end()};
}

}  // namespace fp4qat::qat
