// The fused shard AdamW against torch::optim::AdamW on the same parameters,
// gradients and hyperparameters: within 1e-6 after 10 steps (the bound;
// the kernel repeats torch's float32 operations in torch's order, so the
// differences are float32 rounding at most).
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>

#include <ATen/ATen.h>

#include "fsdp/kernels/adamw.h"

namespace fsdp::kernels {
namespace {

TEST(AdamW, MatchesTorchAdamWWithDecayAndNoDecayGroups) {
  at::manual_seed(11);
  const AdamWHyperparameters hyper{1e-2, 0.9, 0.95, 1e-8};
  const double weight_decay = 0.1;
  // Two "parameters" with decay (matrices) and one without (a norm), laid out
  // back to back in one flat shard, as the runtime stores them.
  const std::vector<std::vector<std::int64_t>> shapes = {{33, 17}, {5, 7}, {17}};
  const std::vector<bool> decays = {true, true, false};
  std::vector<at::Tensor> reference;
  std::int64_t total = 0;
  for (const auto& shape : shapes) {
    reference.push_back(at::randn(shape).set_requires_grad(true));
    total += reference.back().numel();
  }
  at::Tensor weights = at::empty({total});
  at::Tensor gradients = at::empty({total});
  at::Tensor exp_avg = at::zeros({total});
  at::Tensor exp_avg_sq = at::zeros({total});
  std::int64_t offset = 0;
  for (const at::Tensor& p : reference) {
    weights.narrow(0, offset, p.numel()).copy_(p.detach().reshape({-1}));
    offset += p.numel();
  }

  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto options = [&](double decay) {
    auto o = std::make_unique<torch::optim::AdamWOptions>(hyper.learning_rate);
    o->betas({hyper.beta1, hyper.beta2}).eps(hyper.epsilon).weight_decay(decay);
    return o;
  };
  groups.emplace_back(std::vector<at::Tensor>{reference[0], reference[1]}, options(weight_decay));
  groups.emplace_back(std::vector<at::Tensor>{reference[2]}, options(0.0));
  torch::optim::AdamW optimizer(groups, torch::optim::AdamWOptions(hyper.learning_rate));

  for (std::int64_t step = 1; step <= 10; ++step) {
    offset = 0;
    for (std::size_t k = 0; k < reference.size(); ++k) {
      const at::Tensor gradient = at::randn(shapes[k]);
      reference[k].mutable_grad() = gradient.clone();
      gradients.narrow(0, offset, gradient.numel()).copy_(gradient.reshape({-1}));
      offset += gradient.numel();
    }
    optimizer.step();
    offset = 0;
    for (std::size_t k = 0; k < reference.size(); ++k) {
      const std::int64_t n = reference[k].numel();
      adamw_step_on_host(
          {weights.data_ptr<float>() + offset, gradients.data_ptr<float>() + offset,
           exp_avg.data_ptr<float>() + offset, exp_avg_sq.data_ptr<float>() + offset, n},
          hyper, step, decays[k] ? weight_decay : 0.0);
      offset += n;
    }
  }
  offset = 0;
  for (const at::Tensor& p : reference) {
    const at::Tensor ours = weights.narrow(0, offset, p.numel()).view(p.sizes());
    EXPECT_LE((ours - p.detach()).abs().max().item<double>(), 1e-6);
    offset += p.numel();
  }
}

TEST(AdamW, GradientScaleIsClippingFusedIntoTheStep) {
  // Scaling the gradient by c inside the kernel equals stepping on c * g.
  const AdamWHyperparameters hyper;
  std::vector<float> w1 = {1, -2, 3}, w2 = w1, m1(3, 0), m2(3, 0), v1(3, 0), v2(3, 0);
  const std::vector<float> g = {0.5f, -4.0f, 8.0f};
  std::vector<float> scaled = g;
  for (float& x : scaled) x *= 0.25f;
  adamw_step_on_host({w1.data(), g.data(), m1.data(), v1.data(), 3}, hyper, 1, 0.01, 0.25f);
  adamw_step_on_host({w2.data(), scaled.data(), m2.data(), v2.data(), 3}, hyper, 1, 0.01);
  EXPECT_EQ(w1, w2);
  EXPECT_EQ(m1, m2);
  EXPECT_THROW(adamw_step_on_host({w1.data(), g.data(), m1.data(), v1.data(), 3}, hyper, 0, 0.0),
               std::invalid_argument);
}

TEST(AdamW, SquaredNormAccumulatesInFloat64) {
  at::manual_seed(12);
  const at::Tensor values = at::randn({300001});
  const double expected = values.to(at::kDouble).square().sum().item<double>();
  EXPECT_NEAR(squared_norm_on_host(values.data_ptr<float>(), values.numel()), expected,
              1e-12 * expected);
  EXPECT_EQ(squared_norm_on_host(nullptr, 0), 0.0);
}

}  // namespace
}  // namespace fsdp::kernels
