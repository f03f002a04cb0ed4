// tests/io/test_publish.cpp — io/publish.h: publish is atomic, keeps the newest K and leaves the
// previous folder intact when writing fails; write_folder_atomic refuses or replaces a target as
// asked and leaves nothing on failure; `latest` reads the symlink and the older text file.
#include <gtest/gtest.h>

#include <thread>

#include "io/fs.h"
#include "io/safetensors.h"
#include "io/publish.h"
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
