// Numbers in shard-inspect's JSON documents.
//
// JSON has no NaN or infinity. A weight debugger must still report them, so
// a non-finite number is written as a string, spelled as Python's json
// module and JavaScript spell the values: "NaN", "Infinity", "-Infinity".
// Every document stays valid JSON, and a reader that expects a number fails
// loudly instead of reading a null as "no value".
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>

namespace fsdp::inspect {

inline nlohmann::json json_number(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  return value;
}

}  // namespace fsdp::inspect
