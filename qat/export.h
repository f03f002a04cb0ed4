// qat/export.h — checkpoint writers for serving engines (docs/spec/checkpoint-format.md):
// one Hugging Face folder in ModelOpt NVFP4, SGLang MXFP8 or plain BF16, and the atomic publish
// of a step's exports for the rollout side. Used by the trainer's per-step export and by
// `fp4qat convert`; the quantization itself is kernels/quantize.h (same bytes on CPU and CUDA).
//
// Quantized modules: `X.weight` U8 codes [out, in/2], `X.weight_scale` F8_E4M3 [out, in/16],
// `X.weight_scale_2` F32 [], `X.input_scale` F32 [] (NVFP4); `X.weight` F8_E4M3 [out, in] and
// `X.weight_scale_inv` U8 [out, in/32] (MXFP8). Everything else is written in BF16, and every
// Linear that is not quantized is listed as excluded (lm_head always).
#pragma once
#include <ATen/ATen.h>

#include <c10/core/Event.h>
#include <c10/core/Stream.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "io/hf_folder.h"
#include "kernels/quantize.h"
#include "qat/recipe.h"

namespace fp4qat::qat {

// The serving engine an export is laid out for, where the engines disagree (MXFP8: the scale
// tensor is X.weight_scale in vLLM, X.weight_scale_inv in SGLang). NVFP4, W4A16 and BF16 exports
// are the same for both. kAny is for checks only (qat/check_export.h).
enum class Engine { kAny, kVllm, kSglang };
Engine parse_engine(const std::string& s);  // "any" | "vllm" | "sglang"; throws naming the value
const char* to_string(Engine e);
// The MXFP8 block-scale tensor suffix `engine` loads ("weight_scale" or "weight_scale_inv").
const char* mxfp8_scale_suffix(Engine engine);

// The tensors an export holds for a quantized module whose weight is [out, in] (the layout above),
// by suffix: NVFP4: weight U8 [out, in/2], weight_scale F8_E4M3 [out, in/16], weight_scale_2
// F32 [] and, unless W4A16 (`input_scale` false), input_scale F32 []; MXFP8: weight F8_E4M3
// [out, in] and `mx_scale` (mxfp8_scale_suffix) U8 [out, in/32]. What check-export and the
// rollout side's loader expect.
std::map<std::string, std::pair<st::DType, std::vector<int64_t>>> quantized_module_tensors(
    Format format, bool input_scale, const std::string& mx_scale, int64_t out, int64_t in);

struct ExportOptions {
  Format format = Format::kNVFP4;
  Engine engine = Engine::kSglang;  // export.engine / convert --engine (MXFP8 scale names)
  Blocks blocks = Blocks::k1D;      // NVFP4 weight blocks (the ones training used)
  // The NVFP4 recipe (qat::Recipe): the weights' scale rule (Four Over Six: weight_scale_2 =
  // 1 / S_enc with the recipe's M), W4A16 (quant_algo W4A16_NVFP4, no input_scale), and the
  // activations' rule the rollout side reproduces. Recorded in config.json's quantization_config
  // and hf_quant_config.json under "fp4qat" when not the 2024 recipe (whose files stay as they were).
  NVFP4Rules rules;
  // The serving profile the trainer's forward reproduced (qat::Serving's name; "fp4qat" by
  // default): recorded beside the rules ("fp4qat": {"serving": ...}) when not the default.
  std::string serving = "fp4qat";
  int64_t max_shard_bytes = 2ll << 30;       // a new shard starts past this size
  std::string config_json;                   // the model's config.json text; quantization_config is added
  std::string producer_version = "unknown";  // hf_quant_config.json producer.version
};

// The activation global scale a serving engine uses as `input_scale`: S_dec = 1 / S_enc of the
// observed activation amax (numerics.md), i.e. amax / 2688 rounded as the quantizer rounds it.
float nvfp4_input_scale(float activation_amax);

// The flashinfer_static serving profile (qat::Serving::kStatic): engines whose NVFP4 MoE kernels
// share one activation scale among a layer's experts (vLLM's FlashInfer and CUTLASS backends)
// quantize activations with S_enc = 1 / max_e(input_scale_e), computed in float32, and scale the
// GEMM by input_scale * weight_scale_2. For the trainer to compute the same, the amax it quantizes
// with must give exactly that S_enc and S_dec = input_scale:
//   static_activation_amax(observed): the amax a >= observed whose S_enc = min(2688 / a, FLT_MAX)
//     survives the engine's round trip (1 / (1 / S_enc) == S_enc in float32) and is recovered from
//     its input_scale (static_activation_amax_of_input_scale gives a back); S_enc is stepped down
//     one ulp at a time from the observed amax's (at most a few steps; a larger amax, never a
//     saturating smaller one). An observed 0 gives 2688 (S_enc 1, as amax 0 does).
//   static_activation_amax_of_input_scale(s): the amax the rollout side quantizes with for a layer
//     whose largest input_scale is s: a with S_enc(a) == 1 / s (searched within a few ulps of
//     2688 / (1 / s)); nullopt when none exists — an input_scale that fp4qat's flashinfer_static
//     exports never write (about 8% of arbitrary float32 values), which the profile cannot then
//     serve bit for bit (the caller says so and takes 2688 / (1 / s), S_enc within an ulp or two).
float static_activation_amax(float observed);
std::optional<float> static_activation_amax_of_input_scale(float input_scale);

// One stacked weight quantized for export ([E, P*R, K], member (e, p) = rows [p*R, (p+1)*R) of
// expert e), on the weight's device. The weight is first cast to its bf16 compute copy (what the
// training forward quantizes).
struct QuantizedStack {
  at::Tensor data;    // NVFP4 u8 codes [E, P*R, K/2] | MXFP8 e4m3 [E, P*R, K] | BF16 [E, P*R, K]
  at::Tensor scales;  // NVFP4 e4m3 [E, P*R, K/16] | MXFP8 u8 [E, P*R, K/32] | undefined (BF16)
  at::Tensor s_dec;   // NVFP4 float32 [E] | undefined
};
// `amax`: float32 [E] or [] to use instead of each expert's own (see add_quantized). `what`
// names the weight in error messages.
QuantizedStack quantize_stack(Format format, Blocks blocks, const at::Tensor& w, int64_t parts,
                              const std::optional<at::Tensor>& amax, const std::string& what,
                              const NVFP4Rule& rule = {});

// The "fp4qat" record of an NVFP4 export's recipe, and back: {"activations": "nvfp4"|"bf16",
// "activation_scale": "tensor"|"row", "four_over_six": {"weights": b, "activations": b, "error":
// "mae"|"mse", "e4m3_max": 256|448}, "serving": profile (only when not "fp4qat")}. `where` names
// the file in errors; read_serving gives the profile ("fp4qat" when absent).
json::Value recipe_record(const NVFP4Rules& rules, const std::string& serving = "fp4qat");
NVFP4Rules read_recipe_record(const json::Value& v, const std::string& where);
std::string read_serving(const json::Value& v, const std::string& where);

// Builds one Hugging Face folder inside `dir` (an existing, empty folder; the caller publishes
// it). Tensors may live on the CPU or a GPU; quantization runs where they are.
class HfFolderWriter {
 public:
  HfFolderWriter(std::string dir, ExportOptions opt);

