// trainer/config.cpp — see config.h. One schema table maps key paths to typed members; YAML
// files, --set overrides and dump() all go through it, so a key exists once.
#include "trainer/config.h"

#include "trainer/rewards.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <functional>
#include <set>
#include <sstream>

#include "kernels/common/check.h"
#include "io/fs.h"
#include "io/http.h"
#include "io/json.h"

namespace fp4qat::config {

namespace {

template <typename T>
T parse_scalar(const YAML::Node& n, const std::string& where, const char* what) {
  FP4QAT_CHECK(n.IsScalar(), where, ": expected ", what, ", got a ",
               n.IsSequence() ? "list" : (n.IsMap() ? "map" : "null"));
  try {
    return n.as<T>();
  } catch (const YAML::Exception&) {
    FP4QAT_FAIL(where, ": expected ", what, ", got '", n.Scalar(), "'");
  }
}

template <typename T>
struct Parse;
template <>
struct Parse<int64_t> {
  static int64_t get(const YAML::Node& n, const std::string& w) { return parse_scalar<int64_t>(n, w, "an integer"); }
};
template <>
struct Parse<uint64_t> {
  static uint64_t get(const YAML::Node& n, const std::string& w) {
    FP4QAT_CHECK(!n.IsScalar() || n.Scalar().empty() || n.Scalar()[0] != '-', w,
                 ": expected a non-negative integer, got '", n.Scalar(), "'");
    return parse_scalar<uint64_t>(n, w, "a non-negative integer");
  }
};
template <>
struct Parse<double> {
  // Every number key is finite: .inf and .nan pass checks such as "> 0" and fail only later (a
  // learning rate of .inf after writing the run folder).
  static double get(const YAML::Node& n, const std::string& w) {
    const double v = parse_scalar<double>(n, w, "a number");
    FP4QAT_CHECK(std::isfinite(v), w, ": must be a finite number (got '", n.Scalar(), "')");
    return v;
  }
};
template <>
struct Parse<bool> {
  static bool get(const YAML::Node& n, const std::string& w) { return parse_scalar<bool>(n, w, "true or false"); }
};
template <>
struct Parse<std::string> {
  static std::string get(const YAML::Node& n, const std::string& w) {
    if (n.IsNull()) return "";
    FP4QAT_CHECK(n.IsScalar(), w, ": expected a string");
    return n.Scalar();
  }
};
template <typename E>
struct Parse<std::vector<E>> {
  static std::vector<E> get(const YAML::Node& n, const std::string& w) {
    if (n.IsNull()) return {};
    FP4QAT_CHECK(n.IsSequence(), w, ": expected a list");
    std::vector<E> out;
    for (size_t i = 0; i < n.size(); ++i) out.push_back(Parse<E>::get(n[i], w + "[" + std::to_string(i) + "]"));
    return out;
  }
};

template <typename T>
YAML::Node to_node(const T& v) {
  return YAML::Node(v);
}
YAML::Node to_node(const double& v) {  // shortest text that reads back to the same double
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return YAML::Node(std::string(buf, r.ptr));
}
template <typename E>
YAML::Node to_node(const std::vector<E>& v) {
  YAML::Node n(YAML::NodeType::Sequence);
  for (const auto& e : v) n.push_back(e);
  n.SetStyle(YAML::EmitterStyle::Flow);
  return n;
}

struct Field {
  std::string section, key;
  std::function<void(const YAML::Node&, const std::string& where)> set;
  std::function<YAML::Node()> get;
  std::string path() const { return section.empty() ? key : section + "." + key; }
};

template <typename T>
using Check = std::function<std::string(const T&)>;  // "" when valid, else why not

template <typename T>
Check<T> positive() {
  return [](const T& v) { return v > 0 ? std::string() : "must be > 0"; };
}
template <typename T>
Check<T> non_negative() {
  return [](const T& v) { return v >= 0 ? std::string() : "must be >= 0"; };
}
template <typename T>
Check<T> at_most(T lo, T hi, const char* why) {  // lo <= v <= hi, why: the reason for hi
  return [lo, hi, why](const T& v) {
    std::ostringstream os;
    if (v >= lo && v <= hi) return std::string();
    os << "must be in [" << lo << ", " << hi << "] (" << why << ")";
    return os.str();
  };
}
Check<double> in_range(double lo, double hi) {
  return [lo, hi](const double& v) {
    std::ostringstream os;
    if (v >= lo && v <= hi) return std::string();
    os << "must be in [" << lo << ", " << hi << "]";
    return os.str();
  };
}
Check<std::string> one_of(std::vector<std::string> allowed) {
  return [allowed](const std::string& v) {
    std::string list;
    for (const auto& a : allowed) {
      if (v == a) return std::string();
      list += (list.empty() ? "" : " | ") + a;
    }
    return "must be one of " + list + " (got '" + v + "')";
  };
}

// The spelling of an enum's values in a recipe, e.g. {{"1d", Blocks::k1D}, {"2d", Blocks::k2D}}.
template <typename E>
using Names = std::vector<std::pair<std::string, E>>;

template <typename E>
E parse_name(const Names<E>& names, const std::string& v, const std::string& where) {
  std::string list;
  for (const auto& [n, e] : names) {
    if (v == n) return e;
    list += (list.empty() ? "" : " | ") + n;
  }
  FP4QAT_FAIL(where, ": must be one of ", list, " (got '", v, "')");
}

template <typename E>
std::string name_of(const Names<E>& names, E e) {
  for (const auto& [n, v] : names)
    if (v == e) return n;
  return "?";
}

const Names<qat::Format> kQatFormats = {
    {"none", qat::Format::kBF16}, {"nvfp4", qat::Format::kNVFP4}, {"mxfp8", qat::Format::kMXFP8}};
const Names<qat::Format> kExportFormats = {
    {"nvfp4", qat::Format::kNVFP4}, {"mxfp8", qat::Format::kMXFP8}, {"bf16", qat::Format::kBF16}};
const Names<Blocks> kBlocks = {{"1d", Blocks::k1D}, {"2d", Blocks::k2D}};
const Names<qat::Engine> kEngines = {{"vllm", qat::Engine::kVllm}, {"sglang", qat::Engine::kSglang}};
const Names<autograd::Backward> kBackwards = {{"high_precision", autograd::Backward::kHighPrecision},
                                              {"dequantized", autograd::Backward::kDequantized}};
const Names<qat::FourOverSix> kFourOverSix = {{"none", qat::FourOverSix::kNone},
                                              {"weights", qat::FourOverSix::kWeights},
                                              {"activations", qat::FourOverSix::kActivations},
                                              {"all", qat::FourOverSix::kAll}};
const Names<bool> kBlockErrors = {{"mae", false}, {"mse", true}};
const Names<qat::ActivationScale> kActivationScales = {{"tensor", qat::ActivationScale::kTensor},
                                                       {"row", qat::ActivationScale::kRow}};
const Names<qat::Activations> kActivations = {{"nvfp4", qat::Activations::kNVFP4}, {"bf16", qat::Activations::kBF16}};
const Names<qat::Serving> kServings = {{"fp4qat", qat::Serving::kFp4qat},
                                       {"marlin", qat::Serving::kMarlin},
                                       {"flashinfer_per_token", qat::Serving::kPerToken},
                                       {"flashinfer_static", qat::Serving::kStatic}};
const Names<grpo::Correction> kCorrections = {
    {"tis", grpo::Correction::kTis}, {"mask", grpo::Correction::kMask}, {"none", grpo::Correction::kNone}};
const Names<qat::TrainScope> kTrainScopes = {{"all", qat::TrainScope::kAll},
                                             {"quantized_only", qat::TrainScope::kQuantizedOnly}};

class Schema {
 public:
  explicit Schema(Config& c) {
    add("", "model_config", &c.model_config);
    add("", "objective", &c.objective, one_of({"lm", "sft", "grpo"}));
    auto& m = c.model;
    add("model", "vocab_size", &m.vocab_size, positive<int64_t>());
    add("model", "hidden_size", &m.hidden_size, positive<int64_t>());
    add("model", "num_hidden_layers", &m.num_hidden_layers, positive<int64_t>());
    add("model", "num_attention_heads", &m.num_attention_heads, positive<int64_t>());
    add("model", "num_key_value_heads", &m.num_key_value_heads, positive<int64_t>());
    add("model", "head_dim", &m.head_dim, positive<int64_t>());
    add("model", "intermediate_size", &m.intermediate_size, positive<int64_t>());
    add("model", "moe_intermediate_size", &m.moe_intermediate_size, positive<int64_t>());
    add("model", "num_experts", &m.num_experts, positive<int64_t>());
    add("model", "num_experts_per_tok", &m.num_experts_per_tok, positive<int64_t>());
    add("model", "norm_topk_prob", &m.norm_topk_prob);
    add("model", "rms_norm_eps", &m.rms_norm_eps, in_range(0, 1));
    add("model", "rope_theta", &m.rope_theta, positive<double>());
    add("model", "max_position_embeddings", &m.max_position_embeddings, positive<int64_t>());
    add("model", "tie_word_embeddings", &m.tie_word_embeddings);
    add("model", "mlp_only_layers", &m.mlp_only_layers);
    add("model", "decoder_sparse_step", &m.decoder_sparse_step, positive<int64_t>());
    add("model", "router_aux_loss_coef", &m.router_aux_loss_coef, non_negative<double>());
    auto& o = c.optim;
    add("optim", "lr", &o.lr, positive<double>());
    add("optim", "min_lr_ratio", &o.min_lr_ratio, in_range(0, 1));
    add("optim", "warmup_steps", &o.warmup_steps, non_negative<int64_t>());
    add("optim", "weight_decay", &o.weight_decay, non_negative<double>());
    add("optim", "beta1", &o.beta1, in_range(0, 0.999999));
    add("optim", "beta2", &o.beta2, in_range(0, 0.999999999));
    add("optim", "eps", &o.eps, positive<double>());
    add("optim", "grad_clip", &o.grad_clip, non_negative<double>());
    auto& t = c.train;
    add("train", "steps", &t.steps, positive<int64_t>());
    add("train", "batch_size", &t.batch_size, positive<int64_t>());
    add("train", "seq_len", &t.seq_len, positive<int64_t>());
    add("train", "grad_accum", &t.grad_accum, positive<int64_t>());
    add("train", "eval_every", &t.eval_every, non_negative<int64_t>());
    add("train", "eval_batches", &t.eval_batches, positive<int64_t>());
    add("train", "log_every", &t.log_every, positive<int64_t>());
    add("train", "checkpoint_every", &t.checkpoint_every, non_negative<int64_t>());
    add("train", "seed", &t.seed);
    add("train", "device", &t.device, one_of({"auto", "cpu", "cuda"}));
    add("train", "dtype", &t.dtype, one_of({"auto", "bf16", "fp32"}));
    add("train", "activation_checkpointing", &t.activation_checkpointing);
    add("train", "final_checkpoint", &t.final_checkpoint);
    add("train", "out_dir", &t.out_dir);
    add("train", "init_from", &t.init_from);
    auto& d = c.data;
    add("data", "kind", &d.kind, one_of({"synthetic", "tokens", "rollouts"}));
    add("data", "path", &d.path);
    add("data", "val_fraction", &d.val_fraction, in_range(0, 0.5));
    add("data", "max_operand", &d.max_operand,
        at_most<int64_t>(1, 100000000000000000, "the sum of two operands must fit in 64 bits"));
    add("data", "packing", &d.packing);
    auto& q = c.qat;
    add_enum("qat", "format", &q.format, kQatFormats);
    add("qat", "modules", &q.selection.modules);
    add("qat", "exclude", &q.selection.exclude);
    add_enum("qat", "weight_blocks", &q.weight_blocks, kBlocks);
    add_enum("qat", "backward", &q.backward, kBackwards);
    add("qat", "keep_first_n", &q.selection.keep_first_n, non_negative<int64_t>());
    add("qat", "keep_last_n", &q.selection.keep_last_n, non_negative<int64_t>());
    add_enum("qat", "train", &q.train, kTrainScopes);
    add("qat", "cache_weights", &q.cache_weights);
    add_enum("qat", "four_over_six", &q.four_over_six, kFourOverSix);
    add_enum("qat", "four_over_six_error", &q.four_over_six_mse, kBlockErrors);
    add("qat", "four_over_six_e4m3_max", &q.four_over_six_e4m3_max, Check<double>([](const double& v) {
          return v == 256 || v == 448 ? std::string() : "must be 256 (TransformerEngine's) or 448 (FlashInfer's)";
        }));
    add_enum("qat", "activation_scale", &q.activation_scale, kActivationScales);
    add_enum("qat", "activations", &q.activations, kActivations);
    add_enum("qat", "serving", &q.serving, kServings);
    auto& x = c.exports;
    add("export", "every", &x.every, Check<int64_t>([](const int64_t& v) {
          return v >= -1 ? std::string() : "must be >= 0 (or -1: every step when qat.format is not none)";
        }));
    add("export", "keep", &x.keep, positive<int64_t>());
    add("export", "probe_mismatch", &x.probe_mismatch);
    add_enum_list("export", "formats", &x.formats, kExportFormats);
    add_enum("export", "engine", &x.engine, kEngines);
    add("export", "push_url", &x.push_url, Check<std::string>([](const std::string& v) {
          if (v.empty()) return std::string();
          const bool scheme =
              (v.rfind("http://", 0) == 0 && v.size() > 7) || (v.rfind("https://", 0) == 0 && v.size() > 8);
          if (!scheme) return "must be an http:// or https:// URL (or empty: no push), got '" + v + "'";
          if (!http::available())
            return std::string(
                "this build of fp4qat has no libcurl, which pushing needs: install libcurl4-openssl-dev "
                "(scripts/setup does) and reconfigure the build, or leave export.push_url empty");
          return std::string();
        }));
    add("export", "push_body", &x.push_body, Check<std::string>([](const std::string& v) {
          if (v.find("{path}") == std::string::npos)
            return std::string("must contain {path} (the export's folder), e.g. ") + ExportConfig().push_body;
          ExportConfig probe;
          probe.push_body = v;
          const std::string body = probe.push_request("/a \"b\"/step-1/nvfp4", 1);
          try {
            json::parse(body, "export.push_body");
          } catch (const Error& e) {
            return "must be JSON once {path} is replaced (write it inside a string: \"{path}\"): " +
                   std::string(e.what());
          }
          return std::string();
        }));
    add("export", "push_timeout_s", &x.push_timeout_s, Check<double>([](const double& v) {
          return v > 0 && std::isfinite(v) ? std::string() : "must be > 0 (seconds)";
        }));
    add("export", "push_required", &x.push_required);
    auto& pp = c.parallel;
    add("parallel", "dp", &pp.dp, Check<int64_t>([](const int64_t& v) {
          return v == -1 || v >= 1 ? std::string() : "must be >= 1 (or -1: WORLD_SIZE / parallel.ep)";
        }));
    add("parallel", "ep", &pp.ep, positive<int64_t>());
    add("parallel", "bucket_mb", &pp.bucket_mb,
        Check<double>([](const double& v) { return v > 0 ? std::string() : "must be > 0"; }));
    add("parallel", "timeout_s", &pp.timeout_s, positive<int64_t>());
    auto& rl = c.rl;
    add("rl", "clip_low", &rl.loss.clip_low, Check<double>([](const double& v) {
          return v > 0 && v < 1 ? std::string() : "must be in (0, 1) (the ratio is clipped below at 1 - clip_low)";
        }));
    add("rl", "clip_high", &rl.loss.clip_high, positive<double>());
    add("rl", "adv_std_normalize", &rl.adv_std_normalize);
    add("rl", "router_replay", &rl.router_replay);
    add_enum("rl", "correction", &rl.loss.correction, kCorrections);
    add("rl", "tis_cap", &rl.loss.tis_cap, Check<double>([](const double& v) {
          return v >= 1 ? std::string() : "must be >= 1 (the importance weight min(m, C) is truncated at C)";
        }));
    add("rl", "mask_low", &rl.loss.mask_low,
        Check<double>([](const double& v) { return v >= 0 && v <= 1 ? std::string() : "must be in [0, 1]"; }));
    add("rl", "mask_high", &rl.loss.mask_high,
        Check<double>([](const double& v) { return v >= 1 ? std::string() : "must be >= 1"; }));
    add("rl", "kl_coef", &rl.loss.kl_coef, non_negative<double>());
    add("rl", "iterations", &rl.iterations, non_negative<int64_t>());
    add("rl", "prompts", &rl.prompts, positive<int64_t>());
    add("rl", "samples", &rl.samples, Check<int64_t>([](const int64_t& v) {
          return v >= 2 ? std::string() : "must be >= 2 (a GRPO group compares responses to one prompt)";
        }));
    add("rl", "max_new_tokens", &rl.max_new_tokens, positive<int64_t>());
    add("rl", "sample_batch", &rl.sample_batch, positive<int64_t>());
    add("rl", "updates_per_rollout", &rl.updates_per_rollout, positive<int64_t>());
    add("rl", "temperature", &rl.temperature, Check<double>([](const double& v) {
          return v > 0 && std::isfinite(v) ? std::string() : "must be > 0 (the loop samples)";
        }));
    add("rl", "top_p", &rl.top_p,
        Check<double>([](const double& v) { return v > 0 && v <= 1 ? std::string() : "must be in (0, 1]"; }));
    add("rl", "reward", &rl.reward, Check<std::string>([](const std::string& v) {
          try {
            rewards::by_name(v);
            return std::string();
          } catch (const std::exception& e) {
            return std::string(e.what());
          }
        }));
    add_enum("rl", "sample_format", &rl.sample_format, kExportFormats);
    add("rl", "seed", &rl.seed);
    add("rl", "sample_serving", &rl.sample_serving, Check<std::string>([](const std::string& v) {
          if (v.empty()) return std::string();
          try {
            qat::parse_serving(v);
            return std::string();
          } catch (const std::exception& e) {
            return std::string(e.what());
          }
        }));
  }

