// rollout/sampler.cpp — see sampler.h.
#include "rollout/sampler.h"

#include <torch/torch.h>

namespace fp4qat::rollout {

int64_t pick(const at::Tensor& logits, double temperature, double top_p, at::Generator& gen) {
  if (temperature <= 0) return logits.argmax().item<int64_t>();
  const at::Tensor l = logits.to(at::kDouble);
  at::Tensor probs = at::softmax((l - l.max()) / temperature, 0);  // [V]
  auto [sorted, order] = probs.sort(0, /*descending=*/true);
  const at::Tensor cum = sorted.cumsum(0);
  // keep the smallest prefix whose mass reaches top_p (always the first token)
  at::Tensor keep = (cum - sorted) < top_p;
  keep[0] = true;
  sorted = sorted * keep.to(sorted.scalar_type());
  const int64_t i = at::multinomial(sorted / sorted.sum(), 1, false, gen).item<int64_t>();
  return order[i].item<int64_t>();
}

Response sample(const Loaded& m, const std::vector<int64_t>& prompt, const SampleOptions& opt,
                        at::Generator& gen, const at::Device& dev, at::ScalarType dt) {
  torch::NoGradGuard ng;
  const int64_t top_k = m.model->config().num_experts_per_tok;
  model::KVCache cache;
  at::Tensor logits = m.model->forward(at::tensor(prompt, at::kLong).unsqueeze(0).to(dev), dt, *m.policy, &cache)
                          .logits[0][-1]
                          .to(at::kFloat)
                          .to(at::kCPU);
  Response s;
  for (int64_t n = 0; n < opt.max_new_tokens; ++n) {
    const int64_t next = pick(logits, opt.temperature, opt.top_p, gen);
    s.tokens.push_back(next);
    s.logprobs.push_back(at::log_softmax(logits, 0)[next].item<float>());
    const bool last = next == opt.eos || n + 1 == opt.max_new_tokens;
    if (last && !opt.routed) break;
    // The token as the next input: the next logits, and the experts it goes to.
    const model::ForwardOutput fw =
        m.model->forward(at::tensor(std::vector<int64_t>{next}, at::kLong).unsqueeze(0).to(dev), dt, *m.policy, &cache);
    if (opt.routed)
      for (const at::Tensor& r : fw.routed) {  // [1, 1, k] per MoE layer
        const at::Tensor ids = r.reshape({-1}).to(at::kCPU);
        for (int64_t q = 0; q < top_k; ++q) s.routed.push_back(static_cast<int32_t>(ids[q].item<int64_t>()));
      }
    if (last) break;
    logits = fw.logits[0][-1].to(at::kFloat).to(at::kCPU);
  }
  return s;
}

}  // namespace fp4qat::rollout
