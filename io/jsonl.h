// io/jsonl.h — JSON Lines files: one JSON value a line, blank lines skipped, every error naming
// file:line (a truncated last line is a parse error of that line). The one reader for every
// JSONL input (token sequences of `eval` / `generate`, rollout samples).
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "io/json.h"

namespace fp4qat::jsonl {

// Calls fn(value, "path:line") for each non-blank line of `path`, in order. Files larger than
// `max_bytes` are refused (naming the file) before anything is read into memory.
void for_each(const std::string& path, const std::function<void(const json::Value&, const std::string& where)>& fn,
              uint64_t max_bytes = uint64_t(1) << 30);

}  // namespace fp4qat::jsonl
