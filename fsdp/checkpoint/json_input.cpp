#include "fsdp/checkpoint/json_input.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "fsdp/checkpoint/checkpoint_error.h"

namespace fsdp::checkpoint {

nlohmann::json parse_untrusted_json(std::string_view text, const std::string& source,
                                    const nlohmann::json::parser_callback_t& callback) {
  const nlohmann::json::parser_callback_t bounded =
      [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
        if (depth > kMaxJsonDepth) {
          throw CheckpointError(source + ": JSON nested deeper than " +
                                std::to_string(kMaxJsonDepth) + " levels");
        }
        return callback ? callback(depth, event, parsed) : true;
      };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), bounded);
  } catch (const nlohmann::json::exception& error) {
    throw CheckpointError(source + ": not valid JSON: " + json_error_excerpt(error.what()));
  }
}

nlohmann::json read_untrusted_json_file(const std::filesystem::path& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer.
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (descriptor < 0) {
    throw CheckpointError(path.string() + ": cannot open: " + std::strerror(errno));
  }
  struct stat status {};
  if (fstat(descriptor, &status) != 0 || !S_ISREG(status.st_mode)) {
    ::close(descriptor);
    throw CheckpointError(path.string() + ": not a regular file" +
                          (S_ISDIR(status.st_mode) ? " (a directory)" : ""));
  }
  if (status.st_size > kMaxJsonFileBytes) {
    ::close(descriptor);
    throw CheckpointError(
        path.string() + ": " + std::to_string(status.st_size) + " bytes of JSON, more than the " +
        std::to_string(kMaxJsonFileBytes >> 20) + " MiB any index or config needs");
  }
  std::string text(static_cast<std::size_t>(status.st_size), '\0');
  std::size_t done = 0;
  while (done < text.size()) {
    const auto got = ::read(descriptor, text.data() + done, text.size() - done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      const int error = errno;
      ::close(descriptor);
      throw CheckpointError(path.string() + ": cannot read: " +
                            (got == 0 ? "the file shrank" : std::strerror(error)));
    }
    done += static_cast<std::size_t>(got);
  }
  ::close(descriptor);
  return parse_untrusted_json(text, path.string());
}

std::string json_error_excerpt(const std::string& message, std::size_t limit) {
  return message.size() <= limit ? message : message.substr(0, limit - 3) + "...";
}

std::string json_excerpt(const nlohmann::json& value, std::size_t limit) {
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > limit) text = text.substr(0, limit > 3 ? limit - 3 : 0) + "...";
  return text;
}

}  // namespace fsdp::checkpoint
