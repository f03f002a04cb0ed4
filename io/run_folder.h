// io/run_folder.h — one writer per run folder, and what a killed writer leaves behind (issue 23):
//   RunLock: an advisory lock (flock) on `<dir>/.fp4qat.lock` held for the writer's lifetime; the
//     file records the owner's pid, host and command. A second writer is refused naming the file
//     and the owner. The kernel drops the lock when its holder dies, so a lock file left by a
//     killed run is stale by construction: it is taken over (and said so), never waited for.
//   remove_dead_temps: the temporary files and folders of interrupted atomic writes
//     (fs::temp_name_beside: `.<name>.tmp-<pid>-<n>`) whose writer process is gone.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fp4qat::io {

class RunLock {
 public:
  // Creates `dir` if missing and locks it for `what` (e.g. "fp4qat train"); throws naming the lock
  // file and its owner when another live process holds it.
  RunLock(const std::string& dir, const std::string& what);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  const std::string& path() const { return path_; }
  // The previous owner's record when the lock file was left by a process that is gone ("" if none).
  const std::string& stale_owner() const { return stale_; }

 private:
  int fd_ = -1;
  std::string path_, stale_;
};

// Removes the entries of `root` (not recursive) named `.<name>.tmp-<pid>-<n>` whose pid is not a
// live process; returns their names. A missing root gives none.
std::vector<std::string> remove_dead_temps(const std::string& root);

}  // namespace fp4qat::io
