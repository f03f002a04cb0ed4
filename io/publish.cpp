// io/publish.cpp — see publish.h.
#include "io/publish.h"

#include <sys/stat.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "io/fs.h"
#include "kernels/common/check.h"

namespace fp4qat::io {

namespace {
// The number after `prefix` in `name`, or -1.
int64_t numbered(const std::string& name, const std::string& prefix) {
  if (name.compare(0, prefix.size(), prefix) != 0 || name.size() == prefix.size()) return -1;
  int64_t v = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || v > (int64_t(1) << 55)) return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}
}  // namespace

void write_folder_atomic(const std::string& target, const std::function<void(const std::string& tmp)>& fill,
                         bool replace) {
  FP4QAT_CHECK(replace || !fs::exists(target), target, ": already exists; refusing to overwrite");
  const std::string tmp = fs::temp_name_beside(target);
  fs::make_dir(tmp);
  try {
    {
      fs::StagingScope staging(tmp);  // files under tmp are written in place; fsync_tree makes them durable
      fill(tmp);
    }
    fs::fsync_tree(tmp);
    if (fs::exists(target)) {
      fs::exchange_atomic(tmp, target);
      fs::remove_tree(tmp);  // now the old folder
    } else {
      fs::rename_atomic(tmp, target);
    }
  } catch (...) {
    fs::remove_tree(tmp);  // nothing half-written is left behind
    throw;
  }
}

std::vector<std::pair<int64_t, std::string>> numbered_folders(const std::string& root, const std::string& prefix) {
  std::vector<std::pair<int64_t, std::string>> all;
  if (!fs::is_dir(root)) return all;
  for (const auto& n : fs::list_dir(root))
    if (int64_t v = numbered(n, prefix); v >= 0 && fs::is_dir(root + "/" + n)) all.emplace_back(v, n);
  std::sort(all.begin(), all.end());
  return all;
}

void publish(const std::string& root, const std::string& name, int64_t keep, const std::string& prefix,
             const std::function<void(const std::string& tmp)>& fill) {
  FP4QAT_CHECK(keep >= 0, "publish: keep must be >= 0, got ", keep);
  if (!fs::is_dir(root)) fs::make_dir(root);
  write_folder_atomic(root + "/" + name, fill, /*replace=*/true);  // re-publishing a step (after a resume)
  const std::string before = latest(root);
  const int64_t was = before.empty() || !fs::is_dir(root + "/" + before) ? -1 : numbered(before, prefix);
  if (was < 0 || numbered(name, prefix) < 0 || numbered(name, prefix) >= was) fs::symlink_atomic(name, root + "/latest");
  prune(root, keep, prefix);
}

void remove_atomic(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return;  // absent (a dangling link is removed too)
  const std::string gone = fs::temp_name_beside(path);
  fs::rename_atomic(path, gone);
  fs::remove_tree(gone);
}

void prune(const std::string& root, int64_t keep, const std::string& prefix) {
  FP4QAT_CHECK(keep >= 0, "prune: keep must be >= 0, got ", keep);
  if (keep > 0) {  // keep the newest `keep` numbered folders
    const auto all = numbered_folders(root, prefix);
    const std::string current = fs::read_link(root + "/latest");
    for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i)
      // (CliTrain.KillNineLeavesCompleteFoldersAndResumeContinues caught an export step-N without
      // export.json when pruning deleted in place and was killed midway.)
      if (all[i].second != current) remove_atomic(root + "/" + all[i].second);
  }
  fs::fsync_path(root);
}

std::string latest(const std::string& root) {
  const std::string link = root + "/latest";
  std::string name = fs::read_link(link);
  if (name.empty() && fs::exists(link) && !fs::is_dir(link)) {
    name = fs::read_text(link, 4096);
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  }
  return name;
}

}  // namespace fp4qat::io
