// The safetensors reader and writer: round trips, and the reference reader's
// rules, each with a crafted bad file whose error must name the file and
// what is wrong (never a crash).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "fsdp/checkpoint/block_checksums.h"
#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/element_conversion.h"
#include "fsdp/checkpoint/hf_checkpoint.h"
#include "fsdp/checkpoint/safetensors_file.h"

namespace fsdp::checkpoint {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = fs::temp_directory_path() / ("safetensors_test_" + std::to_string(::getpid()));
    fs::create_directories(directory_);
  }
  void TearDown() override { fs::remove_all(directory_); }

  fs::path path(const std::string& name) const { return directory_ / name; }

  // A file made of a length field, `header` and `data_bytes` zero bytes.
  fs::path craft(const std::string& name, const std::string& header, std::int64_t data_bytes,
                 std::uint64_t length_override = 0) const {
    const auto file = path(name);
    std::ofstream out(file, std::ios::binary);
    std::uint64_t length = length_override ? length_override : header.size();
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>((length >> (8 * i)) & 0xff));
    out << header << std::string(static_cast<std::size_t>(data_bytes), '\0');
    return file;
  }

  // Expects opening `file` to fail with a message naming the file and containing `expected`.
  void expect_rejected(const fs::path& file, const std::string& expected) const {
    try {
      SafetensorsFile opened(file);
      FAIL() << "accepted " << file;
    } catch (const CheckpointError& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find(file.string()), std::string::npos) << message;
      EXPECT_NE(message.find(expected), std::string::npos) << message;
    }
  }

  fs::path directory_;
};

TEST_F(SafetensorsTest, WriterOutputReadsBackWithPaddedHeaderAndSortedTensors) {
  const auto file = path("round_trip.safetensors");
  auto a = at::arange(6, at::kFloat).reshape({2, 3});
  auto b = at::arange(5, at::kShort);
  auto c = at::tensor({1.5, -2.25}, at::kDouble);
  {
    SafetensorsWriter writer(file,
                             {{"b", SafetensorsDtype::kInt16, {5}},
                              {"a", SafetensorsDtype::kFloat32, {2, 3}},
                              {"c", SafetensorsDtype::kFloat64, {2}},
                              {"empty", SafetensorsDtype::kBFloat16, {0, 4}}},
                             {{"format", "pt"}});
    // Larger elements first, then by name: c (8), a (4), b (2), empty (2).
    std::vector<std::string> order;
    for (const auto& entry : writer.tensors_in_file_order()) order.push_back(entry.name);
    EXPECT_EQ(order, (std::vector<std::string>{"c", "a", "b", "empty"}));
    writer.append(c.data_ptr(), 16);
    writer.append(a.data_ptr(), 10);  // in pieces of any size
    writer.append(static_cast<char*>(a.data_ptr()) + 10, 14);
    EXPECT_EQ(writer.next_tensor(), "b");
    writer.append(b.data_ptr(), 10);
    writer.finish();
    EXPECT_EQ(writer.file_size(), static_cast<std::int64_t>(fs::file_size(file)));
  }
  SafetensorsFile read(file);
  EXPECT_EQ(read.header().header_bytes % 8, 0);
  EXPECT_EQ(read.metadata().at("format"), "pt");
  const auto& entry = read.tensor("a");
  EXPECT_EQ(entry.shape, (std::vector<std::int64_t>{2, 3}));
  auto back = at::empty({2, 3}, at::kFloat);
  read.read_tensor_bytes(entry, 0, back.data_ptr(), entry.bytes());
  EXPECT_TRUE(at::equal(back, a));
  float middle[2];
  read.read_tensor_bytes(entry, 8, middle, 8);  // a range, not the whole tensor
  EXPECT_EQ(middle[0], 2.0f);
  EXPECT_EQ(middle[1], 3.0f);
  EXPECT_EQ(read.tensor("empty").bytes(), 0);
  EXPECT_THROW(read.tensor("missing"), CheckpointError);
}

