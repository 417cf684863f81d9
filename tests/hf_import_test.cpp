// HF checkpoints in and out of the shards, at every world size: bitwise round
// trips, fused experts and stacked layers against tensors assembled by hand,
// transposed/reshaped/low-precision sources, and the strict errors.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <chrono>
#include <csignal>

#include "checkpoint_test_support.h"
#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/element_conversion.h"
#include "fsdp/checkpoint/hf_export.h"
#include "fsdp/checkpoint/hf_import.h"
#include "fsdp/checkpoint/load_verification.h"
#include "fsdp/models/llama_conversion.h"
#include "mpi_test_environment.h"

namespace fsdp::testing {
namespace {

using checkpoint::ConversionRule;
using checkpoint::ConversionRules;

// Small files, so that exports are sharded with an index.
checkpoint::ExportOptions sharded_export() {
  checkpoint::ExportOptions options;
  options.max_file_bytes = 16 << 10;
  return options;
}

class HfImportTest : public ::testing::TestWithParam<models::LlamaConfig> {};

TEST_P(HfImportTest, ExportImportExportIsBitwise) {
  auto group = runtime().process_group();
  SharedDirectory directory(*group, "hf_round_trip");
  const auto config = GetParam();
  const auto rules = models::llama_conversion_rules(config);
  auto original = build_model(config, group);
  original->initialize_weights(11);
  checkpoint::export_hf_checkpoint(directory / "first", rules, original->stages(),
                                   sharded_export());
  ASSERT_TRUE(fs::exists(directory / "first" / "model.safetensors.index.json"));

  auto loaded = build_model(config, group, 2);  // another stage split: the layout does not matter
  loaded->initialize_weights(99);
  const auto report =
      checkpoint::import_hf_checkpoint(directory / "first", rules, loaded->stages());
  const auto expected = all_parameters(*original);
  const auto actual = all_parameters(*loaded);
  ASSERT_EQ(expected.size(), actual.size());
  for (const auto& [name, value] : expected) {
    EXPECT_TRUE(at::equal(value, actual.at(name))) << name;
  }
  // Every checkpoint byte read about once over all ranks (headers: once per rank).
  EXPECT_GE(report.bytes_read_all_ranks, report.checkpoint_bytes);
  EXPECT_LE(report.bytes_read_all_ranks, report.checkpoint_bytes + group->size() * (64 << 10));

  checkpoint::export_hf_checkpoint(directory / "second", rules, loaded->stages(), sharded_export());
  std::size_t files = 0;
  for (const auto& entry : fs::directory_iterator(directory / "first")) {
    ++files;
    EXPECT_EQ(file_bytes(entry.path()), file_bytes(directory / "second" / entry.path().filename()))
        << entry.path().filename();
  }
  EXPECT_GT(files, 2u);
}

INSTANTIATE_TEST_SUITE_P(Llama, HfImportTest,
                         ::testing::Values(small_llama(), small_llama(4), small_llama(4, true),
                                           small_llama(0, false, true), small_llama(4, true, true)),
                         [](const auto& info) {
                           const auto& c = info.param;
                           return std::string(c.experts ? "moe" : "dense") +
                                  (c.tie_embeddings ? "_tied" : "") +
                                  (c.stacked_layers ? "_stacked" : "");
                         });

// The per-expert tensors of an exported MoE model, read back from the files.
struct MoeFixture {
  std::shared_ptr<ProcessGroup> group = runtime().process_group();
  models::LlamaConfig config = small_llama(4);
  std::unique_ptr<stages::MultiStageModel> model = build_model(config, group);
  std::map<std::string, at::Tensor> files;

