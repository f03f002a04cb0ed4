// io/safetensors.cpp — see safetensors.h.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <functional>
#include <set>
#include <thread>

#include "kernels/common/check.h"
#include "io/fs.h"

namespace fp4qat::st {

namespace {
// work(0 .. n-1), each on its own thread (work(0) on the caller's); returns when all are done.
void run_on_threads(size_t n, const std::function<void(size_t)>& work) {
  std::vector<std::thread> pool;
  for (size_t i = 1; i < n; ++i) pool.emplace_back(work, i);
  if (n > 0) work(0);
  for (auto& t : pool) t.join();
}

struct DTypeRow {
  DType d;
  const char* name;
  size_t size;
  at::ScalarType st;
};
const DTypeRow kDTypes[] = {
    {DType::BOOL, "BOOL", 1, at::kBool},
    {DType::U8, "U8", 1, at::kByte},
    {DType::I8, "I8", 1, at::kChar},
    {DType::U16, "U16", 2, at::kUInt16},
    {DType::I16, "I16", 2, at::kShort},
    {DType::U32, "U32", 4, at::kUInt32},
    {DType::I32, "I32", 4, at::kInt},
    {DType::U64, "U64", 8, at::kUInt64},
    {DType::I64, "I64", 8, at::kLong},
    {DType::F16, "F16", 2, at::kHalf},
    {DType::BF16, "BF16", 2, at::kBFloat16},
    {DType::F32, "F32", 4, at::kFloat},
    {DType::F64, "F64", 8, at::kDouble},
    {DType::F8_E4M3, "F8_E4M3", 1, at::kFloat8_e4m3fn},
    {DType::F8_E5M2, "F8_E5M2", 1, at::kFloat8_e5m2},
};
const DTypeRow& row(DType d) {
  for (const auto& r : kDTypes)
    if (r.d == d) return r;
  FP4QAT_FAIL("internal: unknown DType");
}
}  // namespace

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string o = "[";
  for (size_t i = 0; i < shape.size(); ++i) o += (i ? ", " : "") + std::to_string(shape[i]);
  return o + "]";
}

void check_finite(const at::Tensor& t, const std::string& name, const std::string& where) {
  FiniteChecks c;
  c.add(t, name, where);
  c.check();
}

void FiniteChecks::add(const at::Tensor& t, std::string name, std::string where) {
  add_parts(t, {std::move(name)}, {std::move(where)});
}

void FiniteChecks::add_parts(const at::Tensor& t, std::vector<std::string> names, std::vector<std::string> wheres) {
  FP4QAT_CHECK(names.size() == wheres.size() && !names.empty() && t.numel() % static_cast<int64_t>(names.size()) == 0,
               "FiniteChecks::add_parts: ", names.size(), " names for a tensor of ", t.numel(), " elements");
  if (!at::isFloatingType(t.scalar_type())) return;
  // 8-bit floats are widened first (isfinite is not defined for them on every device).
  const at::Tensor x = t.element_size() < 2 ? t.to(at::kFloat) : t;
  // One flag a part, kept on the tensor's device until check().
  finite_.push_back(at::isfinite(x).reshape({static_cast<int64_t>(names.size()), -1}).all(1));
  for (size_t i = 0; i < names.size(); ++i) named_.emplace_back(std::move(names[i]), std::move(wheres[i]));
}

void FiniteChecks::check() const {
  if (finite_.empty()) return;
  const at::Tensor ok = at::cat(finite_).to(at::kCPU);
  const auto a = ok.accessor<bool, 1>();
  for (int64_t i = 0; i < a.size(0); ++i) {
    const auto& [name, where] = named_[static_cast<size_t>(i)];
    FP4QAT_CHECK(a[i], where, where.empty() ? "" : ": ", "tensor '", name, "' contains NaN or Inf");
  }
}

const char* dtype_name(DType d) { return row(d).name; }
size_t dtype_size(DType d) { return row(d).size; }
at::ScalarType to_scalar_type(DType d) { return row(d).st; }

bool parse_dtype(const std::string& s, DType* out) {
  for (const auto& r : kDTypes)
    if (s == r.name) {
      *out = r.d;
      return true;
    }
  return false;
}

DType from_scalar_type(at::ScalarType t) {
  for (const auto& r : kDTypes)
    if (r.st == t) return r.d;
  FP4QAT_FAIL("safetensors cannot store dtype ", t);
}

// ---- Reader -------------------------------------------------------------------------------------
struct Reader::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  int fd = -1;  // the file, open for data_on()'s reads
  ~Mapping() {
    if (addr && size) ::munmap(addr, size);
    if (fd >= 0) ::close(fd);
  }
};

Reader::~Reader() = default;

