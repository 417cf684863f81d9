// Collectives on the MPI process group at world sizes 1-4, checked exactly
// with integer-valued data (every sum below is exact in every type used).
#include <gtest/gtest.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <malloc.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <thread>

#include "fsdp/launch/process_memory.h"
#include "fsdp/mpi_process_group.h"
#include "mpi_test_environment.h"

namespace fsdp {
namespace {

ProcessGroup& group() { return *testing::runtime().host_group(); }

// A value that identifies (rank, index) and stays exact in 16-bit floats.
float crafted(int rank, std::int64_t index) { return static_cast<float>(rank * 16 + index % 16); }

template <typename Word>
std::vector<std::uint16_t> as_words(const std::vector<float>& values) {
  std::vector<std::uint16_t> words(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    const Word word(values[i]);
    std::memcpy(&words[i], &word, sizeof(word));
  }
  return words;
}

template <typename Word>
float from_word(std::uint16_t bits) {
  Word word;
  std::memcpy(&word, &bits, sizeof(word));
  return static_cast<float>(word);
}

TEST(MpiProcessGroup, AllGatherInPlaceFloat32) {
  const int ranks = group().size();
  for (std::int64_t chunk : {0, 1, 5, 4096}) {
    std::vector<float> buffer(static_cast<std::size_t>(chunk * ranks), -1.0f);
    for (std::int64_t i = 0; i < chunk; ++i)
      buffer[group().rank() * chunk + i] = crafted(group().rank(), i);
    group().all_gather_in_place(host_span(buffer));
    for (int r = 0; r < ranks; ++r) {
      for (std::int64_t i = 0; i < chunk; ++i) {
        ASSERT_EQ(buffer[r * chunk + i], crafted(r, i)) << "chunk " << chunk << " rank " << r;
      }
    }
  }
}

TEST(MpiProcessGroup, AllGatherMovesBFloat16AsWords) {
  const int ranks = group().size();
  const std::int64_t chunk = 37;
  // Bit patterns that are not valid as small integers: NaN payloads, -0, subnormals.
  std::vector<std::uint16_t> words(chunk * ranks, 0xFFFF);
  for (std::int64_t i = 0; i < chunk; ++i) {
    words[group().rank() * chunk + i] =
        static_cast<std::uint16_t>(0x7FC1 + group().rank() * 97 + i);
  }
  group().all_gather_in_place(host_span_16bit(words, ElementType::kBFloat16));
  for (int r = 0; r < ranks; ++r) {
    for (std::int64_t i = 0; i < chunk; ++i) {
      ASSERT_EQ(words[r * chunk + i], static_cast<std::uint16_t>(0x7FC1 + r * 97 + i));
    }
  }
}

TEST(MpiProcessGroup, ReduceScatterSumAndAverageAreExact) {
  const int ranks = group().size();
  const std::int64_t chunk = 1000;
  std::vector<float> input(chunk * ranks);
  for (std::int64_t i = 0; i < chunk * ranks; ++i) input[i] = crafted(group().rank(), i) + i;
  auto expected_sum = [&](std::int64_t global_index) {
    float sum = 0;
    for (int r = 0; r < ranks; ++r) sum += crafted(r, global_index) + global_index;
    return sum;
  };
  std::vector<float> output(chunk, -1.0f);
  group().reduce_scatter(host_span(input), host_span(output), ReduceOp::kSum);
  for (std::int64_t i = 0; i < chunk; ++i) {
    ASSERT_EQ(output[i], expected_sum(group().rank() * chunk + i)) << i;
  }
  group().reduce_scatter(host_span(input), host_span(output), ReduceOp::kAverage);
  for (std::int64_t i = 0; i < chunk; ++i) {
    // One correctly rounded division of an exact sum: bitwise equal.
    ASSERT_EQ(output[i], expected_sum(group().rank() * chunk + i) / static_cast<float>(ranks)) << i;
  }
}

TEST(MpiProcessGroup, ReduceScatterBFloat16SumsInFloat32) {
  const int ranks = group().size();
  const std::int64_t chunk = 64;
  // 256 + 1 is not representable in bfloat16 (8 bits of mantissa), but the
  // float32 sum of 256 and ranks x 1 is: a bfloat16 running sum would lose the ones.
  std::vector<float> values(chunk * ranks, 1.0f);
  if (group().rank() == 0) std::fill(values.begin(), values.end(), 256.0f);
  std::vector<std::uint16_t> input = as_words<c10::BFloat16>(values);
  std::vector<float> output32(chunk, 0.0f);
  group().reduce_scatter(host_span_16bit(input, ElementType::kBFloat16), host_span(output32),
                         ReduceOp::kSum);
  const float expected = ranks == 1 ? 256.0f : 256.0f + (ranks - 1);
  for (float value : output32) ASSERT_EQ(value, expected);

  // Into a bfloat16 output: reduced in float32, rounded once.
  std::vector<std::uint16_t> output16(chunk, 0);
  group().reduce_scatter(host_span_16bit(input, ElementType::kBFloat16),
                         host_span_16bit(output16, ElementType::kBFloat16), ReduceOp::kAverage);
  const float expected_average = static_cast<float>(c10::BFloat16(expected / ranks));
  for (std::uint16_t word : output16) ASSERT_EQ(from_word<c10::BFloat16>(word), expected_average);
}

// Memory stays bounded: 16-bit reductions go through a float32 staging area of
// staging_elements(), piece by piece. A tiny staging size makes many uneven
// pieces; the results must not change.
TEST(MpiProcessGroup, SixteenBitReductionsInManySmallPieces) {
  auto& mpi = *testing::runtime().host_group();
  const std::int64_t saved = mpi.staging_elements();
  const int ranks = group().size();
  const std::int64_t chunk = 101;  // not a multiple of any piece size used
  std::vector<float> values(chunk * ranks);
  for (std::int64_t i = 0; i < chunk * ranks; ++i) values[i] = crafted(group().rank(), i);
  const std::vector<std::uint16_t> input = as_words<c10::BFloat16>(values);
  for (std::int64_t staging : {1, 7, 64, 1 << 22}) {
    SCOPED_TRACE("staging elements " + std::to_string(staging));
    mpi.set_staging_elements(staging);
    std::vector<std::uint16_t> in = input;
    std::vector<float> output(chunk, -1.0f);
    group().reduce_scatter(host_span_16bit(in, ElementType::kBFloat16), host_span(output),
                           ReduceOp::kSum);
    std::vector<std::uint16_t> output16(chunk, 0);
    group().reduce_scatter(host_span_16bit(in, ElementType::kBFloat16),
                           host_span_16bit(output16, ElementType::kBFloat16), ReduceOp::kAverage);
    std::vector<std::uint16_t> all = input;
    group().all_reduce(host_span_16bit(all, ElementType::kBFloat16), ReduceOp::kMax);
    for (std::int64_t i = 0; i < chunk; ++i) {
      const std::int64_t global = group().rank() * chunk + i;
      float sum = 0;
      for (int r = 0; r < ranks; ++r) sum += crafted(r, global);
      ASSERT_EQ(output[i], sum) << i;
      ASSERT_EQ(from_word<c10::BFloat16>(output16[i]),
                static_cast<float>(c10::BFloat16(sum / ranks)))
          << i;
    }
    for (std::int64_t i = 0; i < chunk * ranks; ++i) {
      ASSERT_EQ(from_word<c10::BFloat16>(all[i]), crafted(ranks - 1, i)) << i;
    }
  }
  mpi.set_staging_elements(saved);
  EXPECT_THROW(mpi.set_staging_elements(0), std::invalid_argument);
}

// What the memory report counts for a gradient reduction
// (reduce_scatter_scratch_bytes) against what one adds to the resident set at
// its peak: the staging and Open MPI's scratch live only inside the call.
// Buffers of 12-48 MiB, so that the scratch stands well above the noise: one
// float32 call, float32 in pieces, 16-bit in pieces into float32.
TEST(MpiProcessGroup, ReduceScatterScratchIsWhatTheReportCounts) {
  const MpiProcessGroup& mpi = *testing::runtime().host_group();
  const std::int64_t ranks = group().size();
  constexpr std::int64_t kMiB = std::int64_t{1} << 20;
  struct Case {
    const char* what;
    std::int64_t input_bytes;
    ElementType input;
  };
  for (const Case& c : {Case{"float32, one call", 12 * kMiB, ElementType::kFloat32},
                        Case{"float32, pieces", 48 * kMiB, ElementType::kFloat32},
                        Case{"bfloat16, pieces", 24 * kMiB, ElementType::kBFloat16}}) {
    SCOPED_TRACE(c.what);
    const bool sixteen_bit = c.input == ElementType::kBFloat16;
    // Elements divisible by 1-4 ranks; zeros, so every sum is exact.
    const std::int64_t elements = c.input_bytes / (sixteen_bit ? 2 : 4) / 12 * 12;
    std::vector<float> input32(sixteen_bit ? 0 : elements, 0.0f);
    std::vector<std::uint16_t> input16(sixteen_bit ? elements : 0, 0);
    std::vector<float> output(elements / ranks, 1.0f);
    const TensorSpan input =
        sixteen_bit ? host_span_16bit(input16, ElementType::kBFloat16) : host_span(input32);
    const std::int64_t reported =
        mpi.reduce_scatter_scratch_bytes(elements, c.input, ElementType::kFloat32);
    malloc_trim(0);
    ASSERT_TRUE(launch::reset_peak_resident_memory()) << "no peak to measure";
    const std::int64_t before = launch::resident_memory().current;
    group().reduce_scatter(input, host_span(output), ReduceOp::kSum);
    // Open MPI keeps its scratch on some ranks only (rank 0 reduces, then
    // scatters); the report is the largest rank's.
    std::vector<double> measured_here = {
        static_cast<double>(launch::resident_memory().peak - before)};
    EXPECT_LE(measured_here[0], reported + 4 * kMiB);
    group().all_reduce(host_span(measured_here), ReduceOp::kMax);
    const auto measured = static_cast<std::int64_t>(measured_here[0]);
    if (group().rank() == 0) {
      std::printf(
          "[ scratch  ] %s, %lld MiB input at np %lld: %.1f MiB measured (largest rank), %.1f "
          "reported\n",
          c.what, static_cast<long long>(c.input_bytes / kMiB), static_cast<long long>(ranks),
          static_cast<double>(measured) / kMiB, static_cast<double>(reported) / kMiB);
    }
    EXPECT_GE(measured, reported * 6 / 10);
    EXPECT_EQ(output.front(), 0.0f);
  }
}

TEST(MpiProcessGroup, AllReduceOpsAndTypes) {
  const int ranks = group().size();
  std::vector<double> values = {1.0 * group().rank(), -2.0 * group().rank(), 3.0};
  group().all_reduce(host_span(values), ReduceOp::kSum);
  const double rank_sum = ranks * (ranks - 1) / 2.0;
  EXPECT_EQ(values, (std::vector<double>{rank_sum, -2 * rank_sum, 3.0 * ranks}));

  std::vector<std::int64_t> counts = {group().rank(), 10 - group().rank()};
  std::vector<std::int64_t> minimum = counts;
  group().all_reduce(host_span(counts), ReduceOp::kMax);
  group().all_reduce(host_span(minimum), ReduceOp::kMin);
  EXPECT_EQ(counts, (std::vector<std::int64_t>{ranks - 1, 10}));
  EXPECT_EQ(minimum, (std::vector<std::int64_t>{0, 10 - (ranks - 1)}));

  std::vector<std::uint16_t> half = as_words<c10::Half>({2.0f * (group().rank() + 1), 0.5f});
  group().all_reduce(host_span_16bit(half, ElementType::kFloat16), ReduceOp::kAverage);
  EXPECT_EQ(from_word<c10::Half>(half[0]), static_cast<float>(c10::Half((ranks + 1.0f))));
  EXPECT_EQ(from_word<c10::Half>(half[1]), 0.5f);
}

TEST(MpiProcessGroup, BroadcastFromEveryRoot) {
  for (int root = 0; root < group().size(); ++root) {
    std::vector<std::int32_t> values(100, group().rank() == root ? root + 7 : -1);
    group().broadcast(host_span(values), root);
    for (std::int32_t value : values) ASSERT_EQ(value, root + 7);
  }
}

TEST(MpiProcessGroup, AsyncCollectivesCanOverlap) {
  const int ranks = group().size();
  std::vector<float> gathered(8 * ranks, 0.0f);
  for (int i = 0; i < 8; ++i) gathered[group().rank() * 8 + i] = crafted(group().rank(), i);
  std::vector<std::int64_t> summed = {1};
  // Two collectives in flight at once, waited for in the opposite order.
  ProcessGroup::Work gather = group().all_gather_in_place_async(host_span(gathered));
  ProcessGroup::Work sum = group().all_reduce_async(host_span(summed), ReduceOp::kSum);
  ProcessGroup::Work barrier = group().barrier_async();
  sum->wait();
  gather->wait();
  gather->wait();  // idempotent
  barrier->wait();
  EXPECT_TRUE(gather->is_completed());
  EXPECT_EQ(summed[0], ranks);
  for (int r = 0; r < ranks; ++r) {
    for (int i = 0; i < 8; ++i) ASSERT_EQ(gathered[r * 8 + i], crafted(r, i));
  }
  EXPECT_NE(gather->description().find("all_gather_in_place"), std::string::npos);
}

// Note [MPI progress]: with the progress thread, a collective that nobody
// waits on still completes while every rank is busy elsewhere (here: asleep).
TEST(MpiProcessGroup, ProgressThreadCompletesUnattendedCollectives) {
  ::setenv("FSDP_MPI_PROGRESS_THREAD", "1", 1);
  MpiProcessGroup engine_group(MPI_COMM_WORLD);
  ::unsetenv("FSDP_MPI_PROGRESS_THREAD");
  ASSERT_TRUE(engine_group.has_background_progress());
  const int ranks = engine_group.size();
  const std::int64_t chunk = std::int64_t{1} << 20;  // 4 MiB per rank: many fragments
  std::vector<float> buffer(static_cast<std::size_t>(chunk * ranks), 0.0f);
  for (std::int64_t i = 0; i < chunk; ++i) {
    buffer[engine_group.rank() * chunk + i] = crafted(engine_group.rank(), i);
  }
  ProcessGroup::Work gather = engine_group.all_gather_in_place_async(host_span(buffer));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  // One look, no waiting: done only if something advanced it meanwhile.
  EXPECT_TRUE(gather->is_completed());
  gather->wait();
  for (int r = 0; r < ranks; ++r) {
    ASSERT_EQ(buffer[r * chunk + chunk - 1], crafted(r, chunk - 1));
  }
  engine_group.barrier();
}

TEST(MpiProcessGroup, RejectsMismatchedArgumentsBeforeTalkingToPeers) {
  std::vector<float> odd(group().size() * 4 + (group().size() > 1 ? 1 : 0));
  if (group().size() > 1) {
    EXPECT_THROW(group().all_gather_in_place(host_span(odd)), std::invalid_argument);
  }
  std::vector<float> input(4 * group().size());
  std::vector<float> wrong_output(5);
  EXPECT_THROW(group().reduce_scatter(host_span(input), host_span(wrong_output), ReduceOp::kSum),
               std::invalid_argument);
  std::vector<std::int32_t> integers(4);
  try {
    group().all_reduce(host_span(integers), ReduceOp::kAverage);
    ADD_FAILURE() << "averaging integers was accepted";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("int32"), std::string::npos) << error.what();
  }
  EXPECT_THROW(group().broadcast(host_span(integers), group().size()), std::invalid_argument);
  TensorSpan device_span = host_span(integers);
  device_span.location = MemoryLocation::kCuda;
  try {
    group().broadcast(device_span, 0);
    ADD_FAILURE() << "a CUDA span was accepted by the MPI group";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("needs host memory"), std::string::npos)
        << error.what();
  }
  // Still in step with the peers afterwards.
  group().barrier();
}

