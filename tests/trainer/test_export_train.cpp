// tests/trainer/test_export_train.cpp — the per-step export of trainer/exporter.h, end to end on
// the CPU: the NVFP4 export after step k is byte-identical to the quantized weights the forward
// of step k+1 uses; quantizing the BF16 export of a step with the reference rules reproduces its
// NVFP4 export byte for byte (with the exports waited for, and written in the background while
// training goes on); keep-K and `latest`; the export records step and recipe;
// observing activations for input_scale does not change training; BF16 training can export
// NVFP4 (post-training quantization each step).
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>

#include <fstream>
#include <set>

#include "kernels/common/formats.h"
#include "kernels/quantize.h"
#include "io/fs.h"
#include "io/http.h"
#include "qat/check_export.h"
#include "qat/gated_pairs.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "tests/common/http_server.h"
#include "tests/common/test_util.h"
#include "tests/trainer/probe_util.h"
#include "tests/trainer/resume_util.h"
#include "model/hf_folder.h"
#include "model/qwen3_moe.h"
#include "qat/export.h"
#include "rollout/serving.h"
#include "trainer/train.h"

namespace cfg = fp4qat::config;
using namespace fp4qat;
using fp4qat::test::bytes_equal;

namespace {

cfg::Config small_run(const std::string& out) {
  cfg::Config c = test::small_moe_run(out);
  c.train.dtype = "fp32";
  c.qat.format = fp4qat::qat::Format::kNVFP4;
  c.qat.train = fp4qat::qat::TrainScope::kQuantizedOnly;
  c.exports.keep = 10;
  return c;
}

std::map<std::string, at::Tensor> load_folder(const std::string& dir) {
  const std::string f = dir + "/model.safetensors.index.json";
  std::map<std::string, at::Tensor> out;
  std::map<std::string, std::unique_ptr<st::Reader>> readers;
  const json::Value index = json::parse(fs::read_text(f), f);
  for (const auto& [name, file] : index.at("weight_map").as_object()) {
    auto& r = readers[file.as_string()];
    if (!r) r = std::make_unique<st::Reader>(dir + "/" + file.as_string());
    out[name] = r->view(name).clone();
  }
  return out;
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

}  // namespace

class ExportTrain : public ::testing::TestWithParam<std::string> {};

TEST_P(ExportTrain, ExportIsWhatTheNextForwardUses) {
  test::TempDir d;
  cfg::Config c = small_run(d.file("run"));
  // "<blocks>[-async]": with the mismatch probe each export is waited for; without it the
  // folders are written in the background while training goes on.
  const std::string blocks_name = GetParam().substr(0, 2);
  c.qat.weight_blocks = fp4qat::parse_blocks(blocks_name);
  c.exports.probe_mismatch = GetParam().find("async") == std::string::npos;
  c.exports.formats = {fp4qat::qat::Format::kNVFP4, fp4qat::qat::Format::kMXFP8, fp4qat::qat::Format::kBF16};
  // Capture the weights each training forward hands to the quantizer (grad mode: not evals).
  std::map<int64_t, std::map<std::string, at::Tensor>> used;
  train::Options o;
  o.quiet = true;
  o.weight_observer = [&](int64_t step, const std::string& p, const at::Tensor& w) {
    if (at::GradMode::is_enabled()) used[step][p] = w.clone();
  };
  const auto r = train::run(c, o);
  ASSERT_EQ(r.exports.size(), 3u);
  const Blocks blocks = parse_blocks(blocks_name);
  const int64_t I = c.model.moe_intermediate_size;
  for (int64_t k = 1; k <= 2; ++k) {
    const std::string dir = d.file("run/exports/step-" + std::to_string(k));
    auto nv = load_folder(dir + "/nvfp4");
    ASSERT_EQ(used[k + 1].size(), 4u);  // two MoE layers x (gate_up, down)
    int checked = 0;
    for (const auto& [param, w] : used[k + 1]) {  // w: [E, P*R, K] compute copy of step k+1's forward
      const NVFP4Tensor q = nvfp4_quantize(w.to(at::kBFloat16), blocks);  // per-expert amax, as the forward
      const bool gu = ends_with(param, "gate_up_proj");
      const std::string base = param.substr(0, param.size() - (gu ? 12 : 9));  // "...mlp.experts."
      for (int64_t e = 0; e < w.size(0); ++e)
        for (int64_t p = 0; p < (gu ? 2 : 1); ++p) {
          const std::string m = base + std::to_string(e) + (gu ? (p ? ".up_proj" : ".gate_proj") : ".down_proj");
          const int64_t R = gu ? I : w.size(1);
          EXPECT_TRUE(bytes_equal(nv.at(m + ".weight"), q.codes[e].narrow(0, p * R, R))) << "step " << k << " " << m;
          EXPECT_TRUE(bytes_equal(nv.at(m + ".weight_scale"), q.scales[e].narrow(0, p * R, R))) << m;
          EXPECT_EQ(nv.at(m + ".weight_scale_2").item<float>(), q.s_dec[e].item<float>()) << m;
          EXPECT_GT(nv.at(m + ".input_scale").item<float>(), 0.f) << m;
          ++checked;
        }
    }
    EXPECT_EQ(checked, 2 * 4 * 3);
    // Quantizing the BF16 export of the same step with the reference rules reproduces the NVFP4
    // export byte for byte (gate/up with their shared amax).
    auto bf = load_folder(dir + "/bf16");
    for (const auto& [name, t] : bf) {
      if (name.find(".experts.") == std::string::npos) {
        EXPECT_TRUE(bytes_equal(nv.at(name), t)) << name;  // not quantized: the same BF16 bytes
        continue;
      }
      std::optional<at::Tensor> a;
      if (auto partner = qat::gated_partner(name))
        a = at::maximum(global_amax(t), global_amax(bf.at(partner->partner)));
      const NVFP4Tensor q = nvfp4_quantize(t, blocks, a);
      const std::string m = name.substr(0, name.size() - 7);
      EXPECT_TRUE(bytes_equal(nv.at(m + ".weight"), q.codes)) << m;
      EXPECT_TRUE(bytes_equal(nv.at(m + ".weight_scale"), q.scales)) << m;
      EXPECT_TRUE(bytes_equal(nv.at(m + ".weight_scale_2"), q.s_dec)) << m;
      const MXFP8Tensor mx = mxfp8_quantize(t);
      auto mf = load_folder(dir + "/mxfp8");
      EXPECT_TRUE(bytes_equal(mf.at(m + ".weight"), mx.data)) << m;
      EXPECT_TRUE(bytes_equal(mf.at(m + ".weight_scale_inv"), mx.scales)) << m;
    }
    // The export records its step and the resolved recipe.
    const json::Value info = json::parse(fs::read_text(dir + "/export.json"), "export.json");
    EXPECT_EQ(info.at("step").as_int(), k);
    EXPECT_EQ(fs::read_text(dir + "/recipe.yaml"), cfg::dump(c));
  }
  EXPECT_EQ(fs::read_link(d.file("run/exports/latest")), "step-3");
  // The BF16 export is a Hugging Face folder our loader (and transformers) reads.
  const model::Qwen3Moe m = model::load_hf_folder(d.file("run/exports/latest/bf16"));
  EXPECT_EQ(m.config().num_experts, 4);
  // Export time is logged per step.
  std::ifstream f(d.file("run/metrics.jsonl"));
  std::string line;
  int with_time = 0;
  while (std::getline(f, line)) with_time += line.find("\"export_s\"") != std::string::npos;
  EXPECT_EQ(with_time, 3);
}

INSTANTIATE_TEST_SUITE_P(Blocks, ExportTrain, ::testing::Values("1d", "2d", "1d-async", "2d-async"));

TEST(ExportTrainKeep, KeepsNewestAndTheLastStep) {
  test::TempDir d;
  cfg::Config c = small_run(d.file("run"));
  c.train.steps = 5;
  c.exports.every = 2;
  c.exports.keep = 2;
  train::Options o;
  o.quiet = true;
  train::run(c, o);
  // steps 2, 4 and the last step (5) were exported; the newest two are kept.
  EXPECT_EQ(fs::list_dir(d.file("run/exports")), (std::vector<std::string>{"latest", "step-4", "step-5"}));
  EXPECT_EQ(fs::list_dir(d.file("run/exports/step-5")),
            (std::vector<std::string>{"export.json", "nvfp4", "recipe.yaml"}));
}

// Expert-only training freezes every non-expert weight: each export puts those in shards of their
// own, and from the second export on links them from the previous one (the same inode) instead of
// writing them; every export still reads back whole (every tensor of the index, the frozen ones
// equal to the model's). A run that trains every weight writes every shard anew.
TEST(ExportTrainFrozen, FrozenWeightsAreLinkedFromThePreviousExport) {
  for (const auto scope : {qat::TrainScope::kQuantizedOnly, qat::TrainScope::kAll}) {
    SCOPED_TRACE(scope == qat::TrainScope::kAll ? "train all" : "expert-only");
    test::TempDir d;
    cfg::Config c = small_run(d.file("run"));
    c.qat.train = scope;
    c.train.steps = 3;
    c.exports.every = 1;
    c.exports.keep = 0;
    c.exports.formats = {qat::Format::kNVFP4, qat::Format::kBF16};
    train::Options o;
    o.quiet = true;
    train::run(c, o);
    for (const std::string fmt : {"nvfp4", "bf16"}) {
      SCOPED_TRACE(fmt);
      auto first_shard = [&](int step) {
        return d.file("run/exports/step-" + std::to_string(step) + "/" + fmt + "/model-00001-of-00002.safetensors");
      };
      auto inode = [](const std::string& p) {
        struct stat sb;
        return ::stat(p.c_str(), &sb) == 0 ? static_cast<long long>(sb.st_ino) : -1LL;
      };
      if (scope == qat::TrainScope::kQuantizedOnly) {
        ASSERT_NE(inode(first_shard(1)), -1) << "the frozen weights have a shard of their own";
        EXPECT_EQ(inode(first_shard(2)), inode(first_shard(1)));
        EXPECT_EQ(inode(first_shard(3)), inode(first_shard(1)));
        const st::Reader r(first_shard(3));
        for (const auto& t : r.tensors()) EXPECT_EQ(t.name.find(".mlp.experts."), std::string::npos) << t.name;
      } else {
        EXPECT_EQ(inode(first_shard(1)), -1) << "one shard: nothing is kept apart when everything trains";
      }
      const auto step2 = load_folder(d.file("run/exports/step-2/" + fmt));
      const auto step3 = load_folder(d.file("run/exports/step-3/" + fmt));
      ASSERT_EQ(step2.size(), step3.size());
      size_t same = 0;
      for (const auto& [name, t] : step3) {
        ASSERT_TRUE(step2.count(name)) << name;
        same += at::equal(t, step2.at(name));
      }
      if (scope == qat::TrainScope::kQuantizedOnly) {
        EXPECT_LT(same, step3.size()) << "the experts trained between the exports";
      }
      // Every export loads as the rollout side loads it; with a shard cache (the RL sampler's), the
      // linked frozen shard is read once and then taken from the cache, with the same values.
      hf::ShardCache cache;
      for (int step = 1; step <= 3; ++step) {
        const std::string dir = d.file("run/exports/step-" + std::to_string(step) + "/" + fmt);
        const rollout::Loaded a = rollout::load(dir, at::kCPU), b = rollout::load(dir, at::kCPU, "", &cache);
        for (size_t i = 0; i < a.model->params().size(); ++i)
          EXPECT_TRUE(at::equal(a.model->params()[i].second, b.model->params()[i].second))
              << "step " << step << " " << a.model->params()[i].first;
      }
      EXPECT_EQ(cache.hits(), scope == qat::TrainScope::kQuantizedOnly ? 2 : 0);
      EXPECT_LE(cache.size(), 1u);
    }
  }
}

TEST(ExportTrainBF16, ObservingDoesNotChangeTrainingAndBF16RunsExportNVFP4) {
  test::TempDir d;
  cfg::Config plain = small_run(d.file("plain"));
  plain.qat.format = fp4qat::qat::Format::kBF16;
  plain.exports.every = 0;
  cfg::Config ptq = plain;
  ptq.train.out_dir = d.file("ptq");
  ptq.exports.every = 1;
  train::Options o;
  o.quiet = true;
  const auto a = train::run(plain, o), b = train::run(ptq, o);
  ASSERT_EQ(a.steps.size(), b.steps.size());
  for (size_t i = 0; i < a.steps.size(); ++i) EXPECT_EQ(a.steps[i].loss, b.steps[i].loss) << i;
  EXPECT_FALSE(fs::exists(d.file("plain/exports")));
  auto nv = load_folder(d.file("ptq/exports/latest/nvfp4"));
  EXPECT_EQ(nv.at("model.layers.1.mlp.experts.3.down_proj.weight").scalar_type(), at::kByte);
  const json::Value info = json::parse(fs::read_text(d.file("ptq/exports/latest/export.json")), "export.json");
  EXPECT_EQ(info.at("trained_in").as_string(), "bf16");
}

// An export that fails while being written in the background stops the run with its error at
// the next export (or at the end), naming the path; it never passes silently.
TEST(ExportTrainAsync, BackgroundFailureIsReported) {
  test::TempDir d;
  cfg::Config c = small_run(d.file("run"));
  c.exports.probe_mismatch = false;
  fs::make_dirs(d.file("run"));
  fs::write_text_atomic(d.file("run/exports"), "not a folder\n");  // publishing into it must fail
  train::Options o;
  o.quiet = true;
  try {
    train::run(c, o);
    FAIL() << "the run should have failed";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("exports"), std::string::npos) << e.what();
  }
}

