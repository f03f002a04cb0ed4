// trainer/data.h — the embedded synthetic corpus: addition problems "a+b=c;" written as digit
// tokens, generated deterministically from (seed, split, index) so that any batch of any step
// can be regenerated (resume needs no data state beyond the step). Exact-match accuracy of
// greedy answers is the eval metric.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
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

// Token files: a flat little-endian token stream with a 24-byte header, memory-mapped.
//   bytes 0-7   magic "FP4QTOK1"
//   bytes 8-11  uint32 bytes per token: 2 (uint16) or 4 (uint32)
//   bytes 12-15 uint32 reserved (0)
//   bytes 16-23 uint64 number of tokens N; the file is exactly 24 + N * width bytes
// The last val_fraction of the stream is the validation split. A batch row is a window of
// T + 1 consecutive tokens at an offset drawn from (seed, split, batch index, row): any batch
// can be regenerated, so resume needs no data state beyond the step.
class TokenFile {
 public:
  TokenFile(const std::string& path, double val_fraction, uint64_t seed);
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;
  int64_t size() const { return n_; }
  int64_t max_token() const;  // scans once (for the vocab check)
  at::Tensor batch(int split, uint64_t batch_index, int64_t B, int64_t T) const;
  // Writes `tokens` in this format (atomically).
  static void write(const std::string& path, const std::vector<int64_t>& tokens, int width);

 private:
  int64_t token(int64_t i) const;
  std::string path_;
  const unsigned char* base_ = nullptr;
  size_t map_size_ = 0;
  int width_ = 2;
  int64_t n_ = 0, n_train_ = 0;
  uint64_t seed_;
};

}  // namespace fp4qat::data
