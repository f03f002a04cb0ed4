// io/fs.h — file-system helpers for outputs that must never be seen half-written:
// temporary names beside the target, fsync of files and folders, atomic rename.
#pragma once
#include <string>
#include <vector>

namespace fp4qat::fs {

bool exists(const std::string& path);
bool is_dir(const std::string& path);
std::string parent_dir(const std::string& path);                     // "." for a bare file name
std::string temp_name_beside(const std::string& path);               // "<dir>/.<name>.tmp-<pid>-<n>"
void fsync_path(const std::string& path);                            // file or folder; throws on failure
void rename_atomic(const std::string& from, const std::string& to);  // rename(2) + fsync of the folder
// Swaps two existing paths atomically (renameat2 RENAME_EXCHANGE), then fsyncs their folder.
void exchange_atomic(const std::string& a, const std::string& b);
void write_text_atomic(const std::string& path, const std::string& text);  // (see StagingScope)
void make_dir(const std::string& path);     // one level; throws if it exists or cannot be made
void make_dirs(const std::string& path);    // with missing parents; fine if it exists as a folder
void remove_tree(const std::string& path);  // best effort, never throws (cleanup paths)
std::string read_text(const std::string& path, size_t max_bytes = 64u << 20);
std::vector<std::string> list_dir(const std::string& path);  // entry names, sorted, without . and ..
void fsync_tree(const std::string& path);                    // every file and folder below path, then path
// Points symlink `link` at `target` atomically: a new link beside it renamed over the old one.
void symlink_atomic(const std::string& target, const std::string& link);
std::string read_link(const std::string& link);                  // "" when link is not a symlink
void copy_file(const std::string& from, const std::string& to);  // plain copy + fsync (to must not exist; see StagingScope)
// `to` (which must not exist) as a hard link to `from`, else (another file system, or links not
// allowed) a copy_file. Returns whether it linked.
bool link_or_copy(const std::string& from, const std::string& to);
// The absolute path with every symlink resolved (realpath(3)); throws if `path` does not exist.
std::string real_path(const std::string& path);

// A folder being filled before it is fsynced and renamed into place whole (io::write_folder_atomic):
// while a StagingScope for it lives on this thread, write_text_atomic, copy_file and
// st::write_file write a file under it in place, without their own temporary name, fsync and
// rename (nobody sees the folder before it is complete; fsync_tree makes it durable).
class StagingScope {
 public:
  explicit StagingScope(const std::string& dir);
  ~StagingScope();
  StagingScope(const StagingScope&) = delete;
  StagingScope& operator=(const StagingScope&) = delete;
};
// Whether `path` lies below a folder a StagingScope of this thread names.
bool in_staging(const std::string& path);

}  // namespace fp4qat::fs
