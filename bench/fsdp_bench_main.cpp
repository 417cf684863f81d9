// fsdp-bench: the runtime's collectives beside the raw MPI ones, in one run.
//
//   scripts/mpirun.sh -np 4 build/bin/fsdp-bench --case restore
//   scripts/mpirun.sh -np 2 build/bin/fsdp-bench --case reduce --json
//   scripts/mpirun.sh -np 4 build/bin/fsdp-bench --case load
//
// Prints an nccl-tests style table (size, time, algbw, busbw) for ours and for
// the raw baseline, and the ratio ours / raw (1.0 = no overhead). With --json,
// one JSON object per line instead.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "bench/adamw_bench.h"
#include "bench/checkpointing_bench.h"
#include "bench/collective_bench.h"
#include "bench/device_bench.h"
#include "bench/load_bench.h"
#include "bench/step_bench.h"
#include "fsdp/launch/cpu_compute.h"
#include "fsdp/launch/program.h"

namespace po = boost::program_options;

namespace {

std::vector<std::int64_t> parse_sizes(const std::string& text) {
  std::vector<std::int64_t> bytes;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    std::size_t used = 0;
    double mebibytes = 0;
    try {
      mebibytes = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || !(mebibytes > 0)) {
      throw po::invalid_option_value("--sizes-mib " + text + " ('" + item +
                                     "' is not a positive number of MiB)");
    }
    bytes.push_back(static_cast<std::int64_t>(mebibytes * 1024 * 1024));
  }
  return bytes;
}

void print_table(const std::vector<fsdp::bench::CollectiveBenchResult>& results) {
  std::printf("# case %s, %d ranks, dtype %s; times are medians of the slowest rank\n",
              results.front().case_name.c_str(), results.front().ranks,
              results.front().dtype.c_str());
  std::printf("%12s %12s %10s %10s %12s %10s %8s\n", "size(B)", "time(us)", "algbw", "busbw",
              "raw time(us)", "raw busbw", "ratio");
  for (const auto& r : results) {
    std::printf("%12lld %12.1f %10.3f %10.3f %12.1f %10.3f %8.3f\n",
                static_cast<long long>(r.bytes), r.time_seconds * 1e6, r.algbw_gbps(),
                r.busbw_gbps(), r.raw_time_seconds * 1e6, r.raw_busbw_gbps(), r.ratio());
  }
  std::printf("# bandwidths in GB/s (decimal); ratio = raw time / our time\n");
}

void print_device(const std::vector<fsdp::bench::DeviceBenchResult>& results, bool json) {
  if (!json) {
    std::printf(
        "# case device: GB/s read + written; ratios over a device-to-device copy of the shard\n"
        "%12s %10s %12s %8s %10s %8s\n",
        "shard MiB", "copy", "restore", "ratio", "adamw", "ratio");
  }
  for (const auto& r : results) {
    if (json) {
      nlohmann::json line = {{"case", "device"},
                             {"bytes", r.elements * 4},
                             {"copy_gbps", r.copy_gbps},
                             {"restore_gbps", r.restore_gbps},
                             {"restore_ratio", r.restore_ratio()},
                             {"adamw_gbps", r.adamw_gbps},
                             {"adamw_ratio", r.adamw_ratio()}};
      std::cout << line.dump() << std::endl;
    } else {
      std::printf("%12.1f %10.1f %12.1f %8.3f %10.1f %8.3f\n",
                  static_cast<double>(r.elements * 4) / (1 << 20), r.copy_gbps, r.restore_gbps,
                  r.restore_ratio(), r.adamw_gbps, r.adamw_ratio());
    }
  }
}

void print_adamw(const std::vector<fsdp::bench::AdamWBenchResult>& results, bool json) {
  if (!json) {
    std::printf(
        "# case adamw: fused shard AdamW vs torch::optim::AdamW and vs a copy of the same "
        "bytes (16 B/element); medians\n");
    std::printf("%12s %10s %12s %10s %10s %10s %10s\n", "elements", "time(us)", "torch(us)",
                "speedup", "copy(us)", "vs copy", "GB/s");
  }
  for (const auto& r : results) {
    // Traffic of one step: read w, g, m, v and write w, m, v = 28 bytes per element.
    const double gigabytes_per_second = 28.0 * r.elements / r.time_seconds / 1e9;
    if (json) {
      nlohmann::json line = {{"case", "adamw"},
                             {"bytes", 16 * r.elements},
                             {"ranks", 1},
                             {"elements", r.elements},
                             {"time_us", r.time_seconds * 1e6},
                             {"torch_time_us", r.torch_time_seconds * 1e6},
                             {"copy_time_us", r.copy_time_seconds * 1e6},
                             {"speedup_over_torch", r.speedup_over_torch()},
                             {"ratio", r.ratio_to_copy()}};
      std::cout << line.dump() << std::endl;
    } else {
      std::printf("%12lld %10.1f %12.1f %10.2f %10.1f %10.2f %10.2f\n",
                  static_cast<long long>(r.elements), r.time_seconds * 1e6,
                  r.torch_time_seconds * 1e6, r.speedup_over_torch(), r.copy_time_seconds * 1e6,
                  r.ratio_to_copy(), gigabytes_per_second);
    }
  }
  if (!json) std::printf("# speedup = torch time / ours; vs copy = copy time / ours\n");
}

