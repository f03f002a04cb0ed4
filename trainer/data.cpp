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

#include "io/json.h"

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

// ---- binary files with the common header -----------------------------------------------------
BinFile::BinFile(const std::string& path, const char* magic, std::vector<int> widths, const std::string& what)
    : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  FP4QAT_CHECK(fd >= 0, path, ": cannot open ", what, ": ", std::strerror(errno));
  struct stat sb;
  if (::fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    ::close(fd);
    FP4QAT_FAIL(path, ": not a regular file (", what, ")");
  }
  const uint64_t size = static_cast<uint64_t>(sb.st_size);
  if (size < 24) {
    ::close(fd);
    FP4QAT_FAIL(path, ": not a ", what, " (", size, " bytes, shorter than the 24-byte header)");
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  FP4QAT_CHECK(p != MAP_FAILED, path, ": mmap failed");
  base_ = static_cast<const unsigned char*>(p);
  size_ = size;
  uint32_t w, reserved;
  std::memcpy(&w, base_ + 8, 4);
  std::memcpy(&reserved, base_ + 12, 4);
  std::memcpy(&n_, base_ + 16, 8);
  width_ = static_cast<int>(w);
  std::string allowed;
  bool ok_width = false;
  for (size_t i = 0; i < widths.size(); ++i) {
    allowed += (i == 0 ? "" : (i + 1 == widths.size() ? " or " : ", ")) + std::to_string(widths[i]);
    ok_width = ok_width || static_cast<uint32_t>(widths[i]) == w;
  }
  if (std::memcmp(base_, magic, 8) != 0) fail("bad magic (expected " + std::string(magic, 8) + ": not a " + what + ")");
  if (!ok_width) fail("element width must be " + allowed + " bytes, got " + std::to_string(w));
  if (reserved != 0) fail("reserved header word must be 0, got " + std::to_string(reserved));
}

BinFile::~BinFile() {
  if (base_) ::munmap(const_cast<unsigned char*>(base_), size_);
}

void BinFile::fail(const std::string& why) const { FP4QAT_FAIL(path_, ": ", why); }

void BinFile::expect_elements(uint64_t count, uint64_t elem, const std::string& what) const {
  const uint64_t have = data_bytes();
  if (count > have / elem || count * elem != have)
    fail("header says " + std::to_string(n_) + " " + what + " (" + std::to_string(count) + " x " +
         std::to_string(elem) + " bytes) but the file holds " + std::to_string(have) + " data bytes");
}

// ---- token files ----------------------------------------------------------------------------
TokenFile::TokenFile(const std::string& path, double val_fraction, uint64_t seed)
    : file_(path, "FP4QTOK1", {2, 4}, "token file"), seed_(seed) {
  file_.expect_elements(file_.n(), static_cast<uint64_t>(file_.width()), "tokens");
  n_ = static_cast<int64_t>(file_.n());
  n_train_ = n_ - static_cast<int64_t>(static_cast<double>(n_) * val_fraction);
}

