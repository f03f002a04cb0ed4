// cli/cmd_generate.cpp — `fp4qat generate`: sampling from an exported / converted / BF16
// folder as the rollout side runs it (rollout/serving.h), with a KV cache: the prompt in one
// forward, then one token per forward. Greedy (--temperature 0), temperature and top-p sampling
// with a seeded generator. Output: rollout records (trainer/rollouts.h), --samples per prompt as
// one group: prompt, response, the response tokens' log-probs under the model (temperature 1, no
// top-p: what an RL trainer compares against), and with --reward NAME (trainer/rewards.h) the
// reward that makes them training data. Prompts: a JSONL file or a folder scripts/prepare_data wrote
// (each document's prompt). With an id -> bytes table (--vocab, else the prompts' dataset folder's
// or the model folder's vocab.bin) the records carry the decoded "prompt_text" / "response_text",
// also printed one line per sample on stdout when --out is a file.
#include <cmath>
#include <ATen/CPUGeneratorImpl.h>
#include <boost/program_options.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "kernels/common/check.h"
#include "io/fs.h"
#include "io/json.h"
#include "cli/cli.h"
#include "cli/util.h"
#include "rollout/sampler.h"
#include "rollout/serving.h"
#include "trainer/rewards.h"
#include "trainer/rollouts.h"

namespace po = boost::program_options;

namespace fp4qat::cli {


int cmd_generate(const Args& args) {
  std::string model_dir, prompts, out, device, vocab_path;
  int64_t max_new = 32, eos = -1, samples = 1;
  std::string reward;
  double temperature = 0, top_p = 1.0;
  uint64_t seed = 0;
  po::options_description desc("fp4qat generate options");
  desc.add_options()("help,h", "show this help")("model", po::value(&model_dir)->required(),
                                                 "exported / converted / BF16 Hugging Face folder")(
      "prompts", po::value(&prompts)->required(),
      "JSONL of {\"tokens\": [...]} prompts, or a dataset folder of scripts/prepare_data")(
      "vocab", po::value(&vocab_path), "id -> bytes table for decoded text: a vocab.bin or a dataset folder")(
      "out", po::value(&out), "JSONL output (default: stdout)")(
      "max-new-tokens", po::value(&max_new)->default_value(32), "tokens to generate per prompt")(
      "temperature", po::value(&temperature)->default_value(0.0), "0: greedy; > 0: sampling temperature")(
      "top-p", po::value(&top_p)->default_value(1.0), "nucleus sampling mass (0, 1]")(
      "eos", po::value(&eos),
      "stop a sequence at this token id (-1: none); default: the eos_id of a prepared dataset given as "
      "--prompts, else none")(
      "samples", po::value(&samples)->default_value(1), "responses per prompt (one group per prompt)")(
      "routed-experts",
      "record each response token's experts in every MoE layer (\"routed_experts\", [response][moe layers][top k], "
      "SGLang's return_routed_experts layout) for routing replay (rl.router_replay)")(
      "reward", po::value(&reward),
      "score each response with this reward (trainer/rewards.h: addition | addition_exact); without it the "
      "records carry no reward")("seed", po::value(&seed)->default_value(0), "sampling seed")(
      "device", po::value(&device)->default_value("auto"), "auto | cpu | cuda");
  po::variables_map vm;
  if (!parse_options(args, desc, vm,
                     "fp4qat generate --model DIR --prompts FILE.jsonl [--max-new-tokens N] [--temperature T]\n"
                     "                       [--top-p P] [--seed S] [--out FILE.jsonl]"))
    return 0;
  FP4QAT_CHECK(max_new >= 1, "--max-new-tokens must be >= 1 (a rollout record has a response)");
  FP4QAT_CHECK(samples >= 1, "--samples must be >= 1");
  const rewards::Fn score = reward.empty() ? nullptr : rewards::by_name(reward);
  FP4QAT_CHECK(std::isfinite(temperature) && temperature >= 0, "--temperature must be a finite number >= 0 (got ",
               temperature, ")");
  FP4QAT_CHECK(top_p > 0 && top_p <= 1, "--top-p must be in (0, 1] (got ", top_p, ")");
  const at::Device dev = parse_device(device);
  const at::ScalarType dt = dev.is_cuda() ? at::kBFloat16 : at::kFloat;
  rollout::Loaded m = rollout::load(model_dir, dev);
  const int64_t V = m.model->config().vocab_size;
  // The KV cache holds the prompt and every generated token but the last.
  const bool want_routed = vm.count("routed-experts") > 0;
  const int64_t moe_layers = model::moe_layer_count(m.model->config());
  FP4QAT_CHECK(!want_routed || moe_layers > 0, "--routed-experts: ", model_dir, " has no MoE layer");
  const int64_t top_k = m.model->config().num_experts_per_tok;
  // The KV cache holds the prompt and every generated token but the last (and the last too when its
  // routing is recorded: it is run as an input once more).
  const int64_t max_pos = m.model->config().max_position_embeddings,
                room = max_pos - std::max<int64_t>(max_new - (want_routed ? 0 : 1), 0);
  FP4QAT_CHECK(room >= 1, "--max-new-tokens ", max_new, " leaves no room for a prompt within the model's ",
               "max_position_embeddings (", max_pos, ")");
  const auto ps = read_prompts(prompts, V, static_cast<size_t>(room),
                               "max_position_embeddings " + std::to_string(max_pos) + " less --max-new-tokens - 1");
  const std::unique_ptr<data::Vocab> vocab = find_vocab(vocab_path, {prompts, model_dir});
  if (!vm.count("eos") && data::Dataset::is_dataset(prompts)) eos = data::Dataset(prompts, 0.0, 0).eos_id();
  FP4QAT_CHECK(eos >= -1 && eos < V, "--eos ", eos, " is neither a token id of the model (vocab_size ", V,
               ") nor -1 (none)");
  OutputFile file(out);
  std::ostream& os = file.stream();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::NoGradGuard ng;
  for (size_t pi = 0; pi < ps.size(); ++pi) {
    const auto& p = ps[pi];
    for (int64_t k = 0; k < samples; ++k) {
      rollout::SampleOptions so;
      so.max_new_tokens = max_new;
      so.temperature = temperature;
      so.top_p = top_p;
      so.eos = eos;
      so.routed = want_routed;
      rollout::Response r = rollout::sample(m, p, so, gen, dev, dt);
      rollouts::Sample s = rollouts::sample_of(p, std::move(r), std::to_string(pi));
      if (score) s.reward = score(s.prompt, s.response);
      std::string line = rollouts::to_json_line(s, want_routed ? moe_layers : 0, want_routed ? top_k : 0,
                                                /*with_reward=*/score != nullptr);
      if (vocab) {  // the decoded text beside the ids (information only; the rollout reader ignores it)
        json::Value rec = json::parse(line, "rollout record");
        const std::string pt = data::Vocab::printable(vocab->decode(s.prompt)),
                          rt = data::Vocab::printable(vocab->decode(s.response));
        rec.set("prompt_text", pt);
        rec.set("response_text", rt);
        line = rec.dump();
        if (!out.empty())  // one line a sample: the prompt's and the response's text as JSON strings
          std::printf("[%zu.%lld] %s %s\n", pi, static_cast<long long>(k), json::quote(pt).c_str(),
                      json::quote(rt).c_str());
      }
      os << line << "\n";
    }
  }
  file.commit();
  return 0;
}

}  // namespace fp4qat::cli
