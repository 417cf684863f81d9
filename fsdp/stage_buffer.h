// A flat buffer that one stage owns, or that several stages take turns using
// (weight or gradient buffers shared round-robin between stages under ZeRO-3).
//
// Note [Buffer ordering]
// This is the one place the rule "never touch a buffer while someone else's
// data or collective is in it" is enforced. A stage claims a buffer before it
// writes it -- a restore claims the weight buffer from the moment it starts
// its all-gather (so the claim covers a prefetch in flight), zeroing the
// gradients claims the gradient buffer for a backward -- and gives it up when
// its use ends (release or invalidate; reduce_gradients). Claiming a buffer
// that another stage holds is a std::logic_error naming both stages: it would
// overwrite weights still being read, gathered into, or gradients not yet
// reduced. A schedule that prefetches asks may_claim() first.
//
// Thread-safety: none; the stages that share a buffer are driven by one thread.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <string>

#include "fsdp/element_type.h"

namespace fsdp {

class StageBuffer {
 public:
  // A zeroed 1-D buffer of `numel` elements. `name` is for messages
  // ("shared weight buffer 1").
  StageBuffer(std::string name, std::int64_t numel, ElementType dtype, c10::Device device);

  StageBuffer(const StageBuffer&) = delete;
  StageBuffer& operator=(const StageBuffer&) = delete;

  const std::string& name() const { return name_; }
  const at::Tensor& tensor() const { return tensor_; }
  std::int64_t numel() const { return tensor_.numel(); }

  // Makes `stage` the holder. Idempotent for the holder; throws
  // std::logic_error naming both stages when another stage holds it.
  void claim(const std::string& stage);
  // Ends `stage`'s hold; does nothing when `stage` is not the holder.
  void give_up(const std::string& stage);
  bool may_claim(const std::string& stage) const { return holder_.empty() || holder_ == stage; }
  bool held_by(const std::string& stage) const { return holder_ == stage; }
  // The holder's name, or empty.
  const std::string& holder() const { return holder_; }

 private:
  std::string name_;
  at::Tensor tensor_;
  std::string holder_;
};

}  // namespace fsdp