// export.push_url: after each export is published, the engine's URL receives one POST with the
// export's folder (the first listed format's, absolute) in push_body; the push happens after
// `latest` moved to that export and before the next export is published. Each push is a
// metrics.jsonl line (step, push_s, push_status).
TEST(ExportTrainPush, EachExportIsPostedAfterItIsPublished) {
  if (!http::available()) GTEST_SKIP() << "built without libcurl";
  test::HttpServer server(200, R"({"success": true, "message": "Succeeded to update model weights."})");
  test::TempDir d;
  cfg::Config c = small_run(d.file("run"));
  c.exports.probe_mismatch = false;  // written (and pushed) in the background
  c.exports.formats = {qat::Format::kMXFP8, qat::Format::kNVFP4};
  c.exports.push_url = server.url("/update_weights_from_disk");
  c.exports.push_body = R"({"model_path": "{path}", "flush_cache": true, "weight_version": "step-{step}"})";
  c.exports.push_timeout_s = 10;
  ASSERT_NO_THROW(cfg::validate(c));
  std::vector<std::string> latest_at_push;
  server.on_request(
      [&](const test::HttpServer::Request&) { latest_at_push.push_back(fs::read_link(d.file("run/exports/latest"))); });
  train::Options o;
  o.quiet = true;
  const auto r = train::run(c, o);
  ASSERT_EQ(r.exports.size(), 3u);
  const auto reqs = server.requests();
  ASSERT_EQ(reqs.size(), 3u);
  for (int k = 1; k <= 3; ++k) {
    const auto& q = reqs[k - 1];
    const std::string step = "step-" + std::to_string(k);
    const std::string path = fs::real_path(d.file("run/exports/" + step + "/mxfp8"));
    EXPECT_EQ(q.method, "POST");
    EXPECT_EQ(q.target, "/update_weights_from_disk");
    EXPECT_EQ(q.headers.at("content-type"), "application/json");
    EXPECT_EQ(q.body, R"({"model_path": ")" + path + R"(", "flush_cache": true, "weight_version": ")" + step + "\"}");
    EXPECT_EQ(latest_at_push.at(k - 1), step);  // published before the push, the next one not yet
  }
  std::ifstream f(d.file("run/metrics.jsonl"));
  std::string line;
  std::vector<int64_t> pushed;
  while (std::getline(f, line)) {
    const json::Value v = json::parse(line, "metrics.jsonl");
    if (!v.find("push_status")) continue;
    pushed.push_back(v.at("step").as_int());
    EXPECT_EQ(v.at("push_status").as_int(), 200) << line;
    EXPECT_GT(v.at("push_s").as_double(), 0) << line;
    EXPECT_EQ(v.find("push_error"), nullptr) << line;
  }
  EXPECT_EQ(pushed, (std::vector<int64_t>{1, 2, 3}));
}

