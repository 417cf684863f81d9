// Token files (fsdp/data/token_file.h, fsdp/data/token_dataset.h) and the order of
// windows (fsdp/data/window_order.h): every supported dtype and layout reads back
// exactly, windows span files, every bad file is refused before training with
// a message naming the file and the problem, the order is a permutation per
// epoch that depends only on (seed, epoch), and a file far larger than the
// rows read does not enter the resident set.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "fsdp/data/data_error.h"
#include "fsdp/data/token_dataset.h"
#include "fsdp/data/window_order.h"
#include "token_file_support.h"

namespace fsdp::data {
namespace {

namespace fs = std::filesystem;
using testing::write_npy;
using testing::write_raw;

class TokenData : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = fs::temp_directory_path() /
                 ("token_data_test_" + std::to_string(::getpid()) + "_" +
                  ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(directory_);
    fs::create_directories(directory_);
  }
  void TearDown() override { fs::remove_all(directory_); }
  fs::path path(const std::string& name) const { return directory_ / name; }

  fs::path directory_;
};

std::vector<std::int64_t> read_all(const TokenFile& file) {
  std::vector<std::int64_t> values(static_cast<std::size_t>(file.tokens()));
  file.read(0, file.tokens(), values.data());
  return values;
}

// The message of the DataError `open` throws ("" when it throws none).
template <typename Open>
std::string refusal(Open open) {
  try {
    open();
  } catch (const DataError& error) {
    return error.what();
  }
  return "";
}

TEST_F(TokenData, EveryNumpyDtypeReadsBackExactly) {
  write_npy<std::uint16_t>(path("u2.npy"), {0, 1, 65535, 7}, "<u2");
  write_npy<std::uint32_t>(path("u4.npy"), {0, 4000000000u, 3}, "<u4");
  write_npy<std::int32_t>(path("i4.npy"), {5, 2147483647, 0}, "<i4");
  write_npy<std::int64_t>(path("i8.npy"), {9, 1ll << 40, 0, 2}, "<i8");
  const auto u2 = TokenFile::open(path("u2.npy"), std::nullopt);
  EXPECT_EQ(u2.dtype(), TokenDtype::kUint16);
  EXPECT_EQ(read_all(u2), (std::vector<std::int64_t>{0, 1, 65535, 7}));
  EXPECT_EQ(read_all(TokenFile::open(path("u4.npy"), std::nullopt)),
            (std::vector<std::int64_t>{0, 4000000000ll, 3}));
  EXPECT_EQ(read_all(TokenFile::open(path("i4.npy"), std::nullopt)),
            (std::vector<std::int64_t>{5, 2147483647, 0}));
  // A raw dtype given for .npy files is ignored: the header says.
  EXPECT_EQ(read_all(TokenFile::open(path("i8.npy"), TokenDtype::kUint16)),
            (std::vector<std::int64_t>{9, 1ll << 40, 0, 2}));
}

TEST_F(TokenData, NumpyVersion2HeaderReads) {
  std::string header = "{'descr': '<u2', 'fortran_order': False, 'shape': (3,), }";
  while ((12 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream out(path("v2.npy"), std::ios::binary);
  const unsigned char prefix[] = {
      0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, static_cast<unsigned char>(header.size()), 0, 0, 0};
  out.write(reinterpret_cast<const char*>(prefix), sizeof prefix);
  out << header;
  const std::uint16_t values[] = {4, 5, 6};
  out.write(reinterpret_cast<const char*>(values), sizeof values);
  out.close();
  EXPECT_EQ(read_all(TokenFile::open(path("v2.npy"), std::nullopt)),
            (std::vector<std::int64_t>{4, 5, 6}));
}

TEST_F(TokenData, RawFilesTakeTheGivenDtype) {
  write_raw<std::uint32_t>(path("tokens.bin"), {1, 2, 70000});
  EXPECT_EQ(read_all(TokenFile::open(path("tokens.bin"), TokenDtype::kUint32)),
            (std::vector<std::int64_t>{1, 2, 70000}));
  EXPECT_NE(refusal([&] {
              TokenFile::open(path("tokens.bin"), std::nullopt);
            }).find("tokens.bin: a raw token file needs its dtype (--data-dtype"),
            std::string::npos);
  EXPECT_NE(refusal([&] {
              TokenFile::open(path("tokens.bin"), TokenDtype::kInt64);
            }).find("tokens.bin: 12 bytes are not a whole number of int64 tokens"),
            std::string::npos);
}

TEST_F(TokenData, DirectoryIsReadInNameOrderAndWindowsSpanFiles) {
  fs::create_directories(path("dir/subdirectory"));
  write_npy<std::uint16_t>(path("dir/b.npy"), {10, 11, 12, 13, 14}, "<u2");
  write_raw<std::uint16_t>(path("dir/a.bin"), {0, 1, 2, 3, 4, 5, 6});
  write_npy<std::int32_t>(path("dir/c.npy"), {}, "<i4");  // empty: skipped
  write_raw<std::uint16_t>(path("dir/d.bin"), {20});
  std::ofstream(path("dir/README.txt")) << "not tokens";
  write_npy<std::uint16_t>(path("dir/subdirectory/e.npy"), {99}, "<u2");  // not read
  const auto dataset = TokenDataset::open(path("dir"), TokenDtype::kUint16, 4);
  ASSERT_EQ(dataset.files().size(), 4u);
  EXPECT_EQ(dataset.files()[0].path().filename(), "a.bin");
  EXPECT_EQ(dataset.files()[3].path().filename(), "d.bin");
  EXPECT_EQ(dataset.tokens(), 13);
  EXPECT_EQ(dataset.windows(), 3);  // the 13th token is dropped
  std::vector<std::int64_t> window(4);
  dataset.read_window(1, window.data());
  EXPECT_EQ(window, (std::vector<std::int64_t>{4, 5, 6, 10}));
  dataset.read_window(2, window.data());
  EXPECT_EQ(window, (std::vector<std::int64_t>{11, 12, 13, 14}));
  EXPECT_EQ(dataset.identity().dump(),
            R"({"files":[{"name":"a.bin","tokens":7},{"name":"b.npy","tokens":5},)"
            R"({"name":"c.npy","tokens":0},{"name":"d.bin","tokens":1}],"tokens":13,)"
            R"("window_tokens":4})");
  EXPECT_NE(dataset.describe().find("4 file(s) in "), std::string::npos);
  EXPECT_NE(dataset.describe().find(": 13 uint16/int32 tokens, 3 windows of 4"), std::string::npos);
  EXPECT_THROW(dataset.read_window(3, window.data()), std::out_of_range);
}

TEST_F(TokenData, BadFilesAreRefusedNamingFileAndProblem) {
  const auto refuse_npy = [&](const std::string& name) {
    return refusal([&] { TokenFile::open(path(name), std::nullopt); });
  };
  EXPECT_NE(refusal([&] {
              TokenDataset::open(path("absent.npy"), std::nullopt, 4);
            }).find("absent.npy: no such file or directory"),
            std::string::npos);
  fs::create_directories(path("empty"));
  std::ofstream(path("empty/notes.txt")) << "x";
  EXPECT_NE(refusal([&] {
              TokenDataset::open(path("empty"), std::nullopt, 4);
            }).find("empty: a directory with no token files (*.npy or *.bin) in it"),
            std::string::npos);

  std::ofstream(path("text.npy")) << "hello, this is not numpy";
  EXPECT_NE(refuse_npy("text.npy")
                .find("text.npy: not a token file NumPy wrote: it does not "
                      "start with the .npy magic"),
            std::string::npos);
  write_npy<float>(path("float.npy"), {1.5f}, "<f4");
  EXPECT_NE(refuse_npy("float.npy").find("float.npy: dtype '<f4' is not a token dtype"),
            std::string::npos);
  write_npy<std::uint16_t>(path("big.npy"), {1}, ">u2");
  EXPECT_NE(refuse_npy("big.npy").find("big.npy: dtype '>u2' is big-endian"), std::string::npos);
  write_npy<std::uint16_t>(path("matrix.npy"), std::vector<std::uint16_t>(12), "<u2", "3, 4");
  EXPECT_NE(refuse_npy("matrix.npy").find("matrix.npy: shape '(3, 4)' is not 1-D"),
            std::string::npos);
  write_npy<std::uint16_t>(path("truncated.npy"), std::vector<std::uint16_t>(10), "<u2", "100,");
  EXPECT_NE(refuse_npy("truncated.npy")
                .find("truncated.npy: its header says 100 uint16 tokens, but 20 bytes follow "
                      "the header (a truncated file?)"),
            std::string::npos);
  write_npy<std::uint16_t>(path("long.npy"), std::vector<std::uint16_t>(10), "<u2", "4,");
  EXPECT_NE(refuse_npy("long.npy").find("its header says 4 uint16 tokens, but 20 bytes follow"),
            std::string::npos);
  {  // A version-2 header claiming 1 MB.
    std::ofstream out(path("huge_header.npy"), std::ios::binary);
    const unsigned char prefix[] = {0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, 0, 0, 0x10, 0};
    out.write(reinterpret_cast<const char*>(prefix), sizeof prefix);
  }
  EXPECT_NE(refuse_npy("huge_header.npy").find("a header of 1048576 bytes (NumPy writes at most"),
            std::string::npos);
  {  // Cut inside the header.
    std::ofstream out(path("cut.npy"), std::ios::binary);
    const unsigned char prefix[] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 118, 0, '{'};
    out.write(reinterpret_cast<const char*>(prefix), sizeof prefix);
  }
  EXPECT_NE(refuse_npy("cut.npy").find("cut.npy: not a token file NumPy wrote: the file ends "
                                       "inside its header"),
            std::string::npos);

  // A FIFO is refused at once: opening it for reading used to wait for a writer forever.
  ASSERT_EQ(mkfifo(path("fifo.bin").c_str(), 0600), 0);
  EXPECT_NE(refusal([&] {
              TokenFile::open(path("fifo.bin"), TokenDtype::kUint16);
            }).find("fifo.bin: not a regular file"),
            std::string::npos);

  write_npy<std::uint16_t>(path("short.npy"), std::vector<std::uint16_t>(48), "<u2");
  EXPECT_NE(refusal([&] {
              TokenDataset::open(path("short.npy"), std::nullopt, 49);
            }).find("short.npy: 48 tokens, fewer than one window of 49 (--seq-len 48 + 1"),
            std::string::npos);
}

TEST_F(TokenData, TokenOutsideTheVocabularyIsFoundWithItsPosition) {
  fs::create_directories(path("dir"));
  write_npy<std::uint16_t>(path("dir/0.npy"), std::vector<std::uint16_t>(100, 63), "<u2");
  std::vector<std::int32_t> second(5000, 1);
  second[4321] = 64;
  second[4500] = -3;
  write_npy<std::int32_t>(path("dir/1.npy"), second, "<i4");
  const auto dataset = TokenDataset::open(path("dir"), std::nullopt, 8);
  const std::string message = refusal([&] { dataset.check_token_ids(64); });
  EXPECT_NE(message.find("1.npy: token 4,321 (counting from 0) is 64, outside the model's "
                         "vocabulary of 64 (ids 0-63"),
            std::string::npos)
      << message;
  second[4321] = 1;
  write_npy<std::int32_t>(path("dir/1.npy"), second, "<i4");
  EXPECT_NE(refusal([&] {
              TokenDataset::open(path("dir"), std::nullopt, 8).check_token_ids(65);
            }).find("token 4,500 (counting from 0) is -3, outside"),
            std::string::npos);
}

TEST(WindowOrder, EachEpochIsAPermutationOfItsOwn) {
  for (const std::int64_t windows : {1, 2, 3, 5, 16, 17, 1000}) {
    const WindowOrder order(42, windows);
    std::vector<std::int64_t> epochs[2];
    for (int epoch = 0; epoch < 2; ++epoch) {
      for (std::int64_t position = 0; position < windows; ++position) {
        epochs[epoch].push_back(order.window_of(epoch * windows + position));
      }
      std::vector<std::int64_t> sorted = epochs[epoch];
      std::sort(sorted.begin(), sorted.end());
      std::vector<std::int64_t> all(static_cast<std::size_t>(windows));
      std::iota(all.begin(), all.end(), 0);
      EXPECT_EQ(sorted, all) << windows << " windows, epoch " << epoch;
    }
    if (windows >= 16) {
      EXPECT_NE(epochs[0], epochs[1]) << "epochs must be shuffled anew";
    }
  }
}

TEST(WindowOrder, DependsOnlyOnSeedAndEpoch) {
  const WindowOrder a(7, 1000), b(7, 1000), other(8, 1000);
  std::int64_t same_as_other = 0;
  for (std::int64_t draw = 0; draw < 3000; ++draw) {
    EXPECT_EQ(a.window_of(draw), b.window_of(draw));
    same_as_other += a.window_of(draw) == other.window_of(draw);
  }
  EXPECT_LT(same_as_other, 30) << "another seed must give another order";
  // Every window is about as likely at a given position across epochs.
  const WindowOrder small(1, 10);
  std::vector<int> first(10);
  for (std::int64_t epoch = 0; epoch < 2000; ++epoch) ++first[small.permuted(epoch, 0)];
  for (int window = 0; window < 10; ++window) {
    EXPECT_GT(first[window], 130) << window;
    EXPECT_LT(first[window], 270) << window;
  }
}

// The order is part of the checkpoint contract: a run resumed from a
// checkpoint written by an earlier build must draw the windows that build
// would have. A change here breaks exact resume of every saved run.
TEST(WindowOrder, IsStableAcrossBuilds) {
  const WindowOrder order(1, 10);
  std::vector<std::int64_t> draws;
  for (std::int64_t draw = 0; draw < 12; ++draw) draws.push_back(order.window_of(draw));
  EXPECT_EQ(draws, (std::vector<std::int64_t>{5, 1, 8, 7, 2, 6, 3, 9, 0, 4, 8, 4}));
  const WindowOrder large(1234, 1000003);
  EXPECT_EQ((std::vector<std::int64_t>{large.window_of(0), large.window_of(1),
                                       large.window_of(999999), large.window_of(5000000)}),
            (std::vector<std::int64_t>{432209, 842099, 611890, 982295}));
}

std::int64_t resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

// A 1 GiB file (sparse: it costs no disk) checked through and read at 256
// places: the resident set grows by far less than the file. The one bad token
// sits in the last page, so the check must have read to the end.
TEST_F(TokenData, ResidentSetStaysAtTheRowsRead) {
  constexpr std::int64_t kTokens = std::int64_t{1} << 29;  // uint16: 1 GiB
  { std::ofstream create(path("large.bin"), std::ios::binary); }
  fs::resize_file(path("large.bin"), kTokens * 2);
  const std::int64_t before = resident_bytes();
  const auto dataset = TokenDataset::open(path("large.bin"), TokenDtype::kUint16, 1025);
  EXPECT_NO_THROW(dataset.check_token_ids(64));
  std::vector<std::int64_t> window(1025);
  const std::int64_t step = dataset.windows() / 256;
  for (std::int64_t index = 0; index < 256; ++index) {
    dataset.read_window(index * step, window.data());
    ASSERT_EQ(window[0], 0);
  }
  const std::int64_t grown = resident_bytes() - before;
  EXPECT_LT(grown, std::int64_t{32} << 20) << "the resident set grew by " << grown << " bytes";
  {
    std::fstream patch(path("large.bin"), std::ios::binary | std::ios::in | std::ios::out);
    patch.seekp((kTokens - 1) * 2);
    const std::uint16_t bad = 70;
    patch.write(reinterpret_cast<const char*>(&bad), 2);
  }
  const auto patched = TokenDataset::open(path("large.bin"), TokenDtype::kUint16, 1025);
  EXPECT_NE(refusal([&] { patched.check_token_ids(64); }).find("token 536,870,911"),
            std::string::npos);
  EXPECT_LT(resident_bytes() - before, std::int64_t{32} << 20);
}

}  // namespace
}  // namespace fsdp::data
