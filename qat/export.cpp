// qat/export.cpp — see export.h.
#include "qat/export.h"

#include <cmath>
#include <limits>
#include <optional>

#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cstdio>
#include <map>

#include "kernels/common/check.h"
#include "kernels/common/formats.h"
#include "io/fs.h"
#include "io/hf_folder.h"
#include "io/json.h"
#include "qat/patterns.h"
#include "io/safetensors.h"

namespace fp4qat::qat {

Engine parse_engine(const std::string& s) {
  if (s == "any") return Engine::kAny;
  if (s == "vllm") return Engine::kVllm;
  if (s == "sglang") return Engine::kSglang;
  FP4QAT_FAIL("unknown engine '", s, "' (expected vllm or sglang)");
}

const char* to_string(Engine e) {
  switch (e) {
    case Engine::kVllm:
      return "vllm";
    case Engine::kSglang:
      return "sglang";
    default:
      return "any";
  }
}

const char* mxfp8_scale_suffix(Engine engine) { return engine == Engine::kVllm ? "weight_scale" : "weight_scale_inv"; }

std::map<std::string, std::pair<st::DType, std::vector<int64_t>>> quantized_module_tensors(
    Format format, bool input_scale, const std::string& mx_scale, int64_t out, int64_t in) {
  using st::DType;
  FP4QAT_CHECK(format != Format::kBF16, "quantized_module_tensors: BF16 modules are not quantized");
  std::map<std::string, std::pair<DType, std::vector<int64_t>>> want;
  if (format == Format::kNVFP4) {
    want["weight"] = {DType::U8, {out, in / 2}};
    want["weight_scale"] = {DType::F8_E4M3, {out, in / fmt::kNvfp4Block}};
    want["weight_scale_2"] = {DType::F32, {}};
    if (input_scale) want["input_scale"] = {DType::F32, {}};
  } else {
    want["weight"] = {DType::F8_E4M3, {out, in}};
    want[mx_scale] = {DType::U8, {out, in / fmt::kMxfp8Block}};
  }
  return want;
}

float nvfp4_input_scale(float amax) { return fmt::nvfp4_s_dec(fmt::nvfp4_s_enc(amax)); }

namespace {
// The amax whose S_enc is t, if 2688 / t is one: the quotient itself or a neighbour.
std::optional<float> amax_of_s_enc(float t) {
  const float q = fmt::kNvfp4GlobalNum / t;
  float lo = q, hi = q;
  for (int i = 0; i < 4; ++i) {
    if (fmt::nvfp4_s_enc(hi) == t) return hi;
    if (fmt::nvfp4_s_enc(lo) == t) return lo;
    hi = std::nextafter(hi, std::numeric_limits<float>::infinity());
    lo = std::nextafter(lo, 0.0f);
  }
  return std::nullopt;
}
}  // namespace

float static_activation_amax(float observed) {
  FP4QAT_CHECK(std::isfinite(observed) && observed >= 0, "static activation amax: the observed amax ", observed,
               " is not a finite non-negative number");
  float t = fmt::nvfp4_s_enc(observed);
  for (int i = 0; i < 256 && t > 0; ++i, t = std::nextafter(t, 0.0f)) {
    const float s = fmt::nvfp4_s_dec(t);  // the exported input_scale
    if (1.0f / s != t) continue;          // the engine's S_enc would differ
    // 1 / s == t: the rollout side's static_activation_amax_of_input_scale(s) finds this same amax
    const std::optional<float> a = amax_of_s_enc(t);
    if (a && *a >= observed) return *a;
  }
  FP4QAT_FAIL("static activation amax: no static scale found for the observed amax ", observed,
              " (activations this small cannot be served with a static scale)");
}

std::optional<float> static_activation_amax_of_input_scale(float input_scale) {
  FP4QAT_CHECK(std::isfinite(input_scale) && input_scale > 0, "input_scale ", input_scale,
               " is not a finite positive number");
  const float t = 1.0f / input_scale;  // the engine's S_enc (float32 division)
  return std::isfinite(t) ? amax_of_s_enc(t) : std::nullopt;
}

json::Value recipe_record(const NVFP4Rules& o, const std::string& serving) {
  const NVFP4Rule& w = o.weights;
  const NVFP4Rule& a = o.activations;
  const NVFP4Rule& any = w.four_over_six ? w : a;
  json::Value r =
      json::Value::object({{"activations", o.w4a16 ? "bf16" : "nvfp4"},
                           {"activation_scale", a.row_scaled ? "row" : "tensor"},
                           {"four_over_six", json::Value::object({{"weights", w.four_over_six},
                                                                  {"activations", a.four_over_six},
                                                                  {"error", any.mse ? "mse" : "mae"},
                                                                  {"e4m3_max", static_cast<int64_t>(any.e4m3_max)}})}});
  if (serving != "fp4qat") r.set("serving", serving);
  return r;
}

std::string read_serving(const json::Value& v, const std::string& where) {
  const json::Value* s = v.find("serving");
  if (!s) return "fp4qat";
  const std::string p = s->as_string(where + ": fp4qat.serving");
  try {
    return to_string(parse_serving(p));  // the names' one home: qat/recipe.cpp
  } catch (const std::exception& e) {
    FP4QAT_FAIL(where, ": fp4qat.serving: ", e.what());
  }
}

NVFP4Rules read_recipe_record(const json::Value& v, const std::string& where) {
  NVFP4Rules out;
  NVFP4Rules* o = &out;
  const std::string acts = v.at("activations", where).as_string(where + ": fp4qat.activations");
  FP4QAT_CHECK(acts == "nvfp4" || acts == "bf16", where, ": fp4qat.activations '", acts, "': expected nvfp4 or bf16");
  o->w4a16 = acts == "bf16";
  const std::string scale = v.at("activation_scale", where).as_string(where + ": fp4qat.activation_scale");
  FP4QAT_CHECK(scale == "tensor" || scale == "row", where, ": fp4qat.activation_scale '", scale,
               "': expected tensor or row");
  const json::Value& f = v.at("four_over_six", where);
  const std::string err = f.at("error", where).as_string(where + ": fp4qat.four_over_six.error");
  FP4QAT_CHECK(err == "mae" || err == "mse", where, ": fp4qat.four_over_six.error '", err, "': expected mae or mse");
  const double m = f.at("e4m3_max", where).as_double(where + ": fp4qat.four_over_six.e4m3_max");
  FP4QAT_CHECK(m == 256 || m == 448, where, ": fp4qat.four_over_six.e4m3_max must be 256 or 448, got ", m);
  for (NVFP4Rule* r : {&o->weights, &o->activations}) {
    r->e4m3_max = static_cast<float>(m);
    r->mse = err == "mse";
  }
  o->weights.four_over_six = f.at("weights", where).as_bool(where + ": fp4qat.four_over_six.weights");
  o->activations.four_over_six = f.at("activations", where).as_bool(where + ": fp4qat.four_over_six.activations");
  o->activations.row_scaled = scale == "row";
  return out;
}

HfFolderWriter::HfFolderWriter(std::string dir, ExportOptions opt)
    : dir_(std::move(dir)), opt_(std::move(opt)), shards_(dir_, opt_.max_shard_bytes) {
  FP4QAT_CHECK(opt_.engine != Engine::kAny, dir_, ": an export is laid out for one engine (vllm or sglang)");
}

void HfFolderWriter::put(const std::string& name, at::Tensor t) { shards_.add(name, std::move(t)); }

void HfFolderWriter::end_shard() { shards_.end_shard(); }

void HfFolderWriter::add_written_shard(const std::string& file,
                                       const std::vector<std::pair<std::string, at::Tensor>>& plain) {
  std::vector<std::string> names;
  int64_t bytes = 0;
  for (const auto& [name, t] : plain) {
    note_plain(name, t);
    names.push_back(name);
    bytes += t.numel() * (at::isFloatingType(t.scalar_type()) ? 2 : static_cast<int64_t>(t.element_size()));
  }
  shards_.add_written_shard(file, names, bytes);
}

void HfFolderWriter::note_plain(const std::string& name, const at::Tensor& t) {
  if (is_linear_weight(name, t.dim()) && opt_.format != Format::kBF16) excluded_.insert(module_of(name));
}

void HfFolderWriter::add_plain(const std::string& name, const at::Tensor& t) {
  note_plain(name, t);
  put(name, at::isFloatingType(t.scalar_type()) ? t.to(at::kBFloat16) : t);
}

QuantizedStack quantize_stack(Format format, Blocks blocks, const at::Tensor& w_in, int64_t parts,
                              const std::optional<at::Tensor>& amax, const std::string& what, const NVFP4Rule& rule) {
  const at::Tensor w = w_in.dim() == 2 ? w_in.unsqueeze(0) : w_in;  // [E, P*R, K]
  FP4QAT_CHECK(w.dim() == 3 && parts >= 1 && w.size(1) % parts == 0, what, ": weight of shape ", w_in.sizes(),
               " cannot hold ", parts, " stacked members");
  const int64_t E = w.size(0), R = w.size(1) / parts;
  // The compute copy: the bf16 cast of the weight, as the training forward quantizes it (always
  // a copy, so that the caller may change the weight afterwards).
  const at::Tensor wc = w.to(w.options().dtype(at::kBFloat16), /*non_blocking=*/false, /*copy=*/true);
  QuantizedStack q;
  if (format == Format::kBF16) {
    q.data = wc;
  } else if (format == Format::kNVFP4) {
    if (blocks == Blocks::k2D)
      FP4QAT_CHECK(R % fmt::kNvfp4Block == 0, what, ": ", R,
                   " rows per member do not fill whole 16x16 tiles (2d blocks)");
    std::optional<at::Tensor> a;
    if (amax) a = amax->dim() == 0 && w_in.dim() == 3 ? amax->expand({E}).contiguous() : *amax;
    if (a && w_in.dim() == 2) a = a->reshape({1});
    NVFP4Tensor t = nvfp4_quantize(wc, blocks, a, rule);  // one launch for all experts
    q.data = t.codes, q.scales = t.scales, q.s_dec = t.s_dec;
  } else {
    MXFP8Tensor t = mxfp8_quantize(wc);
    q.data = t.data, q.scales = t.scales;
  }
  return q;
}

void HfFolderWriter::add_quantized(const std::vector<std::string>& modules, int64_t parts, const at::Tensor& w,
                                   const std::optional<at::Tensor>& amax, const std::vector<float>& input_amax) {
  add_stack(
      modules, parts,
      quantize_stack(opt_.format, opt_.blocks, w, parts, amax,
                     dir_ + ": module '" + (modules.empty() ? std::string("?") : modules[0]) + "'", opt_.rules.weights),
      input_amax);
}

void HfFolderWriter::add_stack(const std::vector<std::string>& modules, int64_t parts, const QuantizedStack& q,
                               const std::vector<float>& input_amax) {
  FP4QAT_CHECK(q.data.dim() == 3 && parts >= 1 && q.data.size(1) % parts == 0, dir_, ": module '",
               modules.empty() ? std::string("?") : modules[0], "': quantized weight of shape ", q.data.sizes(),
               " cannot hold ", parts, " stacked members");
  const int64_t E = q.data.size(0), R = q.data.size(1) / parts;
  FP4QAT_CHECK(static_cast<int64_t>(modules.size()) == E * parts, dir_, ": ", modules.size(), " module names for ", E,
               " experts x ", parts, " members");
  const bool nvfp4 = opt_.format == Format::kNVFP4;
  FP4QAT_CHECK(!nvfp4 || opt_.rules.w4a16 || static_cast<int64_t>(input_amax.size()) == E * parts, dir_, ": module '",
               modules[0], "': NVFP4 needs the observed activation amax of every module (input_scale), got ",
               input_amax.size());
  // One device-to-host copy per tensor (not one per member), then the members are host slices.
  const at::Tensor data = q.data.cpu();
  if (opt_.format == Format::kBF16) {
    for (int64_t e = 0; e < E; ++e)
      for (int64_t p = 0; p < parts; ++p) put(modules[e * parts + p] + ".weight", data[e].narrow(0, p * R, R));
    return;
  }
  const at::Tensor scales = q.scales.cpu();
  const at::Tensor s_dec = nvfp4 ? q.s_dec.cpu() : at::Tensor();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t p = 0; p < parts; ++p) {
      const std::string& m = modules[e * parts + p];
      FP4QAT_CHECK(quantized_.insert(m).second, dir_, ": module '", m, "' quantized twice");
      put(m + ".weight", data[e].narrow(0, p * R, R));
      if (nvfp4) {
        put(m + ".weight_scale", scales[e].narrow(0, p * R, R));
        put(m + ".weight_scale_2", s_dec[e].clone());
        if (!opt_.rules.w4a16)  // W4A16: the activations are not quantized
          put(m + ".input_scale", at::full({}, nvfp4_input_scale(input_amax[e * parts + p]), at::kFloat));
      } else {
        put(m + "." + mxfp8_scale_suffix(opt_.engine), scales[e].narrow(0, p * R, R));
      }
    }
}

