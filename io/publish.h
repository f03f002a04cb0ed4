// io/publish.h — outputs that are never seen half-written, once for every writer of a folder
// (checkpoints, exports, converted and saved Hugging Face folders): a temporary folder beside
// the target is filled, fsynced and renamed into place. One `latest` convention for checkpoints
// and exports alike: a symlink `<root>/latest` -> `step-<N>`, moved atomically after the folder
// is complete (a reader following it always finds a complete folder).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace fp4qat::io {

// fill(tmp) writes into a temporary folder beside `target`; every file and the folder are fsynced
// and the folder is renamed to `target`. An existing `target` is refused, unless `replace`: then
// the two are exchanged in one step (renameat2) and the old contents removed. If fill throws, the
// temporary folder is removed and `target` is as it was.
void write_folder_atomic(const std::string& target, const std::function<void(const std::string& tmp)>& fill,
                         bool replace = false);

// Publishes `root/name` with write_folder_atomic (replacing an older one of that name), then
// points the `root/latest` symlink at it — unless `latest` already names a `<prefix><M>` with a
// larger M (a run resumed from an earlier checkpoint republishes steps it had published before
// it was killed: `latest` never moves back). With keep > 0 only the newest `keep` folders named
// `<prefix><number>` stay (the one `latest` points to is never removed). `root` is created if
// missing (its parent must exist).
void publish(const std::string& root, const std::string& name, int64_t keep, const std::string& prefix,
             const std::function<void(const std::string& tmp)>& fill);

// Removes `path` (a folder or a file; nothing if absent) out of sight first: renamed to a temp name
// beside it (atomic), then deleted. Killed midway, it leaves a dead temp (remove_dead_temps), never
// `path` with some of its files gone — what a reader of a published folder must not see.
void remove_atomic(const std::string& path);

// publish()'s clean-up on its own: with keep > 0 only the newest `keep` `<prefix><number>` folders
// of `root` stay, never the one `latest` points to; then `root` is fsynced. (A writer that
// publishes often runs it off its critical path: removing a folder of large files takes time.)
// A folder leaves by remove_atomic: killed midway, prune leaves no numbered folder with files missing.
void prune(const std::string& root, int64_t keep, const std::string& prefix);

// The `<prefix><N>` folders of `root` (N a decimal number), sorted by N; none if root is missing.
std::vector<std::pair<int64_t, std::string>> numbered_folders(const std::string& root, const std::string& prefix);

// The name of the folder `root/latest` points at, "" when there is none: the symlink, or a text
// file holding the name (how checkpoints were marked before; those still resume).
std::string latest(const std::string& root);

}  // namespace fp4qat::io
