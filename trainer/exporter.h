// trainer/exporter.h — the per-step export for the rollout side: after an optimizer step the
// current weights are published under <train.out_dir>/exports/step-<N>/<format>/ (ModelOpt NVFP4,
// MXFP8, BF16 per export.formats) with export.json (step, formats, quantized modules) and the
// resolved recipe (recipe.yaml), atomically, keeping the newest export.keep (qat/export.h).
//
// The quantized weights are exactly those the next forward uses: the same compute copy (bf16
// cast of the master), the same blocks and the same (shared) amax (QatPolicy). `input_scale` is
// the S_dec of the activation amax observed in the training forwards since the previous export
// (running max); an expert that received no token in that window keeps its previous value, and
// one that never received a token takes the largest value among its layer's experts.
#pragma once
#include <map>
#include <string>

#include "trainer/config.h"
#include "trainer/model.h"
#include "trainer/qat_policy.h"

namespace fp4qat::train {

class Exporter {
 public:
  Exporter(const config::Config& cfg, const model::Qwen3Moe& model, qatp::QatPolicy& policy);
  // True when step (1-based) is an export step: every export.every steps, and the last step.
  bool due(int64_t step) const;
  // Publishes step `step`; returns the published folder.
  std::string publish(int64_t step);
  std::string root() const { return cfg_.train.out_dir + "/exports"; }

 private:
  std::vector<float> input_amax(const std::string& param, int64_t members_per_expert, int64_t n_modules);
  const config::Config& cfg_;
  const model::Qwen3Moe& model_;
  qatp::QatPolicy& policy_;
  std::map<std::string, at::Tensor> amax_;  // last known activation amax per parameter (CPU float32)
};

}  // namespace fp4qat::train
