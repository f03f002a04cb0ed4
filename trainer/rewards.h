// trainer/rewards.h — rewards of rollout samples as named C++ functions (issue 22): a recipe or
// `fp4qat generate --reward NAME` picks one by name; add one by writing a function and a line in
// the table (rewards.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fp4qat::rewards {

using Fn = double (*)(const std::vector<int64_t>& prompt, const std::vector<int64_t>& response);

// The synthetic addition task (trainer/data.h: prompt "a+b=" as digit tokens). The answer is the
// response up to its first ';' (the separator token).
//   "addition_exact": 1 when those tokens are the digits of a + b and the ';' is there, else 0.
//   "addition":       the same plus a format term of 0.1 when the answer is one or more digits
//                     followed by ';' (right or wrong), so that well-formed answers are preferred.
// A prompt that is not "a+b=" is an error naming it.
double addition_exact(const std::vector<int64_t>& prompt, const std::vector<int64_t>& response);
double addition(const std::vector<int64_t>& prompt, const std::vector<int64_t>& response);

// The function named `name`; an unknown name is an error listing the known ones.
Fn by_name(const std::string& name);
std::vector<std::string> names();

}  // namespace fp4qat::rewards
