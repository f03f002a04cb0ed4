// qat/quantize_checkpoint.cpp — see quantize_checkpoint.h.
#include "qat/quantize_checkpoint.h"

#include <map>
#include <utility>

#include "io/names.h"
#include "kernels/common/check.h"
#include "kernels/common/formats.h"
#include "io/fs.h"
#include "qat/gated_pairs.h"
#include "io/safetensors.h"

namespace fp4qat::qat {

bool is_quantizable(const std::string& name, at::ScalarType dtype, int64_t rank) {
  const bool named = names::is_weight(name);
  const bool floating = dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
  return named && floating && (rank == 2 || rank == 3);
}

namespace {

void error_stats(const at::Tensor& x, const at::Tensor& dq, TensorReport* r) {
  const at::Tensor xd = x.to(at::kDouble), dd = dq.to(at::kDouble);
  const double ref = xd.norm().item<double>();
  const at::Tensor diff = dd - xd;
  r->rel_rmse = ref > 0 ? diff.norm().item<double>() / ref : diff.norm().item<double>();
  r->max_abs_err = diff.numel() ? diff.abs().max().item<double>() : 0.0;
}

}  // namespace

std::vector<TensorReport> quantize_file(const std::string& in, const std::string& out, const QuantizeFileOptions& opt) {
  const std::string out_dir = fs::parent_dir(out);
  FP4QAT_CHECK(fs::is_dir(out_dir), out, ": output folder '", out_dir, "' does not exist");
  if (opt.format == Format::kNVFP4) check_rule(opt.rule, opt.blocks, "quantize");
  st::Reader reader(in);
  const int64_t block = opt.format == Format::kNVFP4 ? fmt::kNvfp4Block : fmt::kMxfp8Block;

  // Pass 1: choose the targets and validate them before any work.
  std::map<std::string, bool> target;
  for (const auto& t : reader.tensors()) {
    const bool q = is_quantizable(t.name, st::to_scalar_type(t.dtype), static_cast<int64_t>(t.shape.size()));
    target[t.name] = q;
    if (!q) continue;
    FP4QAT_CHECK(t.shape.back() % block == 0, in, ": tensor '", t.name, "' has K = ", t.shape.back(),
                 " (last dimension), not a multiple of ", block, " as ", to_string(opt.format), " requires");
  }
  for (const auto& t : reader.tensors()) {
    if (!target[t.name] || opt.format != Format::kNVFP4) continue;
    if (auto p = gated_partner(t.name)) {
      const st::TensorInfo* other = reader.find(p->partner);
      FP4QAT_CHECK(other != nullptr && target[p->partner], in, ": tensor '", t.name,
                   "' is one half of a gated pair but '", p->partner,
                   "' is missing or not quantizable; quantizing only one member of a pair is an error");
      FP4QAT_CHECK(other->shape.size() == t.shape.size() && (t.shape.size() == 2 || other->shape[0] == t.shape[0]), in,
                   ": gated pair '", t.name, "' and '", p->partner, "' have incompatible shapes");
    }
  }

  // Pass 2: quantize, one tensor (or pair) at a time.
  std::vector<std::pair<std::string, at::Tensor>> outputs;
  std::vector<TensorReport> reports;
  PairAmax pair_amax;  // gated pairs: the amax of the values quantized here (the tensors as stored)
  for (const auto& info : reader.tensors()) {
    TensorReport rep{info.name, info.shape, target[info.name]};
    const at::Tensor host = reader.view(info.name);
    if (!rep.quantized) {
      outputs.emplace_back(info.name, host);
      reports.push_back(rep);
      continue;
    }
    st::check_finite(host, info.name, in);
    const at::Tensor x = host.to(opt.device);
    const std::string s = names::module_of(info.name);
    if (opt.format == Format::kNVFP4) {
      std::optional<at::Tensor> a;
      if (gated_partner(info.name) && !opt.rule.row_scaled)
        a = pair_amax.of(info.name, x, [&](const std::string& partner) {
          const at::Tensor other_host = reader.view(partner);
          st::check_finite(other_host, partner, in);
          return other_host.to(opt.device);
        });
      NVFP4Tensor q = nvfp4_quantize(x, opt.blocks, a, opt.rule);
      if (opt.error_stats) error_stats(host, nvfp4_dequantize(q).cpu(), &rep);
      outputs.emplace_back(s + ".weight", q.codes.cpu());
      outputs.emplace_back(s + ".weight_scale", q.scales.cpu());
      outputs.emplace_back(s + ".weight_scale_2", q.s_dec.cpu());
    } else {
      MXFP8Tensor q = mxfp8_quantize(x);
      if (opt.error_stats) error_stats(host, mxfp8_dequantize(q).cpu(), &rep);
      outputs.emplace_back(s + ".weight", q.data.cpu());
      outputs.emplace_back(s + ".weight_scale_inv", q.scales.cpu());
    }
    reports.push_back(rep);
  }
  // Output names must not collide with tensors copied through (e.g. an input that already holds
  // X.weight_scale): refuse instead of writing an ambiguous file.
  std::map<std::string, int> count;
  for (const auto& o : outputs)
    FP4QAT_CHECK(++count[o.first] == 1, in, ": output tensor name '", o.first,
                 "' would be written twice (the input already has it)");
  st::write_file(out, outputs);
  return reports;
}

}  // namespace fp4qat::qat