std::vector<std::string> HfFolderWriter::finish() {
  shards_.finish();  // the shards under their final names and model.safetensors.index.json

  std::vector<std::string> patterns;
  json::Value config = json::parse(opt_.config_json, dir_ + "/config.json (model config)");
  if (opt_.format != Format::kBF16) {
    std::set<std::string> excluded = excluded_;
    excluded.insert("lm_head");  // listed even when tied: engines treat it as a Linear
    patterns = exclude_list(excluded, quantized_);
    json::Value list = json::Value::array();
    for (const auto& p : patterns) list.push_back(p);
    if (opt_.format == Format::kNVFP4) {
      const char* algo = opt_.rules.w4a16 ? "W4A16_NVFP4" : "NVFP4";
      json::Value qc = json::Value::object({{"quant_method", "modelopt"},
                                            {"quant_algo", algo},
                                            {"group_size", fmt::kNvfp4Block},
                                            {"ignore", list},
                                            {"kv_cache_scheme", nullptr}});
      json::Value hqq = json::Value::object({{"quant_algo", algo},
                                             {"kv_cache_quant_algo", nullptr},
                                             {"group_size", fmt::kNvfp4Block},
                                             {"exclude_modules", list}});
      if (opt_.rules.w4a16) {  // weights only: 4-bit float groups of 16
        const json::Value groups = json::Value::object(
            {{"group_0", json::Value::object({{"targets", json::Value::array({"Linear"})},
                                              {"weights", json::Value::object({{"num_bits", 4},
                                                                               {"type", "float"},
                                                                               {"group_size", fmt::kNvfp4Block}})}})}});
        qc.set("config_groups", groups);
        hqq.set("config_groups", groups);
      }
      if (!opt_.rules.is_default() || opt_.serving != "fp4qat") {
        qc.set("fp4qat", recipe_record(opt_.rules, opt_.serving));
        hqq.set("fp4qat", recipe_record(opt_.rules, opt_.serving));
      }
      config.set("quantization_config", qc);
      json::Value hq = json::Value::object(
          {{"producer", json::Value::object({{"name", "modelopt"}, {"version", opt_.producer_version}})},
           {"quantization", hqq}});
      fs::write_text_atomic(dir_ + "/hf_quant_config.json", hq.dump(2) + "\n");
    } else if (opt_.engine == Engine::kVllm) {
      // vLLM reads MXFP8 through its ModelOpt config: exclusions under `ignore`, scales
      // X.weight_scale (its "mxfp8" spelling reads only `ignored_layers`).
      config.set("quantization_config", json::Value::object({{"quant_method", "modelopt"},
                                                             {"quant_algo", "MXFP8"},
                                                             {"group_size", fmt::kMxfp8Block},
                                                             {"ignore", list},
                                                             {"kv_cache_scheme", nullptr}}));
    } else {
      // SGLang's Fp8Config: exclusions under ignored_layers / modules_to_not_convert (literal
      // dotted paths), scales X.weight_scale_inv. (SGLang serves MXFP8 on SM100 and newer only.)
      config.set("quantization_config",
                 json::Value::object({{"quant_method", "mxfp8"},
                                      {"activation_scheme", "dynamic"},
                                      {"fmt", "e4m3"},
                                      {"weight_block_size", json::Value::array({1, fmt::kMxfp8Block})},
                                      {"scale_fmt", "ue8m0"},
                                      {"modules_to_not_convert", list},
                                      {"ignored_layers", list}}));
    }
  } else {
    config.erase("quantization_config");
  }
  fs::write_text_atomic(dir_ + "/config.json", config.dump(2) + "\n");
  return patterns;
}

