#include "fsdp/checkpoint/conversion_rules.h"

#include <algorithm>
#include <optional>
#include <regex>
#include <set>

#include "fsdp/checkpoint/checkpoint_error.h"
#include "fsdp/checkpoint/element_conversion.h"
#include "fsdp/torch_interop.h"

namespace fsdp::checkpoint {
namespace {

using Bindings = std::vector<std::pair<std::string, std::int64_t>>;

// A name pattern with {placeholders}, compiled to an anchored regex.
struct CompiledPattern {
  std::regex regex;
  std::vector<std::string> placeholders;
};

CompiledPattern compile(const std::string& pattern) {
  CompiledPattern compiled;
  std::string expression;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '{') {
      const auto close = pattern.find('}', i);
      if (close == std::string::npos) {
        throw std::invalid_argument("conversion rule pattern \"" + pattern + "\": unclosed '{'");
      }
      compiled.placeholders.push_back(pattern.substr(i + 1, close - i - 1));
      expression += "(0|[1-9][0-9]*)";
      i = close;
    } else if (std::string_view(".^$|()[]*+?\\/").find(c) != std::string_view::npos) {
      expression += '\\';
      expression += c;
    } else {
      expression += c;
    }
  }
  compiled.regex = std::regex(expression);
  return compiled;
}

std::optional<Bindings> match(const CompiledPattern& compiled, const std::string& name) {
  std::smatch groups;
  if (!std::regex_match(name, groups, compiled.regex)) return std::nullopt;
  Bindings bindings;
  for (std::size_t i = 0; i < compiled.placeholders.size(); ++i) {
    bindings.emplace_back(compiled.placeholders[i], std::stoll(groups[i + 1].str()));
  }
  return bindings;
}

std::optional<Bindings> match(const std::string& pattern, const std::string& name) {
  return match(compile(pattern), name);
}

std::string substitute(const std::string& pattern, const Bindings& bindings) {
  std::string result;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '{') {
      result += pattern[i];
      continue;
    }
    const auto close = pattern.find('}', i);
    const auto name = pattern.substr(i + 1, close - i - 1);
    const auto bound = std::find_if(bindings.begin(), bindings.end(),
                                    [&](const auto& binding) { return binding.first == name; });
    if (bound == bindings.end()) {
      throw std::invalid_argument("conversion rule pattern \"" + pattern + "\": placeholder {" +
                                  name + "} is neither in the parameter pattern nor stacked");
    }
    result += std::to_string(bound->second);
    i = close;
  }
  return result;
}

std::string describe(const Bindings& bindings) {
  std::string text;
  for (const auto& [name, value] : bindings) {
    text += (text.empty() ? "" : ", ") + name + " " + std::to_string(value);
  }
  return text;
}

std::int64_t product(const std::vector<std::int64_t>& shape, std::size_t from, std::size_t to) {
  std::int64_t result = 1;
  for (std::size_t i = from; i < to; ++i) result *= shape[i];
  return result;
}

std::vector<std::int64_t> swap_last_two(std::vector<std::int64_t> shape) {
  std::swap(shape[shape.size() - 1], shape[shape.size() - 2]);
  return shape;
}

// What trying one rule on one parameter gave.
struct Attempt {
  std::vector<ConversionPiece> pieces;
  std::string first_missing;  // empty when every source was found
  std::size_t found = 0;
};

