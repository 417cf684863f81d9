#include "fsdp/launch/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "fsdp/checkpoint/checkpoint_series.h"
#include "fsdp/checkpoint/distributed_checkpoint.h"
#include "fsdp/checkpoint/hf_checkpoint.h"
#include "fsdp/checkpoint/hf_export.h"
#include "fsdp/checkpoint/hf_import.h"
#include "fsdp/collective_errors.h"
#include "fsdp/data/data_error.h"
#include "fsdp/errors.h"
#include "fsdp/inspector.h"
#include "fsdp/launch/cpu_compute.h"
#include "fsdp/launch/evaluation.h"
#include "fsdp/launch/expert_load.h"
#include "fsdp/launch/metrics_file.h"
#include "fsdp/launch/process_memory.h"
#include "fsdp/launch/stop_signals.h"
#include "fsdp/launch/training_data.h"
#include "fsdp/models/hf_config.h"
#include "fsdp/models/hf_model_io.h"
#include "fsdp/models/llama_conversion.h"
#include "fsdp/stages/cross_entropy.h"
#include "fsdp/stages/learning_rate_schedule.h"
#include "fsdp/stages/multi_stage_model.h"
#include "fsdp/stages/sharded_adamw.h"
#include "fsdp/tensor_span.h"

namespace fsdp::launch {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// "1:05" or "1:02:05".
std::string clock_time(double seconds) {
  const auto total = static_cast<long long>(std::max(0.0, std::round(seconds)));
  char text[32];
  if (total >= 3600) {
    std::snprintf(text, sizeof text, "%lld:%02lld:%02lld", total / 3600, total / 60 % 60,
                  total % 60);
  } else {
    std::snprintf(text, sizeof text, "%lld:%02lld", total / 60, total % 60);
  }
  return text;
}

// `value` by the printf `pattern`; NaN and infinities as "NaN", "Inf", "-Inf"
// whatever the pattern (printf's "-nan" says nothing useful about the sign).
std::string format(const char* pattern, double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Inf" : "-Inf";
  char text[64];
  std::snprintf(text, sizeof text, pattern, value);
  return text;
}

std::string mebibytes(std::int64_t bytes) {
  return format("%.1f MiB", static_cast<double>(bytes) / (1 << 20));
}

// Every parameter name the model declares, in declaration order, each once
// (a tied parameter is declared by two layers).
std::vector<std::string> parameter_names(const models::LlamaConfig& config) {
  std::vector<std::string> names;
  std::set<std::string> seen;
  for (const auto& layer : models::build_llama_layers(config)) {
    for (const auto& spec : layer->parameter_specs()) {
      if (seen.insert(spec.name).second) names.push_back(spec.name);
    }
  }
  return names;
}

at::Tensor next_token_loss(const at::Tensor& logits, const at::Tensor& targets) {
  return stages::next_token_cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                          targets.reshape({-1}));
}

// ", 2 shared weight buffers, 1 shared gradient buffer" (nothing for per-stage buffers).
std::string shared_buffers_text(const stages::MultiStageOptions& options) {
  std::string text;
  auto add = [&](int count, const char* kind) {
    if (count == 0) return;
    text += ", " + std::to_string(count) + " shared " + kind + " buffer" + (count > 1 ? "s" : "");
  };
  add(options.shared_weight_buffers, "weight");
  add(options.shared_gradient_buffers, "gradient");
  return text;
}

class Training {
 public:
  Training(Runtime& runtime, const TrainOptions& options, std::ostream& out)
      : runtime_(runtime),
        options_(options),
        out_(out),
        root_(runtime.rank() == 0),
        data_(options) {
    if (!options.eval_data.empty()) eval_data_.emplace(open_token_data("eval-data", options));
    stages::MultiStageOptions model_options;
    model_options.layers_per_stage = options.layers_per_stage;
    model_options.zero_stage = options.zero_stage;
    model_options.shared_weight_buffers = options.shared_weight_buffers;
    model_options.shared_gradient_buffers = options.shared_gradient_buffers;
    model_options.prefetch = options.prefetch;
    model_options.asynchronous_reduction = options.asynchronous_reduction;
    model_options.trim_heap = options.trim_heap;
    model_options.activation_checkpointing =
        stages::parse_activation_checkpointing(options.activation_checkpointing);
    model_options.fsdp.compute_dtype =
        options.compute_dtype == "bfloat16" ? ElementType::kBFloat16 : ElementType::kFloat32;
    if (runtime.uses_nccl() && runtime.cuda_device() >= 0) {
      device_ = c10::Device(c10::DeviceType::CUDA, runtime.cuda_device());
      model_options.fsdp.device = device_;
    }
    model_ = std::make_unique<stages::MultiStageModel>(models::build_llama_layers(options.model),
                                                       runtime.process_group(), model_options);
    stages::ShardedAdamWOptions adam;
    adam.weight_decay = options.weight_decay;
    adam.max_gradient_norm = options.max_gradient_norm;
    optimizer_ = std::make_unique<stages::ShardedAdamW>(model_->stages(), adam);
    schedule_ = {options.learning_rate, options.min_learning_rate,
                 std::min(options.warmup_steps, options.steps - 1), options.steps};
  }

