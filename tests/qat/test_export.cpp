// tests/qat/test_export.cpp — qat/patterns.h and qat/export.h: exclude patterns never match a
// quantized module and cover every excluded one; the NVFP4/MXFP8/BF16 folder writer produces the
// tensors, dtypes, shapes, bytes and config files of checkpoint-format.md; the staged folder
// writes the writer's bytes.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "kernels/common/check.h"
#include "kernels/common/formats.h"
#include "qat/export.h"
#include "io/fs.h"
#include "io/json.h"
#include "qat/patterns.h"
#include "io/safetensors.h"
#include "tests/common/test_util.h"

using namespace fp4qat;
using fp4qat::test::bytes_equal;

namespace {

// Linear modules of a small Qwen3-MoE: L layers, E experts.
std::set<std::string> modules_of(int L, int E) {
  std::set<std::string> out = {"lm_head"};
  for (int l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj"}) out.insert(p + ".self_attn." + m);
    out.insert(p + ".mlp.gate");
    for (int e = 0; e < E; ++e)
      for (const char* m : {"gate_proj", "up_proj", "down_proj"})
        out.insert(p + ".mlp.experts." + std::to_string(e) + "." + m);
  }
  return out;
}

void check_cover(const std::vector<std::string>& pats, const std::set<std::string>& excluded,
                 const std::set<std::string>& quantized) {
  for (const auto& q : quantized)
    for (const auto& p : pats) EXPECT_FALSE(qat::glob_match(p, q)) << p << " matches quantized " << q;
  for (const auto& x : excluded) {
    bool hit = false;
    for (const auto& p : pats) hit = hit || qat::glob_match(p, x);
    EXPECT_TRUE(hit) << x << " is not excluded";
  }
}

at::Tensor read(const st::Reader& r, const std::string& name) { return r.view(name).clone(); }

std::map<std::string, std::string> weight_map(const std::string& dir) {
  const std::string f = dir + "/model.safetensors.index.json";
  std::map<std::string, std::string> out;
  const json::Value index = json::parse(fs::read_text(f), f);
  for (const auto& [k, v] : index.at("weight_map").as_object()) out[k] = v.as_string();
  return out;
}

// All tensors of a written folder, by name.
std::map<std::string, at::Tensor> load_all(const std::string& dir) {
  std::map<std::string, at::Tensor> out;
  std::map<std::string, std::unique_ptr<st::Reader>> readers;
  for (const auto& [name, file] : weight_map(dir)) {
    auto& r = readers[file];
    if (!r) r = std::make_unique<st::Reader>(dir + "/" + file);
    out[name] = read(*r, name);
  }
  return out;
}

const char* kConfig = R"({"model_type": "qwen3_moe", "hidden_size": 64})";

}  // namespace

TEST(ExportPatterns, ExpertOnlyGivesTheSpecPatterns) {
  const auto all = modules_of(3, 4);
  std::set<std::string> q, x;
  for (const auto& m : all) (m.find(".experts.") != std::string::npos ? q : x).insert(m);
  const auto pats = qat::exclude_patterns(x, q);
  EXPECT_EQ(pats, (std::vector<std::string>{"lm_head", "model.layers.*.mlp.gate", "model.layers.*.self_attn*"}));
  check_cover(pats, x, q);
}