  const Field* find(const std::string& path) const {
    for (const auto& f : fields_)
      if (f.path() == path) return &f;
    return nullptr;
  }
  bool is_section(const std::string& s) const {
    for (const auto& f : fields_)
      if (!f.section.empty() && f.section == s) return true;
    return false;
  }
  std::string keys_of(const std::string& section) const {
    std::string out;
    for (const auto& f : fields_)
      if (f.section == section) out += (out.empty() ? "" : ", ") + f.key;
    for (const auto& s : {"model", "optim", "train", "data", "qat", "export", "parallel", "rl"})
      if (section.empty()) out += std::string(", ") + s;
    return out;
  }
  const std::vector<Field>& fields() const { return fields_; }

 private:
  template <typename T>
  void add(const std::string& section, const std::string& key, T* p, Check<T> check = nullptr) {
    Field f;
    f.section = section;
    f.key = key;
    f.set = [p, check](const YAML::Node& n, const std::string& where) {
      T v = Parse<T>::get(n, where);
      if (check) {
        const std::string why = check(v);
        FP4QAT_CHECK(why.empty(), where, ": ", why);
      }
      *p = v;
    };
    f.get = [p] { return to_node(*p); };
    fields_.push_back(std::move(f));
  }
  template <typename E>
  void add_enum(const std::string& section, const std::string& key, E* p, const Names<E>& names) {
    Field f;
    f.section = section;
    f.key = key;
    f.set = [p, names](const YAML::Node& n, const std::string& where) {
      *p = parse_name(names, Parse<std::string>::get(n, where), where);
    };
    f.get = [p, names] { return YAML::Node(name_of(names, *p)); };
    fields_.push_back(std::move(f));
  }
  // A list of distinct enum values.
  template <typename E>
  void add_enum_list(const std::string& section, const std::string& key, std::vector<E>* p, const Names<E>& names) {
    Field f;
    f.section = section;
    f.key = key;
    f.set = [p, names](const YAML::Node& n, const std::string& where) {
      std::vector<E> v;
      for (const auto& s : Parse<std::vector<std::string>>::get(n, where)) {
        const E e = parse_name(names, s, where);
        for (const E& prev : v) FP4QAT_CHECK(prev != e, where, ": format '", s, "' listed twice");
        v.push_back(e);
      }
      *p = v;
    };
    f.get = [p, names] {
      std::vector<std::string> v;
      for (const E& e : *p) v.push_back(name_of(names, e));
      return to_node(v);
    };
    fields_.push_back(std::move(f));
  }
  std::vector<Field> fields_;
};

// Applies map `node` at `section` ("" = top level); `source` names the file for messages.
void apply_map(const Schema& schema, const YAML::Node& node, const std::string& section, const std::string& source) {
  if (node.IsNull()) return;
  FP4QAT_CHECK(node.IsMap(), source, ": ", section.empty() ? "the document" : "'" + section + "'", " must be a map");
  for (const auto& kv : node) {
    FP4QAT_CHECK(kv.first.IsScalar(), source, ":", kv.first.Mark().line + 1, ": ",
                 section.empty() ? "a top-level key" : "a key in '" + section + "'",
                 " is not a plain name (a YAML complex key: '? ...')");
    const std::string key = kv.first.Scalar();
    const std::string path = section.empty() ? key : section + "." + key;
    if (section.empty() && schema.is_section(key)) {
      apply_map(schema, kv.second, key, source);
      continue;
    }
    const Field* f = schema.find(path);
    FP4QAT_CHECK(f != nullptr, source, ": unknown key '", path, "' (valid here: ", schema.keys_of(section), ")");
    f->set(kv.second, source + ": '" + path + "'");
  }
}

// Refuses a key given twice in one mapping, at any depth (YAML leaves it undefined; yaml-cpp keeps
// both and the last would silently win).
void check_unique_keys(const YAML::Node& n, const std::string& source) {
  if (n.IsMap()) {
    std::set<std::string> seen;
    for (const auto& kv : n) {
      const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : std::string("<non-scalar key>");
      FP4QAT_CHECK(seen.insert(key).second, source, ":", kv.first.Mark().line + 1, ": key '", key,
                   "' given twice in one mapping");
      check_unique_keys(kv.second, source);
    }
  } else if (n.IsSequence()) {
    for (const auto& e : n) check_unique_keys(e, source);
  }
}

// Counts a text's YAML documents (up to 2) without building them: yaml-cpp's LoadAll builds every
// document, and some malformed later ones make its node builder allocate without bound (found by
// Fuzz.YamlRecipe).
struct NoEvents : YAML::EventHandler {
  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};
int yaml_documents(const std::string& text) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  NoEvents none;
  int n = 0;
  while (n < 2 && parser.HandleNextDocument(none)) ++n;
  return n;
}

// One YAML document (a second one, after `---`, would be ignored: refused), keys unique.
YAML::Node load_yaml(const std::string& text, const std::string& source) {
  YAML::Node doc;
  int docs = 0;
  try {
    docs = yaml_documents(text);
    doc = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    FP4QAT_FAIL(source, ":", e.mark.line + 1, ":", e.mark.column + 1, ": YAML error: ", e.msg);
  }
  FP4QAT_CHECK(docs <= 1, source, ": more than one YAML document; a recipe is one document (remove the '---' ",
               "and what follows, or merge them)");
  check_unique_keys(doc, source);
  return doc;
}

}  // namespace