  int run() {
    describe_run();
    const std::int64_t first_step = fill_shards() + 1;
    if (first_step > options_.steps) {
      say("the checkpoint is at step " + std::to_string(first_step - 1) + ", not before --steps " +
          std::to_string(options_.steps) + ": nothing to train");
    }
    const std::int64_t last_step = options_.stop_after > 0 ? options_.stop_after : options_.steps;
    if (eval_data_) evaluate(first_step - 1);
    if (root_ && !options_.metrics_file.empty()) {
      metrics_ = std::make_unique<MetricsFile>(options_.metrics_file, first_step - 1);
    }
    const auto start = Clock::now();
    StopSignals signals(parse_stop_signals(options_.stop_signals));
    std::int64_t stopped_at = 0;  // the step after which a signal or the time limit stopped us
    for (std::int64_t step = first_step; step <= last_step; ++step) {
      const StepOutcome outcome = train_step(step, [&] { return stop_vote(signals, start); });
      if (!outcome.skipped) losses_.push_back(outcome.loss);
      if (step % options_.log_interval == 0 || step == last_step || step == first_step) {
        report_progress(step, first_step, last_step, outcome, seconds_since(start));
      }
      if (eval_data_ && (step == last_step ||
                         (options_.eval_interval > 0 && step % options_.eval_interval == 0))) {
        evaluate(step);
      }
      const bool last = step == last_step || outcome.stop;
      if (!options_.checkpoint_dir.empty() &&
          (last ||
           (options_.checkpoint_interval > 0 && step % options_.checkpoint_interval == 0))) {
        save(step);
      }
      if (outcome.stop && step < last_step) {
        stopped_at = step;
        break;
      }
    }
    const double seconds = seconds_since(start);
    if (stopped_at > 0) {
      say("stopped after step " + std::to_string(stopped_at) + " of " +
          std::to_string(options_.steps) + " (" + stop_reason_ + "); " +
          (options_.checkpoint_dir.empty()
               ? std::string("no checkpoint (--no-checkpoint): this run's steps are lost")
               : "resume with --resume --checkpoint-dir " + options_.checkpoint_dir) +
          (options_.export_hf.empty() ? "" : "; --export-hf waits for the end of the run"));
      summarize(first_step, stopped_at, seconds);
      return 0;
    }
    if (!options_.export_hf.empty()) export_hf();
    for (const auto& name : options_.inspect) inspect(name);
    summarize(first_step, last_step, seconds);
    return 0;
  }

 private:
  // The sequences in one micro-batch on this rank: what each forward takes.
  std::int64_t rows_per_forward() const {
    return options_.batch / runtime_.world_size() / options_.micro_batches;
  }

  void say(const std::string& line) {
    if (root_) out_ << line << std::endl;
  }

