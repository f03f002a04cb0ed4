// io/names.h — the Hugging Face tensor-naming conventions, once: a Linear's weight is
// `<module>.weight`; decoder layers are `model.layers.<i>.…`.
#pragma once
#include <cstdint>
#include <string>

namespace fp4qat::names {

inline constexpr const char* kWeight = ".weight";

bool ends_with(const std::string& s, const std::string& suffix);
bool is_weight(const std::string& name);                // ends in ".weight" (with a module before it)
std::string module_of(const std::string& weight_name);  // "X.weight" -> "X"; any other name unchanged
int64_t layer_of(const std::string& name);              // "model.layers.<i>...." -> i, else -1
// A Linear's weight as serving engines see it: a 2-D `*.weight` that is not an embedding.
bool is_linear_weight(const std::string& name, int64_t rank);
// The engines' fused MoE module of an expert's module: "<...>.experts.<e>.<proj>" -> "<...>.experts";
// "" for a module that is not an expert's.
std::string fused_experts(const std::string& module);

}  // namespace fp4qat::names
