// qat/convert.cpp — see convert.h.
#include "qat/convert.h"

#include <cstdlib>
#include <memory>

#include "kernels/common/check.h"
#include "io/fs.h"
#include "qat/gated_pairs.h"
#include "io/hf_folder.h"
#include "io/json.h"
#include "io/publish.h"
#include "qat/patterns.h"
#include "qat/quantize_checkpoint.h"
#include "qat/selection.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/hf_folder.h"

namespace fp4qat::qat {

namespace {

// The checkpoint's config and its tensors (shards in order, where each tensor lives).
struct Layout {
  json::Value config;
  std::unique_ptr<hf::FolderReader> files;
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
  l.files = std::make_unique<hf::FolderReader>(dir);
  // The tensors are the model config.json describes, before anything is written (issue 23).
  model::check_folder_tensors(*l.files, model::read_hf_config(dir));
  return l;
}

std::set<std::string> select_from(const Layout& l, const std::string& dir, const ConvertOptions& opt) {
  int64_t L = 0;
  if (const json::Value* v = l.config.find("num_hidden_layers")) L = v->as_int(dir + "/config.json: num_hidden_layers");
  // Shards are opened only to learn ranks (headers; the data stays mapped, unread).
  std::vector<ModuleUnit> units;  // every Linear of the checkpoint, one module each
  for (const auto& [name, file] : l.files->where()) {
    if (!names::is_weight(name)) continue;
    const st::TensorInfo& info = l.files->info(name);
    if (is_linear_weight(name, static_cast<int64_t>(info.shape.size()))) units.push_back({{module_of(name)}});
  }
  SelectionWords words;
  words.where = dir + ": ";
  words.modules = "--modules";
  words.exclude = "--exclude";
  words.keep = "--keep-first-n / --keep-last-n";
  words.subject = "this checkpoint";
  return select_modules(opt.selection, units, L, words);
}

}  // namespace

std::set<std::string> select_modules(const std::string& dir, const ConvertOptions& opt) {
  return select_from(read_layout(dir), dir, opt);
}

ConvertReport convert_checkpoint(const std::string& in, const std::string& out, const ConvertOptions& opt) {
  FP4QAT_CHECK(opt.format != Format::kBF16, "convert: --format must be nvfp4 or mxfp8");
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
      FP4QAT_CHECK(rp != ri && rp.rfind(ri + "/", 0) != 0 && !(existed && ::realpath(out.c_str(), b) && ri == b), out,
                   ": the output may not be the input folder or inside it");
    }
  }
  if (opt.format == Format::kNVFP4 && !opt.rules.w4a16)
    for (const auto& m : selected)
      FP4QAT_CHECK(opt.input_amax.count(m), "no calibrated activation amax for module '", m,
                   "' (NVFP4 input_scale is never a placeholder; calibrate first)");

  ConvertReport rep;
  io::write_folder_atomic(
      out,
      [&](const std::string& tmp) {
        ExportOptions eo;
        eo.format = opt.format;
        eo.engine = opt.engine;
        eo.blocks = opt.blocks;
        eo.rules = opt.rules;
        eo.config_json = l.config.dump();
        eo.producer_version = opt.producer_version;
        eo.max_shard_bytes = int64_t(1) << 62;  // one output shard per input shard (end_shard below)
        HfFolderWriter w(tmp, eo);
        auto checked = [&](const std::string& name) {  // a view of the input, refused when not finite
          const at::Tensor t = l.files->view(name);
          st::check_finite(t, name, in + "/" + l.files->where().at(name));
          return t;
        };
        auto tensor = [&](const std::string& name) { return checked(name).to(opt.device); };  // on the conversion device
        PairAmax pair_amax;  // gated pairs: the amax of the compute copies (what the export quantizes)
        const auto& where = l.files->where();
        for (const auto& file : l.files->shards()) {
          st::Reader& r = l.files->shard(file);
          for (const auto& info : r.tensors()) {
            if (!where.count(info.name) || where.at(info.name) != file) continue;  // not indexed here
            const std::string m = names::is_weight(info.name) ? module_of(info.name) : "";
            if (m.empty() || !selected.count(m)) {
              w.add_plain(info.name, checked(info.name));
              ++rep.plain_tensors;
              continue;
            }
            const at::Tensor x = tensor(info.name);
            FP4QAT_CHECK(x.size(1) % block_size(opt.format) == 0, in, "/", file, ": tensor '", info.name,
                         "' has K = ", x.size(1), ", not a multiple of the ", to_string(opt.format), " block");
            std::optional<at::Tensor> amax;
            if (gated_partner(info.name) && opt.format == Format::kNVFP4)  // the partner may live in another shard
              amax = pair_amax.of(info.name, compute_copy(x),
                                  [&](const std::string& partner) { return compute_copy(tensor(partner)); });
            std::vector<float> ia;
            if (opt.format == Format::kNVFP4 && !opt.rules.w4a16) ia.push_back(opt.input_amax.at(m));
            w.add_quantized({m}, 1, x, amax, ia);
            ++rep.quantized_modules;
          }
          w.end_shard();
          ++rep.shards;
        }
        rep.excluded = w.finish();
        std::set<std::string> shown = w.excluded_modules();
        shown.insert("lm_head");
        rep.excluded_patterns = exclude_patterns(shown, w.quantized_modules());
        // Everything else of the folder (tokenizer, generation config, README...) is copied.
        rep.tokenizer = hf::has_tokenizer(hf::serving_files(in));
        for (const auto& n : fs::list_dir(in)) {
          const std::string src = in + "/" + n;
          if (fs::is_dir(src) || n == "config.json" || n == "model.safetensors.index.json" ||
              n == "hf_quant_config.json" || ends_with(n, ".safetensors"))
            continue;
          fs::copy_file(src, tmp + "/" + n);
          ++rep.copied_files;
        }
      },
      /*replace=*/existed);
  return rep;
}

}  // namespace fp4qat::qat