  void describe_run() {
    std::int64_t parameters = 0;
    for (const auto* stage : model_->stages()) parameters += stage->layout().unpadded_numel();
    const auto& m = options_.model;
    say("fsdp-train: " + runtime_.describe());
    const BlasLibrary blas = find_blas();
    say("compute: " + describe_compute(blas));
    if (root_ && !blas.optimised) std::cerr << reference_blas_warning(blas) << std::flush;
    const std::string origin = options_.hf_config.is_null()
                                   ? options_.preset + " preset"
                                   : options_.preset.substr(3) + " from " + options_.hf_directory;
    say("model: " + origin + ", " + std::to_string(m.layers) + " layers, hidden " +
        std::to_string(m.hidden) + ", heads " + std::to_string(m.heads) +
        (m.key_value_heads() != m.heads ? " (" + std::to_string(m.key_value_heads()) + " kv)"
                                        : std::string()) +
        (m.experts > 0 ? ", " + std::to_string(m.experts) + " experts (top " +
                             std::to_string(m.experts_per_token) + ")"
                       : ", dense MLP " + std::to_string(m.intermediate)) +
        (m.stacked_layers ? ", stacked layers" : "") +
        (m.tie_embeddings ? ", tied embeddings" : "") + ", vocabulary " +
        std::to_string(m.vocabulary) + "; " + std::to_string(parameters) + " parameters in " +
        std::to_string(model_->stages().size()) + " flat shards");
    if (m.experts > 0) {
      say("router losses: load balancing x " + format("%g", m.router_aux_loss_coefficient) +
          ", z-loss x " + format("%g", m.router_z_loss_coefficient) +
          " (per sequence, summed over layers; reported apart from the loss)");
    }
    const std::int64_t rows = rows_per_forward();
    say("runtime: ZeRO-" + std::to_string(options_.zero_stage) + ", compute " +
        options_.compute_dtype + ", " + std::to_string(options_.layers_per_stage) +
        " layer(s) per stage" + shared_buffers_text(model_->options()) +
        (options_.prefetch ? ", prefetch" : "") +
        (options_.asynchronous_reduction ? ", asynchronous reduction" : "") +
        (options_.trim_heap ? "" : ", no heap trim") + ", activation checkpointing " +
        options_.activation_checkpointing + "; per rank " +
        model_->memory(optimizer_.get(), rows, options_.sequence_length).describe());
    say("data: " + data_.describe(options_.steps) + "; global batch " +
        std::to_string(options_.batch) + " x " + std::to_string(options_.sequence_length) +
        " tokens, " + std::to_string(options_.batch / runtime_.world_size()) +
        " sequences per rank in " + std::to_string(options_.micro_batches) + " micro-batch(es)");
    if (eval_data_) {
      say("eval: " + eval_data_->describe() + ", " +
          (options_.eval_interval > 0 ? "every " + std::to_string(options_.eval_interval) + " steps"
                                      : std::string("before the first step and after the last")));
    }
  }

  // The validation loss now, printed and kept for the summary. Its forwards
  // take the training's micro-batch of rows, so they need no more memory.
  void evaluate(std::int64_t step) {
    const auto start = Clock::now();
    const std::int64_t rows = rows_per_forward();
    const auto result =
        evaluate_next_token_loss(*model_, *eval_data_, rows, *runtime_.host_group(), device_);
    eval_losses_.push_back(result.loss);
    say("eval step " + std::to_string(step) + " loss " + format("%.6f", result.loss) + " (" +
        std::to_string(result.windows) + " windows, " + std::to_string(result.predicted_tokens) +
        " predicted tokens, " + format("%.2f s)", seconds_since(start)));
  }

  // Initialises, imports or resumes; returns the last step already taken.
  std::int64_t fill_shards() {
    const auto stages = model_->stages();
    if (options_.resume) {
      const auto index =
          checkpoint::load_checkpoint(options_.resume_source(), stages, optimizer_.get());
      say("resumed from " + index.directory.string() + " at step " + std::to_string(index.step) +
          " (saved by " + std::to_string(index.world_size) + " rank(s))");
      const auto note = resume_differences(index.training_config, options_).schedule_note;
      if (!note.empty()) say("note: " + note);
      return index.step;
    }
    if (!options_.init_from_hf.empty()) {
      checkpoint::ImportOptions import_options;
      import_options.progress = [this](const checkpoint::LoadProgress& progress) {
        report_load(progress);
      };
      const auto report = checkpoint::import_hf_checkpoint(
          options_.init_from_hf, models::llama_conversion_rules(options_.model), stages,
          import_options);
      say("initialised from " + options_.init_from_hf + ": " + mebibytes(report.checkpoint_bytes) +
          " of tensors, " + mebibytes(report.bytes_read_all_ranks) + " read by all ranks, " +
          format("%.2f s", report.seconds));
      return 0;
    }
    model_->initialize_weights(options_.seed);
    return 0;
  }

  void report_load(const checkpoint::LoadProgress& progress) {
    const double total = static_cast<double>(std::max<std::int64_t>(1, progress.bytes_total));
    const double percent = 100.0 * static_cast<double>(progress.bytes_done) / total;
    say("  loading: " + format("%.0f%%", percent) + " of this rank's " +
        mebibytes(progress.bytes_total) + ", " + format("%.1f s", progress.seconds));
  }