// A push the engine refuses (HTTP 500): a warning and training goes on, recorded in metrics.jsonl
// with the status and the answer; with export.push_required the run stops with the error at the
// next export, the export itself published.
TEST(ExportTrainPush, FailedPushWarnsOrStopsTheRun) {
  if (!http::available()) GTEST_SKIP() << "built without libcurl";
  test::HttpServer server(500, R"({"success": false, "message": "cannot load"})");
  for (const bool required : {false, true}) {
    test::TempDir d;
    cfg::Config c = small_run(d.file("run"));
    c.exports.probe_mismatch = false;
    c.exports.push_url = server.url("/update_weights_from_disk");
    c.exports.push_required = required;
    train::Options o;
    o.quiet = true;
    if (!required) {
      const auto r = train::run(c, o);
      EXPECT_EQ(r.exports.size(), 3u);
      EXPECT_EQ(fs::read_link(d.file("run/exports/latest")), "step-3");
      std::ifstream f(d.file("run/metrics.jsonl"));
      std::string line;
      int failed = 0;
      while (std::getline(f, line)) {
        const json::Value v = json::parse(line, "metrics.jsonl");
        if (!v.find("push_status")) continue;
        EXPECT_EQ(v.at("push_status").as_int(), 500) << line;
        const std::string e = v.at("push_error").as_string();
        EXPECT_NE(e.find("POST " + c.exports.push_url + ": HTTP 500"), std::string::npos) << e;
        EXPECT_NE(e.find("cannot load"), std::string::npos) << e;
        ++failed;
      }
      EXPECT_EQ(failed, 3);
    } else {
      const std::string e = test::error_of([&] { train::run(c, o); });
      EXPECT_NE(e.find("export step-1: push to the engine failed: POST " + c.exports.push_url + ": HTTP 500"),
                std::string::npos)
          << e;
      EXPECT_NE(e.find("cannot load"), std::string::npos) << e;
      EXPECT_NE(e.find("export.push_required"), std::string::npos) << e;
      EXPECT_EQ(fs::read_link(d.file("run/exports/latest")), "step-1");  // published; the run stopped at step 2
    }
  }
  EXPECT_EQ(server.requests().size(), 4u);  // 3 without push_required, 1 with
}

