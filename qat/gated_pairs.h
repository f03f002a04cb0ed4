// qat/gated_pairs.h — which weights share one global amax: the gated pairs that serving engines
// fuse into one GEMM with a single weight_scale_2 (checkpoint-format.md): `P.gate_proj.weight` +
// `P.up_proj.weight`, and `P.w1.weight` + `P.w3.weight`.
//
// The one rule for their shared global amax: max(amax(first), amax(second)) over the values the
// quantizer is given — the bf16 compute copies (compute_copy) in training, the per-step export
// and `convert`; the tensors as stored in `fp4qat quantize`, whose vectors are defined on them.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <optional>
#include <string>

namespace fp4qat::qat {

struct GatedPartner {
  std::string partner;  // the other member's tensor name
  bool is_first;        // true for gate_proj / w1
};

// The partner of `name` if it is a member of a gated pair, else nullopt.
std::optional<GatedPartner> gated_partner(const std::string& name);

// The compute copy of a weight: the bf16 cast of the fp32 master (in `dtype` for the GEMM; exact,
// since bf16 values are exact in fp32; differentiable: autograd::compute_cast). The QAT forward and
// every export quantize it.
at::Tensor compute_copy(const at::Tensor& master, at::ScalarType dtype = at::kBFloat16);

// float32 []: the shared global amax of a gated pair, from the values the quantizer is given.
at::Tensor gated_pair_amax(const at::Tensor& first, const at::Tensor& second);

// The same for pairs met one member at a time (the tensors of a file or of shards in order):
// the first member computes it, with its partner's values from `partner_values`, and the second
// member gets the same tensor.
class PairAmax {
 public:
  at::Tensor of(const std::string& name, const at::Tensor& values,
                const std::function<at::Tensor(const std::string& partner)>& partner_values);

 private:
  std::map<std::string, at::Tensor> waiting_;  // by the member still to come
};

}  // namespace fp4qat::qat
