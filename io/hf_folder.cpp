// io/hf_folder.cpp — see hf_folder.h.
#include "io/hf_folder.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "io/fs.h"
#include "io/json.h"
#include "kernels/common/check.h"

namespace fp4qat::hf {

namespace {
int64_t mtime_ns(const struct stat& sb) {
  return static_cast<int64_t>(sb.st_mtim.tv_sec) * 1000000000 + static_cast<int64_t>(sb.st_mtim.tv_nsec);
}
}  // namespace

ShardCache::~ShardCache() {
  for (auto& e : entries_)
    if (e.fd >= 0) ::close(e.fd);
}

at::Tensor ShardCache::find(const std::string& path, const at::Device& device) {
  struct stat sb;
  if (::stat(path.c_str(), &sb) != 0) return at::Tensor();
  for (auto& e : entries_)
    if (e.dev == static_cast<uint64_t>(sb.st_dev) && e.ino == static_cast<uint64_t>(sb.st_ino) &&
        e.size == static_cast<uint64_t>(sb.st_size) && e.mtime_ns == mtime_ns(sb) && e.device == device.str()) {
      e.used = true;
      ++hits_;
      return e.data;
    }
  return at::Tensor();
}

void ShardCache::put(const std::string& path, const at::Device& device, at::Tensor data) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  struct stat sb;
  if (::fstat(fd, &sb) != 0 || sb.st_nlink < 2) {  // only linked files come back (frozen shards)
    ::close(fd);
    return;
  }
  Entry e;
  e.dev = static_cast<uint64_t>(sb.st_dev);
  e.ino = static_cast<uint64_t>(sb.st_ino);
  e.size = static_cast<uint64_t>(sb.st_size);
  e.mtime_ns = mtime_ns(sb);
  e.device = device.str();
  e.fd = fd;
  e.data = std::move(data);
  e.used = true;
  entries_.push_back(std::move(e));
}

void ShardCache::sweep() {
  std::vector<Entry> keep;
  for (auto& e : entries_) {
    if (e.used) {
      e.used = false;
      keep.push_back(std::move(e));
    } else if (e.fd >= 0) {
      ::close(e.fd);
    }
  }
  entries_ = std::move(keep);
}

FolderReader::FolderReader(std::string dir, ShardCache* cache) : dir_(std::move(dir)), cache_(cache) {
  FP4QAT_CHECK(fs::is_dir(dir_), dir_, ": not a folder");
  const std::string index = dir_ + "/model.safetensors.index.json";
  if (fs::exists(index)) {
    const json::Value j = json::parse(fs::read_text(index), index);
    for (const auto& [name, file] : j.at("weight_map", index).as_object(index + ": weight_map")) {
      const std::string f = file.as_string(index + ": weight_map['" + name + "']");
      FP4QAT_CHECK(f.find('/') == std::string::npos && !f.empty() && f[0] != '.', index, ": shard name '", f,
                   "' of tensor '", name, "' is not a file name in the folder");
      where_[name] = f;
      if (std::find(shards_.begin(), shards_.end(), f) == shards_.end()) shards_.push_back(f);
    }
    std::sort(shards_.begin(), shards_.end());
  } else {
    FP4QAT_CHECK(fs::exists(dir_ + "/model.safetensors"), dir_,
                 ": neither model.safetensors.index.json nor model.safetensors found");
    shards_ = {"model.safetensors"};
    for (const auto& t : shard("model.safetensors").tensors()) where_[t.name] = "model.safetensors";
  }
}

st::Reader& FolderReader::shard(const std::string& file) {
  auto& r = open_[file];
  if (!r) r = std::make_unique<st::Reader>(dir_ + "/" + file);
  return *r;
}

const st::TensorInfo& FolderReader::info(const std::string& name) {
  auto it = where_.find(name);
  FP4QAT_CHECK(it != where_.end(), dir_, ": missing tensor '", name, "'");
  const st::TensorInfo* t = shard(it->second).find(name);
  FP4QAT_CHECK(t != nullptr, dir_, "/", it->second, ": tensor '", name, "' listed in the index is missing");
  return *t;
}

at::Tensor FolderReader::view(const std::string& name) {
  auto it = where_.find(name);
  FP4QAT_CHECK(it != where_.end(), dir_, ": missing tensor '", name, "'");
  return shard(it->second).view(name);
}

