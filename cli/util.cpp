// cli/util.cpp — see cli_util.h.
#include "cli/util.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "kernels/common/check.h"
#include "io/fs.h"
#include "io/json.h"
#include "io/jsonl.h"

namespace fp4qat::cli {

bool parse_options(const std::vector<std::string>& args, const boost::program_options::options_description& desc,
                   boost::program_options::variables_map& vm, const std::string& usage) {
  namespace po = boost::program_options;
  po::store(po::command_line_parser(args).options(desc).run(), vm);
  if (vm.count("help")) {
    std::cout << "usage: " << usage << "\n\n" << desc << "\n";
    return false;
  }
  po::notify(vm);
  return true;
}

at::Device parse_device(const std::string& s, const std::string& what) {
  FP4QAT_CHECK(s == "auto" || s == "cpu" || s == "cuda", what, " '", s, "': expected auto, cpu or cuda");
  FP4QAT_CHECK(s != "cuda" || at::hasCUDA(), what, " cuda: no CUDA device is available");
  return (s == "cuda" || (s == "auto" && at::hasCUDA())) ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
}

NVFP4Rule parse_rule_options(const std::string& scale_rule, const std::string* error, const double* e4m3_max,
                             const std::string& global_scale) {
  NVFP4Rule r;
  FP4QAT_CHECK(scale_rule == "max6" || scale_rule == "4over6", "--scale-rule '", scale_rule,
               "': expected max6 or 4over6");
  r.four_over_six = scale_rule == "4over6";
  FP4QAT_CHECK(r.four_over_six || (!error && !e4m3_max), error ? "--error" : "--e4m3-max",
               " applies to --scale-rule 4over6 only (the max6 rule has one scale per block to choose from)");
  if (error) {
    FP4QAT_CHECK(*error == "mae" || *error == "mse", "--error '", *error, "': expected mae or mse");
    r.mse = *error == "mse";
  }
  if (e4m3_max) {
    FP4QAT_CHECK(*e4m3_max == 256.0 || *e4m3_max == 448.0, "--e4m3-max ", *e4m3_max,
                 ": expected 256 (TransformerEngine's) or 448 (FlashInfer's)");
    r.e4m3_max = static_cast<float>(*e4m3_max);
  }
  FP4QAT_CHECK(global_scale == "tensor" || global_scale == "row", "--global-scale '", global_scale,
               "': expected tensor or row");
  r.row_scaled = global_scale == "row";
  return r;
}

std::vector<std::vector<int64_t>> read_token_jsonl(const std::string& path, int64_t vocab, size_t min_len,
                                                   size_t max_len, const std::string& max_what) {
  std::vector<std::vector<int64_t>> out;
  jsonl::for_each(path, [&](const json::Value& v, const std::string& where) {
    std::vector<int64_t> seq;
    for (const auto& t : v.at("tokens", where).as_array(where + ": tokens")) {
      const int64_t id = t.as_int(where + ": tokens");
      FP4QAT_CHECK(id >= 0 && id < vocab, where, ": token ", id, " is outside the vocabulary [0, ", vocab, ")");
      seq.push_back(id);
    }
    FP4QAT_CHECK(seq.size() >= min_len, where, ": a sequence needs at least ", min_len, " token(s)");
    FP4QAT_CHECK(seq.size() <= max_len, where, ": ", seq.size(), " tokens, more than ", max_len, " (", max_what, ")");
    out.push_back(std::move(seq));
  });
  return out;
}

std::vector<std::vector<int64_t>> read_prompts(const std::string& path, int64_t vocab, size_t max_len,
                                               const std::string& max_what) {
  if (!data::Dataset::is_dataset(path)) return read_token_jsonl(path, vocab, 1, max_len, max_what);
  const data::Dataset ds(path, 0.0, 0);
  FP4QAT_CHECK(ds.vocab_size() <= vocab, path, "/dataset.json: vocab_size ", ds.vocab_size(),
               " is larger than the model's ", vocab, " (a dataset made with another tokenizer)");
  std::vector<std::vector<int64_t>> out;
  for (int64_t d = 0; d < ds.num_documents(); ++d) {
    const std::vector<int64_t> toks = ds.tokens_of(d);
    const std::vector<uint8_t> mask = ds.mask_of(d);
    size_t n = 0;
    while (n < mask.size() && mask[n] == 0) ++n;
    FP4QAT_CHECK(n > 0, path, ": document ", d, " has no prompt (its first token is a loss target; prompts come ",
                 "from chat or prompt_response datasets)");
    FP4QAT_CHECK(n <= max_len, path, ": document ", d, "'s prompt has ", n, " tokens, more than ", max_len, " (",
                 max_what, ")");
    out.emplace_back(toks.begin(), toks.begin() + static_cast<std::ptrdiff_t>(n));
  }
  return out;
}

std::unique_ptr<data::Vocab> find_vocab(const std::string& path, const std::vector<std::string>& folders) {
  if (!path.empty()) {
    const std::string file = fs::is_dir(path) ? path + "/vocab.bin" : path;
    FP4QAT_CHECK(fs::exists(file), "--vocab: '", file, "' not found (a vocab.bin or a prepared dataset folder)");
    return std::make_unique<data::Vocab>(file);
  }
  for (const auto& f : folders)
    if (!f.empty() && fs::is_dir(f) && fs::exists(f + "/vocab.bin"))
      return std::make_unique<data::Vocab>(f + "/vocab.bin");
  return nullptr;
}

OutputFile::OutputFile(const std::string& path) : path_(path) {
  if (path_.empty()) return;
  tmp_ = fs::temp_name_beside(path_);
  file_.open(tmp_, std::ios::binary | std::ios::trunc);
  FP4QAT_CHECK(file_.good(), path_, ": cannot create (", tmp_, "): ", std::strerror(errno));
}

OutputFile::~OutputFile() {
  if (!path_.empty() && !committed_) {
    file_.close();
    std::remove(tmp_.c_str());
  }
}

std::ostream& OutputFile::stream() { return path_.empty() ? std::cout : file_; }

void OutputFile::commit() {
  std::ostream& os = stream();
  os.flush();
  FP4QAT_CHECK(os.good(), path_.empty() ? std::string("stdout") : path_, ": write failed");
  if (path_.empty()) return;
  file_.close();
  FP4QAT_CHECK(!file_.fail(), path_, ": write failed (", tmp_, ")");
  fs::fsync_path(tmp_);
  fs::rename_atomic(tmp_, path_);
  committed_ = true;
}

}  // namespace fp4qat::cli
