#include "fsdp/launch/train_options.h"

#include <cmath>
#include <filesystem>
#include <sstream>
#include <string>

#include "fsdp/checkpoint/checkpoint_series.h"
#include "fsdp/checkpoint/distributed_checkpoint.h"
#include "fsdp/data/data_error.h"
#include "fsdp/launch/stop_signals.h"
#include "fsdp/launch/training_data.h"
#include "fsdp/models/hf_config.h"
#include "fsdp/models/hf_model_io.h"
#include "fsdp/models/llama_config_json.h"
#include "fsdp/stages/multi_stage_model.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace fsdp::launch {
namespace {

// The presets: small enough that the default run (moe, 300 steps) takes about
// two minutes at -np 4 on a 2-core machine, large enough to learn the data.
models::LlamaConfig preset_config(const std::string& preset) {
  models::LlamaConfig config;
  config.vocabulary = 64;
  config.hidden = 128;
  config.heads = 4;
  config.intermediate = 256;
  config.layers = 4;
  if (preset == "moe") {
    config.experts = 4;
    config.experts_per_token = 2;
    config.intermediate = 128;
    // Balancing on by default, as Fast-LLM and Megatron recommend: plain
    // top-k routing lets a few experts take most tokens.
    config.router_aux_loss_coefficient = 0.01;
  } else if (preset == "stacked") {
    config.stacked_layers = true;
  } else if (preset != "dense") {
    throw po::invalid_option_value("--model " + preset + " (expected dense, moe or stacked)");
  }
  return config;
}

[[noreturn]] void refuse(const std::string& option, const std::string& value,
                         const std::string& expected) {
  throw po::invalid_option_value("--" + option + " " + value + " (" + expected + ")");
}

[[noreturn]] void refuse(const std::string& option, double value, const std::string& expected) {
  std::ostringstream text;
  text << value;
  refuse(option, text.str(), expected);
}

// A real-valued option that must be finite and at least `minimum` (NaN fails every comparison).
double finite_at_least(const po::variables_map& values, const std::string& option, double minimum,
                       const std::string& expected) {
  const double value = values[option].as<double>();
  if (!std::isfinite(value) || !(value >= minimum)) refuse(option, value, expected);
  return value;
}

template <typename T>
T at_least(const po::variables_map& values, const std::string& option, T minimum) {
  const T value = values[option].as<T>();
  if (value < minimum)
    refuse(option, std::to_string(value), "expected at least " + std::to_string(minimum));
  return value;
}

// A shared-buffer count: "auto" (stages::kAutomaticBuffers) or an integer >= 0.
int buffer_count(const po::variables_map& values, const std::string& option) {
  const std::string text = values[option].as<std::string>();
  if (text == "auto") return stages::kAutomaticBuffers;
  const char* expected = "expected auto or a whole number >= 0";
  if (text.empty() || text.size() > 6 ||
      text.find_first_not_of("0123456789") != std::string::npos) {
    refuse(option, text, expected);
  }
  return std::stoi(text);
}

// A size option that overrides the preset when given (0 keeps the preset's).
void override_size(const po::variables_map& values, const std::string& option,
                   std::int64_t& field) {
  const auto value = values[option].as<std::int64_t>();
  if (value < 0)
    refuse(option, std::to_string(value), "expected a positive size, or 0 for the preset's");
  if (value > 0) field = value;
}

// --init-from-hf DIR with a config.json: the model is the config's. A size
// option given as well must agree with it.
void take_model_from_hf(const po::variables_map& values, TrainOptions& options) {
  const fs::path directory = options.init_from_hf;
  if (!fs::is_directory(directory) || !fs::exists(directory / "config.json")) return;
  models::HfModelConfig hf;
  try {
    hf = models::read_hf_config(directory);
  } catch (const ConfigurationError& error) {
    throw po::error(std::string("--init-from-hf: ") + error.what());
  }
  const auto agree = [&](const std::string& option, std::int64_t given, std::int64_t config,
                         const std::string& field) {
    if (given > 0 && given != config) {
      refuse(option, std::to_string(given),
             "the model in " + options.init_from_hf + " has " + field + " = " +
                 std::to_string(config) + " (leave the size options out: config.json sets them)");
    }
  };
  agree("hidden", values["hidden"].as<std::int64_t>(), hf.model.hidden, "hidden_size");
  agree("layers", values["layers"].as<std::int64_t>(), hf.model.layers, "num_hidden_layers");
  agree("heads", values["heads"].as<std::int64_t>(), hf.model.heads, "num_attention_heads");
  agree("intermediate", values["intermediate"].as<std::int64_t>(), hf.model.intermediate,
        "intermediate_size");
  agree("vocabulary", values["vocabulary"].as<std::int64_t>(), hf.model.vocabulary, "vocab_size");
  const auto experts = values["experts"].as<std::int64_t>();
  if (experts >= 0 && experts != hf.model.experts) {
    refuse("experts", std::to_string(experts),
           "the model in " + options.init_from_hf + " has " + std::to_string(hf.model.experts) +
               " experts per layer");
  }
  if (values["tie-embeddings"].as<bool>() && !hf.model.tie_embeddings) {
    refuse("tie-embeddings", "on",
           "the model in " + options.init_from_hf + " has tie_word_embeddings = false");
  }
  if (!values["model"].defaulted()) {
    refuse("model", values["model"].as<std::string>(),
           "the model comes from " + options.init_from_hf + "/config.json (" + hf.model_type +
               "); leave --model out");
  }
  if (hf.max_positions > 0 && options.sequence_length > hf.max_positions) {
    refuse("seq-len", std::to_string(options.sequence_length),
           "expected at most the model's max_position_embeddings = " +
               std::to_string(hf.max_positions));
  }
  options.model = hf.model;
  options.model.max_sequence = options.sequence_length;
  options.preset = "hf " + hf.model_type;
  options.hf_config = hf.source;
  options.hf_directory = fs::absolute(directory).lexically_normal().string();
}

// --resume of a run whose model came from HF: the model is the one it saved.
void take_model_from_resumed_hf_run(TrainOptions& options) {
  nlohmann::json saved;
  try {
    saved = checkpoint::read_checkpoint_index(options.resume_source()).training_config;
  } catch (const std::exception&) {
    return;  // preflight_training() reports a missing or bad checkpoint with its own message
  }
  if (!saved.is_object() || !saved.contains("training") || !saved.contains("model")) return;
  const auto& training = saved.at("training");
  // Anything malformed is left to preflight_training(), which names the file.
  const auto preset = training.is_object() ? training.find("preset") : training.end();
  if (preset == training.end() || !preset->is_string() ||
      preset->get<std::string>().rfind("hf ", 0) != 0) {
    return;
  }
  options.model = models::llama_config_from_json(saved.at("model"));
  options.model.max_sequence = options.sequence_length;
  options.preset = preset->get<std::string>();
  options.hf_config = training.value("hf_config", nlohmann::json());
  const auto directory = training.find("hf_directory");
  options.hf_directory =
      directory != training.end() && directory->is_string() ? directory->get<std::string>() : "";
}

// --router-aux-loss-coef and --router-z-loss-coef over the model's own
// (preset or config.json); only for a model with experts.
void take_router_losses(const po::variables_map& values, TrainOptions& options) {
  for (const auto& [option, coefficient] :
       {std::pair{"router-aux-loss-coef", &options.model.router_aux_loss_coefficient},
        std::pair{"router-z-loss-coef", &options.model.router_z_loss_coefficient}}) {
    const double value = values[option].as<double>();
    if (value == -1) continue;
    if (!std::isfinite(value) || value < 0) {
      refuse(option, value, "expected a coefficient of 0 or more, or -1 for the model's own");
    }
    if (options.model.experts == 0 && value > 0) {
      refuse(option, value, "the model has no experts, so no router to balance");
    }
    *coefficient = value;
  }
}

// The data options; opens --data (its headers, not its tokens) for the
// identity a checkpoint records.
void take_data(const po::variables_map& values, TrainOptions& options) {
  options.data = values["data"].as<std::string>();
  options.data_dtype = values["data-dtype"].as<std::string>();
  options.eval_data = values["eval-data"].as<std::string>();
  options.eval_interval = at_least<std::int64_t>(values, "eval-interval", 0);
  if (!options.data_dtype.empty()) {
    try {
      data::token_dtype_from_name(options.data_dtype);
    } catch (const data::DataError&) {
      refuse("data-dtype", options.data_dtype, "expected uint16, uint32, int32 or int64");
    }
  }
  if (options.eval_interval > 0 && options.eval_data.empty()) {
    throw po::error("--eval-interval " + std::to_string(options.eval_interval) +
                    " needs --eval-data, the tokens to evaluate on");
  }
  if (!options.data.empty()) {
    options.data_identity = open_token_data("data", options).identity();
  }
}

}  // namespace

