// Which parameters (or HF keys) the table and the diff show: --filter GLOB and
// --regex REGEX, any number of each; a name is shown when it matches any of
// them, and every name is shown when there are none.
#pragma once

#include <regex>
#include <string>
#include <string_view>
#include <vector>

namespace fsdp::inspect {

// Whole-name glob match: '*' matches any run of characters (dots included),
// '?' any one character; everything else matches itself.
bool glob_match(std::string_view pattern, std::string_view name);

class NameFilter {
 public:
  NameFilter() = default;  // matches every name
  // `regexes` are ECMAScript regular expressions that may match anywhere in
  // the name (as grep does; anchor them with ^ and $).
  // Throws UsageError naming a regex that does not compile.
  NameFilter(std::vector<std::string> globs, const std::vector<std::string>& regexes);

  bool matches(std::string_view name) const;
  bool matches_everything() const { return globs_.empty() && regexes_.empty(); }

 private:
  std::vector<std::string> globs_;
  std::vector<std::regex> regexes_;
};

}  // namespace fsdp::inspect
