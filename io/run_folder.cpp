// io/run_folder.cpp — see run_folder.h.
#include "io/run_folder.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "io/fs.h"
#include "kernels/common/check.h"

namespace fp4qat::io {

namespace {
std::string host_name() {
  char buf[256] = {};
  return ::gethostname(buf, sizeof(buf) - 1) == 0 ? std::string(buf) : std::string("?");
}
// Whether a process with this pid exists (EPERM: it exists, owned by someone else).
bool alive(long pid) { return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM); }
}  // namespace

RunLock::RunLock(const std::string& dir, const std::string& what) : path_(dir + "/.fp4qat.lock") {
  fs::make_dirs(dir);
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  FP4QAT_CHECK(fd_ >= 0, path_, ": cannot open the run folder's lock file: ", std::strerror(errno));
  std::string owner;  // what the file says, read before and after trying the lock
  auto read_owner = [&] {
    char buf[512] = {};
    const ssize_t n = ::pread(fd_, buf, sizeof(buf) - 1, 0);
    owner = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
    while (!owner.empty() && (owner.back() == '\n' || owner.back() == '\0')) owner.pop_back();
  };
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    read_owner();
    ::close(fd_);
    fd_ = -1;
    FP4QAT_CHECK(err != EWOULDBLOCK, dir, " is in use by another writer (", owner.empty() ? "owner unknown" : owner,
                 "; lock file ", path_, "): wait for it to finish, or give this run another train.out_dir");
    FP4QAT_FAIL(path_, ": cannot lock: ", std::strerror(err));
  }
  read_owner();
  if (!owner.empty()) stale_ = owner;  // its holder is gone: the kernel released the lock
  const std::string me = "pid " + std::to_string(::getpid()) + " on " + host_name() + ": " + what + "\n";
  const bool ok = ::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, me.data(), me.size(), 0) == static_cast<ssize_t>(me.size());
  FP4QAT_CHECK(ok, path_, ": cannot write the lock owner: ", std::strerror(errno));
}

RunLock::~RunLock() {
  if (fd_ < 0) return;
  // Emptied, not removed: removing would let a third process lock a new file of the same name
  // while a second still waits on this one's descriptor.
  if (::ftruncate(fd_, 0) != 0) {
  }
  ::flock(fd_, LOCK_UN);
  ::close(fd_);
}

std::vector<std::string> remove_dead_temps(const std::string& root) {
  std::vector<std::string> removed;
  if (!fs::is_dir(root)) return removed;
  for (const auto& n : fs::list_dir(root)) {
    if (n.empty() || n[0] != '.') continue;
    const auto t = n.rfind(".tmp-");
    if (t == std::string::npos) continue;
    const std::string rest = n.substr(t + 5);  // <pid>-<n>
    const auto dash = rest.find('-');
    if (dash == std::string::npos || dash == 0 || dash > 9 ||
        rest.find_first_not_of("0123456789-") != std::string::npos)
      continue;
    const long pid = std::stol(rest.substr(0, dash));
    if (alive(pid)) continue;
    fs::remove_tree(root + "/" + n);
    removed.push_back(n);
  }
  return removed;
}

}  // namespace fp4qat::io
