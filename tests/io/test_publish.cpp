// tests/io/test_publish.cpp — io/publish.h: publish is atomic, keeps the newest K and leaves the
// previous folder intact when writing fails; write_folder_atomic refuses or replaces a target as
// asked and leaves nothing on failure; `latest` reads the symlink and the older text file.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "io/fs.h"
#include "io/safetensors.h"
#include "io/publish.h"
#include "io/run_folder.h"
#include "kernels/common/check.h"
#include "tests/common/test_util.h"

using namespace fp4qat;

TEST(Publish, AtomicKeepsNewestAndSurvivesAFailedWrite) {
  test::TempDir d;
  const std::string root = d.file("exports");
  auto fill = [](int step) {
    return [step](const std::string& tmp) { fs::write_text_atomic(tmp + "/step.txt", std::to_string(step)); };
  };
  for (int s = 1; s <= 4; ++s) io::publish(root, "step-" + std::to_string(s), 2, "step-", fill(s));
  EXPECT_EQ(fs::list_dir(root), (std::vector<std::string>{"latest", "step-3", "step-4"}));
  EXPECT_EQ(fs::read_link(root + "/latest"), "step-4");
  EXPECT_EQ(fs::read_text(root + "/latest/step.txt"), "4");
  // A failing export leaves the previous one complete and current, and no temporary folder.
  EXPECT_THROW(io::publish(root, "step-5", 2, "step-",
                           [](const std::string& tmp) {
                             fs::write_text_atomic(tmp + "/half.txt", "x");
                             FP4QAT_FAIL("disk full (simulated)");
                           }),
               Error);
  EXPECT_EQ(fs::list_dir(root), (std::vector<std::string>{"latest", "step-3", "step-4"}));
  EXPECT_EQ(fs::read_text(root + "/latest/step.txt"), "4");
  // Publishing a step again (after a resume) replaces it.
  io::publish(root, "step-4", 2, "step-",
              [](const std::string& tmp) { fs::write_text_atomic(tmp + "/step.txt", "4b"); });
  EXPECT_EQ(fs::read_text(root + "/latest/step.txt"), "4b");
  EXPECT_EQ(fs::list_dir(root), (std::vector<std::string>{"latest", "step-3", "step-4"}));
}

// Inside write_folder_atomic's fill (fs::StagingScope), files under the temporary folder are
// written in place: no temporary names of their own (the folder is fsynced and renamed whole).
// Only that folder and only this thread: a path beside it, or another thread, is written as
// always. The published files are complete.
TEST(Publish, FilesOfAStagedFolderAreWrittenInPlace) {
  test::TempDir d;
  const std::string target = d.file("out");
  std::vector<std::string> seen;
  bool beside = true, other_thread = true, inside = false;
  io::write_folder_atomic(target, [&](const std::string& tmp) {
    inside = fs::in_staging(tmp + "/a.json");
    beside = fs::in_staging(tmp + "x/a.json") || fs::in_staging(d.file("a.json")) || fs::in_staging(tmp);
    std::thread([&] { other_thread = fs::in_staging(tmp + "/a.json"); }).join();
    fs::write_text_atomic(tmp + "/a.json", "{}");
    st::write_file(tmp + "/w.safetensors", {{"w", at::arange(6, at::kFloat)}});
    fs::make_dir(tmp + "/sub");
    fs::copy_file(tmp + "/a.json", tmp + "/sub/b.json");
    seen = fs::list_dir(tmp);
  });
  EXPECT_TRUE(inside);
  EXPECT_FALSE(beside);
  EXPECT_FALSE(other_thread);
  EXPECT_FALSE(fs::in_staging(target + "/a.json")) << "the scope ends with the fill";
  EXPECT_EQ(seen, (std::vector<std::string>{"a.json", "sub", "w.safetensors"})) << "no temporary files";
  EXPECT_EQ(fs::read_text(target + "/a.json"), "{}");
  EXPECT_EQ(fs::read_text(target + "/sub/b.json"), "{}");
  EXPECT_TRUE(at::equal(st::Reader(target + "/w.safetensors").view("w"), at::arange(6, at::kFloat)));
}

TEST(Publish, KeepZeroKeepsEveryFolder) {
  test::TempDir d;
  const std::string root = d.file("checkpoints");
  for (int s = 1; s <= 3; ++s)
    io::publish(root, "step-" + std::to_string(s), 0, "step-",
                [](const std::string& tmp) { fs::write_text_atomic(tmp + "/x", "x"); });
  EXPECT_EQ(fs::list_dir(root), (std::vector<std::string>{"latest", "step-1", "step-2", "step-3"}));
  EXPECT_EQ(io::latest(root), "step-3");
}

TEST(Publish, LatestReadsTheSymlinkAndTheOlderTextFile) {
  test::TempDir d;
  const std::string root = d.file("checkpoints");
  fs::make_dir(root);
  EXPECT_EQ(io::latest(root), "");
  fs::write_text_atomic(root + "/latest", "step-7\n");  // how checkpoints were marked before
  EXPECT_EQ(io::latest(root), "step-7");
  fs::make_dir(root + "/step-9");
  fs::symlink_atomic("step-9", root + "/latest");
  EXPECT_EQ(io::latest(root), "step-9");
}