  // A tensor written in BF16 as it is (norms, embeddings, router, attention, kept layers...).
  // A 2-D `*.weight` that is not an embedding counts as a Linear left unquantized (excluded).
  void add_plain(const std::string& name, const at::Tensor& t);

  // Quantized Linears given as one tensor w [E, P*R, K] (or [P*R, K] = one expert): member
  // (e, p) is rows [p*R, (p+1)*R) of expert e, named modules[e*P + p] (without ".weight").
  // Each expert has one global amax over its P members (a gated pair gate+up shares it), unless
  // `amax` gives it (float32 [E] or [] — e.g. a dense gated pair stored as two tensors).
  // input_amax[e*P + p]: the activation amax observed for that module (NVFP4 input_scale).
  // With Format::kBF16 the weights are written in BF16 and nothing is excluded.
  void add_quantized(const std::vector<std::string>& modules, int64_t parts, const at::Tensor& w,
                     const std::optional<at::Tensor>& amax, const std::vector<float>& input_amax);

  // The same with the weights already quantized (quantize_stack); tensors may be on any device.
  void add_stack(const std::vector<std::string>& modules, int64_t parts, const QuantizedStack& q,
                 const std::vector<float>& input_amax);

  void end_shard();  // the next tensor starts a new shard (convert keeps the input's sharding)