  struct StepOutcome {
    double loss = 0;            // the mean over ranks (the language-model loss)
    double auxiliary_loss = 0;  // the router losses, as they entered the objective
    Imbalance expert_load;      // of this step's tokens, all ranks
    bool skipped = false;       // the loss or the gradient norm was not finite: nothing updated
    bool stop = false;          // some rank asked to stop after this step
  };

  // This rank's votes to stop after this step, {signal, time limit}, each 0
  // or 1: a stop signal arrived; the time limit would pass before one more
  // step and a save.
  std::array<double, 2> stop_vote(const StopSignals& signals, Clock::time_point start) {
    if (const int signal = signals.received()) {
      if (stop_reason_.empty()) {
        // Said by the rank that got it: the others only learn that someone did.
        std::cerr << "[fsdp rank " << runtime_.rank() << "] received " << signal_name(signal)
                  << ": stopping after this step" << std::endl;
        stop_reason_ =
            "a stop signal, " + signal_name(signal) + " on rank " + std::to_string(runtime_.rank());
      }
      return {1, 0};
    }
    if (options_.time_limit_minutes <= 0) return {0, 0};
    const double elapsed = seconds_since(setup_start_);
    const double steps_done = static_cast<double>(std::max<std::size_t>(losses_.size(), 1));
    const double per_step = losses_.empty() ? 0 : seconds_since(start) / steps_done;
    if (elapsed + 2 * per_step + last_save_seconds_ < options_.time_limit_minutes * 60) {
      return {0, 0};
    }
    return {0, 1};
  }

  // `vote` is asked after the forward and backward, just before the step's
  // all-reduce: a signal that arrives during a step stops the run after it.
  StepOutcome train_step(std::int64_t step, const std::function<std::array<double, 2>()>& vote) {
    model_->zero_gradients();
    model_->take_auxiliary_totals();  // start this step's
    double local_loss = 0;
    for (std::int64_t micro = 0; micro < options_.micro_batches; ++micro) {
      auto tokens = data_.micro_batch(step, runtime_.rank(), runtime_.world_size(), micro);
      if (device_.is_cuda()) tokens = tokens.to(device_);
      const auto inputs = tokens.narrow(1, 0, options_.sequence_length);
      const auto targets = tokens.narrow(1, 1, options_.sequence_length);
      const double share = 1.0 / static_cast<double>(options_.micro_batches);
      local_loss += model_->forward_backward(
          inputs,
          [&](const at::Tensor& logits) { return next_token_loss(logits, targets) * share; },
          /*auxiliary_weight=*/share);
    }
    model_->reduce_gradients();
    // The stop votes, the router losses and the tokens per expert ride on the
    // loss's all-reduce: no extra collective per step, and every rank learns
    // the same answer at the same step.
    const auto votes = vote();
    const stages::AuxiliaryTotals auxiliary = model_->take_auxiliary_totals();
    std::size_t experts = 0;
    const std::vector<double> expert_tokens = flatten_expert_tokens(auxiliary, experts);
    std::vector<double> reduced = {local_loss, votes[0], votes[1], auxiliary.loss};
    reduced.insert(reduced.end(), expert_tokens.begin(), expert_tokens.end());
    runtime_.host_group()->all_reduce(host_span(reduced), ReduceOp::kAverage);
    StepOutcome outcome;
    outcome.loss = reduced[0];
    outcome.auxiliary_loss = reduced[3];
    const std::vector<double> mean_tokens(reduced.begin() + 4, reduced.end());
    outcome.expert_load = expert_imbalance(mean_tokens, experts);
    expert_load_.add(mean_tokens, experts);
    last_auxiliary_loss_ = outcome.auxiliary_loss;
    outcome.stop = reduced[1] > 0 || reduced[2] > 0;
    if (outcome.stop && stop_reason_.empty()) {
      // Every rank names the same cause (the ranks' clocks differ a little).
      stop_reason_ = reduced[1] > 0
                         ? std::string("a stop signal on another rank")
                         : "--time-limit " + format("%g", options_.time_limit_minutes) + " minutes";
    }
    // Both values are the same on every rank, so every rank skips alike.
    if (std::isfinite(outcome.loss)) {
      last_gradient_norm_ = optimizer_->step(schedule_.at(step));
      outcome.skipped = !std::isfinite(last_gradient_norm_);
    } else {
      outcome.skipped = true;
    }
    if (outcome.skipped) skip(step, outcome.loss);
    return outcome;
  }