// Plans `slot` through `rule`. With a checkpoint, shapes come from it and a
// missing key ends the attempt; without one (export), the concatenated
// sources split the block evenly.
Attempt plan_parameter(const ParameterSlot& slot, const ConversionRule& rule,
                       const Bindings& parameter_bindings, const HfCheckpoint* checkpoint) {
  const std::string where = "runtime parameter \"" + slot.name + "\" " + format_shape(slot.shape);
  const std::size_t stacked = rule.stacked.size();
  if (rule.sources.empty() || slot.shape.size() < stacked + (rule.reshapes() ? 0 : 1) ||
      (rule.reshapes() && rule.sources.size() != 1)) {
    throw CheckpointError(where + ": the conversion rule for \"" + rule.parameter +
                          "\" does not fit its shape (stacked " + std::to_string(stacked) +
                          ", sources " + std::to_string(rule.sources.size()) + ")");
  }
  const std::vector<std::int64_t> block(slot.shape.begin() + static_cast<std::ptrdiff_t>(stacked),
                                        slot.shape.end());
  const int dim = rule.concat_dim;
  if (!rule.reshapes() && (dim < 0 || static_cast<std::size_t>(dim) >= block.size())) {
    throw CheckpointError(where + ": concat_dim " + std::to_string(dim) + " is outside its block " +
                          format_shape(block));
  }
  const std::int64_t block_numel = product(block, 0, block.size());
  const std::int64_t stack_count = product(slot.shape, 0, stacked);
  const auto target_type = fsdp::scalar_type_of(slot.dtype);

  Attempt attempt;
  for (std::int64_t s = 0; s < stack_count; ++s) {
    Bindings bindings = parameter_bindings;
    std::int64_t rest = s;
    for (std::size_t i = stacked; i-- > 0;) {
      bindings.emplace_back(rule.stacked[i], rest % slot.shape[i]);
      rest /= slot.shape[i];
    }
    std::int64_t concat_offset = 0;
    std::string shapes_seen;
    for (std::size_t source_index = 0; source_index < rule.sources.size(); ++source_index) {
      const auto& source = rule.sources[source_index];
      ConversionPiece piece;
      piece.key = substitute(source.key, bindings);
      piece.parameter = slot.name;
      piece.transposed = source.transposed;
      if (checkpoint != nullptr) {
        const auto* located = checkpoint->find(piece.key);
        if (located == nullptr) {
          if (attempt.first_missing.empty()) {
            attempt.first_missing = "missing tensor \"" + piece.key + "\" in " +
                                    checkpoint->source() + ": " + where + " needs it" +
                                    (bindings.empty() ? "" : " (" + describe(bindings) + ")");
          }
          continue;
        }
        ++attempt.found;
        piece.source = *located;
        piece.shape = located->entry->shape;
        if (!is_supported_conversion(located->entry->dtype, target_type)) {
          throw CheckpointError(located->file->path() + ": tensor \"" + piece.key +
                                "\" has dtype " + std::string(dtype_name(located->entry->dtype)) +
                                ", which cannot load into " + where + " of " +
                                std::string(element_type_name(slot.dtype)));
        }
      } else {
        std::vector<std::int64_t> shape = rule.reshapes() ? rule.stored_shape : block;
        if (!rule.reshapes() && !rule.concat_sizes.empty()) {
          shape[dim] = rule.concat_sizes.at(source_index);
        } else if (!rule.reshapes()) {
          const auto count = static_cast<std::int64_t>(rule.sources.size());
          if (block[dim] % count != 0) {
            throw CheckpointError(where + ": cannot split dimension " + std::to_string(dim) +
                                  " evenly into " + std::to_string(count) + " tensors");
          }
          shape[dim] = block[dim] / count;
        }
        piece.shape = source.transposed ? swap_last_two(shape) : shape;
      }
      // Messages about the tensor name its file when it comes from one.
      const std::string tensor_named =
          (piece.source.file != nullptr ? piece.source.file->path() + ": " : std::string()) +
          "tensor \"" + piece.key + "\"";
      if (source.transposed && piece.shape.size() < 2) {
        throw CheckpointError(tensor_named + " " + format_shape(piece.shape) +
                              " is marked transposed but has fewer than 2 dimensions (" + where +
                              ")");
      }
      const auto in_block = source.transposed ? swap_last_two(piece.shape) : piece.shape;
      piece.numel = product(in_block, 0, in_block.size());
      shapes_seen += (shapes_seen.empty() ? "" : ", ") + piece.key + " " +
                     format_shape(piece.shape) +
                     (piece.source.file != nullptr ? " in " + piece.source.file->path() : "");
      if (rule.reshapes()) {
        if (piece.shape != rule.stored_shape || piece.numel != block_numel) {
          throw CheckpointError(tensor_named + " " + format_shape(piece.shape) + ", but " + where +
                                " is reshaped from " + format_shape(rule.stored_shape) +
                                " into blocks of " + format_shape(block));
        }
        piece.run = piece.destination_stride = std::max<std::int64_t>(block_numel, 1);
        piece.destination_base = slot.flat_range.begin + s * block_numel;
      } else {
        bool fits = in_block.size() == block.size();
        for (std::size_t d = 0; fits && d < block.size(); ++d) {
          fits = static_cast<int>(d) == dim || in_block[d] == block[d];
        }
        const bool sized = rule.concat_sizes.empty() || in_block.size() != block.size() ||
                           in_block[dim] == rule.concat_sizes.at(source_index);
        if (fits && !sized) {
          throw CheckpointError(tensor_named + " has shape " + format_shape(piece.shape) +
                                ", but " + where + " needs " +
                                std::to_string(rule.concat_sizes.at(source_index)) +
                                " along dimension " + std::to_string(dim) + " from it");
        }
        if (!fits) {
          throw CheckpointError(tensor_named + " has shape " + format_shape(piece.shape) +
                                (source.transposed ? " (stored transposed)" : "") + ", but " +
                                where + " needs " + format_shape(block) + " blocks" +
                                (rule.sources.size() > 1
                                     ? " concatenated along dimension " + std::to_string(dim)
                                     : std::string()));
        }
        const std::int64_t inner = product(block, dim + 1, block.size());
        piece.run = std::max<std::int64_t>(in_block[dim] * inner, 1);
        piece.destination_stride = std::max<std::int64_t>(block[dim] * inner, 1);
        piece.destination_base = slot.flat_range.begin + s * block_numel + concat_offset * inner;
        concat_offset += in_block[dim];
      }
      attempt.pieces.push_back(std::move(piece));
    }
    if (attempt.first_missing.empty() && !rule.reshapes() && concat_offset != block[dim]) {
      throw CheckpointError(where + ": its tensors (" + shapes_seen + ") add up to " +
                            std::to_string(concat_offset) + " along dimension " +
                            std::to_string(dim) + ", but each block " + format_shape(block) +
                            " needs " + std::to_string(block[dim]));
    }
  }
  return attempt;
}

