// tests/io/test_fuzz.cpp — a seeded mutation fuzzer per reader of user files (issue 23): the
// safetensors reader, YAML recipes (apply_recipe_file + validate), config.json (read_hf_config)
// JSONL rollout records (rollouts::read_file) and prepared dataset folders (data::Dataset, its
// five files carried in one fuzzed input). Valid inputs are mutated (byte and bit flips,
// truncation, inserted garbage and syntax, big and odd numbers, duplicated lines — duplicate keys —
// and repeated runs — deep nesting) and every mutant must either load or throw fp4qat::Error:
// any other exception, a crash, a hang (over kHangSeconds for one input) or a huge allocation
// (the data segment is limited to kMemoryLimit more than at the start) is a finding.
//
// Each target runs in a forked child (so a crash or hang is caught and its input kept) for
// FP4QAT_FUZZ_SECONDS seconds (default 10; e.g. FP4QAT_FUZZ_SECONDS=600 for a long run on
// demand), mutating from seed FP4QAT_FUZZ_SEED (default 1). A finding is written to
// FP4QAT_FUZZ_FINDINGS/<target>/ (default <build>/fuzz-findings/<target>/) and named in the
// failure; once fixed, copy it to tests/data/fuzz/<target>/, where every file is replayed first
// on every run (a regression case). The project builds with GCC, which has no libFuzzer, so this
// loop is the fuzz target CI runs (a clang -fsanitize=fuzzer build of the same readers is not
// set up).
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "io/fs.h"
#include "io/safetensors.h"
#include "kernels/common/check.h"
#include "model/config.h"
#include "tests/common/test_util.h"
#include "trainer/config.h"
#include "trainer/data.h"
#include "trainer/rollouts.h"
#include "tests/trainer/dataset_writer.h"

using namespace fp4qat;

namespace {

constexpr unsigned kHangSeconds = 5;
constexpr rlim_t kMemoryLimit = rlim_t{1} << 30;  // 1 GiB of heap above the child's start
constexpr size_t kMaxInput = 1u << 20;

struct Target {
  std::string name;                                // tests/data/fuzz/<name>/
  std::string file;                                // the input's file name in the scratch folder
  std::vector<std::string> seeds;                  // valid inputs: each must load
  std::function<void(const std::string&)> read;    // reads the input file (by path)
};

double env_double(const char* k, double dflt) {
  const char* v = std::getenv(k);
  return v && *v ? std::strtod(v, nullptr) : dflt;
}

std::string findings_dir(const std::string& target) {
  const char* v = std::getenv("FP4QAT_FUZZ_FINDINGS");
  return (v && *v ? std::string(v) : fs::parent_dir(FP4QAT_BINARY) + "/fuzz-findings") + "/" + target;
}

std::string keep_finding(const std::string& target, const std::string& bytes) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a: the same input keeps one name
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  char name[32];
  std::snprintf(name, sizeof name, "crash-%016llx", static_cast<unsigned long long>(h));
  const std::string dir = findings_dir(target);
  fs::make_dirs(dir);
  test::write_bytes(dir + "/" + name, bytes);
  return dir + "/" + name;
}

