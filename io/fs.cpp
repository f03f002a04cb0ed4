// io/fs.cpp — see fsutil.h.
#include "io/fs.h"

#include <dirent.h>
#include <stdio.h>  // renameat2
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <algorithm>
#include <vector>

#include "kernels/common/check.h"

namespace fp4qat::fs {

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool is_dir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string parent_dir(const std::string& path) {
  const auto pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

std::string temp_name_beside(const std::string& path) {
  static std::atomic<int> counter{0};
  const auto pos = path.find_last_of('/');
  const std::string dir = pos == std::string::npos ? "" : path.substr(0, pos + 1);
  const std::string name = pos == std::string::npos ? path : path.substr(pos + 1);
  return dir + "." + name + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  FP4QAT_CHECK(fd >= 0, path, ": cannot open for fsync: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  FP4QAT_CHECK(rc == 0 || err == EINVAL, path, ": fsync failed: ", std::strerror(err));
}

void rename_atomic(const std::string& from, const std::string& to) {
  FP4QAT_CHECK(::rename(from.c_str(), to.c_str()) == 0, "cannot rename ", from, " to ", to, ": ", std::strerror(errno));
  fsync_path(parent_dir(to));
}

void exchange_atomic(const std::string& a, const std::string& b) {
  FP4QAT_CHECK(::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0, "cannot exchange ", a,
               " and ", b, ": ", std::strerror(errno));
  fsync_path(parent_dir(b));
}

namespace {
thread_local std::vector<std::string> t_staging;  // this thread's StagingScope folders, innermost last
}  // namespace

StagingScope::StagingScope(const std::string& dir) { t_staging.push_back(dir); }
StagingScope::~StagingScope() { t_staging.pop_back(); }

bool in_staging(const std::string& path) {
  for (const auto& d : t_staging)
    if (path.size() > d.size() + 1 && path.compare(0, d.size(), d) == 0 && path[d.size()] == '/') return true;
  return false;
}

void write_text_atomic(const std::string& path, const std::string& text) {
  const std::string dir = parent_dir(path);
  FP4QAT_CHECK(is_dir(dir), path, ": output folder ", dir, " does not exist");
  const bool staged = in_staging(path);  // written in place: the folder is published whole
  const std::string tmp = staged ? path : temp_name_beside(path);
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    FP4QAT_CHECK(f.good(), tmp, ": cannot create: ", std::strerror(errno));
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
    f.flush();
    if (!f.good()) {
      ::unlink(tmp.c_str());
      FP4QAT_FAIL(tmp, ": write failed");
    }
  }
  if (staged) return;
  try {
    fsync_path(tmp);
    rename_atomic(tmp, path);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
}

void make_dir(const std::string& path) {
  FP4QAT_CHECK(::mkdir(path.c_str(), 0755) == 0, path, ": cannot create folder: ", std::strerror(errno));
}

void make_dirs(const std::string& path) {
  if (path.empty() || is_dir(path)) return;
  const std::string parent = parent_dir(path);
  if (parent != path && parent != "." && parent != "/") make_dirs(parent);
  if (::mkdir(path.c_str(), 0755) != 0 && !(errno == EEXIST && is_dir(path)))
    FP4QAT_FAIL(path, ": cannot create folder: ", std::strerror(errno));
}

void remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    if (DIR* d = ::opendir(path.c_str())) {
      while (dirent* e = ::readdir(d)) {
        const std::string n = e->d_name;
        if (n != "." && n != "..") remove_tree(path + "/" + n);
      }
      ::closedir(d);
    }
    ::rmdir(path.c_str());
  } else {
    ::unlink(path.c_str());
  }
}

std::string read_text(const std::string& path, size_t max_bytes) {
  std::ifstream f(path, std::ios::binary);
  FP4QAT_CHECK(f.good(), path, ": cannot open: ", std::strerror(errno));
  f.seekg(0, std::ios::end);
  const auto size = static_cast<size_t>(f.tellg());
  FP4QAT_CHECK(size <= max_bytes, path, ": file is ", size, " bytes, more than the limit of ", max_bytes);
  f.seekg(0);
  std::string s(size, '\0');
  f.read(s.data(), static_cast<std::streamsize>(size));
  FP4QAT_CHECK(f.good() || size == 0, path, ": read failed");
  return s;
}

std::vector<std::string> list_dir(const std::string& path) {
  DIR* d = ::opendir(path.c_str());
  FP4QAT_CHECK(d != nullptr, path, ": cannot list folder: ", std::strerror(errno));
  std::vector<std::string> out;
  while (dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

void fsync_tree(const std::string& path) {
  struct stat st;
  FP4QAT_CHECK(::lstat(path.c_str(), &st) == 0, path, ": cannot stat: ", std::strerror(errno));
  if (S_ISLNK(st.st_mode)) return;
  if (S_ISDIR(st.st_mode))
    for (const auto& n : list_dir(path)) fsync_tree(path + "/" + n);
  fsync_path(path);
}

void symlink_atomic(const std::string& target, const std::string& link) {
  const std::string tmp = temp_name_beside(link);
  FP4QAT_CHECK(::symlink(target.c_str(), tmp.c_str()) == 0, tmp, ": cannot create symlink: ", std::strerror(errno));
  try {
    rename_atomic(tmp, link);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
}

std::string read_link(const std::string& link) {
  char buf[4096];
  const ssize_t n = ::readlink(link.c_str(), buf, sizeof buf - 1);
  return n < 0 ? std::string() : std::string(buf, static_cast<size_t>(n));
}

std::string real_path(const std::string& path) {
  char* r = ::realpath(path.c_str(), nullptr);
  FP4QAT_CHECK(r != nullptr, path, ": cannot resolve: ", std::strerror(errno));
  std::string out(r);
  std::free(r);
  return out;
}

void copy_file(const std::string& from, const std::string& to) {
  FP4QAT_CHECK(!exists(to), to, ": already exists");
  std::ifstream in(from, std::ios::binary);
  FP4QAT_CHECK(in.good(), from, ": cannot open: ", std::strerror(errno));
  {
    std::ofstream out(to, std::ios::binary | std::ios::trunc);
    FP4QAT_CHECK(out.good(), to, ": cannot create: ", std::strerror(errno));
    if (in.peek() != std::ifstream::traits_type::eof()) out << in.rdbuf();  // << of nothing sets failbit
    out.flush();
    FP4QAT_CHECK(out.good(), to, ": write failed (copying ", from, ")");
  }
  if (!in_staging(to)) fsync_path(to);
}

bool link_or_copy(const std::string& from, const std::string& to) {
  FP4QAT_CHECK(!exists(to), to, ": already exists");
  if (::link(from.c_str(), to.c_str()) == 0) return true;
  copy_file(from, to);
  return false;
}

}  // namespace fp4qat::fs
