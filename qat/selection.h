// qat/selection.h — which Linear modules a recipe quantizes, once for training (qat/policy.h),
// the per-step export and `fp4qat convert`: the modules matched by `modules` globs, minus those
// matched by `exclude`, minus the decoder layers kept by keep_first_n / keep_last_n. A pattern
// (of modules or exclude) that matches nothing is an error, a unit selected in part is an error,
// and so is a selection holding one member of a gated pair (gate_proj/up_proj, w1/w3) without
// the other.
#pragma once
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "qat/recipe.h"

namespace fp4qat::qat {

// Modules selected together or not at all: the experts (and gate/up members) of one stacked
// tensor, or a single module. Hugging Face module names, without ".weight".
struct ModuleUnit {
  std::vector<std::string> modules;
  const char* what = "one module";  // for messages: "a gated pair", "experts of one stacked tensor"
};

// How the messages name the settings and the thing selected from.
struct SelectionWords {
  std::string where;  // prefix of every message, e.g. "<dir>: " (default none)
  std::string modules = "qat.modules", exclude = "qat.exclude";
  std::string keep = "qat.keep_first_n / qat.keep_last_n";
  std::string subject = "this model";
};

// The selected module names. `linear` is every Linear module of the model or checkpoint (for
// the message of a missing gated partner); `num_layers` its decoder layers.
std::set<std::string> select_modules(const Selection& s, const std::vector<ModuleUnit>& units, int64_t num_layers,
                                     const SelectionWords& words = {});

}  // namespace fp4qat::qat