// One mutation of `s`.
void mutate(std::string& s, std::mt19937_64& rng) {
  static const char* const kNumbers[] = {"0",    "-1",   "2147483648", "9223372036854775807", "-9223372036854775808",
                                         "18446744073709551616", "1e308", "-1e308", "1e-320", "4294967296",
                                         "1099511627776", "nan", ".inf", "-.inf", "1.5", "99999999999999999999999"};
  static const char* const kTokens[] = {"{",  "}",  "[",   "]",  "\"", ":",    ",", "\n", "\xff", "",
                                        "---\n", "&a ", "*a", "!!binary ", "- ", "null", "\\u0000", "\xc3\x28", "#",
                                        "\t"};
  auto pick = [&](size_t n) { return n ? static_cast<size_t>(rng() % n) : 0; };
  switch (rng() % 10) {
    case 0:  // a byte replaced
      if (!s.empty()) s[pick(s.size())] = static_cast<char>(rng());
      break;
    case 1:  // a bit flipped
      if (!s.empty()) s[pick(s.size())] ^= static_cast<char>(1u << (rng() % 8));
      break;
    case 2:  // truncated
      s.resize(pick(s.size() + 1));
      break;
    case 3: {  // garbage inserted
      std::string g(1 + rng() % 16, '\0');
      for (auto& c : g) c = static_cast<char>(rng());
      s.insert(pick(s.size() + 1), g);
      break;
    }
    case 4: {  // a range deleted
      const size_t a = pick(s.size() + 1), n = pick(s.size() - a + 1);
      s.erase(a, std::min<size_t>(n, 64));
      break;
    }
    case 5: {  // a number replaced by a big or odd one
      std::vector<size_t> starts;
      for (size_t i = 0; i < s.size(); ++i)
        if (std::isdigit(static_cast<unsigned char>(s[i])) && (i == 0 || !std::isdigit(static_cast<unsigned char>(s[i - 1]))))
          starts.push_back(i);
      if (starts.empty()) break;
      const size_t a = starts[pick(starts.size())];
      size_t b = a;
      while (b < s.size() && (std::isdigit(static_cast<unsigned char>(s[b])) || s[b] == '.' || s[b] == 'e')) ++b;
      s.replace(a, b - a, kNumbers[pick(std::size(kNumbers))]);
      break;
    }
    case 6: {  // a line duplicated (duplicate keys) or moved
      std::vector<size_t> lines = {0};
      for (size_t i = 0; i < s.size(); ++i)
        if (s[i] == '\n') lines.push_back(i + 1);
      const size_t l = pick(lines.size());
      const size_t a = lines[l], b = l + 1 < lines.size() ? lines[l + 1] : s.size();
      s.insert(lines[pick(lines.size())], s.substr(a, b - a));
      break;
    }
    case 7: {  // a range copied elsewhere
      const size_t a = pick(s.size() + 1), n = std::min<size_t>(pick(s.size() - a + 1), 256);
      s.insert(pick(s.size() + 1), s.substr(a, n));
      break;
    }
    case 8: {  // a syntax token inserted ("": a NUL byte)
      const char* t = kTokens[pick(std::size(kTokens))];
      s.insert(pick(s.size() + 1), *t ? std::string(t) : std::string(1, '\0'));
      break;
    }
    case 9: {  // a byte repeated many times (deep nesting, long numbers)
      const char c = s.empty() ? '[' : (rng() % 2 ? "[{-\"9"[pick(5)] : s[pick(s.size())]);
      s.insert(pick(s.size() + 1), std::string(1 + rng() % 20000, c));
      break;
    }
  }
  if (s.size() > kMaxInput) s.resize(kMaxInput);
}

// In the forked child: 0 when every input loaded or threw fp4qat::Error.
int fuzz_child(const Target& t, const std::string& path, double seconds, uint64_t seed) {
  struct rlimit lim;
  if (getrlimit(RLIMIT_DATA, &lim) == 0) {
    long pages = 0, data = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
      long a, b, c, d, e;
      if (std::fscanf(f, "%ld %ld %ld %ld %ld %ld", &pages, &a, &b, &c, &d, &data) != 6) data = 0;
      std::fclose(f);
      (void)e;
    }
    lim.rlim_cur = static_cast<rlim_t>(data) * static_cast<rlim_t>(sysconf(_SC_PAGE_SIZE)) + kMemoryLimit;
    if (lim.rlim_max != RLIM_INFINITY && lim.rlim_cur > lim.rlim_max) lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_DATA, &lim);
  }
  auto one = [&](const std::string& bytes, const char* kind) -> bool {
    test::write_bytes(path, bytes);
    alarm(kHangSeconds);
    std::string what;
    try {
      t.read(path);
    } catch (const Error&) {
      // the expected refusal
    } catch (const std::exception& e) {
      what = std::string("threw a non-fp4qat exception: ") + e.what();
    } catch (...) {
      what = "threw a non-std exception";
    }
    alarm(0);
    if (what.empty()) return true;
    std::fprintf(stderr, "fuzz %s: %s input %s %s\n", t.name.c_str(), kind, keep_finding(t.name, bytes).c_str(),
                 what.substr(0, 400).c_str());
    return false;
  };
  // Regression cases first, then the seeds (which must load without error), then mutants.
  const std::string reg = std::string(FP4QAT_SOURCE_DIR) + "/tests/data/fuzz/" + t.name;
  size_t replayed = 0;
  if (fs::is_dir(reg))
    for (const auto& n : fs::list_dir(reg)) {
      if (n == "README.md") continue;
      if (!one(test::read_bytes(reg + "/" + n), "regression")) return 1;
      ++replayed;
    }
  for (const auto& s : t.seeds) {
    test::write_bytes(path, s);
    try {
      t.read(path);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fuzz %s: a seed does not load: %s\n", t.name.c_str(), e.what());
      return 1;
    }
  }
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  uint64_t n = 0;
  for (; std::chrono::steady_clock::now() < end; ++n) {
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + n);
    std::string s = t.seeds[rng() % t.seeds.size()];
    for (int k = 1 + static_cast<int>(rng() % 3); k > 0; --k) mutate(s, rng);
    if (!one(s, "mutant")) return 1;
  }
  std::fprintf(stderr, "fuzz %s: %zu regression cases, %llu mutants (seed %llu, %.0f s): all loaded or refused\n",
               t.name.c_str(), replayed, static_cast<unsigned long long>(n), static_cast<unsigned long long>(seed),
               seconds);
  return 0;
}

