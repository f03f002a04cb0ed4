// qat/check_export.cpp — see check_export.h.
#include "qat/check_export.h"

#include <algorithm>
#include <map>
#include <set>

#include "io/fs.h"
#include "io/hf_folder.h"
#include "io/json.h"
#include "io/names.h"
#include "io/safetensors.h"
#include "kernels/common/check.h"
#include "model/config.h"
#include "model/qwen3_moe.h"
#include "qat/gated_pairs.h"

namespace fp4qat::qat {

namespace {

using st::DType;

// The linear modules of a Qwen3-MoE model of this shape, and its other tensors.
void expected_names(const model::ModelConfig& c, std::set<std::string>& linears, std::set<std::string>& others) {
  others.insert("model.embed_tokens.weight");
  others.insert("model.norm.weight");
  if (!c.tie_word_embeddings) linears.insert("lm_head");
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    for (const char* n : {"input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm"})
      others.insert(p + "." + n + ".weight");
    for (const char* n : {"q_proj", "k_proj", "v_proj", "o_proj"}) linears.insert(p + ".self_attn." + n);
    if (model::is_moe_layer(c, l)) {
      linears.insert(p + ".mlp.gate");
      for (int64_t e = 0; e < c.num_experts; ++e)
        for (const char* n : {"gate_proj", "up_proj", "down_proj"})
          linears.insert(p + ".mlp.experts." + std::to_string(e) + "." + n);
    } else {
      for (const char* n : {"gate_proj", "up_proj", "down_proj"}) linears.insert(p + ".mlp." + n);
    }
  }
}

// The members of an engine's fused module: q/k/v (qkv_proj) and gate/up (gate_up_proj) share
// one weight_scale_2. The first member's module name -> the others'.
std::vector<std::string> fused_partners(const std::string& module) {
  const auto swap_last = [&](const char* from, std::initializer_list<const char*> to) {
    std::vector<std::string> out;
    const std::string suffix = std::string(".") + from;
    if (module.size() < suffix.size() || module.compare(module.size() - suffix.size(), suffix.size(), suffix) != 0)
      return out;
    const std::string base = module.substr(0, module.size() - suffix.size());
    for (const char* t : to) out.push_back(base + "." + t);
    return out;
  };
  auto q = swap_last("q_proj", {"k_proj", "v_proj"});
  if (!q.empty()) return q;
  if (auto p = gated_partner(module + ".weight"); p && p->is_first)
    return {p->partner.substr(0, p->partner.size() - std::string(".weight").size())};
  return {};
}

// The exclusion list under `key` of `obj` (nullopt when absent), each entry a string.
std::optional<std::vector<std::string>> list_at(const json::Value& obj, const std::string& key,
                                                const std::string& where) {
  const json::Value* v = obj.find(key);
  if (!v || v->is_null()) return std::nullopt;
  std::vector<std::string> out;
  for (const auto& e : v->as_array(where + ": " + key)) out.push_back(e.as_string(where + ": " + key + "[]"));
  return out;
}

}  // namespace