  explicit MoeFixture(const fs::path& directory) {
    model->initialize_weights(5);
    checkpoint::export_hf_checkpoint(directory, models::llama_conversion_rules(config),
                                     model->stages());
    files = read_hf_tensors(directory);
  }
  at::Tensor file(int layer, const std::string& suffix) const {
    return files.at("model.layers." + std::to_string(layer) + "." + suffix);
  }
  at::Tensor expert(int layer, int e, const std::string& what) const {
    return file(layer, "mlp.experts." + std::to_string(e) + "." + what + ".weight");
  }
};

TEST(HfImport, FusedExpertsEqualAManualConcatenationAndLoadFusedFromDiskToo) {
  auto group = runtime().process_group();
  SharedDirectory directory(*group, "hf_fused");
  MoeFixture fixture(directory / "per_expert");
  auto loaded = build_model(fixture.config, group);
  checkpoint::import_hf_checkpoint(
      directory / "per_expert", models::llama_conversion_rules(fixture.config), loaded->stages());
  const auto values = all_parameters(*loaded);
  std::map<std::string, at::Tensor> fused_files = fixture.files;
  for (int layer = 0; layer < 2; ++layer) {
    std::vector<at::Tensor> gate_up, down;
    for (int e = 0; e < 4; ++e) {
      gate_up.push_back(
          at::cat({fixture.expert(layer, e, "gate_proj"), fixture.expert(layer, e, "up_proj")}, 0));
      down.push_back(fixture.expert(layer, e, "down_proj"));
      for (const char* what : {"gate_proj", "up_proj", "down_proj"}) {
        fused_files.erase("model.layers." + std::to_string(layer) + ".mlp.experts." +
                          std::to_string(e) + "." + what + ".weight");
      }
    }
    const auto prefix = "decoder." + std::to_string(layer) + ".mlp.experts.";
    EXPECT_TRUE(at::equal(values.at(prefix + "gate_up_proj"), at::stack(gate_up)));
    EXPECT_TRUE(at::equal(values.at(prefix + "down_proj"), at::stack(down)));
    const auto hf = "model.layers." + std::to_string(layer) + ".mlp.experts.";
    fused_files[hf + "gate_up_proj"] = at::stack(gate_up);
    fused_files[hf + "down_proj"] = at::stack(down);
  }
  if (group->rank() == 0) {
    fs::create_directories(directory / "fused");
    write_hf_file(directory / "fused" / "model.safetensors", fused_files);
  }
  group->barrier();
  auto from_fused = build_model(fixture.config, group);
  checkpoint::import_hf_checkpoint(
      directory / "fused", models::llama_conversion_rules(fixture.config), from_fused->stages());
  for (const auto& [name, value] : all_parameters(*from_fused))
    EXPECT_TRUE(at::equal(value, values.at(name))) << name;
}

TEST(HfImport, StackedLayersEqualThePerLayerTensors) {
  auto group = runtime().process_group();
  SharedDirectory directory(*group, "hf_stacked");
  MoeFixture fixture(directory / "per_layer");
  auto stacked_config = fixture.config;
  stacked_config.stacked_layers = true;
  auto stacked = build_model(stacked_config, group);
  checkpoint::import_hf_checkpoint(
      directory / "per_layer", models::llama_conversion_rules(stacked_config), stacked->stages());
  const auto values = all_parameters(*stacked);
  const auto qkv = values.at("decoder.attention.qkv.weight");
  const auto gate_up = values.at("decoder.mlp.experts.gate_up_proj");
  ASSERT_EQ(qkv.sizes(), (at::IntArrayRef{2, 48, 16}));
  for (int layer = 0; layer < 2; ++layer) {
    EXPECT_TRUE(at::equal(qkv[layer], at::cat({fixture.file(layer, "self_attn.q_proj.weight"),
                                               fixture.file(layer, "self_attn.k_proj.weight"),
                                               fixture.file(layer, "self_attn.v_proj.weight")})));
    EXPECT_TRUE(at::equal(values.at("decoder.mlp_norm.weight")[layer],
                          fixture.file(layer, "post_attention_layernorm.weight")));
    for (int e = 0; e < 4; ++e) {
      EXPECT_TRUE(at::equal(gate_up[layer][e], at::cat({fixture.expert(layer, e, "gate_proj"),
                                                        fixture.expert(layer, e, "up_proj")})));
    }
  }
}

// A stage built from hand-made parameters and rules: transposes (also
// stacked), a reshape, concatenation along an inner dimension, bf16 and fp16
// sources, and a float8 one.
TEST(HfImport, TransposedReshapedInnerConcatenatedAndLowPrecisionSourcesLoad) {
  auto group = runtime().process_group();
  SharedDirectory directory(*group, "hf_transpose");
  const auto integers = [](std::vector<std::int64_t> shape, int offset) {
    std::int64_t numel = 1;
    for (auto d : shape) numel *= d;
    return (at::arange(numel, at::kFloat) + offset).reshape(shape);
  };
  std::map<std::string, at::Tensor> files = {
      {"w", integers({6, 4}, 0)},  // stored [in, out]
      {"v.0", integers({5, 3}, 100)},
      {"v.1", integers({5, 3}, 200)},
      {"r", integers({3, 4}, 300)},  // reshaped to [12]
      {"left", integers({4, 2}, 400)},
      {"right", integers({4, 3}, 500)},  // concat along dim 1
      {"half", integers({8}, -4).to(at::kHalf)},
      {"brain", integers({8}, 8).to(at::kBFloat16)},
  };
  if (group->rank() == 0) write_hf_file(directory / "custom.safetensors", files);
  group->barrier();
  std::vector<ParameterSpec> specs = {{"W", {4, 6}},  {"V", {2, 3, 5}}, {"R", {12}},
                                      {"LR", {4, 5}}, {"H", {8}},       {"B", {8}}};
  ConversionRules rules;
  rules.rules = {ConversionRule::rename("W", "w").transposed(),
                 ConversionRule::rename("V", "v.{i}").stack_over("i").transposed(),
                 ConversionRule::reshaped("R", "r", {3, 4}),
                 ConversionRule::concatenate("LR", {"left", "right"}, 1),
                 ConversionRule::rename("H", "half"),
                 ConversionRule::rename("B", "brain")};
  FsdpOptions options;
  options.alignment = 1;  // odd shard boundaries cut through rows
  Fsdp stage("custom", specs, group, options);
  checkpoint::ImportOptions import_options;
  import_options.chunk_bytes = 12;  // many chunks, and transposes a row at a time
  int progress_calls = 0;
  import_options.progress = [&](const checkpoint::LoadProgress& progress) {
    ++progress_calls;
    EXPECT_LE(progress.bytes_done, progress.bytes_total);
  };
  checkpoint::import_hf_checkpoint(directory / "custom.safetensors", rules, {&stage},
                                   import_options);
  EXPECT_GE(progress_calls, 1);
  EXPECT_TRUE(at::equal(read_parameter(stage, "W"), files["w"].t()));
  EXPECT_TRUE(
      at::equal(read_parameter(stage, "V"), at::stack({files["v.0"].t(), files["v.1"].t()})));
  EXPECT_TRUE(at::equal(read_parameter(stage, "R"), files["r"].reshape({12})));
  EXPECT_TRUE(at::equal(read_parameter(stage, "LR"), at::cat({files["left"], files["right"]}, 1)));
  EXPECT_TRUE(at::equal(read_parameter(stage, "H"), files["half"].to(at::kFloat)));
  EXPECT_TRUE(at::equal(read_parameter(stage, "B"), files["brain"].to(at::kFloat)));

  // And back: the export stores each tensor as the rules say (transposed back).
  checkpoint::ExportOptions export_options;
  export_options.dtype = checkpoint::SafetensorsDtype::kFloat32;
  // Without the uneven concatenation (2 + 3 columns), which export cannot split.
  rules.rules.erase(rules.rules.begin() + 3);
  std::vector<ParameterSpec> exportable(specs.begin(), specs.end());
  exportable.erase(exportable.begin() + 3);
  Fsdp export_stage("custom", exportable, group, options);
  for (const auto& spec : exportable)
    export_stage.load_parameter(spec.name, read_parameter(stage, spec.name));
  checkpoint::export_hf_checkpoint(directory / "exported", rules, {&export_stage}, export_options);
  const auto written = read_hf_tensors(directory / "exported");
  for (const char* key : {"w", "v.0", "v.1", "r"})
    EXPECT_TRUE(at::equal(written.at(key), files[key])) << key;
  EXPECT_TRUE(at::equal(written.at("half"), files["half"].to(at::kFloat)));
}

// --- strict errors, on every rank, naming the key and the file -----------------

struct BrokenCheckpoint {
  std::shared_ptr<ProcessGroup> group = runtime().process_group();
  SharedDirectory directory{*group, "hf_broken"};
  models::LlamaConfig config = small_llama(4);

