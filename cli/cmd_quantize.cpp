// cli/cmd_quantize.cpp — `fp4qat quantize`: quantize one safetensors file.
#include <boost/program_options.hpp>

#include <cstdio>
#include <iostream>

#include "kernels/common/check.h"
#include "qat/quantize_checkpoint.h"
#include "io/safetensors.h"
#include "cli/cli.h"
#include "cli/util.h"

namespace po = boost::program_options;

namespace fp4qat::cli {

int cmd_quantize(const Args& args) {
  std::string in, out, format, blocks, device, scale_rule, error, global_scale;
  double e4m3_max = 256;
  po::options_description desc("fp4qat quantize options");
  desc.add_options()("help,h", "show this help")("in", po::value(&in)->required(), "input .safetensors file")(
      "out", po::value(&out)->required(), "output .safetensors file (its folder must exist; written atomically)")(
      "format", po::value(&format)->default_value("nvfp4"), "nvfp4 | mxfp8")(
      "blocks", po::value(&blocks)->default_value("1d"), "NVFP4 weight blocks: 1d (1x16) | 2d (16x16 tiles)")(
      "scale-rule", po::value(&scale_rule)->default_value("max6"),
      "NVFP4 block scales: max6 (each block's max to 6) | 4over6 (Four Over Six: the better of max to 6 and to 4)")(
      "error", po::value(&error), "4over6 only: the block error that picks the scale, mae (default) | mse")(
      "e4m3-max", po::value(&e4m3_max),
      "4over6 only: the E4M3 bound M in the global scale, 256 (default, TransformerEngine's) | 448 (FlashInfer's)")(
      "global-scale", po::value(&global_scale)->default_value("tensor"),
      "NVFP4 global scale: tensor (one weight_scale_2 per tensor / expert) | row (one per row, F32 [M]; 1d only)")(
      "device", po::value(&device)->default_value("auto"), "auto | cpu | cuda (same bytes on either)")(
      "stats", "print the error of dequantize(quantize(x)) for each quantized tensor");
  po::variables_map vm;
  if (!parse_options(args, desc, vm,
                     "fp4qat quantize --in IN.safetensors --out OUT.safetensors --format nvfp4|mxfp8 [--blocks 1d|2d]"))
    return 0;

  qat::QuantizeFileOptions opt;
  opt.format = qat::parse_format(format);
  FP4QAT_CHECK(opt.format != qat::Format::kBF16, "--format '", format, "': expected nvfp4 or mxfp8");
  opt.blocks = parse_blocks(blocks);
  opt.rule = parse_rule_options(scale_rule, vm.count("error") ? &error : nullptr,
                                vm.count("e4m3-max") ? &e4m3_max : nullptr, global_scale);
  FP4QAT_CHECK(opt.format == qat::Format::kNVFP4 || opt.rule.is_default(), "--format ", format,
               ": --scale-rule 4over6 and --global-scale row apply to nvfp4 only");
  FP4QAT_CHECK(!(opt.rule.row_scaled && opt.blocks == Blocks::k2D),
               "--global-scale row needs --blocks 1d: a 16x16 tile spans 16 rows, each with its own global scale");
  opt.device = parse_device(device);
  opt.error_stats = vm.count("stats") > 0;
  const auto reports = qat::quantize_file(in, out, opt);

  int nq = 0;
  for (const auto& r : reports) {
    if (!r.quantized) continue;
    ++nq;
    if (opt.error_stats)
      std::printf("  %-56s %-16s rel-rmse %.4e  max-abs-err %.4e\n", r.name.c_str(), st::shape_str(r.shape).c_str(),
                  r.rel_rmse, r.max_abs_err);
  }
  std::printf("quantized %d tensor(s) to %s%s, copied %zu; wrote %s\n", nq, qat::to_string(opt.format),
              opt.format == qat::Format::kNVFP4
                  ? (std::string(" (") + to_string(opt.blocks) + " blocks, " + describe(opt.rule) + ")").c_str()
                  : "",
              reports.size() - static_cast<size_t>(nq), out.c_str());
  return 0;
}

}  // namespace fp4qat::cli
