#include "fsdp/data/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <regex>
#include <string>

#include "fsdp/data/data_error.h"

namespace fsdp::data {
namespace fs = std::filesystem;

static_assert(std::numeric_limits<unsigned char>::digits == 8);

namespace {

// NumPy refuses to read headers longer than this unless told otherwise
// (numpy.lib.format, max_header_size); a longer one is not a file it wrote.
constexpr std::int64_t kMaxNumpyHeader = 10000;
// The scan for out-of-range ids goes through the file in chunks of this many
// bytes, dropping each from the resident set once checked.
constexpr std::int64_t kScanChunkBytes = std::int64_t{4} << 20;

// A value from a file, cut short: errors never echo more of a file than this.
std::string excerpt(const std::string& text) {
  constexpr std::size_t kMax = 40;
  std::string shown;
  for (const char c : text.substr(0, kMax)) {
    shown += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return "'" + shown + (text.size() > kMax ? "...'" : "'");
}

bool host_is_little_endian() {
  const std::uint16_t probe = 1;
  unsigned char first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

// Drops the pages of [begin, begin + bytes) from this process (the page cache
// keeps them): what keeps the resident set at the rows being read.
void drop_pages(const unsigned char* begin, std::int64_t bytes) {
  static const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto first = reinterpret_cast<std::uintptr_t>(begin) / page * page;
  const auto end = reinterpret_cast<std::uintptr_t>(begin) + static_cast<std::uintptr_t>(bytes);
  // Advice only: a failure leaves the pages resident, never the data wrong.
  (void)madvise(reinterpret_cast<void*>(first), end - first, MADV_DONTNEED);
}

template <typename T>
void widen(const unsigned char* bytes, std::int64_t count, std::int64_t* out) {
  for (std::int64_t i = 0; i < count; ++i) {
    T value;
    std::memcpy(&value, bytes + i * static_cast<std::int64_t>(sizeof(T)), sizeof(T));
    out[i] = static_cast<std::int64_t>(value);
  }
}

// The first index in [0, count) whose value is outside [0, vocabulary), or -1.
template <typename T>
std::int64_t first_outside(const unsigned char* bytes, std::int64_t count,
                           std::int64_t vocabulary) {
  // Two passes: a branch-free one that the compiler vectorises, then, only in a
  // chunk that has one, the search for where.
  T low = std::numeric_limits<T>::max();
  T high = std::numeric_limits<T>::lowest();
  for (std::int64_t i = 0; i < count; ++i) {
    T value;
    std::memcpy(&value, bytes + i * static_cast<std::int64_t>(sizeof(T)), sizeof(T));
    low = std::min(low, value);
    high = std::max(high, value);
  }
  const auto outside = [vocabulary](T value) {
    return static_cast<std::int64_t>(value) < 0 || static_cast<std::int64_t>(value) >= vocabulary;
  };
  if (count == 0 || (!outside(low) && !outside(high))) return -1;
  for (std::int64_t i = 0; i < count; ++i) {
    T value;
    std::memcpy(&value, bytes + i * static_cast<std::int64_t>(sizeof(T)), sizeof(T));
    if (outside(value)) return i;
  }
  return -1;
}

struct NumpyHeader {
  TokenDtype dtype;
  std::int64_t tokens;
  std::int64_t data_offset;
};

NumpyHeader parse_numpy_header(const fs::path& path, const unsigned char* bytes,
                               std::int64_t size) {
  const auto fail = [&](const std::string& what) -> DataError {
    return DataError(path.string() + ": not a token file NumPy wrote: " + what);
  };
  static const unsigned char kMagic[] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (size < 10 || std::memcmp(bytes, kMagic, sizeof kMagic) != 0) {
    throw fail("it does not start with the .npy magic (\\x93NUMPY)");
  }
  const int major = bytes[6];
  std::int64_t header_length = 0;
  std::int64_t prefix = 0;
  if (major == 1) {
    header_length = bytes[8] | (bytes[9] << 8);
    prefix = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) throw fail("the file ends inside its header");
    header_length = static_cast<std::int64_t>(bytes[8]) | (std::int64_t{bytes[9]} << 8) |
                    (std::int64_t{bytes[10]} << 16) | (std::int64_t{bytes[11]} << 24);
    prefix = 12;
  } else {
    throw fail("format version " + std::to_string(major) + "." + std::to_string(bytes[7]) +
               " (expected 1, 2 or 3)");
  }
  if (header_length > kMaxNumpyHeader) {
    throw fail("a header of " + std::to_string(header_length) + " bytes (NumPy writes at most " +
               std::to_string(kMaxNumpyHeader) + ")");
  }
  if (prefix + header_length > size) {
    throw fail("the file ends inside its header (" + std::to_string(size) + " bytes, header to " +
               std::to_string(prefix + header_length) + ")");
  }
  const std::string header(reinterpret_cast<const char*>(bytes + prefix),
                           static_cast<std::size_t>(header_length));
  std::smatch match;
  static const std::regex kDescr(R"('descr'\s*:\s*'([^']*)')");
  static const std::regex kShape(R"('shape'\s*:\s*\(([^)]*)\))");
  if (!std::regex_search(header, match, kDescr)) throw fail("its header has no 'descr'");
  const std::string descr = match[1];
  NumpyHeader result{};
  if (descr == "<u2") {
    result.dtype = TokenDtype::kUint16;
  } else if (descr == "<u4") {
    result.dtype = TokenDtype::kUint32;
  } else if (descr == "<i4") {
    result.dtype = TokenDtype::kInt32;
  } else if (descr == "<i8") {
    result.dtype = TokenDtype::kInt64;
  } else if (!descr.empty() && descr[0] == '>') {
    throw DataError(path.string() + ": dtype " + excerpt(descr) +
                    " is big-endian; token files are little-endian (write it with "
                    "array.astype(array.dtype.newbyteorder('<')))");
  } else {
    throw DataError(path.string() + ": dtype " + excerpt(descr) +
                    " is not a token dtype (expected uint16 '<u2', uint32 '<u4', int32 '<i4' or "
                    "int64 '<i8')");
  }
  if (!std::regex_search(header, match, kShape)) throw fail("its header has no 'shape'");
  std::vector<std::string> dimensions;
  const std::string shape = match[1];
  std::string current;
  for (const char c : shape + ",") {
    if (c == ',') {
      if (!current.empty()) dimensions.push_back(current);
      current.clear();
    } else if (c != ' ') {
      current += c;
    }
  }
  const bool digits = dimensions.size() == 1 && dimensions[0].size() <= 18 &&
                      std::all_of(dimensions[0].begin(), dimensions[0].end(),
                                  [](char c) { return c >= '0' && c <= '9'; });
  if (!digits) {
    throw DataError(path.string() + ": shape " + excerpt("(" + shape + ")") +
                    " is not 1-D; token files hold one flat array of token ids");
  }
  result.tokens = std::stoll(dimensions[0]);
  result.data_offset = prefix + header_length;
  return result;
}

}  // namespace

std::size_t token_dtype_size(TokenDtype dtype) {
  switch (dtype) {
    case TokenDtype::kUint16:
      return 2;
    case TokenDtype::kUint32:
    case TokenDtype::kInt32:
      return 4;
    case TokenDtype::kInt64:
      return 8;
  }
  return 0;
}

std::string token_dtype_name(TokenDtype dtype) {
  switch (dtype) {
    case TokenDtype::kUint16:
      return "uint16";
    case TokenDtype::kUint32:
      return "uint32";
    case TokenDtype::kInt32:
      return "int32";
    case TokenDtype::kInt64:
      return "int64";
  }
  return "?";
}

TokenDtype token_dtype_from_name(const std::string& name) {
  for (const auto dtype :
       {TokenDtype::kUint16, TokenDtype::kUint32, TokenDtype::kInt32, TokenDtype::kInt64}) {
    if (token_dtype_name(dtype) == name) return dtype;
  }
  throw DataError("token dtype " + excerpt(name) + " (expected uint16, uint32, int32 or int64)");
}

struct TokenFile::Mapping {
  void* base = nullptr;
  std::size_t length = 0;
  Mapping(void* mapped, std::size_t bytes) : base(mapped), length(bytes) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { munmap(base, length); }
  const unsigned char* bytes() const { return static_cast<const unsigned char*>(base); }
};

TokenFile TokenFile::open(const fs::path& path, std::optional<TokenDtype> raw_dtype) {
  if (!host_is_little_endian()) {
    throw DataError(path.string() + ": token files are little-endian and this host is not");
  }
  TokenFile file;
  file.path_ = path;
  file.numpy_ = path.extension() == ".npy";
  if (!file.numpy_ && !raw_dtype) {
    throw DataError(path.string() +
                    ": a raw token file needs its dtype (--data-dtype uint16, uint32, int32 or "
                    "int64); NumPy files (.npy) say theirs");
  }
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
  // forever; it is refused below like any file that is not regular.
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (descriptor < 0) {
    throw DataError(path.string() + ": cannot open: " + std::strerror(errno));
  }
  struct stat status {};
  if (fstat(descriptor, &status) != 0 || !S_ISREG(status.st_mode)) {
    ::close(descriptor);
    throw DataError(path.string() + ": not a regular file" +
                    (S_ISDIR(status.st_mode) ? std::string(" (a directory)") : std::string()));
  }
  const auto size = static_cast<std::int64_t>(status.st_size);
  if (size > 0) {
    void* base =
        mmap(nullptr, static_cast<std::size_t>(size), PROT_READ, MAP_PRIVATE, descriptor, 0);
    const int error = errno;
    ::close(descriptor);
    if (base == MAP_FAILED) {
      throw DataError(path.string() + ": cannot map it: " + std::strerror(error));
    }
    file.mapping_ = std::make_shared<const Mapping>(base, static_cast<std::size_t>(size));
  } else {
    ::close(descriptor);
  }
  if (file.numpy_) {
    if (size == 0) throw DataError(path.string() + ": an empty file, not a NumPy array");
    const auto header = parse_numpy_header(path, file.mapping_->bytes(), size);
    file.dtype_ = header.dtype;
    file.data_offset_ = header.data_offset;
    const auto item = static_cast<std::int64_t>(token_dtype_size(header.dtype));
    const std::int64_t data_bytes = size - header.data_offset;
    if (header.tokens > std::numeric_limits<std::int64_t>::max() / item ||
        header.tokens * item != data_bytes) {
      throw DataError(path.string() + ": its header says " + std::to_string(header.tokens) + " " +
                      token_dtype_name(header.dtype) + " tokens, but " +
                      std::to_string(data_bytes) + " bytes follow the header" +
                      (header.tokens * item > data_bytes ? " (a truncated file?)" : ""));
    }
    file.tokens_ = header.tokens;
  } else {
    file.dtype_ = *raw_dtype;
    const auto item = static_cast<std::int64_t>(token_dtype_size(*raw_dtype));
    if (size % item != 0) {
      throw DataError(path.string() + ": " + std::to_string(size) +
                      " bytes are not a whole number of " + token_dtype_name(*raw_dtype) +
                      " tokens (" + std::to_string(item) + " bytes each; is --data-dtype right?)");
    }
    file.tokens_ = size / item;
  }
  return file;
}

void TokenFile::read(std::int64_t first, std::int64_t count, std::int64_t* out) const {
  if (first < 0 || count < 0 || first + count > tokens_) {
    throw std::out_of_range(path_.string() + ": tokens [" + std::to_string(first) + ", " +
                            std::to_string(first + count) + ") of " + std::to_string(tokens_));
  }
  if (count == 0) return;
  const auto item = static_cast<std::int64_t>(token_dtype_size(dtype_));
  const unsigned char* bytes = mapping_->bytes() + data_offset_ + first * item;
  switch (dtype_) {
    case TokenDtype::kUint16:
      widen<std::uint16_t>(bytes, count, out);
      break;
    case TokenDtype::kUint32:
      widen<std::uint32_t>(bytes, count, out);
      break;
    case TokenDtype::kInt32:
      widen<std::int32_t>(bytes, count, out);
      break;
    case TokenDtype::kInt64:
      widen<std::int64_t>(bytes, count, out);
      break;
  }
  drop_pages(bytes, count * item);
}

std::optional<OutOfRangeToken> TokenFile::first_out_of_range(std::int64_t vocabulary) const {
  const auto item = static_cast<std::int64_t>(token_dtype_size(dtype_));
  const std::int64_t chunk = kScanChunkBytes / item;
  for (std::int64_t first = 0; first < tokens_; first += chunk) {
    const std::int64_t count = std::min(chunk, tokens_ - first);
    const unsigned char* bytes = mapping_->bytes() + data_offset_ + first * item;
    std::int64_t found = -1;
    switch (dtype_) {
      case TokenDtype::kUint16:
        found = first_outside<std::uint16_t>(bytes, count, vocabulary);
        break;
      case TokenDtype::kUint32:
        found = first_outside<std::uint32_t>(bytes, count, vocabulary);
        break;
      case TokenDtype::kInt32:
        found = first_outside<std::int32_t>(bytes, count, vocabulary);
        break;
      case TokenDtype::kInt64:
        found = first_outside<std::int64_t>(bytes, count, vocabulary);
        break;
    }
    if (found >= 0) {
      std::int64_t value = 0;
      read(first + found, 1, &value);
      drop_pages(bytes, count * item);
      return OutOfRangeToken{first + found, value};
    }
    drop_pages(bytes, count * item);
  }
  return std::nullopt;
}

}  // namespace fsdp::data