TEST(WriteFolderAtomic, RefusesOrReplacesAndLeavesNothingOnFailure) {
  test::TempDir d;
  const std::string out = d.file("out");
  io::write_folder_atomic(out, [](const std::string& tmp) { fs::write_text_atomic(tmp + "/a", "1"); });
  EXPECT_EQ(fs::read_text(out + "/a"), "1");
  EXPECT_THROW(io::write_folder_atomic(out, [](const std::string&) {}), Error);  // exists, no replace
  EXPECT_THROW(io::write_folder_atomic(
                   out,
                   [](const std::string& tmp) {
                     fs::write_text_atomic(tmp + "/a", "2");
                     FP4QAT_FAIL("simulated");
                   },
                   /*replace=*/true),
               Error);
  EXPECT_EQ(fs::read_text(out + "/a"), "1");
  EXPECT_EQ(fs::list_dir(d.path()), (std::vector<std::string>{"out"}));  // no temporary folder left
  io::write_folder_atomic(
      out, [](const std::string& tmp) { fs::write_text_atomic(tmp + "/b", "2"); }, true);
  EXPECT_EQ(fs::list_dir(out), (std::vector<std::string>{"b"}));
}

TEST(Publish, LatestNeverMovesBackAndNumberedFoldersAreListed) {
  test::TempDir d;
  const std::string root = d.file("exports");
  auto fill = [](const std::string& tmp) { fs::write_text_atomic(tmp + "/x", "x"); };
  for (int s : {1, 2, 9}) io::publish(root, "step-" + std::to_string(s), 0, "step-", fill);
  EXPECT_EQ(fs::read_link(root + "/latest"), "step-9");
  // A resumed run republishes steps 3..8 of a trajectory it already published up to 9.
  io::publish(root, "step-3", 0, "step-", fill);
  EXPECT_EQ(fs::read_link(root + "/latest"), "step-9");
  io::publish(root, "step-10", 0, "step-", fill);
  EXPECT_EQ(fs::read_link(root + "/latest"), "step-10");
  // A latest that names a missing folder does not hold it back.
  fs::remove_tree(root + "/step-10");
  io::publish(root, "step-4", 0, "step-", fill);
  EXPECT_EQ(fs::read_link(root + "/latest"), "step-4");
  fs::make_dirs(root + "/step-x");
  fs::write_text_atomic(root + "/step-11", "a file, not a folder");
  const auto all = io::numbered_folders(root, "step-");
  std::vector<int64_t> n;
  for (const auto& [v, name] : all) n.push_back(v);
  EXPECT_EQ(n, (std::vector<int64_t>{1, 2, 3, 4, 9}));
  EXPECT_TRUE(io::numbered_folders(d.file("none"), "step-").empty());
}

// Pruning killed midway (SIGKILL while it deletes a folder of many files) leaves no numbered folder
// with files missing: the folder is renamed out of sight before its files go, and the dead temp is
// what the next run's remove_dead_temps clears. The child prunes; the parent kills it as soon as
// step-1 is gone from the listing or has lost a file (the latter is what a prune deleting in place
// shows, and what this test then fails on).
TEST(Publish, PruneKilledMidwayLeavesNoIncompleteFolder) {
  test::TempDir d;
  const std::string root = d.file("exports");
  fs::make_dir(root);
  constexpr int kFiles = 4000;
  for (int s = 1; s <= 2; ++s) {
    const std::string dir = root + "/step-" + std::to_string(s);
    fs::make_dir(dir);
    for (int i = 0; i < (s == 1 ? kFiles : 1); ++i) fs::write_text_atomic(dir + "/f" + std::to_string(i), "x");
  }
  fs::symlink_atomic("step-2", root + "/latest");
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    io::prune(root, 1, "step-");
    ::_exit(0);
  }
  // step-1's file count while the child runs, or -1 once step-1 is gone: the prune renames it away
  // at any moment, also between a check that it exists and its listing (which then fails).
  const std::string step1 = root + "/step-1";
  auto step1_files = [&]() -> long {
    try {
      return static_cast<long>(fs::list_dir(step1).size());
    } catch (const std::exception&) {
      if (!fs::exists(step1)) return -1;
      throw;
    }
  };
  // Until step-1 leaves the listing or loses a file; bounded in time, not in rounds (a round lists
  // 4000 names, so its cost varies with the disk).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    if (step1_files() < kFiles) break;
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const auto names = fs::list_dir(root);
  if (std::find(names.begin(), names.end(), "step-1") != names.end()) {
    EXPECT_EQ(fs::list_dir(root + "/step-1").size(), static_cast<size_t>(kFiles)) << "step-1 is incomplete";
  }
  io::remove_dead_temps(root);  // the killed prune's temp, if it was killed before finishing
  const auto after = fs::list_dir(root);
  EXPECT_TRUE(after == (std::vector<std::string>{"latest", "step-2"}) ||
              after == (std::vector<std::string>{"latest", "step-1", "step-2"}));
}
