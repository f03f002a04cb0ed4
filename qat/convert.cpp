// qat/convert.cpp — see convert.h.
#include "qat/convert.h"

#include <cstdlib>
#include <memory>

#include "kernels/common/check.h"
#include "qat/fsutil.h"
#include "qat/gated_pairs.h"
#include "qat/json.h"
#include "qat/patterns.h"
#include "qat/quantize_checkpoint.h"
#include "qat/safetensors.h"

namespace fp4qat::qat {

namespace {

// The checkpoint's shards in order and where each tensor lives.
struct Layout {
  std::vector<std::string> shards;                // file names
  std::map<std::string, std::string> where;       // tensor -> file name
  json::Value config;
};

Layout read_layout(const std::string& dir) {
  FP4QAT_CHECK(fs::is_dir(dir), dir, ": not a folder");
  Layout l;
  const std::string cfg = dir + "/config.json";
  FP4QAT_CHECK(fs::exists(cfg), cfg, ": not found (expected a Hugging Face model folder)");
  l.config = json::parse(fs::read_text(cfg), cfg);
  FP4QAT_CHECK(l.config.is_object(), cfg, ": must hold a JSON object");
  FP4QAT_CHECK(l.config.find("quantization_config") == nullptr, cfg,
               ": the checkpoint is already quantized (quantization_config present); convert a BF16/FP32 one");
  const std::string index = dir + "/model.safetensors.index.json";
  if (fs::exists(index)) {
    const json::Value j = json::parse(fs::read_text(index), index);
    for (const auto& [name, file] : j.at("weight_map", index).as_object(index + ": weight_map")) {
      const std::string f = file.as_string(index + ": weight_map['" + name + "']");
      FP4QAT_CHECK(f.find('/') == std::string::npos && !f.empty() && f[0] != '.', index, ": shard name '", f,
                   "' of tensor '", name, "' is not a file name in the folder");
      l.where[name] = f;
      if (std::find(l.shards.begin(), l.shards.end(), f) == l.shards.end()) l.shards.push_back(f);
    }
    std::sort(l.shards.begin(), l.shards.end());
  } else {
    FP4QAT_CHECK(fs::exists(dir + "/model.safetensors"), dir,
                 ": neither model.safetensors.index.json nor model.safetensors found");
    l.shards = {"model.safetensors"};
    st::Reader r(dir + "/model.safetensors");
    for (const auto& t : r.tensors()) l.where[t.name] = "model.safetensors";
  }
  return l;
}


std::set<std::string> select_from(const Layout& l, const std::string& dir, const ConvertOptions& opt) {
  int64_t L = 0;
  if (const json::Value* v = l.config.find("num_hidden_layers")) L = v->as_int(dir + "/config.json: num_hidden_layers");
  FP4QAT_CHECK(opt.keep_first_n >= 0 && opt.keep_last_n >= 0, "--keep-first-n / --keep-last-n must be >= 0");
  // Readers are opened only to learn ranks (headers; the data stays mapped, unread).
  std::map<std::string, std::unique_ptr<st::Reader>> readers;
  std::vector<int> hits(opt.modules.size(), 0), ex_hits(opt.exclude.size(), 0);
  std::set<std::string> out, linear;
  for (const auto& [name, file] : l.where) {
    if (!ends_with(name, ".weight")) continue;
    auto& r = readers[file];
    if (!r) r = std::make_unique<st::Reader>(dir + "/" + file);
    const st::TensorInfo* info = r->find(name);
    FP4QAT_CHECK(info != nullptr, dir, "/", file, ": tensor '", name, "' listed in the index is missing");
    if (!is_linear_weight(name, static_cast<int64_t>(info->shape.size()))) continue;
    const std::string m = name.substr(0, name.size() - 7);
    linear.insert(m);
    bool sel = false;
    for (size_t i = 0; i < opt.modules.size(); ++i)
      if (glob_match(opt.modules[i], m)) sel = true, ++hits[i];
    for (size_t i = 0; i < opt.exclude.size(); ++i)
      if (glob_match(opt.exclude[i], m)) sel = false, ++ex_hits[i];
    const int64_t layer = layer_of(m);
    if (layer >= 0 && (layer < opt.keep_first_n || layer >= L - opt.keep_last_n)) sel = false;
    if (sel) out.insert(m);
  }
  for (size_t i = 0; i < opt.modules.size(); ++i)
    FP4QAT_CHECK(hits[i] > 0, dir, ": module pattern '", opt.modules[i], "' matches no module of this checkpoint");
  for (size_t i = 0; i < opt.exclude.size(); ++i)
    FP4QAT_CHECK(ex_hits[i] > 0, dir, ": --exclude '", opt.exclude[i], "' matches no module of this checkpoint");
  for (const auto& m : out)
    if (auto p = gated_partner(m + ".weight")) {
      const std::string partner = p->partner.substr(0, p->partner.size() - 7);
      FP4QAT_CHECK(out.count(partner), dir, ": '", m, "' is selected but its gated partner '", partner,
                   linear.count(partner) ? "' is not" : "' does not exist",
                   "; quantizing only one member of a pair is an error");
    }
  FP4QAT_CHECK(!out.empty(), dir, ": no module left to quantize (patterns, --exclude, --keep-first-n/--keep-last-n)");
  return out;
}

}  // namespace

std::set<std::string> select_modules(const std::string& dir, const ConvertOptions& opt) {
  return select_from(read_layout(dir), dir, opt);
}

ConvertReport convert_checkpoint(const std::string& in, const std::string& out, const ConvertOptions& opt) {
  FP4QAT_CHECK(opt.format != ExportFormat::kBF16, "convert: --format must be nvfp4 or mxfp8");
  const Layout l = read_layout(in);
  const std::set<std::string> selected = select_from(l, in, opt);
  FP4QAT_CHECK(!out.empty(), "--out is empty");
  const bool existed = fs::exists(out);
  if (existed) {
    FP4QAT_CHECK(fs::is_dir(out), out, ": exists and is not a folder");
    FP4QAT_CHECK(opt.overwrite || fs::list_dir(out).empty(), out, ": output folder is not empty (use --overwrite)");
    FP4QAT_CHECK(fs::read_link(out).empty(), out, ": is a symlink; give the real folder");
  }
  const std::string parent = fs::parent_dir(out);
  FP4QAT_CHECK(fs::is_dir(parent), out, ": parent folder '", parent, "' does not exist");
  // Never write over the input (e.g. --out equal to --in, or a folder inside it).
  {
    char a[4096], b[4096];
    if (::realpath(in.c_str(), a) && ::realpath(parent.c_str(), b)) {
      const std::string ri = a, rp = b;
      FP4QAT_CHECK(rp != ri && rp.rfind(ri + "/", 0) != 0 && !(existed && ::realpath(out.c_str(), b) && ri == b),
                   out, ": the output may not be the input folder or inside it");
    }
  }
  if (opt.format == ExportFormat::kNVFP4)
    for (const auto& m : selected)
      FP4QAT_CHECK(opt.input_amax.count(m), "no calibrated activation amax for module '", m,
                   "' (NVFP4 input_scale is never a placeholder; calibrate first)");

  ConvertReport rep;
  const std::string tmp = fs::temp_name_beside(out);
  fs::make_dir(tmp);
  try {
    ExportOptions eo;
    eo.format = opt.format;
    eo.blocks = opt.blocks;
    eo.config_json = l.config.dump();
    eo.producer_version = opt.producer_version;
    eo.max_shard_bytes = int64_t(1) << 62;  // one output shard per input shard (end_shard below)
    HfFolderWriter w(tmp, eo);
    std::map<std::string, std::unique_ptr<st::Reader>> readers;
    auto reader = [&](const std::string& file) -> st::Reader& {
      auto& r = readers[file];
      if (!r) r = std::make_unique<st::Reader>(in + "/" + file);
      return *r;
    };
    auto tensor = [&](const std::string& name) {  // on the conversion device
      const at::Tensor t = reader(l.where.at(name)).view(name);
      check_finite(t, name);
      return t.to(opt.device);
    };
    std::map<std::string, at::Tensor> pair_amax;  // gated-pair amax, by the member still to come
    for (const auto& file : l.shards) {
      st::Reader& r = reader(file);
      for (const auto& info : r.tensors()) {
        if (!l.where.count(info.name) || l.where.at(info.name) != file) continue;  // not indexed here
        const std::string m = ends_with(info.name, ".weight") ? info.name.substr(0, info.name.size() - 7) : "";
        if (m.empty() || !selected.count(m)) {
          w.add_plain(info.name, r.view(info.name));
          ++rep.plain_tensors;
          continue;
        }
        const at::Tensor x = tensor(info.name);
        FP4QAT_CHECK(x.size(1) % (opt.format == ExportFormat::kNVFP4 ? 16 : 32) == 0, in, "/", file, ": tensor '",
                     info.name, "' has K = ", x.size(1), ", not a multiple of the ", to_string(opt.format), " block");
        std::optional<at::Tensor> amax;
        if (auto p = gated_partner(info.name); p && opt.format == ExportFormat::kNVFP4) {
          auto it = pair_amax.find(info.name);  // computed when the partner came first
          if (it != pair_amax.end()) {
            amax = it->second;
          } else {
            const at::Tensor other = tensor(p->partner);  // may live in another shard
            amax = at::maximum(global_amax(x.to(at::kBFloat16)), global_amax(other.to(at::kBFloat16)));
            pair_amax[p->partner] = *amax;
          }
        }
        std::vector<float> ia;
        if (opt.format == ExportFormat::kNVFP4) ia.push_back(opt.input_amax.at(m));
        w.add_quantized({m}, 1, x, amax, ia);
        ++rep.quantized_modules;
      }
      w.end_shard();
      ++rep.shards;
    }
    rep.excluded_patterns = w.finish();
    // Everything else of the folder (tokenizer, generation config, README...) is copied.
    for (const auto& n : fs::list_dir(in)) {
      const std::string src = in + "/" + n;
      if (fs::is_dir(src) || n == "config.json" || n == "model.safetensors.index.json" || n == "hf_quant_config.json" ||
          ends_with(n, ".safetensors"))
        continue;
      fs::copy_file(src, tmp + "/" + n);
      ++rep.copied_files;
    }
    fs::fsync_tree(tmp);
    if (existed) {
      fs::exchange_atomic(tmp, out);
      fs::remove_tree(tmp);  // the previous contents
    } else {
      fs::rename_atomic(tmp, out);
    }
  } catch (...) {
    fs::remove_tree(tmp);
    throw;
  }
  return rep;
}

}  // namespace fp4qat::qat