void run_target(const Target& t, const std::string& scratch) {
  ASSERT_FALSE(t.seeds.empty());
  const double seconds = env_double("FP4QAT_FUZZ_SECONDS", 10);
  const auto seed = static_cast<uint64_t>(env_double("FP4QAT_FUZZ_SEED", 1));
  const std::string path = scratch + "/" + t.file;
  std::fflush(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0) << std::strerror(errno);
  if (pid == 0) _exit(fuzz_child(t, path, seconds, seed));
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const std::string kept = fs::exists(path) ? keep_finding(t.name, test::read_bytes(path)) : "(none)";
    FAIL() << "fuzz " << t.name << ": the reader died of signal " << sig << " (" << strsignal(sig)
           << (sig == SIGALRM ? ": an input took over " + std::to_string(kHangSeconds) + " s" : std::string())
           << ") on the input kept at " << kept << "; once fixed, copy it to tests/data/fuzz/" << t.name << "/";
  }
  EXPECT_EQ(WEXITSTATUS(status), 0) << "fuzz " << t.name
                                    << ": see the finding above; once fixed, copy it to tests/data/fuzz/" << t.name
                                    << "/";
}

std::string bytes_of_file(const std::string& path) { return test::read_bytes(path); }

}  // namespace

TEST(Fuzz, SafetensorsReader) {
  test::TempDir d;
  Target t{"safetensors", "in.safetensors", {}, nullptr};
  const std::vector<std::vector<std::pair<std::string, at::Tensor>>> files = {
      {{"a.weight", at::arange(12, at::kFloat).reshape({3, 4})}, {"b", at::ones({2}, at::kBFloat16)}},
      {{"codes", at::arange(8, at::kByte).reshape({2, 4})},
       {"scale", at::ones({2, 1}, at::kFloat).to(at::kFloat8_e4m3fn)},
       {"s2", at::full({}, 0.5f)},
       {"empty", at::zeros({0, 3}, at::kHalf)},
       {"ids", at::arange(3, at::kLong)}},
  };
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string p = d.file("seed" + std::to_string(i) + ".safetensors");
    st::write_file(p, files[i]);
    t.seeds.push_back(bytes_of_file(p));
  }
  t.read = [](const std::string& path) {
    st::Reader r(path);
    uint64_t sum = 0;
    for (const auto& info : r.tensors()) {
      const at::Tensor v = r.view(info.name);  // every byte of every tensor is touched
      const auto* p = static_cast<const unsigned char*>(v.data_ptr());
      for (uint64_t i = 0; i < info.nbytes(); ++i) sum += p[i];
    }
    (void)r.metadata().dump();
    if (sum == 42) std::fputc(' ', stderr);  // keep the loop
  };
  run_target(t, d.path());
}

TEST(Fuzz, YamlRecipe) {
  test::TempDir d;
  fs::copy_file(std::string(FP4QAT_SOURCE_DIR) + "/configs/tiny.yaml", d.file("tiny.yaml"));
  Target t{"yaml", "recipe.yaml", {}, nullptr};
  for (const char* r : {"recipes/default.yaml", "recipes/expert-nvfp4-qat-tiny.yaml"}) {
    std::string s = fs::read_text(std::string(FP4QAT_SOURCE_DIR) + "/" + r);
    const size_t a = s.find("model_config:");
    if (a != std::string::npos) s.replace(a, s.find('\n', a) - a, "model_config: tiny.yaml");
    t.seeds.push_back(s);
  }
  std::string inline_model = "model:\n";  // the model shape inline, under `model:`
  const std::string shape = fs::read_text(d.file("tiny.yaml"));
  for (size_t a = 0, b; a < shape.size(); a = b + 1) {
    b = shape.find('\n', a);
    if (b == std::string::npos) b = shape.size();
    if (shape[a] != '#') inline_model += "  " + shape.substr(a, b - a) + "\n";
  }
  t.seeds.push_back(inline_model + "train:\n  steps: 3\n  batch_size: 2\n  seq_len: 16\n");
  t.read = [](const std::string& path) {
    config::Config c;
    config::apply_recipe_file(c, path);
    config::validate(c);
  };
  run_target(t, d.path());
}