po::options_description train_options_description() {
  po::options_description model("Model (the reference Llama; sizes of 0 keep the preset's)");
  model.add_options()(
      "model", po::value<std::string>()->default_value("moe"),
      "preset: dense (4 layers, hidden 128), moe (the same with 4 experts per layer, top 2), "
      "stacked (dense, with the layers' weights stacked into [layers, ...] parameters)")(
      "hidden", po::value<std::int64_t>()->default_value(0), "hidden size")(
      "layers", po::value<std::int64_t>()->default_value(0), "decoder layers")(
      "heads", po::value<std::int64_t>()->default_value(0), "attention heads")(
      "intermediate", po::value<std::int64_t>()->default_value(0), "MLP (or expert) width")(
      "experts", po::value<std::int64_t>()->default_value(-1),
      "experts per layer (0: dense MLP; -1 keeps the preset's)")(
      "vocabulary", po::value<std::int64_t>()->default_value(0), "vocabulary size")(
      "tie-embeddings", po::bool_switch(), "the output head reuses the input embedding")(
      "router-aux-loss-coef", po::value<double>()->default_value(-1),
      "MoE load-balancing loss coefficient (E x sum of tokens fraction x mean probability per "
      "expert, per sequence; -1: the preset's 0.01, or config.json's router_aux_loss_coef when "
      "its output_router_logits is true, else 0)")(
      "router-z-loss-coef", po::value<double>()->default_value(-1),
      "MoE router z-loss coefficient (mean squared logsumexp of the router logits; -1: 0, or "
      "config.json's router_z_loss_coef as above)");

  po::options_description training("Training");
  training.add_options()("steps", po::value<std::int64_t>()->default_value(300),
                         "optimizer steps in all (a resumed run continues up to this step)")(
      "stop-after", po::value<std::int64_t>()->default_value(0),
      "end this run after this step, saving a checkpoint (for time-limited jobs: the schedule "
      "still spans --steps, and --resume carries on)")(
      "stop-signals", po::value<std::string>()->default_value("TERM,USR1"),
      "signals that stop the run cleanly: the ranks agree within a step, save a checkpoint and "
      "exit 0 (for SLURM's --signal=USR1@120 or a preemption's SIGTERM); empty: none")(
      "time-limit", po::value<double>()->default_value(0),
      "minutes this run may take: it stops with a checkpoint before then, allowing one step and "
      "the last save's time (0: no limit)")(
      "max-skipped-steps", po::value<std::int64_t>()->default_value(10),
      "steps with a non-finite loss or gradient norm are skipped (nothing updated); more than "
      "this many end the run with an error")(
      "batch", po::value<std::int64_t>()->default_value(24),
      "global batch: sequences per step over all ranks, split evenly (so the same --seed gives "
      "the same losses at every world size that divides it)")(
      "micro-batches", po::value<std::int64_t>()->default_value(1),
      "micro-batches per rank and step; their gradients accumulate")(
      "seq-len", po::value<std::int64_t>()->default_value(48), "tokens per sequence")(
      "lr", po::value<double>()->default_value(3e-3, "3e-3"), "peak learning rate")(
      "min-lr", po::value<double>()->default_value(3e-4, "3e-4"),
      "learning rate at the end of the cosine decay")(
      "warmup", po::value<std::int64_t>()->default_value(20), "linear warm-up steps")(
      "weight-decay", po::value<double>()->default_value(0.01, "0.01"),
      "AdamW weight decay (matrices and embeddings)")(
      "clip", po::value<double>()->default_value(1.0, "1"),
      "clip the global gradient norm to this (0: off)")(
      "seed", po::value<std::uint64_t>()->default_value(1),
      "seed of the initial weights and of the data");

  po::options_description data("Data (default: synthetic sequences, generated)");
  data.add_options()("data", po::value<std::string>()->default_value(""),
                     "train on these tokens: a .npy or raw .bin token file, or a directory of "
                     "them read in name order")(
      "data-dtype", po::value<std::string>()->default_value(""),
      "token type of raw .bin files: uint16, uint32, int32 or int64 (.npy files say theirs)")(
      "eval-data", po::value<std::string>()->default_value(""),
      "evaluate the mean next-token loss over every window of these tokens, before the first "
      "step, every --eval-interval steps and at the end")(
      "eval-interval", po::value<std::int64_t>()->default_value(0),
      "steps between evaluations (0: only before the first step and after the last)");

  po::options_description runtime("Runtime");
  runtime.add_options()(
      "zero-stage", po::value<int>()->default_value(3),
      "1: weights and gradients stay gathered; 2: gradients sharded as soon as reduced; "
      "3: weights gathered only while a stage computes")(
      "dtype", po::value<std::string>()->default_value("float32"),
      "compute dtype of the gathered weights: float32 or bfloat16 (the shards stay float32)")(
      "layers-per-stage", po::value<int>()->default_value(1), "layers sharing one flat shard")(
      "shared-weight-buffers", po::value<std::string>()->default_value("auto"),
      "weight buffers shared round-robin by the stages (ZeRO-3; 0: one per stage; auto: 2 "
      "under ZeRO-3 with more than 2 stages and more than 1 rank, else 0)")(
      "shared-gradient-buffers", po::value<std::string>()->default_value("auto"),
      "gradient buffers shared round-robin (ZeRO-2/3; 0: one per stage; auto: 1 under ZeRO-3 "
      "with more than 1 stage, 2 with --asynchronous-reduction and more than 2, else 0)")(
      "prefetch", po::bool_switch(),
      "start the next stage's all-gather before the current one computes")(
      "asynchronous-reduction", po::bool_switch(),
      "ZeRO-2/3: reduce-scatter each stage's gradients while the previous stage's backward "
      "computes (the same gradients; auto shared gradient buffers become 2)")(
      "activation-checkpointing", po::value<std::string>()->default_value("none"),
      "what the forward keeps for the backward: none (every graph), stages (each stage's "
      "input; the stage is recomputed before its backward), layers (each layer's input; at "
      "most one layer's graph is alive). Same losses, less memory, one more forward")(
      "no-heap-trim", po::bool_switch(),
      "keep the C heap's free pages instead of handing them back before the backward (and, "
      "with checkpointing, before each stage's recomputation): a little faster, more memory");

  po::options_description io("Checkpoints and output");
  io.add_options()("checkpoint-dir",
                   po::value<std::string>()->default_value("fsdp-train-checkpoint"),
                   "where checkpoints are saved (atomically), at every interval and at the end")(
      "no-checkpoint", po::bool_switch(), "save no checkpoint")(
      "checkpoint-interval", po::value<std::int64_t>()->default_value(100),
      "steps between checkpoints (0: only at the end)")(
      "keep-checkpoints", po::value<std::int64_t>()->default_value(0),
      "keep the last K checkpoints, each in --checkpoint-dir/step-NNNNNNNN with 'latest' naming "
      "the newest complete one (0: one checkpoint, replaced at every save)")(
      "keep-every", po::value<std::int64_t>()->default_value(0),
      "with a series of checkpoints, also keep every step that is a multiple of M for good")(
      "resume-from", po::value<std::int64_t>()->default_value(0),
      "resume from this step of the series in --checkpoint-dir instead of the latest")(
      "metrics-file", po::value<std::string>()->default_value(""),
      "append one JSON line per logged step (step, loss, lr, gradient norm, tokens/s, "
      "collective time, skipped steps, peak memory per rank, router losses and expert load) to "
      "this file; a resumed run "
      "first drops the lines of the steps it takes again")(
      "resume", po::bool_switch(),
      "continue from the checkpoint in --checkpoint-dir (at any world size), with the losses an "
      "uninterrupted run would have had")(
      "init-from-hf", po::value<std::string>()->default_value(""),
      "start from a HuggingFace safetensors file or directory (converted on the way in)")(
      "export-hf", po::value<std::string>()->default_value(""),
      "write the trained model as a HuggingFace directory at the end: config.json, the "
      "safetensors files in the source's naming, and the source's generation and tokenizer "
      "files")("export-dtype", po::value<std::string>()->default_value(""),
               "dtype of the exported tensors: bfloat16, float16 or float32 (default: the "
               "dtype the model came in; float32 for the presets)")(
      "inspect", po::value<std::vector<std::string>>()->composing(),
      "print this parameter's true values and statistics from the shards at the end "
      "(repeatable)")("log-interval", po::value<std::int64_t>()->default_value(10),
                      "steps between progress lines");

  po::options_description all;
  all.add(model).add(training).add(data).add(runtime).add(io);
  return all;
}

