// fsdp-train's options: what a run trains, how, and where it saves, parsed
// from the command line (Boost.Program_options) and checked before any rank
// allocates anything, so that an impossible run stops at once with one message.
#pragma once

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "fsdp/models/llama.h"
#include "fsdp/stages/multi_stage_model.h"

namespace fsdp::launch {

struct TrainOptions {
  // Where --resume reads: the series' step `resume_from`, or checkpoint_dir
  // (a series resolves to its latest checkpoint when read).
  std::string resume_source() const;
  bool keeps_series() const { return keep_checkpoints > 0 || keep_every > 0; }

  // The model: a preset ("dense", "moe", "stacked"), then any size given; or
  // "hf <model_type>" when it comes from an HF directory's config.json.
  std::string preset = "moe";
  models::LlamaConfig model;

  // Training.
  std::int64_t steps = 300;
  // End this run after this step (0: at `steps`), saving a checkpoint, as a
  // job with a time limit would; the schedule still spans `steps`, so a
  // --resume continues exactly where an uninterrupted run would be.
  std::int64_t stop_after = 0;
  // Stop cleanly (a checkpoint, exit 0) on these signals (stop_signals.h), or
  // before `time_limit_minutes` (0: none) would pass, allowing for the save.
  std::string stop_signals = "TERM,USR1";
  double time_limit_minutes = 0;
  // Steps whose loss or gradient norm is not finite update nothing; more
  // than this many in a run end it with an error.
  std::int64_t max_skipped_steps = 10;
  std::int64_t batch = 24;         // global: sequences per step over all ranks
  std::int64_t micro_batches = 1;  // per rank and step; gradients accumulate
  std::int64_t sequence_length = 48;
  double learning_rate = 3e-3;
  double min_learning_rate = 3e-4;
  std::int64_t warmup_steps = 20;
  double weight_decay = 0.01;
  double max_gradient_norm = 1.0;
  std::uint64_t seed = 1;

  // Data (fsdp/launch/training_data.h). `data` empty: the synthetic sequences.
  std::string data;        // token file, or directory of them, to train on
  std::string data_dtype;  // of raw (.bin) token files; empty: only .npy files
  // data::TokenDataset::identity() of `data` (null for synthetic data): a
  // resumed run's order of windows depends on it, so --resume compares it.
  nlohmann::json data_identity;
  std::string eval_data;           // token file or directory; empty: no evaluation
  std::int64_t eval_interval = 0;  // steps between evaluations; 0: at the start and end only

  // The runtime.
  int zero_stage = 3;
  std::string compute_dtype = "float32";  // of the weight buffers; shards are float32
  int layers_per_stage = 1;
  // 0: every stage has its own; stages::kAutomaticBuffers: the runtime chooses
  // (MultiStageOptions). Positive counts need ZeRO-3 (weights) or ZeRO-2/3 (gradients).
  int shared_weight_buffers = stages::kAutomaticBuffers;
  int shared_gradient_buffers = stages::kAutomaticBuffers;
  bool prefetch = false;
  bool asynchronous_reduction = false;  // stages::MultiStageOptions::asynchronous_reduction
  // stages::ActivationCheckpointing by name: none, stages or layers.
  std::string activation_checkpointing = "none";
  bool trim_heap = true;  // stages::MultiStageOptions::trim_heap

  // Checkpoints and I/O.
  std::string checkpoint_dir;              // empty: no checkpoints
  std::int64_t checkpoint_interval = 100;  // steps; 0: only at the end
  bool resume = false;
  // A series of checkpoints (checkpoint_series.h) instead of one replaced at
  // every save: keep the last `keep_checkpoints` and every step that is a
  // multiple of `keep_every`. Both 0: one checkpoint.
  std::int64_t keep_checkpoints = 0;
  std::int64_t keep_every = 0;
  std::int64_t resume_from = 0;  // with resume: this step of the series (0: the latest)
  std::string init_from_hf;      // HF directory or file to start from
  std::string export_hf;         // HF directory to write at the end
  // "bfloat16", "float16" or "float32"; empty: the dtype the model came in
  // (its HF checkpoint's), float32 for the presets.
  std::string export_dtype;
  // A model from an HF directory (--init-from-hf DIR with a config.json, or a
  // --resume of such a run): its config.json as read, and the directory, for
  // export. Null / empty for the presets.
  nlohmann::json hf_config;
  std::string hf_directory;
  std::vector<std::string> inspect;  // parameters to print at the end
  std::string metrics_file;          // JSON lines of each logged step (metrics_file.h); empty: none
  std::int64_t log_interval = 10;
};

// Every fsdp-train option, with its default and help text.
boost::program_options::options_description train_options_description();

// The options in `values`, checked against each other and against
// `world_size`. Throws boost::program_options::error (printed once, exit
// status 2) naming the option, its value and what was expected: for example
// a global batch that `world_size` x micro-batches does not divide. Opens
// --data's files (their headers only; data::DataError for a bad one).
TrainOptions train_options_from(const boost::program_options::variables_map& values,
                                int world_size);

// What a checkpoint records of the run ("training_config" in its index):
// {"model": {...}, "training": {...}}. The model part is what --resume checks
// and what shard-inspect rebuilds the conversion rules from.
nlohmann::json to_json(const TrainOptions& options);

// On --resume: how this run differs from the one that saved `saved` (a
// checkpoint's training_config). `refused`: the model ("model hidden: 64 in
// the checkpoint, 32 here") and whatever changes the losses from there on
// (seed, batch, sequence length, learning rates, warm-up, weight decay,
// clipping, the training tokens), because --resume promises the uninterrupted run's losses.
// `schedule_note`: a different --steps only stretches or shortens the
// schedule -- allowed (training longer than planned is common), and said.
struct ResumeDifferences {
  std::vector<std::string> refused;
  std::string schedule_note;  // empty when --steps is the saved run's
};
ResumeDifferences resume_differences(const nlohmann::json& saved, const TrainOptions& options);

}  // namespace fsdp::launch
