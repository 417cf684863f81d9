// Token files for tests: .npy files written byte by byte as NumPy's format
// document describes them (version 1: magic, version, little-endian header
// length, a Python dict literal padded with spaces to a multiple of 64 and
// ended by a newline, then the data), and raw files.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fsdp::testing {

// `values` stored as `descr` ("<u2", "<u4", "<i4", "<i8"), or with a header
// text of the caller's (`shape` as written between the parentheses).
template <typename T>
void write_npy(const std::filesystem::path& path, const std::vector<T>& values,
               const std::string& descr, const std::string& shape = "") {
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" +
                       (shape.empty() ? std::to_string(values.size()) + "," : shape) + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const unsigned char prefix[] = {0x93,
                                  'N',
                                  'U',
                                  'M',
                                  'P',
                                  'Y',
                                  1,
                                  0,
                                  static_cast<unsigned char>(header.size() & 0xff),
                                  static_cast<unsigned char>(header.size() >> 8)};
  out.write(reinterpret_cast<const char*>(prefix), sizeof prefix);
  out << header;
  out.write(reinterpret_cast<const char*>(values.data()),
            static_cast<std::streamsize>(values.size() * sizeof(T)));
}

template <typename T>
void write_raw(const std::filesystem::path& path, const std::vector<T>& values) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(values.data()),
            static_cast<std::streamsize>(values.size() * sizeof(T)));
}

}  // namespace fsdp::testing
