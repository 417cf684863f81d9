// Plain-text output for shard-inspect's views: numbers, and tables whose
// columns are as wide as their widest cell, two spaces apart, no trailing blanks.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace fsdp::inspect {

// `value` with `precision` significant digits, printf's %g ("0.0123", "1e-07", "nan", "inf").
std::string format_number(double value, int precision = 6);

// One line per row of `cells` (the first is usually the header), each ending
// in '\n'. A column is left-aligned where `left_aligned(column)` says so
// (names, shapes), right-aligned otherwise (numbers).
// REQUIRES: every row has the same number of cells.
std::string render_text_table(const std::vector<std::vector<std::string>>& cells,
                              const std::function<bool(std::size_t column)>& left_aligned);

}  // namespace fsdp::inspect