at::Tensor HostBufferPool::take(int64_t nbytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(nbytes);
    if (it != free_.end()) {
      at::Tensor b = std::move(it->second);
      free_.erase(it);
      return b;
    }
    allocated_ += nbytes;
  }
  return at::empty({nbytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
}

void HostBufferPool::give_back(at::Tensor buf) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t n = buf.numel();
  free_.emplace(n, std::move(buf));
}

int64_t HostBufferPool::allocated_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocated_;
}

StagedFolder::StagedFolder(ExportOptions opt, std::shared_ptr<HostBufferPool> pool)
    : opt_(std::move(opt)), pool_(std::move(pool)) {}

StagedFolder::~StagedFolder() {
  if (taken_.empty()) return;
  try {
    seal();
    if (copied_) copied_->synchronize();  // no buffer goes back while a copy into it may run
    items_.clear();
    for (auto& b : taken_) pool_->give_back(std::move(b));
  } catch (const std::exception&) {
    // The device failed: the buffers are dropped instead of reused.
  }
}

void StagedFolder::begin_device_work(const at::Device& d) {
  c10::impl::VirtualGuardImpl impl(d.type());
  if (!side_) side_ = impl.getStreamFromGlobalPool(d, /*isHighPriority=*/false);
  FP4QAT_CHECK(side_->device() == d, "export: tensors on ", side_->device(), " and ", d, " in one staged folder");
  // The side stream's work for this call starts after everything enqueued on the current stream
  // so far (the tensors handed to this call included).
  c10::Event ready(d.type());
  ready.record(impl.getStream(d));
  ready.block(*side_);
}

