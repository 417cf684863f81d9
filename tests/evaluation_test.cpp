// The validation loss (fsdp/launch/evaluation.h) at every world size:
//   - for each real HF fixture, loaded from its config.json with no training,
//     the loss over the fixture's token windows equals the loss transformers
//     computed on them (make_fixtures.py), whatever the rows per forward --
//     including world sizes where some ranks only compute padding;
//   - on a dataset whose windows do not divide evenly, it equals the mean
//     token loss of one forward of the whole set, for any rows per forward.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "checkpoint_test_support.h"
#include "fsdp/checkpoint/hf_import.h"
#include "fsdp/checkpoint/safetensors_file.h"
#include "fsdp/data/token_dataset.h"
#include "fsdp/launch/evaluation.h"
#include "fsdp/models/hf_config.h"
#include "fsdp/models/llama_conversion.h"
#include "fsdp/stages/multi_stage_model.h"
#include "mpi_test_environment.h"
#include "token_file_support.h"

namespace fsdp::launch {
namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = FSDP_HF_FIXTURES;

// Token ids [rows, length] as one int64 .npy file, written by rank 0.
void write_tokens(const testing::SharedDirectory& directory, const std::string& name,
                  const at::Tensor& ids) {
  auto& group = *testing::runtime().process_group();
  if (group.rank() == 0) {
    const auto flat = ids.to(at::kLong).contiguous().reshape({-1});
    const std::vector<std::int64_t> values(flat.data_ptr<std::int64_t>(),
                                           flat.data_ptr<std::int64_t>() + flat.numel());
    testing::write_npy(directory / name, values, "<i8");
  }
  group.barrier();
}

class EvaluationOnFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(EvaluationOnFixture, EqualsTransformersLoss) {
  const fs::path source = kFixtures / GetParam();
  const checkpoint::SafetensorsFile reference(source / "reference.safetensors");
  const at::Tensor input_ids = testing::read_safetensors_tensor(reference, "input_ids");  // [2, 16]
  const double expected = testing::read_safetensors_tensor(reference, "loss").item<double>();

  auto& runtime = testing::runtime();
  testing::SharedDirectory directory(*runtime.process_group(), "evaluation_" + GetParam());
  write_tokens(directory, "eval.npy", input_ids);
  // Windows of 16: transformers predicts tokens 1-15 of each row from the ones before.
  const auto data = data::TokenDataset::open(directory / "eval.npy", std::nullopt, 16);
  ASSERT_EQ(data.windows(), 2);

  models::HfModelConfig hf = models::read_hf_config(source);
  hf.model.max_sequence = 15;
  stages::MultiStageModel model(models::build_llama_layers(hf.model), runtime.process_group(),
                                stages::MultiStageOptions{});
  checkpoint::import_hf_checkpoint(source, models::llama_conversion_rules(hf.model),
                                   model.stages());
  for (const std::int64_t rows : {1, 2}) {
    const auto result =
        evaluate_next_token_loss(model, data, rows, *runtime.host_group(), c10::kCPU);
    EXPECT_EQ(result.windows, 2);
    EXPECT_EQ(result.predicted_tokens, 30);
    EXPECT_NEAR(result.loss, expected, 1e-5 * expected)
        << GetParam() << ", " << rows << " row(s) per forward";
    if (runtime.rank() == 0 && rows == 1) {
      std::printf("[ eval     ] %s: %.7f, transformers %.7f\n", GetParam().c_str(), result.loss,
                  expected);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EvaluationOnFixture,
                         ::testing::Values("llama3", "llama_bias", "mistral", "qwen2", "qwen3",
                                           "mixtral", "qwen3_moe"));

TEST(Evaluation, IndependentOfRowsPerForwardAndWorldSize) {
  auto& runtime = testing::runtime();
  models::LlamaConfig config;
  config.vocabulary = 64;
  config.hidden = 32;
  config.heads = 2;
  config.intermediate = 48;
  config.layers = 2;
  config.max_sequence = 12;
  stages::MultiStageModel model(models::build_llama_layers(config), runtime.process_group(),
                                stages::MultiStageOptions{});
  model.initialize_weights(5);
  // 37 windows of 13 and 5 tokens left over: rounds never divide evenly.
  // Deterministic ids, the same on every rank.
  const auto ids = at::arange(37 * 13 + 5, at::kLong).mul(7919).remainder(64).view({1, -1});
  testing::SharedDirectory directory(*runtime.process_group(), "evaluation_invariance");
  write_tokens(directory, "eval.npy", ids);
  const auto data = data::TokenDataset::open(directory / "eval.npy", std::nullopt, 13);
  ASSERT_EQ(data.windows(), 37);

  // The reference: one forward of all 37 windows, the mean of its token losses.
  const auto windows = ids.narrow(1, 0, 37 * 13).view({37, 13});
  const auto logits = model.forward(windows.narrow(1, 0, 12));
  const double expected =
      at::cross_entropy_loss(logits.reshape({-1, 64}), windows.narrow(1, 1, 12).reshape({-1}))
          .item<double>();
  for (const std::int64_t rows : {1, 3, 8, 40}) {
    const auto result =
        evaluate_next_token_loss(model, data, rows, *runtime.host_group(), c10::kCPU);
    EXPECT_EQ(result.predicted_tokens, 37 * 12);
    EXPECT_NEAR(result.loss, expected, 1e-6 * expected) << rows << " row(s) per forward";
  }
}

}  // namespace
}  // namespace fsdp::launch