TrainOptions train_options_from(const po::variables_map& values, int world_size) {
  TrainOptions options;
  options.preset = values["model"].as<std::string>();
  options.model = preset_config(options.preset);
  override_size(values, "hidden", options.model.hidden);
  override_size(values, "layers", options.model.layers);
  override_size(values, "heads", options.model.heads);
  override_size(values, "intermediate", options.model.intermediate);
  override_size(values, "vocabulary", options.model.vocabulary);
  const auto experts = values["experts"].as<std::int64_t>();
  if (experts < -1)
    refuse("experts", std::to_string(experts), "expected 0 or more, or -1 for the preset's");
  if (experts >= 0) options.model.experts = experts;
  if (options.model.experts > 0 && options.model.experts < options.model.experts_per_token) {
    options.model.experts_per_token = options.model.experts;
  }
  options.model.tie_embeddings = values["tie-embeddings"].as<bool>();
  if (options.model.hidden % (2 * options.model.heads) != 0) {
    refuse("hidden", std::to_string(options.model.hidden),
           "expected a multiple of 2 x heads = " + std::to_string(2 * options.model.heads));
  }

  options.steps = at_least<std::int64_t>(values, "steps", 1);
  options.stop_after = at_least<std::int64_t>(values, "stop-after", 0);
  options.stop_signals = values["stop-signals"].as<std::string>();
  try {
    parse_stop_signals(options.stop_signals);
  } catch (const std::invalid_argument& error) {
    refuse("stop-signals", options.stop_signals, error.what());
  }
  options.time_limit_minutes = values["time-limit"].as<double>();
  if (!(options.time_limit_minutes >= 0 && options.time_limit_minutes <= 1e7)) {
    refuse("time-limit", options.time_limit_minutes,
           "expected minutes from 0 (no limit) to 10000000");
  }
  options.max_skipped_steps = at_least<std::int64_t>(values, "max-skipped-steps", 0);
  if (options.stop_after > options.steps) {
    refuse("stop-after", std::to_string(options.stop_after),
           "expected at most --steps " + std::to_string(options.steps));
  }
  options.batch = at_least<std::int64_t>(values, "batch", 1);
  options.micro_batches = at_least<std::int64_t>(values, "micro-batches", 1);
  // Checked before multiplying: a huge --micro-batches must not wrap to 0.
  if (options.micro_batches > options.batch ||
      options.batch % (world_size * options.micro_batches) != 0) {
    refuse("batch", std::to_string(options.batch),
           "the global batch must split evenly: " + std::to_string(world_size) + " ranks x " +
               std::to_string(options.micro_batches) + " micro-batches do not divide it");
  }
  options.sequence_length = at_least<std::int64_t>(values, "seq-len", 2);
  options.model.max_sequence = options.sequence_length;
  options.learning_rate = finite_at_least(values, "lr", 0, "expected a finite number > 0");
  if (options.learning_rate == 0) refuse("lr", "0", "expected a finite number > 0");
  options.min_learning_rate =
      finite_at_least(values, "min-lr", 0, "expected a finite number between 0 and --lr");
  if (options.min_learning_rate > options.learning_rate) {
    refuse("min-lr", values["min-lr"].as<double>(), "expected a finite number between 0 and --lr");
  }
  options.warmup_steps = at_least<std::int64_t>(values, "warmup", 0);
  options.weight_decay =
      finite_at_least(values, "weight-decay", 0, "expected a finite number >= 0");
  options.max_gradient_norm =
      finite_at_least(values, "clip", 0, "expected a finite number >= 0 (0: no clipping)");
  options.seed = values["seed"].as<std::uint64_t>();

  options.zero_stage = values["zero-stage"].as<int>();
  if (options.zero_stage < 1 || options.zero_stage > 3) {
    refuse("zero-stage", std::to_string(options.zero_stage), "expected 1, 2 or 3");
  }
  options.compute_dtype = values["dtype"].as<std::string>();
  if (options.compute_dtype != "float32" && options.compute_dtype != "bfloat16") {
    refuse("dtype", options.compute_dtype, "expected float32 or bfloat16");
  }
  options.layers_per_stage = at_least<int>(values, "layers-per-stage", 1);
  options.shared_weight_buffers = buffer_count(values, "shared-weight-buffers");
  options.shared_gradient_buffers = buffer_count(values, "shared-gradient-buffers");
  if (options.shared_weight_buffers > 0 && options.zero_stage != 3) {
    refuse("shared-weight-buffers", std::to_string(options.shared_weight_buffers),
           "shared weight buffers need --zero-stage 3");
  }
  if (options.shared_gradient_buffers > 0 && options.zero_stage < 2) {
    refuse("shared-gradient-buffers", std::to_string(options.shared_gradient_buffers),
           "shared gradient buffers need --zero-stage 2 or 3");
  }
  options.prefetch = values["prefetch"].as<bool>();
  options.asynchronous_reduction = values["asynchronous-reduction"].as<bool>();
  if (options.asynchronous_reduction && options.zero_stage < 2) {
    refuse("asynchronous-reduction", "on",
           "asynchronous reduction needs --zero-stage 2 or 3 (ZeRO-1 reduces once, after the "
           "backward)");
  }
  options.trim_heap = !values["no-heap-trim"].as<bool>();
  options.activation_checkpointing = values["activation-checkpointing"].as<std::string>();
  try {
    stages::parse_activation_checkpointing(options.activation_checkpointing);
  } catch (const std::invalid_argument&) {
    refuse("activation-checkpointing", options.activation_checkpointing,
           "expected none, stages or layers");
  }

  options.checkpoint_dir = values["checkpoint-dir"].as<std::string>();
  if (values["no-checkpoint"].as<bool>() && options.stop_after > 0) {
    throw po::error("--stop-after saves a checkpoint to resume from; --no-checkpoint says not to");
  }
  if (values["no-checkpoint"].as<bool>()) {
    if (values["resume"].as<bool>())
      throw po::error("--resume needs a checkpoint; --no-checkpoint says there is none");
    options.checkpoint_dir.clear();
  }
  options.checkpoint_interval = at_least<std::int64_t>(values, "checkpoint-interval", 0);
  options.resume = values["resume"].as<bool>();
  options.metrics_file = values["metrics-file"].as<std::string>();
  options.keep_checkpoints = at_least<std::int64_t>(values, "keep-checkpoints", 0);
  options.keep_every = at_least<std::int64_t>(values, "keep-every", 0);
  options.resume_from = at_least<std::int64_t>(values, "resume-from", 0);
  if (options.resume_from > 0) options.resume = true;
  if (options.resume && options.checkpoint_dir.empty()) {
    throw po::error("--resume-from needs a checkpoint; --no-checkpoint says there is none");
  }
  if (options.keeps_series() && options.checkpoint_dir.empty()) {
    throw po::error(
        "--keep-checkpoints and --keep-every keep checkpoints; --no-checkpoint says "
        "not to save any");
  }
  options.init_from_hf = values["init-from-hf"].as<std::string>();
  if (options.resume && !options.init_from_hf.empty()) {
    throw po::error("--resume and --init-from-hf both say where the weights come from; give one");
  }
  options.export_hf = values["export-hf"].as<std::string>();
  options.export_dtype = values["export-dtype"].as<std::string>();
  if (!options.export_dtype.empty()) {
    try {
      models::export_dtype_from_name(options.export_dtype);
    } catch (const std::invalid_argument&) {
      refuse("export-dtype", options.export_dtype, "expected bfloat16, float16 or float32");
    }
  }
  if (!options.init_from_hf.empty()) take_model_from_hf(values, options);
  if (options.resume) take_model_from_resumed_hf_run(options);
  take_router_losses(values, options);
  if (values.count("inspect")) options.inspect = values["inspect"].as<std::vector<std::string>>();
  options.log_interval = at_least<std::int64_t>(values, "log-interval", 1);
  take_data(values, options);
  return options;
}

