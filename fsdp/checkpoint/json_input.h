// JSON from files the runtime did not write (a safetensors header, an HF
// index, a config.json, a checkpoint's index.json), read as untrusted input:
//   - nesting is bounded (kMaxJsonDepth), so that neither parsing nor
//     printing a value can recurse without limit (a header of 60,000 "["
//     crashed the printing of an error message);
//   - a file is opened without blocking and must be a regular file (a FIFO in
//     place of index.json hung the reader), of bounded size;
//   - errors show at most a short excerpt of a value, never the document.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace fsdp::checkpoint {

// Deeper than any real header, config or index (they nest 3 or 4 levels).
inline constexpr int kMaxJsonDepth = 64;
inline constexpr std::int64_t kMaxJsonFileBytes = std::int64_t{256} << 20;

// Parses `text`. `callback`, when given, sees every parser event (as
// nlohmann::json's parser_callback_t) after the depth check. Throws
// CheckpointError naming `source`: not valid JSON, or nested deeper than
// kMaxJsonDepth.
nlohmann::json parse_untrusted_json(std::string_view text, const std::string& source,
                                    const nlohmann::json::parser_callback_t& callback = nullptr);

// The bytes of `path`, unparsed. Throws CheckpointError naming it: cannot
// open, not a regular file (a directory, FIFO, socket or device: refused
// without blocking), or larger than kMaxJsonFileBytes.
std::string read_untrusted_json_text(const std::filesystem::path& path);

// Reads and parses `path`: read_untrusted_json_text, then parse_untrusted_json.
nlohmann::json read_untrusted_json_file(const std::filesystem::path& path);

// The JSON parser's own message, cut to `limit` characters: it quotes the
// offending token, which a hostile file makes as long as it likes.
std::string json_error_excerpt(const std::string& message, std::size_t limit = 160);

// `value` as JSON text, cut to `limit` characters ("..." when cut): for
// messages. REQUIRES: `value` came from parse_untrusted_json or the program.
std::string json_excerpt(const nlohmann::json& value, std::size_t limit = 48);

}  // namespace fsdp::checkpoint