  // Exports `source_config`'s model, then lets rank 0 edit the tensors.
  template <typename Edit>
  fs::path make(const models::LlamaConfig& source_config, Edit edit) {
    auto model = build_model(source_config, group);
    model->initialize_weights(3);
    checkpoint::export_hf_checkpoint(
        directory / "export", models::llama_conversion_rules(source_config), model->stages());
    if (group->rank() == 0) {
      auto tensors = read_hf_tensors(directory / "export");
      edit(tensors);
      fs::create_directories(directory / "edited");
      write_hf_file(directory / "edited" / "model.safetensors", tensors);
    }
    group->barrier();
    return directory / "edited";
  }
  void expect_import_error(const fs::path& path, const models::LlamaConfig& target,
                           const std::vector<std::string>& parts) {
    auto model = build_model(target, group);
    expect_error_on_every_rank(
        [&] {
          checkpoint::import_hf_checkpoint(path, models::llama_conversion_rules(target),
                                           model->stages());
        },
        parts);
  }
};

TEST(HfImportErrors, MissingExpertNamesTheKeyAndTheFile) {
  BrokenCheckpoint broken;
  const auto path = broken.make(broken.config, [](auto& tensors) {
    tensors.erase("model.layers.1.mlp.experts.2.up_proj.weight");
  });
  broken.expect_import_error(
      path, broken.config,
      {"missing tensor \"model.layers.1.mlp.experts.2.up_proj.weight\"", "model.safetensors",
       "decoder.1.mlp.experts.gate_up_proj", "expert 2"});
}

TEST(HfImportErrors, ExtraTensorIsRefusedUnlessIgnored) {
  BrokenCheckpoint broken;
  const auto path = broken.make(broken.config, [](auto& tensors) {
    tensors["model.layers.0.mlp.shared_expert.weight"] = at::zeros({2});
  });
  broken.expect_import_error(
      path, broken.config, {"no conversion rule uses", "model.layers.0.mlp.shared_expert.weight"});
  auto model = build_model(broken.config, broken.group);
  auto rules = models::llama_conversion_rules(broken.config);
  rules.ignored.push_back(".*shared_expert.*");
  checkpoint::import_hf_checkpoint(path, rules, model->stages());
}

TEST(HfImportErrors, MoreLayersInTheCheckpointThanInTheModel) {
  BrokenCheckpoint broken;
  const auto path = broken.make(small_llama(4, false, false, 3), [](auto&) {});
  broken.expect_import_error(path, broken.config, {"model.layers.2.", "more layers or experts"});
}

TEST(HfImportErrors, FewerLayersInTheCheckpointThanInTheModel) {
  BrokenCheckpoint broken;
  const auto path = broken.make(broken.config, [](auto&) {});
  broken.expect_import_error(path, small_llama(4, false, true, 3),
                             {"missing tensor \"model.layers.2.", "layer 2"});
}

TEST(HfImportErrors, ShapeMismatchNamesBothSides) {
  BrokenCheckpoint broken;
  const auto path = broken.make(broken.config, [](auto& tensors) {
    tensors["model.layers.0.self_attn.o_proj.weight"] = at::zeros({16, 15});
  });
  broken.expect_import_error(
      path, broken.config,
      {"model.safetensors: tensor \"model.layers.0.self_attn.o_proj.weight\" "
       "has shape [16, 15]",
       "decoder.0.attention.dense.weight", "[16, 16]"});
}

TEST(HfImportErrors, IntegerTensorForAFloatParameter) {
  BrokenCheckpoint broken;
  const auto path = broken.make(broken.config, [](auto& tensors) {
    tensors["model.norm.weight"] = at::ones({16}, at::kInt);
  });
  broken.expect_import_error(path, broken.config,
                             {"model.norm.weight\" has dtype I32", "final_norm.weight"});
}

TEST(HfImportErrors, NanInTheCheckpointIsReportedAndTheShardsArePoisoned) {
  BrokenCheckpoint broken;
  const auto path = broken.make(broken.config, [](auto& tensors) {
    tensors["model.norm.weight"][3] = std::numeric_limits<float>::quiet_NaN();
  });
  broken.expect_import_error(path, broken.config,
                             {"model.norm.weight\" holds NaN", "final_norm.weight"});

  // A failed load leaves no shard that looks like weights.
  auto model = build_model(broken.config, broken.group);
  model->initialize_weights(5);
  const auto rules = models::llama_conversion_rules(broken.config);
  // A CheckpointError on every rank, whichever rank found the NaN.
  EXPECT_THROW(checkpoint::import_hf_checkpoint(path, rules, model->stages()),
               checkpoint::CheckpointError);
  for (auto* stage : model->stages()) {
    const auto padding = stage->layout().padding_in_shard(stage->group().rank());
    const auto shard = stage->weight_shard();
    EXPECT_TRUE(shard.narrow(0, 0, padding.begin).isnan().all().item<bool>())
        << stage->stage_name();
    EXPECT_EQ(shard.narrow(0, padding.begin, padding.size()).count_nonzero().item<std::int64_t>(),
              0);
  }

  // Asked to, the load accepts it, NaN and all.
  checkpoint::ImportOptions accept_nan;
  accept_nan.reject_nan = false;
  checkpoint::import_hf_checkpoint(path, rules, model->stages(), accept_nan);
  const auto loaded = all_parameters(*model);
  EXPECT_TRUE(std::isnan(loaded.at("final_norm.weight")[3].item<float>()));
  EXPECT_EQ(loaded.at("final_norm.weight").isnan().sum().item<std::int64_t>(), 1);
}

TEST(HfImportErrors, NanIsFoundInEveryFloatingDtypeOnDisk) {
  // The check reads the stored bits; one NaN (and infinities, which are not
  // NaN) in each dtype a checkpoint may hold.
  using checkpoint::SafetensorsDtype;
  const std::vector<std::pair<SafetensorsDtype, at::ScalarType>> dtypes = {
      {SafetensorsDtype::kFloat64, at::kDouble},
      {SafetensorsDtype::kFloat32, at::kFloat},
      {SafetensorsDtype::kFloat16, at::kHalf},
      {SafetensorsDtype::kBFloat16, at::kBFloat16}};
  for (const auto& [dtype, type] : dtypes) {
    auto values = at::randn({1000}).to(type);
    values[10] = std::numeric_limits<double>::infinity();
    values[11] = -std::numeric_limits<double>::infinity();
    EXPECT_EQ(checkpoint::count_nan(values.data_ptr(), dtype, values.numel()), 0);
    values[500] = std::numeric_limits<double>::quiet_NaN();
    values[999] = -std::numeric_limits<double>::quiet_NaN();
    EXPECT_EQ(checkpoint::count_nan(values.data_ptr(), dtype, values.numel()), 2);
  }
  // float8: e4m3fn has NaN at S.1111.111 only (0x7e is 448); e5m2 is a half's upper byte.
  const std::uint8_t e4m3[] = {0x7e, 0xfe, 0x7f, 0xff, 0x00, 0x78};
  EXPECT_EQ(checkpoint::count_nan(e4m3, SafetensorsDtype::kFloat8E4M3, 6), 2);
  const std::uint8_t e5m2[] = {0x7c, 0xfc, 0x7d, 0xff, 0x3c, 0x7b};  // inf, -inf, NaN, NaN
  EXPECT_EQ(checkpoint::count_nan(e5m2, SafetensorsDtype::kFloat8E5M2, 6), 2);
  const std::int32_t integers[] = {-1, 0x7fffffff};
  EXPECT_EQ(checkpoint::count_nan(integers, SafetensorsDtype::kInt32, 2), 0);
}

// The exact-coverage check itself, fed writes no correct plan would make.
TEST(LoadVerification, RefusesOverlapsGapsAndWritesOutsideTheParameter) {
  auto group = runtime().process_group();
  const auto config = small_llama();
  auto model = build_model(config, group);
  auto* stage = model->stages().front();
  const auto slices = stage->layout().owned_slices(group->rank());
  ASSERT_FALSE(slices.empty());
  const auto& first = slices.front();
  const auto record_all_but = [&](checkpoint::LoadVerification& verification, std::size_t skipped) {
    for (std::size_t i = 0; i < slices.size(); ++i) {
      if (i == skipped) continue;
      verification.record(0, slices[i].parameter_index, slices[i].shard_range.begin,
                          slices[i].shard_range.size());
    }
  };
  const auto name = stage->layout().parameters()[first.parameter_index].name;
  {  // complete: passes, also written in two halves
    checkpoint::LoadVerification verification({stage});
    record_all_but(verification, 0);
    const auto half = first.shard_range.size() / 2;
    verification.record(0, first.parameter_index, first.shard_range.begin + half,
                        first.shard_range.size() - half);
    verification.record(0, first.parameter_index, first.shard_range.begin, half);
    EXPECT_NO_THROW(verification.verify_local("test"));
    EXPECT_NO_THROW(verification.verify_global("test"));
  }
  {  // a gap: the first element never written
    checkpoint::LoadVerification verification({stage});
    record_all_but(verification, 0);
    verification.record(0, first.parameter_index, first.shard_range.begin + 1,
                        first.shard_range.size() - 1);
    expect_error_on_every_rank([&] { verification.verify_local("test"); },
                               {name, "owns " + std::to_string(first.shard_range.size()),
                                std::to_string(first.shard_range.size() - 1) + " were written"});
  }
  {  // an overlap with the same count: one element twice, another never
    checkpoint::LoadVerification verification({stage});
    record_all_but(verification, 0);
    verification.record(0, first.parameter_index, first.shard_range.begin, 2);
    verification.record(0, first.parameter_index, first.shard_range.begin + 1,
                        first.shard_range.size() - 2);
    expect_error_on_every_rank([&] { verification.verify_local("test"); }, {name, "written twice"});
  }
  if (slices.size() > 1) {  // the first parameter's elements written for the second
    checkpoint::LoadVerification verification({stage});
    record_all_but(verification, 0);
    verification.record(0, slices[1].parameter_index, first.shard_range.begin,
                        first.shard_range.size());
    expect_error_on_every_rank([&] { verification.verify_local("test"); }, {"does not own them"});
  }
}

TEST(HfImportErrors, IndexPointingAtAMissingFile) {
  BrokenCheckpoint broken;
  auto model = build_model(broken.config, broken.group);
  const auto rules = models::llama_conversion_rules(broken.config);
  checkpoint::export_hf_checkpoint(broken.directory / "sharded", rules, model->stages(),
                                   sharded_export());
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(broken.directory / "sharded")) {
    files.push_back(entry.path().filename().string());
  }
  std::sort(files.begin(), files.end());  // model-00001..., model.safetensors.index.json
  ASSERT_GT(files.size(), 2u);
  broken.group->barrier();
  if (broken.group->rank() == 0) fs::remove(broken.directory / "sharded" / files[1]);
  broken.group->barrier();
  broken.expect_import_error(broken.directory / "sharded", broken.config,
                             {"model.safetensors.index.json", files[1], "does not exist"});
}

TEST(HfImportErrors, CorruptFileInADirectory) {
  BrokenCheckpoint broken;
  if (broken.group->rank() == 0) {
    fs::create_directories(broken.directory / "corrupt");
    std::ofstream(broken.directory / "corrupt" / "model.safetensors")
        << "not a safetensors file at all";
  }
  broken.group->barrier();
  broken.expect_import_error(broken.directory / "corrupt", broken.config,
                             {"model.safetensors", "header length"});
  broken.expect_import_error(broken.directory / "nowhere", broken.config,
                             {"nowhere", "no such file"});
}

TEST(HfExportErrors, NeverReplacesADirectoryThatIsNotACheckpoint) {
  BrokenCheckpoint broken;
  const auto precious = broken.directory / "precious";
  if (broken.group->rank() == 0) {
    fs::create_directories(precious);
    std::ofstream(precious / "notes.txt") << "keep me";
  }
  broken.group->barrier();
  auto model = build_model(broken.config, broken.group);
  expect_error_on_every_rank(
      [&] {
        checkpoint::export_hf_checkpoint(precious, models::llama_conversion_rules(broken.config),
                                         model->stages());
      },
      {"precious holds files this runtime did not write (notes.txt)",
       "not a HuggingFace checkpoint", "export elsewhere"});
  EXPECT_EQ(file_bytes(precious / "notes.txt"), "keep me");
}

// A small MoE model, exported once (sharded into files) to `target`.
struct EarlierExport {
  std::shared_ptr<ProcessGroup> group = runtime().process_group();
  SharedDirectory directory;
  models::LlamaConfig config = small_llama(4);
  std::unique_ptr<stages::MultiStageModel> model = build_model(config, group);
  ConversionRules rules = models::llama_conversion_rules(config);
  fs::path target = directory / "export";