at::Tensor FolderReader::view_on(const std::string& name, const at::Device& device) {
  if (device.is_cpu() && !cache_) return view(name);
  auto it = where_.find(name);
  FP4QAT_CHECK(it != where_.end(), dir_, ": missing tensor '", name, "'");
  st::Reader& r = shard(it->second);
  at::Tensor& data = on_device_[{it->second, device.str()}];
  if (!data.defined()) {
    const std::string path = dir_ + "/" + it->second;
    if (cache_) data = cache_->find(path, device);
    if (!data.defined()) {
      data = r.data_on(device);
      if (cache_) cache_->put(path, device, data);
    }
  }
  return r.view_in(data, name);
}

ShardedWriter::ShardedWriter(std::string dir, int64_t max_shard_bytes)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes) {
  FP4QAT_CHECK(fs::is_dir(dir_), dir_, ": output folder does not exist");
}

void ShardedWriter::add(const std::string& name, at::Tensor t) {
  FP4QAT_CHECK(!finished_, dir_, ": tensor '", name, "' added after finish()");
  FP4QAT_CHECK(seen_.emplace(name, true).second, dir_, ": tensor '", name, "' would be written twice");
  t = t.cpu().contiguous();
  const int64_t nb = t.numel() * t.element_size();
  if (shard_bytes_ > 0 && shard_bytes_ + nb > max_shard_bytes_) end_shard();
  shard_.emplace_back(name, std::move(t));
  shard_bytes_ += nb;
  total_bytes_ += nb;
}

void ShardedWriter::end_shard() {
  if (shard_.empty()) return;
  const std::string path = dir_ + "/shard-" + std::to_string(shard_names_.size()) + ".safetensors";
  st::write_file(path, shard_);
  std::vector<std::string> names;
  for (const auto& [n, t] : shard_) names.push_back(n);
  shard_names_.push_back(std::move(names));
  shard_.clear();
  shard_bytes_ = 0;
}

void ShardedWriter::add_written_shard(const std::string& file, const std::vector<std::string>& names, int64_t bytes) {
  FP4QAT_CHECK(!finished_, dir_, ": shard '", file, "' added after finish()");
  end_shard();
  for (const auto& n : names) FP4QAT_CHECK(seen_.emplace(n, true).second, dir_, ": tensor '", n, "' would be written twice");
  fs::link_or_copy(file, dir_ + "/shard-" + std::to_string(shard_names_.size()) + ".safetensors");
  shard_names_.push_back(names);
  total_bytes_ += bytes;
}

void ShardedWriter::finish() {
  FP4QAT_CHECK(!finished_, dir_, ": finish() called twice");
  end_shard();
  finished_ = true;
  // Shards get their final names now that their number is known.
  json::Value weight_map = json::Value::object();
  const size_t n = shard_names_.size();
  for (size_t s = 0; s < n; ++s) {
    char fname[64];
    std::snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", s + 1, n);
    fs::rename_atomic(dir_ + "/shard-" + std::to_string(s) + ".safetensors", dir_ + "/" + fname);
    for (const auto& name : shard_names_[s]) weight_map.set(name, std::string(fname));
    files_.emplace_back(fname, shard_names_[s]);
  }
  json::Value index = json::Value::object(
      {{"metadata", json::Value::object({{"total_size", total_bytes_}})}, {"weight_map", weight_map}});
  fs::write_text_atomic(dir_ + "/model.safetensors.index.json", index.dump(2) + "\n");
}

namespace {
const char* const kServingFiles[] = {
    "added_tokens.json",       "chat_template.jinja", "chat_template.json", "generation_config.json", "merges.txt",
    "special_tokens_map.json", "tokenizer.json",      "tokenizer.model",    "tokenizer_config.json",  "vocab.json"};
}  // namespace

std::vector<std::string> serving_files(const std::string& dir) {
  std::vector<std::string> out;
  if (dir.empty() || !fs::is_dir(dir)) return out;
  for (const char* n : kServingFiles) {
    const std::string p = dir + "/" + n;
    if (fs::exists(p) && !fs::is_dir(p)) out.push_back(n);
  }
  return out;
}

bool has_tokenizer(const std::vector<std::string>& files) {
  return std::any_of(files.begin(), files.end(), [](const std::string& f) {
    return f == "tokenizer.json" || f == "tokenizer.model" || f == "vocab.json";
  });
}

void copy_files(const std::string& from, const std::vector<std::string>& files, const std::string& to) {
  for (const auto& f : files) fs::copy_file(from + "/" + f, to + "/" + f);
}

}  // namespace fp4qat::hf
