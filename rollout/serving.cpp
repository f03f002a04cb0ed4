// rollout/serving.cpp — see serving.h.
#include "rollout/serving.h"

#include <torch/torch.h>

#include <algorithm>
#include <optional>
#include <set>

#include "autograd/logprobs.h"
#include "autograd/mxfp8_linear.h"
#include "autograd/nvfp4_linear.h"
#include "io/names.h"
#include "kernels/common/check.h"
#include "kernels/common/formats.h"
#include "kernels/quantize.h"
#include "io/fs.h"
#include "io/hf_folder.h"
#include "model/hf_folder.h"
#include "qat/export.h"
#include "qat/marlin.h"
#include "io/json.h"
#include "io/safetensors.h"

namespace fp4qat::rollout {

void ServingPolicy::to(const at::Device& dev) {
  for (auto& [n, w] : weights_) {
    w.values = w.values.to(dev);
    if (w.s_dec.defined()) w.s_dec = w.s_dec.to(dev);
    if (w.act_amax.defined()) w.act_amax = w.act_amax.to(dev);
  }
}

autograd::NVFP4LinearOptions ServingPolicy::options(const Weight& w) const {
  autograd::NVFP4LinearOptions o = act_;
  o.activation_amax = w.act_amax;
  return o;
}

at::Tensor ServingPolicy::linear(const std::string& name, const at::Tensor& x, const at::Tensor& w) {
  auto it = weights_.find(name);
  if (it == weights_.end()) return LinearPolicy::linear(name, x, w);
  if (format_ == Format::kNVFP4)
    return autograd::nvfp4_linear_forward(x, it->second.values, it->second.s_dec, options(it->second));
  // MXFP8: the training function itself; re-quantizing MXFP8 values gives the same values back.
  torch::NoGradGuard ng;
  return autograd::mxfp8_linear(x, it->second.values.to(x.scalar_type()), autograd::Backward::kHighPrecision);
}

at::Tensor ServingPolicy::grouped(const std::string& name, const at::Tensor& x, const at::Tensor& w,
                                  const autograd::ExpertRows& rows) {
  const at::Tensor& counts = rows.counts;
  auto it = weights_.find(name);
  if (it == weights_.end()) return LinearPolicy::grouped(name, x, w, rows);
  if (format_ == Format::kNVFP4)
    return autograd::nvfp4_grouped_forward(x, it->second.values, it->second.s_dec, counts, options(it->second));
  torch::NoGradGuard ng;
  return autograd::mxfp8_grouped_linear(x.contiguous(), it->second.values.to(x.scalar_type()), counts,
                                        autograd::Backward::kHighPrecision);
}

Loaded load(const std::string& dir, const at::Device& device, const std::string& serving_override,
            hf::ShardCache* cache) {
  torch::NoGradGuard ng;
  const model::ModelConfig cfg = model::read_hf_config(dir);
  const std::string cfg_path = dir + "/config.json";
  const json::Value cj = json::parse(fs::read_text(cfg_path), cfg_path);
  Loaded out;
  autograd::NVFP4LinearOptions act;  // the activations' side of the export's NVFP4 recipe
  bool input_scale = false;          // quant_algo NVFP4 (W4A4): every quantized module has an input_scale
  bool marlin = false;               // the marlin profile: Marlin's weights (qat/marlin.h)
  bool static_act = false;           // flashinfer_static: one static activation amax per module
  std::string serving = "fp4qat";    // the serving profile recorded in the export (qat::Serving)
  if (!serving_override.empty()) qat::parse_serving(serving_override);  // refuses an unknown name
  if (const json::Value* q = cj.find("quantization_config")) {
    const std::string method =
        q->at("quant_method", cfg_path + ": quantization_config").as_string(cfg_path + ": quant_method");
    if (method == "modelopt") {
      const std::string algo =
          q->at("quant_algo", cfg_path + ": quantization_config").as_string(cfg_path + ": quant_algo");
      FP4QAT_CHECK(algo == "NVFP4" || algo == "W4A16_NVFP4" || algo == "MXFP8", cfg_path, ": quant_algo '", algo,
                   "' is not supported (NVFP4, W4A16_NVFP4 and MXFP8 are)");
      out.format = algo == "MXFP8" ? Format::kMXFP8 : Format::kNVFP4;
      act.rules.w4a16 = algo == "W4A16_NVFP4";
      input_scale = algo == "NVFP4";
      if (const json::Value* rec = q->find("fp4qat")) {  // the 2026 recipes (qat/export.h)
        const NVFP4Rules r = qat::read_recipe_record(*rec, cfg_path + ": quantization_config");
        FP4QAT_CHECK(r.w4a16 == act.rules.w4a16, cfg_path, ": quant_algo '", algo, "' and fp4qat.activations disagree");
        act.rules = r;  // the weights' rule is in the files already
        serving = qat::read_serving(*rec, cfg_path + ": quantization_config");
      }
      // The serving profile (qat::Serving): the one the trainer reproduced, or the caller's.
      // Marlin leaves the activations of a W4A4 checkpoint in bf16 and computes with its own
      // weights; per-token scales the activations per row.
      if (!serving_override.empty()) {
        FP4QAT_CHECK(algo == "NVFP4" || serving_override == "fp4qat", dir, ": a ", algo,
                     " checkpoint is served as it is; serving profile '", serving_override, "' applies to NVFP4 (W4A4)");
        serving = serving_override;
      }
      if (serving == "marlin") {
        act.rules.w4a16 = true;
        act.rules.activations = NVFP4Rule{};
        marlin = true;
      }
      if (serving == "flashinfer_per_token") act.rules.activations.row_scaled = true;
      if (serving == "flashinfer_static") {  // the engine's max6 rule with one static scale, whatever the recipe
        act.rules.activations = NVFP4Rule{};
        static_act = true;
      }
    } else {
      FP4QAT_CHECK(method == "mxfp8", cfg_path, ": quant_method '", method,
                   "' is not supported (modelopt NVFP4, mxfp8)");
      out.format = Format::kMXFP8;
    }
  }
  FP4QAT_CHECK(serving_override.empty() || serving_override == "fp4qat" || out.format == Format::kNVFP4, dir,
               ": serving profile '", serving_override, "' applies to NVFP4 checkpoints, not to ",
               qat::to_string(out.format));
  hf::FolderReader files(dir, cache);
  // Scalars (weight_scale_2, input_scale) are read on the host; codes, block scales and weights
  // from the shards' bytes copied to the device whole (hf::FolderReader::view_on).
  auto get = [&](const std::string& name) { return files.view(name); };
  auto get_on = [&](const std::string& name) { return files.view_on(name, device); };
  auto has = [&](const std::string& name) { return files.has(name); };
  // MXFP8 block scales: X.weight_scale in the vLLM layout (modelopt MXFP8), X.weight_scale_inv in
  // SGLang's (mxfp8) — qat/export.h Engine.
  const std::string mx_scale = out.format == Format::kMXFP8 && cj.at("quantization_config").find("quant_algo")
                                   ? ".weight_scale"
                                   : ".weight_scale_inv";
  // An NVFP4 module's S_dec (weight_scale_2), float32 [] on the host.
  auto weight_scale_2 = [&](const std::string& m) {
    const at::Tensor s2 = get(m + ".weight_scale_2").to(at::kFloat);
    FP4QAT_CHECK(s2.numel() == 1, dir, ": '", m, ".weight_scale_2' must be a scalar");
    return s2.reshape({});
  };
  // NVFP4 codes and block scales [rows, K/2], [rows, K/16] -> the values without S_dec, bf16.
  auto nvfp4_values = [&](const at::Tensor& codes, const at::Tensor& scales) {
    return nvfp4_dequantize({codes, scales, at::ones({}, at::TensorOptions(at::kFloat).device(device)), Blocks::k1D},
                            at::kBFloat16);
  };
  // A quantized module's values (without S_dec for NVFP4) and S_dec.
  auto decode = [&](const std::string& m) -> std::pair<at::Tensor, at::Tensor> {
    if (out.format == Format::kNVFP4)
      return {nvfp4_values(get_on(m + ".weight"), get_on(m + ".weight_scale")), weight_scale_2(m)};
    return {mxfp8_dequantize({get_on(m + ".weight"), get_on(m + mx_scale)}, at::kBFloat16), at::Tensor()};
  };
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> decoded;  // each module decoded once
  auto module = [&](const std::string& m) -> std::pair<at::Tensor, at::Tensor> {
    auto it = decoded.find(m);
    if (it != decoded.end()) return it->second;
    return decoded[m] = decode(m);
  };
  auto quantized = [&](const std::string& m) {
    return out.format == Format::kNVFP4 ? has(m + ".weight_scale")
                                        : (out.format == Format::kMXFP8 && has(m + mx_scale));
  };
  // The folder's tensors against config.json, from the headers, before anything is allocated:
  // a quantized module holds its codes and scales in place of its weight.
  model::check_folder_tensors(files, cfg, [&](const std::string& name, const std::vector<int64_t>& shape) {
    model::ExpectedTensors want;
    const std::string m = names::module_of(name);
    if (!names::is_weight(name) || shape.size() != 2 || !quantized(m)) {
      want[name] = {shape, std::nullopt};
      return want;
    }
    for (const auto& [sfx, t] :
         qat::quantized_module_tensors(out.format, input_scale, mx_scale.substr(1), shape[0], shape[1]))
      want[m + "." + sfx] = {t.second, t.first};
    return want;
  });
  // Built on the device and decoded there (the dequantization kernels equal their CPU references
  // bit for bit): nothing is initialised or decoded on the host only to be copied over.
  out.model = std::make_unique<model::Qwen3Moe>(model::model_of_folder(dir, cfg, device));
  std::map<std::string, ServingPolicy::Weight> weights;
  // NaN or Inf in a weight (or, for a quantized module, in its scales) is refused by name: one flag
  // per tensor, read back once at the end (not one host synchronisation per tensor on a GPU).
  st::FiniteChecks finite;
  std::set<std::string> filled;  // parameters written here (stacked NVFP4), not by load_hf
  std::string inexact;  // flashinfer_static: the first parameter whose static scale is not exact
  int n_inexact = 0;
  for (const auto& g : out.model->hf_groups()) {
    std::vector<std::string> mods;
    int nq = 0;
    for (const auto& n : g.names) {
      mods.push_back(names::module_of(n));
      nq += quantized(mods.back());
    }
    if (nq == 0) continue;
    FP4QAT_CHECK(nq == static_cast<int>(mods.size()), dir, ": '", mods[0], "' and the other members of '", g.param,
                 "' must all be quantized or all BF16");
    // The marlin profile: the weights Marlin computes with (qat/marlin.h), its scale factor taken
    // over the whole parameter (every expert, both members), as vLLM takes it over w13 / w2.
    double sf = 1;
    if (marlin) {
      std::vector<at::Tensor> sc;
      for (const auto& m : mods) sc.push_back(get(m + ".weight_scale").reshape({-1}));
      sf = qat::marlin_scale_factor(at::cat(sc));
    }
    auto served = [&](const std::string& m) -> std::pair<at::Tensor, at::Tensor> {
      auto [v, s] = module(m);
      if (!marlin) return {v, s};
      return {qat::marlin_values(v, get_on(m + ".weight_scale"), sf), qat::marlin_global_scale(s)};
    };
    // flashinfer_static: the amax of the static scale engines derive from the largest input_scale.
    at::Tensor act_amax;
    if (static_act) {
      float s_max = 0;
      for (const auto& m : mods) {
        const at::Tensor is = get(m + ".input_scale").to(at::kFloat);
        FP4QAT_CHECK(is.numel() == 1, dir, ": '", m, ".input_scale' must be a scalar");
        s_max = std::max(s_max, is.item<float>());
      }
      std::optional<float> a = qat::static_activation_amax_of_input_scale(s_max);
      if (!a) {
        a = fmt::kNvfp4GlobalNum / (1.0f / s_max);
        if (inexact.empty()) inexact = g.param;
        ++n_inexact;
      }
      act_amax = at::full({}, *a, at::kFloat);
    }
    if (g.tensor.dim() == 2) {
      auto [v, s] = served(mods[0]);
      weights[g.param] = {v, s, act_amax};
      continue;
    }
    const int64_t E = g.tensor.size(0), P = g.parts;
    // NVFP4 (but marlin): every module of the stack decoded in one pass, its E * P modules' codes
    // and block scales (each [R, K/2], [R, K/16], expert-major as the parameter stacks them)
    // joined: [E * P * R, K] is the parameter's [E, P * R, K], and each module's value, a view of
    // it, is the one decoded alone (the decode is per element and per block).
    at::Tensor all;
    if (out.format == Format::kNVFP4 && !marlin) {
      std::vector<at::Tensor> codes, scales;
      for (const auto& m : mods) {
        codes.push_back(get_on(m + ".weight"));
        scales.push_back(get_on(m + ".weight_scale"));
      }
      all = nvfp4_values(at::cat(codes), at::cat(scales)).view({E, P * codes[0].size(0), -1});
      for (int64_t i = 0; i < E * P; ++i)
        decoded[mods[i]] = {all[i / P].narrow(0, (i % P) * codes[0].size(0), codes[0].size(0)),
                            weight_scale_2(mods[i])};
    }
    std::vector<at::Tensor> vals, sdec;
    for (int64_t e = 0; e < E; ++e) {
      std::vector<at::Tensor> parts;
      for (int64_t p = 0; p < P; ++p) {
        auto [v, s] = served(mods[e * P + p]);
        parts.push_back(v);
        if (p == 0 && s.defined()) sdec.push_back(s);
        if (p > 0 && s.defined() && !at::equal(s, sdec.back()))
          TORCH_WARN("fp4qat: ", mods[e * P + p], ".weight_scale_2 differs from ", mods[e * P],
                     ".weight_scale_2; using the latter for both, as serving engines do");
      }
      if (!all.defined()) vals.push_back(at::cat(parts, 0));  // [P*R, K]
    }
    if (all.defined()) {
      // The model's own parameter [E, P * R, K] (float32): each module's value times its own
      // weight_scale_2, as load_hf below multiplies a module's, for the whole stack in one kernel;
      // its finiteness one flag per module (named by the module's weight and its file).
      std::vector<float> s_mod;
      std::vector<std::string> names, wheres;
      for (const auto& m : mods) {
        s_mod.push_back(decoded.at(m).second.item<float>());
        names.push_back(m + ".weight");
        wheres.push_back(dir + "/" + files.where().at(m + ".weight"));
        decoded.erase(m);
      }
      const int64_t R = g.tensor.size(1) / P;
      const at::Tensor s = at::tensor(s_mod).to(device).view({E, P, 1, 1});
      at::Tensor param = g.tensor.view({E, P, R, -1});
      at::mul_out(param, all.view({E, P, R, -1}), s);  // bf16 * float32, computed in float32
      finite.add_parts(g.tensor, std::move(names), std::move(wheres));
      filled.insert(g.param);
    }
    weights[g.param] = {all.defined() ? all : at::stack(vals), sdec.empty() ? at::Tensor() : at::stack(sdec),
                        act_amax};
  }
  if (n_inexact > 0)
    TORCH_WARN("fp4qat: ", dir, ": served with flashinfer_static: the largest input_scale of ", n_inexact,
               " quantized parameter(s) (the first: '", inexact, "') is not one an fp4qat flashinfer_static export ",
               "writes; their activation global scale is within an ulp or two of the engine's 1 / input_scale, not ",
               "bit for bit");
  // Every other tensor is a BF16 (or F32) parameter; quantized ones get their dequantized value.
  out.model->load_hf([&](const std::string& name) -> at::Tensor {
    const std::string m = names::module_of(name);
    at::Tensor t;
    if (quantized(m)) {
      auto [v, s] = module(m);
      decoded.erase(m);  // its last use
      t = s.defined() ? v.to(at::kFloat) * s : v.to(at::kFloat);
    } else {
      t = get_on(name).to(at::kFloat);
    }
    finite.add(t, name, dir + "/" + files.where().at(quantized(m) ? m + ".weight" : name));
    return t;
  }, filled);
  finite.check();
  if (cache) cache->sweep();  // what this folder did not use goes
  for (auto& [n, p] : out.model->params()) p.requires_grad_(false);
  out.policy = std::make_unique<ServingPolicy>(out.format, std::move(weights), act);
  out.policy->to(device);
  return out;
}

at::Tensor token_logprobs(const model::Qwen3Moe& m, model::LinearPolicy& p, const at::Tensor& ids, at::ScalarType dt) {
  torch::NoGradGuard ng;
  const int64_t T = ids.size(1) - 1;
  return autograd::target_logprobs(m.forward(ids.narrow(1, 0, T), dt, p).logits, ids.narrow(1, 1, T));
}

}  // namespace fp4qat::rollout