TEST_F(SafetensorsTest, WriterRefusesIncompleteDataAndDuplicateNames) {
  SafetensorsWriter writer(path("short.safetensors"), {{"x", SafetensorsDtype::kFloat32, {4}}});
  float values[2] = {1, 2};
  writer.append(values, 8);
  EXPECT_THROW(writer.finish(), CheckpointError);
  EXPECT_THROW(SafetensorsWriter(path("dup.safetensors"), {{"x", SafetensorsDtype::kFloat32, {1}},
                                                           {"x", SafetensorsDtype::kFloat32, {1}}}),
               CheckpointError);
}

const std::string kGood = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

TEST_F(SafetensorsTest, RejectsTooShortFile) {
  const auto file = path("tiny.safetensors");
  std::ofstream(file) << "abc";
  expect_rejected(file, "too short");
}

TEST_F(SafetensorsTest, RejectsHeaderLengthBeyondTheFile) {
  expect_rejected(craft("beyond.safetensors", kGood, 8, 5000), "beyond the end of the file");
}

TEST_F(SafetensorsTest, RejectsHeaderLengthOverTheLimit) {
  expect_rejected(craft("huge.safetensors", kGood, 8, 200'000'000), "exceeds the limit");
}

TEST_F(SafetensorsTest, RejectsInvalidJson) {
  expect_rejected(craft("json.safetensors", R"({"t":{"dtype":"F32",)", 0), "not valid UTF-8 JSON");
}

TEST_F(SafetensorsTest, RejectsInvalidUtf8) {
  expect_rejected(craft("utf8.safetensors", "{\"t\xff\":{}}", 0), "not valid UTF-8 JSON");
}

// 60,000 nested arrays (a 120 KB header) crashed the printing of the error
// message (recursion); nesting is bounded while parsing.
TEST_F(SafetensorsTest, RejectsDeeplyNestedHeaderWithoutCrashing) {
  const std::string deep = "{\"x\":" + std::string(60000, '[') + std::string(60000, ']') + "}";
  expect_rejected(craft("deep.safetensors", deep, 0), "the header nests deeper than 64 levels");
  // A long value is shown cut short, never whole.
  const std::string wide = R"({"__metadata__":{"k":[)" + std::string(5000, '1') + "]}}";
  try {
    SafetensorsFile opened(craft("wide.safetensors", wide, 0));
    FAIL() << "accepted a non-string metadata value";
  } catch (const CheckpointError& error) {
    EXPECT_LT(std::string(error.what()).size(), 400u) << error.what();
  }
}

// nlohmann's lexer stops at a NUL byte; the reference reader rejects this.
TEST_F(SafetensorsTest, RejectsHeaderWithANulByte) {
  expect_rejected(craft("nul.safetensors", std::string("{}\0garbage", 10), 0),
                  "a NUL byte at offset 2 of 10");
}

TEST_F(SafetensorsTest, RejectsNonObjectHeader) {
  expect_rejected(craft("array.safetensors", "[1,2]", 0), "must be a JSON object");
}

TEST_F(SafetensorsTest, RejectsUnknownDtype) {
  expect_rejected(
      craft("dtype.safetensors", R"({"t":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", 16),
      "unknown dtype \"F128\"");
}

