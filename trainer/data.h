// trainer/data.h — training data. The embedded synthetic corpus: addition problems "a+b=c;" written as digit
// tokens, generated deterministically from (seed, split, index) so that any batch of any step
// can be regenerated (resume needs no data state beyond the step). Exact-match accuracy of
// greedy answers is the eval metric. Flat token files and prepared dataset folders (issue 24).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace fp4qat::data {

// Token ids: digits 0-9, then '+', '=', ';'.
constexpr int64_t kPlus = 10, kEquals = 11, kSep = 12, kVocabUsed = 13;

struct Problem {
  std::vector<int64_t> prompt;  // "a+b="
  std::vector<int64_t> answer;  // digits of c, then ';'
};

class SyntheticCorpus {
 public:
  SyntheticCorpus(uint64_t seed, int64_t max_operand = 999) : seed_(seed), max_operand_(max_operand) {}
  // Problem `index` of `split` (0 = train, 1 = val): the same every time.
  Problem problem(int split, uint64_t index) const;
  // Batch `batch_index` of the train (split 0) or val (split 1) stream: int64 [B, T + 1]
  // (inputs are [:, :-1], targets [:, 1:]), problems packed back to back.
  at::Tensor batch(int split, uint64_t batch_index, int64_t B, int64_t T) const;
  static std::string render(const std::vector<int64_t>& tokens);

 private:
  uint64_t seed_;
  int64_t max_operand_;
};

// A memory-mapped binary file with the common 24-byte header of the token files and of the
// prepared dataset's files (docs/data-format.md), checked on open:
//   bytes 0-7   magic (8 ASCII bytes)
//   bytes 8-11  uint32 element width in bytes (one of the reader's allowed widths)
//   bytes 12-15 uint32 reserved (0)
//   bytes 16-23 uint64 element count n
// The caller checks the exact size from n (expect_size): nothing is allocated from the header.
class BinFile {
 public:
  // `what` names the kind of file in messages ("token file", "mask file"...).
  BinFile(const std::string& path, const char* magic, std::vector<int> widths, const std::string& what);
  ~BinFile();
  BinFile(const BinFile&) = delete;
  BinFile& operator=(const BinFile&) = delete;
  const std::string& path() const { return path_; }
  int width() const { return width_; }
  uint64_t n() const { return n_; }
  uint64_t data_bytes() const { return size_ - 24; }
  const unsigned char* data() const { return base_ + 24; }  // the elements, 8-byte aligned (mmap)
  // Refuses the file unless its data is exactly `count` elements of `elem` bytes (overflow-safe);
  // `what` says what the header counts ("tokens", "documents + 1 offsets").
  void expect_elements(uint64_t count, uint64_t elem, const std::string& what) const;
  void fail(const std::string& why) const;  // throws "<path>: <why>"

 private:
  std::string path_;
  const unsigned char* base_ = nullptr;
  size_t size_ = 0;
  int width_ = 0;
  uint64_t n_ = 0;
};

// Token files: a flat little-endian token stream (BinFile, magic "FP4QTOK1", width 2 (uint16) or
// 4 (uint32), n = number of tokens N; the file is exactly 24 + N * width bytes), memory-mapped.
// The last val_fraction of the stream is the validation split. A batch row is a window of
// T + 1 consecutive tokens at an offset drawn from (seed, split, batch index, row): any batch
// can be regenerated, so resume needs no data state beyond the step.
class TokenFile {
 public:
  TokenFile(const std::string& path, double val_fraction, uint64_t seed);
  int64_t size() const { return n_; }
  int64_t max_token() const;  // scans once (for the vocab check)
  at::Tensor batch(int split, uint64_t batch_index, int64_t B, int64_t T) const;
  int64_t token(int64_t i) const;
  int width() const { return file_.width(); }  // bytes per token
  // Writes `tokens` in this format (atomically).
  static void write(const std::string& path, const std::vector<int64_t>& tokens, int width);

 private:
  BinFile file_;
  int64_t n_ = 0, n_train_ = 0;
  uint64_t seed_;
};