std::string TrainOptions::resume_source() const {
  if (resume_from <= 0) return checkpoint_dir;
  return (fs::path(checkpoint_dir) / checkpoint::step_directory_name(resume_from)).string();
}

nlohmann::json to_json(const TrainOptions& options) {
  nlohmann::json training = {
      {"preset", options.preset},
      {"steps", options.steps},
      {"batch", options.batch},
      {"micro_batches", options.micro_batches},
      {"sequence_length", options.sequence_length},
      {"learning_rate", options.learning_rate},
      {"min_learning_rate", options.min_learning_rate},
      {"warmup_steps", options.warmup_steps},
      {"weight_decay", options.weight_decay},
      {"max_gradient_norm", options.max_gradient_norm},
      {"seed", options.seed},
      {"zero_stage", options.zero_stage},
      {"compute_dtype", options.compute_dtype},
      {"layers_per_stage", options.layers_per_stage},
      {"activation_checkpointing", options.activation_checkpointing},
  };
  if (!options.data_identity.is_null()) training["data"] = options.data_identity;
  if (!options.hf_config.is_null()) {
    training["hf_config"] = options.hf_config;
    training["hf_directory"] = options.hf_directory;
  }
  return {{"model", models::to_json(options.model)}, {"training", training}};
}

namespace {

// "field: X in the checkpoint, Y here" for each of `fields` that differs.
void compare_fields(const nlohmann::json& saved, const nlohmann::json& ours,
                    const std::vector<std::string>& fields, const std::string& prefix,
                    std::vector<std::string>& differences) {
  for (const auto& field : fields) {
    const auto found = saved.find(field);
    const auto& value = ours.at(field);
    if (found == saved.end() || *found != value) {
      differences.push_back(prefix + field + ": " +
                            (found == saved.end() ? "absent" : found->dump()) +
                            " in the checkpoint, " + value.dump() + " here");
    }
  }
}

}  // namespace