void apply_yaml_text(Config& cfg, const std::string& text, const std::string& source) {
  Schema schema(cfg);
  apply_map(schema, load_yaml(text, source), "", source);
}

void apply_recipe_file(Config& cfg, const std::string& path) {
  FP4QAT_CHECK(fs::exists(path), "recipe file '", path, "' not found");
  const std::string text = fs::read_text(path, 16u << 20);
  const YAML::Node doc = load_yaml(text, path);
  if (doc.IsMap() && doc["model_config"]) {
    std::string mc = Parse<std::string>::get(doc["model_config"], path + ": 'model_config'");
    if (!mc.empty() && mc[0] != '/') mc = fs::parent_dir(path) + "/" + mc;
    FP4QAT_CHECK(fs::exists(mc), path, ": 'model_config' file '", mc, "' not found");
    Schema schema(cfg);
    apply_map(schema, load_yaml(fs::read_text(mc, 16u << 20), mc), "model", mc);
  }
  apply_yaml_text(cfg, text, path);
}

void apply_set(Config& cfg, const std::string& assignment) {
  const auto eq = assignment.find('=');
  FP4QAT_CHECK(eq != std::string::npos && eq > 0, "--set '", assignment, "': expected KEY=VALUE (e.g. optim.lr=1e-3)");
  const std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  Schema schema(cfg);
  const Field* f = schema.find(key);
  FP4QAT_CHECK(f != nullptr, "--set: unknown key '", key, "'");
  f->set(load_yaml(value.empty() ? "''" : value, "--set " + key), "--set '" + key + "'");
  if (key == "model_config") {
    // The model shape file applies here, at its place among the --set overrides (a path relative
    // to the working directory): it overrides the recipe's model values, a later --set model.* it.
    FP4QAT_CHECK(!cfg.model_config.empty(), "--set 'model_config': expected a file name");
    FP4QAT_CHECK(fs::exists(cfg.model_config), "--set 'model_config': file '", cfg.model_config, "' not found");
    apply_map(schema, load_yaml(fs::read_text(cfg.model_config, 16u << 20), cfg.model_config), "model",
              cfg.model_config);
  }
}