const char* layout_name(fsdp::models::HfExpertNaming layout) {
  return layout == fsdp::models::HfExpertNaming::kMixtral ? "mixtral" : "qwen3_moe";
}

void print_load(const fsdp::bench::LoadBenchOptions& options, const fsdp::bench::LoadBenchResult& r,
                bool json) {
  constexpr double kMiB = 1024.0 * 1024.0;
  if (json) {
    nlohmann::json line = {{"case", "load"},
                           {"bytes", r.checkpoint_bytes},
                           {"ranks", r.ranks},
                           {"checkpoint_bytes", r.checkpoint_bytes},
                           {"files", r.files},
                           {"time_s", r.time_seconds},
                           {"raw_time_s", r.raw_time_seconds},
                           {"gbps", r.gbps()},
                           {"raw_gbps", r.raw_gbps()},
                           {"ratio", r.ratio()},
                           {"bytes_read_ratio", r.bytes_read_ratio()},
                           {"load_overhead_mib", r.load_overhead_bytes / kMiB},
                           {"shard_mib", r.shard_bytes / kMiB},
                           {"rss_ratio", r.rss_ratio},
                           {"layout", layout_name(options.layout)},
                           {"page_cache", "warm"}};
    std::cout << line.dump() << std::endl;
    return;
  }
  std::printf(
      "# case load: HF checkpoint of a Llama with MoE experts in the %s layout (hidden %lld, %lld "
      "experts, %lld layers), %.3f GB in %d file(s), %d rank(s); warm page cache (nothing "
      "dropped)\n",
      layout_name(options.layout), static_cast<long long>(options.hidden),
      static_cast<long long>(options.experts), static_cast<long long>(options.layers),
      r.checkpoint_bytes / 1e9, r.files, r.ranks);
  std::printf("%10s %10s %12s %10s %8s %12s %14s %10s %10s\n", "time(s)", "GB/s", "raw time(s)",
              "raw GB/s", "ratio", "bytes read", "overhead(MiB)", "shard(MiB)", "rss ratio");
  std::printf("%10.3f %10.3f %12.3f %10.3f %8.3f %12.3f %14.1f %10.1f %10.3f\n", r.time_seconds,
              r.gbps(), r.raw_time_seconds, r.raw_gbps(), r.ratio(), r.bytes_read_ratio(),
              r.load_overhead_bytes / kMiB, r.shard_bytes / kMiB, r.rss_ratio);
  std::printf(
      "# times: medians of %d, slowest rank; raw = every rank preads a contiguous 1/%d of the "
      "files sequentially; ratio = raw time / our time (target >= 0.7)\n"
      "# bytes read = bytes read by all ranks / checkpoint bytes (target <= 1.05)\n"
      "# overhead = peak RSS during the load above the RSS before it (the model's shards and "
      "buffers already allocated), largest rank; shard = that rank's weight shard; rss ratio = "
      "(shard + overhead) / shard (target: overhead <= 64 MiB)\n",
      options.iterations, r.ranks);
}

// Which BLAS and how many threads: every compute figure depends on both, so
// they head every report (a reference BLAS makes the step case 10x slower).
void print_compute(const fsdp::launch::Runtime& runtime, bool json) {
  const auto blas = fsdp::launch::find_blas();
  const auto threads = fsdp::launch::current_compute_threads();
  if (runtime.rank() != 0) return;
  if (json) {
    nlohmann::json line = {{"case", "environment"},
                           {"blas", blas.name},
                           {"blas_build", blas.build},
                           {"blas_path", blas.path},
                           {"blas_optimised", blas.optimised},
                           {"openmp_threads", threads.openmp},
                           {"blas_threads", threads.blas},
                           {"ranks", runtime.world_size()}};
    std::cout << line.dump() << std::endl;
  } else {
    std::printf("# %s\n# compute: %s\n", runtime.describe().c_str(),
                fsdp::launch::describe_compute(blas).c_str());
  }
  std::cerr << fsdp::launch::reference_blas_warning(blas) << std::flush;
}