TEST(ExportPatterns, KeptLayersAndPartialSelectionsStayExact) {
  const auto all = modules_of(12, 3);
  std::set<std::string> q, x;
  for (const auto& m : all) {
    // layer 1 and 10 kept in BF16; in layer 5 only the down projections are quantized; q_proj of
    // layer 7 is quantized.
    const bool expert = m.find(".experts.") != std::string::npos;
    const bool kept = m.rfind("model.layers.1.", 0) == 0 || m.rfind("model.layers.10.", 0) == 0;
    const bool half = m.rfind("model.layers.5.", 0) == 0 && m.find("down_proj") == std::string::npos;
    ((expert && !kept && !half) || m == "model.layers.7.self_attn.q_proj" ? q : x).insert(m);
  }
  const auto pats = qat::exclude_patterns(x, q);
  check_cover(pats, x, q);
  // A kept layer is excluded as a whole, with no dot before the `*`, so that an engine's fused
  // module name (model.layers.1.mlp.experts) matches too.
  EXPECT_NE(std::find(pats.begin(), pats.end(), "model.layers.1.mlp*"), pats.end());
  EXPECT_TRUE(qat::glob_match("model.layers.1.mlp*", "model.layers.1.mlp.experts"));
  EXPECT_FALSE(qat::glob_match("model.layers.1.mlp*", "model.layers.10.mlp.experts.0.up_proj"));
}

// The lists the exports write: explicit module paths, no wildcard, no single expert (engines
// take any listed path under <...>.experts as excluding the whole fused MoE): a layer whose
// experts are all excluded lists its fused module (model.layers.L.mlp.experts); a layer with some
// experts quantized lists none of them (it cannot be served; check_export says so).
TEST(ExportPatterns, ExcludeListIsExplicit) {
  const auto all = modules_of(4, 3);
  std::set<std::string> q, x;
  for (const auto& m : all) {
    const bool expert = m.find(".experts.") != std::string::npos;
    const bool kept = m.rfind("model.layers.1.", 0) == 0;               // layer 1 stays BF16
    const bool one = m.rfind("model.layers.2.mlp.experts.0.", 0) == 0;  // one expert of layer 2
    ((expert && !kept && !one) ? q : x).insert(m);
  }
  const auto list = qat::exclude_list(x, q);
  std::set<std::string> want;
  for (const auto& m : x)
    if (m.find(".experts.") == std::string::npos) want.insert(m);
  want.insert("model.layers.1.mlp.experts");
  EXPECT_EQ(std::set<std::string>(list.begin(), list.end()), want);
  EXPECT_TRUE(std::is_sorted(list.begin(), list.end()));
  for (const auto& m : list) {
    EXPECT_EQ(m.find('*'), std::string::npos) << m;
    EXPECT_EQ(m.find(".experts."), std::string::npos) << m;
  }
}

class ExportWriter : public ::testing::TestWithParam<Blocks> {};