// The 2026 recipes end to end (issue 20): every step's NVFP4 export holds the weights as the
// recipe quantizes them, records the recipe where the rollout side reads it (config.json's
// quantization_config, hf_quant_config.json, export.json), W4A16 as quant_algo W4A16_NVFP4 without
// input_scale; and the rollout side's forward on the export equals the trainer's exactly on the
// CPU: mismatch_mean 0 at every step.
TEST(ExportTrainRecipes, RolloutReproducesTheTrainerForEveryRecipe) {
  struct Case {
    const char* name;
    qat::FourOverSix fos;
    bool mse;
    double m;
    qat::ActivationScale scale;
    qat::Activations acts;
  };
  using FOS = qat::FourOverSix;
  const std::vector<Case> cases = {
      {"2024 recipe", FOS::kNone, false, 256, qat::ActivationScale::kTensor, qat::Activations::kNVFP4},
      {"4over6 weights", FOS::kWeights, false, 256, qat::ActivationScale::kTensor, qat::Activations::kNVFP4},
      {"4over6 all 448 mse", FOS::kAll, true, 448, qat::ActivationScale::kTensor, qat::Activations::kNVFP4},
      {"row-scaled", FOS::kNone, false, 256, qat::ActivationScale::kRow, qat::Activations::kNVFP4},
      {"4over6 + row-scaled", FOS::kAll, false, 256, qat::ActivationScale::kRow, qat::Activations::kNVFP4},
      {"W4A16", FOS::kNone, false, 256, qat::ActivationScale::kTensor, qat::Activations::kBF16},
      {"W4A16 4over6", FOS::kWeights, false, 256, qat::ActivationScale::kTensor, qat::Activations::kBF16}};
  for (const auto& cs : cases) {
    SCOPED_TRACE(cs.name);
    test::TempDir d;
    cfg::Config c = small_run(d.file("run"));
    c.train.steps = 2;
    c.train.dtype = "bf16";  // the compute copies are the exported BF16 tensors (fp32 would differ outside QAT)
    c.qat.four_over_six = cs.fos;
    c.qat.four_over_six_mse = cs.mse;
    c.qat.four_over_six_e4m3_max = cs.m;
    c.qat.activation_scale = cs.scale;
    c.qat.activations = cs.acts;
    c.exports.formats = {qat::Format::kNVFP4, qat::Format::kBF16};
    c.exports.probe_mismatch = true;
    train::Options o;
    o.quiet = true;
    train::run(c, o);
    EXPECT_EQ(test::expect_zero_probe_mismatch(d.file("run/metrics.jsonl")), 2);
    const std::string dir = d.file("run/exports/latest");
    // Every recipe's export loads in both engines as laid out (fp4qat check-export; W4A16 too).
    for (auto e : {qat::Engine::kVllm, qat::Engine::kSglang}) {
      const auto chk = qat::check_export(dir + "/nvfp4", e);
      EXPECT_TRUE(chk.ok()) << qat::to_string(e) << ": " << (chk.errors.empty() ? "" : chk.errors[0]);
    }
    const json::Value cj = json::parse(fs::read_text(dir + "/nvfp4/config.json"), "config.json");
    const json::Value& qc = cj.at("quantization_config");
    const bool w4a16 = cs.acts == qat::Activations::kBF16;
    EXPECT_EQ(qc.at("quant_algo").as_string(), w4a16 ? "W4A16_NVFP4" : "NVFP4");
    const json::Value hq = json::parse(fs::read_text(dir + "/nvfp4/hf_quant_config.json"), "hf_quant_config.json");
    EXPECT_EQ(hq.at("quantization").at("quant_algo").as_string(), qc.at("quant_algo").as_string());
    const bool plain = cs.fos == FOS::kNone && cs.scale == qat::ActivationScale::kTensor && !w4a16;
    // The 2024 recipe's files stay as they were; the others carry the record.
    EXPECT_EQ(hq.at("quantization").find("fp4qat") == nullptr, plain);
    if (!plain) {
      EXPECT_EQ(qc.at("fp4qat").at("activation_scale").as_string(),
                cs.scale == qat::ActivationScale::kRow ? "row" : "tensor");
    }
    const json::Value info = json::parse(fs::read_text(dir + "/export.json"), "export.json");
    EXPECT_EQ(info.at("nvfp4_recipe").at("four_over_six").at("e4m3_max").as_int(), static_cast<int64_t>(cs.m));
    // The exported weights: the BF16 export's experts quantized by the recipe's weight rule.
    auto nv = load_folder(dir + "/nvfp4");
    auto bf = load_folder(dir + "/bf16");
    const NVFP4Rule rule = c.qat.nvfp4_rules().weights;
    int checked = 0;
    for (const auto& [name, t] : bf) {
      if (name.find(".experts.") == std::string::npos) continue;
      std::optional<at::Tensor> a;
      if (auto partner = qat::gated_partner(name))
        a = at::maximum(global_amax(t), global_amax(bf.at(partner->partner)));
      const NVFP4Tensor q = nvfp4_quantize(t, c.qat.weight_blocks, a, rule);
      const std::string m = name.substr(0, name.size() - 7);
      EXPECT_TRUE(bytes_equal(nv.at(m + ".weight"), q.codes)) << m;
      EXPECT_TRUE(bytes_equal(nv.at(m + ".weight_scale"), q.scales)) << m;
      EXPECT_TRUE(bytes_equal(nv.at(m + ".weight_scale_2"), q.s_dec)) << m;
      EXPECT_EQ(nv.count(m + ".input_scale"), w4a16 ? 0u : 1u) << m;
      ++checked;
    }
    EXPECT_GT(checked, 0);
  }
}