void StagedFolder::keep_for_side_stream(const at::Tensor& t) {
  // The caller may free `t` as soon as add_* returns; its memory must not be handed out again
  // (to the current stream's next allocation) before the side stream has read it.
  if (t.defined() && !t.device().is_cpu() && t.device() == side_->device()) t.record_stream(*side_);
}

at::Tensor StagedFolder::to_host(const at::Tensor& t) {
  if (!t.defined()) return t;
  if (t.device().is_cpu()) return t.is_contiguous() ? t : t.contiguous();
  at::Tensor h;
  if (pool_) {
    at::Tensor buf = pool_->take(t.numel() * t.element_size());
    taken_.push_back(buf);
    h = buf.view(t.scalar_type()).view(t.sizes());
  } else {
    h = at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(true));
  }
  h.copy_(t, /*non_blocking=*/true);
  return h;
}

void StagedFolder::add_plain(const std::string& name, const at::Tensor& t, bool stable) {
  FP4QAT_CHECK(!sealed_, "export: tensor '", name, "' staged after seal()");
  Item it;
  it.name = name;
  const bool fl = at::isFloatingType(t.scalar_type());
  if (t.device().is_cpu()) {
    it.plain = t.to(t.options().dtype(fl ? at::kBFloat16 : t.scalar_type()), false, /*copy=*/true).contiguous();
  } else {
    begin_device_work(t.device());
    keep_for_side_stream(t);
    c10::StreamGuard g(*side_);
    it.plain = to_host(fl ? t.to(at::kBFloat16).contiguous() : t.contiguous());
  }
  if (!stable) mark_fenced_reads();
  it.stable = stable;
  items_.push_back(std::move(it));
}

