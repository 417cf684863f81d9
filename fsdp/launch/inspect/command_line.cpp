#include "fsdp/launch/inspect/command_line.h"

#include <boost/program_options.hpp>

#include <iostream>
#include <optional>
#include <sstream>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/launch/inspect/checkpoint_diff.h"
#include "fsdp/launch/inspect/parameter_values.h"
#include "fsdp/launch/inspect/placements_view.h"
#include "fsdp/launch/inspect/statistics_table.h"
#include "fsdp/launch/inspect/usage_error.h"

namespace fsdp::inspect {
namespace {

namespace po = boost::program_options;

constexpr const char* kUsage = R"(Usage: shard-inspect DIR [options]

Shows the weights a checkpoint really holds, without MPI and without a GPU.
DIR is a distributed checkpoint saved by this runtime (a directory with
index.json and one rank-NNNNN-of-NNNNN.safetensors file per rank) or a
HuggingFace safetensors checkpoint (a .safetensors file, or a directory of
them with or without model.safetensors.index.json). Every block read from a
distributed checkpoint is verified against the checksum in its index.

Views (one at a time):
  (default)          one row per parameter (per key for HF): shape, dtype, stage
                     (file for HF), mean, std, min, max, abs_max, non-zero count,
                     NaN and Inf counts; a WARNING line for every parameter that
                     is all zeros or holds NaN or Inf
  --param NAME       the values of one parameter; --slice picks a part of it
  --where NAME       which rank files hold the parameter: elements, shard offsets,
                     file byte ranges, and every rank's padding (HF: the file and
                     byte range of the key)
  --diff OTHER       compares DIR with OTHER, parameter by parameter: two
                     distributed checkpoints (any world sizes) by name, two HF
                     checkpoints by key, or a distributed checkpoint with an HF
                     one through the conversion rules of the model recorded in
                     the checkpoint's training_config
)";

constexpr const char* kDetails = R"(
Slices (numpy-like, one item per leading dimension; the rest are taken whole):
  5  -1  1:3  :4  -2:  ::2  1:9:3     e.g. --slice 0,:4   --slice 1:3,::2
A selection of more than --max-values values is summarised as torch prints
tensors (the first and last 3 indices of each long dimension); only the
values shown are read.

Differences: max_abs_diff is the largest |a - b|; max_rel_diff the largest
|a - b| / max(|a|, |b|) (0 where a == b). NaN against NaN, and an infinity
against the same infinity, are equal; otherwise a NaN or an infinity makes an
infinite difference. Values are compared in float64. A parameter differs when its
max_abs_diff exceeds --tol (default 0: bitwise-equal values), when it is on
one side only, or when the shapes differ. The last line reads
"N of M parameters differ beyond tol T".

JSON (--json): one document per run. Non-finite numbers are the strings
"NaN", "Infinity" and "-Infinity"; ranges are [begin, end) pairs.

Exit status: 0 success (and no differences); 1 --diff found differences
beyond --tol; 2 bad usage (unknown option, bad value, slice or regex);
3 unreadable, corrupt or unexpected input (the message names the file).

Examples:
  shard-inspect checkpoints/step-100
  shard-inspect checkpoints/step-100 --filter 'decoder.0.*' --filter 'embedding*'
  shard-inspect checkpoints/step-100 --param decoder.0.attention.qkv.weight --slice 0,:8
  shard-inspect checkpoints/step-100 --where embedding.weight
  shard-inspect checkpoints/step-100 --state exp_avg_sq --regex 'mlp'
  shard-inspect checkpoints/step-100 --diff checkpoints/step-200 --tol 1e-3
  shard-inspect checkpoints/step-100 --diff exported-hf/ --json
  shard-inspect exported-hf/model.safetensors --param model.norm.weight
)";

checkpoint::ShardArray shard_array_named(const std::string& name) {
  if (name == "weights") return checkpoint::ShardArray::kWeights;
  if (name == "gradients") return checkpoint::ShardArray::kGradients;
  if (name == "exp_avg") return checkpoint::ShardArray::kExpAvg;
  if (name == "exp_avg_sq") return checkpoint::ShardArray::kExpAvgSq;
  throw UsageError("--state " + name + " (expected weights, gradients, exp_avg or exp_avg_sq)");
}

void print_json(std::ostream& out, const nlohmann::json& document) {
  // One line: a document of many values stays short, and `jq .` pretty-prints it.
  out << document.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
}

