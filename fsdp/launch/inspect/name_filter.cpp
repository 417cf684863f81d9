#include "fsdp/launch/inspect/name_filter.h"

#include <utility>

#include "fsdp/launch/inspect/usage_error.h"

namespace fsdp::inspect {

bool glob_match(std::string_view pattern, std::string_view name) {
  // Iterative matching with one backtrack point (the last '*'): linear in
  // practice, never exponential.
  std::size_t p = 0, n = 0;
  std::size_t star = std::string_view::npos, star_name = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_name = n;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      n = ++star_name;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

NameFilter::NameFilter(std::vector<std::string> globs, const std::vector<std::string>& regexes)
    : globs_(std::move(globs)) {
  for (const auto& text : regexes) {
    try {
      regexes_.emplace_back(text, std::regex::ECMAScript);
    } catch (const std::regex_error& error) {
      throw UsageError("--regex '" + text + "' is not a valid regular expression (" + error.what() +
                       ")");
    }
  }
}

bool NameFilter::matches(std::string_view name) const {
  if (matches_everything()) return true;
  for (const auto& glob : globs_) {
    if (glob_match(glob, name)) return true;
  }
  const std::string text(name);
  for (const auto& regex : regexes_) {
    if (std::regex_search(text, regex)) return true;
  }
  return false;
}

}  // namespace fsdp::inspect