  // A step that updated nothing: said, counted, and fatal past --max-skipped-steps.
  void skip(std::int64_t step, double loss) {
    ++skipped_steps_;
    say("step " + std::to_string(step) + " skipped: " +
        (std::isfinite(loss) ? "gradient norm " + format("%g", last_gradient_norm_)
                             : "loss " + format("%g", loss)) +
        " is not finite; weights and optimizer state unchanged (" + std::to_string(skipped_steps_) +
        " skipped in this run)");
    if (skipped_steps_ > options_.max_skipped_steps) {
      // Every rank throws the same error at the same step: an agreed failure.
      throw ConfigurationError("step " + std::to_string(step) + ": " +
                                   std::to_string(skipped_steps_) +
                                   " steps skipped for a non-finite loss or gradient norm, more "
                                   "than --max-skipped-steps " +
                                   std::to_string(options_.max_skipped_steps) +
                                   " (a learning rate too high? bad data?); the last checkpoint "
                                   "holds no weights from a skipped step",
                               /*failing_rank=*/0);
    }
  }

  void report_progress(std::int64_t step, std::int64_t first_step, std::int64_t last_step,
                       const StepOutcome& outcome, double seconds) {
    const double loss = outcome.loss;
    const double steps_done = static_cast<double>(step - first_step + 1);
    const double per_step = seconds / steps_done;
    const double tokens_per_second =
        steps_done * static_cast<double>(options_.batch * options_.sequence_length) /
        std::max(seconds, 1e-9);
    if (!options_.metrics_file.empty()) {
      write_metrics(step, outcome, tokens_per_second, seconds);  // collective: on every rank
    }
    const std::string routing = options_.model.experts == 0
                                    ? std::string()
                                    : "  aux " + format("%.5f", outcome.auxiliary_loss) +
                                          "  expert load " +
                                          format("%.2f", outcome.expert_load.worst);
    say("step " + std::to_string(step) + "/" + std::to_string(options_.steps) + "  loss " +
        format("%.6f", loss) + routing + "  lr " + format("%.2e", schedule_.at(step)) +
        "  grad norm " + format("%.3f", last_gradient_norm_) + "  " +
        format("%.0f", tokens_per_second) + " tokens/s  elapsed " + clock_time(seconds) +
        "  left " + clock_time(per_step * static_cast<double>(last_step - step)));
  }

  // One line of --metrics-file. Collective (the largest peak memory over the
  // ranks): every rank calls it at the same logged steps.
  void write_metrics(std::int64_t step, const StepOutcome& outcome, double tokens_per_second,
                     double seconds) {
    const double loss = outcome.loss;
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    // Every rank's peak in its own slot, summed: one all-reduce gives them all.
    std::vector<double> peak_mib(static_cast<std::size_t>(runtime_.world_size()), 0.0);
    peak_mib[static_cast<std::size_t>(runtime_.rank())] =
        static_cast<double>(usage.ru_maxrss) / 1024.0;  // KiB
    runtime_.host_group()->all_reduce(host_span(peak_mib), ReduceOp::kSum);
    if (!metrics_) return;
    const auto statistics = model_->communication_statistics();
    // JSON has no NaN: a non-finite value is written as null.
    const auto number = [](double value) {
      return std::isfinite(value) ? nlohmann::ordered_json(value) : nlohmann::ordered_json();
    };
    nlohmann::ordered_json line = {{"step", step}, {"loss", number(loss)}};
    if (options_.model.experts > 0) {
      line["aux_loss"] = number(outcome.auxiliary_loss);
      line["expert_load_max_over_mean"] = outcome.expert_load.worst;
    }
    line.update(nlohmann::ordered_json{
        {"lr", schedule_.at(step)},
        {"grad_norm", number(last_gradient_norm_)},
        {"tokens_per_second", tokens_per_second},
        {"elapsed_seconds", seconds},
        {"collective_wait_seconds", statistics.exposed_seconds()},
        {"skipped_steps", skipped_steps_},
        {"peak_rss_mib_max_over_ranks", *std::max_element(peak_mib.begin(), peak_mib.end())},
        {"peak_rss_mib_per_rank", peak_mib}});
    metrics_->write(line);
  }