TEST(ExportTrainRecipes, BadRecipeSettingsAreRefusedWithTheKeyPath) {
  auto refused = [](const std::vector<std::string>& sets, const std::string& needle) {
    test::TempDir d;
    cfg::Config c = small_run(d.file("run"));
    try {
      for (const auto& a : sets) cfg::apply_set(c, a);
      cfg::validate(c);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      return;
    }
    ADD_FAILURE() << "accepted: " << sets[0];
  };
  refused({"qat.four_over_six_e4m3_max=300"}, "qat.four_over_six_e4m3_max");
  refused({"qat.activations=bf16", "qat.activation_scale=row"}, "qat.activation_scale");
  refused({"qat.activations=bf16", "qat.four_over_six=all"}, "qat.four_over_six");
  refused({"qat.format=mxfp8", "qat.four_over_six=weights"}, "nvfp4");
  refused({"qat.four_over_six=both"}, "qat.four_over_six");
  refused({"qat.four_over_six_error=l1"}, "qat.four_over_six_error");
}

// Serving files (issue 21): a run started from a folder with a tokenizer copies the tokenizer,
// its config and the generation defaults into every export folder and into the finished hf/
// folder, byte for byte, and export.json says where they came from; a run without one (random
// init) says so in export.json ("tokenizer": null, a warning) and in its result, and its exports
// carry no tokenizer file.
TEST(ExportTrainTokenizer, ExportsCarryTheSourceTokenizerOrSayTheyHaveNone) {
  test::TempDir d;
  cfg::Config a = small_run(d.file("a"));
  a.exports.every = 1;
  a.exports.formats = {fp4qat::qat::Format::kNVFP4, fp4qat::qat::Format::kBF16};
  a.exports.probe_mismatch = false;
  train::Options o;
  o.quiet = true;
  const train::Result ra = train::run(a, o);
  EXPECT_FALSE(ra.exports_have_tokenizer);
  const json::Value ia = json::parse(fs::read_text(d.file("a/exports/latest/export.json")), "export.json");
  EXPECT_TRUE(ia.at("tokenizer").is_null());
  EXPECT_NE(ia.at("warnings").dump().find("tokenizer"), std::string::npos);
  EXPECT_EQ(ia.at("serving_files").as_array().size(), 0u);
  EXPECT_FALSE(fs::exists(d.file("a/exports/latest/nvfp4/tokenizer.json")));

  // The finished model of run a, with tokenizer files beside it, starts run b.
  const std::map<std::string, std::string> files = {
      {"tokenizer.json", "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\"}}\n"},
      {"tokenizer_config.json", "{\"model_max_length\": 64}\n"},
      {"generation_config.json", "{\"temperature\": 0.6}\n"}};
  for (const auto& [n, text] : files) fs::write_text_atomic(d.file("a/hf/" + n), text);
  cfg::Config b = a;
  b.train.out_dir = d.file("b");
  b.train.init_from = d.file("a/hf");
  const train::Result rb = train::run(b, o);
  EXPECT_TRUE(rb.exports_have_tokenizer);
  const json::Value ib = json::parse(fs::read_text(d.file("b/exports/latest/export.json")), "export.json");
  EXPECT_EQ(ib.at("tokenizer").at("from").as_string(), d.file("a/hf"));
  EXPECT_EQ(ib.at("serving_files").as_array().size(), 3u);
  for (const char* fmt_dir : {"nvfp4", "bf16"})
    for (const auto& [n, text] : files)
      EXPECT_EQ(fs::read_text(d.file(std::string("b/exports/latest/") + fmt_dir + "/" + n)), text)
          << fmt_dir << "/" << n;
  for (const auto& [n, text] : files) EXPECT_EQ(fs::read_text(d.file("b/hf/" + n)), text) << "hf/" << n;
}

namespace {
// A copy of export folder `src` at `dst` whose index points tensor `name` at a new shard holding
// `t` (or drops `name` when t is undefined): a folder with one tensor changed, added or missing.
void copy_with(const std::string& src, const std::string& dst, const std::string& name, const at::Tensor& t) {
  fs::make_dirs(dst);
  for (const auto& f : fs::list_dir(src)) fs::copy_file(src + "/" + f, dst + "/" + f);
  const std::string idx = dst + "/model.safetensors.index.json";
  json::Value j = json::parse(fs::read_text(idx), idx);
  json::Value wm = j.at("weight_map");
  wm.erase(name);
  if (t.defined()) {
    st::write_file(dst + "/extra.safetensors", {{name, t}});
    wm.set(name, std::string("extra.safetensors"));
  }
  j.set("weight_map", wm);
  fs::write_text_atomic(idx, j.dump(2) + "\n");
}
bool mentions(const qat::ExportCheck& r, const std::string& what) {
  for (const auto& e : r.errors)
    if (e.find(what) != std::string::npos) return true;
  return false;
}
}  // namespace

