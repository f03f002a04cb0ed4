// trainer/cmd_quantize.cpp — `fp4qat quantize` (quantize one safetensors file) and
// `fp4qat sample` (write a small random MoE layer to quantize in demos and tests).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <boost/program_options.hpp>

#include <cstdio>
#include <iostream>

#include "kernels/common/check.h"
#include "qat/quantize_checkpoint.h"
#include "qat/safetensors.h"
#include "trainer/cli.h"
#include "trainer/cli_util.h"

namespace po = boost::program_options;

namespace fp4qat::cli {

namespace {

// Parses `args` against `desc`; returns false (after printing help) when --help was given.
bool parse(const Args& args, const po::options_description& desc, po::variables_map& vm, const char* usage) {
  po::store(po::command_line_parser(args).options(desc).run(), vm);
  if (vm.count("help")) {
    std::cout << "usage: " << usage << "\n\n" << desc << "\n";
    return false;
  }
  po::notify(vm);
  return true;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

int cmd_quantize(const Args& args) {
  std::string in, out, format, blocks, device;
  po::options_description desc("fp4qat quantize options");
  desc.add_options()("help,h", "show this help")
      ("in", po::value(&in)->required(), "input .safetensors file")
      ("out", po::value(&out)->required(), "output .safetensors file (its folder must exist; written atomically)")
      ("format", po::value(&format)->default_value("nvfp4"), "nvfp4 | mxfp8")
      ("blocks", po::value(&blocks)->default_value("1d"), "NVFP4 weight blocks: 1d (1x16) | 2d (16x16 tiles)")
      ("device", po::value(&device)->default_value("auto"), "auto | cpu | cuda (same bytes on either)")
      ("stats", "print the error of dequantize(quantize(x)) for each quantized tensor");
  po::variables_map vm;
  if (!parse(args, desc, vm,
             "fp4qat quantize --in IN.safetensors --out OUT.safetensors --format nvfp4|mxfp8 [--blocks 1d|2d]"))
    return 0;

  qat::QuantizeFileOptions opt;
  opt.format = qat::parse_format(format);
  opt.blocks = parse_blocks(blocks);
  opt.device = parse_device(device);
  opt.error_stats = vm.count("stats") > 0;
  const auto reports = qat::quantize_file(in, out, opt);

  int nq = 0;
  for (const auto& r : reports) {
    if (!r.quantized) continue;
    ++nq;
    if (opt.error_stats)
      std::printf("  %-56s %-16s rel-rmse %.4e  max-abs-err %.4e\n", r.name.c_str(), shape_str(r.shape).c_str(),
                  r.rel_rmse, r.max_abs_err);
  }
  std::printf("quantized %d tensor(s) to %s%s, copied %zu; wrote %s\n", nq, qat::to_string(opt.format),
              opt.format == qat::Format::kNVFP4 ? (std::string(" (") + to_string(opt.blocks) + " blocks)").c_str() : "",
              reports.size() - static_cast<size_t>(nq), out.c_str());
  return 0;
}

int cmd_sample(const Args& args) {
  std::string out;
  int64_t experts = 4, hidden = 256, inter = 128;
  uint64_t seed = 0;
  po::options_description desc("fp4qat sample options");
  desc.add_options()("help,h", "show this help")
      ("out", po::value(&out)->required(), "output .safetensors file")
      ("experts", po::value(&experts)->default_value(4), "number of experts")
      ("hidden", po::value(&hidden)->default_value(256), "hidden size (multiple of 32)")
      ("intermediate", po::value(&inter)->default_value(128), "expert intermediate size (multiple of 32)")
      ("seed", po::value(&seed)->default_value(0), "random seed");
  po::variables_map vm;
  if (!parse(args, desc, vm, "fp4qat sample --out FILE [--experts E] [--hidden H] [--intermediate I] [--seed S]"))
    return 0;
  FP4QAT_CHECK(experts >= 1 && experts <= 1024, "--experts must be in [1, 1024], got ", experts);
  FP4QAT_CHECK(hidden >= 32 && hidden <= 16384 && hidden % 32 == 0, "--hidden must be a multiple of 32 in [32, 16384]");
  FP4QAT_CHECK(inter >= 32 && inter <= 16384 && inter % 32 == 0, "--intermediate must be a multiple of 32 in [32, 16384]");

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