// The id -> bytes table of a tokenizer (vocab.bin of a prepared dataset, docs/data-format.md):
// decoding ids is concatenating their bytes.
class Vocab {
 public:
  explicit Vocab(const std::string& path);  // checks the layout (sizes, offsets, flags)
  int64_t size() const { return static_cast<int64_t>(file_.n()); }
  // The bytes of `ids` concatenated (UTF-8 text, possibly cut inside a character at the end);
  // an id outside the table is written as "<|id N|>".
  std::string decode(const std::vector<int64_t>& ids) const;
  // A string safe to print: invalid UTF-8 bytes replaced by U+FFFD.
  static std::string printable(const std::string& bytes);

 private:
  BinFile file_;
};

// A batch of documents from a prepared dataset (Dataset::batch).
struct DocBatch {
  at::Tensor ids;        // int64 [B, T + 1]: inputs [:, :-1], targets [:, 1:]; padding after the documents
  at::Tensor loss_mask;  // bool [B, T]: target t counts in the loss (masked in, in the same document as input t)
  at::Tensor real;       // bool [B, T]: input t is a document's token (false: padding); the router's aux loss counts these
  // Packing only (undefined otherwise), per input token: its position inside its document and the
  // index of its document in the row (the padding at a row's end is one more segment).
  at::Tensor positions;     // int64 [B, T]
  at::Tensor segments;      // int64 [B, T]
  int64_t loss_tokens = 0;  // loss_mask.sum()
};

// A prepared dataset folder (scripts/prepare_data; docs/data-format.md byte by byte): tokens.bin,
// mask.bin, docs.bin, vocab.bin and dataset.json, memory-mapped and checked whole on open
// (magics, widths, exact sizes, ids < vocab_size, mask values 0/1, document offsets from 0 to N
// strictly increasing, the manifest's counts): a bad folder is refused naming the file. The last
// val_fraction of the documents (at least one when val_fraction > 0 and there are two or more) is the
// validation split.
//
// Batches are pure functions of (seed, split, batch index): row r of batch i is global row
// g = i * B + r of its split, so grad_accum micro-batches of B rows are the rows of one batch of
// grad_accum * B rows (and resume needs no data state). One document per row (packing false):
// document hash(seed, split, g) % D_split, cut to T + 1 tokens, padded. Packing: documents
// hash(seed, split, g, k), k = 0, 1, ..., placed back to back while they fit in T + 1 tokens (the
// first one cut to T + 1 when longer), then padding. The loss mask of target t (token t + 1) is
// mask.bin's (or 1 for every token when use_mask is false) and 0 when token t + 1 starts a
// document or is padding: a document's first token is never a target.
class Dataset {
 public:
  Dataset(const std::string& dir, double val_fraction, uint64_t seed);
  static bool is_dataset(const std::string& path);  // a folder holding dataset.json
  const std::string& dir() const { return dir_; }
  int64_t vocab_size() const { return vocab_size_; }  // dataset.json's: every id is below it
  int64_t num_documents() const { return D_; }
  int64_t documents(int split) const { return split == 0 ? D_train_ : D_ - D_train_; }
  const std::string& tokenizer_sha256() const { return tokenizer_sha256_; }
  const std::string& input_format() const { return input_format_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t eos_id() const { return eos_id_; }  // dataset.json's eos_id; -1 when it has none
  const Vocab& vocab() const { return *vocab_; }
  // Document d's tokens and loss mask (d in [0, num_documents())).
  std::vector<int64_t> tokens_of(int64_t d) const;
  std::vector<uint8_t> mask_of(int64_t d) const;
  DocBatch batch(int split, uint64_t batch_index, int64_t B, int64_t T, bool packing, bool use_mask) const;

 private:
  std::string dir_, tokenizer_sha256_, input_format_;
  std::unique_ptr<TokenFile> tokens_;
  std::unique_ptr<BinFile> mask_, docs_;
  std::unique_ptr<Vocab> vocab_;
  int64_t vocab_size_ = 0, D_ = 0, D_train_ = 0, pad_id_ = 0, eos_id_ = -1;
  uint64_t seed_;
  uint64_t offset(int64_t d) const;
};

}  // namespace fp4qat::data
