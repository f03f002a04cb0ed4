// io/safetensors.h — safetensors reader (memory-mapped, validated) and writer (atomic), per
// docs/spec/checkpoint-format.md. Reading a 100 GB folder maps files; it never reads them
// into RAM, and no allocation is sized from an unvalidated header.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/json.h"

namespace fp4qat::st {

enum class DType { BOOL, U8, I8, U16, I16, U32, I32, U64, I64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2 };

const char* dtype_name(DType d);
std::string shape_str(const std::vector<int64_t>& shape);  // "[2, 3]", "[]" for a scalar
bool parse_dtype(const std::string& s, DType* out);        // false for an unknown dtype string
size_t dtype_size(DType d);
at::ScalarType to_scalar_type(DType d);
DType from_scalar_type(at::ScalarType t);  // throws for a type safetensors cannot hold

// Throws fp4qat::Error naming the tensor (`where`: the file it came from, when given) if a
// floating-point tensor holds NaN or Inf; every reader of weights asks this (quantize, convert,
// model folders for eval / generate / init_from). Other dtypes pass.
void check_finite(const at::Tensor& t, const std::string& name, const std::string& where = "");
// check_finite over many tensors (of one device) with one host synchronisation: add() keeps a flag
// on the tensor's device, check() reads them back once and refuses the first non-finite tensor in
// add() order, named as check_finite names it.
class FiniteChecks {
 public:
  void add(const at::Tensor& t, std::string name, std::string where);
  // t's leading dimensions flattened into names.size() equal parts (a stack of tensors, [N, ...]
  // or [E, P * R, K] for N = E * P), each checked as add() checks it, with one kernel for all.
  void add_parts(const at::Tensor& t, std::vector<std::string> names, std::vector<std::string> wheres);
  void check() const;

 private:
  std::vector<std::pair<std::string, std::string>> named_;  // (name, where)
  std::vector<at::Tensor> finite_;                          // bool [k] each: k of named_'s entries
};

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // "headers over 100 MB" are rejected

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range relative to the data section
  uint64_t nbytes() const { return end - begin; }
};

class Reader {
 public:
  // Opens and validates `path` (throws fp4qat::Error naming the file and tensor on any defect).
  explicit Reader(const std::string& path);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data-offset order
  const TensorInfo* find(const std::string& name) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  const json::Value& metadata() const { return metadata_; }  // {} when absent

  // Zero-copy CPU tensor over the mapping (read-only: never write into it). It keeps the mapping
  // alive after the Reader is gone. After a data_on() for a GPU it is a view into the pinned host
  // copy data_on() read instead (no page faults for a loader's scalars; the same values).
  at::Tensor view(const std::string& name) const;

  // The whole data section (every tensor's bytes, in file order) as one uint8 tensor on `device`:
  // on the CPU a view over the mapping; on a GPU read with parallel pread()s into pinned host
  // memory and copied over in one transfer (a loader then decodes from device memory: one copy
  // for the file instead of one per tensor).
  at::Tensor data_on(const at::Device& device) const;
  // Tensor `name` inside `data` (data_on's tensor, any device): a view where its offset is a
  // multiple of its element size, else a copy. Read-only, as view().
  at::Tensor view_in(const at::Tensor& data, const std::string& name) const;

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<Mapping> map_;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;  // name -> position in tensors_
  json::Value metadata_ = json::Value::object();
  mutable at::Tensor host_;  // uint8 [data bytes]: data_on()'s pinned copy of the data section
};

// Writes tensors (CPU or CUDA) to `path` atomically: a temporary file beside it, fsync, rename,
// fsync of the folder (inside a folder published whole, fs::StagingScope: in place). The output folder must exist. Names must be unique. metadata defaults to
// {"format": "pt"}. The bytes go out in windows of consecutive tensors, device (or non-contiguous)
// tensors copied to the host at most `copy_window` bytes at a time, each window written by a few
// threads with vectored writes.
void write_file(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                const json::Value& metadata = json::Value(), uint64_t copy_window = 512ull << 20);

}  // namespace fp4qat::st