Reader::Reader(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  FP4QAT_CHECK(fd >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat sb;
  if (::fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    ::close(fd);
    FP4QAT_FAIL(path, ": not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(sb.st_size);
  map_ = std::make_shared<Mapping>();
  if (file_size > 0) {
    void* p = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      FP4QAT_FAIL(path, ": mmap failed: ", std::strerror(err));
    }
    map_->addr = p;
    map_->size = file_size;
  }
  map_->fd = fd;
  const auto* bytes = static_cast<const unsigned char*>(map_->addr);

  FP4QAT_CHECK(file_size >= 8, path, ": truncated safetensors file (", file_size,
               " bytes; the 8-byte header length is missing)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];  // little-endian
  FP4QAT_CHECK(n <= kMaxHeaderBytes, path, ": safetensors header length ", n, " exceeds the 100 MB limit");
  FP4QAT_CHECK(n <= file_size - 8, path, ": safetensors header length ", n, " is longer than the file (", file_size,
               " bytes): truncated or corrupt");
  FP4QAT_CHECK(n >= 2 && bytes[8] == '{', path, ": safetensors header does not start with '{'");
  data_start_ = 8 + n;
  const uint64_t data_size = file_size - data_start_;

  const std::string_view text(reinterpret_cast<const char*>(bytes + 8), n);
  const json::Value header = json::parse(text, path + ": safetensors header");
  FP4QAT_CHECK(header.is_object(), path, ": safetensors header is not a JSON object");

  for (const auto& [name, v] : header.as_object()) {
    if (name == "__metadata__") {
      FP4QAT_CHECK(v.is_object(), path, ": __metadata__ must be an object of strings");
      for (const auto& [k, mv] : v.as_object())
        FP4QAT_CHECK(mv.is_string(), path, ": __metadata__['", k, "'] must be a string");
      metadata_ = v;
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    FP4QAT_CHECK(v.is_object(), where, ": entry is not an object");
    TensorInfo t;
    t.name = name;
    const std::string& ds = v.at("dtype", where).as_string(where + " dtype");
    FP4QAT_CHECK(parse_dtype(ds, &t.dtype), where, ": unknown dtype '", ds, "'");
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& dim : v.at("shape", where).as_array(where + " shape")) {
      const int64_t d = dim.as_int(where + " shape");
      FP4QAT_CHECK(d >= 0, where, ": negative dimension ", d);
      t.shape.push_back(d);
      overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel);
    }
    const auto& offs = v.at("data_offsets", where).as_array(where + " data_offsets");
    FP4QAT_CHECK(offs.size() == 2, where, ": data_offsets must be [begin, end]");
    const int64_t b = offs[0].as_int(where + " data_offsets"), e = offs[1].as_int(where + " data_offsets");
    FP4QAT_CHECK(b >= 0 && e >= b, where, ": invalid data_offsets [", b, ", ", e, "]");
    FP4QAT_CHECK(static_cast<uint64_t>(e) <= data_size, where, ": data_offsets [", b, ", ", e,
                 "] out of range (data section is ", data_size, " bytes)");
    t.begin = static_cast<uint64_t>(b);
    t.end = static_cast<uint64_t>(e);
    uint64_t nbytes = 0;
    overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(t.dtype)), &nbytes);
    FP4QAT_CHECK(!overflow && nbytes == t.nbytes(), where, ": shape x dtype size is ",
                 overflow ? std::string("overflowing") : std::to_string(nbytes), " bytes but data_offsets span ",
                 t.nbytes(), " bytes");
    tensors_.push_back(std::move(t));
  }

  std::stable_sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  uint64_t cursor = 0;
  for (const auto& t : tensors_) {
    FP4QAT_CHECK(t.begin >= cursor, path, ": tensor '", t.name, "' data_offsets [", t.begin, ", ", t.end,
                 "] overlap the previous tensor (which ends at ", cursor, ")");
    FP4QAT_CHECK(t.begin == cursor, path, ": hole in the data section before tensor '", t.name, "' (bytes ", cursor,
                 "..", t.begin, ")");
    cursor = t.end;
  }
  FP4QAT_CHECK(cursor == data_size, path, ": data section is ", data_size, " bytes but tensors cover ", cursor,
               " (trailing bytes or truncated file)");
}

const TensorInfo* Reader::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

