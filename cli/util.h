// cli/util.h — small helpers the subcommands share: the --device option and JSONL files
// of token sequences (`{"tokens": [...]}` per line).
#pragma once
#include <ATen/ATen.h>
#include <boost/program_options.hpp>

#include <fstream>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/common/nvfp4_rule.h"
#include "trainer/data.h"

namespace fp4qat::cli {

// Parses a subcommand's `args` against `desc` into `vm`; returns false (after printing `usage` and
// the options) when --help was given. Unknown or malformed options throw (exit 2 in cli::run).
bool parse_options(const std::vector<std::string>& args, const boost::program_options::options_description& desc,
                   boost::program_options::variables_map& vm, const std::string& usage);

// "auto" (a GPU when there is one) | "cpu" | "cuda"; `what` names the option in messages.
at::Device parse_device(const std::string& s, const std::string& what = "--device");

// The NVFP4 scale-rule options of `quantize` and `convert`: --scale-rule max6|4over6, --error
// mae|mse and --e4m3-max 256|448 (null: not given; 4over6 only, defaults MAE and 256, as
// TransformerEngine), --global-scale tensor|row. Refuses unknown values, other bounds, and --error
// or --e4m3-max without --scale-rule 4over6, naming the option.
NVFP4Rule parse_rule_options(const std::string& scale_rule, const std::string* error, const double* e4m3_max,
                             const std::string& global_scale);

// Token sequences of a JSONL file; blank lines skipped; each token in [0, vocab), each sequence
// `min_len` to `max_len` tokens long (`max_what` says where the maximum comes from). Errors name
// file:line.
std::vector<std::vector<int64_t>> read_token_jsonl(const std::string& path, int64_t vocab, size_t min_len,
                                                   size_t max_len, const std::string& max_what);

// The prompts of `generate`: a JSONL file of {"tokens": [...]} (read_token_jsonl), or a prepared
// dataset folder (scripts/prepare_data, docs/data-format.md): each document's tokens before its
// first masked-in token (the prompt, or the conversation up to where the assistant writes). A
// document without such a prefix (a text dataset) is refused, naming it.
std::vector<std::vector<int64_t>> read_prompts(const std::string& path, int64_t vocab, size_t max_len,
                                               const std::string& max_what);

// The id -> bytes table (vocab.bin, docs/data-format.md) that decodes token ids for printing:
// `path` when given (a vocab.bin or a prepared dataset folder; refused when it holds none), else
// the vocab.bin of the first of `folders` that has one (a dataset folder, a model folder the
// trainer wrote); null when none has.
std::unique_ptr<data::Vocab> find_vocab(const std::string& path, const std::vector<std::string>& folders);

// Where a subcommand writes its JSONL: stdout, or `path` written under a temporary name beside
// it and renamed into place by commit(), so no reader sees a half-written file: a failed or
// killed run leaves an earlier file of that name as it was.
class OutputFile {
 public:
  explicit OutputFile(const std::string& path);  // "" = stdout
  ~OutputFile();                                 // removes the temporary file unless committed
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  std::ostream& stream();
  void commit();  // flush and check the stream; for a file: fsync, rename into place

 private:
  std::string path_, tmp_;
  std::ofstream file_;
  bool committed_ = false;
};

}  // namespace fp4qat::cli
