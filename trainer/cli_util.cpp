// trainer/cli_util.cpp — see cli_util.h.
#include "trainer/cli_util.h"

#include "kernels/common/check.h"
#include "qat/fsutil.h"
#include "qat/json.h"

namespace fp4qat::cli {

at::Device parse_device(const std::string& s, const std::string& what) {
  FP4QAT_CHECK(s == "auto" || s == "cpu" || s == "cuda", what, " '", s, "': expected auto, cpu or cuda");
  FP4QAT_CHECK(s != "cuda" || at::hasCUDA(), what, " cuda: no CUDA device is available");
  return (s == "cuda" || (s == "auto" && at::hasCUDA())) ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
}

std::vector<std::vector<int64_t>> read_token_jsonl(const std::string& path, int64_t vocab, size_t min_len) {
  const std::string text = fs::read_text(path, 1u << 30);
  std::vector<std::vector<int64_t>> out;
  size_t pos = 0, line_no = 0;
  while (pos < text.size()) {
    const size_t end = std::min(text.find('\n', pos), text.size());
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(line_no);
    const json::Value v = json::parse(line, where);
    std::vector<int64_t> seq;
    for (const auto& t : v.at("tokens", where).as_array(where + ": tokens")) {
      const int64_t id = t.as_int(where + ": tokens");
      FP4QAT_CHECK(id >= 0 && id < vocab, where, ": token ", id, " is outside the vocabulary [0, ", vocab, ")");
      seq.push_back(id);
    }
    FP4QAT_CHECK(seq.size() >= min_len, where, ": a sequence needs at least ", min_len, " token(s)");
    out.push_back(std::move(seq));
  }
  return out;
}

}  // namespace fp4qat::cli