int run(fsdp::launch::Runtime& runtime, const po::variables_map& values) {
  fsdp::launch::set_compute_threads(runtime.compute_threads());
  print_compute(runtime, values.count("json") != 0);
  const std::string case_name = values["case"].as<std::string>();
  std::vector<std::string> cases;
  if (case_name == "all") {
    cases = {"restore", "reduce", "adamw"};
  } else {
    cases = {case_name};
  }
  for (const std::string& name : cases) {
    if (name == "step") {
      fsdp::bench::StepBenchOptions options;
      options.iterations = values["iterations"].as<int>();
      options.zero_stage = values["zero-stage"].as<int>();
      const auto result = fsdp::bench::run_step_bench(runtime, options);
      if (runtime.rank() != 0) continue;
      const bool single = runtime.world_size() == 1;
      if (values.count("json")) {
        nlohmann::json line = {{"case", "step"},
                               {"bytes", 0},
                               {"ranks", runtime.world_size()},
                               {"zero_stage", options.zero_stage},
                               {"tokens_per_second", result.tokens_per_second},
                               {"exposed_ms", result.exposed_milliseconds}};
        if (single) {
          line["plain_tokens_per_second"] = result.plain_tokens_per_second;
          line["ratio"] = result.ratio();
        } else {
          nlohmann::json rows = nlohmann::json::array();
          for (const auto& row : result.rows) {
            rows.push_back({{"prefetch", row.prefetch},
                            {"asynchronous_reduction", row.asynchronous_reduction},
                            {"tokens_per_second", row.tokens_per_second},
                            {"exposed_ms", row.exposed_milliseconds},
                            {"ratio", result.ratio(row)}});
          }
          line["rows"] = rows;
          line["ratio"] = result.ratio(result.rows.back());
          line["bitwise_equal"] = result.rows_bitwise_equal;
        }
        std::cout << line.dump() << std::endl;
      } else {
        std::printf(
            "# case step: Llama hidden %lld, %lld layers, batch %lld x %lld tokens, ZeRO-%d%s, "
            "%d rank(s); exposed = host ms per step in collectives\n",
            static_cast<long long>(options.hidden), static_cast<long long>(options.layers),
            static_cast<long long>(options.batch), static_cast<long long>(options.sequence),
            options.zero_stage,
            options.zero_stage == 3 ? " (the library's default shared buffers)" : "",
            runtime.world_size());
        if (single) {
          std::printf(
              "runtime %.0f tokens/s (exposed %.2f ms), plain libtorch %.0f tokens/s, "
              "ratio %.3f\n",
              result.tokens_per_second, result.exposed_milliseconds, result.plain_tokens_per_second,
              result.ratio());
        } else {
          for (const auto& row : result.rows) {
            std::printf(
                "prefetch %-3s asynchronous reduction %-3s %.0f tokens/s (exposed %.2f ms), "
                "ratio to the first row %.3f\n",
                row.prefetch ? "on" : "off", row.asynchronous_reduction ? "on" : "off",
                row.tokens_per_second, row.exposed_milliseconds, result.ratio(row));
          }
          std::printf("losses and gradient norms bitwise equal across rows: %s\n",
                      result.rows_bitwise_equal ? "yes" : "NO");
        }
      }
      continue;
    }
    if (name == "checkpointing") {
      fsdp::bench::CheckpointingBenchOptions options;
      options.iterations = values["iterations"].as<int>();
      options.mode = fsdp::stages::parse_activation_checkpointing(
          values["activation-checkpointing"].as<std::string>());
      options.hidden = values["ckpt-hidden"].as<std::int64_t>();
      options.layers = values["ckpt-layers"].as<std::int64_t>();
      options.sequence = values["ckpt-seq-len"].as<std::int64_t>();
      if (options.hidden != 1024) {  // a smaller model keeps the proportions
        options.intermediate = options.hidden * 2752 / 1024;
        options.heads = std::max<std::int64_t>(1, options.hidden / 128);
        options.vocabulary = options.hidden * 8;
      }
      const auto r = fsdp::bench::run_checkpointing_bench(runtime, options);
      if (runtime.rank() != 0) continue;
      if (values.count("json")) {
        nlohmann::json line = {{"case", "checkpointing"},
                               {"bytes", 0},
                               {"ranks", runtime.world_size()},
                               {"mode", fsdp::stages::activation_checkpointing_name(options.mode)},
                               {"parameters", r.parameters},
                               {"tokens_per_second", r.checkpointed_tokens_per_second},
                               {"plain_tokens_per_second", r.plain_tokens_per_second},
                               {"step_peak_mib", r.checkpointed_step_peak_mib},
                               {"plain_step_peak_mib", r.plain_step_peak_mib},
                               {"estimate_mib", r.checkpointed_estimate_mib},
                               {"plain_estimate_mib", r.plain_estimate_mib},
                               {"memory_ratio", r.memory_ratio()},
                               {"losses_bitwise_equal", r.losses_bitwise_equal},
                               {"collectives_equal", r.collectives_equal},
                               {"ratio", r.ratio()}};
        std::cout << line.dump() << std::endl;
      } else {
        std::printf(
            "# case checkpointing: dense Llama, %lld parameters, hidden %lld, %lld layers, %lld "
            "x %lld tokens per rank, ZeRO-3 (default shared buffers), %d rank(s); step peak = the "
            "resident set's high-water mark above its start of step, max over ranks\n"
            "none: %.0f tokens/s, step peak %.0f MiB (estimate %.0f)\n"
            "%s: %.0f tokens/s, step peak %.0f MiB (estimate %.0f)\n"
            "tokens/s ratio %.3f, step peak ratio %.3f, losses and gradient norms bitwise "
            "equal: %s, same collectives: %s\n",
            static_cast<long long>(r.parameters), static_cast<long long>(options.hidden),
            static_cast<long long>(options.layers), static_cast<long long>(options.rows_per_rank),
            static_cast<long long>(options.sequence), runtime.world_size(),
            r.plain_tokens_per_second, r.plain_step_peak_mib, r.plain_estimate_mib,
            fsdp::stages::activation_checkpointing_name(options.mode),
            r.checkpointed_tokens_per_second, r.checkpointed_step_peak_mib,
            r.checkpointed_estimate_mib, r.ratio(), r.memory_ratio(),
            r.losses_bitwise_equal ? "yes" : "NO", r.collectives_equal ? "yes" : "NO");
      }
      continue;
    }
    if (name == "load") {
      fsdp::bench::LoadBenchOptions options;
      options.hidden = values["load-hidden"].as<std::int64_t>();
      options.experts = values["load-experts"].as<std::int64_t>();
      options.layers = values["load-layers"].as<std::int64_t>();
      const std::string layout = values["load-layout"].as<std::string>();
      if (layout == "mixtral") {
        options.layout = fsdp::models::HfExpertNaming::kMixtral;
      } else if (layout != "qwen3_moe") {
        throw po::invalid_option_value("--load-layout " + layout +
                                       " (expected qwen3_moe or mixtral)");
      }
      options.iterations = values["iterations"].as<int>();
      if (values.count("load-dir")) options.parent_directory = values["load-dir"].as<std::string>();
      const auto result = fsdp::bench::run_load_bench(runtime, options);
      if (runtime.rank() == 0) print_load(options, result, values.count("json") != 0);
      continue;
    }
    if (name == "device") {
      std::vector<std::int64_t> elements;
      for (std::int64_t bytes : parse_sizes(values["sizes-mib"].as<std::string>())) {
        elements.push_back(bytes / 4);  // a float32 shard of that size
      }
      const auto results =
          fsdp::bench::run_device_bench(runtime, elements, values["iterations"].as<int>());
      if (runtime.rank() == 0) print_device(results, values.count("json") != 0);
      continue;
    }
    if (name == "adamw") {
      std::vector<std::int64_t> elements;
      for (std::int64_t bytes : parse_sizes(values["sizes-mib"].as<std::string>())) {
        elements.push_back(bytes / 4);  // a float32 shard of that size
      }
      const auto results = fsdp::bench::run_adamw_bench(elements, values["iterations"].as<int>());
      if (runtime.rank() == 0) print_adamw(results, values.count("json") != 0);
      continue;
    }
    fsdp::bench::CollectiveBenchOptions options;
    options.case_name = name;
    options.buffer_bytes = parse_sizes(values["sizes-mib"].as<std::string>());
    options.compute_dtype = values["compute-dtype"].as<std::string>();
    options.iterations = values["iterations"].as<int>();
    options.warmup_iterations = values["warmup"].as<int>();
    const auto results = fsdp::bench::run_collective_bench(runtime, options);
    if (runtime.rank() != 0) continue;
    if (values.count("json")) {
      for (const auto& r : results) {
        nlohmann::json line = {{"case", r.case_name},
                               {"bytes", r.bytes},
                               {"ranks", r.ranks},
                               {"dtype", r.dtype},
                               {"time_us", r.time_seconds * 1e6},
                               {"algbw_gbps", r.algbw_gbps()},
                               {"busbw_gbps", r.busbw_gbps()},
                               {"raw_time_us", r.raw_time_seconds * 1e6},
                               {"raw_busbw_gbps", r.raw_busbw_gbps()},
                               {"ratio", r.ratio()}};
        std::cout << line.dump() << std::endl;
      }
    } else {
      print_table(results);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  po::options_description options("Benchmark");
  options.add_options()(
      "case", po::value<std::string>()->default_value("all")->notifier([](const std::string& c) {
        if (c != "restore" && c != "reduce" && c != "adamw" && c != "step" && c != "load" &&
            c != "checkpointing" && c != "device" && c != "all") {
          throw po::invalid_option_value(
              "--case " + c +
              " (expected restore, reduce, adamw, step, load, checkpointing, device or all)");
        }
      }),
      "restore: restore_parameters() vs MPI_Allgather; reduce: reduce_gradients() vs "
      "MPI_Reduce_scatter_block; adamw: fused shard AdamW vs torch::optim::AdamW (one process; "
      "shard sizes from --sizes-mib); step: training-step tokens/s vs plain libtorch (world "
      "size 1); load: HF checkpoint import vs a raw read of its files (generated, about 1 GB by "
      "default); checkpointing: training with and without activation checkpointing (tokens/s, "
      "step peak memory, bitwise losses); device: on GPUs (--backend nccl), restore and AdamW "
      "bytes/s vs a device-to-device copy of the shard (shard sizes from --sizes-mib); all: "
      "restore, reduce and adamw")("sizes-mib",
                                   po::value<std::string>()->default_value("1,4,16,64,256"),
                                   "stage buffer sizes, comma-separated MiB")(
      "compute-dtype",
      po::value<std::string>()->default_value("float32")->notifier([](const std::string& d) {
        if (d != "float32" && d != "bfloat16") {
          throw po::invalid_option_value("--compute-dtype " + d +
                                         " (expected float32 or bfloat16)");
        }
      }),
      "dtype of the stage buffers")("iterations", po::value<int>()->default_value(10),
                                    "timed iterations per size")(
      "warmup", po::value<int>()->default_value(2), "untimed iterations per size")(
      "zero-stage", po::value<int>()->default_value(3),
      "ZeRO stage for the step case (1, 2, 3; 3 shares buffers as the library does by default)")(
      "load-hidden", po::value<std::int64_t>()->default_value(512),
      "load case: hidden size (experts' intermediate size is twice it)")(
      "load-experts", po::value<std::int64_t>()->default_value(16), "load case: experts per layer")(
      "load-layers", po::value<std::int64_t>()->default_value(10), "load case: decoder layers")(
      "load-layout", po::value<std::string>()->default_value("qwen3_moe"),
      "load case: the experts' names on disk, qwen3_moe (mlp.experts.{e}.gate_proj/up_proj/"
      "down_proj) or mixtral (block_sparse_moe.experts.{e}.w1/w3/w2)")(
      "load-dir", po::value<std::string>(),
      "load case: where to generate the checkpoint (default: the temporary directory); it is "
      "written to a subdirectory named by rank 0's pid and removed at the end")(
      "activation-checkpointing", po::value<std::string>()->default_value("layers"),
      "checkpointing case: the mode set against none (stages or layers)")(
      "ckpt-hidden", po::value<std::int64_t>()->default_value(1024),
      "checkpointing case: hidden size (1024: the 118 M-parameter model of the figures)")(
      "ckpt-layers", po::value<std::int64_t>()->default_value(8), "checkpointing case: layers")(
      "ckpt-seq-len", po::value<std::int64_t>()->default_value(512),
      "checkpointing case: tokens per sequence (2 sequences per rank)")(
      "json", "one JSON object per line instead of the table");
  return fsdp::launch::run_program(
      argc, argv,
      {"fsdp-bench", "the runtime's collectives beside raw MPI, as ratios",
       "mpirun -np N fsdp-bench [options]", nullptr, ""},
      options, run);
}
