// The runtime's own checkpoint: save at one world size, load at others
// (resharding, optimizer state included), atomic replacement, and the errors
// for corrupt or foreign checkpoints.
//
// World sizes other than the job's come from sub-communicators of the job's
// ranks: at -np 4 the same test saves at 4 and loads at 1, 2 and 3, and
// saves at 3 and loads at 2.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <mpi.h>
#include <functional>
#include <limits>

#include "checkpoint_test_support.h"
#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/distributed_checkpoint.h"
#include "fsdp/checkpoint/hf_checkpoint.h"
#include "fsdp/mpi_process_group.h"
#include "fsdp/stages/sharded_adamw.h"
#include "mpi_test_environment.h"

namespace fsdp::testing {
namespace {

using stages::ShardedAdamW;

// A model, its optimizer, and some training, all deterministic given (config, world size).
struct Trained {
  std::unique_ptr<stages::MultiStageModel> model;
  std::unique_ptr<ShardedAdamW> optimizer;

  Trained(const models::LlamaConfig& config, std::shared_ptr<ProcessGroup> group,
          int layers_per_stage = 1, int steps = 2) {
    model = build_model(config, std::move(group), layers_per_stage);
    model->initialize_weights(21);
    optimizer = std::make_unique<ShardedAdamW>(model->stages(), stages::ShardedAdamWOptions{});
    for (int step = 0; step < steps; ++step) {
      // Gradients that depend only on the flat index, so any world size has the same ones.
      for (auto* stage : model->stages()) {
        const auto range = stage->layout().shard_range(stage->group().rank());
        stage->gradient_shard().copy_(
            at::sin(at::arange(range.begin, range.end, at::kFloat) * 0.37 + step));
        stage->gradient_shard()
            .narrow(0, stage->layout().padding_in_shard(stage->group().rank()).begin,
                    stage->layout().padding_in_shard(stage->group().rank()).size())
            .zero_();
      }
      optimizer->step(1e-2);
    }
  }
};

// Every stage's unpadded flat weights, gradients and moments, gathered whole.
std::vector<at::Tensor> flat_state(Trained& trained) {
  std::vector<at::Tensor> state;
  const auto stages = trained.model->stages();
  for (std::size_t s = 0; s < stages.size(); ++s) {
    auto* stage = stages[s];
    const auto& layout = stage->layout();
    for (const auto& shard : {stage->weight_shard(), stage->gradient_shard(),
                              trained.optimizer->exp_avg(s), trained.optimizer->exp_avg_sq(s)}) {
      auto whole = at::zeros({layout.padded_numel()}, at::kFloat);
      whole.narrow(0, layout.shard_range(stage->group().rank()).begin, layout.shard_numel())
          .copy_(shard);
      stage->group().all_gather_in_place(span_of(whole));
      state.push_back(whole.narrow(0, 0, layout.unpadded_numel()).clone());
    }
  }
  return state;
}

checkpoint::SaveOptions save_options(std::int64_t step) {
  checkpoint::SaveOptions options;
  options.step = step;
  options.gradients = true;
  options.training_config = {{"lr", 0.01}, {"seed", 21}};
  options.checksum_block_bytes = 4096;  // many blocks even for a small model
  return options;
}

TEST(DistributedCheckpoint, SavedAtOneWorldSizeLoadsBitwiseAtEveryOther) {
  auto group = runtime().process_group();
  SharedDirectory directory(*group, "dcp_reshard");
  const auto config = small_llama(4, true);
  Trained saved(config, group);
  checkpoint::save_checkpoint(directory / "at_full", saved.model->stages(), saved.optimizer.get(),
                              save_options(2));
  const auto expected = flat_state(saved);
  // One more step on the original, for comparing with a step taken after loading.
  saved.optimizer->step(1e-2);
  const auto after_step = flat_state(saved);

  for (int ranks = 1; ranks <= group->size(); ++ranks) {
    auto subgroup = first_ranks(ranks);
    if (!subgroup) continue;
    Trained loaded(config, subgroup, /*layers_per_stage=*/1, /*steps=*/0);
    checkpoint::LoadCheckpointOptions options;
    options.gradients = true;
    options.chunk_bytes = 8192;
    const auto index = checkpoint::load_checkpoint(directory / "at_full", loaded.model->stages(),
                                                   loaded.optimizer.get(), options);
    EXPECT_EQ(index.world_size, group->size());
    EXPECT_EQ(index.step, 2);
    EXPECT_EQ(index.training_config.at("seed"), 21);
    EXPECT_EQ(loaded.optimizer->steps_taken(), 2);
    const auto state = flat_state(loaded);
    ASSERT_EQ(state.size(), expected.size());
    for (std::size_t i = 0; i < state.size(); ++i) {
      EXPECT_TRUE(at::equal(state[i], expected[i]))
          << "array " << i << " loaded at world size " << ranks;
    }
    loaded.optimizer->step(1e-2);
    const auto stepped = flat_state(loaded);
    for (std::size_t i = 0; i < stepped.size(); ++i) {
      // The same step from the same state; the global norm's reduction order may differ.
      EXPECT_TRUE(at::allclose(stepped[i], after_step[i], 1e-6, 1e-7))
          << "array " << i << " at " << ranks;
    }
  }
  group->barrier();
  if (group->size() >= 3) {  // saved at 3, loaded at 2
    if (auto three = first_ranks(3)) {
      Trained at_three(config, three);
      checkpoint::save_checkpoint(directory / "at_three", at_three.model->stages(),
                                  at_three.optimizer.get(), save_options(2));
    }
    group->barrier();
    if (auto two = first_ranks(2)) {
      Trained loaded(config, two, 1, 0);
      checkpoint::load_checkpoint(directory / "at_three", loaded.model->stages(),
                                  loaded.optimizer.get());
      const auto state = flat_state(loaded);
      for (std::size_t i = 0; i < state.size(); ++i) {
        if (i % 4 == 1) continue;  // gradients were not loaded
        EXPECT_TRUE(at::equal(state[i], expected[i])) << "array " << i;
      }
    }
  }
  group->barrier();
}

TEST(DistributedCheckpoint, SavingAgainReplacesAtomicallyAndAnInterruptedSaveLosesNothing) {
  auto group = runtime().process_group();
  SharedDirectory directory(*group, "dcp_atomic");
  const auto config = small_llama();
  Trained first(config, group, 1, 1);
  const auto path = directory / "checkpoint";
  checkpoint::save_checkpoint(path, first.model->stages(), first.optimizer.get(), save_options(1));
  // A save that died half-way leaves a staging directory behind, never a broken checkpoint.
  if (group->rank() == 0) {
    fs::create_directories(directory / "checkpoint.partial");
    std::ofstream(directory / "checkpoint.partial" / "rank-00000-of-00001.safetensors") << "half";
  }
  group->barrier();
  Trained loaded(config, group, 1, 0);
  checkpoint::load_checkpoint(path, loaded.model->stages(), loaded.optimizer.get());
  EXPECT_EQ(loaded.optimizer->steps_taken(), 1);

  Trained second(config, group, 1, 3);
  checkpoint::save_checkpoint(path, second.model->stages(), second.optimizer.get(),
                              save_options(3));
  EXPECT_FALSE(fs::exists(directory / "checkpoint.partial"));
  const auto index =
      checkpoint::load_checkpoint(path, loaded.model->stages(), loaded.optimizer.get());
  EXPECT_EQ(index.step, 3);
  EXPECT_EQ(loaded.optimizer->steps_taken(), 3);
  const auto expected = flat_state(second);
  const auto state = flat_state(loaded);
  for (std::size_t i = 0; i < state.size(); ++i) {
    if (i % 4 == 1) continue;  // gradients were not loaded
    EXPECT_TRUE(at::equal(state[i], expected[i])) << i;
  }
}

// --- errors, on every rank, naming the file and what is wrong -------------------

struct SavedCheckpoint {
  std::shared_ptr<ProcessGroup> group = runtime().process_group();
  SharedDirectory directory{*group, "dcp_errors"};
  models::LlamaConfig config = small_llama(4);
  fs::path path = directory / "checkpoint";

