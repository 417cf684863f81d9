#include "fsdp/checkpoint/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "fsdp/checkpoint/checkpoint_error.h"

namespace fsdp::checkpoint {
namespace {

[[noreturn]] void throw_system_error(const std::string& what, const std::filesystem::path& path) {
  throw CheckpointError(what + " " + path.string() + ": " + std::strerror(errno));
}

}  // namespace

File File::open_for_reading(const std::filesystem::path& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused
  // below); on a regular file the flag changes nothing.
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (descriptor < 0) throw_system_error("cannot open", path);
  struct stat status {};
  if (::fstat(descriptor, &status) != 0 || !S_ISREG(status.st_mode)) {
    ::close(descriptor);
    throw CheckpointError(path.string() + ": not a regular file (" +
                          (S_ISDIR(status.st_mode) ? "a directory" : "a FIFO, socket or device") +
                          ")");
  }
  return File(descriptor, path);
}

File File::create(const std::filesystem::path& path) {
  const int descriptor = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (descriptor < 0) throw_system_error("cannot create", path);
  return File(descriptor, path);
}

File::File(File&& other) noexcept
    : descriptor_(std::exchange(other.descriptor_, -1)), path_(std::move(other.path_)) {}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (descriptor_ >= 0) ::close(descriptor_);
    descriptor_ = std::exchange(other.descriptor_, -1);
    path_ = std::move(other.path_);
  }
  return *this;
}

File::~File() {
  if (descriptor_ >= 0) ::close(descriptor_);
}

std::int64_t File::size() const {
  struct stat status {};
  if (::fstat(descriptor_, &status) != 0) throw_system_error("cannot stat", path_);
  return status.st_size;
}

void File::read_exactly(std::int64_t offset, void* destination, std::int64_t bytes) const {
  auto* cursor = static_cast<char*>(destination);
  std::int64_t done = 0;
  while (done < bytes) {
    const ssize_t got = ::pread(descriptor_, cursor + done, static_cast<std::size_t>(bytes - done),
                                static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw_system_error("cannot read bytes [" + std::to_string(offset) + ", " +
                             std::to_string(offset + bytes) + ") of",
                         path_);
    }
    if (got == 0) {
      throw CheckpointError(path_.string() + ": the file ends at byte " +
                            std::to_string(offset + done) + ", but bytes up to " +
                            std::to_string(offset + bytes) +
                            " were expected (truncated or changed while reading)");
    }
    done += got;
  }
}

void File::append(const void* source, std::int64_t bytes) {
  const auto* cursor = static_cast<const char*>(source);
  while (bytes > 0) {
    const ssize_t put = ::write(descriptor_, cursor, static_cast<std::size_t>(bytes));
    if (put < 0) {
      if (errno == EINTR) continue;
      throw_system_error("cannot write", path_);
    }
    cursor += put;
    bytes -= put;
  }
}

void File::sync() {
  if (::fsync(descriptor_) != 0) throw_system_error("cannot fsync", path_);
}

void File::close() {
  const int descriptor = std::exchange(descriptor_, -1);
  if (descriptor >= 0 && ::close(descriptor) != 0) throw_system_error("cannot close", path_);
}

std::filesystem::path file_inside(const std::filesystem::path& directory, const std::string& name,
                                  const std::string& context, bool hf_cache_layout) {
  const std::string shown = "\"" + name.substr(0, 80) + (name.size() > 80 ? "...\"" : "\"");
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.find('\0') != std::string::npos) {
    throw CheckpointError(context + ": " + shown +
                          " is not a plain file name; the files a checkpoint names must lie in "
                          "its own directory");
  }
  const auto path = directory / name;
  std::error_code error;
  const auto resolved = std::filesystem::weakly_canonical(path, error);
  const auto home = std::filesystem::weakly_canonical(directory, error);
  bool inside = !error && resolved.parent_path() == home;
  const auto snapshots =
      std::filesystem::absolute(directory, error).lexically_normal().parent_path();
  if (!inside && hf_cache_layout && !error && snapshots.filename() == "snapshots") {
    const auto repository = std::filesystem::weakly_canonical(snapshots.parent_path(), error);
    const auto relative = resolved.lexically_relative(repository);
    inside = !error && !relative.empty() && *relative.begin() != "..";
  }
  if (!inside) {
    throw CheckpointError(context + ": " + shown + " leads outside " + directory.string() +
                          (error ? "" : " (to " + resolved.string() + ")") +
                          "; the files a checkpoint names must lie in its own directory");
  }
  return path;
}

