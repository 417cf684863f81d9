// Plain-text tables for shard-inspect's views: columns as wide as their
// widest cell, two spaces apart, no trailing blanks.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace fsdp::inspect {

// One line per row of `cells` (the first is usually the header), each ending
// in '\n'. A column is left-aligned where `left_aligned(column)` says so
// (names, shapes), right-aligned otherwise (numbers).
// REQUIRES: every row has the same number of cells.
std::string render_text_table(const std::vector<std::vector<std::string>>& cells,
                              const std::function<bool(std::size_t column)>& left_aligned);

}  // namespace fsdp::inspect