TEST_P(ExportWriter, NVFP4FolderMatchesTheSpecAndTheQuantizer) {
  const Blocks blocks = GetParam();
  test::TempDir d;
  at::manual_seed(7);
  const int64_t E = 3, I = 32, H = 64;
  const at::Tensor gate_up = at::randn({E, 2 * I, H}) * at::rand({E, 2 * I, 1}) * 4;  // [E, 2I, H] fp32 master
  const at::Tensor down = at::randn({E, H, I});
  const at::Tensor attn = at::randn({H, H}), norm = at::ones({H});
  std::vector<std::string> gu, dn;
  std::vector<float> gu_amax, dn_amax;
  for (int64_t e = 0; e < E; ++e) {
    gu.push_back("model.layers.0.mlp.experts." + std::to_string(e) + ".gate_proj");
    gu.push_back("model.layers.0.mlp.experts." + std::to_string(e) + ".up_proj");
    dn.push_back("model.layers.0.mlp.experts." + std::to_string(e) + ".down_proj");
    gu_amax.insert(gu_amax.end(), {1.5f + e, 1.5f + e});
    dn_amax.push_back(0.25f * (e + 1));
  }
  qat::ExportOptions opt;
  opt.blocks = blocks;
  opt.config_json = kConfig;
  opt.producer_version = "test";
  opt.max_shard_bytes = 6000;  // several shards
  fs::make_dir(d.file("out"));
  qat::HfFolderWriter w(d.file("out"), opt);
  w.add_plain("model.layers.0.self_attn.q_proj.weight", attn);
  w.add_plain("model.layers.0.input_layernorm.weight", norm);
  w.add_quantized(gu, 2, gate_up, std::nullopt, gu_amax);
  w.add_quantized(dn, 1, down, std::nullopt, dn_amax);
  const auto pats = w.finish();
  EXPECT_EQ(pats, (std::vector<std::string>{"lm_head", "model.layers.0.self_attn.q_proj"}));

  const auto wm = weight_map(d.file("out"));
  std::set<std::string> files;
  for (const auto& [n, f] : wm) files.insert(f);
  ASSERT_GT(files.size(), 1u);
  for (const auto& f : files)
    EXPECT_TRUE(f.find("-of-0000" + std::to_string(files.size()) + ".safetensors") != std::string::npos) << f;
  auto t = load_all(d.file("out"));
  EXPECT_EQ(t.size(), wm.size());
  EXPECT_EQ(t.size(), 2u + 4u * (2 * E + E));
  EXPECT_TRUE(bytes_equal(t["model.layers.0.self_attn.q_proj.weight"], attn.to(at::kBFloat16)));
  EXPECT_TRUE(bytes_equal(t["model.layers.0.input_layernorm.weight"], norm.to(at::kBFloat16)));
  for (int64_t e = 0; e < E; ++e) {
    // The reference: each member quantized alone from the bf16 compute copy, with the pair's
    // shared amax for gate/up.
    const at::Tensor g = gate_up[e].narrow(0, 0, I).to(at::kBFloat16), u = gate_up[e].narrow(0, I, I).to(at::kBFloat16);
    const at::Tensor shared = at::maximum(global_amax(g), global_amax(u));
    const std::string ge = gu[2 * e], ue = gu[2 * e + 1], de = dn[e];
    for (const auto& [name, x, a] : std::vector<std::tuple<std::string, at::Tensor, std::optional<at::Tensor>>>{
             {ge, g, shared}, {ue, u, shared}, {de, down[e].to(at::kBFloat16), std::nullopt}}) {
      const NVFP4Tensor q = nvfp4_quantize(x, blocks, a);
      EXPECT_TRUE(bytes_equal(t[name + ".weight"], q.codes)) << name;
      EXPECT_TRUE(bytes_equal(t[name + ".weight_scale"], q.scales)) << name;
      EXPECT_TRUE(bytes_equal(t[name + ".weight_scale_2"], q.s_dec)) << name;
      EXPECT_EQ(t[name + ".weight"].scalar_type(), at::kByte);
      EXPECT_EQ(t[name + ".weight_scale"].scalar_type(), at::kFloat8_e4m3fn);
      EXPECT_EQ(t[name + ".weight_scale_2"].dim(), 0);
      EXPECT_EQ(t[name + ".input_scale"].dim(), 0);
    }
    EXPECT_TRUE(bytes_equal(t[ge + ".weight_scale_2"], t[ue + ".weight_scale_2"]));
    EXPECT_EQ(t[ge + ".input_scale"].item<float>(), qat::nvfp4_input_scale(1.5f + e));
    EXPECT_EQ(t[de + ".input_scale"].item<float>(), qat::nvfp4_input_scale(0.25f * (e + 1)));
    EXPECT_EQ(t[de + ".weight"].sizes(), (std::vector<int64_t>{H, I / 2}));
    EXPECT_EQ(t[de + ".weight_scale"].sizes(), (std::vector<int64_t>{H, I / 16}));
  }
  EXPECT_NEAR(qat::nvfp4_input_scale(2688.0f), 1.0f, 0);
  EXPECT_NEAR(qat::nvfp4_input_scale(1.0f), 1.0f / 2688.0f, 1e-12);

  const json::Value cfg = json::parse(fs::read_text(d.file("out/config.json")), "config.json");
  EXPECT_EQ(cfg.at("hidden_size").as_int(), 64);
  EXPECT_EQ(
      cfg.at("quantization_config").dump(),
      R"({"quant_method":"modelopt","quant_algo":"NVFP4","group_size":16,"ignore":["lm_head","model.layers.0.self_attn.q_proj"],"kv_cache_scheme":null})");
  const json::Value hq = json::parse(fs::read_text(d.file("out/hf_quant_config.json")), "hf_quant_config.json");
  EXPECT_EQ(
      hq.dump(),
      R"({"producer":{"name":"modelopt","version":"test"},"quantization":{"quant_algo":"NVFP4","kv_cache_quant_algo":null,"group_size":16,"exclude_modules":["lm_head","model.layers.0.self_attn.q_proj"]}})");
  const json::Value idx = json::parse(fs::read_text(d.file("out/model.safetensors.index.json")), "index");
  int64_t total = 0;
  for (const auto& [n, x] : t) total += x.numel() * x.element_size();
  EXPECT_EQ(idx.at("metadata").at("total_size").as_int(), total);
}

