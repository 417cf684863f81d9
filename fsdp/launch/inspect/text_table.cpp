#include "fsdp/launch/inspect/text_table.h"

#include <algorithm>
#include <cstdio>

namespace fsdp::inspect {

std::string format_number(double value, int precision) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*g", precision, value);
  return text;
}

std::string render_text_table(const std::vector<std::vector<std::string>>& cells,
                              const std::function<bool(std::size_t column)>& left_aligned) {
  if (cells.empty()) return "";
  std::vector<std::size_t> widths(cells.front().size(), 0);
  for (const auto& line : cells) {
    for (std::size_t c = 0; c < line.size(); ++c) widths[c] = std::max(widths[c], line[c].size());
  }
  std::string out;
  for (const auto& line : cells) {
    std::string text;
    for (std::size_t c = 0; c < line.size(); ++c) {
      const std::string padding(widths[c] - line[c].size(), ' ');
      text += left_aligned(c) ? line[c] + padding : padding + line[c];
      if (c + 1 < line.size()) text += "  ";
    }
    while (!text.empty() && text.back() == ' ') text.pop_back();
    out += text + "\n";
  }
  return out;
}

}  // namespace fsdp::inspect
