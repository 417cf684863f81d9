// shard-inspect, through its library (launch/inspect/) and its command line
// (run_shard_inspect, exactly what the program runs), on checkpoints saved by
// checkpoint::save_checkpoint and exported by checkpoint::export_hf_checkpoint
// at the job's world size and, through sub-communicators, at another one.
//
// The truth is the model in memory (all_parameters, the inspector's
// collective read). Every rank runs the inspector itself: it is MPI-free, and
// reading the same files from several processes must work. Values are small
// integers times powers of two where a comparison must be exact.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstring>
#include <sstream>

#include "checkpoint_test_support.h"
#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/checkpoint_reader.h"
#include "fsdp/checkpoint/distributed_checkpoint.h"
#include "fsdp/checkpoint/hf_export.h"
#include "fsdp/checkpoint/hf_parameter_reader.h"
#include "fsdp/launch/inspect/checkpoint_diff.h"
#include "fsdp/launch/inspect/command_line.h"
#include "fsdp/launch/inspect/name_filter.h"
#include "fsdp/launch/inspect/parameter_values.h"
#include "fsdp/launch/inspect/placements_view.h"
#include "fsdp/launch/inspect/slice_spec.h"
#include "fsdp/launch/inspect/statistics_table.h"
#include "fsdp/launch/inspect/usage_error.h"
#include "fsdp/models/llama_config_json.h"
#include "fsdp/models/llama_conversion.h"
#include "fsdp/mpi_process_group.h"
#include "mpi_test_environment.h"

