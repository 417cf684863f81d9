#include "fsdp/stages/sharded_adamw.h"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>

#include "fsdp/torch_interop.h"

namespace fsdp::stages {

bool decays_by_default(const ParameterSlot& parameter) { return parameter.shape.size() >= 2; }

ShardedAdamW::ShardedAdamW(std::vector<Fsdp*> stages, ShardedAdamWOptions options)
    : stages_(std::move(stages)), options_(std::move(options)) {
  if (stages_.empty()) throw std::invalid_argument("sharded AdamW: no stages given");
  for (Fsdp* stage : stages_) {
    if (stage->weight_shard().scalar_type() != at::kFloat) {
      throw std::invalid_argument("sharded AdamW: stage '" + stage->stage_name() + "' has " +
                                  c10::toString(stage->weight_shard().scalar_type()) +
                                  " shards; the optimizer needs float32 master shards");
    }
    if (stage->group().size() != stages_.front()->group().size()) {
      throw std::invalid_argument("sharded AdamW: stage '" + stage->stage_name() +
                                  "' is sharded over a different number of ranks");
    }
    StageState state;
    state.exp_avg = at::zeros_like(stage->weight_shard());
    state.exp_avg_sq = at::zeros_like(stage->weight_shard());
    state.data_elements = stage->layout().padding_in_shard(stage->group().rank()).begin;
    // Consecutive owned slices with the same decay setting form one kernel call.
    for (const OwnedSlice& slice : stage->layout().owned_slices(stage->group().rank())) {
      const bool decays = options_.decays(stage->layout().parameters()[slice.parameter_index]);
      if (!state.runs.empty() && state.runs.back().decays == decays &&
          state.runs.back().end == slice.shard_range.begin) {
        state.runs.back().end = slice.shard_range.end;
      } else {
        state.runs.push_back({slice.shard_range.begin, slice.shard_range.end, decays});
      }
    }
    states_.push_back(std::move(state));
  }
}

double ShardedAdamW::global_gradient_norm() const {
  // On a device the per-stage sums stay there (no host synchronisation per
  // stage); the one .item() below reads the all-reduced total.
  const auto options = stages_.front()->weight_shard().options().dtype(at::kDouble);
  at::Tensor total = at::zeros({1}, options);
  double host_sum = 0.0;
  for (std::size_t s = 0; s < stages_.size(); ++s) {
    const at::Tensor data = stages_[s]->gradient_shard().narrow(0, 0, states_[s].data_elements);
    if (data.is_cuda()) {
      total.add_(data.to(at::kDouble).square().sum());
    } else {
      host_sum += kernels::squared_norm_on_host(data.data_ptr<float>(), data.numel());
    }
  }
  if (!total.is_cuda()) total.fill_(host_sum);
  // One float64 all-reduce, on the stages' own group (host or device memory).
  stages_.front()->group().all_reduce(span_of(total), ReduceOp::kSum);
  return std::sqrt(total.item<double>());
}

double ShardedAdamW::step(double learning_rate) {
  const double norm = global_gradient_norm();
  if (!std::isfinite(norm)) return norm;  // skipped, on every rank alike
  // As torch.nn.utils.clip_grad_norm_: scale by min(1, max / (norm + 1e-6)).
  float scale = 1.0f;
  if (options_.max_gradient_norm > 0.0) {
    scale = static_cast<float>(std::min(1.0, options_.max_gradient_norm / (norm + 1e-6)));
  }
  ++steps_taken_;
  const kernels::AdamWHyperparameters hyper{learning_rate, options_.beta1, options_.beta2,
                                            options_.epsilon};
  for (std::size_t s = 0; s < stages_.size(); ++s) {
    Fsdp& stage = *stages_[s];
    StageState& state = states_[s];
    stage.invalidate();  // before writing: an all-gather in flight may read the shard
    const at::Tensor weights = stage.weight_shard().variable_data();
    for (const DecayRun& run : state.runs) {
      const kernels::AdamWArrays arrays{weights.data_ptr<float>() + run.begin,
                                        stage.gradient_shard().data_ptr<float>() + run.begin,
                                        state.exp_avg.data_ptr<float>() + run.begin,
                                        state.exp_avg_sq.data_ptr<float>() + run.begin,
                                        run.end - run.begin};
      const double decay = run.decays ? options_.weight_decay : 0.0;
      if (weights.is_cuda()) {
        // Ordered after the gradients' reduce-scatter: Note [Comm stream ordering].
        kernels::adamw_step_on_device(arrays, hyper, steps_taken_, decay, scale,
                                      stage.group().cuda_compute_stream());
      } else {
        kernels::adamw_step_on_host(arrays, hyper, steps_taken_, decay, scale);
      }
    }
  }
  return norm;
}

std::int64_t ShardedAdamW::state_bytes() const {
  std::int64_t bytes = 0;
  for (const StageState& state : states_) {
    bytes += state.exp_avg.nbytes() + state.exp_avg_sq.nbytes();
  }
  return static_cast<std::int64_t>(bytes);
}

}  // namespace fsdp::stages