struct Candidate {
  const ConversionRule* rule;
  Bindings bindings;
};

// The rules' parameter patterns, compiled once per plan: compiling a
// std::regex costs about as much as matching a thousand names with it.
class RuleMatcher {
 public:
  explicit RuleMatcher(const ConversionRules& rules) : rules_(rules) {
    for (const auto& rule : rules.rules) patterns_.push_back(compile(rule.parameter));
  }
  // Every rule whose parameter pattern matches `slot`, in table order.
  // Throws CheckpointError when there is none.
  std::vector<Candidate> candidates_for(const ParameterSlot& slot) const;

 private:
  const ConversionRules& rules_;
  std::vector<CompiledPattern> patterns_;
};

std::vector<Candidate> RuleMatcher::candidates_for(const ParameterSlot& slot) const {
  std::vector<Candidate> candidates;
  for (std::size_t r = 0; r < rules_.rules.size(); ++r) {
    if (auto bindings = match(patterns_[r], slot.name)) {
      candidates.push_back({&rules_.rules[r], *bindings});
    }
  }
  if (candidates.empty()) {
    throw CheckpointError("no conversion rule produces runtime parameter \"" + slot.name + "\"");
  }
  return candidates;
}

// A hint for a checkpoint tensor nothing consumed: which rule it looks made for.
std::string unused_hint(const std::string& key, const ConversionRules& rules) {
  for (const auto& rule : rules.rules) {
    for (const auto& source : rule.sources) {
      if (const auto bindings = match(source.key, key)) {
        return " (\"" + key + "\" fits the rule for \"" + rule.parameter + "\" with " +
               describe(*bindings) +
               ", but the model has no such parameter: does the checkpoint have more layers or "
               "experts than the model?)";
      }
    }
  }
  return "";
}

}  // namespace

ConversionRule ConversionRule::rename(std::string parameter, std::string key) {
  return {std::move(parameter), {}, {{std::move(key), false}}, 0, {}, {}};
}

ConversionRule ConversionRule::reshaped(std::string parameter, std::string key,
                                        std::vector<std::int64_t> stored_shape) {
  return {std::move(parameter), {}, {{std::move(key), false}}, 0, std::move(stored_shape), {}};
}

ConversionRule ConversionRule::concatenate(std::string parameter, std::vector<std::string> keys,
                                           int dim) {
  ConversionRule rule{std::move(parameter), {}, {}, dim, {}, {}};
  for (auto& key : keys) rule.sources.push_back({std::move(key), false});
  return rule;
}

ConversionRule& ConversionRule::stack_over(std::string placeholder) {
  stacked.push_back(std::move(placeholder));
  return *this;
}

ConversionRule& ConversionRule::sized(std::vector<std::int64_t> sizes) {
  if (sizes.size() != sources.size()) {
    throw std::invalid_argument("conversion rule for \"" + parameter +
                                "\": " + std::to_string(sizes.size()) + " concat sizes for " +
                                std::to_string(sources.size()) + " sources");
  }
  concat_sizes = std::move(sizes);
  return *this;
}

