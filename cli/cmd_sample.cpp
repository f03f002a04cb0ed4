// cli/cmd_sample.cpp — `fp4qat sample`: write a small random MoE layer as a safetensors file (to
// quantize in demos and tests).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <boost/program_options.hpp>

#include <cstdio>

#include "cli/cli.h"
#include "cli/util.h"
#include "io/safetensors.h"
#include "kernels/common/check.h"

namespace po = boost::program_options;

namespace fp4qat::cli {

int cmd_sample(const Args& args) {
  std::string out;
  int64_t experts = 4, hidden = 256, inter = 128;
  uint64_t seed = 0;
  po::options_description desc("fp4qat sample options");
  desc.add_options()("help,h", "show this help")("out", po::value(&out)->required(), "output .safetensors file")(
      "experts", po::value(&experts)->default_value(4), "number of experts")(
      "hidden", po::value(&hidden)->default_value(256), "hidden size (multiple of 32)")(
      "intermediate", po::value(&inter)->default_value(128), "expert intermediate size (multiple of 32)")(
      "seed", po::value(&seed)->default_value(0), "random seed");
  po::variables_map vm;
  if (!parse_options(args, desc, vm,
                     "fp4qat sample --out FILE [--experts E] [--hidden H] [--intermediate I] [--seed S]"))
    return 0;
  FP4QAT_CHECK(experts >= 1 && experts <= 1024, "--experts must be in [1, 1024], got ", experts);
  FP4QAT_CHECK(hidden >= 32 && hidden <= 16384 && hidden % 32 == 0, "--hidden must be a multiple of 32 in [32, 16384]");
  FP4QAT_CHECK(inter >= 32 && inter <= 16384 && inter % 32 == 0,
               "--intermediate must be a multiple of 32 in [32, 16384]");

  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto bf16 = at::TensorOptions().dtype(at::kBFloat16);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  const std::string p = "model.layers.0.";
  tensors.emplace_back(p + "post_attention_layernorm.weight", at::ones({hidden}, bf16));
  tensors.emplace_back(p + "mlp.gate.weight", (at::randn({experts, hidden}, gen) * 0.02).to(at::kBFloat16));
  for (int64_t e = 0; e < experts; ++e) {
    const std::string q = p + "mlp.experts." + std::to_string(e) + ".";
    // [out, in]: gate/up [I, H], down [H, I]. Heavy-tailed (Laplace-like) like trained weights.
    auto lap = [&](int64_t o, int64_t i, double s) {
      at::Tensor u = at::rand({o, i}, gen) - 0.5;
      return (-at::sign(u) * at::log1p(-2 * u.abs()) * s).to(at::kBFloat16);
    };
    tensors.emplace_back(q + "gate_proj.weight", lap(inter, hidden, 0.02));
    tensors.emplace_back(q + "up_proj.weight", lap(inter, hidden, 0.02));
    tensors.emplace_back(q + "down_proj.weight", lap(hidden, inter, 0.02));
  }
  st::write_file(out, tensors);
  std::printf("wrote %s: %zu tensors (%lld experts, hidden %lld, intermediate %lld, seed %llu)\n", out.c_str(),
              tensors.size(), (long long)experts, (long long)hidden, (long long)inter, (unsigned long long)seed);
  return 0;
}

}  // namespace fp4qat::cli
