// cli/cli.cpp — see cli.h.
#include "cli/cli.h"

#include <boost/program_options/errors.hpp>

#include <exception>
#include <iostream>

#include "kernels/common/check.h"

namespace fp4qat::cli {

namespace {
struct Command {
  const char* name;
  int (*fn)(const Args&);
  const char* summary;
};
const Command kCommands[] = {
    {"check-export", cmd_check_export,
     "check that a serving engine (vLLM, SGLang) loads every tensor of an exported folder and misses none"},
    {"convert", cmd_convert, "convert a Hugging Face MoE checkpoint to NVFP4 (ModelOpt) or MXFP8 for serving"},
    {"eval", cmd_eval,
     "score token sequences / the synthetic corpus with an exported folder, as the rollout side runs it"},
    {"generate", cmd_generate,
     "sample from an exported folder with a KV cache (greedy, temperature, top-p), JSONL out"},
    {"quantize", cmd_quantize, "quantize the .weight tensors of a safetensors file (NVFP4 or MXFP8)"},
    {"train", cmd_train, "train a MoE model from a YAML recipe (--set overrides, --dump-config, --resume)"},
    {"rl", cmd_rl, "the RL loop: sample from the newest export, score, GRPO steps, export, repeat (objective grpo)"},
    {"sample", cmd_sample, "write a small random MoE layer as a safetensors file (for demos and tests)"},
};

void usage(std::ostream& os) {
  os << "fp4qat " << FP4QAT_VERSION << " — NVFP4 quantization-aware training for MoE models\n\n"
     << "usage: fp4qat <command> [options]\n       fp4qat <command> --help\n\ncommands:\n";
  for (const auto& c : kCommands)
    os << "  " << c.name << std::string(14 - std::string(c.name).size(), ' ') << c.summary << "\n";
}
}  // namespace

int run(const Args& args) {
  if (args.empty()) {
    usage(std::cerr);
    return 2;
  }
  const std::string& name = args[0];
  if (name == "--help" || name == "-h" || name == "help") {
    usage(std::cout);
    return 0;
  }
  if (name == "--version") {
    std::cout << "fp4qat " << FP4QAT_VERSION << "\n";
    return 0;
  }
  for (const auto& c : kCommands) {
    if (name != c.name) continue;
    try {
      return c.fn(Args(args.begin() + 1, args.end()));
    } catch (const boost::program_options::error& e) {
      std::cerr << "fp4qat " << name << ": error: " << e.what() << " (see fp4qat " << name << " --help)\n";
      return 2;
    } catch (const std::exception& e) {
      std::string msg = e.what();
      for (char& ch : msg)
        if (ch == '\n') ch = ' ';  // one line
      std::cerr << "fp4qat " << name << ": error: " << msg << "\n";
      return 1;
    }
  }
  std::cerr << "fp4qat: unknown command '" << name << "'\n\n";
  usage(std::cerr);
  return 2;
}

}  // namespace fp4qat::cli
