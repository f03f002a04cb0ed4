// qat/gated_pairs.h — which weights share one global amax: the gated pairs that serving engines
// fuse into one GEMM with a single weight_scale_2 (checkpoint-format.md): `P.gate_proj.weight` +
// `P.up_proj.weight`, and `P.w1.weight` + `P.w3.weight`.
#pragma once
#include <optional>
#include <string>

namespace fp4qat::qat {

struct GatedPartner {
  std::string partner;  // the other member's tensor name
  bool is_first;        // true for gate_proj / w1
};

// The partner of `name` if it is a member of a gated pair, else nullopt.
std::optional<GatedPartner> gated_partner(const std::string& name);

}  // namespace fp4qat::qat