void StagedFolder::add_quantized(const std::vector<std::string>& modules, int64_t parts, const at::Tensor& w,
                                 const std::optional<at::Tensor>& amax, const at::Tensor& input_amax) {
  add_item(modules, parts, input_amax, {w, amax ? *amax : at::Tensor()}, /*fenced=*/true, [&] {
    return quantize_stack(opt_.format, opt_.blocks, w, parts, amax,
                          "export: module '" + (modules.empty() ? std::string("?") : modules[0]) + "'",
                          opt_.rules.weights);
  });
}

void StagedFolder::add_stack(const std::vector<std::string>& modules, int64_t parts, const QuantizedStack& q,
                             const at::Tensor& input_amax) {
  add_item(modules, parts, input_amax, {q.data, q.scales, q.s_dec}, /*fenced=*/false, [&] { return q; });
}

void StagedFolder::mark_fenced_reads() {
  fence_needed_ = true;
  if (!side_) return;  // CPU tensors: copied in the add_* call itself
  if (!fenced_reads_) fenced_reads_ = std::make_unique<c10::Event>(side_->device_type());
  fenced_reads_->record(*side_);  // stream order: covers every earlier fenced read too
}

void StagedFolder::add_item(const std::vector<std::string>& modules, int64_t parts, const at::Tensor& input_amax,
                            const std::vector<at::Tensor>& reads, bool fenced,
                            const std::function<QuantizedStack()>& make) {
  FP4QAT_CHECK(!sealed_, "export: module '", modules.empty() ? std::string("?") : modules[0], "' staged after seal()");
  Item it;
  it.modules = modules;
  it.parts = parts;
  std::optional<c10::StreamGuard> g;
  if (!reads.empty() && !reads[0].device().is_cpu()) {
    begin_device_work(reads[0].device());
    for (const at::Tensor& t : reads)
      if (t.defined()) keep_for_side_stream(t);
    if (input_amax.defined()) keep_for_side_stream(input_amax);
    g.emplace(*side_);
  }
  const QuantizedStack q = make();
  it.q = {to_host(q.data), to_host(q.scales), to_host(q.s_dec)};
  if (input_amax.defined()) it.input_amax = to_host(input_amax.to(at::kFloat).reshape({-1}));
  if (fenced) mark_fenced_reads();  // after the copies: a product may alias the caller's tensor
  items_.push_back(std::move(it));
}

