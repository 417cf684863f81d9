#include "fsdp/data/window_order.h"

#include <stdexcept>
#include <string>

namespace fsdp::data {
namespace {

constexpr int kRounds = 6;

// SplitMix64's finaliser: a bijective mix with full avalanche.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

WindowOrder::WindowOrder(std::uint64_t seed, std::int64_t windows)
    : seed_(seed), windows_(windows), half_bits_(1) {
  if (windows < 1) {
    throw std::invalid_argument("WindowOrder: " + std::to_string(windows) +
                                " windows (expected at least 1)");
  }
  while (half_bits_ < 31 && (std::int64_t{1} << (2 * half_bits_)) < windows) ++half_bits_;
}

std::int64_t WindowOrder::permuted(std::int64_t epoch, std::int64_t position) const {
  if (epoch < 0 || position < 0 || position >= windows_) {
    throw std::out_of_range("WindowOrder: position " + std::to_string(position) + " of " +
                            std::to_string(windows_) + " in epoch " + std::to_string(epoch));
  }
  const std::uint64_t mask = (std::uint64_t{1} << half_bits_) - 1;
  const std::uint64_t key = mix(mix(seed_ ^ 0x5EED0F0DA7A0ull) ^ static_cast<std::uint64_t>(epoch));
  auto value = static_cast<std::uint64_t>(position);
  // Cycle-walking: the network permutes the whole domain, so following it from
  // a position inside [0, windows) returns inside after finitely many steps,
  // and the restriction is a permutation of [0, windows).
  do {
    std::uint64_t left = value >> half_bits_;
    std::uint64_t right = value & mask;
    for (int round = 0; round < kRounds; ++round) {
      const std::uint64_t round_key = key + static_cast<std::uint64_t>(round) * 0x9E37ull;
      const std::uint64_t next = left ^ (mix(round_key ^ right) & mask);
      left = right;
      right = next;
    }
    value = (left << half_bits_) | right;
  } while (value >= static_cast<std::uint64_t>(windows_));
  return static_cast<std::int64_t>(value);
}

std::int64_t WindowOrder::window_of(std::int64_t draw) const {
  if (draw < 0) throw std::out_of_range("WindowOrder: draw " + std::to_string(draw));
  return permuted(draw / windows_, draw % windows_);
}

}  // namespace fsdp::data