std::filesystem::path resolve_directory_link(const std::filesystem::path& directory) {
  std::error_code error;
  if (!std::filesystem::is_symlink(directory, error)) return directory;
  const auto target = std::filesystem::canonical(directory, error);
  if (error) {
    throw CheckpointError(directory.string() + " is a symbolic link that leads nowhere (" +
                          error.message() + ")");
  }
  return target;
}

std::vector<std::string> directory_entries(const std::filesystem::path& directory) {
  std::vector<std::string> names;
  std::error_code error;
  if (!std::filesystem::is_directory(directory, error)) return names;
  for (const auto& entry : std::filesystem::directory_iterator(directory, error)) {
    names.push_back(entry.path().filename().string() + (entry.is_directory(error) ? "/" : ""));
  }
  if (error) {
    throw CheckpointError("cannot list " + directory.string() + ": " + error.message());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::string> entries_lost_by_replacing(const std::filesystem::path& current,
                                                   const std::filesystem::path& replacement) {
  std::vector<std::string> lost;
  std::error_code error;
  for (const auto& shown : directory_entries(current)) {
    const auto name = shown.back() == '/' ? shown.substr(0, shown.size() - 1) : shown;
    if (!std::filesystem::exists(std::filesystem::symlink_status(replacement / name, error))) {
      lost.push_back(shown);
    }
  }
  return lost;
}

void refuse_to_lose(const std::filesystem::path& directory, const std::vector<std::string>& lost,
                    const std::string& advice) {
  if (lost.empty()) return;
  std::string names;
  for (std::size_t i = 0; i < std::min<std::size_t>(lost.size(), 8); ++i) {
    names += (i ? ", " : "") + lost[i];
  }
  if (lost.size() > 8) names += ", and " + std::to_string(lost.size() - 8) + " more";
  throw CheckpointError(directory.string() + " holds files this runtime did not write (" + names +
                        "); replacing it would delete them: " + advice);
}

void sync_directory(const std::filesystem::path& directory) {
  const int descriptor = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (descriptor < 0) throw_system_error("cannot open directory", directory);
  const int result = ::fsync(descriptor);
  const int saved_errno = errno;
  ::close(descriptor);
  errno = saved_errno;
  // Some file systems cannot fsync a directory (EINVAL); their renames are as durable as they get.
  if (result != 0 && errno != EINVAL) throw_system_error("cannot fsync directory", directory);
}

std::filesystem::path replace_directory(const std::filesystem::path& staged,
                                        const std::filesystem::path& target,
                                        const std::filesystem::path& previous) {
  std::error_code ignored;
  if (!std::filesystem::exists(target, ignored)) {
    if (::rename(staged.c_str(), target.c_str()) != 0) {
      throw_system_error("cannot rename " + staged.string() + " to", target);
    }
    return {};
  }
  if (::renameat2(AT_FDCWD, staged.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
    return staged;  // now holds the old content
  }
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
    throw_system_error("cannot exchange " + staged.string() + " with", target);
  }
  std::filesystem::remove_all(previous, ignored);
  if (::rename(target.c_str(), previous.c_str()) != 0) {
    throw_system_error("cannot move the old checkpoint aside to", previous);
  }
  if (::rename(staged.c_str(), target.c_str()) != 0) {
    throw_system_error("cannot rename " + staged.string() + " to", target);
  }
  return previous;
}

}  // namespace fsdp::checkpoint
