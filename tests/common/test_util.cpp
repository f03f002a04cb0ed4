// tests/common/test_util.cpp — see test_util.h.
#include "tests/common/test_util.h"

#include "io/fs.h"

#include <ATen/CPUGeneratorImpl.h>

#include <dirent.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

extern char** environ;

namespace fp4qat::test {

void expect_grouped_equals_per_expert(const at::Tensor& y, const at::Tensor& x_grad, const at::Tensor& w_grad,
                                      const std::vector<int64_t>& counts,
                                      const std::function<LinearGrads(int64_t, int64_t, int64_t)>& one, Agree agree) {
  const auto same = [agree](const at::Tensor& a, const at::Tensor& b) {
    return agree == Agree::kBytes ? bytes_equal(a, b) : close_bf16(a, b);
  };
  int64_t r = 0;
  for (int64_t e = 0; e < static_cast<int64_t>(counts.size()); ++e) {
    const int64_t n = counts[e];
    if (n == 0) {
      EXPECT_EQ(w_grad[e].abs().sum().item<float>(), 0.0f) << "expert " << e << " got no tokens";
      continue;
    }
    const LinearGrads s = one(e, r, n);
    const at::Tensor dx = x_grad.narrow(0, r, n), dw = w_grad[e];
    EXPECT_TRUE(same(y.detach().narrow(0, r, n), s.y)) << "expert " << e;
    EXPECT_TRUE(same(dx, s.dx)) << "expert " << e;
    EXPECT_TRUE(same(dw, s.dw)) << "expert " << e;
    if (s.ws.defined()) {
      EXPECT_TRUE(same(dx, s.g.mm(s.ws))) << "expert " << e << ": dx = g ws";
      EXPECT_TRUE(same(dw, s.xs.t().mm(s.g).t())) << "expert " << e << ": dw = (xs^T g)^T";
    }
    r += n;
  }
}

std::string vectors_dir() { return std::string(FP4QAT_SOURCE_DIR) + "/tests/data/vectors"; }

std::vector<std::string> vector_files(const std::string& sub) {
  std::vector<std::string> out;
  const std::string dir = sub.empty() ? vectors_dir() : vectors_dir() + "/" + sub;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 12 && n.substr(n.size() - 12) == ".safetensors") out.push_back(dir + "/" + n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/fp4qat-test-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!::mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
  path_ = buf.data();
}

TempDir::~TempDir() { fp4qat::fs::remove_tree(path_); }

std::vector<std::string> TempDir::list() const {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(path_.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") out.push_back(n);
    }
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

pid_t spawn_fp4qat(const std::vector<std::string>& args, const std::vector<std::pair<std::string, std::string>>& env,
                   const std::string& out_path, const std::string& err_path) {
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    bool replaced = false;
    for (const char* k : {"RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "MASTER_ADDR=", "MASTER_PORT="})
      replaced = replaced || kv.rfind(k, 0) == 0;
    for (const auto& [k, v] : env) replaced = replaced || kv.rfind(k + "=", 0) == 0;
    if (!replaced) envs.push_back(kv);
  }
  for (const auto& [k, v] : env) envs.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_s = {FP4QAT_BINARY};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, FP4QAT_BINARY, &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("posix_spawn failed for " + std::string(FP4QAT_BINARY));
  return pid;
}

ProcResult run_fp4qat(const std::vector<std::string>& args) {
  TempDir io;
  const std::string out_path = io.file("stdout"), err_path = io.file("stderr");
  const pid_t pid = spawn_fp4qat(args, {}, out_path, err_path);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ProcResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_bytes(out_path);
  r.err = read_bytes(err_path);
  return r;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

::testing::AssertionResult close_bf16(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type())
    return ::testing::AssertionFailure() << "shape/dtype " << a.sizes() << " " << a.scalar_type() << " vs " << b.sizes()
                                         << " " << b.scalar_type();
  const at::Tensor af = a.cpu().to(at::kFloat), bf = b.cpu().to(at::kFloat);
  const at::Tensor bad = (af - bf).abs() > bf.abs() * (1.0 / 128) + 1e-3 * bf.abs().max();
  if (!bad.any().item<bool>()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad.sum().item<int64_t>() << " elements differ by more than one bf16 ulp";
}

at::Tensor randn_cuda(std::vector<int64_t> shape, uint64_t seed) {
  return at::randn(shape, at::make_generator<at::CPUGeneratorImpl>(seed)).to(at::kBFloat16).cuda();
}

::testing::AssertionResult bytes_equal(const at::Tensor& got_in, const at::Tensor& want_in) {
  const at::Tensor got = got_in.cpu().contiguous(), want = want_in.cpu().contiguous();
  if (got.scalar_type() != want.scalar_type())
    return ::testing::AssertionFailure() << "dtype " << got.scalar_type() << " != " << want.scalar_type();
  if (got.sizes() != want.sizes())
    return ::testing::AssertionFailure() << "shape " << got.sizes() << " != " << want.sizes();
  const size_t n = static_cast<size_t>(got.numel()) * got.element_size();
  const auto* a = static_cast<const unsigned char*>(got.data_ptr());
  const auto* b = static_cast<const unsigned char*>(want.data_ptr());
  size_t diffs = 0, first = n;
  for (size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) {
      if (!diffs) first = i;
      ++diffs;
    }
  if (!diffs) return ::testing::AssertionSuccess();
  char buf[128];
  std::snprintf(buf, sizeof buf, "%zu of %zu bytes differ; first at byte %zu: got 0x%02x want 0x%02x", diffs, n, first,
                a[first], b[first]);
  return ::testing::AssertionFailure() << buf;
}

bool cuda_available() { return at::hasCUDA(); }

std::vector<std::string> expert_modules(int64_t layer, int64_t E, bool gated) {
  std::vector<std::string> out;
  const std::string base = "model.layers." + std::to_string(layer) + ".mlp.experts.";
  for (int64_t e = 0; e < E; ++e) {
    if (gated) {
      out.push_back(base + std::to_string(e) + ".gate_proj");
      out.push_back(base + std::to_string(e) + ".up_proj");
    } else {
      out.push_back(base + std::to_string(e) + ".down_proj");
    }
  }
  return out;
}

config::Config small_moe_run(const std::string& out) {
  config::Config c;
  c.model.hidden_size = 64;
  c.model.num_hidden_layers = 2;
  c.model.head_dim = 16;
  c.model.moe_intermediate_size = 32;
  c.model.num_experts = 4;
  c.model.vocab_size = 32;
  c.train.steps = 3;
  c.train.batch_size = 4;
  c.train.seq_len = 16;
  c.train.device = "cpu";
  c.train.eval_every = 0;
  c.train.checkpoint_every = 0;
  c.train.out_dir = out;
  return c;
}

}  // namespace fp4qat::test
