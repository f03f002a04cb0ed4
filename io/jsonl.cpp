// io/jsonl.cpp — see jsonl.h.
#include "io/jsonl.h"

#include <algorithm>

#include "io/fs.h"

namespace fp4qat::jsonl {

void for_each(const std::string& path, const std::function<void(const json::Value&, const std::string& where)>& fn,
              uint64_t max_bytes) {
  const std::string text = fs::read_text(path, max_bytes);
  size_t pos = 0, line_no = 0;
  while (pos < text.size()) {
    const size_t end = std::min(text.find('\n', pos), text.size());
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(line_no);
    fn(json::parse(line, where), where);
  }
}

}  // namespace fp4qat::jsonl