TEST_F(SafetensorsTest, RejectsShapeThatDoesNotMatchTheByteCount) {
  expect_rejected(
      craft("size.safetensors", R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
      "tensor \"t\": shape [3] of F32 needs 12 bytes");
}

TEST_F(SafetensorsTest, RejectsShapeWhoseSizeOverflows) {
  expect_rejected(
      craft("overflow.safetensors",
            R"({"t":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
      "overflows");
}

TEST_F(SafetensorsTest, RejectsNegativeOrFractionalDimensions) {
  expect_rejected(craft("negative.safetensors",
                        R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
                  "non-negative integers");
  expect_rejected(craft("fraction.safetensors",
                        R"({"t":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
                  "non-negative integers");
}

TEST_F(SafetensorsTest, RejectsGapBetweenTensors) {
  expect_rejected(craft("gap.safetensors",
                        R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                        R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                        12),
                  "gap between tensor data after tensor \"a\"");
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  expect_rejected(craft("overlap.safetensors",
                        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                        12),
                  "overlapping tensor data");
}

TEST_F(SafetensorsTest, RejectsTrailingBytes) {
  expect_rejected(craft("trailing.safetensors", kGood, 12), "4 trailing bytes");
}

TEST_F(SafetensorsTest, RejectsTruncatedData) {
  expect_rejected(craft("truncated.safetensors", kGood, 5),
                  "truncated: tensor \"t\" ends at byte 8");
}

TEST_F(SafetensorsTest, RejectsDuplicateTensorNames) {
  expect_rejected(craft("duplicate.safetensors",
                        R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                        R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                        8),
                  "names tensor \"a\" twice");
}

TEST_F(SafetensorsTest, RejectsOffsetsEndingBeforeTheyBegin) {
  expect_rejected(
      craft("reversed.safetensors", R"({"t":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", 4),
      "is before begin");
}

TEST_F(SafetensorsTest, RejectsNonStringMetadata) {
  expect_rejected(craft("metadata.safetensors", R"({"__metadata__":{"step":3}})", 0),
                  "\"__metadata__\" entry \"step\" must be a string");
}

TEST_F(SafetensorsTest, RejectsMissingFields) {
  expect_rejected(craft("fields.safetensors", R"({"t":{"dtype":"F32","shape":[1]}})", 4),
                  "\"data_offsets\" must be [begin, end]");
}

TEST_F(SafetensorsTest, ReadsOfRangesOutsideATensorAreRefused) {
  const auto file = craft("ranges.safetensors", kGood, 8);
  SafetensorsFile read(file);
  char bytes[16];
  EXPECT_THROW(read.read_tensor_bytes(read.tensor("t"), 4, bytes, 8), std::out_of_range);
}

TEST(ElementConversion, Float8DecodesExactlyAndHalfTypesRoundLikeTorch) {
  // e4m3fn: 0x38 = 1.0, 0xb8 = -1.0, 0x7e = 448 (the largest), 0x01 = 2^-9, 0x7f = NaN.
  const std::uint8_t e4m3[] = {0x38, 0xb8, 0x7e, 0x01, 0x7f};
  float decoded[5];
  convert_elements(e4m3, SafetensorsDtype::kFloat8E4M3, decoded, c10::ScalarType::Float, 5);
  EXPECT_EQ(decoded[0], 1.0f);
  EXPECT_EQ(decoded[1], -1.0f);
  EXPECT_EQ(decoded[2], 448.0f);
  EXPECT_EQ(decoded[3], std::ldexp(1.0f, -9));
  EXPECT_TRUE(std::isnan(decoded[4]));
  // e5m2: 0x3c = 1.0, 0x7c = inf, 0xc0 = -2.0.
  const std::uint8_t e5m2[] = {0x3c, 0x7c, 0xc0};
  convert_elements(e5m2, SafetensorsDtype::kFloat8E5M2, decoded, c10::ScalarType::Float, 3);
  EXPECT_EQ(decoded[0], 1.0f);
  EXPECT_TRUE(std::isinf(decoded[1]));
  EXPECT_EQ(decoded[2], -2.0f);

  const auto source = at::randn({1000}, at::kFloat);
  auto ours = at::empty({1000}, at::kBFloat16);
  convert_elements(source.data_ptr(), SafetensorsDtype::kFloat32, ours.data_ptr(),
                   c10::ScalarType::BFloat16, 1000);
  EXPECT_TRUE(at::equal(ours, source.to(at::kBFloat16)));
  EXPECT_FALSE(is_supported_conversion(SafetensorsDtype::kInt32, c10::ScalarType::Float));
  EXPECT_THROW(convert_elements(source.data_ptr(), SafetensorsDtype::kInt32, ours.data_ptr(),
                                c10::ScalarType::Float, 1),
               CheckpointError);
}

TEST(BlockChecksums, StreamingInAnyPiecesEqualsOneShotPerBlock) {
  std::vector<char> data(10'000);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + 3);
  BlockChecksummer checksummer(4096);
  checksummer.update(data.data(), 1000);
  checksummer.update(data.data() + 1000, 5000);
  checksummer.update(data.data() + 6000, 4000);
  const auto blocks = checksummer.finish();
  ASSERT_EQ(blocks.size(), 3u);
  EXPECT_EQ(blocks[0], block_checksum(data.data(), 4096));
  EXPECT_EQ(blocks[1], block_checksum(data.data() + 4096, 4096));
  EXPECT_EQ(blocks[2], block_checksum(data.data() + 8192, 10'000 - 8192));
  EXPECT_EQ(parse_checksum(format_checksum(blocks[1]), "test"), blocks[1]);
  EXPECT_THROW(parse_checksum("xyz", "test"), CheckpointError);
}

// An HF index's weight map names files inside the checkpoint directory only:
// never "../", an absolute path or a link leading out -- except the
// HuggingFace hub cache's own layout, whose snapshot files link to ../../blobs.
TEST_F(SafetensorsTest, HfWeightMapCannotLeaveTheDirectory) {
  const auto write_tensor_file = [](const fs::path& file) {
    const float values[2] = {1, 2};
    SafetensorsWriter writer(file, {{"w", SafetensorsDtype::kFloat32, {2}}}, {});
    writer.append(values, sizeof values);
    writer.finish();
  };
  const auto write_index = [](const fs::path& directory, const std::string& file) {
    std::ofstream(directory / "model.safetensors.index.json")
        << R"({"weight_map": {"w": ")" << file << R"("}})";
  };
  const auto refusal = [](const fs::path& directory) -> std::string {
    try {
      HfCheckpoint checkpoint(directory);
    } catch (const CheckpointError& error) {
      return error.what();
    }
    return "(accepted)";
  };
  const auto model = path("model");
  fs::create_directories(model);
  write_tensor_file(path("outside.safetensors"));

  write_index(model, "../outside.safetensors");
  EXPECT_NE(refusal(model).find("weight_map entry \"w\": \"../outside.safetensors\" is not a "
                                "plain file name"),
            std::string::npos)
      << refusal(model);
  write_index(model, "/etc/passwd");
  const std::string passwd = refusal(model);
  EXPECT_NE(passwd.find("\"/etc/passwd\" is not a plain file name"), std::string::npos) << passwd;
  EXPECT_EQ(passwd.find("header length"), std::string::npos) << "it must not have opened it";
  fs::create_symlink("../outside.safetensors", model / "linked.safetensors");
  write_index(model, "linked.safetensors");
  EXPECT_NE(refusal(model).find("\"linked.safetensors\" leads outside"), std::string::npos)
      << refusal(model);

  // The hub cache: REPO/snapshots/REV/* link to REPO/blobs/*.
  const auto repository = path("models--org--tiny");
  const auto snapshot = repository / "snapshots" / "0123abc";
  fs::create_directories(repository / "blobs");
  fs::create_directories(snapshot);
  write_tensor_file(repository / "blobs" / "9f8e7d");
  fs::create_symlink("../../blobs/9f8e7d", snapshot / "model-00001-of-00001.safetensors");
  write_index(snapshot, "model-00001-of-00001.safetensors");
  EXPECT_EQ(refusal(snapshot), "(accepted)");
  EXPECT_EQ(HfCheckpoint(snapshot).keys(), std::vector<std::string>{"w"});
}

}  // namespace
}  // namespace fsdp::checkpoint
