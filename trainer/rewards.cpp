// trainer/rewards.cpp — see rewards.h.
#include "trainer/rewards.h"

#include <utility>

#include "kernels/common/check.h"
#include "trainer/data.h"

namespace fp4qat::rewards {

namespace {

const std::pair<const char*, Fn> kTable[] = {
    {"addition", addition},
    {"addition_exact", addition_exact},
};

// The digits of a + b for a prompt "a+b=".
std::vector<int64_t> expected_answer(const std::vector<int64_t>& prompt) {
  int64_t a = 0, b = 0, *cur = &a;
  int parts = 0, digits = 0;
  bool plus = false, eq = false;
  for (size_t i = 0; i < prompt.size(); ++i) {
    const int64_t t = prompt[i];
    if (t >= 0 && t <= 9 && !eq) {
      FP4QAT_CHECK(*cur <= (int64_t(1) << 50), "reward: prompt operand too long");
      *cur = *cur * 10 + t;
      ++digits;
    } else if (t == data::kPlus && !plus && digits > 0) {
      plus = true;
      cur = &b;
      ++parts;
      digits = 0;
    } else if (t == data::kEquals && plus && !eq && digits > 0 && i + 1 == prompt.size()) {
      eq = true;
      ++parts;
    } else {
      FP4QAT_FAIL("reward: the prompt is not an addition problem \"a+b=\" (token ", t, " at position ", i, ")");
    }
  }
  FP4QAT_CHECK(eq && parts == 2, "reward: the prompt is not an addition problem \"a+b=\"");
  const std::string s = std::to_string(a + b);
  std::vector<int64_t> out;
  for (char c : s) out.push_back(c - '0');
  return out;
}

// The response up to its first ';' (without it), and whether the ';' is there.
std::pair<std::vector<int64_t>, bool> answer_of(const std::vector<int64_t>& response) {
  std::vector<int64_t> out;
  for (int64_t t : response) {
    if (t == data::kSep) return {out, true};
    out.push_back(t);
  }
  return {out, false};
}

}  // namespace

double addition_exact(const std::vector<int64_t>& prompt, const std::vector<int64_t>& response) {
  const std::vector<int64_t> want = expected_answer(prompt);  // validates the prompt in every case
  const auto [ans, closed] = answer_of(response);
  return closed && ans == want ? 1.0 : 0.0;
}

double addition(const std::vector<int64_t>& prompt, const std::vector<int64_t>& response) {
  const double exact = addition_exact(prompt, response);
  const auto [ans, closed] = answer_of(response);
  bool digits = closed && !ans.empty();
  for (int64_t t : ans) digits = digits && t >= 0 && t <= 9;
  return exact + (digits ? 0.1 : 0.0);
}

Fn by_name(const std::string& name) {
  for (const auto& [n, f] : kTable)
    if (name == n) return f;
  std::string known;
  for (const auto& [n, f] : kTable) known += (known.empty() ? "" : ", ") + std::string(n);
  FP4QAT_FAIL("unknown reward '", name, "' (known: ", known, ")");
}

std::vector<std::string> names() {
  std::vector<std::string> out;
  for (const auto& [n, f] : kTable) out.push_back(n);
  return out;
}

}  // namespace fp4qat::rewards