  void save(std::int64_t step) {
    const auto start = Clock::now();
    checkpoint::SaveOptions save;
    save.step = step;
    save.training_config = to_json(options_);
    if (!options_.keeps_series()) {
      checkpoint::save_checkpoint(options_.checkpoint_dir, model_->stages(), optimizer_.get(),
                                  save);
      saved_step_ = step;
      last_save_seconds_ = seconds_since(start);
      say("saved checkpoint at step " + std::to_string(step) + " to " + options_.checkpoint_dir +
          format(" (%.2f s)", seconds_since(start)));
      return;
    }
    // A series: the step's own directory, complete before 'latest' names it,
    // and only then the pruning (checkpoint_series.h).
    const fs::path series = options_.checkpoint_dir;
    auto& group = *runtime_.host_group();
    run_agreeing_on_failure(group, [&] {
      if (root_) fs::create_directories(series);
    });
    const auto directory = series / checkpoint::step_directory_name(step);
    checkpoint::save_checkpoint(directory, model_->stages(), optimizer_.get(), save);
    std::vector<std::int64_t> kept;
    run_agreeing_on_failure(group, [&] {
      if (!root_) return;
      checkpoint::publish_latest(series, step);
      const auto steps = checkpoint::series_steps(series);
      const auto pruned =
          checkpoint::steps_to_prune(steps, step, options_.keep_checkpoints, options_.keep_every);
      checkpoint::prune_series(series, pruned);
      checkpoint::remove_interrupted_saves(series);
      for (const auto s : steps) {
        if (std::find(pruned.begin(), pruned.end(), s) == pruned.end()) kept.push_back(s);
      }
    });
    saved_step_ = step;
    last_save_seconds_ = seconds_since(start);
    std::string listed;
    for (const auto s : kept) listed += (listed.empty() ? "" : ", ") + std::to_string(s);
    say("saved checkpoint at step " + std::to_string(step) + " to " + directory.string() +
        format(" (%.2f s)", seconds_since(start)) + "; kept steps " + listed);
  }

  // The dtype the model came in: its HF checkpoint's tensors (config.json's
  // "dtype" when that directory is gone), float32 for the presets.
  checkpoint::SafetensorsDtype export_dtype() const {
    if (!options_.export_dtype.empty())
      return models::export_dtype_from_name(options_.export_dtype);
    if (!options_.hf_directory.empty() && fs::is_directory(options_.hf_directory)) {
      return models::hf_checkpoint_dtype(options_.hf_directory);
    }
    if (options_.hf_config.is_object()) {
      // "dtype" or the older "torch_dtype", as the config reader spells them.
      const std::string configured =
          models::hf_config_from_json(options_.hf_config, "training_config.hf_config").dtype;
      if (configured == "bfloat16" || configured == "float16") {
        return models::export_dtype_from_name(configured);
      }
    }
    return checkpoint::SafetensorsDtype::kFloat32;
  }

  void export_hf() {
    const auto start = Clock::now();
    const models::HfExportSource source{options_.hf_config, options_.hf_directory};
    const auto dtype = export_dtype();
    const auto config = models::export_hf_model(options_.export_hf, options_.model, source, dtype,
                                                model_->stages());
    say("exported the model as " + config.value("model_type", std::string("?")) + " (" +
        models::export_dtype_name(dtype) + ") to " + options_.export_hf +
        format(" (%.2f s)", seconds_since(start)));
  }

  // The parameter's true values, read from the shards by the inspector.
  void inspect(const std::string& name) {
    for (auto* stage : model_->stages()) {
      const auto& parameters = stage->layout().parameters();
      const bool here = std::any_of(parameters.begin(), parameters.end(),
                                    [&](const ParameterSlot& slot) { return slot.name == name; });
      if (!here) continue;
      const auto statistics = parameter_statistics(*stage, name);
      const auto values = read_parameter(*stage, name).reshape({-1});
      std::string first;
      const auto shown = std::min<std::int64_t>(values.numel(), 8);
      for (std::int64_t i = 0; i < shown; ++i) {
        first += (i ? ", " : "") + format("%.6g", values[i].item<double>());
      }
      say("inspect " + name + " (stage \"" + stage->stage_name() + "\", from the shards): numel " +
          std::to_string(statistics.numel) + "  mean " + format("%.6g", statistics.mean) +
          "  std " + format("%.6g", statistics.std) + "  min " + format("%.6g", statistics.min) +
          "  max " + format("%.6g", statistics.max) + "  nonzero " +
          std::to_string(statistics.nonzero_count) + "  nan " +
          std::to_string(statistics.nan_count));
      say("  first values: [" + first + (values.numel() > shown ? ", ...]" : "]"));
      say("  " + describe_placements(stage->layout(), name));
      return;
    }
    throw std::logic_error("--inspect " + name + " passed the preflight but is not in the model");
  }

