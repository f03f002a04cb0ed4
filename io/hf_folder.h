// io/hf_folder.h — a Hugging Face folder's safetensors, read lazily and written in shards, once
// for every reader (model loading, `convert`, the rollout side, `eval`) and every writer (saved
// models, exports, `convert`). Layout (docs/spec/checkpoint-format.md): `model.safetensors`, or
// shards `model-0000i-of-0000N.safetensors` listed by `model.safetensors.index.json`
// ({"metadata": {"total_size": bytes}, "weight_map": {tensor: shard}}).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors.h"

namespace fp4qat::hf {

// Device copies of shard files kept from one load to the next (the RL loop reloads an export every
// iteration, and an expert-only export's frozen shard is the same file, hard-linked, every time):
// a shard whose file is the one already copied — same device and inode, same size and mtime, the
// inode held open by the cache so that it cannot be reused — is not read again. Only files with
// more than one link are kept (the exporter's linked shards; a shard written anew each time would
// only hold memory). sweep() drops the entries the last load did not use.
class ShardCache {
 public:
  ShardCache() = default;
  ShardCache(const ShardCache&) = delete;
  ShardCache& operator=(const ShardCache&) = delete;
  ~ShardCache();
  // The cached data section of `path` on `device`, or undefined (and nothing kept) on a miss.
  at::Tensor find(const std::string& path, const at::Device& device);
  void put(const std::string& path, const at::Device& device, at::Tensor data);
  void sweep();  // forget every entry not found or put since the last sweep
  int64_t hits() const { return hits_; }
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    uint64_t dev = 0, ino = 0, size = 0;
    int64_t mtime_ns = 0;
    std::string device;
    int fd = -1;  // holds the inode
    at::Tensor data;
    bool used = false;
  };
  std::vector<Entry> entries_;
  int64_t hits_ = 0;
};

// The tensors of a folder: the index (or the single model.safetensors) says which shard holds
// each; a shard is opened (mapped, never read into memory) the first time it is asked for.
// Errors name the folder, the index or the shard.
class FolderReader {
 public:
  // cache: where view_on() looks for (and leaves) device copies of the shards; null: none.
  explicit FolderReader(std::string dir, ShardCache* cache = nullptr);
  const std::string& dir() const { return dir_; }
  const std::vector<std::string>& shards() const { return shards_; }          // file names, sorted
  const std::map<std::string, std::string>& where() const { return where_; }  // tensor -> file name
  bool has(const std::string& name) const { return where_.count(name) > 0; }
  st::Reader& shard(const std::string& file);  // opened on first use
  // The tensor's header entry and a zero-copy CPU view; throw naming a missing tensor.
  const st::TensorInfo& info(const std::string& name);
  at::Tensor view(const std::string& name);
  // The tensor on `device`, from its shard's data section copied there whole the first time the
  // shard is asked for on that device (st::Reader::data_on; a view into it where aligned). The
  // copies stay until the FolderReader is gone: a loader holds the folder's bytes on the device
  // once, for the time it decodes them.
  at::Tensor view_on(const std::string& name, const at::Device& device);

 private:
  std::string dir_;
  std::vector<std::string> shards_;
  std::map<std::string, std::string> where_;
  std::map<std::string, std::unique_ptr<st::Reader>> open_;
  std::map<std::pair<std::string, std::string>, at::Tensor> on_device_;  // (shard, device) -> data section
  ShardCache* cache_ = nullptr;
};

// Writes tensors into shards of about `max_shard_bytes` (a new shard starts when the next tensor
// would pass it; end_shard() starts one at once) inside the existing folder `dir`, then names them
// model-0000i-of-0000N.safetensors and writes model.safetensors.index.json (finish()).
class ShardedWriter {
 public:
  ShardedWriter(std::string dir, int64_t max_shard_bytes);
  void add(const std::string& name, at::Tensor t);  // copied to the host; names must be unique
  void end_shard();
  // A whole shard that is already written: `file` holds exactly the tensors `names` (`bytes` of
  // data), as add() of them would have written it. It becomes the next shard as a hard link (a
  // copy where linking fails), nothing rewritten. Ends the current shard first.
  void add_written_shard(const std::string& file, const std::vector<std::string>& names, int64_t bytes);
  void finish();
  bool finished() const { return finished_; }
  // After finish(): each shard's file name (model-0000i-of-0000N.safetensors) and its tensors.
  const std::vector<std::pair<std::string, std::vector<std::string>>>& shard_files() const { return files_; }

 private:
  std::string dir_;
  int64_t max_shard_bytes_;
  std::vector<std::pair<std::string, at::Tensor>> shard_;
  int64_t shard_bytes_ = 0, total_bytes_ = 0;
  std::vector<std::vector<std::string>> shard_names_;  // tensor names per written shard
  std::vector<std::pair<std::string, std::vector<std::string>>> files_;  // finish(): final names
  std::vector<std::string> names_;
  std::map<std::string, bool> seen_;
  bool finished_ = false;
};

// The files a serving engine reads beside the weights and config.json: the tokenizer
// (tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json, merges.txt, ...), its chat
// template and the generation defaults (generation_config.json). Those present in `dir` as plain
// files, sorted; none when `dir` is empty or not a folder.
std::vector<std::string> serving_files(const std::string& dir);
// Whether `files` (names as serving_files gives them) hold a tokenizer: tokenizer.json,
// tokenizer.model or vocab.json. Without one, vLLM loads an empty tokenizer instead of failing.
bool has_tokenizer(const std::vector<std::string>& files);
// Copies `files` from folder `from` into the existing folder `to` (fs::copy_file: each fsynced).
void copy_files(const std::string& from, const std::vector<std::string>& files, const std::string& to);

}  // namespace fp4qat::hf
