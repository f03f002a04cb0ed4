// cli/cmd_eval.cpp — `fp4qat eval`: a model loaded from an exported / converted / BF16
// Hugging Face folder (rollout/serving.h: from the files, run as a serving engine runs it) scores
// token sequences (per-token log-probs, JSONL) and/or the synthetic corpus (validation loss,
// exact-match accuracy of greedy answers), optionally against a reference folder (mean and max
// |log p_model - log p_reference| per token).
#include <boost/program_options.hpp>

#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include "kernels/common/check.h"
#include "io/fs.h"
#include "io/json.h"
#include "cli/cli.h"
#include "cli/util.h"
#include "trainer/data.h"
#include "rollout/serving.h"
#include "trainer/train.h"

namespace po = boost::program_options;

namespace fp4qat::cli {

int cmd_eval(const Args& args) {
  std::string model_dir, reference, sequences, out, device, vocab_path, serving, reference_serving;
  int64_t batches = 4, problems = 64;
  uint64_t seed = 1234;
  po::options_description desc("fp4qat eval options");
  desc.add_options()("help,h", "show this help")("model", po::value(&model_dir)->required(),
                                                 "exported / converted / BF16 Hugging Face folder")(
      "reference", po::value(&reference), "a second folder: report mean/max |log p - log p_reference| per token")(
      "serving", po::value(&serving),
      "serve --model with this serving profile instead of the one it records: fp4qat | marlin | flashinfer_per_token "
      "| flashinfer_static (the README's engine table; NVFP4 W4A4 checkpoints)")(
      "reference-serving", po::value(&reference_serving), "the same for --reference")(
      "sequences", po::value(&sequences), "JSONL of {\"tokens\": [...]}: per-token log-probs to --out")(
      "out", po::value(&out), "JSONL output of --sequences (default: stdout)")(
      "vocab", po::value(&vocab_path),
      "id -> bytes table (a vocab.bin or a dataset folder; default: the model folder's vocab.bin): each output record "
      "gets its decoded \"text\"")("synthetic-batches", po::value(&batches)->default_value(4),
                                   "validation batches (16 x 64) of the synthetic corpus; 0: none")(
      "exact-match", po::value(&problems)->default_value(64), "synthetic problems answered greedily; 0: none")(
      "seed", po::value(&seed)->default_value(1234), "corpus seed (the recipes' train.seed)")(
      "device", po::value(&device)->default_value("auto"), "auto | cpu | cuda");
  po::variables_map vm;
  if (!parse_options(args, desc, vm,
                     "fp4qat eval --model DIR [--reference DIR] [--sequences FILE.jsonl [--out FILE.jsonl]]"))
    return 0;
  FP4QAT_CHECK(batches >= 0 && problems >= 0, "--synthetic-batches and --exact-match must be >= 0");
  const at::Device dev = parse_device(device);
  const at::ScalarType dt = dev.is_cuda() ? at::kBFloat16 : at::kFloat;
  FP4QAT_CHECK(reference_serving.empty() || !reference.empty(), "--reference-serving needs --reference");
  rollout::Loaded m = rollout::load(model_dir, dev, serving);
  std::optional<rollout::Loaded> ref;
  if (!reference.empty()) ref = rollout::load(reference, dev, reference_serving);
  json::Value summary = json::Value::object({{"model", model_dir}, {"format", qat::to_string(m.format)}});
  if (!serving.empty()) summary.set("serving", serving);

  if (!sequences.empty()) {
    const auto seqs = read_token_jsonl(sequences, m.model->config().vocab_size, 2,
                                       static_cast<size_t>(m.model->config().max_position_embeddings),
                                       "the model's max_position_embeddings");
    const std::unique_ptr<data::Vocab> vocab = find_vocab(vocab_path, {model_dir});
    OutputFile file(out);
    std::ostream& os = file.stream();
    for (const auto& s : seqs) {
      const at::Tensor ids = at::tensor(s, at::kLong).unsqueeze(0).to(dev);
      const at::Tensor lp =
          rollout::token_logprobs(*m.model, *m.policy, ids, dt)[0].to(at::kCPU).to(at::kDouble).contiguous();
      json::Value toks = json::Value::array(), lps = json::Value::array();
      for (int64_t t : s) toks.push_back(t);
      for (int64_t i = 0; i < lp.numel(); ++i) lps.push_back(lp.data_ptr<double>()[i]);
      json::Value rec = json::Value::object({{"tokens", toks}, {"logprobs", lps}, {"sum", lp.sum().item<double>()}});
      if (vocab) rec.set("text", data::Vocab::printable(vocab->decode(s)));
      os << rec.dump() << "\n";
    }
    file.commit();
  }
  const int64_t V = m.model->config().vocab_size;
  if (batches > 0 || ref) {
    FP4QAT_CHECK(V >= data::kVocabUsed, model_dir, ": the synthetic corpus needs vocab_size >= ", data::kVocabUsed);
    data::SyntheticCorpus corpus(seed, 99);
    double loss = 0, dsum = 0, dmax = 0;
    int64_t n = 0;
    for (int64_t b = 0; b < std::max<int64_t>(batches, 1); ++b) {
      const at::Tensor ids = corpus.batch(1, static_cast<uint64_t>(b), 16, 64).to(dev);
      const at::Tensor lp = rollout::token_logprobs(*m.model, *m.policy, ids, dt);
      loss += -lp.mean().item<double>();
      if (ref) {
        const at::Tensor d = (lp - rollout::token_logprobs(*ref->model, *ref->policy, ids, dt)).abs();
        dsum += d.sum().item<double>();
        n += d.numel();
        dmax = std::max(dmax, d.max().item<double>());
      }
    }
    if (batches > 0) summary.set("val_loss", loss / static_cast<double>(batches));
    if (ref) {
      summary.set("reference", reference);
      if (!reference_serving.empty()) summary.set("reference_serving", reference_serving);
      summary.set("mean_abs_dlogp", dsum / static_cast<double>(n));
      summary.set("max_abs_dlogp", dmax);
    }
  }
  if (problems > 0) {
    FP4QAT_CHECK(V >= data::kVocabUsed, model_dir, ": the synthetic corpus needs vocab_size >= ", data::kVocabUsed);
    config::Config c;
    c.train.seed = seed;
    summary.set("exact_match", train::exact_match(*m.model, c, problems, dt, *m.policy, dev));
  }
  std::fprintf(out.empty() && !sequences.empty() ? stderr : stdout, "%s\n", summary.dump().c_str());
  return 0;
}

}  // namespace fp4qat::cli