  // Plain tensors as add_plain would write them, already written as one shard `file` by an earlier
  // writer of the same options (hf::ShardedWriter::add_written_shard: linked, not rewritten).
  void add_written_shard(const std::string& file, const std::vector<std::pair<std::string, at::Tensor>>& plain);
  // After finish(): each shard's file name and its tensors.
  const std::vector<std::pair<std::string, std::vector<std::string>>>& shard_files() const {
    return shards_.shard_files();
  }

  // Writes the last shard, names the shards model-0000i-of-0000N.safetensors, then
  // model.safetensors.index.json, config.json (+ quantization_config) and, for NVFP4,
  // hf_quant_config.json. Returns the modules listed as excluded (qat/patterns.h exclude_list).
  std::vector<std::string> finish();

  const std::set<std::string>& quantized_modules() const { return quantized_; }
  const std::set<std::string>& excluded_modules() const { return excluded_; }  // plain linears (lm_head aside)

 private:
  void put(const std::string& name, at::Tensor t);  // into the current shard
  void note_plain(const std::string& name, const at::Tensor& t);  // a plain tensor's place in the exclusion list
  std::string dir_;
  ExportOptions opt_;
  hf::ShardedWriter shards_;
  std::set<std::string> quantized_, excluded_;
};

// Pinned host buffers reused from one export to the next: a fresh pinned allocation blocks the
// host for milliseconds per hundred MB (measured: 14 ms per step for one MoE layer), which would
// stall the training loop. A buffer is taken for a byte size and given back when the staged
// folder holding it is destroyed; exports of the same model ask for the same sizes every step.
// Thread-safe.
class HostBufferPool {
 public:
  at::Tensor take(int64_t nbytes);  // uint8 [nbytes], pinned
  void give_back(at::Tensor buf);
  int64_t allocated_bytes() const;  // pinned bytes held by the pool and its users