// `fp4qat check-export` (issue 21) on the trainer's own exports: NVFP4 and BF16 load in every
// engine; MXFP8 in the engine it was laid out for (export.engine) and not the other, naming the
// scale tensor; and every defect an engine would not report is found, naming the tensor or key:
// a missing tensor, one the engine would not load, gate/up with different weight_scale_2, a
// wildcard or a wrong entry in the exclusion list.
TEST(CheckExport, TrainerExportsLoadAndDefectsAreNamed) {
  test::TempDir d;
  cfg::Config c = small_run(d.file("run"));
  c.exports.every = 3;
  c.exports.formats = {fp4qat::qat::Format::kNVFP4, fp4qat::qat::Format::kMXFP8, fp4qat::qat::Format::kBF16};
  c.exports.probe_mismatch = false;
  train::Options o;
  o.quiet = true;
  train::run(c, o);
  cfg::Config v = c;
  v.train.out_dir = d.file("vllm");
  v.exports.engine = qat::Engine::kVllm;
  v.exports.formats = {fp4qat::qat::Format::kMXFP8};
  v.exports.probe_mismatch = true;  // the rollout side loads the vLLM layout (modelopt MXFP8, weight_scale)
  const train::Result rv = train::run(v, o);
  ASSERT_FALSE(rv.steps.empty());
  EXPECT_TRUE(std::isfinite(rv.steps.back().mismatch_mean));
  const std::string nv = d.file("run/exports/latest/nvfp4"), mx = d.file("run/exports/latest/mxfp8"),
                    bf = d.file("run/exports/latest/bf16"), mxv = d.file("vllm/exports/latest/mxfp8");
  for (auto e : {qat::Engine::kAny, qat::Engine::kVllm, qat::Engine::kSglang}) {
    for (const auto& dir : {nv, bf}) {
      const auto r = qat::check_export(dir, e);
      EXPECT_TRUE(r.ok()) << dir << " " << qat::to_string(e) << ": " << (r.errors.empty() ? "" : r.errors[0]);
    }
  }
  const auto rn = qat::check_export(nv, qat::Engine::kVllm);
  EXPECT_EQ(rn.format, "nvfp4");
  EXPECT_EQ(rn.quantized_modules, 2 * 4 * 3);
  EXPECT_EQ(rn.bf16_modules, 2 * 5 + 1);  // q/k/v/o and the router of 2 layers, lm_head
  EXPECT_TRUE(qat::check_export(mx, qat::Engine::kSglang).ok());
  EXPECT_TRUE(mentions(qat::check_export(mx, qat::Engine::kVllm), ".weight_scale missing"));
  EXPECT_TRUE(qat::check_export(mxv, qat::Engine::kVllm).ok());
  EXPECT_TRUE(mentions(qat::check_export(mxv, qat::Engine::kSglang), ".weight_scale_inv missing"));
  const json::Value info = json::parse(fs::read_text(d.file("vllm/exports/latest/export.json")), "export.json");
  EXPECT_EQ(info.at("engine").as_string(), "vllm");

  const std::string g = "model.layers.1.mlp.experts.2.gate_proj";
  copy_with(nv, d.file("missing"), g + ".input_scale", at::Tensor());
  EXPECT_TRUE(mentions(qat::check_export(d.file("missing"), qat::Engine::kAny), g + ".input_scale missing"));
  copy_with(nv, d.file("extra"), g + ".weight_scale_inv", at::zeros({64, 4}, at::kByte));
  EXPECT_TRUE(mentions(qat::check_export(d.file("extra"), qat::Engine::kAny), g + ".weight_scale_inv"));
  copy_with(nv, d.file("pair"), g + ".weight_scale_2", at::full({}, 0.125f));
  EXPECT_TRUE(mentions(qat::check_export(d.file("pair"), qat::Engine::kAny), "different weight_scale_2"));
  copy_with(nv, d.file("shape"), g + ".weight_scale", at::zeros({64, 3}, at::kFloat8_e4m3fn));
  EXPECT_TRUE(mentions(qat::check_export(d.file("shape"), qat::Engine::kAny), g + ".weight_scale: shape"));
  // The exclusion lists: an entry dropped (the module would be taken as quantized), and MXFP8
  // wildcards (SGLang matches literally).
  copy_with(nv, d.file("ignore"), "unused.none", at::Tensor());
  json::Value cfgj = json::parse(fs::read_text(d.file("ignore/config.json")), "config.json");
  json::Value qc = cfgj.at("quantization_config");
  json::Value ig = json::Value::array();
  for (const auto& x : qc.at("ignore").as_array())
    if (x.as_string() != "model.layers.0.self_attn.k_proj") ig.push_back(x);
  qc.set("ignore", ig);
  cfgj.set("quantization_config", qc);
  fs::write_text_atomic(d.file("ignore/config.json"), cfgj.dump(2) + "\n");
  const auto ri = qat::check_export(d.file("ignore"), qat::Engine::kAny);
  EXPECT_TRUE(mentions(ri, "model.layers.0.self_attn.k_proj.weight_scale missing"))
      << (ri.errors.empty() ? "" : ri.errors[0]);
  EXPECT_TRUE(mentions(ri, "exclude_modules differs"));
  copy_with(mx, d.file("wild"), "unused.none", at::Tensor());
  json::Value mj = json::parse(fs::read_text(d.file("wild/config.json")), "config.json");
  json::Value mq = mj.at("quantization_config");
  for (const char* k : {"modules_to_not_convert", "ignored_layers"})
    mq.set(k, json::Value::array({"lm_head", "model.layers.*.self_attn*", "model.layers.*.mlp.gate"}));
  mj.set("quantization_config", mq);
  fs::write_text_atomic(d.file("wild/config.json"), mj.dump(2) + "\n");
  EXPECT_TRUE(
      mentions(qat::check_export(d.file("wild"), qat::Engine::kSglang), "SGLang matches MXFP8 exclusions literally"));
}