INSTANTIATE_TEST_SUITE_P(Blocks, ExportWriter, ::testing::Values(Blocks::k1D, Blocks::k2D));

TEST(ExportWriterFormats, MXFP8AndBF16) {
  test::TempDir d;
  at::manual_seed(3);
  const at::Tensor w = at::randn({2, 2 * 32, 64});
  const std::vector<std::string> mods = {"m.experts.0.gate_proj", "m.experts.0.up_proj", "m.experts.1.gate_proj",
                                         "m.experts.1.up_proj"};
  for (auto f : {qat::Format::kMXFP8, qat::Format::kBF16}) {
    const std::string dir = d.file(qat::to_string(f));
    fs::make_dir(dir);
    qat::ExportOptions opt;
    opt.format = f;
    opt.config_json = kConfig;
    qat::HfFolderWriter wr(dir, opt);
    wr.add_plain("lm_head.weight", at::randn({8, 64}));
    wr.add_quantized(mods, 2, w, std::nullopt, {});
    wr.finish();
    auto t = load_all(dir);
    const json::Value cfg = json::parse(fs::read_text(dir + "/config.json"), "config.json");
    EXPECT_FALSE(fs::exists(dir + "/hf_quant_config.json"));
    for (int64_t e = 0; e < 2; ++e)
      for (int64_t p = 0; p < 2; ++p) {
        const std::string m = mods[e * 2 + p];
        const at::Tensor x = w[e].narrow(0, p * 32, 32).to(at::kBFloat16);
        if (f == qat::Format::kMXFP8) {
          const MXFP8Tensor q = mxfp8_quantize(x);
          EXPECT_TRUE(bytes_equal(t[m + ".weight"], q.data)) << m;
          EXPECT_TRUE(bytes_equal(t[m + ".weight_scale_inv"], q.scales)) << m;
          EXPECT_EQ(t[m + ".weight_scale_inv"].sizes(), (std::vector<int64_t>{32, 2}));
        } else {
          EXPECT_TRUE(bytes_equal(t[m + ".weight"], x)) << m;
        }
      }
    if (f == qat::Format::kMXFP8) {
      EXPECT_EQ(
          cfg.at("quantization_config").dump(),
          R"({"quant_method":"mxfp8","activation_scheme":"dynamic","fmt":"e4m3","weight_block_size":[1,32],"scale_fmt":"ue8m0","modules_to_not_convert":["lm_head"],"ignored_layers":["lm_head"]})");
      EXPECT_EQ(t.size(), 9u);
    } else {
      EXPECT_EQ(cfg.find("quantization_config"), nullptr);
      EXPECT_EQ(t.size(), 5u);
    }
  }
}

