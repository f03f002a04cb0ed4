// cli/cmd_check_export.cpp — `fp4qat check-export DIR [--engine vllm|sglang|any]`: refuses an
// exported / converted folder with any tensor the engine would not load or would miss
// (qat/check_export.h). Exit 0 when the engine loads it as meant, 1 otherwise; warnings and
// errors one per line on stderr.
#include <boost/program_options.hpp>

#include <cstdio>

#include "cli/cli.h"
#include "cli/util.h"
#include "kernels/common/check.h"
#include "qat/check_export.h"

namespace po = boost::program_options;

namespace fp4qat::cli {

int cmd_check_export(const Args& args) {
  std::string dir, engine;
  po::options_description desc("fp4qat check-export options");
  desc.add_options()("help,h", "show this help")("dir", po::value(&dir)->required(),
                                                 "the folder an engine is pointed at (config.json, safetensors)")(
      "engine", po::value(&engine)->default_value("any"), "any | vllm | sglang");
  // DIR may come first, without --dir.
  Args a = args;
  if (!a.empty() && !a[0].empty() && a[0][0] != '-') a.insert(a.begin(), "--dir");
  po::variables_map vm;
  if (!parse_options(a, desc, vm, "fp4qat check-export DIR [--engine any|vllm|sglang]")) return 0;
  const qat::ExportCheck r = qat::check_export(dir, qat::parse_engine(engine));
  for (const auto& w : r.warnings) std::fprintf(stderr, "%s: warning: %s\n", dir.c_str(), w.c_str());
  for (const auto& e : r.errors) std::fprintf(stderr, "%s: error: %s\n", dir.c_str(), e.c_str());
  std::printf("%s: %s, %lld modules quantized, %lld in BF16, %lld tensors: %s for %s\n", dir.c_str(), r.format.c_str(),
              (long long)r.quantized_modules, (long long)r.bf16_modules, (long long)r.tensors,
              r.ok() ? "loads" : (std::to_string(r.errors.size()) + " error(s)").c_str(), engine.c_str());
  return r.ok() ? 0 : 1;
}

}  // namespace fp4qat::cli
