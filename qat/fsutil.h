// qat/fsutil.h — file-system helpers for outputs that must never be seen half-written:
// temporary names beside the target, fsync of files and folders, atomic rename.
#pragma once
#include <string>

namespace fp4qat::fs {

bool exists(const std::string& path);
bool is_dir(const std::string& path);
std::string parent_dir(const std::string& path);  // "." for a bare file name
std::string temp_name_beside(const std::string& path);  // "<dir>/.<name>.tmp-<pid>-<n>"
void fsync_path(const std::string& path);  // file or folder; throws on failure
void rename_atomic(const std::string& from, const std::string& to);  // rename(2) + fsync of the folder
void write_text_atomic(const std::string& path, const std::string& text);
void make_dir(const std::string& path);     // one level; throws if it exists or cannot be made
void remove_tree(const std::string& path);  // best effort, never throws (cleanup paths)
std::string read_text(const std::string& path, size_t max_bytes = 64u << 20);

}  // namespace fp4qat::fs
