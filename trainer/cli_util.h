// trainer/cli_util.h — small helpers the subcommands share: the --device option and JSONL files
// of token sequences (`{"tokens": [...]}` per line).
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace fp4qat::cli {

// "auto" (a GPU when there is one) | "cpu" | "cuda"; `what` names the option in messages.
at::Device parse_device(const std::string& s, const std::string& what = "--device");

// Token sequences of a JSONL file; blank lines skipped; each token in [0, vocab), each sequence
// at least `min_len` long. Errors name file:line.
std::vector<std::vector<int64_t>> read_token_jsonl(const std::string& path, int64_t vocab, size_t min_len);

}  // namespace fp4qat::cli