  SavedCheckpoint() {
    Trained trained(config, group, 1, 1);
    checkpoint::save_checkpoint(path, trained.model->stages(), trained.optimizer.get(),
                                save_options(1));
  }
  void expect_load_error(const models::LlamaConfig& target, const std::vector<std::string>& parts,
                         int layers_per_stage = 1) {
    Trained loaded(target, group, layers_per_stage, 0);
    expect_error_on_every_rank(
        [&] { checkpoint::load_checkpoint(path, loaded.model->stages(), loaded.optimizer.get()); },
        parts);
  }
  // Rank 0 changes the file, the others wait.
  template <typename Edit>
  void edit(Edit edit) {
    group->barrier();
    if (group->rank() == 0) edit();
    group->barrier();
  }
};

// Flips a bit of the byte at `offset` from `origin` (std::ios::beg or std::ios::end).
void flip_byte(const fs::path& file, std::int64_t offset,
               std::ios::seekdir origin = std::ios::end) {
  const std::int64_t signed_offset = origin == std::ios::end ? -offset : offset;
  std::fstream stream(file, std::ios::in | std::ios::out | std::ios::binary);
  stream.seekg(signed_offset, origin);
  const char byte = static_cast<char>(stream.get() ^ 0x40);
  stream.seekp(signed_offset, origin);
  stream.put(byte);
}

TEST(DistributedCheckpointErrors, ChecksumMismatchNamesTheFileAndTheBlock) {
  SavedCheckpoint saved;
  const auto file = saved.path / checkpoint::rank_file_name(0, saved.group->size());
  saved.edit([&] { flip_byte(file, 10); });
  saved.expect_load_error(saved.config, {file.string(), "checksum mismatch in block", "corrupt"});
}

// The header is JSON from disk: it is checked against the index's checksums
// before it is parsed, so a corrupt header is named as corruption (and the
// parser never sees bytes that were not saved).
TEST(DistributedCheckpointErrors, CorruptHeaderIsAChecksumMismatchNotAParseError) {
  SavedCheckpoint saved;
  const auto file = saved.path / checkpoint::rank_file_name(0, saved.group->size());
  // Byte 8 is the header's opening brace: flipped, the JSON is invalid.
  saved.edit([&] { flip_byte(file, 8, std::ios::beg); });
  saved.expect_load_error(saved.config, {file.string(), "checksum mismatch in block 0", "corrupt"});
}

TEST(DistributedCheckpointErrors, TruncatedRankFile) {
  SavedCheckpoint saved;
  const auto file =
      saved.path / checkpoint::rank_file_name(saved.group->size() - 1, saved.group->size());
  saved.edit([&] { fs::resize_file(file, fs::file_size(file) - 100); });
  saved.expect_load_error(saved.config, {file.filename().string()});
}

TEST(DistributedCheckpointErrors, MissingRankFile) {
  SavedCheckpoint saved;
  const auto file = saved.path / checkpoint::rank_file_name(0, saved.group->size());
  saved.edit([&] { fs::remove(file); });
  saved.expect_load_error(saved.config, {file.string(), "cannot open"});
}

TEST(DistributedCheckpointErrors, ADifferentModelIsALayoutMismatch) {
  SavedCheckpoint saved;
  auto other = saved.config;
  other.intermediate = 32;
  saved.expect_load_error(other, {"index.json", "decoder.0.mlp.experts.gate_up_proj", "[4, 48, 16]",
                                  "[4, 64, 16]", "a different model"});
  saved.expect_load_error(saved.config, {"index.json", "stages", "layers_per_stage"}, 2);
}

// An index cannot send a reader outside the checkpoint directory: neither by
// naming another path for a rank file, nor by a rank file that is a link out.
TEST(DistributedCheckpointErrors, RankFilesOutsideTheDirectoryAreRefused) {
  SavedCheckpoint saved;
  const int last = saved.group->size() - 1;
  const std::string name = checkpoint::rank_file_name(last, saved.group->size());
  const auto rename_in_index = [&](const std::string& replacement) {
    saved.edit([&] {
      std::ifstream in(saved.path / "index.json");
      auto index = nlohmann::json::parse(in);
      in.close();
      index["files"][last]["name"] = replacement;
      std::ofstream(saved.path / "index.json") << index.dump(1);
    });
  };
  saved.edit([&] {
    fs::create_directories(saved.directory / "elsewhere");
    fs::copy_file(saved.path / name, saved.directory / "elsewhere" / name);
  });
  rename_in_index("../elsewhere/" + name);
  saved.expect_load_error(saved.config, {"index.json: file " + std::to_string(last) +
                                             " is named \"../elsewhere/" + name + "\"",
                                         "must be \"" + name + "\", in the checkpoint directory"});
  rename_in_index("/etc/passwd");
  saved.expect_load_error(saved.config, {"is named \"/etc/passwd\""});
  rename_in_index(name);
  saved.edit([&] {
    fs::remove(saved.path / name);
    fs::create_symlink(saved.directory / "elsewhere" / name, saved.path / name);
  });
  saved.expect_load_error(saved.config, {"index.json: file " + std::to_string(last) + ": \"" +
                                             name + "\" leads outside",
                                         "must lie in its own directory"});
}

// Hostile indexes and files: a FIFO or a directory in place of index.json
// (a FIFO hung the reader), an index nested 60,000 deep, the files array
// permuted, and rank files swapped on disk (they loaded as each other's).
TEST(DistributedCheckpointErrors, FifoDeepIndexAndSwappedRankFilesAreRefused) {
  SavedCheckpoint saved;
  const auto index_path = saved.path / "index.json";
  saved.edit([&] { fs::rename(index_path, saved.directory / "index.json.good"); });
  saved.edit([&] { ASSERT_EQ(::mkfifo(index_path.c_str(), 0600), 0); });
  saved.expect_load_error(saved.config, {"index.json: not a regular file"});
  saved.edit([&] {
    fs::remove(index_path);
    fs::create_directory(index_path);
  });
  saved.expect_load_error(saved.config, {"index.json: not a regular file (a directory)"});
  saved.edit([&] {
    fs::remove(index_path);
    std::ofstream(index_path) << std::string(60000, '[') << std::string(60000, ']');
  });
  saved.expect_load_error(saved.config, {"index.json: JSON nested deeper than 64 levels"});
  saved.edit([&] { fs::rename(saved.directory / "index.json.good", index_path); });
  const auto rank_file = saved.path / checkpoint::rank_file_name(0, saved.group->size());
  saved.edit([&] {
    fs::rename(rank_file, saved.directory / "rank-file.good");
    ASSERT_EQ(::mkfifo(rank_file.c_str(), 0600), 0);
  });
  saved.expect_load_error(saved.config, {rank_file.string(), "not a regular file"});
  saved.edit([&] {
    fs::remove(rank_file);
    fs::rename(saved.directory / "rank-file.good", rank_file);
  });
  if (saved.group->size() < 2) return;  // nothing to swap at world size 1

  const auto edit_index = [&](const std::function<void(nlohmann::json&)>& change) {
    saved.edit([&] {
      std::ifstream in(index_path);
      auto index = nlohmann::json::parse(in);
      in.close();
      change(index);
      std::ofstream(index_path) << index.dump(1);
    });
  };
  edit_index([](nlohmann::json& index) { std::swap(index["files"][0], index["files"][1]); });
  const std::string first = checkpoint::rank_file_name(0, saved.group->size());
  const std::string second = checkpoint::rank_file_name(1, saved.group->size());
  saved.expect_load_error(saved.config, {"file 0 is named \"" + second + "\""});
  edit_index([](nlohmann::json& index) { std::swap(index["files"][0], index["files"][1]); });
  // Swapped on disk, with the index's records following them: the files' own
  // metadata still says whose they are.
  saved.edit([&] {
    fs::rename(saved.path / first, saved.path / "swap");
    fs::rename(saved.path / second, saved.path / first);
    fs::rename(saved.path / "swap", saved.path / second);
  });
  edit_index([&](nlohmann::json& index) {
    std::swap(index["files"][0], index["files"][1]);
    index["files"][0]["name"] = first;
    index["files"][0]["rank"] = 0;
    index["files"][1]["name"] = second;
    index["files"][1]["rank"] = 1;
  });
  saved.expect_load_error(saved.config, {first + ": its metadata says format", "rank 1 of",
                                         "the index lists it as rank 0 of"});
}

// Numbers in index.json are validated with ranges, naming the key
// (4294967299 ranks read as 3, and -1 elements loaded until MPI aborted).
TEST(DistributedCheckpointErrors, IndexNumbersOutOfRangeNameTheKey) {
  SavedCheckpoint saved;
  const auto index_path = saved.path / "index.json";
  saved.edit([&] { fs::copy_file(index_path, saved.directory / "index.json.good"); });
  const auto expect_refused = [&](const std::function<void(nlohmann::json&)>& change,
                                  const std::string& expected) {
    saved.edit([&] {
      std::ifstream in(saved.directory / "index.json.good");
      auto index = nlohmann::json::parse(in);
      change(index);
      std::ofstream(index_path) << index.dump(1);
    });
    saved.expect_load_error(saved.config, {"index.json", expected});
  };
  expect_refused([](nlohmann::json& index) { index["world_size"] = 4294967299ull; },
                 "field \"world_size\" is 4294967299, expected an integer from 1 to");
  expect_refused([](nlohmann::json& index) { index["step"] = -1; },
                 "field \"step\" is -1, expected an integer from 0 to");
  expect_refused([](nlohmann::json& index) { index["optimizer_steps"] = -5; },
                 "field \"optimizer_steps\" is -5");
  expect_refused([](nlohmann::json& index) { index["stages"][0]["unpadded_numel"] = -1; },
                 "field \"unpadded_numel\" is -1");
  expect_refused([](nlohmann::json& index) { index["step"] = "ten"; },
                 "field \"step\" is \"ten\", expected an integer");
  expect_refused(
      [](nlohmann::json& index) {
        index["files"][0]["bytes"] = std::numeric_limits<std::int64_t>::max();
      },
      "field \"bytes\" is 9223372036854775807");
  expect_refused(
      [](nlohmann::json& index) {
        index["stages"][0]["parameters"][0]["flat_range"] = {5, 2};
      },
      "flat_range must be [begin, end] with begin <= end");
}

// A save replaces the checkpoint directory: it must never take the user's
// files with it (an eval.txt, a tb/ folder), and a --checkpoint-dir that is a
// symbolic link keeps pointing where it pointed.
TEST(DistributedCheckpoint, UserFilesAreNeverDeletedAndLinksStay) {
  SavedCheckpoint saved;
  Trained trained(saved.config, saved.group, 1, 1);
  saved.edit([&] {
    std::ofstream(saved.path / "eval.txt") << "mine";
    fs::create_directories(saved.path / "tb");
  });
  expect_error_on_every_rank(
      [&] {
        checkpoint::save_checkpoint(saved.path, trained.model->stages(), trained.optimizer.get(),
                                    save_options(2));
      },
      {saved.path.string() + " holds files this runtime did not write (eval.txt, tb/)",
       "replacing it would delete them"});
  EXPECT_EQ(file_bytes(saved.path / "eval.txt"), "mine");
  EXPECT_TRUE(fs::is_directory(saved.path / "tb"));
  EXPECT_EQ(checkpoint::read_checkpoint_index(saved.path).step, 1) << "the old checkpoint is gone";

  const auto real = saved.directory / "real-checkpoint";
  const auto link = saved.directory / "link-to-checkpoint";
  saved.edit([&] {
    fs::create_directories(real);
    fs::create_directory_symlink(real, link);
  });
  for (const std::int64_t step : {3, 4}) {  // a first save into the link, then a replacement
    checkpoint::save_checkpoint(link, trained.model->stages(), trained.optimizer.get(),
                                save_options(step));
    EXPECT_TRUE(fs::is_symlink(link)) << "step " << step;
    EXPECT_EQ(checkpoint::read_checkpoint_index(real).step, step);
  }
}

TEST(DistributedCheckpointErrors, CorruptOrMissingIndex) {
  SavedCheckpoint saved;
  saved.edit([&] {
    std::ofstream(saved.path / "index.json") << "{\"format\": \"fsdp-runtime-checkpoint\", ";
  });
  saved.expect_load_error(saved.config, {"index.json", "not valid JSON"});
  saved.edit([&] { fs::remove(saved.path / "index.json"); });
  saved.expect_load_error(saved.config, {"index.json", "cannot open"});
  // Read as an HF directory (shard-inspect DIR), its rank files are named for what they are.
  expect_error_on_every_rank(
      [&] { checkpoint::HfCheckpoint checkpoint(saved.path); },
      {"holds the rank files of a distributed checkpoint but no index.json"});
  saved.path = saved.directory / "never_saved";
  saved.expect_load_error(saved.config, {"never_saved", "no such checkpoint directory"});
}

TEST(DistributedCheckpointErrors, NeverReplacesADirectoryThatIsNotACheckpoint) {
  auto group = runtime().process_group();
  SharedDirectory directory(*group, "dcp_precious");
  if (group->rank() == 0) {
    fs::create_directories(directory / "precious");
    std::ofstream(directory / "precious" / "data.bin") << "keep";
  }
  group->barrier();
  Trained trained(small_llama(), group, 1, 0);
  expect_error_on_every_rank(
      [&] {
        checkpoint::save_checkpoint(directory / "precious", trained.model->stages(), nullptr,
                                    checkpoint::SaveOptions{});
      },
      {"precious holds files this runtime did not write (data.bin)",
       "save the checkpoint elsewhere"});
  EXPECT_EQ(file_bytes(directory / "precious" / "data.bin"), "keep");
  // And a checkpoint without optimizer state cannot restore an optimizer.
  checkpoint::save_checkpoint(directory / "weights_only", trained.model->stages(), nullptr,
                              checkpoint::SaveOptions{});
  expect_error_on_every_rank(
      [&] {
        checkpoint::load_checkpoint(directory / "weights_only", trained.model->stages(),
                                    trained.optimizer.get());
      },
      {"weights_only", "no optimizer state"});
}

}  // namespace
}  // namespace fsdp::testing
