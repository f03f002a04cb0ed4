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

}  // namespace fp4qat::data