// Serving profiles (qat.serving, issue 21): the trainer's forward reproduces the engine's
// activation arithmetic while the checkpoint stays W4A4. marlin: the forward is W4A16's with Marlin's
// weights (losses within 1e-3 of qat.activations: bf16, step for step), the export is quant_algo NVFP4 with
// input_scale and records "serving": "marlin", and the rollout side reading it back computes the
// trainer's forward exactly (mismatch 0 at every probe); flashinfer_per_token: row-scaled
// activations, recorded, mismatch 0. Both exports load in both engines (check-export).
// Contradictions are refused naming qat.serving.
TEST(ExportTrainServing, ProfilesReproduceTheEngineAndKeepTheW4A4Checkpoint) {
  test::TempDir d;
  auto run = [&](const std::string& name, qat::Serving serving, qat::Activations acts) {
    cfg::Config c = small_run(d.file(name));
    c.train.dtype = "bf16";  // the compute dtype of the BF16 export's other weights: mismatch exactly 0
    c.qat.serving = serving;
    c.qat.activations = acts;
    c.exports.every = 1;
    c.exports.probe_mismatch = true;
    train::Options o;
    o.quiet = true;
    return train::run(c, o);
  };
  const auto marlin = run("marlin", qat::Serving::kMarlin, qat::Activations::kNVFP4);
  const auto w4a16 = run("w4a16", qat::Serving::kFp4qat, qat::Activations::kBF16);
  const auto tok = run("tok", qat::Serving::kPerToken, qat::Activations::kNVFP4);
  const auto plain = run("plain", qat::Serving::kFp4qat, qat::Activations::kNVFP4);
  ASSERT_EQ(marlin.steps.size(), w4a16.steps.size());
  for (size_t i = 0; i < marlin.steps.size(); ++i) {
    // Marlin's weights (qat/marlin.h): W4A16's, with S_dec rounded to bf16 and blocks of subnormal
    // scale flushed: the losses differ from plain W4A16 at the bf16-rounding level only.
    EXPECT_NEAR(marlin.steps[i].loss, w4a16.steps[i].loss, 1e-3) << "step " << i;
    EXPECT_EQ(marlin.steps[i].mismatch_mean, 0.0) << "step " << i;
    EXPECT_EQ(tok.steps[i].mismatch_mean, 0.0) << "step " << i;
  }
  EXPECT_NE(marlin.steps.back().loss, plain.steps.back().loss);  // the profile changes the forward
  EXPECT_NE(tok.steps.back().loss, plain.steps.back().loss);
  const std::string m = d.file("marlin/exports/latest/nvfp4");
  const json::Value qc = json::parse(fs::read_text(m + "/config.json"), "config.json").at("quantization_config");
  EXPECT_EQ(qc.at("quant_algo").as_string(), "NVFP4");
  EXPECT_EQ(qc.at("fp4qat").at("serving").as_string(), "marlin");
  EXPECT_EQ(qc.at("fp4qat").at("activations").as_string(), "nvfp4");
  EXPECT_TRUE(load_folder(m).count("model.layers.0.mlp.experts.0.gate_proj.input_scale"));
  const json::Value qt = json::parse(fs::read_text(d.file("tok/exports/latest/nvfp4/config.json")), "config.json")
                             .at("quantization_config");
  EXPECT_EQ(qt.at("fp4qat").at("serving").as_string(), "flashinfer_per_token");
  EXPECT_EQ(qt.at("fp4qat").at("activation_scale").as_string(), "row");
  for (const auto& dir : {m, d.file("tok/exports/latest/nvfp4")})
    for (auto e : {qat::Engine::kVllm, qat::Engine::kSglang}) {
      const auto chk = qat::check_export(dir, e);
      EXPECT_TRUE(chk.ok()) << dir << ": " << (chk.errors.empty() ? "" : chk.errors[0]);
    }
  // Contradictions.
  cfg::Config bad = small_run(d.file("bad"));
  bad.qat.serving = qat::Serving::kMarlin;
  bad.qat.activations = qat::Activations::kBF16;
  EXPECT_THROW(bad.qat.validate(), fp4qat::Error);
  bad.qat.activations = qat::Activations::kNVFP4;
  bad.qat.activation_scale = qat::ActivationScale::kRow;
  EXPECT_THROW(bad.qat.validate(), fp4qat::Error);
  bad.qat.activation_scale = qat::ActivationScale::kTensor;
  bad.qat.four_over_six = qat::FourOverSix::kAll;
  EXPECT_THROW(bad.qat.validate(), fp4qat::Error);
  bad.qat.four_over_six = qat::FourOverSix::kWeights;
  EXPECT_NO_THROW(bad.qat.validate());
  bad.qat.format = qat::Format::kMXFP8;
  try {
    bad.qat.validate();
    ADD_FAILURE() << "qat.serving with mxfp8 accepted";
  } catch (const fp4qat::Error& e) {
    EXPECT_NE(std::string(e.what()).find("serving"), std::string::npos) << e.what();
  }
}