at::Tensor Reader::data_on(const at::Device& device) const {
  const uint64_t n = map_->size - data_start_;
  auto* base = static_cast<unsigned char*>(map_->addr) + data_start_;
  auto keep = map_;
  if (device.is_cpu() || n == 0) {
    const at::Tensor v = n == 0 ? at::empty({0}, at::kByte)
                                : at::from_blob(base, {static_cast<int64_t>(n)}, [keep](void*) {}, at::kByte);
    return v.to(device);
  }
  // Pinned memory from the caching host allocator (a loader that reads an export every RL
  // iteration gets the same buffer back), filled by threads reading 8 MiB chunks.
  at::Tensor host = at::empty({static_cast<int64_t>(n)}, at::TensorOptions(at::kByte).pinned_memory(true));
  auto* dst = static_cast<unsigned char*>(host.data_ptr());
  constexpr uint64_t kChunk = 8ull << 20;
  const uint64_t chunks = (n + kChunk - 1) / kChunk;
  const unsigned threads = static_cast<unsigned>(
      std::min<uint64_t>({chunks, 8, std::max(1u, std::thread::hardware_concurrency())}));
  std::atomic<uint64_t> next{0};
  std::atomic<int> failed{0};
  auto work = [&] {
    for (uint64_t c = next++; c < chunks && failed == 0; c = next++) {
      uint64_t off = c * kChunk;
      const uint64_t end = std::min(n, off + kChunk);
      while (off < end) {
        const ssize_t r = ::pread(map_->fd, dst + off, end - off, static_cast<off_t>(data_start_ + off));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
          failed = r < 0 ? errno : EIO;
          return;
        }
        off += static_cast<uint64_t>(r);
      }
    }
  };
  run_on_threads(threads, [&](size_t) { work(); });
  FP4QAT_CHECK(failed == 0, path_, ": read failed: ", std::strerror(failed));
  host_ = host;
  return host.to(device, /*non_blocking=*/true);
}

at::Tensor Reader::view_in(const at::Tensor& data, const std::string& name) const {
  const TensorInfo* t = find(name);
  FP4QAT_CHECK(t != nullptr, path_, ": no tensor named '", name, "'");
  FP4QAT_CHECK(data.dim() == 1 && data.scalar_type() == at::kByte &&
                   static_cast<uint64_t>(data.numel()) == map_->size - data_start_,
               path_, ": tensor '", name, "': the data given is not this file's data section");
  const at::ScalarType st = to_scalar_type(t->dtype);
  if (t->nbytes() == 0) return at::empty(t->shape, data.options().dtype(st));
  at::Tensor bytes = data.narrow(0, static_cast<int64_t>(t->begin), static_cast<int64_t>(t->nbytes()));
  if (t->begin % dtype_size(t->dtype) != 0) bytes = bytes.clone();  // a view needs an aligned offset
  return bytes.view(st).view(t->shape);
}

at::Tensor Reader::view(const std::string& name) const {
  const TensorInfo* t = find(name);
  FP4QAT_CHECK(t != nullptr, path_, ": no tensor named '", name, "'");
  auto opts = at::TensorOptions().dtype(to_scalar_type(t->dtype)).device(at::kCPU);
  if (t->nbytes() == 0) return at::empty(t->shape, opts);
  if (host_.defined()) return view_in(host_, name);
  auto* base = static_cast<unsigned char*>(map_->addr) + data_start_ + t->begin;
  auto keep = map_;
  // The mapping is PROT_READ: the tensor must be treated as read-only (clone() before writing).
  return at::from_blob(
      base, t->shape, [keep](void*) {}, opts);
}

// ---- Writer -------------------------------------------------------------------------------------
namespace {
// Writes the buffers `iov` (in order) to `fd` from file offset `off`: the bytes cut into up to 8
// ranges of whole buffers (at least 16 MiB each), each range written by its own thread with
// pwritev() calls of at most IOV_MAX buffers. `path` names the file in errors. Returns the bytes.
uint64_t write_vectored(int fd, const std::vector<iovec>& iov, uint64_t off, const std::string& path) {
  uint64_t total = 0;
  for (const auto& v : iov) total += v.iov_len;
  constexpr uint64_t kMinRange = 16ull << 20;
  const uint64_t threads = std::min<uint64_t>(
      {std::max<uint64_t>(1, total / kMinRange), 8, std::max(1u, std::thread::hardware_concurrency())});
  std::vector<size_t> cut{0};     // the buffer each range starts at
  std::vector<uint64_t> start{off};  // and its file offset
  uint64_t pos = 0;
  for (size_t i = 0; i + 1 < iov.size(); ++i) {
    pos += iov[i].iov_len;
    if (cut.size() < threads && pos * threads >= total * cut.size()) {
      cut.push_back(i + 1);
      start.push_back(off + pos);
    }
  }
  cut.push_back(iov.size());
  std::atomic<int> failed{0};
  auto work = [&](size_t r) {
    std::vector<iovec> v(iov.begin() + static_cast<std::ptrdiff_t>(cut[r]),
                         iov.begin() + static_cast<std::ptrdiff_t>(cut[r + 1]));
    uint64_t at = start[r];
    size_t i = 0;
    while (i < v.size() && failed == 0) {
      const int cnt = static_cast<int>(std::min<size_t>(v.size() - i, IOV_MAX));
      const ssize_t w = ::pwritev(fd, v.data() + i, cnt, static_cast<off_t>(at));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        failed = w < 0 ? errno : EIO;
        return;
      }
      at += static_cast<uint64_t>(w);
      for (size_t left = static_cast<size_t>(w); left > 0;) {  // past what was written
        const size_t d = std::min(left, v[i].iov_len);
        v[i].iov_base = static_cast<char*>(v[i].iov_base) + d;
        v[i].iov_len -= d;
        left -= d;
        if (v[i].iov_len == 0) ++i;
      }
      while (i < v.size() && v[i].iov_len == 0) ++i;
    }
  };
  run_on_threads(cut.size() - 1, work);
  FP4QAT_CHECK(failed == 0, path, ": write failed: ", std::strerror(failed));
  return total;
}

}  // namespace

