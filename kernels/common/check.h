// kernels/common/check.h — FP4QAT_CHECK(cond, msg...): throws fp4qat::Error with file:line.
// Used by every layer; the message is built with operator<< from the arguments.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace fp4qat {

// All user-facing failures are fp4qat::Error; the CLI prints what() on one line and exits 1.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
template <typename... Args>
[[noreturn]] void fail(const char* file, int line, const Args&... args) {
  std::ostringstream os;
  append(os, args...);
  os << " [" << file << ":" << line << "]";
  throw Error(os.str());
}
}  // namespace detail
}  // namespace fp4qat

#define FP4QAT_CHECK(cond, ...)                                           \
  do {                                                                    \
    if (!(cond)) ::fp4qat::detail::fail(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)

#define FP4QAT_FAIL(...) ::fp4qat::detail::fail(__FILE__, __LINE__, __VA_ARGS__)