ExportCheck check_export(const std::string& dir, Engine engine) {
  ExportCheck r;
  auto err = [&](const std::string& m) {
    if (r.errors.size() < 200) r.errors.push_back(m);
  };
  const std::string cfg_path = dir + "/config.json";
  FP4QAT_CHECK(fs::exists(cfg_path), dir, ": no config.json (not a Hugging Face folder)");
  const json::Value cfg = json::parse(fs::read_text(cfg_path), cfg_path);
  const model::ModelConfig mc = model::read_hf_config(dir);

  // ---- the format, from the config the engines read --------------------------------------------
  const json::Value* qc = cfg.find("quantization_config");
  std::vector<std::string> excluded;
  enum class Fmt { kBF16, kNVFP4, kW4A16, kMXFP8 } fmt = Fmt::kBF16;
  if (qc && !qc->is_null()) {
    const std::string where = cfg_path + ": quantization_config";
    const std::string method = qc->at("quant_method", where).as_string(where + ".quant_method");
    if (method == "modelopt") {
      const std::string algo = qc->at("quant_algo", where).as_string(where + ".quant_algo");
      if (algo == "NVFP4")
        fmt = Fmt::kNVFP4;
      else if (algo == "W4A16_NVFP4")
        fmt = Fmt::kW4A16;
      else if (algo == "MXFP8")
        fmt = Fmt::kMXFP8;
      else
        err(where + ".quant_algo '" + algo + "': not an algorithm this checker knows (NVFP4, W4A16_NVFP4, MXFP8)");
      const int64_t group = fmt == Fmt::kMXFP8 ? 32 : 16;
      if (qc->find("group_size") == nullptr || qc->at("group_size").as_int(where + ".group_size") != group)
        err(where + ".group_size must be " + std::to_string(group) + " for " + algo);
      const auto ignore = list_at(*qc, "ignore", where);
      if (!ignore) err(where + ": no 'ignore' list (engines would quantize every linear, lm_head included)");
      excluded = ignore.value_or(std::vector<std::string>{});
      const std::string hq_path = dir + "/hf_quant_config.json";
      if (fmt == Fmt::kMXFP8) {
        // vLLM's ModelOpt MXFP8 layout: no hf_quant_config.json needed.
      } else if (!fs::exists(hq_path)) {
        r.warnings.push_back(hq_path + ": missing (ModelOpt checkpoints carry it; the engines read config.json's)");
      } else {
        const json::Value hq = json::parse(fs::read_text(hq_path), hq_path);
        const json::Value& q = hq.at("quantization", hq_path);
        if (q.at("quant_algo", hq_path).as_string(hq_path + ": quantization.quant_algo") != algo)
          err(hq_path + ": quantization.quant_algo differs from config.json's '" + algo + "'");
        const auto ex = list_at(q, "exclude_modules", hq_path + ": quantization");
        if (!ex || *ex != excluded)
          err(hq_path + ": quantization.exclude_modules differs from config.json's quantization_config.ignore");
      }
    } else if (method == "mxfp8") {
      fmt = Fmt::kMXFP8;
      const auto a = list_at(*qc, "modules_to_not_convert", where), b = list_at(*qc, "ignored_layers", where);
      if (!a && !b) err(where + ": no exclusion list (modules_to_not_convert / ignored_layers)");
      if (a && b && *a != *b) err(where + ": modules_to_not_convert and ignored_layers differ");
      excluded = b ? *b : a.value_or(std::vector<std::string>{});
    } else {
      err(where + ".quant_method '" + method + "': not a format this checker knows (modelopt, mxfp8)");
    }
  }
  r.format = fmt == Fmt::kNVFP4 ? "nvfp4" : fmt == Fmt::kW4A16 ? "w4a16_nvfp4" : fmt == Fmt::kMXFP8 ? "mxfp8" : "bf16";
  for (const auto& e : excluded)
    if (e.find('*') != std::string::npos || e.find('?') != std::string::npos) {
      // SGLang's Fp8Config matches its list literally: a wildcard excludes nothing there.
      if (fmt == Fmt::kMXFP8)
        err("exclusion '" + e + "' is a pattern: SGLang matches MXFP8 exclusions literally (it excludes nothing)");
      else
        r.warnings.push_back("exclusion '" + e + "' is a pattern: prefer explicit module paths");
    }
  const std::set<std::string> excluded_set(excluded.begin(), excluded.end());
  // A module counts as excluded when it, or its fused experts module, is listed.
  // As the engines decide: listed, or an expert of a layer with any listed path under its fused
  // <...>.experts (that excludes the whole fused MoE).
  auto is_excluded = [&](const std::string& m) {
    if (excluded_set.count(m)) return true;
    const std::string fused = names::fused_experts(m);
    if (fused.empty()) return false;
    if (excluded_set.count(fused)) return true;
    const auto it = excluded_set.lower_bound(fused + ".");
    return it != excluded_set.end() && it->rfind(fused + ".", 0) == 0;
  };

  // ---- the tensors ---------------------------------------------------------------------------
  hf::FolderReader reader(dir);
  std::map<std::string, std::map<std::string, const st::TensorInfo*>> by_module;  // module -> suffix -> info
  for (const auto& [name, file] : reader.where()) {
    ++r.tensors;
    const size_t dot = name.rfind('.');
    by_module[dot == std::string::npos ? name : name.substr(0, dot)]
             [dot == std::string::npos ? "" : name.substr(dot + 1)] = &reader.info(name);
  }
  std::set<std::string> linears, others;
  expected_names(mc, linears, others);
  for (const auto& t : others)
    if (!reader.has(t)) err("tensor '" + t + "' missing (config.json's model has it)");

  // MXFP8: the scale name the engine expects (kAny: the one the folder uses, reported). vLLM's
  // "mxfp8" spelling reads its exclusions from ignored_layers alone.
  std::string mx_scale = mxfp8_scale_suffix(engine);
  if (fmt == Fmt::kMXFP8 && engine == Engine::kVllm && qc && qc->find("quant_algo") == nullptr &&
      qc->find("ignored_layers") == nullptr)
    err("quantization_config: vLLM reads quant_method mxfp8's exclusions from ignored_layers only");
  if (fmt == Fmt::kMXFP8 && engine == Engine::kAny) {
    int inv = 0, plain = 0;
    for (const auto& [m, sfx] : by_module) inv += sfx.count("weight_scale_inv"), plain += sfx.count("weight_scale");
    mx_scale = plain > inv ? "weight_scale" : "weight_scale_inv";
    r.warnings.push_back(std::string("MXFP8 scales named ") + mx_scale + ": loads in " +
                         (plain > inv ? "vLLM, not SGLang" : "SGLang, not vLLM") + " (check with --engine)");
  }

  std::map<std::string, std::string> s2;  // NVFP4: module -> weight_scale_2 bytes (pairs compared below)
  for (const auto& m : linears) {
    auto it = by_module.find(m);
    if (it == by_module.end() || !it->second.count("weight")) {
      err("module '" + m + "': no " + m + ".weight (config.json's model has this linear)");
      continue;
    }
    const auto& t = it->second;
    const st::TensorInfo& w = *t.at("weight");
    const bool quantized = fmt != Fmt::kBF16 && !is_excluded(m);
    std::map<std::string, std::pair<DType, std::vector<int64_t>>> want;  // suffix -> dtype, shape
    if (quantized && (fmt == Fmt::kNVFP4 || fmt == Fmt::kW4A16)) {
      ++r.quantized_modules;
      if (w.shape.size() != 2) {
        err("module '" + m + "': weight of shape " + st::shape_str(w.shape) + " is not 2-D");
        continue;
      }
      want = quantized_module_tensors(Format::kNVFP4, fmt == Fmt::kNVFP4, "", w.shape[0], w.shape[1] * 2);
    } else if (quantized) {
      ++r.quantized_modules;
      if (w.shape.size() != 2) {
        err("module '" + m + "': weight of shape " + st::shape_str(w.shape) + " is not 2-D");
        continue;
      }
      want = quantized_module_tensors(Format::kMXFP8, false, mx_scale, w.shape[0], w.shape[1]);
    } else {
      ++r.bf16_modules;
      want["weight"] = {DType::BF16, w.shape};
      if (fmt != Fmt::kBF16 && w.dtype != DType::BF16)
        err("module '" + m + "' is listed as excluded but its weight is " + st::dtype_name(w.dtype) +
            ": the engine would load it as BF16");
    }
    for (const auto& [sfx, dt_shape] : want) {
      auto f = t.find(sfx);
      if (f == t.end()) {
        err("module '" + m + "': " + m + "." + sfx +
            " missing (the engine leaves that parameter at its initial value)");
        continue;
      }
      const st::TensorInfo& i = *f->second;
      if (i.dtype != dt_shape.first && !(sfx == "weight" && !quantized))
        err(i.name + ": " + st::dtype_name(i.dtype) + ", the engine expects " + st::dtype_name(dt_shape.first));
      if (i.shape != dt_shape.second && !(sfx == "weight_scale_2" || sfx == "input_scale") &&
          !(sfx == "weight" && !quantized))
        err(i.name + ": shape " + st::shape_str(i.shape) + ", the engine expects " + st::shape_str(dt_shape.second));
      if ((sfx == "weight_scale_2" || sfx == "input_scale") && !(i.shape.empty() || i.shape == std::vector<int64_t>{1}))
        err(i.name + ": shape " + st::shape_str(i.shape) + ", the engine expects one scalar");
    }
    for (const auto& [sfx, info] : t)
      if (!want.count(sfx) && sfx != "bias")
        err(info->name + ": the engine would not load it (" +
            (quantized ? "a " + r.format + " module has no '" + sfx + "'" : "module '" + m + "' is kept in BF16") +
            ")");
    if (quantized && (fmt == Fmt::kNVFP4 || fmt == Fmt::kW4A16) && t.count("weight_scale_2")) {
      const at::Tensor v = reader.view(m + ".weight_scale_2");
      s2[m] = std::string(static_cast<const char*>(v.data_ptr()), v.numel() * v.element_size());
      if (fmt == Fmt::kW4A16 && t.count("weight_scale")) {
        const at::Tensor sb = reader.view(m + ".weight_scale").view(at::kByte);
        if (sb.eq(0x80).any().item<bool>())
          err(m + ".weight_scale: a negative-zero block scale (0x80): Marlin's re-encoding assumes none");
      }
    }
  }
  // The engines quantize a layer's experts all or none (one fused MoE, one method).
  if (fmt != Fmt::kBF16) {
    std::map<std::string, std::pair<int, int>> experts;  // "<...>.experts" -> (quantized, BF16)
    for (const auto& m : linears) {
      const std::string fused = names::fused_experts(m);
      if (fused.empty() || !reader.has(m + ".weight")) continue;
      auto& c = experts[fused];
      (reader.info(m + ".weight").dtype == DType::BF16 ? c.second : c.first)++;
    }
    for (const auto& [fused, c] : experts)
      if (c.first > 0 && c.second > 0)
        err("'" + fused + "': " + std::to_string(c.first) + " expert linears quantized and " +
            std::to_string(c.second) + " in BF16: the engines quantize a layer's experts all or none");
  }
  for (const auto& [m, bytes] : s2)
    for (const auto& p : fused_partners(m)) {
      auto it = s2.find(p);
      if (it != s2.end() && it->second != bytes)
        err("'" + m + "' and '" + p + "' have different weight_scale_2: the engine fuses them and keeps one");
    }
  // Every listed exclusion names a module the folder has (a typo excludes nothing).
  for (const auto& e : excluded) {
    const bool fused = e.size() > 8 && e.compare(e.size() - 8, 8, ".experts") == 0;
    bool known = linears.count(e) > 0;
    if (fused)
      for (auto it = linears.lower_bound(e + "."); it != linears.end() && it->rfind(e + ".", 0) == 0; ++it)
        known = known || is_excluded(*it);
    if (!known && e.find('*') == std::string::npos)
      r.warnings.push_back("exclusion '" + e + "' names no linear module of this model");
  }
  for (const auto& [m, sfx] : by_module)
    if (!linears.count(m))
      for (const auto& [s, info] : sfx)
        if (!others.count(info->name))
          err(info->name + ": not a tensor of config.json's model (the engine would skip it)");

  const auto serving = hf::serving_files(dir);
  if (!hf::has_tokenizer(serving))
    r.warnings.push_back(
        "no tokenizer (tokenizer.json, tokenizer.model or vocab.json): vLLM loads an empty one "
        "instead of failing; serve with --tokenizer");
  return r;
}

}  // namespace fp4qat::qat