void write_file(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                const json::Value& metadata_in, uint64_t copy_window) {
  const std::string dir = fs::parent_dir(path);
  FP4QAT_CHECK(fs::is_dir(dir), path, ": output folder '", dir, "' does not exist");

  json::Value header = json::Value::object();
  header.set("__metadata__", metadata_in.is_null() ? json::Value::object({{"format", "pt"}}) : metadata_in);
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    FP4QAT_CHECK(name != "__metadata__" && !name.empty(), path, ": invalid tensor name '", name, "'");
    FP4QAT_CHECK(seen.insert(name).second, path, ": duplicate tensor name '", name, "'");
    FP4QAT_CHECK(t.defined(), path, ": tensor '", name, "' is undefined");
    const DType d = from_scalar_type(t.scalar_type());
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * dtype_size(d);
    json::Value shape = json::Value::array();
    for (int64_t s : t.sizes()) shape.push_back(s);
    header.set(name, json::Value::object({{"dtype", dtype_name(d)},
                                          {"shape", shape},
                                          {"data_offsets", json::Value::array({offset, offset + nbytes})}}));
    offset += nbytes;
  }
  std::string htext = header.dump();
  while ((htext.size() % 8) != 0) htext.push_back(' ');  // pad N to a multiple of 8

  std::string head(8, '\0');
  for (int i = 0; i < 8; ++i) head[i] = static_cast<char>((uint64_t(htext.size()) >> (8 * i)) & 0xff);
  head += htext;
  const uint64_t total = head.size() + offset;

  // Inside a folder being published whole (fs::StagingScope) the file is written in place and
  // made durable with the folder; elsewhere through a temporary name, fsync and rename.
  const bool staged = fs::in_staging(path);
  const std::string tmp = staged ? path : fs::temp_name_beside(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  FP4QAT_CHECK(fd >= 0, tmp, ": cannot create: ", std::strerror(errno));
  try {
    FP4QAT_CHECK(::ftruncate(fd, static_cast<off_t>(total)) == 0, tmp, ": cannot size to ", total,
                 " bytes: ", std::strerror(errno));
    // The bytes go out in windows of consecutive tensors (at most copy_window bytes of host
    // copies a window), each window with pwritev()s over a few byte ranges at once: one write a
    // tensor would cost a system call each (an NVFP4 expert stack is thousands of small tensors),
    // and one thread a file leaves the page cache's copy rate on the table.
    std::vector<iovec> iov{{head.data(), head.size()}};
    std::vector<at::Tensor> copies;
    uint64_t at_off = 0, copied = 0;
    auto flush = [&] {
      at_off += write_vectored(fd, iov, at_off, tmp);
      iov.clear();
      copies.clear();
      copied = 0;
    };
    for (const auto& [name, t] : tensors) {
      if (t.numel() == 0) continue;
      at::Tensor c = t.device().is_cpu() ? t.contiguous() : t.to(at::kCPU).contiguous();
      const uint64_t n = static_cast<uint64_t>(c.numel()) * c.element_size();
      iov.push_back({c.data_ptr(), static_cast<size_t>(n)});
      if (!t.device().is_cpu() || !t.is_contiguous()) copied += n;
      copies.push_back(std::move(c));
      if (copied >= copy_window) flush();
    }
    if (!iov.empty()) flush();
    FP4QAT_CHECK(staged || ::fsync(fd) == 0, tmp, ": fsync failed: ", std::strerror(errno));
    FP4QAT_CHECK(::close(fd) == 0, tmp, ": close failed: ", std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (staged) return;
  try {
    fs::rename_atomic(tmp, path);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
}

}  // namespace fp4qat::st
