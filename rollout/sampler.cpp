// rollout/sampler.cpp — see sampler.h.
#include "rollout/sampler.h"

#include <torch/torch.h>

#include "kernels/common/check.h"

namespace fp4qat::rollout {

at::Tensor pick(const at::Tensor& logits, double temperature, double top_p, const std::vector<at::Generator*>& gens) {
  FP4QAT_CHECK(logits.dim() == 2 && static_cast<size_t>(logits.size(0)) == gens.size(), "pick: logits ",
               logits.sizes(), " for ", gens.size(), " generators");
  if (temperature <= 0) return logits.argmax(1);
  const at::Tensor l = logits.to(at::kDouble);
  const at::Tensor probs = at::softmax((l - std::get<0>(l.max(1, /*keepdim=*/true))) / temperature, 1);  // [B, V]
  auto [sorted, order] = probs.sort(1, /*descending=*/true);
  // keep the smallest prefix whose mass reaches top_p (always the first token)
  at::Tensor keep = (sorted.cumsum(1) - sorted) < top_p;
  keep.select(1, 0).fill_(true);
  const at::Tensor kept = sorted * keep.to(sorted.scalar_type());
  const at::Tensor cum = kept.cumsum(1);
  const at::Tensor share = cum / cum.select(1, -1).unsqueeze(1);  // [B, V], the last kept entry ~1
  std::vector<double> u(gens.size());
  for (size_t b = 0; b < gens.size(); ++b)
    u[b] = at::rand({}, *gens[b], at::TensorOptions(at::kDouble)).item<double>();
  const at::Tensor ut = at::tensor(u, at::kDouble).to(logits.device()).unsqueeze(1);  // [B, 1]
  at::Tensor i = at::searchsorted(share, ut, /*out_int32=*/false, /*right=*/true);  // first share > u
  i = at::minimum(i, keep.sum(1, /*keepdim=*/true) - 1);                            // within the kept prefix
  return order.gather(1, i).squeeze(1);
}

std::vector<Response> sample_batch(const Loaded& m, const std::vector<std::vector<int64_t>>& prompts,
                                   const std::vector<int64_t>& of, std::vector<at::Generator>& gens,
                                   const SampleOptions& opt, const at::Device& dev, at::ScalarType dt) {
  torch::NoGradGuard ng;
  FP4QAT_CHECK(!prompts.empty() && !prompts[0].empty(), "sample_batch: no prompt, or an empty one");
  FP4QAT_CHECK(gens.size() == of.size() && !of.empty(), "sample_batch: ", of.size(), " rows but ", gens.size(),
               " generators");
  std::vector<int64_t> flat;  // [P * T]
  for (const auto& p : prompts) {
    FP4QAT_CHECK(p.size() == prompts[0].size(), "sample_batch: prompts of ", prompts[0].size(), " and ", p.size(),
                 " tokens (a batch's prompts have one length)");
    flat.insert(flat.end(), p.begin(), p.end());
  }
  for (int64_t o : of)
    FP4QAT_CHECK(o >= 0 && o < static_cast<int64_t>(prompts.size()), "sample_batch: row of prompt ", o, " of ",
                 prompts.size());
  const int64_t P = static_cast<int64_t>(prompts.size()), T = static_cast<int64_t>(prompts[0].size());
  const int64_t top_k = m.model->config().num_experts_per_tok;
  model::KVCache cache;
  const at::Tensor ids = at::tensor(flat, at::kLong).reshape({P, T}).to(dev);
  at::Tensor logits = m.model->forward(ids, dt, *m.policy, &cache).logits.select(1, -1);  // [P, V]
  // Each row's copy of its prompt's cache and last logits.
  auto keep_rows = [&cache](const std::vector<int64_t>& rows, at::Tensor& l) {
    const at::Tensor idx = at::tensor(rows, at::kLong);
    for (auto* kv : {&cache.k, &cache.v})
      for (at::Tensor& t : *kv)  // [B, nKV, past, hd]
        t = t.index_select(0, idx.to(t.device()));
    l = l.index_select(0, idx.to(l.device()));
  };
  keep_rows(of, logits);
  logits = logits.to(at::kFloat);  // [B, V], on the device
  std::vector<Response> out(of.size());
  std::vector<int64_t> active(of.size());  // batch row -> response
  for (size_t r = 0; r < of.size(); ++r) active[r] = static_cast<int64_t>(r);
  for (int64_t n = 0; n < opt.max_new_tokens && !active.empty(); ++n) {
    const int64_t B = static_cast<int64_t>(active.size());
    std::vector<at::Generator*> row_gens;
    for (int64_t r = 0; r < B; ++r) row_gens.push_back(&gens[active[r]]);
    const at::Tensor picked = pick(logits, opt.temperature, opt.top_p, row_gens);  // [B]
    const at::Tensor lp = at::log_softmax(logits, 1).gather(1, picked.unsqueeze(1)).squeeze(1).to(at::kCPU);
    const at::Tensor pc = picked.to(at::kCPU);
    const auto pca = pc.accessor<int64_t, 1>();
    const auto lpa = lp.accessor<float, 1>();
    std::vector<int64_t> next(B), running;  // running: batch rows that go on after this token
    for (int64_t r = 0; r < B; ++r) {
      Response& s = out[active[r]];
      next[r] = pca[r];
      s.tokens.push_back(next[r]);
      s.logprobs.push_back(lpa[r]);
      if (next[r] != opt.eos && n + 1 < opt.max_new_tokens) running.push_back(r);
    }
    // The tokens as the next inputs: the next logits, and the experts each goes to. Without
    // routing a finished row leaves before this forward; with it, after.
    std::vector<int64_t> fed = running;
    if (opt.routed) {
      fed.resize(B);
      for (int64_t r = 0; r < B; ++r) fed[r] = r;
    }
    if (fed.empty()) break;
    if (static_cast<int64_t>(fed.size()) < B) keep_rows(fed, logits);
    std::vector<int64_t> fed_tokens;
    for (int64_t r : fed) fed_tokens.push_back(next[r]);
    const model::ForwardOutput fw = m.model->forward(
        at::tensor(fed_tokens, at::kLong).reshape({static_cast<int64_t>(fed.size()), 1}).to(dev), dt, *m.policy,
        &cache);
    if (opt.routed) {
      const at::Tensor ids_ = at::stack(fw.routed).reshape({static_cast<int64_t>(fw.routed.size()), B, top_k})
                                  .to(at::kLong).to(at::kCPU).contiguous();  // [moe layers, B, k]
      const auto a = ids_.accessor<int64_t, 3>();
      for (int64_t r = 0; r < B; ++r)
        for (int64_t l = 0; l < a.size(0); ++l)
          for (int64_t q = 0; q < top_k; ++q) out[active[r]].routed.push_back(static_cast<int32_t>(a[l][r][q]));
    }
    logits = fw.logits.select(1, -1);  // [fed, V]
    if (running.size() < fed.size()) keep_rows(running, logits);  // (fed is every row here)
    logits = logits.to(at::kFloat);
    std::vector<int64_t> still;
    for (int64_t r : running) still.push_back(active[r]);
    active = std::move(still);
  }
  return out;
}

Response sample(const Loaded& m, const std::vector<int64_t>& prompt, const SampleOptions& opt, at::Generator& gen,
                const at::Device& dev, at::ScalarType dt) {
  std::vector<at::Generator> gens{gen};
  return std::move(sample_batch(m, {prompt}, {0}, gens, opt, dev, dt)[0]);
}

}  // namespace fp4qat::rollout