  explicit EarlierExport(const std::string& name) : directory(*group, name) {
    model->initialize_weights(5);
    checkpoint::export_hf_checkpoint(target, rules, model->stages(), sharded_export());
  }
};

// Exporting over an earlier export replaces its tensors, and never deletes
// what the export does not write again (a README, a notes file).
TEST(HfExportErrors, UserFilesInTheTargetAreNeverDeleted) {
  EarlierExport earlier("hf_export_user_files");
  const auto& [group, directory, config, model, rules, target] = earlier;
  // Again with another file size: other tensor files, all ours, all replaced.
  checkpoint::export_hf_checkpoint(target, rules, model->stages());
  EXPECT_TRUE(fs::exists(target / "model.safetensors"));
  EXPECT_FALSE(fs::exists(target / "model.safetensors.index.json"));
  if (group->rank() == 0) std::ofstream(target / "README.md") << "my notes";
  group->barrier();
  expect_error_on_every_rank(
      [&] { checkpoint::export_hf_checkpoint(target, rules, model->stages()); },
      {"holds files this runtime did not write (README.md)", "export to another directory"});
  EXPECT_EQ(file_bytes(target / "README.md"), "my notes");
  EXPECT_TRUE(fs::exists(target / "model.safetensors"));
  group->barrier();  // rank 0 removes the staging directory as it leaves the export
  EXPECT_FALSE(fs::exists(target.string() + ".partial")) << "the staging directory was left";
}

// A full disk on one writing rank (simulated by a file-size limit on the last
// rank) fails the export with that rank's CheckpointError on every rank --
// not a collective mismatch ending in a timeout -- and the previous export
// stays as it was.
TEST(HfExportErrors, AFullDiskOnOneWritingRankIsAgreedAndLosesNothing) {
  EarlierExport earlier("hf_export_full_disk");
  const auto& [group, directory, config, model, rules, target] = earlier;
  const auto before = read_hf_tensors(target);
  std::int64_t files = 0;
  for (const auto& entry : fs::directory_iterator(target)) {
    files += entry.path().extension() == ".safetensors";
  }
  ASSERT_GE(files, group->size()) << "every rank must write a file for this test";

  const int full_rank = group->size() - 1;
  rlimit original{};
  getrlimit(RLIMIT_FSIZE, &original);
  const auto previous_handler = std::signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of a signal
  if (group->rank() == full_rank) {
    rlimit limited = original;
    limited.rlim_cur = 1024;
    setrlimit(RLIMIT_FSIZE, &limited);
  }
  const auto timeout = group->timeout();
  group->set_timeout(std::chrono::seconds(30));  // a regression fails in 30 s, not 120
  model->initialize_weights(6);                  // other weights: a replacement would show
  try {
    checkpoint::export_hf_checkpoint(target, rules, model->stages(), sharded_export());
    ADD_FAILURE() << "the export succeeded on a full disk";
  } catch (const checkpoint::CheckpointError& error) {
    EXPECT_EQ(error.failing_rank(), full_rank);
    const std::string message = error.what();
    EXPECT_EQ(message.rfind("rank " + std::to_string(full_rank) + ": ", 0), 0u) << message;
    EXPECT_NE(message.find(".safetensors"), std::string::npos) << message;
  }
  group->set_timeout(timeout);
  setrlimit(RLIMIT_FSIZE, &original);
  group->barrier();  // rank 0 removes the staging directory as it leaves the export
  EXPECT_FALSE(fs::exists(target.string() + ".partial")) << "the failed export left its staging";
  std::signal(SIGXFSZ, previous_handler);
  const auto after = read_hf_tensors(target);
  ASSERT_EQ(after.size(), before.size());
  for (const auto& [name, tensor] : before) {
    EXPECT_TRUE(at::equal(after.at(name), tensor)) << name << " changed";
  }
}

}  // namespace
}  // namespace fsdp::testing