namespace fsdp::testing {
namespace {

using inspect::TensorSource;

struct Cli {
  int status = -1;
  std::string out, err;
};

Cli shard_inspect(const std::vector<std::string>& arguments) {
  std::ostringstream out, err;
  Cli result;
  result.status = inspect::run_shard_inspect(arguments, out, err);
  result.out = out.str();
  result.err = err.str();
  return result;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Saves `values` (every parameter) as a model of `config` on `group`.
void save_values(const fs::path& path, const models::LlamaConfig& config,
                 std::shared_ptr<ProcessGroup> group,
                 const std::map<std::string, at::Tensor>& values, int layers_per_stage = 1,
                 bool with_model_config = true) {
  auto model = build_model(config, std::move(group), layers_per_stage);
  for (auto* stage : model->stages()) {
    for (const auto& slot : stage->layout().parameters())
      stage->load_parameter(slot.name, values.at(slot.name));
  }
  checkpoint::SaveOptions options;
  options.step = 5;
  options.checksum_block_bytes = 4096;  // many blocks even for a small model
  if (with_model_config) options.training_config = {{"model", models::to_json(config)}};
  checkpoint::save_checkpoint(path, model->stages(), nullptr, options);
}

// A small MoE model (stacked experts: 3-D parameters) and its checkpoint at the job's world size.
struct SavedModel {
  std::shared_ptr<ProcessGroup> group = runtime().process_group();
  SharedDirectory directory{*group, "shard_inspect"};
  models::LlamaConfig config = small_llama(4);
  std::unique_ptr<stages::MultiStageModel> model = build_model(config, group);
  fs::path path = directory / "checkpoint";
  std::map<std::string, at::Tensor> truth;

  SavedModel() {
    model->initialize_weights(7);
    truth = all_parameters(*model);
    checkpoint::SaveOptions options;
    options.step = 5;
    options.checksum_block_bytes = 4096;
    options.training_config = {{"model", models::to_json(config)}, {"training", {{"lr", 0.1}}}};
    checkpoint::save_checkpoint(path, model->stages(), nullptr, options);
  }
  // Rank 0 changes files, the others wait.
  template <typename Edit>
  void edit(Edit edit) {
    group->barrier();
    if (group->rank() == 0) edit();
    group->barrier();
  }
};

void expect_same_statistics(const ParameterStatistics& actual, const ParameterStatistics& expected,
                            const std::string& name, double tolerance) {
  EXPECT_EQ(actual.numel, expected.numel) << name;
  EXPECT_EQ(actual.nan_count, expected.nan_count) << name;
  EXPECT_EQ(actual.inf_count, expected.inf_count) << name;
  EXPECT_EQ(actual.nonzero_count, expected.nonzero_count) << name;
  EXPECT_EQ(actual.min, expected.min) << name;
  EXPECT_EQ(actual.max, expected.max) << name;
  EXPECT_EQ(actual.abs_max, expected.abs_max) << name;
  // Chunked means and deviations merge in another order: float64 rounding only.
  EXPECT_NEAR(actual.mean, expected.mean, tolerance * (1 + std::abs(expected.mean))) << name;
  EXPECT_NEAR(actual.std, expected.std, tolerance * (1 + expected.std)) << name;
}

TEST(ShardInspect, TableStatisticsEqualTheModelInMemory) {
  SavedModel saved;
  auto source = TensorSource::open(saved.path);
  for (const std::int64_t chunk : {inspect::kDefaultChunkElements, std::int64_t{7}}) {
    const auto table = inspect::statistics_table(*source, inspect::NameFilter(), chunk);
    EXPECT_EQ(table.world_size, saved.group->size());
    EXPECT_EQ(table.step, 5);
    ASSERT_EQ(table.rows.size(), saved.truth.size());
    std::int64_t total = 0;
    for (const auto& row : table.rows) {
      const auto& value = saved.truth.at(row.tensor.name);
      total += value.numel();
      EXPECT_EQ(row.tensor.shape, value.sizes().vec()) << row.tensor.name;
      EXPECT_EQ(row.tensor.dtype, "float32");
      const auto expected = merge_statistics({partial_statistics(value)});
      // One chunk: the same arithmetic as the inspector's, so bitwise.
      expect_same_statistics(row.statistics, expected, row.tensor.name,
                             chunk == inspect::kDefaultChunkElements ? 0.0 : 1e-12);
      EXPECT_TRUE(row.warnings.empty()) << row.tensor.name;
    }
    EXPECT_EQ(table.total_elements, total);
  }
  // Filters: globs on the whole name, regexes anywhere.
  const inspect::NameFilter filter({"decoder.0.*"}, {"^final_norm"});
  const auto filtered = inspect::statistics_table(*source, filter);
  ASSERT_FALSE(filtered.rows.empty());
  for (const auto& row : filtered.rows) {
    EXPECT_TRUE(row.tensor.name.rfind("decoder.0.", 0) == 0 ||
                row.tensor.name == "final_norm.weight")
        << row.tensor.name;
  }
  const auto text = shard_inspect({saved.path.string()});
  EXPECT_EQ(text.status, 0) << text.err;
  EXPECT_TRUE(contains(text.out, "distributed checkpoint")) << text.out;
  EXPECT_TRUE(contains(text.out, "decoder.1.mlp.experts.gate_up_proj  [4, 48, 16]")) << text.out;
  EXPECT_FALSE(contains(text.out, "WARNING"));
}

TEST(ShardInspect, WarningsAndJsonForZerosNanAndInf) {
  auto group = runtime().process_group();
  SharedDirectory directory(*group, "shard_inspect_warnings");
  const auto config = small_llama();
  auto model = build_model(config, group);
  model->initialize_weights(3);
  auto values = all_parameters(*model);
  values["decoder.0.mlp_norm.weight"].zero_();
  values["final_norm.weight"].fill_(std::numeric_limits<float>::quiet_NaN());
  values["decoder.1.attention_norm.weight"][2] = std::numeric_limits<float>::infinity();
  save_values(directory / "bad", config, group, values);

  const auto text = shard_inspect({(directory / "bad").string()});
  EXPECT_EQ(text.status, 0) << text.err;
  EXPECT_TRUE(
      contains(text.out, "WARNING: decoder.0.mlp_norm.weight [16]: all zeros (16 elements)"))
      << text.out;
  EXPECT_TRUE(contains(text.out, "WARNING: final_norm.weight [16]: 16 NaN")) << text.out;
  EXPECT_TRUE(contains(text.out, "WARNING: decoder.1.attention_norm.weight [16]: 1 Inf"))
      << text.out;

  const auto json = shard_inspect({(directory / "bad").string(), "--json"});
  EXPECT_EQ(json.status, 0) << json.err;
  const auto document = nlohmann::json::parse(json.out);  // valid JSON despite NaN and Inf
  std::map<std::string, nlohmann::json> rows;
  for (const auto& row : document.at("parameters")) rows[row.at("name")] = row;
  EXPECT_EQ(rows.at("final_norm.weight").at("mean"), "NaN");
  EXPECT_EQ(rows.at("final_norm.weight").at("nan"), 16);
  EXPECT_EQ(rows.at("decoder.1.attention_norm.weight").at("max"), "Infinity");
  EXPECT_EQ(rows.at("decoder.0.mlp_norm.weight").at("warnings"),
            nlohmann::json::array({"all zeros"}));
  EXPECT_EQ(document.at("world_size"), group->size());
}

TEST(ShardInspect, ParameterSlicesEqualTheTrueSlices) {
  SavedModel saved;
  auto source = TensorSource::open(saved.path);
  const std::string name = "decoder.1.mlp.experts.gate_up_proj";  // [4, 48, 16]
  const auto truth = saved.truth.at(name).to(at::kDouble);
  const auto read = [&](const std::string& slice, std::int64_t max_values = 100000) {
    inspect::ValuesOptions options;
    options.slice = slice;
    options.max_values = max_values;
    return inspect::read_parameter_values(*source, name, options);
  };
  const auto whole = read("");
  EXPECT_FALSE(whole.summarized);
  EXPECT_TRUE(at::equal(whole.values, truth));
  const auto part = read("1:3,::5,-4:");
  EXPECT_EQ(part.selected_shape, (std::vector<std::int64_t>{2, 10, 4}));
  EXPECT_TRUE(at::equal(part.values, truth.slice(0, 1, 3).slice(1, 0, 48, 5).slice(2, 12, 16)));
  const auto row = read("2,7");
  EXPECT_EQ(row.selected_shape, (std::vector<std::int64_t>{16}));
  EXPECT_TRUE(at::equal(row.values, truth[2][7]));
  const auto element = read("-1,0,3");
  EXPECT_TRUE(element.selected_shape.empty());
  EXPECT_EQ(element.values.item<double>(), truth[3][0][3].item<double>());

  // Summarised: the first and last 3 of every long dimension, and only those.
  const auto summary = read("", 100);
  EXPECT_TRUE(summary.summarized);
  EXPECT_EQ(summary.selected_numel, 4 * 48 * 16);
  EXPECT_EQ(summary.indices[1], (std::vector<std::int64_t>{0, 1, 2, 45, 46, 47}));
  const auto rows = at::tensor(std::vector<std::int64_t>{0, 1, 2, 45, 46, 47});
  const auto columns = at::tensor(std::vector<std::int64_t>{0, 1, 2, 13, 14, 15});
  EXPECT_TRUE(at::equal(summary.values, truth.index_select(1, rows).index_select(2, columns)));

  const auto text = shard_inspect(
      {saved.path.string(), "--param", name, "--slice", "0,0,:4", "--precision", "9"});
  EXPECT_EQ(text.status, 0) << text.err;
  char first[32];
  std::snprintf(first, sizeof first, "%.9g", truth[0][0][0].item<double>());
  EXPECT_TRUE(contains(text.out, first)) << text.out;
  const auto summarized = shard_inspect({saved.path.string(), "--param", name});
  EXPECT_TRUE(contains(summarized.out, "...")) << summarized.out;
  const auto json =
      shard_inspect({saved.path.string(), "--param", name, "--slice", "1,2:4", "--json"});
  ASSERT_EQ(json.status, 0) << json.err;
  const auto document = nlohmann::json::parse(json.out);
  EXPECT_EQ(document.at("selected_shape"), nlohmann::json::array({2, 16}));
  EXPECT_EQ(document.at("values")[1][5].get<double>(), truth[1][3][5].item<double>());

  // Bad slices are usage errors; unknown names say which names are close.
  EXPECT_EQ(shard_inspect({saved.path.string(), "--param", name, "--slice", "0,x"}).status, 2);
  EXPECT_EQ(shard_inspect({saved.path.string(), "--param", name, "--slice", "4"}).status, 2);
  const auto unknown =
      shard_inspect({saved.path.string(), "--param", "decoder.1.mlp.experts.gate_up"});
  EXPECT_EQ(unknown.status, 3);
  EXPECT_TRUE(contains(unknown.err, "no parameter named 'decoder.1.mlp.experts.gate_up'"));
  EXPECT_TRUE(contains(unknown.err, "close names: decoder.1.mlp.experts.gate_up_proj"))
      << unknown.err;
}

TEST(ShardInspect, PlacementsAreTheFlatLayoutsAndPointAtTheBytes) {
  SavedModel saved;
  auto source = TensorSource::open(saved.path);
  auto& reader = *source->distributed();
  for (auto* stage : saved.model->stages()) {
    const auto& layout = stage->layout();
    for (std::size_t p = 0; p < layout.parameters().size(); ++p) {
      const auto& slot = layout.parameters()[p];
      const auto report = inspect::where(*source, slot.name);
      ASSERT_TRUE(report.ranks.has_value());
      const auto& placements = *report.ranks;
      EXPECT_EQ(placements.stage, stage->stage_name());
      EXPECT_EQ(placements.flat_range, slot.flat_range);
      const auto expected = layout.placements(p);
      ASSERT_EQ(placements.pieces.size(), expected.size()) << slot.name;
      const auto flat = saved.truth.at(slot.name).reshape({-1});
      for (std::size_t i = 0; i < expected.size(); ++i) {
        const auto& piece = placements.pieces[i];
        EXPECT_EQ(piece.rank, expected[i].rank);
        EXPECT_EQ(piece.parameter_range, expected[i].parameter_range);
        EXPECT_EQ(piece.shard_range, expected[i].shard_range);
        EXPECT_EQ(piece.file, checkpoint::rank_file_name(piece.rank, saved.group->size()));
        // The byte range holds exactly these elements.
        const auto bytes = file_bytes(saved.path / piece.file)
                               .substr(static_cast<std::size_t>(piece.file_begin),
                                       static_cast<std::size_t>(piece.file_end - piece.file_begin));
        auto stored = at::empty({piece.parameter_range.size()}, at::kFloat);
        std::memcpy(stored.data_ptr(), bytes.data(), bytes.size());
        EXPECT_TRUE(at::equal(
            stored, flat.slice(0, piece.parameter_range.begin, piece.parameter_range.end)))
            << slot.name << " on rank " << piece.rank;
      }
      std::vector<checkpoint::RankPadding> padding;
      for (int rank = 0; rank < saved.group->size(); ++rank) {
        if (!layout.padding_in_shard(rank).empty()) {
          padding.push_back({rank, layout.padding_in_shard(rank), 0, 0});
        }
      }
      ASSERT_EQ(placements.padding.size(), padding.size());
      for (std::size_t i = 0; i < padding.size(); ++i) {
        EXPECT_EQ(placements.padding[i].rank, padding[i].rank);
        EXPECT_EQ(placements.padding[i].shard_range, padding[i].shard_range);
      }
    }
  }
  EXPECT_EQ(reader.index().world_size, saved.group->size());
  const auto text = shard_inspect({saved.path.string(), "--where", "embedding.weight"});
  EXPECT_EQ(text.status, 0) << text.err;
  EXPECT_TRUE(contains(text.out, "rank 0 (rank-00000-of-")) << text.out;
  const auto json = shard_inspect({saved.path.string(), "--where", "final_norm.weight", "--json"});
  EXPECT_EQ(json.status, 0) << json.err;
  EXPECT_EQ(nlohmann::json::parse(json.out).at("world_size"), saved.group->size());
}

TEST(ShardInspect, SameWeightsAtAnotherWorldSizeDiffExactlyZero) {
  SavedModel saved;
  // Another world size where the job has one, and another stage split always.
  const int ranks = std::max(1, saved.group->size() - 1);
  if (auto subgroup = first_ranks(ranks)) {
    save_values(saved.directory / "other", saved.config, subgroup, saved.truth,
                /*layers_per_stage=*/2);
  }
  saved.group->barrier();
  auto first = TensorSource::open(saved.path);
  auto second = TensorSource::open(saved.directory / "other");
  EXPECT_EQ(second->distributed()->index().world_size, ranks);
  const auto report = inspect::diff_sources(*first, *second, {});
  EXPECT_EQ(report.rows.size(), saved.truth.size());
  EXPECT_EQ(report.differing(), 0u);
  for (const auto& row : report.rows) {
    EXPECT_EQ(row.status, inspect::DiffStatus::kCompared) << row.name;
    EXPECT_EQ(row.max_abs_difference, 0.0) << row.name;
    EXPECT_EQ(row.elements_beyond_tolerance, 0) << row.name;
  }
  const auto cli = shard_inspect(
      {saved.path.string(), "--diff", (saved.directory / "other").string(), "--tol", "0"});
  EXPECT_EQ(cli.status, 0) << cli.err;
  EXPECT_TRUE(contains(
      cli.out, "0 of " + std::to_string(saved.truth.size()) + " parameters differ beyond tol 0"))
      << cli.out;
  // A filter that selects nothing is a usage error, not a passing diff (or an empty table).
  const auto typo = shard_inspect({saved.path.string(), "--diff",
                                   (saved.directory / "other").string(), "--filter", "decoder.9*"});
  EXPECT_EQ(typo.status, 2);
  EXPECT_TRUE(contains(typo.err, "matched no parameter")) << typo.err;
  const auto empty_table = shard_inspect({saved.path.string(), "--regex", "^nothing$"});
  EXPECT_EQ(empty_table.status, 2);
  EXPECT_TRUE(contains(empty_table.err, "matched none of the")) << empty_table.err;
}

TEST(ShardInspect, OneChangedWeightIsTheOneDifference) {
  SavedModel saved;
  const std::string name = "decoder.1.attention.dense.weight";
  auto changed = saved.truth;
  changed[name] = changed[name].clone();
  const double before = changed[name][3][5].item<double>();
  changed[name][3][5] = before + 0.25;
  const double difference = std::abs(changed[name][3][5].item<double>() - before);
  save_values(saved.directory / "changed", saved.config, saved.group, changed);

  auto first = TensorSource::open(saved.path);
  auto second = TensorSource::open(saved.directory / "changed");
  const auto report = inspect::diff_sources(*first, *second, {});
  EXPECT_EQ(report.differing(), 1u);
  for (const auto& row : report.rows) {
    EXPECT_EQ(row.differs, row.name == name) << row.name;
    if (row.name != name) continue;
    EXPECT_EQ(row.max_abs_difference, difference);
    EXPECT_EQ(row.max_relative_difference,
              difference / std::max(std::abs(before), std::abs(before + difference)));
    EXPECT_EQ(row.elements_beyond_tolerance, 1);
  }
  const auto path = saved.path.string(), other = (saved.directory / "changed").string();
  const auto cli = shard_inspect({path, "--diff", other});
  EXPECT_EQ(cli.status, 1) << cli.err;
  EXPECT_TRUE(contains(
      cli.out, "1 of " + std::to_string(saved.truth.size()) + " parameters differ beyond tol 0"))
      << cli.out;
  EXPECT_EQ(shard_inspect({path, "--diff", other, "--tol", "0.5"}).status, 0);
  // Filtered to other parameters, nothing differs.
  EXPECT_EQ(shard_inspect({path, "--diff", other, "--filter", "decoder.0.*"}).status, 0);
  const auto json = shard_inspect({path, "--diff", other, "--json"});
  EXPECT_EQ(json.status, 1);
  const auto document = nlohmann::json::parse(json.out);
  EXPECT_EQ(document.at("summary").at("differing"), 1);
  for (const auto& row : document.at("parameters")) {
    if (row.at("name") == name) {
      EXPECT_EQ(row.at("max_abs_difference").get<double>(), difference);
    }
  }
  // Another model: parameters missing on one side and other shapes count as differences.
  auto smaller = small_llama(4, false, false, /*layers=*/1);
  smaller.intermediate = 32;
  auto model = build_model(smaller, saved.group);
  model->initialize_weights(7);
  save_values(saved.directory / "smaller", smaller, saved.group, all_parameters(*model));
  auto third = TensorSource::open(saved.directory / "smaller");
  const auto mismatched = inspect::diff_sources(*first, *third, {});
  bool only_in_first = false, shape_differs = false;
  for (const auto& row : mismatched.rows) {
    only_in_first |= row.status == inspect::DiffStatus::kOnlyInFirst;
    shape_differs |= row.status == inspect::DiffStatus::kShapeDiffers &&
                     row.name == "decoder.0.mlp.experts.gate_up_proj";
  }
  EXPECT_TRUE(only_in_first);
  EXPECT_TRUE(shape_differs);
}

TEST(ShardInspect, CheckpointAgainstItsHfExportIsZero) {
  SavedModel saved;
  checkpoint::ExportOptions options;
  options.max_file_bytes = 16 << 10;  // several files and an index
  checkpoint::export_hf_checkpoint(saved.directory / "hf",
                                   models::llama_conversion_rules(saved.config),
                                   saved.model->stages(), options);
  auto checkpoint = TensorSource::open(saved.path);
  auto hf = TensorSource::open(saved.directory / "hf");
  ASSERT_EQ(hf->kind(), inspect::SourceKind::kHfCheckpoint);
  for (const auto& [first, second] :
       {std::pair{checkpoint.get(), hf.get()}, std::pair{hf.get(), checkpoint.get()}}) {
    const auto report = inspect::diff_sources(*first, *second, {});
    EXPECT_EQ(report.rows.size(), saved.truth.size());
    EXPECT_EQ(report.differing(), 0u);
    for (const auto& row : report.rows) EXPECT_EQ(row.max_abs_difference, 0.0) << row.name;
  }
  const auto by_key = inspect::diff_sources(*hf, *hf, {});
  EXPECT_EQ(by_key.differing(), 0u);
  EXPECT_EQ(by_key.rows.size(), hf->tensors().size());
  EXPECT_EQ(
      shard_inspect({saved.path.string(), "--diff", (saved.directory / "hf").string()}).status, 0);

  // The HF table's rows are the keys, with the same statistics.
  const auto table = inspect::statistics_table(*hf, inspect::NameFilter({"model.norm.weight"}, {}));
  ASSERT_EQ(table.rows.size(), 1u);
  expect_same_statistics(
      table.rows[0].statistics,
      merge_statistics({partial_statistics(saved.truth.at("final_norm.weight"))}),
      "model.norm.weight", 0.0);
  const auto where =
      shard_inspect({(saved.directory / "hf").string(), "--where", "model.norm.weight"});
  EXPECT_EQ(where.status, 0) << where.err;
  EXPECT_TRUE(contains(where.out, "bytes [")) << where.out;

  // Without the model in the training config, the rules cannot be built: said so.
  save_values(saved.directory / "anonymous", saved.config, saved.group, saved.truth, 1,
              /*with_model_config=*/false);
  const auto anonymous = shard_inspect(
      {(saved.directory / "anonymous").string(), "--diff", (saved.directory / "hf").string()});
  EXPECT_EQ(anonymous.status, 3);
  EXPECT_TRUE(contains(anonymous.err, "training_config has no \"model\"")) << anonymous.err;
}

TEST(ShardInspect, OtherArraysAreReadWhenSaved) {
  auto group = runtime().process_group();
  SharedDirectory directory(*group, "shard_inspect_arrays");
  auto model = build_model(small_llama(), group);
  model->initialize_weights(1);
  // Gradients that are their flat index / 2: exact, and easy to predict.
  for (auto* stage : model->stages()) {
    const auto range = stage->layout().shard_range(group->rank());
    stage->gradient_shard().copy_(at::arange(range.begin, range.end, at::kFloat) * 0.5);
  }
  checkpoint::SaveOptions options;
  options.gradients = true;
  checkpoint::save_checkpoint(directory / "with_gradients", model->stages(), nullptr, options);
  auto source =
      TensorSource::open(directory / "with_gradients", checkpoint::ShardArray::kGradients);
  for (auto* stage : model->stages()) {
    for (const auto& slot : stage->layout().parameters()) {
      const auto index = source->find(slot.name);
      const auto values = source->read(index, {0, slot.numel});
      EXPECT_TRUE(at::equal(
          values, at::arange(slot.flat_range.begin, slot.flat_range.end, at::kFloat) * 0.5))
          << slot.name;
    }
  }
  const auto missing =
      shard_inspect({(directory / "with_gradients").string(), "--state", "exp_avg"});
  EXPECT_EQ(missing.status, 3);
  EXPECT_TRUE(contains(missing.err, "no exp_avg arrays")) << missing.err;
  EXPECT_EQ(shard_inspect({(directory / "with_gradients").string(), "--state", "moments"}).status,
            2);
}

TEST(ShardInspect, CorruptInputIsTheCheckpointModulesError) {
  SavedModel saved;
  const auto file = saved.path / checkpoint::rank_file_name(0, saved.group->size());
  const auto path = saved.path.string();
  // A byte of a weight (not of padding, which is never read) in rank 0's file.
  const auto where = inspect::where(*TensorSource::open(saved.path), "embedding.weight");
  const auto offset = where.ranks->pieces.front().file_begin + 9;
  const auto flip = [&] {
    std::fstream stream(file, std::ios::in | std::ios::out | std::ios::binary);
    stream.seekg(offset);
    const char byte = static_cast<char>(stream.get() ^ 0x40);
    stream.seekp(offset);
    stream.put(byte);
  };
  saved.edit(flip);
  auto corrupt = shard_inspect({path});
  EXPECT_EQ(corrupt.status, 3);
  EXPECT_TRUE(contains(corrupt.err, file.string() + ": checksum mismatch in block")) << corrupt.err;
  EXPECT_TRUE(contains(corrupt.err, "the file is corrupt"));
  EXPECT_TRUE(corrupt.out.empty());
  // Through the library: the reader's error, not a crash.
  auto source = TensorSource::open(saved.path);
  expect_error_on_every_rank([&] { inspect::statistics_table(*source, {}); },
                             {file.string(), "checksum mismatch"});

  saved.edit(flip);  // undone
  // A bad header in the last rank's file (rank 0's at -np 1).
  const auto last =
      saved.path / checkpoint::rank_file_name(saved.group->size() - 1, saved.group->size());
  saved.edit([&] {
    std::fstream stream(last, std::ios::in | std::ios::out | std::ios::binary);
    stream.seekp(8);  // the header's opening brace
    stream.put('X');
  });
  corrupt = shard_inspect({path});
  EXPECT_EQ(corrupt.status, 3);
  EXPECT_TRUE(contains(corrupt.err, last.string() + ": ")) << corrupt.err;

  saved.edit([&] { fs::resize_file(file, fs::file_size(file) - 100); });
  corrupt = shard_inspect({path});
  EXPECT_EQ(corrupt.status, 3);
  EXPECT_TRUE(contains(corrupt.err, file.filename().string())) << corrupt.err;

  saved.edit([&] { fs::remove(file); });
  corrupt = shard_inspect({path});
  EXPECT_EQ(corrupt.status, 3);
  EXPECT_TRUE(contains(corrupt.err, file.string())) << corrupt.err;
  EXPECT_TRUE(contains(corrupt.err, "cannot open")) << corrupt.err;

  saved.edit([&] { std::ofstream(saved.path / "index.json") << "{\"format\": "; });
  corrupt = shard_inspect({path});
  EXPECT_EQ(corrupt.status, 3);
  EXPECT_TRUE(contains(corrupt.err, "index.json: not valid JSON")) << corrupt.err;

  corrupt = shard_inspect({(saved.directory / "never_saved").string()});
  EXPECT_EQ(corrupt.status, 3);
  EXPECT_TRUE(contains(corrupt.err, "never_saved: no such file or directory")) << corrupt.err;
}

TEST(ShardInspect, ReadsInChunksOfOneBlockEqualTheModel) {
  SavedModel saved;
  // A staging chunk of one checksum block: reads cross chunks, blocks and rank files.
  checkpoint::CheckpointReader reader(saved.path, 4096);
  for (const auto& location : reader.parameters()) {
    const auto& name = reader.parameter(location).name;
    const auto flat = saved.truth.at(name).reshape({-1});
    const std::int64_t numel = flat.numel();
    EXPECT_TRUE(at::equal(reader.read(location, {0, numel}), flat)) << name;
    for (std::int64_t begin = 0; begin < numel; begin += 333) {
      const std::int64_t end = std::min(numel, begin + 517);
      EXPECT_TRUE(at::equal(reader.read(location, {begin, end}), flat.slice(0, begin, end)))
          << name << " [" << begin << ", " << end << ")";
    }
  }
  EXPECT_THROW(reader.read(reader.find("final_norm.weight"), {0, 17}), checkpoint::CheckpointError);
  EXPECT_THROW(
      reader.read(reader.find("final_norm.weight"), {0, 1}, checkpoint::ShardArray::kExpAvg),
      checkpoint::CheckpointError);
}

// read_hf_parameter through every kind of piece: transposed (also stacked),
// reshaped, concatenated along an inner dimension, half-precision sources;
// after a first parameter, so that flat ranges do not start at 0.
TEST(ShardInspect, HfParametersAssembleThroughEveryKindOfRule) {
  auto group = runtime().process_group();
  SharedDirectory directory(*group, "shard_inspect_rules");
  const auto integers = [](std::vector<std::int64_t> shape, int offset) {
    std::int64_t numel = 1;
    for (auto d : shape) numel *= d;
    return (at::arange(numel, at::kFloat) + offset).reshape(shape);
  };
  std::map<std::string, at::Tensor> files = {
      {"first", integers({7}, 900)},    {"w", integers({6, 4}, 0)},  // stored [in, out]
      {"v.0", integers({5, 3}, 100)},   {"v.1", integers({5, 3}, 200)},
      {"r", integers({3, 4}, 300)},     {"left", integers({4, 2}, 400)},
      {"right", integers({4, 3}, 500)}, {"half", integers({8}, -4).to(at::kHalf)},
  };
  const auto file = directory / ("custom_rank" + std::to_string(group->rank()) + ".safetensors");
  write_hf_file(file, files);
  using checkpoint::ConversionRule;
  checkpoint::ConversionRules rules;
  rules.rules = {ConversionRule::rename("F", "first"),
                 ConversionRule::rename("W", "w").transposed(),
                 ConversionRule::rename("V", "v.{i}").stack_over("i").transposed(),
                 ConversionRule::reshaped("R", "r", {3, 4}),
                 ConversionRule::concatenate("LR", {"left", "right"}, 1),
                 ConversionRule::rename("H", "half")};
  const FlatLayout layout(
      {{"F", {7}}, {"W", {4, 6}}, {"V", {2, 3, 5}}, {"R", {12}}, {"LR", {4, 5}}, {"H", {8}}}, 1, 1);
  const std::map<std::string, at::Tensor> expected = {
      {"F", files["first"]},
      {"W", files["w"].t()},
      {"V", at::stack({files["v.0"].t(), files["v.1"].t()})},
      {"R", files["r"].reshape({12})},
      {"LR", at::cat({files["left"], files["right"]}, 1)},
      {"H", files["half"].to(at::kFloat)}};
  checkpoint::HfCheckpoint hf(file);
  const auto plans = checkpoint::plan_import({&layout}, hf, rules);
  for (const auto& slot : layout.parameters()) {
    const auto value =
        checkpoint::read_hf_parameter(plans.at(slot.name), slot, ElementType::kFloat32);
    EXPECT_EQ(value.sizes().vec(), slot.shape) << slot.name;
    EXPECT_TRUE(at::equal(value, expected.at(slot.name))) << slot.name;
  }
  // In another dtype: converted as torch converts.
  const auto& h = layout.parameter("H");
  EXPECT_TRUE(at::equal(checkpoint::read_hf_parameter(plans.at("H"), h, ElementType::kBFloat16),
                        files["half"].to(at::kBFloat16)));
}

// NaN against NaN is equal; NaN or an infinity against another value is an
// infinite difference; relative differences are |a - b| / max(|a|, |b|).
TEST(ShardInspectParts, DifferencesOfSpecialValues) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  inspect::DifferenceAccumulator special(0.0);
  special.add(at::tensor(std::vector<double>{1, nan, inf, 0.0, -inf, 2}),
              at::tensor(std::vector<double>{1, nan, inf, -0.0, inf, nan}));
  inspect::DiffRow row;
  special.store(row);
  EXPECT_EQ(row.max_abs_difference, inf);
  EXPECT_EQ(row.max_relative_difference, inf);
  EXPECT_EQ(row.elements_beyond_tolerance, 2);
  EXPECT_TRUE(row.differs);
  inspect::DifferenceAccumulator finite(0.5);
  finite.add(at::tensor(std::vector<float>{1, 2, -4}), at::tensor(std::vector<float>{1.5, 2, -4}));
  inspect::DiffRow within;
  finite.store(within);
  EXPECT_EQ(within.max_abs_difference, 0.5);
  EXPECT_EQ(within.max_relative_difference, 0.5 / 1.5);
  EXPECT_EQ(within.elements_beyond_tolerance, 0);
  EXPECT_FALSE(within.differs);  // within --tol 0.5
  inspect::DiffReport report;
  report.rows = {row, within};
  const auto document = inspect::diff_json(report);
  EXPECT_EQ(document.at("parameters")[0].at("max_abs_difference"), "Infinity");
  EXPECT_EQ(document.at("summary").at("differing"), 1);
}

// Pure parts: slices and globs.
TEST(ShardInspectParts, SlicesResolveAsNumpyDoes) {
  using inspect::parse_slice;
  using inspect::resolve_slice;
  const auto selection = resolve_slice(parse_slice("1:9:3, -2:, 0"), {10, 5, 4, 6});
  EXPECT_EQ(selection.indices[0], (std::vector<std::int64_t>{1, 4, 7}));
  EXPECT_EQ(selection.indices[1], (std::vector<std::int64_t>{3, 4}));
  EXPECT_EQ(selection.indices[2], (std::vector<std::int64_t>{0}));
  EXPECT_EQ(selection.indices[3].size(), 6u);
  EXPECT_EQ(selection.shape(), (std::vector<std::int64_t>{3, 2, 6}));
  EXPECT_EQ(resolve_slice(parse_slice(":100"), {5}).indices[0].size(), 5u);
  EXPECT_THROW(resolve_slice(parse_slice("5"), {5}), inspect::UsageError);
  EXPECT_THROW(resolve_slice(parse_slice("0,0"), {5}), inspect::UsageError);
  EXPECT_THROW(parse_slice("::0"), inspect::UsageError);
  EXPECT_THROW(parse_slice("1:2:3:4"), inspect::UsageError);
  // A step so large that index + step overflows: one index, no wrap-around.
  EXPECT_EQ(resolve_slice(parse_slice("1::9223372036854775807"), {10}).indices[0],
            (std::vector<std::int64_t>{1}));
  EXPECT_TRUE(inspect::glob_match("decoder.*.weight", "decoder.1.mlp.down.weight"));
  EXPECT_TRUE(inspect::glob_match("decoder.?.mlp*", "decoder.1.mlp.down.weight"));
  EXPECT_FALSE(inspect::glob_match("decoder.*", "embedding.weight"));
  EXPECT_FALSE(inspect::glob_match("embedding", "embedding.weight"));
}

}  // namespace
}  // namespace fsdp::testing
