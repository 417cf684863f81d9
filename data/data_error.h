// The error of every bad token file: thrown before training starts, its
// message naming the file and what is wrong with it (and where).
#pragma once

#include <stdexcept>

namespace fsdp::data {

class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace fsdp::data
