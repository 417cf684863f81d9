#include "bench/adamw_bench.h"

#include "bench/timing.h"

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>

#include "fsdp/kernels/adamw.h"

namespace fsdp::bench {
namespace {

template <typename Operation>
double seconds(Operation&& operation) {
  const auto start = std::chrono::steady_clock::now();
  operation();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::vector<AdamWBenchResult> run_adamw_bench(const std::vector<std::int64_t>& elements,
                                              int iterations) {
  std::vector<AdamWBenchResult> results;
  const kernels::AdamWHyperparameters hyper{1e-3, 0.9, 0.95, 1e-8};
  for (const std::int64_t n : elements) {
    at::Tensor weights = at::randn({n});
    const at::Tensor gradients = at::randn({n});
    at::Tensor exp_avg = at::zeros({n});
    at::Tensor exp_avg_sq = at::zeros({n});

    at::Tensor parameter = at::randn({n}).set_requires_grad(true);
    parameter.mutable_grad() = at::randn({n});
    torch::optim::AdamW optimizer(
        {parameter},
        torch::optim::AdamWOptions(hyper.learning_rate).betas({0.9, 0.95}).weight_decay(0.1));

    // The same bytes the step touches in its four arrays (16 B per element).
    const at::Tensor copy_source = at::randn({4 * n});
    at::Tensor copy_destination = at::empty({4 * n});

    std::vector<double> ours, torch_times, copies;
    std::int64_t step = 0;
    for (int i = 0; i < iterations + 1; ++i) {  // the first round warms up
      const double a = seconds([&] {
        kernels::adamw_step_on_host({weights.data_ptr<float>(), gradients.data_ptr<float>(),
                                     exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(), n},
                                    hyper, ++step, 0.1);
      });
      const double b = seconds([&] { optimizer.step(); });
      const double c = seconds([&] { copy_destination.copy_(copy_source); });
      if (i == 0) continue;
      ours.push_back(a);
      torch_times.push_back(b);
      copies.push_back(c);
    }
    results.push_back({n, median(ours), median(torch_times), median(copies)});
  }
  return results;
}

}  // namespace fsdp::bench
