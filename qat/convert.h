// qat/convert.h — offline conversion of a Hugging Face MoE checkpoint folder (Qwen3-MoE names)
// into a serving layout (ModelOpt NVFP4 or MXFP8, checkpoint-format.md), streaming shard by
// shard: each input shard becomes one output shard; gate/up pairs are found across shards and
// share one amax; non-weight files (tokenizer, generation config, ...) are copied; index.json,
// config.json (+ quantization_config) and hf_quant_config.json are written.
//
// The output is built in a temporary folder beside `out` and moved into place only when
// complete: on any error `out` is left as it was, and the message names the tensor or file.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "qat/export.h"

namespace fp4qat::qat {

struct ConvertOptions {
  Format format = Format::kNVFP4;   // nvfp4 | mxfp8
  Engine engine = Engine::kSglang;  // the layout where engines differ (MXFP8 scale names; export.h)
  Blocks blocks = Blocks::k1D;
  // NVFP4 recipe (as ExportOptions): the weights' rule (Four Over Six), the activations' rule the
  // rollout side applies (recorded, not applied here), W4A16 (no input_scale, no calibration).
  NVFP4Rules rules;
  Selection selection;                       // module globs, exclude, keep-first/last (qat/selection.h)
  bool overwrite = false;                    // replace a non-empty `out`
  at::Device device = at::Device(at::kCPU);  // where quantization runs (same bytes either way)
  // NVFP4: activation amax per quantized module (calibration), for input_scale. Required (W4A16 aside).
  std::map<std::string, float> input_amax;
  std::string producer_version = "unknown";
};

struct ConvertReport {
  int64_t quantized_modules = 0, plain_tensors = 0, shards = 0, copied_files = 0;
  std::vector<std::string> excluded;           // the exclusion list written (explicit module paths)
  std::vector<std::string> excluded_patterns;  // the same, compact (qat/patterns.h exclude_patterns), for display
  bool tokenizer = false;  // the source (so the output) holds a tokenizer (io/hf_folder.h has_tokenizer)
};

// The modules of the checkpoint in `dir` (names of 2-D `*.weight` tensors without ".weight",
// embeddings aside) that the options select (qat/selection.h).
std::set<std::string> select_modules(const std::string& dir, const ConvertOptions& opt);

ConvertReport convert_checkpoint(const std::string& in, const std::string& out, const ConvertOptions& opt);

}  // namespace fp4qat::qat