TEST(MpiProcessGroup, TimeoutNamesTheCollectiveInsteadOfHanging) {
  if (group().size() < 2) {
    GTEST_SUCCEED() << "a timeout needs a peer that joins late; nothing to test at world size 1";
    return;
  }
  // Rank 0 enters an all-reduce (which cannot finish without every peer's
  // contribution) with a short timeout; the peers join it only after rank 0
  // has given up. Then rank 0 waits again, and it completes.
  auto& mpi = *testing::runtime().host_group();
  const auto saved = mpi.timeout();
  std::vector<std::int32_t> value = {1};
  if (group().rank() == 0) {
    mpi.set_timeout(std::chrono::milliseconds(300));
    ProcessGroup::Work late = mpi.all_reduce_async(host_span(value), ReduceOp::kSum);
    try {
      late->wait();
      ADD_FAILURE() << "the all-reduce completed without its peers";
    } catch (const CollectiveTimeoutError& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find("all_reduce(sum) of 1 int32"), std::string::npos) << message;
      EXPECT_NE(message.find("rank 0/"), std::string::npos) << message;
      EXPECT_NE(message.find("did not complete within 0.3"), std::string::npos) << message;
    }
    mpi.set_timeout(saved);
    late->wait();
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    mpi.all_reduce(host_span(value), ReduceOp::kSum);
  }
  EXPECT_EQ(value[0], group().size());
}

}  // namespace
}  // namespace fsdp
