#include "fsdp/process_group.h"

#include <cstdio>

namespace fsdp {
namespace {

std::string location_name(MemoryLocation location) {
  return location == MemoryLocation::kHost ? "host memory" : "CUDA memory";
}

bool overlaps(TensorSpan a, TensorSpan b) {
  const char* a_begin = static_cast<const char*>(a.data);
  const char* b_begin = static_cast<const char*>(b.data);
  return a.bytes() > 0 && b.bytes() > 0 && a_begin < b_begin + b.bytes() &&
         b_begin < a_begin + a.bytes();
}

}  // namespace

std::string format_seconds(std::chrono::milliseconds duration) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g s", duration.count() / 1000.0);
  return text;
}

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAverage:
      return "average";
    case ReduceOp::kMin:
      return "min";
    case ReduceOp::kMax:
      return "max";
  }
  return "unknown";
}

ProcessGroup::ProcessGroup(int rank, int size, std::string host, std::chrono::milliseconds timeout)
    : rank_(rank), size_(size), host_(std::move(host)), timeout_(timeout) {}

std::string ProcessGroup::rank_description() const {
  return "rank " + std::to_string(rank_) + "/" + std::to_string(size_) + " on " + host_;
}

std::string ProcessGroup::describe(std::string_view collective, TensorSpan span) const {
  return std::string(collective) + " of " + std::to_string(span.numel) + " " +
         std::string(element_type_name(span.type)) + " on " + rank_description() + " (" +
         std::string(backend_name()) + ")";
}

void ProcessGroup::check_location(TensorSpan span, std::string_view collective) const {
  if (span.numel < 0) {
    throw std::invalid_argument(std::string(collective) + ": negative element count " +
                                std::to_string(span.numel));
  }
  if (span.numel > 0 && span.data == nullptr) {
    throw std::invalid_argument(std::string(collective) + ": null data for " +
                                std::to_string(span.numel) + " elements");
  }
  if (span.location != memory_location()) {
    throw std::invalid_argument(std::string(collective) + " on the " + std::string(backend_name()) +
                                " process group needs " + location_name(memory_location()) +
                                ", but the span is in " + location_name(span.location));
  }
}

void ProcessGroup::check_reduction(TensorSpan input, TensorSpan output, ReduceOp op,
                                   std::string_view collective) const {
  const bool same_type = output.type == input.type;
  const bool widened = is_half_precision(input.type) && output.type == ElementType::kFloat32;
  if (!same_type && !widened) {
    throw std::invalid_argument(
        std::string(collective) + ": output type " + std::string(element_type_name(output.type)) +
        " does not match input type " + std::string(element_type_name(input.type)) +
        " (only bfloat16/float16 input may reduce into float32 output)");
  }
  if (op == ReduceOp::kAverage && !is_floating_point(input.type)) {
    throw std::invalid_argument(std::string(collective) +
                                ": average is defined for floating-point " + "types only, not " +
                                std::string(element_type_name(input.type)));
  }
}

ProcessGroup::Work ProcessGroup::all_gather_in_place_async(TensorSpan buffer) {
  check_location(buffer, "all_gather_in_place");
  if (buffer.numel % size_ != 0) {
    throw std::invalid_argument("all_gather_in_place: " + std::to_string(buffer.numel) +
                                " elements do not split evenly over " + std::to_string(size_) +
                                " ranks");
  }
  return start_all_gather_in_place(buffer, describe("all_gather_in_place", buffer));
}

ProcessGroup::Work ProcessGroup::reduce_scatter_async(TensorSpan input, TensorSpan output,
                                                      ReduceOp op) {
  check_location(input, "reduce_scatter input");
  check_location(output, "reduce_scatter output");
  check_reduction(input, output, op, "reduce_scatter");
  if (input.numel != output.numel * size_) {
    throw std::invalid_argument("reduce_scatter: input has " + std::to_string(input.numel) +
                                " elements; expected output (" + std::to_string(output.numel) +
                                ") x ranks (" + std::to_string(size_) +
                                ") = " + std::to_string(output.numel * size_));
  }
  if (overlaps(input, output)) {
    throw std::invalid_argument("reduce_scatter: output overlaps input");
  }
  return start_reduce_scatter(
      input, output, op,
      describe("reduce_scatter(" + std::string(reduce_op_name(op)) + ")", input));
}

ProcessGroup::Work ProcessGroup::all_reduce_async(TensorSpan buffer, ReduceOp op) {
  check_location(buffer, "all_reduce");
  check_reduction(buffer, buffer, op, "all_reduce");
  return start_all_reduce(buffer, op,
                          describe("all_reduce(" + std::string(reduce_op_name(op)) + ")", buffer));
}

ProcessGroup::Work ProcessGroup::broadcast_async(TensorSpan buffer, int root) {
  check_location(buffer, "broadcast");
  if (root < 0 || root >= size_) {
    throw std::invalid_argument("broadcast: root " + std::to_string(root) +
                                " is outside the group of " + std::to_string(size_) + " ranks");
  }
  return start_broadcast(buffer, root,
                         describe("broadcast from rank " + std::to_string(root), buffer));
}

ProcessGroup::Work ProcessGroup::barrier_async() {
  return start_barrier("barrier on " + rank_description());
}

}  // namespace fsdp