ConversionRule& ConversionRule::transposed() {
  for (auto& source : sources) source.transposed = true;
  return *this;
}

ElementRange ConversionPiece::block_interval(ElementRange range) const {
  const auto first_at_or_after = [this](std::int64_t target) -> std::int64_t {
    if (target <= destination_base) return 0;
    const std::int64_t relative = target - destination_base;
    const std::int64_t row = relative / destination_stride, column = relative % destination_stride;
    const std::int64_t k = column < run ? row * run + column : (row + 1) * run;
    return std::min(k, numel);
  };
  return {first_at_or_after(range.begin), first_at_or_after(range.end)};
}

std::int64_t ConversionPiece::stored_index(std::int64_t k) const {
  if (!transposed) return k;
  // Block order is [..., P, Q] (the transpose of the stored [..., Q, P]).
  const std::int64_t q_size = shape[shape.size() - 2], p_size = shape[shape.size() - 1];
  const std::int64_t matrix = p_size * q_size, batch = k / matrix, within = k % matrix;
  const std::int64_t p = within / q_size, q = within % q_size;
  return batch * matrix + q * p_size + p;
}

std::map<std::string, ParameterPlan> plan_import(const std::vector<const FlatLayout*>& layouts,
                                                 const HfCheckpoint& checkpoint,
                                                 const ConversionRules& rules) {
  std::map<std::string, ParameterPlan> plans;
  std::map<std::string, std::string> consumer_of_key;
  const RuleMatcher matcher(rules);
  for (const auto* layout : layouts) {
    for (const auto& slot : layout->parameters()) {
      const auto candidates = matcher.candidates_for(slot);
      std::optional<Attempt> best;
      for (const auto& candidate : candidates) {
        auto attempt = plan_parameter(slot, *candidate.rule, candidate.bindings, &checkpoint);
        if (attempt.first_missing.empty()) {
          best = std::move(attempt);
          break;
        }
        if (!best || attempt.found > best->found) best = std::move(attempt);
      }
      if (!best->first_missing.empty()) throw CheckpointError(best->first_missing);
      for (const auto& piece : best->pieces) {
        const auto [where, inserted] = consumer_of_key.emplace(piece.key, slot.name);
        if (!inserted) {
          throw CheckpointError(checkpoint.source() + ": tensor \"" + piece.key +
                                "\" is claimed by two runtime parameters, \"" + where->second +
                                "\" and \"" + slot.name + "\" (conflicting conversion rules)");
        }
      }
      plans[slot.name] = ParameterPlan{slot.name, std::move(best->pieces)};
    }
  }
  std::vector<std::regex> ignored;
  for (const auto& pattern : rules.ignored) ignored.emplace_back(pattern);
  std::vector<std::string> unused;
  for (const auto& key : checkpoint.keys()) {
    if (consumer_of_key.count(key) != 0) continue;
    if (std::any_of(ignored.begin(), ignored.end(),
                    [&](const std::regex& regex) { return std::regex_match(key, regex); })) {
      continue;
    }
    unused.push_back(key);
  }
  if (!unused.empty()) {
    std::string listed;
    for (std::size_t i = 0; i < std::min<std::size_t>(unused.size(), 5); ++i) {
      listed += (i ? ", \"" : "\"") + unused[i] + "\"";
    }
    if (unused.size() > 5) listed += " and " + std::to_string(unused.size() - 5) + " more";
    throw CheckpointError(checkpoint.source() + ": " + std::to_string(unused.size()) +
                          " checkpoint tensor(s) that no conversion rule uses: " + listed +
                          unused_hint(unused.front(), rules) +
                          "; list them as ignored if they are not needed");
  }
  return plans;
}

std::vector<ConversionPiece> plan_export(const std::vector<const FlatLayout*>& layouts,
                                         const ConversionRules& rules) {
  std::vector<ConversionPiece> pieces;
  const RuleMatcher matcher(rules);
  for (const auto* layout : layouts) {
    for (const auto& slot : layout->parameters()) {
      const auto candidate = matcher.candidates_for(slot).front();
      auto attempt = plan_parameter(slot, *candidate.rule, candidate.bindings, nullptr);
      for (auto& piece : attempt.pieces) pieces.push_back(std::move(piece));
    }
  }
  return pieces;
}

}  // namespace fsdp::checkpoint
