#include "fsdp/initializer.h"

#include <cmath>
#include <sstream>

namespace fsdp {
namespace {

// SplitMix64's finaliser: a bijective 64-bit mix with full avalanche.
std::uint64_t mix(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// A uniform double in [0, 1) from 53 random bits of (key, index, lane).
double uniform01(std::uint64_t key, std::int64_t index, std::uint64_t lane) {
  const std::uint64_t bits = mix(key ^ mix(static_cast<std::uint64_t>(index) * 2 + lane));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

constexpr double kTwoPi = 6.283185307179586476925286766559;

}  // namespace

std::string describe(const ParameterInit& init) {
  std::ostringstream text;
  switch (init.kind) {
    case ParameterInit::Kind::kZeros:
      return "zeros";
    case ParameterInit::Kind::kConstant:
      text << "constant(" << init.a << ")";
      break;
    case ParameterInit::Kind::kNormal:
      text << "normal(" << init.a << ", " << init.b << ")";
      break;
    case ParameterInit::Kind::kUniform:
      text << "uniform(" << init.a << ", " << init.b << ")";
      break;
  }
  return text.str();
}

std::uint64_t parameter_stream_key(std::uint64_t seed, std::string_view parameter_name) {
  // FNV-1a: a stable hash of the name (std::hash may differ between builds).
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (const char c : parameter_name) {
    hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  }
  return mix(seed ^ mix(hash));
}

double initial_value(const ParameterInit& init, std::uint64_t key, std::int64_t index) {
  switch (init.kind) {
    case ParameterInit::Kind::kZeros:
      return 0.0;
    case ParameterInit::Kind::kConstant:
      return init.a;
    case ParameterInit::Kind::kUniform:
      return init.a + (init.b - init.a) * uniform01(key, index, 0);
    case ParameterInit::Kind::kNormal: {
      const double radius = std::sqrt(-2.0 * std::log(1.0 - uniform01(key, index, 0)));
      return init.a + init.b * radius * std::cos(kTwoPi * uniform01(key, index, 1));
    }
  }
  return 0.0;
}

void fill_initial_values(const ParameterInit& init, std::uint64_t key, std::int64_t begin,
                         std::int64_t count, double* out) {
  for (std::int64_t i = 0; i < count; ++i) out[i] = initial_value(init, key, begin + i);
}

}  // namespace fsdp
