// trainer/calibrate.cpp — see calibrate.h.
#include "trainer/calibrate.h"

#include <torch/torch.h>

#include <memory>

#include "io/names.h"
#include "kernels/common/check.h"
#include "trainer/data.h"
#include "qat/policy.h"

namespace fp4qat::calib {

std::map<std::string, float> input_amax(model::Qwen3Moe& model, const Options& opt) {
  FP4QAT_CHECK(opt.batches > 0 && opt.batch_size > 0 && opt.seq_len > 0, "calibration: batches, batch size and ",
               "sequence length must be > 0");
  const int64_t V = model.config().vocab_size;
  std::unique_ptr<data::TokenFile> tokens;
  std::unique_ptr<data::SyntheticCorpus> corpus;
  if (opt.data == "synthetic") {
    FP4QAT_CHECK(V >= data::kVocabUsed, "calibration: the synthetic corpus needs vocab_size >= ", data::kVocabUsed);
    corpus = std::make_unique<data::SyntheticCorpus>(opt.seed);
  } else {
    tokens = std::make_unique<data::TokenFile>(opt.data, 0.0, opt.seed);
    FP4QAT_CHECK(tokens->max_token() < V, opt.data, ": token id ", tokens->max_token(), " is outside vocab_size ", V);
  }
  qat::Recipe every;  // observe every Linear; the caller picks the quantized ones
  every.selection.modules = {"*"};
  qat::QatPolicy policy(every, model, /*quantize_forward=*/false);
  policy.observe_without_grad = true;
  model.to(opt.device);
  const at::ScalarType dt = opt.device.is_cuda() ? at::kBFloat16 : at::kFloat;
  {
    torch::NoGradGuard ng;
    for (int64_t b = 0; b < opt.batches; ++b) {
      const at::Tensor batch = corpus ? corpus->batch(0, static_cast<uint64_t>(b), opt.batch_size, opt.seq_len)
                                      : tokens->batch(0, static_cast<uint64_t>(b), opt.batch_size, opt.seq_len);
      model.forward(batch.narrow(1, 0, opt.seq_len).to(opt.device), dt, policy);
    }
  }
  const auto seen = policy.take_input_amax();
  std::map<std::string, float> out;
  for (const auto& g : model.hf_groups()) {
    auto it = seen.find(g.param);
    if (it == seen.end()) continue;
    at::Tensor a = it->second.to(at::kCPU).reshape({-1});
    a = at::where(a > 0, a, a.max());  // experts without a calibration token
    for (size_t m = 0; m < g.names.size(); ++m) {
      const std::string& n = g.names[m];
      out[names::module_of(n)] = a[a.numel() == 1 ? 0 : static_cast<int64_t>(m) / g.parts].item<float>();
    }
  }
  return out;
}

}  // namespace fp4qat::calib
