// qat/patterns.h — module-name patterns: the `*` globs recipes use to choose quantized modules,
// the explicit exclusion lists serving engines read (`exclude_modules` / `ignore` /
// `ignored_layers` / `modules_to_not_convert` of checkpoint-format.md), and their compact form
// for display.
#pragma once
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "io/names.h"

namespace fp4qat::qat {

// The naming helpers live in io/names.h; the selection code of qat/ uses them unqualified.
using names::ends_with;
using names::is_linear_weight;
using names::layer_of;
using names::module_of;

// `*` matches any run of characters (dots included); everything else matches itself; the whole
// text must match (so `model.layers.*.mlp.gate` does not match `...mlp.gate_proj`).
bool glob_match(const std::string& pattern, const std::string& text);

// Patterns that together match every module of `excluded` and no module of `quantized`, as
// compact as that allows: for a module `model.layers.3.self_attn.q_proj` the candidates are,
// in order, `model.layers.*.self_attn*`, `model.layers.*.self_attn.q_proj`,
// `model.layers.3.self_attn*`, `model.layers.3.self_attn.q_proj` (numbered components become
// `*`, first all of them, then all but the first); the first one that matches no quantized
// module is kept. Sorted, without duplicates.
std::vector<std::string> exclude_patterns(const std::set<std::string>& excluded,
                                          const std::set<std::string>& quantized);

// The exclusion list the exports write (`ignore`, `exclude_modules`, `ignored_layers`,
// `modules_to_not_convert`): explicit module paths, no wildcards — some engines' paths match
// literally (SGLang's Fp8Config) — sorted: every module of `excluded` but the experts, and the
// engines' fused module `<...>.experts` of a layer none of whose experts is in `quantized`. No
// single expert is listed: both vLLM and SGLang take any listed path under `<...>.experts` as
// excluding the layer's whole fused MoE (a layer with some experts quantized cannot be served;
// qat/check_export.h says so). exclude_patterns stays for compact display.
std::vector<std::string> exclude_list(const std::set<std::string>& excluded, const std::set<std::string>& quantized);

}  // namespace fp4qat::qat
