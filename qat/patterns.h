// qat/patterns.h — module-name patterns: the `*` globs recipes use to choose quantized modules,
// and the compact exclude lists serving engines read (`exclude_modules` / `ignore` /
// `modules_to_not_convert` of checkpoint-format.md).
#pragma once
#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace fp4qat::qat {

// Name helpers shared by the selection code of training, export and convert.
bool ends_with(const std::string& s, const std::string& suffix);
int64_t layer_of(const std::string& name);  // "model.layers.<i>...." -> i, else -1
// A Linear's weight as serving engines see it: a 2-D `*.weight` that is not an embedding.
bool is_linear_weight(const std::string& name, int64_t rank);

// `*` matches any run of characters (dots included); everything else matches itself; the whole
// text must match (so `model.layers.*.mlp.gate` does not match `...mlp.gate_proj`).
bool glob_match(const std::string& pattern, const std::string& text);

// Patterns that together match every module of `excluded` and no module of `quantized`, as
// compact as that allows: for a module `model.layers.3.self_attn.q_proj` the candidates are,
// in order, `model.layers.*.self_attn*`, `model.layers.*.self_attn.q_proj`,
// `model.layers.3.self_attn*`, `model.layers.3.self_attn.q_proj` (numbered components become
// `*`, first all of them, then all but the first); the first one that matches no quantized
// module is kept. Sorted, without duplicates.
std::vector<std::string> exclude_patterns(const std::set<std::string>& excluded, const std::set<std::string>& quantized);

}  // namespace fp4qat::qat