TEST(ExportWriterErrors, NamesTheModule) {
  test::TempDir d;
  qat::ExportOptions opt;
  opt.config_json = kConfig;
  qat::HfFolderWriter w(d.path(), opt);
  try {  // NVFP4 without the observed activation amax: no placeholder input_scale
    w.add_quantized({"a.gate_proj", "a.up_proj"}, 2, at::randn({32, 64}), std::nullopt, {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a.gate_proj"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("input_scale"), std::string::npos) << e.what();
  }
  w.add_plain("x.weight", at::ones({2, 2}));
  EXPECT_THROW(w.add_plain("x.weight", at::ones({2, 2})), Error);  // twice
}

namespace {

// Every file of folder a equals the same-named file of folder b, byte for byte, and no file is missing.
void expect_same_files(const std::string& a, const std::string& b) {
  const auto fa = fs::list_dir(a), fb = fs::list_dir(b);
  EXPECT_EQ(fa, fb);
  for (const auto& f : fa) EXPECT_EQ(test::read_bytes(a + "/" + f), test::read_bytes(b + "/" + f)) << f;
}

}  // namespace

// The asynchronous export's staging (qat::StagedFolder) writes what HfFolderWriter writes, from
// its own copies: changing the weights after staging does not change the folder.
TEST(StagedFolder, WritesTheWritersBytesFromItsOwnCopies) {
  test::TempDir d;
  const int64_t E = 3, R = 16, K = 64;
  const std::vector<std::string> gu = test::expert_modules(0, E, true), dn = test::expert_modules(0, E, false);
  const std::vector<float> ia_gu = {0.5f, 1.f, 2.f, 3.f, 4.f, 5.f}, ia_dn = {7.f, 8.f, 9.f};
  for (auto f : {qat::Format::kNVFP4, qat::Format::kMXFP8, qat::Format::kBF16}) {
    SCOPED_TRACE(qat::to_string(f));
    at::Tensor wgu = at::randn({E, 2 * R, K}), wdn = at::randn({E, K, R * 2}), norm = at::rand({K}) + 0.5;
    qat::ExportOptions opt;
    opt.format = f;
    opt.config_json = kConfig;
    const std::string a = d.file(std::string("writer-") + qat::to_string(f)),
                      b = d.file(std::string("staged-") + qat::to_string(f));
    fs::make_dir(a);
    fs::make_dir(b);
    {
      qat::HfFolderWriter w(a, opt);
      w.add_quantized(gu, 2, wgu, std::nullopt, ia_gu);
      w.add_quantized(dn, 1, wdn, std::nullopt, ia_dn);
      w.add_plain("model.norm.weight", norm);
      w.finish();
    }
    qat::StagedFolder s(opt);
    s.add_quantized(gu, 2, wgu, std::nullopt, at::tensor(ia_gu));
    s.add_quantized(dn, 1, wdn, std::nullopt, at::tensor(ia_dn));
    s.add_plain("model.norm.weight", norm);
    s.fence();
    wgu.add_(1.0);  // the optimizer moves on
    wdn.mul_(3.0);
    norm.mul_(2.0);
    s.write(b);
    expect_same_files(a, b);
    EXPECT_THROW(s.add_plain("late.weight", norm), std::exception);  // nothing is staged after seal
  }
}

TEST(StagedFolder, FenceWaitsOnlyForReadsOfTensorsTheCallerMayChange) {
  qat::ExportOptions opt;
  opt.config_json = kConfig;
  const at::Tensor w = at::randn({2, 32, 64}).to(at::kBFloat16), ia = at::ones({2});
  const std::vector<std::string> dn = {"model.layers.0.mlp.experts.0.down_proj",
                                       "model.layers.0.mlp.experts.1.down_proj"};
  {
    qat::StagedFolder s(opt);  // cached quantized experts and a frozen tensor: nothing to wait for
    s.add_stack(dn, 1, qat::quantize_stack(qat::Format::kNVFP4, Blocks::k1D, w, 1, std::nullopt, "w"), ia);
    s.add_plain("model.norm.weight", at::ones({64}), /*stable=*/true);
    EXPECT_FALSE(s.fence_waits());
  }
  {
    qat::StagedFolder s(opt);  // a trainable tensor copied as it is
    s.add_stack(dn, 1, qat::quantize_stack(qat::Format::kNVFP4, Blocks::k1D, w, 1, std::nullopt, "w"), ia);
    s.add_plain("model.norm.weight", at::ones({64}));
    EXPECT_TRUE(s.fence_waits());
  }
  {
    qat::StagedFolder s(opt);  // weights quantized by the export itself
    s.add_quantized(dn, 1, w, std::nullopt, ia);
    EXPECT_TRUE(s.fence_waits());
  }
}

// The flashinfer_static profile's static activation amax (qat/export.h): for observed amaxes over
// 24 decades, and the edge cases, the static amax is at least the observed one and at most a few
// float32 ulps of S_enc away; engines' S_enc = 1 / input_scale (float32) equals the trainer's
// S_enc = 2688 / amax; the exported input_scale is the S_dec the trainer multiplies by; the rollout
// side recovers the same amax from the input_scale. (Counted: how many needed a step, so the
// search is exercised.)
TEST(StaticScale, AmaxSurvivesTheEnginesRoundTrip) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const at::Tensor e = at::rand({20000}, gen) * 24 - 12;  // log10 of the observed amax
  std::vector<float> obs = {0.0f, 1.0f, 6.0f, 448.0f, 2688.0f, 1e-30f, 3e38f, 1e-38f};
  for (int64_t i = 0; i < e.numel(); ++i) obs.push_back(std::pow(10.0f, e[i].item<float>()));
  int stepped = 0;
  for (const float o : obs) {
    const float a = qat::static_activation_amax(o);
    ASSERT_GE(a, o);
    const float t = fmt::nvfp4_s_enc(a), s = qat::nvfp4_input_scale(a);
    ASSERT_EQ(s, fmt::nvfp4_s_dec(t)) << o;
    ASSERT_EQ(1.0f / s, t) << "observed " << o << ": the engine's S_enc differs";
    const std::optional<float> back = qat::static_activation_amax_of_input_scale(s);
    ASSERT_TRUE(back.has_value()) << o;
    ASSERT_EQ(fmt::nvfp4_s_enc(*back), t) << o;
    if (o > 1e-30f && o < 1e30f) {
      EXPECT_LE(a, o * (1 + 1e-5f)) << o;  // a few ulps of S_enc, not a coarser scale
      stepped += fmt::nvfp4_s_enc(o) != t;
    }
  }
  EXPECT_EQ(qat::static_activation_amax(0.0f), 2688.0f);  // S_enc 1, as amax 0 gives
  EXPECT_GT(stepped, 100);  // the round trip fails for some S_enc: the search is needed
  EXPECT_THROW(qat::static_activation_amax(-1.0f), fp4qat::Error);
  EXPECT_THROW(qat::static_activation_amax(std::nanf("")), fp4qat::Error);
}

// An input_scale no flashinfer_static export writes: some arbitrary float32 values have no amax
// whose S_enc is their reciprocal; those are reported (nullopt), and every found one is exact.
TEST(StaticScale, InputScalesWithoutAnAmaxAreReported) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(8);
  const at::Tensor e = at::rand({5000}, gen) * 10 - 8;
  int missing = 0;
  for (int64_t i = 0; i < e.numel(); ++i) {
    const float s = std::pow(10.0f, e[i].item<float>());
    const std::optional<float> a = qat::static_activation_amax_of_input_scale(s);
    if (!a) {
      ++missing;
      continue;
    }
    EXPECT_EQ(fmt::nvfp4_s_enc(*a), 1.0f / s) << s;
  }
  EXPECT_GT(missing, 0);
  EXPECT_LT(missing, 1000);
  EXPECT_THROW(qat::static_activation_amax_of_input_scale(0.0f), fp4qat::Error);
}
