// Real HuggingFace architectures against transformers itself. Each fixture in
// tests/fixtures/hf (written by make_fixtures.py with transformers'
// save_pretrained, bfloat16 on disk) is loaded from its config.json alone,
// sharded at this world size under ZeRO 1 and 3, and must
//   - compute transformers' float32 logits on the fixture batch within 1e-4
//     of their largest magnitude (the only differences are float32 rounding
//     in another order of operations: eager attention, fused q/k/v);
//   - export back (no training) to exactly the source's tensors: same names,
//     same dtype, bitwise the same bytes, with a config.json that reads back
//     to the same model.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <fstream>

#include "checkpoint_test_support.h"
#include "fsdp/checkpoint/element_conversion.h"
#include "fsdp/checkpoint/hf_checkpoint.h"
#include "fsdp/checkpoint/hf_import.h"
#include "fsdp/checkpoint/safetensors_file.h"
#include "fsdp/models/hf_config.h"
#include "fsdp/models/hf_model_io.h"
#include "fsdp/models/llama_config_json.h"
#include "fsdp/models/llama_conversion.h"
#include "fsdp/stages/multi_stage_model.h"
#include "mpi_test_environment.h"

namespace fsdp::models {
namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = FSDP_HF_FIXTURES;

std::vector<std::uint8_t> read_bytes(const checkpoint::LocatedTensor& located) {
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(located.entry->bytes()));
  located.file->read_tensor_bytes(*located.entry, 0, bytes.data(), located.entry->bytes());
  return bytes;
}

struct Case {
  std::string fixture;
  int zero_stage;
};

class HfModels : public ::testing::TestWithParam<Case> {};

TEST_P(HfModels, LogitsEqualTransformersAndExportIsBitwise) {
  const Case& c = GetParam();
  const fs::path source = kFixtures / c.fixture;
  const checkpoint::SafetensorsFile reference(source / "reference.safetensors");
  const at::Tensor input_ids = testing::read_safetensors_tensor(reference, "input_ids");
  const at::Tensor expected = testing::read_safetensors_tensor(reference, "logits");

  HfModelConfig hf = read_hf_config(source);
  hf.model.max_sequence = input_ids.size(1);
  stages::MultiStageOptions options;
  options.zero_stage = c.zero_stage;
  auto& runtime = testing::runtime();
  stages::MultiStageModel model(build_llama_layers(hf.model), runtime.process_group(), options);
  checkpoint::import_hf_checkpoint(source, llama_conversion_rules(hf.model), model.stages());

  const at::Tensor logits = model.forward(input_ids);
  ASSERT_EQ(logits.sizes(), expected.sizes());
  const double scale = expected.abs().max().item<double>();
  const double difference = (logits - expected).abs().max().item<double>();
  EXPECT_LE(difference, 1e-4 * scale)
      << c.fixture << ": largest logit difference " << difference << " of " << scale;
  if (runtime.rank() == 0) {
    std::printf("[ logits   ] %s ZeRO-%d: max |ours - transformers| = %.3g (%.3g relative)\n",
                c.fixture.c_str(), c.zero_stage, difference, difference / scale);
  }

  // Export with no training: the source's tensors, bit for bit, in its dtype.
  testing::SharedDirectory scratch(*runtime.process_group(), "hf_models_" + c.fixture);
  const fs::path exported = scratch / "export";
  std::ifstream config_file(source / "config.json");
  const HfExportSource export_source{nlohmann::json::parse(config_file), source};
  export_hf_model(exported, hf.model, export_source, hf_checkpoint_dtype(source), model.stages());
  if (runtime.rank() != 0) return;
  const checkpoint::HfCheckpoint original(source);
  const checkpoint::HfCheckpoint written(exported);
  EXPECT_EQ(written.keys(), original.keys());
  for (const std::string& key : original.keys()) {
    const auto* theirs = original.find(key);
    const auto* ours = written.find(key);
    ASSERT_NE(ours, nullptr) << key;
    EXPECT_EQ(ours->entry->dtype, theirs->entry->dtype) << key;
    EXPECT_EQ(ours->entry->shape, theirs->entry->shape) << key;
    EXPECT_TRUE(read_bytes(*ours) == read_bytes(*theirs)) << key << " differs";
  }
  ASSERT_TRUE(fs::exists(exported / "config.json"));
  ASSERT_TRUE(fs::exists(exported / "generation_config.json"));
  const HfModelConfig round_trip = read_hf_config(exported);
  EXPECT_EQ(round_trip.model_type, hf.model_type);
  EXPECT_EQ(to_json(round_trip.model).dump(), to_json(read_hf_config(source).model).dump());
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const char* fixture :
       {"llama3", "llama_bias", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe"}) {
    for (const int zero_stage : {1, 3}) cases.push_back({fixture, zero_stage});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfModels, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.fixture + "_zero" +
                                  std::to_string(info.param.zero_stage);
                         });

}  // namespace
}  // namespace fsdp::models