TEST(Fuzz, HfConfigJson) {
  test::TempDir d;
  Target t{"config_json", "config.json", {}, nullptr};
  model::ModelConfig c;
  t.seeds.push_back(model::hf_config_json(c));
  c.mlp_only_layers = {0};
  c.tie_word_embeddings = true;
  c.num_hidden_layers = 3;
  t.seeds.push_back(model::hf_config_json(c));
  t.seeds.push_back(R"({"model_type": "qwen3_moe", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
  "num_attention_heads": 2, "num_key_value_heads": 1, "moe_intermediate_size": 16, "num_local_experts": 4,
  "num_experts_per_tok": 2, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
  "decoder_sparse_step": 2, "quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}}
)");
  const std::string dir = d.path();
  t.read = [dir](const std::string&) { (void)model::read_hf_config(dir); };
  run_target(t, d.path());
}

TEST(Fuzz, RolloutJsonl) {
  test::TempDir d;
  Target t{"rollouts", "rollouts.jsonl", {}, nullptr};
  rollouts::Sample a;
  a.prompt = {1, 2, 3};
  a.response = {4, 5};
  a.logprobs = {-0.5f, -1.25f};
  a.reward = 1;
  a.group = "7";
  rollouts::Sample b = a;
  b.group = "g-1";
  b.reward = -0.5;
  b.advantages = {0.25f, -0.75f};
  b.routed = {0, 1, 2, 3, 1, 0, 3, 2};  // [2 tokens, 2 layers, top 2]
  t.seeds.push_back(rollouts::to_json_line(a) + "\n" + rollouts::to_json_line(a) + "\n");
  t.seeds.push_back(rollouts::to_json_line(b, 2, 2) + "\n\n" + rollouts::to_json_line(b, 2, 2) + "\n");
  t.read = [](const std::string& path) {
    rollouts::Limits lim;
    lim.vocab = 16;
    lim.max_tokens = 64;
    lim.num_experts = 4;
    (void)rollouts::read_file(path, lim);
  };
  run_target(t, d.path());
}

// A prepared dataset folder (docs/data-format.md): the input is its five files joined by a
// separator line; the reader splits it (a file whose part is missing is absent), opens the folder
// and, when it loads, draws batches with and without packing.
TEST(Fuzz, DatasetFolder) {
  test::TempDir d;
  static const char* const kFiles[] = {"dataset.json", "tokens.bin", "mask.bin", "docs.bin", "vocab.bin"};
  const std::string sep = "\n--fp4qat-fuzz-file--\n";
  auto seed_of = [&](const std::vector<test::Doc>& docs, int64_t vocab, const std::string& name) {
    const std::string dir = d.file(name);
    test::write_dataset(dir, docs, vocab);
    std::string joined;
    for (const char* f : kFiles) joined += (joined.empty() ? "" : sep) + test::read_bytes(dir + "/" + f);
    return joined;
  };
  Target t{"dataset", "dataset.fuzz", {}, nullptr};
  t.seeds.push_back(seed_of({{{1, 2, 3}, {0, 1, 1}}, {{4, 5}, {1, 0}}, {{6, 7, 8, 9}, {0, 0, 1, 1}}}, 12, "s1"));
  t.seeds.push_back(seed_of({{{0}, {1}}, {{1, 2}, {0, 1}}}, 3, "s2"));
  const std::string dir = d.file("folder");
  t.read = [dir, sep](const std::string& path) {
    const std::string in = test::read_bytes(path);
    fs::remove_tree(dir);
    fs::make_dirs(dir);
    size_t at = 0;
    for (const char* f : kFiles) {
      if (at > in.size()) break;
      const size_t next = in.find(sep, at);
      test::write_bytes(dir + "/" + f, in.substr(at, next == std::string::npos ? std::string::npos : next - at));
      at = next == std::string::npos ? in.size() + 1 : next + sep.size();
    }
    const data::Dataset ds(dir, 0.3, 5);
    for (bool packing : {false, true})
      for (int split : {0, 1})
        if (ds.documents(split) > 0) (void)ds.batch(split, 3, 2, 8, packing, true);
    (void)ds.vocab().decode({0, 1, 2});
  };
  run_target(t, d.path());
}