  // The runtime's memory report beside what the ranks measured: the peak
  // resident set above the one before the model was built, per rank. Collective.
  void summarize_memory() {
    // Every rank's peak and its rise in its own slots, summed: one all-reduce.
    const auto world = static_cast<std::size_t>(runtime_.world_size());
    std::vector<double> slots(2 * world, 0.0);
    const ResidentMemory now = resident_memory();
    const auto rank = static_cast<std::size_t>(runtime_.rank());
    slots[rank] = static_cast<double>(now.peak);
    slots[world + rank] = static_cast<double>(now.peak - baseline_rss_);
    runtime_.host_group()->all_reduce(host_span(slots), ReduceOp::kSum);
    const std::vector<double> peaks(slots.begin(), slots.begin() + world);
    const std::vector<double> added(slots.begin() + world, slots.end());
    if (now.peak < 0 || baseline_rss_ < 0) return;  // no /proc here
    const std::int64_t rows = rows_per_forward();
    const stages::ModelMemory report =
        model_->memory(optimizer_.get(), rows, options_.sequence_length);
    const auto largest = std::max_element(added.begin(), added.end());
    const auto mib = [](double bytes) { return format("%.0f", bytes / (1 << 20)); };
    say("memory: peak resident set " + mib(*std::max_element(peaks.begin(), peaks.end())) +
        " MiB per rank (largest); above the resident set before the model was built: " +
        mib(*largest) + " MiB (rank " + std::to_string(largest - added.begin()) +
        "); the runtime's report: " + mib(static_cast<double>(report.total())) + " MiB held + " +
        mib(static_cast<double>(report.activations)) + " MiB of activations (estimate) = " +
        mib(static_cast<double>(report.total() + report.activations)) + " MiB");
  }

  void summarize(std::int64_t first_step, std::int64_t last_step, double seconds) {
    summarize_memory();
    if (losses_.empty()) return;
    const std::size_t tail = std::min<std::size_t>(losses_.size(), 10);
    double last = 0;
    for (std::size_t i = losses_.size() - tail; i < losses_.size(); ++i) last += losses_[i];
    last /= static_cast<double>(tail);
    const double steps = static_cast<double>(losses_.size());
    const auto statistics = model_->communication_statistics();
    say("done: steps " + std::to_string(first_step) + "-" + std::to_string(last_step) + " in " +
        clock_time(seconds) + ", loss " + format("%.4f", losses_.front()) + " -> " +
        format("%.4f", last) + " (mean of the last " + std::to_string(tail) + "), " +
        format("%.0f", steps * static_cast<double>(options_.batch * options_.sequence_length) /
                           std::max(seconds, 1e-9)) +
        " tokens/s, " +
        format("%.1f", 100.0 * statistics.exposed_seconds() / std::max(seconds, 1e-9)) +
        "% of the time waiting on collectives");
    if (expert_load_.steps() > 0) {
      const Imbalance load = expert_load_.imbalance();
      say("experts: load (max / mean tokens per expert) over the last " +
          std::to_string(expert_load_.steps()) + " steps " + format("%.3f", load.worst) +
          " in the worst layer, " + format("%.3f", load.mean) +
          " on average; router losses at the last step " + format("%.5f", last_auxiliary_loss_));
    }
    if (eval_losses_.size() >= 2) {
      say("eval loss " + format("%.6f", eval_losses_.front()) + " -> " +
          format("%.6f", eval_losses_.back()));
    }
    if (saved_step_ > 0) {
      say("checkpoint: " + options_.checkpoint_dir + " (step " + std::to_string(saved_step_) +
          "); inspect it with: shard-inspect " + options_.checkpoint_dir);
    }
  }

