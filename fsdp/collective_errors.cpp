#include "fsdp/collective_errors.h"

#include <ATen/ATen.h>

#include <string>

#include "fsdp/torch_interop.h"

namespace fsdp {
namespace {

at::TensorOptions options_for(ProcessGroup& group, c10::ScalarType type) {
  auto options = at::TensorOptions().dtype(type);
  return group.memory_location() == MemoryLocation::kCuda ? options.device(at::kCUDA) : options;
}

}  // namespace

void run_agreeing_on_failure(ProcessGroup& group, const std::function<void()>& work) {
  std::string message;
  bool failed = false;
  ErrorKind kind = ErrorKind::kOther;
  try {
    work();
  } catch (const Error& error) {
    failed = true;
    message = error.what();
    kind = error.kind();
  } catch (const std::exception& error) {
    failed = true;
    message = error.what();
  } catch (...) {
    failed = true;
  }
  if (failed && message.empty()) message = "failed with an exception that has no message";
  // The lowest failing rank speaks: min over (rank if failed else size).
  auto first_failure =
      at::full({1}, failed ? group.rank() : group.size(), options_for(group, at::kLong));
  group.all_reduce(span_of(first_failure), ReduceOp::kMin);
  const auto speaker = first_failure.cpu().item<std::int64_t>();
  if (speaker == group.size()) return;

  const auto root = static_cast<int>(speaker);
  auto header =
      at::tensor({static_cast<std::int64_t>(message.size()), static_cast<std::int64_t>(kind)},
                 at::kLong)
          .to(options_for(group, at::kLong).device());
  group.broadcast(span_of(header), root);
  header = header.cpu();
  const auto bytes = header[0].item<std::int64_t>();
  const auto agreed_kind = static_cast<ErrorKind>(header[1].item<std::int64_t>());
  auto text = at::zeros({bytes}, at::kByte);
  if (group.rank() == root)
    std::copy(message.begin(), message.end(), text.data_ptr<std::uint8_t>());
  auto on_group = text.to(options_for(group, at::kByte).device());
  group.broadcast(span_of(on_group), root);
  text = on_group.cpu();
  throw_error(agreed_kind,
              "rank " + std::to_string(root) + ": " +
                  std::string(reinterpret_cast<const char*>(text.data_ptr<std::uint8_t>()),
                              static_cast<std::size_t>(bytes)),
              root);
}

}  // namespace fsdp
