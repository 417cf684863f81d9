// POSIX file access for checkpoints: positioned reads and writes that either
// move every byte or throw CheckpointError naming the file, and the
// write-temp -> fsync -> rename steps of an atomic commit.
//
// pread is used rather than mmap on purpose: bytes read through pread land
// in memory we own (a bounded staging chunk or the shard itself), so the
// process's resident memory stays at its shards plus that chunk, whereas a
// mapped file's touched pages count towards it until unmapped.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace fsdp::checkpoint {

class File {
 public:
  // Opens an existing file for reading.
  // Throws CheckpointError naming the file when it cannot be opened or is not
  // a regular file (opened O_NONBLOCK: a FIFO is refused, never waited on).
  static File open_for_reading(const std::filesystem::path& path);
  // Creates (or truncates) a file for writing, mode 0644.
  static File create(const std::filesystem::path& path);

  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  // Closes without throwing (an error on close of a file that was fsynced cannot lose data).
  ~File();

  const std::filesystem::path& path() const { return path_; }
  std::int64_t size() const;

  // Reads exactly `bytes` bytes at `offset` (retrying short reads and EINTR).
  // Throws CheckpointError naming the file and the range when the file ends first.
  void read_exactly(std::int64_t offset, void* destination, std::int64_t bytes) const;
  // Appends all `bytes` at the current end of what was written.
  void append(const void* source, std::int64_t bytes);
  // Flushes data and metadata to stable storage.
  void sync();
  // Closes now, reporting errors (use after sync() for files being committed).
  void close();

 private:
  File(int descriptor, std::filesystem::path path)
      : descriptor_(descriptor), path_(std::move(path)) {}
  int descriptor_ = -1;
  std::filesystem::path path_;
};

// fsyncs a directory, so that entries created or renamed in it are durable.
void sync_directory(const std::filesystem::path& directory);

// `directory` / `name` for a file that a checkpoint's own metadata names (an
// HF weight map, a distributed index): the name must be a plain file name --
// not empty, not absolute, no "/", not "." or ".." -- and, symbolic links
// followed, the file must lie inside `directory`. With
// `hf_cache_layout`, a `directory` that is a snapshot of the HuggingFace hub
// cache (REPO/snapshots/REVISION, whose files are links to REPO/blobs/...)
// may also lead into REPO. Throws CheckpointError naming `context` and the
// entry (cut to 80 characters) otherwise. The file need not exist.
std::filesystem::path file_inside(const std::filesystem::path& directory, const std::string& name,
                                  const std::string& context, bool hf_cache_layout = false);

// `directory`, or the directory it leads to when it is a symbolic link: a
// save replaces a directory, and must replace the one the link points at,
// leaving the link as it was. Throws CheckpointError for a dangling link.
std::filesystem::path resolve_directory_link(const std::filesystem::path& directory);

// The names in `directory`, sorted, a "/" after each directory's; empty when
// `directory` is not a directory. Throws CheckpointError when it cannot be listed.
std::vector<std::string> directory_entries(const std::filesystem::path& directory);

// The entries of `current` that `replacement` lacks (subdirectories with a
// trailing "/"), sorted: what replacing `current` with `replacement` would
// delete. Empty when `current` does not exist.
std::vector<std::string> entries_lost_by_replacing(const std::filesystem::path& current,
                                                   const std::filesystem::path& replacement);

// Throws CheckpointError when `lost` is not empty: "`directory` holds files
// this runtime did not write (a.txt, tb/, ...); replacing it would delete
// them" and `advice`. The runtime never deletes what it did not create.
void refuse_to_lose(const std::filesystem::path& directory, const std::vector<std::string>& lost,
                    const std::string& advice);

// Removes a staging directory when a save or export fails (a failure after
// the ranks agreed on it: nobody is writing any more), unless commit() was
// called. Only the rank that created the directory owns the removal.
class StagingCleanup {
 public:
  explicit StagingCleanup(bool owner) : owner_(owner) {}
  StagingCleanup(const StagingCleanup&) = delete;
  StagingCleanup& operator=(const StagingCleanup&) = delete;
  ~StagingCleanup() {
    std::error_code ignored;  // best effort: the save's own error is what matters
    if (owner_ && !committed_ && !path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  void watch(std::filesystem::path staging) { path_ = std::move(staging); }
  void commit() { committed_ = true; }

 private:
  bool owner_;
  bool committed_ = false;
  std::filesystem::path path_;
};

// Puts `staged` in place of `target` atomically. When `target` exists, the two
// are exchanged (renameat2 RENAME_EXCHANGE) and the old content is left at
// `staged` for the caller to delete; a crash at any moment leaves either the
// old or the new directory at `target`. Where the file system cannot
// exchange, the old one is first renamed to `previous` and then the new one
// into place: a crash between the two leaves the old checkpoint at `previous`,
// which loaders look at (distributed_checkpoint.h). Returns the path of the
// old content, or an empty path when there was none.
std::filesystem::path replace_directory(const std::filesystem::path& staged,
                                        const std::filesystem::path& target,
                                        const std::filesystem::path& previous);

}  // namespace fsdp::checkpoint
