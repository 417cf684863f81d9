// The flat layout is the one piece of shard arithmetic everything relies on,
// so it is checked both on hand-worked cases and as properties over many
// random layouts x world sizes 1..8 x alignments.
#include "fsdp/flat_layout.h"

#include <gtest/gtest.h>

#include <random>

namespace fsdp {
namespace {

std::vector<ParameterSpec> random_parameters(std::mt19937& random) {
  std::uniform_int_distribution<int> count(0, 9);
  std::uniform_int_distribution<int> rank(0, 3);
  std::uniform_int_distribution<int> dim(0, 40);
  std::vector<ParameterSpec> parameters;
  const int n = count(random);
  for (int i = 0; i < n; ++i) {
    ParameterSpec spec{"p" + std::to_string(i), {}};
    const int dims = rank(random);
    for (int d = 0; d < dims; ++d) {
      // Mostly non-empty dimensions, with the occasional zero.
      const int size = dim(random);
      spec.shape.push_back(size == 0 && random() % 4 != 0 ? 1 : size);
    }
    parameters.push_back(spec);
  }
  return parameters;
}

// Checks every invariant the header promises, against plain arithmetic.
void check_layout_invariants(const std::vector<ParameterSpec>& specs, int world_size,
                             std::int64_t alignment) {
  SCOPED_TRACE("world_size=" + std::to_string(world_size) + " alignment=" +
               std::to_string(alignment) + " parameters=" + std::to_string(specs.size()));
  const FlatLayout layout(specs, world_size, alignment);
  const FlatLayout single(specs, 1, alignment);

  // Offsets are packed in order and do not depend on the world size.
  std::int64_t offset = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const ParameterSlot& slot = layout.parameters()[i];
    std::int64_t numel = 1;
    for (std::int64_t d : specs[i].shape) numel *= d;
    EXPECT_EQ(slot.name, specs[i].name);
    EXPECT_EQ(slot.shape, specs[i].shape);
    EXPECT_EQ(slot.numel, numel);
    EXPECT_EQ(slot.flat_range, (ElementRange{offset, offset + numel}));
    EXPECT_EQ(slot.flat_range, single.parameters()[i].flat_range);
    offset += numel;
  }
  // Padding only at the end, to the smallest multiple of world_size * alignment.
  const std::int64_t unit = world_size * alignment;
  EXPECT_EQ(layout.unpadded_numel(), offset);
  EXPECT_EQ(layout.padded_numel() % unit, 0);
  EXPECT_GE(layout.padded_numel(), offset);
  EXPECT_LT(layout.padded_numel() - offset, unit);
  EXPECT_EQ(layout.shard_numel() * world_size, layout.padded_numel());

