// The error of every bad token file: thrown before training starts, its
// message naming the file and what is wrong with it (and where).
#pragma once

#include "fsdp/errors.h"

namespace fsdp::data {

using DataError = fsdp::DataError;

}  // namespace fsdp::data