// flashinfer_static (qat.serving, issue 21): the trainer quantizes the activations of each
// quantized parameter (all its experts) with one static amax — a calibration forward's before the
// first export, then the latest export's — and every export writes it as the input_scale of each
// of the parameter's modules, so that an engine's S_enc = 1 / max_e(input_scale_e) is the
// trainer's. Checked: the probe reads 0 at every step; within a parameter every module's
// input_scale is the same and its float32 reciprocal is the S_enc of the amax checkpoints record;
// the value follows the activations (it changes between exports); the profile changes the forward
// (losses differ from the fp4qat profile's); the rollout side serves the export with the static
// scale (the fp4qat profile on the same files computes something else); a stopped and resumed run
// is bit-identical to an uninterrupted one (losses, exported bytes).
TEST(ExportTrainServing, StaticProfileQuantizesWithTheLatestExportsScale) {
  test::TempDir d;
  auto config = [&](const std::string& name, qat::Serving serving) {
    cfg::Config c = small_run(d.file(name));
    c.train.dtype = "bf16";
    c.train.steps = 4;
    c.train.checkpoint_every = 2;
    c.qat.serving = serving;
    c.exports.every = 1;
    c.exports.probe_mismatch = true;
    return c;
  };
  train::Options o;
  o.quiet = true;
  const cfg::Config a = config("a", qat::Serving::kStatic);
  const auto ra = train::run(a, o);
  const auto plain = train::run(config("plain", qat::Serving::kFp4qat), o);
  ASSERT_EQ(ra.steps.size(), 4u);
  for (size_t i = 0; i < ra.steps.size(); ++i) EXPECT_EQ(ra.steps[i].mismatch_mean, 0.0) << "step " << i + 1;
  EXPECT_NE(ra.steps.back().loss, plain.steps.back().loss);
  // input_scale per parameter: layer l's experts' gate/up (one parameter) and down (another).
  auto scales = [&](const std::string& dir) -> std::map<std::string, std::set<float>> {
    std::map<std::string, std::set<float>> by_param;
    for (const auto& [name, t] : load_folder(dir)) {
      if (!ends_with(name, ".input_scale")) continue;
      const size_t ex = name.find(".mlp.experts.");
      EXPECT_NE(ex, std::string::npos) << name << ": expert-only QAT quantizes experts only";
      const std::string proj = name.find("down_proj") != std::string::npos ? "down" : "gate_up";
      by_param[name.substr(0, ex) + "/" + proj].insert(t.item<float>());
    }
    return by_param;
  };
  std::set<float> seen_values;
  for (int step = 1; step <= 4; ++step) {
    const auto by_param = scales(d.file("a/exports/step-" + std::to_string(step) + "/nvfp4"));
    ASSERT_EQ(by_param.size(), 4u);  // 2 layers x (gate_up, down)
    for (const auto& [p, v] : by_param) {
      ASSERT_EQ(v.size(), 1u) << "step " << step << " " << p << ": the experts' input_scale differ";
      seen_values.insert(*v.begin());
    }
  }
  EXPECT_GT(seen_values.size(), 4u);  // recalibrated from each window's activations
  // The checkpoint of step 4 records the static amax; its input_scale is step 4's export's, and
  // the engine's reciprocal of it is the amax's S_enc.
  const json::Value state = json::parse(fs::read_text(d.file("a/checkpoints/step-4/state.json")), "state.json");
  const json::Value& sa = state.at("static_input_amax");
  ASSERT_EQ(sa.as_object().size(), 4u);
  std::set<float> from_state;
  for (const auto& [p, v] : sa.as_object()) {
    const float amax = static_cast<float>(v.at("amax").as_double());
    from_state.insert(qat::nvfp4_input_scale(amax));
    EXPECT_EQ(1.0f / qat::nvfp4_input_scale(amax), fmt::nvfp4_s_enc(amax)) << p;
  }
  std::set<float> exported;
  for (const auto& [p, v] : scales(d.file("a/exports/step-4/nvfp4"))) exported.insert(*v.begin());
  EXPECT_EQ(from_state, exported);
  // The rollout side: the profile the export records, against the fp4qat profile on the same files.
  const std::string last = d.file("a/exports/latest/nvfp4");
  const json::Value qc = json::parse(fs::read_text(last + "/config.json"), "config.json").at("quantization_config");
  EXPECT_EQ(qc.at("fp4qat").at("serving").as_string(), "flashinfer_static");
  const at::Tensor ids = at::randint(0, 32, {2, 12}, at::make_generator<at::CPUGeneratorImpl>(3));
  auto lp = [&](const std::string& profile) {
    rollout::Loaded l = rollout::load(last, at::kCPU, profile);
    return rollout::token_logprobs(*l.model, *l.policy, ids, at::kBFloat16);
  };
  EXPECT_FALSE(at::equal(lp(""), lp("fp4qat")));
  EXPECT_TRUE(at::equal(lp(""), lp("flashinfer_static")));
  // Stopped after 2 steps and resumed: the same losses and the same exported bytes.
  cfg::Config b = a;
  b.train.out_dir = d.file("b");
  const auto rb = test::run_stopped_and_resumed(b, o, 2);
  ASSERT_EQ(rb.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(rb[i].loss, ra.steps[i].loss) << "step " << i + 1;
  const auto fa = load_folder(d.file("a/exports/step-4/nvfp4")), fb = load_folder(d.file("b/exports/step-4/nvfp4"));
  ASSERT_EQ(fa.size(), fb.size());
  for (const auto& [n, t] : fa) EXPECT_TRUE(bytes_equal(fb.at(n), t)) << n;
  // flashinfer_static with a rule it does not serve is refused naming qat.serving.
  cfg::Config bad = a;
  bad.qat.activation_scale = qat::ActivationScale::kRow;
  try {
    bad.qat.validate();
    ADD_FAILURE() << "flashinfer_static with row-scaled activations accepted";
  } catch (const fp4qat::Error& e) {
    EXPECT_NE(std::string(e.what()).find("flashinfer_static"), std::string::npos) << e.what();
  }
}