  // Every element of every parameter is owned exactly once; slices agree with
  // the flat offsets; what a shard does not hold of parameters is its padding.
  std::vector<int> owner_count(static_cast<std::size_t>(layout.padded_numel()), 0);
  std::vector<std::vector<OwnedSlice>> by_parameter(specs.size());
  for (int rank = 0; rank < world_size; ++rank) {
    const ElementRange shard = layout.shard_range(rank);
    EXPECT_EQ(shard,
              (ElementRange{rank * layout.shard_numel(), (rank + 1) * layout.shard_numel()}));
    std::int64_t previous_end = 0;
    for (const OwnedSlice& slice : layout.owned_slices(rank)) {
      const ParameterSlot& slot = layout.parameters()[slice.parameter_index];
      EXPECT_EQ(slice.rank, rank);
      EXPECT_FALSE(slice.parameter_range.empty());
      EXPECT_EQ(slice.parameter_range.size(), slice.shard_range.size());
      EXPECT_EQ(slot.flat_range.begin + slice.parameter_range.begin,
                shard.begin + slice.shard_range.begin);
      EXPECT_GE(slice.shard_range.begin, previous_end);  // in flat order, disjoint
      previous_end = slice.shard_range.end;
      for (std::int64_t i = slice.shard_range.begin; i < slice.shard_range.end; ++i) {
        ++owner_count[static_cast<std::size_t>(shard.begin + i)];
      }
      by_parameter[slice.parameter_index].push_back(slice);
    }
    const ElementRange padding = layout.padding_in_shard(rank);
    const std::int64_t padding_begin_flat = std::max(shard.begin, layout.unpadded_numel());
    EXPECT_EQ(padding.size(), std::max<std::int64_t>(0, shard.end - padding_begin_flat));
    if (!padding.empty()) {
      EXPECT_EQ(padding.end, layout.shard_numel());
    }
  }
  for (std::int64_t i = 0; i < layout.padded_numel(); ++i) {
    ASSERT_EQ(owner_count[static_cast<std::size_t>(i)], i < offset ? 1 : 0) << "flat element " << i;
  }
  // placements() is the same information, grouped by parameter.
  for (std::size_t p = 0; p < specs.size(); ++p) {
    const std::vector<OwnedSlice> placements = layout.placements(p);
    ASSERT_EQ(placements.size(), by_parameter[p].size()) << "parameter " << p;
    for (std::size_t k = 0; k < placements.size(); ++k) {
      EXPECT_EQ(placements[k].rank, by_parameter[p][k].rank);
      EXPECT_EQ(placements[k].parameter_range, by_parameter[p][k].parameter_range);
      EXPECT_EQ(placements[k].shard_range, by_parameter[p][k].shard_range);
    }
  }
}

// Splits a full flat array into shards and back, using only the layout.
TEST(FlatLayout, ShardToFullToShardRoundTrip) {
  std::mt19937 random(7);
  for (int trial = 0; trial < 50; ++trial) {
    const std::vector<ParameterSpec> specs = random_parameters(random);
    for (int world_size = 1; world_size <= 8; ++world_size) {
      const FlatLayout layout(specs, world_size, 32);
      // Full model: parameter p's element i holds 1000 * (p + 1) + i.
      std::vector<std::vector<double>> full(specs.size());
      for (std::size_t p = 0; p < specs.size(); ++p) {
        for (std::int64_t i = 0; i < layout.parameters()[p].numel; ++i) {
          full[p].push_back(1000.0 * (p + 1) + i);
        }
      }
      // full -> shards
      std::vector<std::vector<double>> shards(
          world_size, std::vector<double>(static_cast<std::size_t>(layout.shard_numel()), 0.0));
      for (int rank = 0; rank < world_size; ++rank) {
        for (const OwnedSlice& s : layout.owned_slices(rank)) {
          for (std::int64_t k = 0; k < s.parameter_range.size(); ++k) {
            shards[rank][s.shard_range.begin + k] =
                full[s.parameter_index][s.parameter_range.begin + k];
          }
        }
      }
      // shards -> full, through placements
      for (std::size_t p = 0; p < specs.size(); ++p) {
        std::vector<double> rebuilt(full[p].size(), -1.0);
        for (const OwnedSlice& s : layout.placements(p)) {
          for (std::int64_t k = 0; k < s.parameter_range.size(); ++k) {
            rebuilt[s.parameter_range.begin + k] = shards[s.rank][s.shard_range.begin + k];
          }
        }
        ASSERT_EQ(rebuilt, full[p]) << "parameter " << p << " world size " << world_size;
      }
      // Padding stayed zero.
      for (int rank = 0; rank < world_size; ++rank) {
        const ElementRange padding = layout.padding_in_shard(rank);
        for (std::int64_t i = padding.begin; i < padding.end; ++i) ASSERT_EQ(shards[rank][i], 0.0);
      }
    }
  }
}

TEST(FlatLayout, InvariantsOverRandomLayoutsWorldSizesAndAlignments) {
  std::mt19937 random(2024);
  for (int trial = 0; trial < 120; ++trial) {
    const std::vector<ParameterSpec> specs = random_parameters(random);
    for (int world_size = 1; world_size <= 8; ++world_size) {
      for (std::int64_t alignment : {1, 3, 32, 64}) {
        check_layout_invariants(specs, world_size, alignment);
      }
    }
  }
}

// Fast-LLM's worked example: 10 elements on 4 ranks with 32-element alignment
// give shards of 32 and per-rank padding 22, 32, 32, 32.
TEST(FlatLayout, PaddingCanCoverWholeTrailingRanks) {
  const FlatLayout layout({{"w", {10}}}, 4, 32);
  EXPECT_EQ(layout.padded_numel(), 128);
  EXPECT_EQ(layout.shard_numel(), 32);
  EXPECT_EQ(layout.padding_in_shard(0), (ElementRange{10, 32}));
  for (int rank = 1; rank < 4; ++rank) {
    EXPECT_EQ(layout.padding_in_shard(rank), (ElementRange{0, 32}));
    EXPECT_TRUE(layout.owned_slices(rank).empty());
  }
  ASSERT_EQ(layout.placements(0).size(), 1u);
  EXPECT_EQ(layout.placements(0)[0].rank, 0);
}

TEST(FlatLayout, ParameterStraddlesSeveralShards) {
  // 10 + 200 + 6 = 216 elements, alignment 8 on 3 ranks: padded 216, shards of 72.
  const FlatLayout layout({{"a", {10}}, {"b", {20, 10}}, {"c", {2, 3}}}, 3, 8);
  EXPECT_EQ(layout.shard_numel(), 72);
  const std::vector<OwnedSlice> b = layout.placements(layout.parameter_index("b"));
  ASSERT_EQ(b.size(), 3u);
  EXPECT_EQ(b[0].parameter_range, (ElementRange{0, 62}));
  EXPECT_EQ(b[0].shard_range, (ElementRange{10, 72}));
  EXPECT_EQ(b[1].parameter_range, (ElementRange{62, 134}));
  EXPECT_EQ(b[1].shard_range, (ElementRange{0, 72}));
  EXPECT_EQ(b[2].parameter_range, (ElementRange{134, 200}));
  EXPECT_EQ(b[2].shard_range, (ElementRange{0, 66}));
  const std::vector<OwnedSlice> rank2 = layout.owned_slices(2);
  ASSERT_EQ(rank2.size(), 2u);
  EXPECT_EQ(rank2[1].parameter_index, 2u);
  EXPECT_EQ(rank2[1].shard_range, (ElementRange{66, 72}));
  EXPECT_TRUE(layout.padding_in_shard(2).empty());
}

TEST(FlatLayout, ZeroElementParametersKeepTheirShapeAndOwnNothing) {
  const FlatLayout layout({{"a", {4}}, {"empty", {0, 5}}, {"b", {3}}}, 2, 4);
  const ParameterSlot& empty = layout.parameter("empty");
  EXPECT_EQ(empty.shape, (std::vector<std::int64_t>{0, 5}));
  EXPECT_EQ(empty.numel, 0);
  EXPECT_EQ(empty.flat_range, (ElementRange{4, 4}));
  EXPECT_TRUE(layout.placements(layout.parameter_index("empty")).empty());
  for (int rank = 0; rank < 2; ++rank) {
    for (const OwnedSlice& slice : layout.owned_slices(rank)) {
      EXPECT_NE(layout.parameters()[slice.parameter_index].name, "empty");
    }
  }
  EXPECT_EQ(layout.parameter("b").flat_range, (ElementRange{4, 7}));
  EXPECT_EQ(layout.parameter("b").numel, 3);
}

TEST(FlatLayout, ScalarParameterHasOneElement) {
  const FlatLayout layout({{"scale", {}}}, 2, 1);
  EXPECT_EQ(layout.parameter("scale").numel, 1);
  EXPECT_EQ(layout.padded_numel(), 2);
  EXPECT_EQ(layout.owned_slices(0).size(), 1u);
  EXPECT_TRUE(layout.owned_slices(1).empty());
}

TEST(FlatLayout, EmptyStageHasEmptyShards) {
  const FlatLayout layout({}, 4);
  EXPECT_EQ(layout.padded_numel(), 0);
  EXPECT_EQ(layout.shard_numel(), 0);
  EXPECT_TRUE(layout.owned_slices(3).empty());
}

TEST(FlatLayout, DefaultAlignmentPutsShardBoundariesOn128Bytes) {
  const FlatLayout layout({{"w", {1000}}}, 3);
  EXPECT_EQ(layout.alignment(), kDefaultShardAlignment);
  EXPECT_EQ(layout.shard_numel() % 64, 0);
  EXPECT_EQ(layout.padded_numel(), 3 * 64 * 6);  // 1000 -> 1152
}

TEST(FlatLayout, RejectsBadDeclarationsWithTheParameterNamed) {
  auto message_of = [](auto&& make) -> std::string {
    try {
      make();
    } catch (const std::exception& error) {
      return error.what();
    }
    return "no error";
  };
  EXPECT_NE(message_of([] {
              FlatLayout({{"a", {2}}, {"a", {3}}}, 1);
            }).find("'a' is declared twice"),
            std::string::npos);
  EXPECT_NE(message_of([] {
              FlatLayout({{"w", {2, -1}}}, 1);
            }).find("'w' has shape [2, -1]"),
            std::string::npos);
  EXPECT_NE(message_of([] {
              FlatLayout({{"huge", {1LL << 40, 1LL << 40}}}, 1);
            }).find("'huge'"),
            std::string::npos);
  EXPECT_NE(message_of([] {
              FlatLayout({{"a", {1LL << 62}}, {"b", {1LL << 62}}}, 1);
            }).find("'b'"),
            std::string::npos);
  EXPECT_NE(message_of([] { FlatLayout({{"", {1}}}, 1); }).find("empty name"), std::string::npos);
  EXPECT_NE(message_of([] { FlatLayout({}, 0); }).find("at least 1"), std::string::npos);
  EXPECT_NE(message_of([] { FlatLayout({}, 2, 0); }).find("alignment"), std::string::npos);
  const FlatLayout layout({{"decoder.0.weight", {4}}}, 2);
  const std::string unknown = message_of([&] { layout.parameter("decoder.1.weight"); });
  EXPECT_NE(unknown.find("'decoder.1.weight'"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("'decoder.0.weight'"), std::string::npos) << unknown;
  EXPECT_THROW(layout.shard_range(2), std::out_of_range);
  EXPECT_THROW(layout.owned_slices(-1), std::out_of_range);
}

TEST(ElementRange, IntersectIsEmptyWhenDisjoint) {
  EXPECT_EQ(intersect({0, 10}, {5, 20}), (ElementRange{5, 10}));
  EXPECT_TRUE(intersect({0, 5}, {5, 10}).empty());
  EXPECT_TRUE(intersect({8, 10}, {0, 3}).empty());
}

}  // namespace
}  // namespace fsdp
