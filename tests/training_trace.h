// What the schedule-equivalence tests share: a small Llama trained for a few
// steps through a MultiStageModel over a process group that counts its
// collectives, and what the run showed (losses, router losses, expert counts,
// gradient norms, final shards, collectives). Options that change only what
// is kept or when communication happens -- activation checkpointing,
// asynchronous reduction -- must leave every figure of the trace bitwise the
// same (activation_checkpointing_test.cpp, asynchronous_reduction_test.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "fsdp/models/llama.h"
#include "fsdp/process_group.h"
#include "fsdp/stages/multi_stage_model.h"

namespace fsdp::stages::testing_trace {

constexpr std::int64_t kGlobalBatch = 12;  // divisible by 1, 2, 3 and 4
constexpr std::int64_t kSequence = 8;
constexpr int kSteps = 6;

// A work that counts the polls (is_completed) it gets.
class PolledWork final : public CollectiveWork {
 public:
  PolledWork(ProcessGroup::Work inner, std::int64_t& polls)
      : CollectiveWork(inner->description()), inner_(std::move(inner)), polls_(polls) {}
  void wait() override { inner_->wait(); }
  bool is_completed() override {
    ++polls_;
    return inner_->is_completed();
  }

 private:
  ProcessGroup::Work inner_;
  std::int64_t& polls_;
};

// The real group, counting the collectives started through it.
class CountingGroup final : public ProcessGroup {
 public:
  explicit CountingGroup(std::shared_ptr<ProcessGroup> inner)
      : ProcessGroup(inner->rank(), inner->size(), "counted", inner->timeout()),
        inner_(std::move(inner)) {}
  std::string_view backend_name() const override { return inner_->backend_name(); }
  MemoryLocation memory_location() const override { return inner_->memory_location(); }
  std::int64_t reduce_scatter_scratch_bytes(std::int64_t input_numel, ElementType input,
                                            ElementType output) const override {
    return inner_->reduce_scatter_scratch_bytes(input_numel, input, output);
  }
  [[noreturn]] void abort_job(std::string_view message) override {
    inner_->abort_job(message);
    std::abort();  // not reached: the inner group ends the job
  }
  std::int64_t all_gathers = 0, reduce_scatters = 0, all_reduces = 0, others = 0;
  // is_completed() calls on reduce-scatters: polls that let one advance
  // before it was waited for (an asynchronous reduction's progress).
  std::int64_t reduce_scatter_polls = 0;

 protected:
  Work start_all_gather_in_place(TensorSpan buffer, std::string) override {
    ++all_gathers;
    return inner_->all_gather_in_place_async(buffer);
  }
  Work start_reduce_scatter(TensorSpan input, TensorSpan output, ReduceOp op,
                            std::string) override {
    ++reduce_scatters;
    return std::make_unique<PolledWork>(inner_->reduce_scatter_async(input, output, op),
                                        reduce_scatter_polls);
  }
  Work start_all_reduce(TensorSpan buffer, ReduceOp op, std::string) override {
    ++all_reduces;
    return inner_->all_reduce_async(buffer, op);
  }
  Work start_broadcast(TensorSpan buffer, int root, std::string) override {
    ++others;
    return inner_->broadcast_async(buffer, root);
  }
  Work start_barrier(std::string) override {
    ++others;
    return inner_->barrier_async();
  }

 private:
  std::shared_ptr<ProcessGroup> inner_;
};

struct Case {
  int zero_stage = 3;
  bool prefetch = false;
  int layers_per_stage = 1;
  std::int64_t micro_batches = 1;
  std::int64_t experts = 0;
  bool tied = false;
  bool stacked = false;
  int shared_buffers = 0;  // weight and gradient buffers (ZeRO-3)
  bool bfloat16 = false;
  bool asynchronous_reduction = false;

  std::string describe() const {
    return "zero " + std::to_string(zero_stage) + ", prefetch " + std::to_string(prefetch) +
           ", layers per stage " + std::to_string(layers_per_stage) + ", micro-batches " +
           std::to_string(micro_batches) + ", experts " + std::to_string(experts) + ", tied " +
           std::to_string(tied) + ", stacked " + std::to_string(stacked) + ", shared buffers " +
           std::to_string(shared_buffers) + ", bfloat16 " + std::to_string(bfloat16) +
           ", asynchronous reduction " + std::to_string(asynchronous_reduction);
  }
};

// The default case with `change` applied: with([](Case& c) { c.tied = true; }).
inline Case with(const std::function<void(Case&)>& change) {
  Case c;
  change(c);
  return c;
}

models::LlamaConfig config_for(const Case& c);

// What a run shows, step by step, and where it ends.
struct Trace {
  std::vector<double> losses, auxiliary_losses, gradient_norms;
  std::vector<at::Tensor> expert_tokens;  // per step, every routing layer concatenated
  std::vector<at::Tensor> final_shards;
  std::int64_t all_gathers = 0, reduce_scatters = 0, all_reduces = 0;
  std::int64_t reduce_scatter_polls = 0;
  std::int64_t activation_estimate = 0;
};

// Trains config_for(c) for kSteps steps of kGlobalBatch x kSequence tokens
// (deterministic, different every step) with AdamW and clipping. Collective.
Trace train(const Case& c, ActivationCheckpointing mode);

// GoogleTest expectations: every loss, router loss, gradient norm and expert
// count bitwise equal, step by step; the same final shards; the same number
// of all-gathers, reduce-scatters and all-reduces.
void expect_same_trace(const Trace& expected, const Trace& actual);

}  // namespace fsdp::stages::testing_trace