void validate(const Config& c) {
  const auto& m = c.model;
  FP4QAT_CHECK(m.num_attention_heads % m.num_key_value_heads == 0, "model.num_attention_heads (", m.num_attention_heads,
               ") must be a multiple of model.num_key_value_heads (", m.num_key_value_heads, ")");
  FP4QAT_CHECK(m.num_experts_per_tok <= m.num_experts, "model.num_experts_per_tok (", m.num_experts_per_tok,
               ") must be <= model.num_experts (", m.num_experts, ")");
  FP4QAT_CHECK(m.head_dim % 2 == 0, "model.head_dim must be even (RoPE), got ", m.head_dim);
  for (int64_t l : m.mlp_only_layers)
    FP4QAT_CHECK(l >= 0 && l < m.num_hidden_layers, "model.mlp_only_layers: layer ", l, " is outside [0, ",
                 m.num_hidden_layers, ")");
  FP4QAT_CHECK(c.train.seq_len <= m.max_position_embeddings, "train.seq_len (", c.train.seq_len,
               ") exceeds model.max_position_embeddings (", m.max_position_embeddings, ")");
  FP4QAT_CHECK(c.data.kind == "synthetic" || !c.data.path.empty(), "data.path is required when data.kind is ",
               c.data.kind);
  FP4QAT_CHECK((c.objective == "grpo") == (c.data.kind == "rollouts" || c.rl.loop()), "objective ", c.objective,
               " with data.kind ", c.data.kind,
               ": objective grpo trains on rollout samples (data.kind: rollouts, or the loop's own: rl.iterations > 0 "
               "with data.kind synthetic) and objectives lm and sft on synthetic or tokens data");
  if (c.rl.loop()) {
    FP4QAT_CHECK(c.data.kind == "synthetic", "rl.iterations > 0 (the loop) samples prompts of the synthetic task: ",
                 "data.kind must be synthetic, got ", c.data.kind);
    FP4QAT_CHECK(c.train.steps == c.rl.iterations * c.rl.updates_per_rollout &&
                     c.exports.every == c.rl.updates_per_rollout,
                 "the loop's train.steps (", c.train.steps, ") and export.every (", c.exports.every,
                 ") must be rl.iterations x rl.updates_per_rollout and rl.updates_per_rollout (fp4qat rl sets them)");
    FP4QAT_CHECK(std::find(c.exports.formats.begin(), c.exports.formats.end(), c.rl.sample_format) !=
                     c.exports.formats.end(),
                 "rl.sample_format ", qat::to_string(c.rl.sample_format), " is not among export.formats (the loop ",
                 "samples from that export)");
    FP4QAT_CHECK(c.rl.sample_serving.empty() || c.rl.sample_format == qat::Format::kNVFP4,
                 "rl.sample_serving applies to NVFP4 samplers (rl.sample_format nvfp4), not ",
                 qat::to_string(c.rl.sample_format));
    FP4QAT_CHECK(c.train.batch_size <= c.rl.prompts, "train.batch_size (", c.train.batch_size,
                 " groups per micro-batch) exceeds rl.prompts (", c.rl.prompts, " groups per iteration)");
    FP4QAT_CHECK(c.train.eval_every == 0, "train.eval_every must be 0 in the loop (its samples are the measure)");
    FP4QAT_CHECK(c.rl.loss.kl_coef == 0 || c.parallel.ep == 1,
                 "rl.kl_coef > 0 with parallel.ep > 1 is not supported yet (the reference model is not sharded)");
  }
  FP4QAT_CHECK(!c.train.activation_checkpointing || c.parallel.ep == 1,
               "train.activation_checkpointing with parallel.ep > 1 is not supported yet (the recomputed layers' ",
               "expert all-to-alls in backward are untested); use data parallelism or turn it off");
  FP4QAT_CHECK(c.objective != "sft" || c.data.kind == "tokens", "objective sft with data.kind ", c.data.kind,
               ": objective sft trains on a prepared dataset folder (data.kind: tokens, data.path the folder ",
               "scripts/prepare_data wrote)");
  FP4QAT_CHECK(!c.data.packing || c.data.kind == "tokens", "data.packing: true needs a prepared dataset folder ",
               "(data.kind: tokens), got data.kind ", c.data.kind);
  FP4QAT_CHECK(c.data.kind != "rollouts" || c.train.eval_every == 0,
               "train.eval_every must be 0 with data.kind rollouts (rollout samples have no validation split)");
  c.qat.validate();
  const bool exporting = c.exports.interval(c.qat) > 0;
  if (c.qat.quantizes() || exporting) {
    const auto& sel = c.qat.selection;
    FP4QAT_CHECK(!sel.modules.empty(), "qat.modules must name at least one pattern (quantized modules of ",
                 c.qat.quantizes() ? "training" : "the export", ")");
    FP4QAT_CHECK(sel.keep_first_n + sel.keep_last_n < m.num_hidden_layers,
                 "qat.keep_first_n + qat.keep_last_n leave no layer to quantize");
    std::vector<qat::Format> formats = exporting ? c.exports.formats : std::vector<qat::Format>{};
    if (c.qat.quantizes()) formats.push_back(c.qat.format);
    for (const auto f : formats) {
      const int64_t block = qat::block_size(f);
      FP4QAT_CHECK(m.hidden_size % block == 0 && m.moe_intermediate_size % block == 0, "model.hidden_size and ",
                   "model.moe_intermediate_size must be multiples of ", block, " for ", qat::to_string(f));
    }
  }
  FP4QAT_CHECK(c.parallel.ep == 1 || (m.num_experts > 0 && m.num_experts % c.parallel.ep == 0), "model.num_experts (",
               m.num_experts, ") must be divisible by parallel.ep (", c.parallel.ep, ")");
  FP4QAT_CHECK(c.exports.push_url.empty() || exporting, "export.push_url is set but exports are off (export.every ",
               c.exports.every, c.exports.every < 0 ? " with qat.format none" : "",
               "): set export.every > 0 or leave export.push_url empty");
  FP4QAT_CHECK(!exporting || !c.exports.formats.empty(), "export.formats is empty but export.every is ",
               c.exports.interval(c.qat), " (set export.every: 0 to turn exports off)");
}