int64_t TokenFile::token(int64_t i) const {
  if (file_.width() == 2) {
    uint16_t v;
    std::memcpy(&v, file_.data() + 2 * i, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, file_.data() + 4 * i, 4);
  return v;
}

int64_t TokenFile::max_token() const {
  int64_t m = 0;
  for (int64_t i = 0; i < n_; ++i) m = std::max(m, token(i));
  return m;
}

at::Tensor TokenFile::batch(int split, uint64_t batch_index, int64_t B, int64_t T) const {
  const int64_t lo = split == 0 ? 0 : n_train_, hi = split == 0 ? n_train_ : n_;
  FP4QAT_CHECK(hi - lo >= T + 1, file_.path(), ": the ", split == 0 ? "train" : "val", " split has ", hi - lo,
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

// ---- the id -> bytes table ------------------------------------------------------------------------
namespace {
uint64_t u64_at(const unsigned char* p, uint64_t i) {
  uint64_t v;
  std::memcpy(&v, p + 8 * i, 8);
  return v;
}
}  // namespace

Vocab::Vocab(const std::string& path) : file_(path, "FP4QVOC1", {8}, "vocabulary file (vocab.bin)") {
  const uint64_t V = file_.n(), have = file_.data_bytes();
  // offsets [V + 1] uint64, flags [V] uint8, then the blob of offsets[V] bytes
  if (V >= have / 9)
    file_.fail("header says " + std::to_string(V) + " tokens but the file holds " + std::to_string(have) +
               " data bytes, too few for their offsets and flags");
  const unsigned char* d = file_.data();
  const uint64_t blob = u64_at(d, V), fixed = 8 * (V + 1) + V;
  if (blob > have - fixed || fixed + blob != have)
    file_.fail("offsets[V] = " + std::to_string(blob) + " bytes of token text, but the file holds " +
               std::to_string(have - fixed) + " after the offsets and flags");
  if (u64_at(d, 0) != 0) file_.fail("offsets[0] must be 0");
  for (uint64_t i = 0; i < V; ++i)
    if (u64_at(d, i + 1) < u64_at(d, i)) file_.fail("offsets must not decrease (token " + std::to_string(i) + ")");
  const unsigned char* flags = d + 8 * (V + 1);
  for (uint64_t i = 0; i < V; ++i)
    if (flags[i] != 0 && flags[i] != 1 && flags[i] != 2 && flags[i] != 4)
      file_.fail("flag of token " + std::to_string(i) + " is " + std::to_string(flags[i]) + " (expected 0, 1, 2 or 4)");
}

std::string Vocab::decode(const std::vector<int64_t>& ids) const {
  const uint64_t V = file_.n();
  const unsigned char* d = file_.data();
  const char* blob = reinterpret_cast<const char*>(d + 8 * (V + 1) + V);
  std::string out;
  for (int64_t id : ids) {
    if (id < 0 || static_cast<uint64_t>(id) >= V) {
      out += "<|id " + std::to_string(id) + "|>";
      continue;
    }
    const uint64_t a = u64_at(d, static_cast<uint64_t>(id)), b = u64_at(d, static_cast<uint64_t>(id) + 1);
    out.append(blob + a, b - a);
  }
  return out;
}

std::string Vocab::printable(const std::string& s) {
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) ok = (p[i + k] & 0xC0) == 0x80;
    if (ok && len == 2) ok = c >= 0xC2;
    if (ok && len == 3) {
      const uint32_t cp = ((c & 0x0Fu) << 12) | ((p[i + 1] & 0x3Fu) << 6) | (p[i + 2] & 0x3Fu);
      ok = cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF);
    }
    if (ok && len == 4) {
      const uint32_t cp =
          ((c & 0x07u) << 18) | ((p[i + 1] & 0x3Fu) << 12) | ((p[i + 2] & 0x3Fu) << 6) | (p[i + 3] & 0x3Fu);
      ok = cp >= 0x10000 && cp <= 0x10FFFF;
    }
    if (ok) {
      out.append(s, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

// ---- prepared dataset folders -------------------------------------------------------------------
bool Dataset::is_dataset(const std::string& path) { return fs::is_dir(path) && fs::exists(path + "/dataset.json"); }

Dataset::Dataset(const std::string& dir, double val_fraction, uint64_t seed) : dir_(dir), seed_(seed) {
  const std::string mpath = dir + "/dataset.json";
  FP4QAT_CHECK(fs::exists(mpath), dir, ": not a prepared dataset (no dataset.json; scripts/prepare_data makes one)");
  const json::Value m = json::parse(fs::read_text(mpath, 16u << 20), mpath);
  FP4QAT_CHECK(m.is_object(), mpath, ": expected a JSON object");
  auto field = [&](const char* k) -> const json::Value& { return m.at(k, mpath); };
  auto count = [&](const char* k) {
    const int64_t v = field(k).as_int(mpath + ": '" + k + "'");
    FP4QAT_CHECK(v >= 0, mpath, ": '", k, "' must be >= 0, got ", v);
    return v;
  };
  FP4QAT_CHECK(field("format").is_string() && field("format").as_string() == "fp4qat-dataset", mpath,
               ": 'format' must be \"fp4qat-dataset\"");
  const int64_t version = field("version").as_int(mpath + ": 'version'");
  FP4QAT_CHECK(version == 1, mpath, ": dataset version ", version, " is not known to this build (it reads version 1)");
  input_format_ = field("input_format").as_string(mpath + ": 'input_format'");
  const int64_t N = count("num_tokens"), D = count("num_documents"), loss_tokens = count("num_loss_tokens");
  const int64_t token_bytes = count("token_bytes");
  vocab_size_ = count("vocab_size");
  FP4QAT_CHECK(vocab_size_ > 0, mpath, ": 'vocab_size' must be > 0");
  const json::Value& tok = field("tokenizer");
  tokenizer_sha256_ = tok.at("sha256", mpath + ": 'tokenizer'").as_string(mpath + ": 'tokenizer.sha256'");
  auto opt_id = [&](const char* k) -> int64_t {
    const json::Value* v = m.find(k);
    if (!v || v->is_null()) return -1;
    const int64_t id = v->as_int(mpath + ": '" + k + "'");
    FP4QAT_CHECK(id >= 0 && id < vocab_size_, mpath, ": '", k, "' ", id, " is outside the vocabulary of ", vocab_size_);
    return id;
  };
  const int64_t pad = opt_id("pad_id"), eos = opt_id("eos_id");
  pad_id_ = pad >= 0 ? pad : (eos >= 0 ? eos : 0);
  eos_id_ = eos;
  FP4QAT_CHECK(D >= 1, mpath, ": 'num_documents' must be >= 1");

  tokens_ = std::make_unique<TokenFile>(dir + "/tokens.bin", 0.0, seed);
  const std::string tpath = dir + "/tokens.bin";
  FP4QAT_CHECK(tokens_->size() == N, tpath, ": holds ", tokens_->size(), " tokens but ", mpath, " says ", N);
  FP4QAT_CHECK(tokens_->width() == token_bytes, tpath, ": ", tokens_->width(), " bytes per token but ", mpath,
               " says token_bytes ", token_bytes);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t t = tokens_->token(i);
    FP4QAT_CHECK(t < vocab_size_, tpath, ": token ", i, " is id ", t, ", outside the dataset's vocab_size ",
                 vocab_size_, " (", mpath, ")");
  }
  mask_ = std::make_unique<BinFile>(dir + "/mask.bin", "FP4QMSK1", std::vector<int>{1}, "mask file");
  mask_->expect_elements(mask_->n(), 1, "mask values");
  if (mask_->n() != static_cast<uint64_t>(N))
    mask_->fail("holds " + std::to_string(mask_->n()) + " mask values for " + std::to_string(N) + " tokens");
  int64_t ones = 0;
  for (int64_t i = 0; i < N; ++i) {
    const unsigned char v = mask_->data()[i];
    if (v > 1) mask_->fail("mask value " + std::to_string(v) + " at token " + std::to_string(i) + " (must be 0 or 1)");
    ones += v;
  }
  FP4QAT_CHECK(ones == loss_tokens, dir, "/mask.bin: ", ones, " tokens are masked in but ", mpath,
               " says num_loss_tokens ", loss_tokens);
  docs_ = std::make_unique<BinFile>(dir + "/docs.bin", "FP4QDOC1", std::vector<int>{8}, "document file");
  docs_->expect_elements(docs_->n(), 8, "document offsets");
  if (docs_->n() != static_cast<uint64_t>(D) + 1)
    docs_->fail("holds " + std::to_string(docs_->n()) + " offsets but " + mpath + " says " + std::to_string(D) +
                " documents (D + 1 offsets expected)");
  if (offset(0) != 0) docs_->fail("offsets[0] must be 0, got " + std::to_string(offset(0)));
  for (int64_t d = 0; d < D; ++d)
    if (offset(d + 1) <= offset(d))
      docs_->fail("document boundaries out of order: offsets[" + std::to_string(d + 1) +
                  "] = " + std::to_string(offset(d + 1)) + " is not above offsets[" + std::to_string(d) +
                  "] = " + std::to_string(offset(d)));
  if (offset(D) != static_cast<uint64_t>(N))
    docs_->fail("the last offset is " + std::to_string(offset(D)) + " but there are " + std::to_string(N) + " tokens");
  vocab_ = std::make_unique<Vocab>(dir + "/vocab.bin");
  FP4QAT_CHECK(vocab_->size() == vocab_size_, dir, "/vocab.bin: holds ", vocab_->size(), " tokens but ", mpath,
               " says vocab_size ", vocab_size_);
  D_ = D;
  int64_t n_val = static_cast<int64_t>(static_cast<double>(D) * val_fraction);
  if (val_fraction > 0 && n_val == 0 && D >= 2) n_val = 1;
  D_train_ = D - n_val;
}

uint64_t Dataset::offset(int64_t d) const { return u64_at(docs_->data(), static_cast<uint64_t>(d)); }

std::vector<int64_t> Dataset::tokens_of(int64_t d) const {
  FP4QAT_CHECK(d >= 0 && d < D_, dir_, ": document ", d, " is outside [0, ", D_, ")");
  std::vector<int64_t> out;
  for (uint64_t i = offset(d); i < offset(d + 1); ++i) out.push_back(tokens_->token(static_cast<int64_t>(i)));
  return out;
}

std::vector<uint8_t> Dataset::mask_of(int64_t d) const {
  FP4QAT_CHECK(d >= 0 && d < D_, dir_, ": document ", d, " is outside [0, ", D_, ")");
  return std::vector<uint8_t>(mask_->data() + offset(d), mask_->data() + offset(d + 1));
}

DocBatch Dataset::batch(int split, uint64_t batch_index, int64_t B, int64_t T, bool packing, bool use_mask) const {
  const int64_t lo = split == 0 ? 0 : D_train_, nd = documents(split);
  FP4QAT_CHECK(nd > 0, dir_, ": the ", split == 0 ? "train" : "validation", " split has no document (", D_,
               " documents, data.val_fraction)");
  const int64_t L = T + 1;
  DocBatch b;
  b.ids = at::full({B, L}, pad_id_, at::kLong);
  at::Tensor tmask = at::zeros({B, L}, at::kBool);  // per token: a loss target
  at::Tensor real = at::zeros({B, L}, at::kBool);   // per token: a document's (not padding)
  at::Tensor pos, seg;
  if (packing) {
    pos = at::zeros({B, L}, at::kLong);
    seg = at::zeros({B, L}, at::kLong);
  }
  int64_t* ids = b.ids.data_ptr<int64_t>();
  bool* tm = tmask.data_ptr<bool>();
  const unsigned char* mk = mask_->data();
  for (int64_t r = 0; r < B; ++r) {
    const uint64_t g = batch_index * static_cast<uint64_t>(B) + static_cast<uint64_t>(r);
    int64_t fill = 0, s = 0;
    for (uint64_t k = 0; fill < L; ++k) {
      const uint64_t h = mix(mix(mix(mix(seed_, static_cast<uint64_t>(split)), g), k), 0x5F3);
      const int64_t d = lo + static_cast<int64_t>(h % static_cast<uint64_t>(nd));
      const int64_t start = static_cast<int64_t>(offset(d));
      int64_t len = static_cast<int64_t>(offset(d + 1)) - start;
      if (fill == 0) len = std::min(len, L);
      if (fill + len > L) break;
      for (int64_t j = 0; j < len; ++j) {
        const int64_t at = r * L + fill + j;
        ids[at] = tokens_->token(start + j);
        tm[at] = j > 0 && (!use_mask || mk[start + j] != 0);
        real.data_ptr<bool>()[at] = true;
        if (packing) {
          pos.data_ptr<int64_t>()[at] = j;
          seg.data_ptr<int64_t>()[at] = s;
        }
      }
      fill += len;
      ++s;
      if (!packing) break;
    }
    if (packing)  // the padding: one more segment, positions from 0
      for (int64_t j = 0; fill + j < L; ++j) {
        pos.data_ptr<int64_t>()[r * L + fill + j] = j;
        seg.data_ptr<int64_t>()[r * L + fill + j] = s;
      }
  }
  b.loss_mask = tmask.narrow(1, 1, T).contiguous();
  b.real = real.narrow(1, 0, T).contiguous();
  if (packing) {
    b.positions = pos.narrow(1, 0, T).contiguous();
    b.segments = seg.narrow(1, 0, T).contiguous();
  }
  b.loss_tokens = b.loss_mask.sum().item<int64_t>();
  return b;
}

}  // namespace fp4qat::data
