// trainer/data.cpp — see data.h.
#include "trainer/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

#include "kernels/common/check.h"
#include "io/fs.h"

namespace fp4qat::data {

namespace {
uint64_t mix(uint64_t a, uint64_t b) {  // splitmix64 of a combined key
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
void digits(int64_t v, std::vector<int64_t>& out) {
  const std::string s = std::to_string(v);
  for (char c : s) out.push_back(c - '0');
}
}  // namespace

Problem SyntheticCorpus::problem(int split, uint64_t index) const {
  std::mt19937_64 rng(mix(mix(seed_, static_cast<uint64_t>(split)), index));
  std::uniform_int_distribution<int64_t> d(0, max_operand_);
  const int64_t a = d(rng), b = d(rng);
  Problem p;
  digits(a, p.prompt);
  p.prompt.push_back(kPlus);
  digits(b, p.prompt);
  p.prompt.push_back(kEquals);
  digits(a + b, p.answer);
  p.answer.push_back(kSep);
  return p;
}

at::Tensor SyntheticCorpus::batch(int split, uint64_t batch_index, int64_t B, int64_t T) const {
  at::Tensor out = at::empty({B, T + 1}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < B; ++r) {
    uint64_t k = 0;
    int64_t filled = 0;
    while (filled < T + 1) {
      const Problem p = problem(split, mix(batch_index * static_cast<uint64_t>(B) + static_cast<uint64_t>(r), k++));
      for (const auto* part : {&p.prompt, &p.answer})
        for (int64_t t : *part)
          if (filled < T + 1) o[r * (T + 1) + filled++] = t;
    }
  }
  return out;
}

std::string SyntheticCorpus::render(const std::vector<int64_t>& tokens) {
  std::string s;
  for (int64_t t : tokens) s += t < 10 ? static_cast<char>('0' + t) : (t == kPlus ? '+' : (t == kEquals ? '=' : ';'));
  return s;
}

// ---- token files ----------------------------------------------------------------------------
TokenFile::TokenFile(const std::string& path, double val_fraction, uint64_t seed) : path_(path), seed_(seed) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  FP4QAT_CHECK(fd >= 0, path, ": cannot open token file: ", std::strerror(errno));
  struct stat sb;
  ::fstat(fd, &sb);
  const uint64_t size = static_cast<uint64_t>(sb.st_size);
  if (size < 24) {
    ::close(fd);
    FP4QAT_FAIL(path, ": not a token file (", size, " bytes, shorter than the 24-byte header)");
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  FP4QAT_CHECK(p != MAP_FAILED, path, ": mmap failed");
  base_ = static_cast<const unsigned char*>(p);
  map_size_ = size;
  auto u32 = [&](size_t o) {
    uint32_t v;
    std::memcpy(&v, base_ + o, 4);
    return v;
  };
  uint64_t n;
  std::memcpy(&n, base_ + 16, 8);
  const bool magic = std::memcmp(base_, "FP4QTOK1", 8) == 0;
  width_ = static_cast<int>(u32(8));
  std::string err;
  if (!magic)
    err = "bad magic (expected FP4QTOK1)";
  else if (width_ != 2 && width_ != 4)
    err = "bytes per token must be 2 or 4, got " + std::to_string(width_);
  else if (n > (size - 24) / static_cast<uint64_t>(width_) || 24 + n * width_ != size)
    err =
        "header says " + std::to_string(n) + " tokens but the file holds " + std::to_string(size - 24) + " data bytes";
  if (!err.empty()) {
    ::munmap(p, size);
    base_ = nullptr;
    FP4QAT_FAIL(path, ": ", err);
  }
  n_ = static_cast<int64_t>(n);
  n_train_ = n_ - static_cast<int64_t>(static_cast<double>(n_) * val_fraction);
}

TokenFile::~TokenFile() {
  if (base_) ::munmap(const_cast<unsigned char*>(base_), map_size_);
}

int64_t TokenFile::token(int64_t i) const {
  if (width_ == 2) {
    uint16_t v;
    std::memcpy(&v, base_ + 24 + 2 * i, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, base_ + 24 + 4 * i, 4);
  return v;
}

int64_t TokenFile::max_token() const {
  int64_t m = 0;
  for (int64_t i = 0; i < n_; ++i) m = std::max(m, token(i));
  return m;
}

at::Tensor TokenFile::batch(int split, uint64_t batch_index, int64_t B, int64_t T) const {
  const int64_t lo = split == 0 ? 0 : n_train_, hi = split == 0 ? n_train_ : n_;
  FP4QAT_CHECK(hi - lo >= T + 1, path_, ": the ", split == 0 ? "train" : "val", " split has ", hi - lo,
               " tokens, fewer than one window of ", T + 1);
  at::Tensor out = at::empty({B, T + 1}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < B; ++r) {
    const uint64_t h = mix(mix(mix(seed_, static_cast<uint64_t>(split)), batch_index), static_cast<uint64_t>(r));
    const int64_t start = lo + static_cast<int64_t>(h % static_cast<uint64_t>(hi - lo - T));
    for (int64_t t = 0; t <= T; ++t) o[r * (T + 1) + t] = token(start + t);
  }
  return out;
}

void TokenFile::write(const std::string& path, const std::vector<int64_t>& tokens, int width) {
  FP4QAT_CHECK(width == 2 || width == 4, "token width must be 2 or 4");
  std::string bytes("FP4QTOK1", 8);
  const uint32_t w = static_cast<uint32_t>(width), zero = 0;
  const uint64_t n = tokens.size();
  bytes.append(reinterpret_cast<const char*>(&w), 4);
  bytes.append(reinterpret_cast<const char*>(&zero), 4);
  bytes.append(reinterpret_cast<const char*>(&n), 8);
  for (int64_t t : tokens) {
    FP4QAT_CHECK(t >= 0 && (width == 4 || t < 65536), "token ", t, " does not fit in ", width, " bytes");
    const uint32_t v = static_cast<uint32_t>(t);
    bytes.append(reinterpret_cast<const char*>(&v), static_cast<size_t>(width));
  }
  fs::write_text_atomic(path, bytes);
}

}  // namespace fp4qat::data
