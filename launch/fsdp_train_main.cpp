// fsdp-train. Until the training loop exists (the stages issue), this runs
// the demonstration of the core: one stage's weights sharded over the ranks,
// what a parameter read before restore does, what the inspector reads from
// the shards, and the restore that makes the parameters real.
//
//   mpirun -np 4 build/bin/fsdp-train [--hidden 64] [--compute-dtype float32]
#include <ATen/ATen.h>

#include <iostream>
#include <sstream>

#include "fsdp/fsdp.h"
#include "fsdp/inspector.h"
#include "fsdp/torch_interop.h"
#include "launch/program.h"

namespace po = boost::program_options;

namespace {

// The demo stage: one decoder layer of a small mixture-of-experts model, with
// the transformers-5 fused expert layout.
std::vector<fsdp::ParameterSpec> demo_stage(std::int64_t hidden, std::int64_t experts) {
  const std::int64_t intermediate = 2 * hidden;
  return {
      {"decoder.0.input_norm.weight", {hidden}},
      {"decoder.0.attention.qkv.weight", {3 * hidden, hidden}},
      {"decoder.0.attention.dense.weight", {hidden, hidden}},
      {"decoder.0.mlp.router.weight", {experts, hidden}},
      {"decoder.0.mlp.router.bias", {experts}},
      {"decoder.0.mlp.experts.gate_up_proj", {experts, 2 * intermediate, hidden}},
      {"decoder.0.mlp.experts.down_proj", {experts, hidden, intermediate}},
  };
}

// Writes this rank's shard with values that depend only on (parameter,
// element index), so every world size holds the same model: parameter p's
// element i is (p + 1) + ((i % 17) - 8) / 16, exact in float32 and bfloat16.
void fill_demo_weights(fsdp::Fsdp& stage) {
  const fsdp::FlatLayout& layout = stage.layout();
  for (const fsdp::OwnedSlice& slice : layout.owned_slices(stage.group().rank())) {
    at::Tensor index =
        at::arange(slice.parameter_range.begin, slice.parameter_range.end, at::kLong);
    at::Tensor values = (index.remainder(17) - 8)
                            .to(at::kFloat)
                            .div(16)
                            .add(static_cast<double>(slice.parameter_index + 1));
    stage.weight_shard().narrow(0, slice.shard_range.begin, slice.shard_range.size()).copy_(values);
  }
  stage.invalidate();
}

std::string statistics_line(const fsdp::ParameterStatistics& s) {
  std::ostringstream line;
  line << "numel " << s.numel << "  mean " << s.mean << "  std " << s.std << "  min " << s.min
       << "  max " << s.max << "  nonzero " << s.nonzero_count << "  nan " << s.nan_count;
  return line.str();
}

int run_demo(fsdp::launch::Runtime& runtime, const po::variables_map& values) {
  const bool root = runtime.rank() == 0;
  fsdp::FsdpOptions options;
  options.compute_dtype = fsdp::scalar_type_of(
      values["compute-dtype"].as<std::string>() == "bfloat16" ? fsdp::ElementType::kBFloat16
                                                              : fsdp::ElementType::kFloat32);
  if (runtime.cuda_device() >= 0 && runtime.uses_nccl()) {
    options.device = c10::Device(c10::DeviceType::CUDA, runtime.cuda_device());
  }
  fsdp::Fsdp stage(
      "decoder.0",
      demo_stage(values["hidden"].as<std::int64_t>(), values["experts"].as<std::int64_t>()),
      runtime.process_group(), options);
  fill_demo_weights(stage);
  const std::string name = values["inspect"].as<std::string>();
  const fsdp::FlatLayout& layout = stage.layout();
  if (root) {
    std::cout << "fsdp-train (core demo): " << runtime.describe() << "\n"
              << "stage '" << stage.stage_name() << "': " << layout.parameters().size()
              << " parameters, " << layout.unpadded_numel() << " elements, shard "
              << layout.shard_numel() << " per rank, compute dtype "
              << c10::toString(options.compute_dtype) << "\n\n"
              << "where " << fsdp::describe_placements(layout, name) << "\n";
  }

  // 1. Before restore: the parameter's view of the buffer is not the weights
  //    (zeros, unless this rank's own slice aliases its shard), and reading it
  //    through the stage's accessor says so instead of returning it.
  const at::Tensor unchecked_view = stage.parameter_views()[layout.parameter_index(name)];
  const std::int64_t view_zeros =
      unchecked_view.numel() - unchecked_view.detach().count_nonzero().item<std::int64_t>();
  std::string refusal;
  try {
    stage.parameter(name);
  } catch (const fsdp::NotRestoredError& error) {
    refusal = error.what();
  }
  // 2. The inspector reads the truth from the shards, buffer untouched.
  const fsdp::ParameterStatistics truth = fsdp::parameter_statistics(stage, name);
  const at::Tensor true_values = fsdp::read_parameter(stage, name);
  if (root) {
    std::cout << "before restore_parameters():\n  rank 0's view of the unrestored buffer: "
              << view_zeros << " of " << unchecked_view.numel() << " elements are zero\n"
              << "  stage.parameter() refuses: " << refusal
              << "\n  inspector (from the shards): " << statistics_line(truth) << "\n\n";
  }

  // 3. Restore: the view now holds exactly the inspector's values.
  stage.restore_parameters();
  const at::Tensor restored = stage.parameter(name).detach().cpu().to(true_values.scalar_type());
  const bool equal =
      restored.equal(true_values.to(stage.options().compute_dtype).to(true_values.scalar_type()));
  if (root) {
    std::cout << "after restore_parameters():\n  parameter view: "
              << statistics_line(fsdp::merge_statistics({fsdp::partial_statistics(restored)}))
              << "\n  equal to the inspector's values (in the compute dtype): "
              << (equal ? "yes" : "NO") << std::endl;
  }
  if (refusal.empty()) throw std::runtime_error("the unrestored parameter was not refused");
  if (!equal) throw std::runtime_error("restored parameter '" + name + "' differs from the shards");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  po::options_description options("Demo");
  options.add_options()("hidden", po::value<std::int64_t>()->default_value(64),
                        "hidden size of the demo layer")(
      "experts", po::value<std::int64_t>()->default_value(4), "number of experts")(
      "compute-dtype",
      po::value<std::string>()->default_value("bfloat16")->notifier([](const std::string& dtype) {
        if (dtype != "float32" && dtype != "bfloat16") {
          throw po::invalid_option_value("--compute-dtype " + dtype +
                                         " (expected float32 or bfloat16)");
        }
      }),
      "dtype of the weight buffer (the parameters); the shards are float32")(
      "inspect", po::value<std::string>()->default_value("decoder.0.mlp.router.bias"),
      "the parameter to show");
  return fsdp::launch::run_program(
      argc, argv,
      {"fsdp-train",
       "trains a model with sharded weights (for now: a demonstration of restore and inspect)",
       "mpirun -np N fsdp-train [options]"},
      options, run_demo);
}