int run(const std::vector<std::string>& arguments, std::ostream& out) {
  po::options_description visible("Options");
  visible.add_options()("help,h", "show this help")(
      "param", po::value<std::string>()->value_name("NAME"), "show the values of parameter NAME")(
      "slice", po::value<std::string>()->value_name("SPEC"),
      "with --param: the part to show, e.g. 0,:4")(
      "max-values", po::value<std::int64_t>()->value_name("N")->default_value(1000),
      "with --param: show up to N values before summarising")(
      "precision", po::value<int>()->value_name("DIGITS")->default_value(6),
      "with --param: significant digits of printed values (1 to 17; JSON is always exact)")(
      "where", po::value<std::string>()->value_name("NAME"), "show where parameter NAME is stored")(
      "diff", po::value<std::string>()->value_name("OTHER"), "compare DIR with OTHER")(
      "tol", po::value<double>()->value_name("T")->default_value(0.0, "0"),
      "with --diff: the largest absolute difference allowed")(
      "filter", po::value<std::vector<std::string>>()->value_name("GLOB")->composing(),
      "table and --diff: only names matching GLOB (whole name; * and ?); repeatable")(
      "regex", po::value<std::vector<std::string>>()->value_name("REGEX")->composing(),
      "table and --diff: only names where REGEX matches (anywhere, ECMAScript); repeatable")(
      "state", po::value<std::string>()->value_name("ARRAY")->default_value("weights"),
      "distributed checkpoints: read weights, gradients, exp_avg or exp_avg_sq")(
      "json", "print one JSON document instead of text");
  po::options_description hidden;
  hidden.add_options()("checkpoint", po::value<std::vector<std::string>>());
  po::options_description all;
  all.add(visible).add(hidden);
  po::positional_options_description positional;
  positional.add("checkpoint", -1);

  po::variables_map values;
  po::store(po::command_line_parser(arguments).options(all).positional(positional).run(), values);
  po::notify(values);
  if (values.count("help")) {
    out << kUsage << "\n" << visible << kDetails;
    return kExitOk;
  }
  const auto paths = values.count("checkpoint")
                         ? values["checkpoint"].as<std::vector<std::string>>()
                         : std::vector<std::string>{};
  if (paths.size() != 1) {
    throw UsageError(paths.empty()
                         ? "no checkpoint given (shard-inspect DIR [options])"
                         : "unexpected argument '" + paths[1].substr(0, 80) +
                               "': one checkpoint at a time; compare two with DIR --diff OTHER");
  }
  const int views =
      static_cast<int>(values.count("param") + values.count("where") + values.count("diff"));
  if (views > 1) throw UsageError("--param, --where and --diff are separate views; give one");
  if (values.count("slice") && !values.count("param")) throw UsageError("--slice needs --param");
  const bool filtered = values.count("filter") || values.count("regex");
  if (filtered && (values.count("param") || values.count("where"))) {
    throw UsageError(
        "--filter and --regex apply to the table and --diff, not to --param or --where");
  }
  if (values.count("where") && values["state"].as<std::string>() != "weights") {
    // Every saved array of a stage is laid out alike; --where shows the weights' file offsets.
    throw UsageError("--where shows where the weights live; leave out --state");
  }
  const double tolerance = values["tol"].as<double>();
  if (!(tolerance >= 0)) throw UsageError("--tol must be a non-negative number");
  const auto max_values = values["max-values"].as<std::int64_t>();
  if (max_values < 1) throw UsageError("--max-values must be at least 1");
  const int precision = values["precision"].as<int>();
  if (precision < 1 || precision > 17) throw UsageError("--precision must be between 1 and 17");
  const auto array = shard_array_named(values["state"].as<std::string>());
  const NameFilter filter(values.count("filter") ? values["filter"].as<std::vector<std::string>>()
                                                 : std::vector<std::string>{},
                          values.count("regex") ? values["regex"].as<std::vector<std::string>>()
                                                : std::vector<std::string>{});
  const bool json = values.count("json") > 0;

  auto source = TensorSource::open(paths.front(), array);
  if (values.count("param")) {
    ValuesOptions options;
    options.slice = values.count("slice") ? values["slice"].as<std::string>() : "";
    options.max_values = max_values;
    const auto result = read_parameter_values(*source, values["param"].as<std::string>(), options);
    if (json) {
      print_json(out, values_json(result));
    } else {
      out << values_text(result, precision);
    }
    return kExitOk;
  }
  if (values.count("where")) {
    const auto report = where(*source, values["where"].as<std::string>());
    if (json) {
      print_json(out, where_json(report));
    } else {
      out << where_text(report);
    }
    return kExitOk;
  }
  if (values.count("diff")) {
    auto other = TensorSource::open(values["diff"].as<std::string>(), array);
    DiffOptions options;
    options.tolerance = tolerance;
    options.filter = filter;
    const auto report = diff_sources(*source, *other, options);
    // A filter that selects nothing would "pass" any diff: a typo must not.
    if (report.rows.empty() && !filter.matches_everything()) {
      throw UsageError("--filter/--regex matched no parameter of either side");
    }
    if (json) {
      print_json(out, diff_json(report));
    } else {
      out << diff_text(report);
    }
    return report.differing() > 0 ? kExitDifferences : kExitOk;
  }
  const auto table = statistics_table(*source, filter);
  if (table.rows.empty() && table.tensors > 0 && !filter.matches_everything()) {
    throw UsageError("--filter/--regex matched none of the " + std::to_string(table.tensors) +
                     " tensors in " + paths.front());
  }
  if (json) {
    print_json(out, table_json(table));
  } else {
    out << table_text(table);
  }
  return kExitOk;
}

}  // namespace

int run_shard_inspect(const std::vector<std::string>& arguments, std::ostream& out,
                      std::ostream& err) {
  try {
    return run(arguments, out);
  } catch (const po::error& error) {
    err << "shard-inspect: " << error.what() << " (see shard-inspect --help)" << std::endl;
    return kExitUsage;
  } catch (const UsageError& error) {
    err << "shard-inspect: " << error.what() << " (see shard-inspect --help)" << std::endl;
    return kExitUsage;
  } catch (const checkpoint::CheckpointError& error) {
    err << "shard-inspect: " << error.what() << std::endl;
    return kExitBadInput;
  } catch (const std::exception& error) {
    err << "shard-inspect: error: " << error.what() << std::endl;
    return kExitBadInput;
  } catch (...) {
    err << "shard-inspect: an unknown error" << std::endl;
    return kExitBadInput;
  }
}

}  // namespace fsdp::inspect
