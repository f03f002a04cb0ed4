// cli/cmd_train.cpp — `fp4qat train --recipe R.yaml [--set a.b=v ...] [--dump-config] [--resume | --overwrite]`,
// and `fp4qat rl` (the same options): the RL loop of a recipe with objective grpo and rl.iterations
// > 0 (trainer/config.h RlConfig), train.steps and export.every derived from rl.*.
#include <boost/program_options.hpp>

#include <cstdio>
#include <iostream>

#include "kernels/common/check.h"
#include "cli/cli.h"
#include "cli/util.h"
#include "io/fs.h"
#include "trainer/config.h"
#include "trainer/train.h"

namespace po = boost::program_options;

namespace fp4qat::cli {

namespace {
int train_or_rl(const Args& args, bool rl) {
  const char* name = rl ? "rl" : "train";
  std::string recipe;
  std::vector<std::string> sets;
  po::options_description desc(std::string("fp4qat ") + name + " options");
  desc.add_options()("help,h", "show this help")("recipe", po::value(&recipe)->required(),
                                                 "recipe YAML (recipes/*.yaml)")(
      "set", po::value(&sets)->composing(), "override one key, e.g. --set optim.lr=1e-3 (repeatable)")(
      "dump-config", "print the resolved config as YAML and exit")(
      "resume", "continue from the newest complete checkpoint in <train.out_dir>/checkpoints")(
      "trace", po::value<std::string>(),
      "PATH: record a timeline of a few steps (Kineto; CUDA kernels on a GPU): a Chrome trace at PATH (open in "
      "Perfetto), its summary at PATH.txt and on stdout")(
      "trace-steps", po::value<std::string>()->default_value("4:6"),
      "FIRST:LAST: the steps --trace records (1-based, inclusive; cut to train.steps)")(
      "overwrite", "start afresh in a train.out_dir that holds an earlier run (its metrics, checkpoints, exports "
                   "and hf/ are removed); without it such a folder is refused");
  po::variables_map vm;
  if (!parse_options(args, desc, vm,
                     std::string("fp4qat ") + name +
                         " --recipe R.yaml [--set a.b=v ...] [--dump-config] [--resume | --overwrite]"))
    return 0;
  config::Config cfg;
  config::apply_recipe_file(cfg, recipe);
  for (const auto& s : sets) config::apply_set(cfg, s);
  if (rl) config::derive_rl_loop(cfg);
  config::validate(cfg);
  if (vm.count("dump-config")) {
    std::cout << config::dump(cfg);
    return 0;
  }
  train::install_signal_handlers();
  train::Options opt;
  opt.resume = vm.count("resume") > 0;
  FP4QAT_CHECK(!(opt.resume && vm.count("overwrite")), "--resume and --overwrite exclude each other");
  opt.existing = vm.count("overwrite") ? train::ExistingRun::kOverwrite : train::ExistingRun::kRefuse;
  if (vm.count("trace")) {
    opt.trace_path = vm["trace"].as<std::string>();
    FP4QAT_CHECK(!opt.trace_path.empty(), "--trace: give the path of the trace file");
    FP4QAT_CHECK(fs::is_dir(fs::parent_dir(opt.trace_path)), "--trace ", opt.trace_path, ": the folder '",
                 fs::parent_dir(opt.trace_path), "' does not exist");
    const std::string steps = vm["trace-steps"].as<std::string>();
    const size_t colon = steps.find(':');
    auto num = [&](const std::string& s) {
      FP4QAT_CHECK(!s.empty() && s.size() < 12 && s.find_first_not_of("0123456789") == std::string::npos,
                   "--trace-steps '", steps, "': expected FIRST:LAST, two step numbers (e.g. 4:6)");
      return std::stoll(s);
    };
    FP4QAT_CHECK(colon != std::string::npos, "--trace-steps '", steps, "': expected FIRST:LAST (e.g. 4:6)");
    opt.trace_first = num(steps.substr(0, colon));
    opt.trace_last = num(steps.substr(colon + 1));
    FP4QAT_CHECK(opt.trace_first >= 1 && opt.trace_first <= opt.trace_last, "--trace-steps '", steps,
                 "': FIRST must be >= 1 and <= LAST");
  } else {
    FP4QAT_CHECK(vm["trace-steps"].defaulted(), "--trace-steps needs --trace PATH");
  }
  const train::Result r = train::run(cfg, opt);
  if (r.stopped_by_signal) {
    // Interrupted: checkpointed at the step it finished; exit as shells report a signal (128 + N:
    // 130 for SIGINT, 143 for SIGTERM), never 0, so that a caller can tell it from a finished run.
    std::printf("interrupted by signal %d after step %lld of %lld; checkpoint %s (continue with --resume)\n",
                r.stopped_by_signal, (long long)r.final_step, (long long)cfg.train.steps, r.last_checkpoint.c_str());
    return 128 + r.stopped_by_signal;
  }
  std::printf("done: %lld steps; metrics in %s/metrics.jsonl; checkpoint %s%s%s\n", (long long)r.final_step,
              cfg.train.out_dir.c_str(), r.last_checkpoint.c_str(), r.hf_dir.empty() ? "" : "; Hugging Face folder ",
              r.hf_dir.c_str());
  if (!r.exports.empty())
    std::printf("exports: %zu published, the last %s%s\n", r.exports.size(), r.exports.back().c_str(),
                r.exports_have_tokenizer ? " (with the tokenizer of train.init_from)"
                                         : " -- no tokenizer: serve with the engine's --tokenizer option");
  return 0;
}
}  // namespace

int cmd_train(const Args& args) { return train_or_rl(args, false); }
int cmd_rl(const Args& args) { return train_or_rl(args, true); }

}  // namespace fp4qat::cli
