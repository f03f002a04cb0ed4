// cli/cmd_convert.cpp — `fp4qat convert`: offline conversion of a Hugging Face Qwen3-MoE
// checkpoint to ModelOpt NVFP4 or MXFP8 (qat/convert.h), with activation calibration for the
// NVFP4 input_scale (trainer/calibrate.h).
#include <boost/program_options.hpp>

#include <cstdio>
#include <iostream>

#include "kernels/common/check.h"
#include "qat/convert.h"
#include "trainer/calibrate.h"
#include "cli/cli.h"
#include "cli/util.h"
#include "model/hf_folder.h"
#include "model/qwen3_moe.h"

namespace po = boost::program_options;

namespace fp4qat::cli {

int cmd_convert(const Args& args) {
  std::string engine = "sglang";
  std::string in, out, format, blocks, device, calib_data, scale_rule, error, global_scale, activations, act_scale,
      act_rule;
  double e4m3_max = 256;
  std::vector<std::string> exclude, modules;
  int64_t keep_first = 0, keep_last = 0, calib_batches = 8, calib_bs = 8, calib_len = 64;
  po::options_description desc("fp4qat convert options");
  desc.add_options()("help,h", "show this help")("in", po::value(&in)->required(),
                                                 "Hugging Face Qwen3-MoE folder (config.json + safetensors)")(
      "out", po::value(&out)->required(), "output folder (must not exist or be empty, unless --overwrite)")(
      "format", po::value(&format)->default_value("nvfp4"), "nvfp4 (ModelOpt) | mxfp8")(
      "engine", po::value(&engine)->default_value("sglang"),
      "the serving engine, where the layouts differ: sglang | vllm (MXFP8: scales named weight_scale_inv | "
      "weight_scale; NVFP4 is the same for both)")("blocks", po::value(&blocks)->default_value("1d"),
                                                   "NVFP4 weight blocks: 1d | 2d")(
      "scale-rule", po::value(&scale_rule)->default_value("max6"), "NVFP4 block scales (as quantize): max6 | 4over6")(
      "error", po::value(&error), "4over6 only: mae (default) | mse")(
      "e4m3-max", po::value(&e4m3_max), "4over6 only: 256 (default) | 448, the rollout engine's")(
      "global-scale", po::value(&global_scale)->default_value("tensor"),
      "weights' global scale: tensor (ModelOpt's weight_scale_2; row is not a servable weight layout)")(
      "activations", po::value(&activations)->default_value("nvfp4"),
      "nvfp4 | bf16 (W4A16: quant_algo W4A16_NVFP4, no input_scale, no calibration)")(
      "activation-rule", po::value(&act_rule)->default_value("max6"),
      "max6 | 4over6: the activations' block scales the rollout side uses (recorded; --error and --e4m3-max "
      "as for the weights)")(
      "activation-scale", po::value(&act_scale)->default_value("tensor"),
      "tensor | row: the activations' global scale the rollout side uses (per token; input_scale is still "
      "calibrated)")(
      "modules", po::value(&modules)->composing(),
      "glob of modules to quantize (repeatable; default: the routed experts model.layers.*.mlp.experts.*)")(
      "exclude", po::value(&exclude)->composing(), "glob of modules to keep in BF16 (repeatable)")(
      "keep-first-n", po::value(&keep_first)->default_value(0), "keep the first N layers in BF16")(
      "keep-last-n", po::value(&keep_last)->default_value(0), "keep the last N layers in BF16")(
      "overwrite", "replace the contents of a non-empty --out (only once the new output is complete)")(
      "device", po::value(&device)->default_value("auto"), "auto | cpu | cuda: where calibration and quantization run")(
      "calib-data", po::value(&calib_data)->default_value("synthetic"),
      "NVFP4 input_scale calibration data: 'synthetic' (embedded corpus) or a token file (FP4QTOK1)")(
      "calib-batches", po::value(&calib_batches)->default_value(8), "calibration batches")(
      "calib-batch-size", po::value(&calib_bs)->default_value(8), "calibration sequences per batch")(
      "calib-seq-len", po::value(&calib_len)->default_value(64), "calibration tokens per sequence");
  po::variables_map vm;
  if (!parse_options(args, desc, vm,
                     "fp4qat convert --in HF_DIR --out DIR --format nvfp4|mxfp8 [--blocks 1d|2d] [--keep-first-n N]\n"
                     "                      [--keep-last-n N] [--exclude GLOB]... [--overwrite]"))
    return 0;
  qat::ConvertOptions opt;
  opt.format = qat::parse_format(format);
  opt.engine = qat::parse_engine(engine);
  FP4QAT_CHECK(opt.engine != qat::Engine::kAny, "--engine '", engine, "': expected vllm or sglang");
  FP4QAT_CHECK(opt.format != qat::Format::kBF16, "--format '", format, "': expected nvfp4 or mxfp8");
  opt.blocks = parse_blocks(blocks);
  // --error and --e4m3-max serve whichever side uses Four Over Six (weights, activations or both).
  const bool w4 = scale_rule == "4over6", a4 = act_rule == "4over6";
  FP4QAT_CHECK(w4 || a4 || (!vm.count("error") && !vm.count("e4m3-max")), vm.count("error") ? "--error" : "--e4m3-max",
               " applies to --scale-rule 4over6 or --activation-rule 4over6 only");
  auto err_of = [&](bool four) { return four && vm.count("error") ? &error : nullptr; };
  auto m_of = [&](bool four) { return four && vm.count("e4m3-max") ? &e4m3_max : nullptr; };
  opt.rules.weights = parse_rule_options(scale_rule, err_of(w4), m_of(w4), global_scale);
  FP4QAT_CHECK(!opt.rules.weights.row_scaled,
               "--global-scale row: weights keep one weight_scale_2 per tensor in an export (ModelOpt's layout); "
               "per-token scales are --activation-scale row");
  FP4QAT_CHECK(activations == "nvfp4" || activations == "bf16", "--activations '", activations,
               "': expected nvfp4 or bf16");
  FP4QAT_CHECK(act_scale == "tensor" || act_scale == "row", "--activation-scale '", act_scale,
               "': expected tensor or row");
  FP4QAT_CHECK(act_rule == "max6" || act_rule == "4over6", "--activation-rule '", act_rule,
               "': expected max6 or 4over6");
  opt.rules.w4a16 = activations == "bf16";
  opt.rules.activations = parse_rule_options(act_rule, err_of(a4), m_of(a4), act_scale);
  FP4QAT_CHECK(!(opt.rules.w4a16 && opt.rules.activations.four_over_six),
               "--activation-rule 4over6 needs --activations nvfp4 (W4A16 leaves the activations in bf16)");
  FP4QAT_CHECK(!(opt.rules.w4a16 && opt.rules.activations.row_scaled),
               "--activation-scale row needs --activations nvfp4 (W4A16 leaves the activations in bf16)");
  FP4QAT_CHECK(opt.format == qat::Format::kNVFP4 ||
                   (opt.rules.weights.is_default() && !opt.rules.w4a16 && !opt.rules.activations.row_scaled),
               "--format ", format, ": --scale-rule, --activations and --activation-scale apply to nvfp4 only");
  if (!modules.empty()) opt.selection.modules = modules;
  opt.selection.exclude = exclude;
  FP4QAT_CHECK(keep_first >= 0 && keep_last >= 0, "--keep-first-n and --keep-last-n must be >= 0");
  opt.selection.keep_first_n = keep_first;
  opt.selection.keep_last_n = keep_last;
  opt.overwrite = vm.count("overwrite") > 0;
  opt.device = parse_device(device);
  opt.producer_version = std::string("fp4qat ") + FP4QAT_VERSION;
  const auto selected = qat::select_modules(in, opt);  // errors before the (slow) calibration
  if (opt.format == qat::Format::kNVFP4 && !opt.rules.w4a16) {
    calib::Options co;
    co.data = calib_data;
    co.batches = calib_batches;
    co.batch_size = calib_bs;
    co.seq_len = calib_len;
    co.device = opt.device;
    model::Qwen3Moe m = model::load_hf_folder(in);
    std::printf("calibrating activation scales on %lld x %lld x %lld tokens (%s)...\n", (long long)calib_batches,
                (long long)calib_bs, (long long)calib_len, calib_data.c_str());
    opt.input_amax = calib::input_amax(m, co);
  }
  const qat::ConvertReport r = qat::convert_checkpoint(in, out, opt);
  std::printf(
      "converted %s -> %s (%s%s): %lld modules quantized, %lld tensors in BF16, %lld shards, %lld files copied\n",
      in.c_str(), out.c_str(), format.c_str(), opt.format == qat::Format::kNVFP4 ? (" " + blocks).c_str() : "",
      (long long)r.quantized_modules, (long long)r.plain_tensors, (long long)r.shards, (long long)r.copied_files);
  std::string ex;
  for (const auto& p : r.excluded_patterns) ex += (ex.empty() ? "" : ", ") + p;
  std::printf("excluded (BF16): %zu modules, listed one by one in quantization_config: %s\n", r.excluded.size(),
              ex.c_str());
  if (!r.tokenizer)
    std::fprintf(stderr,
                 "fp4qat convert: warning: %s has no tokenizer (tokenizer.json, tokenizer.model or vocab.json), so "
                 "neither has %s: vLLM loads an empty tokenizer from such a folder instead of failing; give the "
                 "engine one (--tokenizer PATH)\n",
                 in.c_str(), out.c_str());
  (void)selected;
  return 0;
}

}  // namespace fp4qat::cli
