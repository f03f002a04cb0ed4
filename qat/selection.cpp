// qat/selection.cpp — see selection.h.
#include "qat/selection.h"

#include "kernels/common/check.h"
#include "qat/gated_pairs.h"
#include "qat/patterns.h"

namespace fp4qat::qat {

std::set<std::string> select_modules(const Selection& s, const std::vector<ModuleUnit>& units, int64_t num_layers,
                                     const SelectionWords& w) {
  FP4QAT_CHECK(s.keep_first_n >= 0 && s.keep_last_n >= 0, w.where, w.keep, " must be >= 0");
  std::vector<int> hits(s.modules.size(), 0), ex_hits(s.exclude.size(), 0);
  std::set<std::string> out, all;
  for (const auto& u : units) {
    std::vector<bool> sel(u.modules.size(), false);
    for (size_t m = 0; m < u.modules.size(); ++m) {
      const std::string& mod = u.modules[m];
      all.insert(mod);
      for (size_t i = 0; i < s.modules.size(); ++i)
        if (glob_match(s.modules[i], mod)) sel[m] = true, ++hits[i];
      for (size_t i = 0; i < s.exclude.size(); ++i)
        if (glob_match(s.exclude[i], mod)) sel[m] = false, ++ex_hits[i];
    }
    for (size_t m = 1; m < u.modules.size(); ++m)
      FP4QAT_CHECK(sel[m] == sel[0], w.where, w.modules, ": '", u.modules[0], "' and '", u.modules[m], "' are ", u.what,
                   "; the patterns must select all of them or none (quantizing only one member of a gated pair is an "
                   "error)");
    for (size_t m = 0; m < u.modules.size(); ++m) {
      const int64_t layer = layer_of(u.modules[m]);
      const bool kept = layer >= 0 && (layer < s.keep_first_n || layer >= num_layers - s.keep_last_n);
      if (sel[m] && !kept) out.insert(u.modules[m]);
    }
  }
  for (size_t i = 0; i < s.modules.size(); ++i)
    FP4QAT_CHECK(hits[i] > 0, w.where, w.modules, ": pattern '", s.modules[i], "' matches no module of ", w.subject);
  for (size_t i = 0; i < s.exclude.size(); ++i)
    FP4QAT_CHECK(ex_hits[i] > 0, w.where, w.exclude, ": pattern '", s.exclude[i], "' matches no module of ", w.subject);
  for (const auto& m : out)
    if (auto p = gated_partner(m + names::kWeight)) {
      const std::string partner = module_of(p->partner);
      FP4QAT_CHECK(out.count(partner), w.where, "'", m, "' is selected but its gated partner '", partner,
                   all.count(partner) ? "' is not" : "' does not exist",
                   "; quantizing only one member of a gated pair is an error");
    }
  FP4QAT_CHECK(!out.empty(), w.where, "no module left to quantize (", w.modules, ", ", w.exclude, ", ", w.keep, ")");
  return out;
}

}  // namespace fp4qat::qat