  Runtime& runtime_;
  const TrainOptions& options_;
  std::ostream& out_;
  bool root_;
  TrainingData data_;
  std::optional<data::TokenDataset> eval_data_;
  std::vector<double> eval_losses_;
  c10::Device device_{c10::kCPU};
  // Before the model is built (members initialise before the constructor's body).
  std::int64_t baseline_rss_ = resident_memory().current;
  std::unique_ptr<stages::MultiStageModel> model_;
  std::unique_ptr<stages::ShardedAdamW> optimizer_;
  stages::LearningRateSchedule schedule_;
  std::vector<double> losses_;
  ExpertLoadWindow expert_load_{50};  // the summary's window
  double last_auxiliary_loss_ = 0;
  double last_gradient_norm_ = 0;
  std::int64_t saved_step_ = 0;
  double last_save_seconds_ = 0;
  std::int64_t skipped_steps_ = 0;
  std::string stop_reason_;               // why the run stops early; empty while it does not
  std::unique_ptr<MetricsFile> metrics_;  // rank 0, with --metrics-file
  // --time-limit counts from here: model setup and loading count, MPI start-up does not.
  Clock::time_point setup_start_ = Clock::now();
};  // namespace

}  // namespace

void preflight_training(const TrainOptions& options) {
  const auto names = parameter_names(options.model);
  for (const auto& name : options.inspect) {
    if (std::find(names.begin(), names.end(), name) != names.end()) continue;
    std::string some;
    for (std::size_t i = 0; i < std::min<std::size_t>(names.size(), 6); ++i) {
      some += (i ? ", " : "") + names[i];
    }
    throw std::runtime_error("--inspect " + name + ": the model has no such parameter (it has " +
                             std::to_string(names.size()) + ", for example " + some + ")");
  }
  // Every token of the data: a bad id would otherwise index out of the
  // embedding mid-run. Each rank reads the files through once.
  for (const std::string option : {"data", "eval-data"}) {
    if ((option == "data" ? options.data : options.eval_data).empty()) continue;
    try {
      open_token_data(option, options).check_token_ids(options.model.vocabulary);
    } catch (const data::DataError& error) {
      const std::string what = error.what();
      throw data::DataError(what.rfind("--", 0) == 0 ? what : "--" + option + ": " + what);
    }
  }
  // Where the run will write, checked now rather than after hours of training.
  if (options.keeps_series()) {
    checkpoint::check_series_directory(options.checkpoint_dir);
  } else if (!options.checkpoint_dir.empty()) {
    if (checkpoint::is_checkpoint_series(options.checkpoint_dir)) {
      throw std::runtime_error(
          options.checkpoint_dir +
          " holds a series of checkpoints (step-NNNNNNNN directories and 'latest'); give "
          "--keep-checkpoints K to save into it, or another --checkpoint-dir");
    }
    checkpoint::check_save_directory(options.checkpoint_dir);
  }
  if (!options.export_hf.empty()) checkpoint::check_export_directory(options.export_hf);
  if (!options.metrics_file.empty()) check_metrics_file(options.metrics_file, options.resume);
  if (!options.init_from_hf.empty() && !fs::exists(options.init_from_hf)) {
    throw std::runtime_error("--init-from-hf " + options.init_from_hf +
                             ": no such file or directory");
  }
  // Every file's header (not its tensors): a corrupt or hostile file is
  // refused before the model is built and memory is taken.
  if (!options.init_from_hf.empty()) checkpoint::HfCheckpoint headers(options.init_from_hf);
  if (options.resume) {
    const auto index = checkpoint::read_checkpoint_index(options.resume_source());
    const auto differences = resume_differences(index.training_config, options);
    if (!differences.refused.empty()) {
      std::string listed;
      for (const auto& difference : differences.refused) listed += "\n  " + difference;
      throw std::runtime_error("--resume: the checkpoint in " + index.directory.string() +
                               " was saved by a run with other settings:" + listed +
                               "\n(resume with the settings of the run that saved it)");
    }
    if (options.stop_after > 0 && options.stop_after <= index.step) {
      throw std::runtime_error("--stop-after " + std::to_string(options.stop_after) +
                               ": the checkpoint in " + index.directory.string() +
                               " is already at step " + std::to_string(index.step));
    }
  }
}

int run_training(Runtime& runtime, const TrainOptions& options, std::ostream& out) {
  set_compute_threads(runtime.compute_threads());
  Training training(runtime, options, out);
  return training.run();
}

}  // namespace fsdp::launch