void derive_rl_loop(Config& c) {
  FP4QAT_CHECK(c.objective == "grpo" && c.rl.loop(), "fp4qat rl: the recipe must set objective: grpo and ",
               "rl.iterations > 0 (got objective ", c.objective, ", rl.iterations ", c.rl.iterations, ")");
  c.train.steps = c.rl.iterations * c.rl.updates_per_rollout;
  c.exports.every = c.rl.updates_per_rollout;
}

std::string ExportConfig::push_request(const std::string& path, int64_t step) const {
  const std::string quoted = json::quote(path);
  const std::string escaped = quoted.substr(1, quoted.size() - 2);  // for use inside a JSON string
  std::string out;
  for (size_t i = 0; i < push_body.size();) {
    if (push_body.compare(i, 6, "{path}") == 0) {
      out += escaped;
      i += 6;
    } else if (push_body.compare(i, 6, "{step}") == 0) {
      out += std::to_string(step);
      i += 6;
    } else {
      out += push_body[i++];
    }
  }
  return out;
}

std::string dump(const Config& c_in) {
  Config c = c_in;
  Schema schema(c);
  YAML::Node root(YAML::NodeType::Map);
  for (const auto& f : schema.fields()) {
    if (f.section.empty())
      root[f.key] = f.get();
    else
      root[f.section][f.key] = f.get();
  }
  YAML::Emitter out;
  out << root;
  return std::string(out.c_str()) + "\n";
}

}  // namespace fp4qat::config