void StagedFolder::seal() {
  if (sealed_) return;
  sealed_ = true;
  if (!side_) return;
  copied_ = std::make_unique<c10::Event>(side_->device_type());
  copied_->record(*side_);
}

void StagedFolder::fence() {
  seal();
  if (!fenced_reads_) return;
  c10::impl::VirtualGuardImpl impl(side_->device_type());
  fenced_reads_->block(impl.getStream(side_->device()));
}

namespace {
// Whether the shards `files` in `dir` hold exactly `want` (name, shape and the dtype add_plain
// writes), in order: what an earlier write() of the same frozen tensors produced.
bool holds_exactly(const std::string& dir, const StagedFolder::StableShards& files,
                   const std::vector<std::pair<std::string, at::Tensor>>& want) {
  size_t k = 0;
  try {
    for (const auto& [file, names] : files) {
      if (!fs::exists(dir + "/" + file)) return false;
      const st::Reader r(dir + "/" + file);
      if (r.tensors().size() != names.size()) return false;
      for (const auto& n : names) {
        if (k >= want.size() || want[k].first != n) return false;
        const st::TensorInfo* t = r.find(n);
        const at::Tensor& w = want[k].second;
        const at::ScalarType as = at::isFloatingType(w.scalar_type()) ? at::kBFloat16 : w.scalar_type();
        if (!t || t->shape != w.sizes().vec() || st::to_scalar_type(t->dtype) != as) return false;
        ++k;
      }
    }
  } catch (const Error&) {
    return false;  // unreadable: written anew
  }
  return k == want.size();
}
}  // namespace

std::vector<std::string> StagedFolder::write(const std::string& dir, const std::string& reuse_dir,
                                             const StableShards& reuse) {
  seal();
  if (copied_) copied_->synchronize();
  HfFolderWriter w(dir, opt_);
  // Frozen weights apart (first, in shards of their own) when something else changes.
  std::vector<std::pair<std::string, at::Tensor>> stable;
  bool changing = false;
  for (const Item& it : items_) {
    if (it.modules.empty() && it.stable)
      stable.emplace_back(it.name, it.plain);
    else
      changing = true;
  }
  const bool apart = !stable.empty() && changing;
  reused_ = false;
  if (apart) {
    reused_ = !reuse.empty() && holds_exactly(reuse_dir, reuse, stable);
    if (reused_) {
      size_t k = 0;
      for (const auto& [file, names] : reuse) {
        std::vector<std::pair<std::string, at::Tensor>> part(stable.begin() + k, stable.begin() + k + names.size());
        w.add_written_shard(reuse_dir + "/" + file, part);
        k += names.size();
      }
    } else {
      for (const auto& [name, t] : stable) w.add_plain(name, t);
    }
    w.end_shard();
  }
  for (const Item& it : items_) {
    if (apart && it.modules.empty() && it.stable) continue;
    if (!it.modules.empty()) {
      std::vector<float> ia;
      if (it.input_amax.defined())
        ia.assign(it.input_amax.data_ptr<float>(), it.input_amax.data_ptr<float>() + it.input_amax.numel());
      w.add_stack(it.modules, it.parts, it.q, ia);
    } else {
      w.add_plain(it.name, it.plain);
    }
  }
  std::vector<std::string> excluded = w.finish();
  stable_shards_.clear();
  if (apart) {  // the first shards hold the stable tensors
    size_t n = 0;
    for (const auto& f : w.shard_files()) {
      if (n == stable.size()) break;
      stable_shards_.push_back(f);
      n += f.second.size();
    }
  }
  return excluded;
}

}  // namespace fp4qat::qat
