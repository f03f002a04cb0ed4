// tests/io/test_run_folder.cpp — io/run_folder.h (issue 23): one writer per run folder (a second
// is refused naming the lock file and the owner; the lock of a killed writer is taken over), and
// the temporary folders of dead writers removed while those of live ones stay.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include "io/fs.h"
#include "io/run_folder.h"
#include "kernels/common/check.h"
#include "tests/common/test_util.h"

using namespace fp4qat;

namespace {
// The pid of a process that has exited and been reaped.
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}
}  // namespace

TEST(RunLock, OneWriterAtATimeAndAKilledWritersLockIsTakenOver) {
  test::TempDir d;
  const std::string dir = d.file("run");
  {
    io::RunLock first(dir, "fp4qat train");
    EXPECT_TRUE(first.stale_owner().empty());
    try {
      io::RunLock second(dir, "fp4qat train");
      ADD_FAILURE() << "a second writer was let in";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("in use by another writer"), std::string::npos) << m;
      EXPECT_NE(m.find(dir + "/.fp4qat.lock"), std::string::npos) << m;
      EXPECT_NE(m.find("pid " + std::to_string(::getpid())), std::string::npos) << m;
    }
  }
  {  // released at the end of its scope: the next writer gets it, and no stale owner
    io::RunLock again(dir, "fp4qat train");
    EXPECT_TRUE(again.stale_owner().empty());
  }
  // A writer killed while holding the lock (no destructor runs): the kernel released the lock,
  // the file still names the dead owner; the next writer takes it over and says whose it was.
  const pid_t child = ::fork();
  if (child == 0) {
    try {
      new io::RunLock(dir, "killed writer");  // never destroyed
    } catch (...) {
      ::_exit(2);
    }
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  io::RunLock after(dir, "fp4qat train");
  EXPECT_NE(after.stale_owner().find("pid " + std::to_string(child)), std::string::npos) << after.stale_owner();
  EXPECT_NE(after.stale_owner().find("killed writer"), std::string::npos) << after.stale_owner();
}

TEST(RunFolder, TemporaryFoldersOfDeadWritersAreRemoved) {
  test::TempDir d;
  const std::string root = d.file("exports");
  fs::make_dirs(root);
  const std::string dead = ".step-9.tmp-" + std::to_string(dead_pid()) + "-0";
  const std::string live = ".step-10.tmp-" + std::to_string(::getpid()) + "-3";
  const std::string dead_file = ".metrics.jsonl.tmp-" + std::to_string(dead_pid()) + "-1";
  for (const auto& n : {dead, live}) fs::make_dirs(root + "/" + n + "/nvfp4");
  fs::write_text_atomic(root + "/" + dead_file, "x");
  fs::make_dirs(root + "/step-8");
  fs::make_dirs(root + "/.hidden");  // not a temporary name: kept
  auto removed = io::remove_dead_temps(root);
  std::sort(removed.begin(), removed.end());
  std::vector<std::string> want = {dead, dead_file};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(removed, want);
  EXPECT_EQ(fs::list_dir(root), (std::vector<std::string>{".hidden", live, "step-8"}));
  EXPECT_TRUE(io::remove_dead_temps(d.file("missing")).empty());
}