ResumeDifferences resume_differences(const nlohmann::json& saved, const TrainOptions& options) {
  ResumeDifferences result;
  if (!saved.is_object() || !saved.contains("model") || !saved.contains("training") ||
      !saved.at("model").is_object() || !saved.at("training").is_object()) {
    result.refused.push_back(
        "the checkpoint records no fsdp-train configuration (saved by another program?)");
    return result;
  }
  const auto ours = to_json(options);
  // Fields a checkpoint predates read as their defaults (an older run's model has them so).
  nlohmann::json saved_model;
  try {
    saved_model = models::to_json(models::llama_config_from_json(saved.at("model")));
  } catch (const std::invalid_argument& error) {
    result.refused.push_back(std::string("the checkpoint's model: ") + error.what());
    return result;
  }
  std::vector<std::string> model_fields;
  for (const auto& item : ours.at("model").items()) {
    // The RoPE table length follows --seq-len, which is compared below.
    if (item.key() != "max_sequence") model_fields.push_back(item.key());
  }
  compare_fields(saved_model, ours.at("model"), model_fields, "model ", result.refused);
  compare_fields(saved.at("training"), ours.at("training"),
                 {"seed", "batch", "sequence_length", "learning_rate", "min_learning_rate",
                  "warmup_steps", "weight_decay", "max_gradient_norm"},
                 "", result.refused);
  // A checkpoint without "data" trained on the synthetic sequences.
  const auto saved_data = saved.at("training").value("data", nlohmann::json());
  if (saved_data != options.data_identity) {
    const auto name = [](const nlohmann::json& identity) {
      return identity.is_null() ? std::string("synthetic sequences")
                                : "tokens " + identity.dump().substr(0, 200);
    };
    result.refused.push_back("data: " + name(saved_data) + " in the checkpoint, " +
                             name(options.data_identity) +
                             " here (the order of the windows depends on the data)");
  }
  const auto saved_steps = saved.at("training").find("steps");
  if (saved_steps != saved.at("training").end() && *saved_steps != options.steps) {
    result.schedule_note = "the learning-rate schedule now spans " + std::to_string(options.steps) +
                           " steps (the saved run planned " + saved_steps->dump() +
                           "): from here on the losses are not those of the saved plan";
  }
  return result;
}

}  // namespace fsdp::launch
