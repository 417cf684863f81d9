#include "fsdp/checkpoint/json_input.h"

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/file_io.h"

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

std::string read_untrusted_json_text(const std::filesystem::path& path) {
  const auto file = File::open_for_reading(path);  // regular files only, never blocks on a FIFO
  const std::int64_t size = file.size();
  if (size > kMaxJsonFileBytes) {
    throw CheckpointError(
        path.string() + ": " + std::to_string(size) + " bytes of JSON, more than the " +
        std::to_string(kMaxJsonFileBytes >> 20) + " MiB any index or config needs");
  }
  std::string text(static_cast<std::size_t>(size), '\0');
  file.read_exactly(0, text.data(), size);
  return text;
}

nlohmann::json read_untrusted_json_file(const std::filesystem::path& path) {
  return parse_untrusted_json(read_untrusted_json_text(path), path.string());
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
