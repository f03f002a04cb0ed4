// trainer/data.cpp — see data.h.
#include "trainer/data.h"

#include <random>

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

}  // namespace fp4qat::data
