// The MoE router losses (LlamaConfig::router_*_coefficient), checked against
// what no one here wrote and against their own definition:
//   - on the Mixtral and Qwen3-MoE fixtures, sharded at this world size, the
//     balancing loss, the z-loss and the tokens per expert equal what
//     transformers' load_balancing_loss_func and switch_transformers'
//     router_z_loss_func compute from transformers' own router logits
//     (tests/fixtures/hf/make_router_references.py);
//   - their gradients equal central finite differences, in float64;
//   - a batch's losses are the mean of its sequences' (so they do not depend
//     on how sequences are spread over ranks and micro-batches), and uniform
//     router probabilities give the textbook values (k and log(E)^2).
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <ATen/ATen.h>

#include <cmath>

#include "checkpoint_test_support.h"
#include "fsdp/checkpoint/hf_import.h"
#include "fsdp/checkpoint/safetensors_file.h"
#include "fsdp/models/hf_config.h"
#include "fsdp/models/llama.h"
#include "fsdp/models/llama_conversion.h"
#include "fsdp/stages/multi_stage_model.h"
#include "mpi_test_environment.h"

namespace fsdp::models {
namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = FSDP_HF_FIXTURES;

// The auxiliary totals of one training forward of the fixture batch with
// these coefficients.
stages::AuxiliaryTotals fixture_totals(const std::string& fixture, double balance, double z,
                                       const at::Tensor& input_ids) {
  HfModelConfig hf = read_hf_config(kFixtures / fixture);
  hf.model.max_sequence = input_ids.size(1);
  hf.model.router_aux_loss_coefficient = balance;
  hf.model.router_z_loss_coefficient = z;
  stages::MultiStageOptions options;
  options.zero_stage = 3;
  stages::MultiStageModel model(build_llama_layers(hf.model), testing::runtime().process_group(),
                                options);
  checkpoint::import_hf_checkpoint(kFixtures / fixture, llama_conversion_rules(hf.model),
                                   model.stages());
  model.forward_backward(input_ids, [](const at::Tensor& logits) { return logits.sum() * 0; });
  return model.take_auxiliary_totals();
}

TEST(RouterLosses, EqualTransformersOnTheMoeFixtures) {
  for (const std::string fixture : {"mixtral", "qwen3_moe"}) {
    SCOPED_TRACE(fixture);
    const checkpoint::SafetensorsFile batch(kFixtures / fixture / "reference.safetensors");
    const checkpoint::SafetensorsFile expected(kFixtures / fixture /
                                               "router_reference.safetensors");
    const at::Tensor input_ids = testing::read_safetensors_tensor(batch, "input_ids");
    const double balance =
        testing::read_safetensors_tensor(expected, "balance_loss").item<double>();
    const double z = testing::read_safetensors_tensor(expected, "z_loss").item<double>();
    const at::Tensor tokens = testing::read_safetensors_tensor(expected, "expert_tokens");

    const stages::AuxiliaryTotals balance_only = fixture_totals(fixture, 1.0, 0.0, input_ids);
    EXPECT_NEAR(balance_only.loss, balance, 1e-5 * balance);
    const stages::AuxiliaryTotals z_only = fixture_totals(fixture, 0.0, 1.0, input_ids);
    EXPECT_NEAR(z_only.loss, z, 1e-5 * z);
    // Tokens per expert of every MoE layer (a dense layer in between routes nothing).
    std::vector<at::Tensor> ours;
    for (const auto& [layer, counts] : balance_only.expert_tokens) ours.push_back(counts);
    ASSERT_EQ(static_cast<std::int64_t>(ours.size()), tokens.size(0));
    EXPECT_TRUE(at::stack(ours).to(at::kFloat).equal(tokens))
        << at::stack(ours) << " vs transformers' " << tokens;
    if (testing::runtime().rank() == 0) {
      std::printf("[ router   ] %s: balance %.6f (transformers %.6f), z %.6f (%.6f)\n",
                  fixture.c_str(), balance_only.loss, balance, z_only.loss, z);
    }
  }
}

// A tiny MoE Llama bound to float64 tensors of its own (the unsharded
// reference form of the same layers), for exact derivatives.
struct Float64Model {
  explicit Float64Model(const LlamaConfig& config) : layers(build_llama_layers(config)) {
    at::manual_seed(11);
    for (auto& layer : layers) {
      std::vector<at::Tensor> bound;
      for (const ParameterSpec& spec : layer->parameter_specs()) {
        at::Tensor tensor = at::randn(spec.shape, at::kDouble) * 0.5;
        if (spec.name.find("norm") != std::string::npos) tensor = tensor * 0.2 + 1;
        parameters[spec.name] = tensor.requires_grad_(true);
        bound.push_back(parameters[spec.name]);
      }
      layer->bind(bound);
    }
  }
  // The layers' summed auxiliary loss and tokens per expert for `tokens`.
  std::pair<at::Tensor, at::Tensor> auxiliary(const at::Tensor& tokens) {
    at::Tensor activation = tokens;
    at::Tensor loss = at::zeros({}, at::kDouble);
    std::vector<at::Tensor> counts;
    for (auto& layer : layers) {
      activation = layer->forward(activation);
      stages::SideOutputs side = layer->take_side_outputs();
      if (side.auxiliary_loss.defined()) loss = loss + side.auxiliary_loss;
      if (side.expert_tokens.defined()) counts.push_back(side.expert_tokens);
    }
    return {loss, at::stack(counts)};
  }
  std::vector<std::unique_ptr<stages::Layer>> layers;
  std::map<std::string, at::Tensor> parameters;
};

LlamaConfig tiny_moe() {
  LlamaConfig config;
  config.vocabulary = 16;
  config.hidden = 8;
  config.heads = 2;
  config.intermediate = 8;
  config.layers = 2;
  config.max_sequence = 6;
  config.experts = 4;
  config.experts_per_token = 2;
  config.router_aux_loss_coefficient = 0.3;
  config.router_z_loss_coefficient = 0.2;
  return config;
}

at::Tensor tiny_tokens(std::int64_t sequences) {
  return (at::arange(sequences * 6, at::kLong).view({sequences, 6}) * 7 + 3).remainder(16);
}

TEST(RouterLosses, GradientsMatchFiniteDifferences) {
  Float64Model model(tiny_moe());
  const at::Tensor tokens = tiny_tokens(3);
  const auto [loss, counts] = model.auxiliary(tokens);
  ASSERT_GT(loss.item<double>(), 0);
  // Through the router weight, and through the router's input (the attention before it).
  const std::vector<std::string> names = {"decoder.0.mlp.router.weight",
                                          "decoder.1.mlp.router.weight",
                                          "decoder.1.attention.qkv.weight", "embedding.weight"};
  std::vector<at::Tensor> inputs;
  for (const auto& name : names) inputs.push_back(model.parameters.at(name));
  const auto gradients = torch::autograd::grad({loss}, inputs);
  const double step = 1e-6;
  int compared = 0;
  for (std::size_t p = 0; p < names.size(); ++p) {
    at::Tensor flat = model.parameters.at(names[p]).detach().view({-1});
    for (std::int64_t i = 0; i < flat.numel(); i += std::max<std::int64_t>(1, flat.numel() / 7)) {
      const double original = flat[i].item<double>();
      flat[i].fill_(original + step);
      const auto [above, counts_above] = model.auxiliary(tokens);
      flat[i].fill_(original - step);
      const auto [below, counts_below] = model.auxiliary(tokens);
      flat[i].fill_(original);
      // The balancing loss is piecewise smooth: a step that changes the
      // routing crosses an edge, where no derivative exists.
      if (!counts_above.equal(counts) || !counts_below.equal(counts)) continue;
      const double numeric = (above.item<double>() - below.item<double>()) / (2 * step);
      const double analytic = gradients[p].view({-1})[i].item<double>();
      EXPECT_NEAR(analytic, numeric, 1e-6 * std::max(1.0, std::abs(numeric)))
          << names[p] << "[" << i << "]";
      ++compared;
    }
  }
  EXPECT_GE(compared, 20) << "too few entries kept the routing";
}

TEST(RouterLosses, PerSequenceMeanAndTextbookValues) {
  Float64Model model(tiny_moe());
  const at::Tensor tokens = tiny_tokens(4);
  const auto [batch_loss, batch_counts] = model.auxiliary(tokens);
  double mean = 0;
  at::Tensor counts = at::zeros_like(batch_counts);
  for (std::int64_t s = 0; s < 4; ++s) {
    const auto [loss, sequence_counts] = model.auxiliary(tokens.narrow(0, s, 1));
    mean += loss.item<double>() / 4;
    counts += sequence_counts;
  }
  EXPECT_NEAR(batch_loss.item<double>(), mean, 1e-12);
  EXPECT_TRUE(batch_counts.equal(counts));
  // Split 2 + 2, as two ranks would: the mean of the halves is the whole.
  const double halves = (model.auxiliary(tokens.narrow(0, 0, 2)).first.item<double>() +
                         model.auxiliary(tokens.narrow(0, 2, 2)).first.item<double>()) /
                        2;
  EXPECT_NEAR(batch_loss.item<double>(), halves, 1e-12);

  // Uniform probabilities (zero router weights): the balancing loss is k,
  // whatever the routing, and the z-loss log(E)^2, in every layer.
  at::NoGradGuard no_grad;
  for (const char* name : {"decoder.0.mlp.router.weight", "decoder.1.mlp.router.weight"}) {
    model.parameters.at(name).zero_();
  }
  const LlamaConfig config = tiny_moe();
  const double expected =
      config.layers * (config.router_aux_loss_coefficient * config.experts_per_token +
                       config.router_z_loss_coefficient * std::pow(std::log(4.0), 2));
  EXPECT_NEAR(model.auxiliary(tokens).first.item<double>(), expected, 1e-12);
}

}  // namespace
}  // namespace fsdp::models
