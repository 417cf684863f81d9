// The runtime's errors: one base, fsdp::Error, whose kind says what went
// wrong, so that a harness can catch a bad checkpoint as such, at any rank.
//
//   try {
//     fsdp::checkpoint::load_checkpoint(directory, model.stages(), &optimizer);
//   } catch (const fsdp::CheckpointError& error) {   // on every rank, together
//     if (error.failing_rank() >= 0) ...              // found by that rank
//   }
//
// Errors raised between collectives are agreed across ranks
// (fsdp/collective_errors.h): every rank then throws the same kind, with the
// message of the lowest failing rank and that rank in failing_rank().
// Exceptions that are not fsdp::Error (a std::bad_alloc, a bug) are agreed as
// RankFailedError, kind kOther.
//
// Header-only and free of libtorch, so that every module (data/ included) can
// throw them.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace fsdp {

enum class ErrorKind : std::uint8_t {
  kOther = 0,          // not one of the runtime's errors (RankFailedError)
  kConfiguration = 1,  // impossible options or model configurations
  kCheckpoint = 2,     // a bad, missing or unwritable checkpoint file
  kData = 3,           // a bad token file
  kCollective = 4,     // a collective that failed or timed out
  kNotRestored = 5,    // a parameter read while its stage's weights were not restored
};

inline std::string_view error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kConfiguration:
      return "configuration";
    case ErrorKind::kCheckpoint:
      return "checkpoint";
    case ErrorKind::kData:
      return "data";
    case ErrorKind::kCollective:
      return "collective";
    case ErrorKind::kNotRestored:
      return "not-restored";
    case ErrorKind::kOther:
      break;
  }
  return "other";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message, int failing_rank = -1)
      : std::runtime_error(message), kind_(kind), failing_rank_(failing_rank) {}
  ErrorKind kind() const noexcept { return kind_; }
  // -1: raised by this rank. Otherwise agreed across the ranks: every rank
  // threw this error, found by rank failing_rank() (what() starts "rank R: ").
  int failing_rank() const noexcept { return failing_rank_; }

 private:
  ErrorKind kind_;
  int failing_rank_;
};

// One class per kind, so that `catch` can select.
template <ErrorKind Kind>
class KindedError : public Error {
 public:
  explicit KindedError(const std::string& message, int failing_rank = -1)
      : Error(Kind, message, failing_rank) {}
};

using ConfigurationError = KindedError<ErrorKind::kConfiguration>;
using CheckpointError = KindedError<ErrorKind::kCheckpoint>;
using DataError = KindedError<ErrorKind::kData>;
using NotRestoredError = KindedError<ErrorKind::kNotRestored>;
using RankFailedError = KindedError<ErrorKind::kOther>;

// Collectives: the base for what MPI, NCCL or CUDA reported
// (CommunicationError) and for a deadline passed (CollectiveTimeoutError).
class CollectiveError : public Error {
 public:
  explicit CollectiveError(const std::string& message, int failing_rank = -1)
      : Error(ErrorKind::kCollective, message, failing_rank) {}
};

// The error `kind` stands for, as an exception object, thrown.
[[noreturn]] inline void throw_error(ErrorKind kind, const std::string& message, int failing_rank) {
  switch (kind) {
    case ErrorKind::kConfiguration:
      throw ConfigurationError(message, failing_rank);
    case ErrorKind::kCheckpoint:
      throw CheckpointError(message, failing_rank);
    case ErrorKind::kData:
      throw DataError(message, failing_rank);
    case ErrorKind::kCollective:
      throw CollectiveError(message, failing_rank);
    case ErrorKind::kNotRestored:
      throw NotRestoredError(message, failing_rank);
    case ErrorKind::kOther:
      break;
  }
  throw RankFailedError(message, failing_rank);
}

}  // namespace fsdp
