// Deterministic parameter initialisation that does not depend on the world size.
//
// Element i of parameter `name` gets a value that depends only on (seed, name,
// i) and the parameter's ParameterInit -- never on which rank owns it or how
// the stage is split -- so a model starts bitwise identical at world sizes 1,
// 2, 3 and 4, and each rank generates only its own shard range, straight into
// the shard: no rank ever materialises a full parameter.
//
// The generator is counter-based (SplitMix64 finalisers over a key derived from
// the seed and an FNV-1a hash of the name, and the element index), so any
// element can be produced on its own, in any order. Values are computed in
// float64 and rounded once to the shard dtype. Normal values use Box-Muller
// with std::log / std::cos: identical on every rank of a job (same libm), not
// promised across different C libraries.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace fsdp {

struct ParameterInit {
  enum class Kind { kZeros, kConstant, kNormal, kUniform };
  Kind kind = Kind::kZeros;
  double a = 0;  // constant: the value; normal: the mean; uniform: the low bound
  double b = 0;  // normal: the standard deviation; uniform: the high bound

  static ParameterInit zeros() { return {}; }
  static ParameterInit constant(double value) { return {Kind::kConstant, value, 0}; }
  static ParameterInit normal(double mean, double std) { return {Kind::kNormal, mean, std}; }
  static ParameterInit uniform(double low, double high) { return {Kind::kUniform, low, high}; }
};

// "normal(0, 0.02)", for messages.
std::string describe(const ParameterInit& init);

// The stream key of one parameter: depends on the seed and the name only.
std::uint64_t parameter_stream_key(std::uint64_t seed, std::string_view parameter_name);

// The initial value of element `index` of the parameter whose stream key is `key`.
double initial_value(const ParameterInit& init, std::uint64_t key, std::int64_t index);

// Writes the initial values of elements [begin, begin + count) into `out`.
void fill_initial_values(const ParameterInit& init, std::uint64_t key, std::int64_t begin,
                         std::int64_t count, double* out);

}  // namespace fsdp
