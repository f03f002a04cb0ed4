// tests/trainer/test_config.cpp — trainer/config.h: precedence (defaults < model_config file <
// recipe < --set), dump round trip, and rejection of unknown keys, wrong types, out-of-range
// values, bad files — each message naming the key path and file.
#include <gtest/gtest.h>

#include "kernels/common/check.h"
#include "io/http.h"
#include "trainer/config.h"
#include "tests/common/test_util.h"

namespace cfg = fp4qat::config;
using fp4qat::test::TempDir;

namespace {
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    FAIL() << "expected an error mentioning " << needles[0];
  } catch (const fp4qat::Error& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(Config, PrecedenceDefaultsModelFileRecipeSet) {
  TempDir d;
  fp4qat::test::write_bytes(d.file("tiny.yaml"), "hidden_size: 256\nnum_experts: 16\nvocab_size: 1000\n");
  fp4qat::test::write_bytes(d.file("r.yaml"),
                            "model_config: tiny.yaml\nmodel:\n  num_experts: 32\noptim:\n  lr: 1.0e-4\n"
                            "qat:\n  format: nvfp4\n  modules: ['model.layers.*.mlp.experts.*']\n");
  cfg::Config c;
  cfg::apply_recipe_file(c, d.file("r.yaml"));
  cfg::apply_set(c, "model.vocab_size=2048");
  cfg::apply_set(c, "qat.backward=dequantized");
  EXPECT_EQ(c.model.hidden_size, 256);                                          // from the model file
  EXPECT_EQ(c.model.num_experts, 32);                                           // recipe beats the model file
  EXPECT_EQ(c.model.vocab_size, 2048);                                          // --set beats both
  EXPECT_EQ(c.model.num_hidden_layers, cfg::Config().model.num_hidden_layers);  // default kept
  EXPECT_DOUBLE_EQ(c.optim.lr, 1e-4);
  EXPECT_EQ(c.qat.format, fp4qat::qat::Format::kNVFP4);
  EXPECT_EQ(c.qat.backward, fp4qat::autograd::Backward::kDequantized);
  EXPECT_NO_THROW(cfg::validate(c));
}

TEST(Config, SetModelConfigAppliesThatFileInOrder) {
  TempDir d;
  fp4qat::test::write_bytes(d.file("shape.yaml"), "hidden_size: 256\nnum_experts: 16\n");
  fp4qat::test::write_bytes(d.file("r.yaml"), "model:\n  num_experts: 32\n  vocab_size: 1000\n");
  cfg::Config c;
  cfg::apply_recipe_file(c, d.file("r.yaml"));
  cfg::apply_set(c, "model_config=" + d.file("shape.yaml"));
  EXPECT_EQ(c.model.hidden_size, 256);  // from the file
  EXPECT_EQ(c.model.num_experts, 16);   // the file, set after the recipe, beats it
  EXPECT_EQ(c.model.vocab_size, 1000);  // the recipe's, where the file says nothing
  cfg::apply_set(c, "model.num_experts=8");
  EXPECT_EQ(c.model.num_experts, 8);  // a later --set beats the file
  EXPECT_EQ(c.model_config, d.file("shape.yaml"));
  EXPECT_THROW(cfg::apply_set(c, "model_config=" + d.file("nope.yaml")), fp4qat::Error);
  fp4qat::test::write_bytes(d.file("bad.yaml"), "hidden_sise: 256\n");
  try {
    cfg::apply_set(c, "model_config=" + d.file("bad.yaml"));
    FAIL() << "expected an error";
  } catch (const fp4qat::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.hidden_sise"), std::string::npos) << e.what();
  }
}

TEST(Config, DumpRoundTrips) {
  cfg::Config c;
  cfg::apply_set(c, "model.mlp_only_layers=[0, 1]");
  cfg::apply_set(c, "train.out_dir=runs/x y");
  cfg::apply_set(c, "optim.lr=0.000123456789");
  const std::string text = cfg::dump(c);
  cfg::Config back;
  cfg::apply_yaml_text(back, text, "dump");
  EXPECT_EQ(cfg::dump(back), text);
  EXPECT_EQ(back.model.mlp_only_layers, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(back.train.out_dir, "runs/x y");
  EXPECT_DOUBLE_EQ(back.optim.lr, 0.000123456789);
  EXPECT_NE(text.find("qat:"), std::string::npos);
}

TEST(Config, RejectsUnknownKeysWithPathAndFile) {
  cfg::Config c;
  expect_error([&] { cfg::apply_yaml_text(c, "optim:\n  lr: 1\n  lrr: 2\n", "r.yaml"); }, {"r.yaml", "optim.lrr"});
  expect_error([&] { cfg::apply_yaml_text(c, "trian:\n  steps: 1\n", "r.yaml"); }, {"r.yaml", "trian"});
  expect_error([&] { cfg::apply_set(c, "train.stepz=3"); }, {"train.stepz"});
}

TEST(Config, RejectsWrongTypesAndRanges) {
  cfg::Config c;
  expect_error([&] { cfg::apply_yaml_text(c, "train:\n  steps: many\n", "r.yaml"); },
               {"r.yaml", "train.steps", "many"});
  expect_error([&] { cfg::apply_yaml_text(c, "train:\n  steps: -5\n", "r.yaml"); }, {"train.steps", "> 0"});
  expect_error([&] { cfg::apply_yaml_text(c, "optim:\n  beta1: 1.5\n", "r.yaml"); }, {"optim.beta1"});
  expect_error([&] { cfg::apply_yaml_text(c, "qat:\n  format: int3\n", "r.yaml"); }, {"qat.format", "int3"});
  expect_error([&] { cfg::apply_yaml_text(c, "qat:\n  modules: 7\n", "r.yaml"); }, {"qat.modules", "list"});
  expect_error([&] { cfg::apply_yaml_text(c, "model: 3\n", "r.yaml"); }, {"r.yaml", "model"});
  expect_error([&] { cfg::apply_set(c, "train.seed=-1"); }, {"train.seed"});
  expect_error([&] { cfg::apply_set(c, "noequals"); }, {"KEY=VALUE"});
}

TEST(Config, RejectsValuesThatCannotWork) {  // issue 23 item 11
  cfg::Config c;
  for (const char* s : {"optim.lr=.inf", "optim.weight_decay=.inf", "optim.eps=.inf", "optim.lr=.nan",
                        "rl.tis_cap=.inf", "model.rope_theta=-.inf"}) {
    const std::string key = std::string(s).substr(0, std::string(s).find('='));
    expect_error([&] { cfg::apply_set(c, s); }, {key, "finite"});
  }
  expect_error([&] { cfg::apply_yaml_text(c, "optim:\n  eps: .Inf\n", "r.yaml"); }, {"r.yaml", "optim.eps", "finite"});
  expect_error([&] { cfg::apply_set(c, "data.max_operand=9223372036854775807"); }, {"data.max_operand", "64 bits"});
  cfg::apply_set(c, "data.max_operand=100000000000000000");  // the largest accepted
  EXPECT_EQ(c.data.max_operand, 100000000000000000);
  // Duplicate keys (at any depth) and a second document are refused, naming file and line.
  expect_error([&] { cfg::apply_yaml_text(c, "optim:\n  lr: 1e-3\n  lr: 2e-3\n", "dup.yaml"); },
               {"dup.yaml:3", "'lr' given twice"});
  expect_error([&] { cfg::apply_yaml_text(c, "train:\n  steps: 3\ntrain:\n  seed: 1\n", "dup.yaml"); },
               {"dup.yaml:3", "'train' given twice"});
  expect_error([&] { cfg::apply_yaml_text(c, "optim:\n  lr: 1e-3\n---\noptim:\n  lr: 5\n", "two.yaml"); },
               {"two.yaml", "more than one YAML document"});
  cfg::apply_yaml_text(c, "---\noptim:\n  lr: 0.25\n", "one.yaml");  // one document with its marker is fine
  EXPECT_EQ(c.optim.lr, 0.25);
}

TEST(Config, RejectsBadFiles) {
  TempDir d;
  cfg::Config c;
  expect_error([&] { cfg::apply_recipe_file(c, d.file("missing.yaml")); }, {"missing.yaml", "not found"});
  fp4qat::test::write_bytes(d.file("bad.yaml"), "train:\n  steps: [1, 2\n");
  expect_error([&] { cfg::apply_recipe_file(c, d.file("bad.yaml")); }, {"bad.yaml", "YAML error"});
  fp4qat::test::write_bytes(d.file("r.yaml"), "model_config: nope.yaml\n");
  expect_error([&] { cfg::apply_recipe_file(c, d.file("r.yaml")); }, {"r.yaml", "nope.yaml"});
}

TEST(Config, CrossFieldValidation) {
  cfg::Config c;
  cfg::apply_set(c, "model.num_key_value_heads=3");
  expect_error([&] { cfg::validate(c); }, {"model.num_attention_heads", "model.num_key_value_heads"});
  c = cfg::Config();
  cfg::apply_set(c, "model.num_experts_per_tok=9");
  expect_error([&] { cfg::validate(c); }, {"model.num_experts_per_tok"});
  c = cfg::Config();
  cfg::apply_set(c, "qat.format=nvfp4");
  cfg::apply_set(c, "model.moe_intermediate_size=40");
  expect_error([&] { cfg::validate(c); }, {"moe_intermediate_size", "16"});
  c = cfg::Config();
  cfg::apply_set(c, "data.kind=tokens");
  expect_error([&] { cfg::validate(c); }, {"data.path"});
}

TEST(Config, ShippedModelConfigsAreValid) {
  int n = 0;
  for (const std::string name : {"tiny.yaml", "moe-100m.yaml", "qwen3-30b-a3b.yaml"}) {
    TempDir d;
    fp4qat::test::write_bytes(d.file("r.yaml"), "model_config: " + std::string(FP4QAT_SOURCE_DIR) + "/configs/" + name +
                                                    "\nqat:\n  format: nvfp4\n");
    cfg::Config c;
    ASSERT_NO_THROW(cfg::apply_recipe_file(c, d.file("r.yaml"))) << name;
    EXPECT_NO_THROW(cfg::validate(c)) << name;
    ++n;
  }
  cfg::Config q;
  fp4qat::test::TempDir d;
  fp4qat::test::write_bytes(d.file("r.yaml"),
                            "model_config: " + std::string(FP4QAT_SOURCE_DIR) + "/configs/qwen3-30b-a3b.yaml\n");
  cfg::apply_recipe_file(q, d.file("r.yaml"));
  EXPECT_EQ(q.model.num_experts, 128);
  EXPECT_EQ(q.model.moe_intermediate_size, 768);
  EXPECT_EQ(n, 3);
}

// export.push_*: the push to a running engine (trainer/exporter.h, io/http.h).
TEST(Config, PushKeys) {
  cfg::Config c;
  EXPECT_TRUE(c.exports.push_url.empty());  // off by default
  EXPECT_EQ(c.exports.push_body, R"({"model_path": "{path}", "flush_cache": true})");
  EXPECT_FALSE(c.exports.push_required);
  // {path} is JSON-escaped for use inside a string, {step} is the number; the rest stays as written.
  EXPECT_EQ(c.exports.push_request("/runs/a \"b\"\\c/exports/step-7/nvfp4", 7),
            R"({"model_path": "/runs/a \"b\"\\c/exports/step-7/nvfp4", "flush_cache": true})");
  c.exports.push_body = R"({"model_path": "{path}", "weight_version": "{step}", "again": "{path}"})";
  EXPECT_EQ(c.exports.push_request("/p", 12), R"({"model_path": "/p", "weight_version": "12", "again": "/p"})");
  // The URL: http(s) only; in a build without libcurl any URL is refused, saying so.
  c = cfg::Config();
  cfg::apply_set(c, "export.push_url=");
  if (fp4qat::http::available()) {
    cfg::apply_yaml_text(c, "export:\n  push_url: http://127.0.0.1:30000/update_weights_from_disk\n", "r.yaml");
    EXPECT_EQ(c.exports.push_url, "http://127.0.0.1:30000/update_weights_from_disk");
    cfg::apply_set(c, "export.push_url=https://engine:8443/update_weights_from_disk");
  } else {
    expect_error([&] { cfg::apply_set(c, "export.push_url=http://127.0.0.1:30000/x"); },
                 {"export.push_url", "no libcurl", "libcurl4-openssl-dev"});
  }
  for (const std::string bad : {"ftp://h/x", "127.0.0.1:30000/x", "http://", "file:///etc/passwd"})
    expect_error([&] { cfg::apply_yaml_text(c, "export:\n  push_url: '" + bad + "'\n", "r.yaml"); },
                 {"r.yaml", "export.push_url", "http:// or https://", bad});
  // The body must name {path} and be JSON with it replaced.
  expect_error([&] { cfg::apply_yaml_text(c, "export:\n  push_body: '{\"flush_cache\": true}'\n", "r.yaml"); },
               {"r.yaml", "export.push_body", "{path}"});
  expect_error([&] { cfg::apply_yaml_text(c, "export:\n  push_body: '{\"model_path\": {path}}'\n", "r.yaml"); },
               {"r.yaml", "export.push_body", "JSON", "\"{path}\""});
  cfg::apply_yaml_text(c, "export:\n  push_body: '{\"model_path\": \"{path}\", \"step\": {step}}'\n", "r.yaml");
  // The timeout: seconds > 0.
  for (const std::string bad : {"0", "-1", ".inf", "soon"})
    expect_error([&] { cfg::apply_set(c, "export.push_timeout_s=" + bad); }, {"export.push_timeout_s"});
  cfg::apply_set(c, "export.push_timeout_s=0.5");
  EXPECT_DOUBLE_EQ(c.exports.push_timeout_s, 0.5);
  cfg::apply_set(c, "export.push_required=true");
  EXPECT_TRUE(c.exports.push_required);
  // A push URL without exports is refused.
  if (fp4qat::http::available()) {
    cfg::Config off;
    cfg::apply_set(off, "export.push_url=http://127.0.0.1:30000/update_weights_from_disk");
    cfg::apply_set(off, "export.every=0");
    expect_error([&] { cfg::validate(off); }, {"export.push_url", "exports are off"});
    cfg::apply_set(off, "export.every=2");
    EXPECT_NO_THROW(cfg::validate(off));
  }
}