 private:
  mutable std::mutex mu_;
  std::multimap<int64_t, at::Tensor> free_;
  int64_t allocated_ = 0;
};

// One export folder staged in host memory and written later, possibly by another thread (the
// trainer's asynchronous per-step export). For tensors on a GPU, the device work (bf16 casts,
// quantization) and the copies into pinned host memory run on a side stream that first waits
// for the current stream's work so far, so that the training stream goes on at once; for CPU
// tensors everything happens in the add_* call. Each add_* call's side-stream work starts after
// the current stream's work enqueued before the call. Every staged tensor is a copy: the caller may
// change the weights once fence() has been called (in stream order: the current stream's later
// work waits for the side stream's reads of them, not the host).
class StagedFolder {
 public:
  // pool: where pinned buffers come from (null: fresh pinned allocations).
  explicit StagedFolder(ExportOptions opt, std::shared_ptr<HostBufferPool> pool = nullptr);
  ~StagedFolder();  // waits for the copies still in flight, gives the buffers back to the pool
  StagedFolder(const StagedFolder&) = delete;
  StagedFolder& operator=(const StagedFolder&) = delete;
  // stable: the caller never changes t in place (a frozen parameter), so fence() need not wait
  // for this copy.
  void add_plain(const std::string& name, const at::Tensor& t, bool stable = false);
  // As HfFolderWriter::add_quantized; input_amax: float32 [E*P] on any device (NVFP4), or undefined.
  void add_quantized(const std::vector<std::string>& modules, int64_t parts, const at::Tensor& w,
                     const std::optional<at::Tensor>& amax, const at::Tensor& input_amax);
  // The same with the weights already quantized in the folder's format (quantize_stack's layout:
  // [E, P*R, *], s_dec [E]); only the copies are staged. q and input_amax are products the caller
  // replaces rather than changes in place (their memory is held for the side stream), so fence()
  // does not wait for these copies.
  void add_stack(const std::vector<std::string>& modules, int64_t parts, const QuantizedStack& q,
                 const at::Tensor& input_amax);
  // Ends staging (records the side stream's progress; call on the staging thread before handing
  // the folder to another one). No add_* after it.
  void seal();
  // The current stream's later work waits until the side stream is done reading every tensor the
  // caller may change in place: those of add_quantized and of add_plain unless stable (call before
  // changing them). Not the copies of add_stack / stable add_plain: an export of cached quantized
  // experts does not hold the optimizer back for its device-to-host transfer. Seals if needed.
  void fence();
  bool fence_waits() const { return fence_needed_; }  // whether fence() has reads to wait for
  // The shards a write() put the stable tensors in (add_plain with stable: frozen weights), when
  // the folder also has tensors that change: stable ones are then written first, in shards of
  // their own. File names and each one's tensors; empty otherwise.
  using StableShards = std::vector<std::pair<std::string, std::vector<std::string>>>;
  // Waits for the host copies and writes the folder into `dir` (an existing, empty folder).
  // `reuse`: the stable shards of an earlier write() (of a folder staged from the same frozen
  // weights) in folder `reuse_dir`: where they hold exactly this folder's stable tensors (names,
  // order, shapes and dtypes in their headers), they are hard-linked instead of written (the
  // per-step export of expert-only training rewrites only what trains). Else written as usual.
  std::vector<std::string> write(const std::string& dir, const std::string& reuse_dir = "",
                                 const StableShards& reuse = {});
  const StableShards& stable_shards() const { return stable_shards_; }  // after write()
  bool reused_stable_shards() const { return reused_; }                   // after write(): linked

 private:
  struct Item {
    std::string name;                  // plain tensor name
    at::Tensor plain;                  // host bf16 (or as given, for non-float tensors)
    bool stable = false;               // plain: a frozen weight
    std::vector<std::string> modules;  // quantized stack
    int64_t parts = 0;
    QuantizedStack q;       // host
    at::Tensor input_amax;  // host float32 [E*P] or undefined
  };
  StableShards stable_shards_;
  bool reused_ = false;
  at::Tensor to_host(const at::Tensor& t);  // a host copy (pinned, asynchronous from a GPU)
  // One quantized stack: `make` runs on the side stream (GPU tensors) after it was ordered after
  // the current stream and `reads` (and input_amax) were marked as used there.
  void add_item(const std::vector<std::string>& modules, int64_t parts, const at::Tensor& input_amax,
                const std::vector<at::Tensor>& reads, bool fenced, const std::function<QuantizedStack()>& make);
  void mark_fenced_reads();  // the side stream's work so far reads tensors the caller may change
  void begin_device_work(const at::Device& d);
  void keep_for_side_stream(const at::Tensor& t);  // record_stream on the side stream
  ExportOptions opt_;
  std::shared_ptr<HostBufferPool> pool_;
  std::vector<at::Tensor> taken_;  // pool buffers in use
  std::vector<Item> items_;
  std::optional<c10::Stream> side_;           // the side stream, once a GPU tensor was added
  std::unique_ptr<c10::Event> copied_;        // recorded on the side stream after the last copy
  std::unique_ptr<c10::Event> fenced_reads_;  // ... after the last read fence() waits for
  bool fence_needed_ = false;
  bool sealed_ = false;
};

}  // namespace fp4qat::qat
