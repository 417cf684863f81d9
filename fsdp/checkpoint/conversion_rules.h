// Conversion rules: how a checkpoint's tensors (HF layout) become the
// runtime's parameters, and back. A declarative table; the loader, the
// exporter and shard-inspect all plan through it.
//
// A rule builds one runtime parameter from checkpoint tensors:
//
//   parameter [S0, ..., Sk-1, B...] = stack over `stacked` placeholders (leading dims S0..Sk-1)
//                                      of concat along `concat_dim` of the block B...
//                                      of the `sources` (each optionally stored transposed)
//
// Patterns name placeholders in braces, "{layer}", "{expert}", which match a
// decimal index (no sign, no leading zeros). Matching is anchored on the
// whole name: "embed_tokens" never matches "model.embed_tokens_extra"
// (a substring match would). Placeholders in the parameter pattern are bound
// by matching the runtime name; `stacked` placeholders range over the
// parameter's leading dimensions instead.
//
// Examples (the reference model's rule sets are in fsdp/models/llama_conversion.h):
//   rename:      "final_norm.weight"               <- "model.norm.weight"
//   concatenate: "decoder.{layer}.attention.qkv.weight"
//                  <- q_proj, k_proj, v_proj along dim 0
//   stack:       "decoder.{layer}.mlp.experts.down_proj" [E, H, I]
//                  <- stacked {expert}: "...experts.{expert}.down_proj.weight" [H, I]
//   both:        "...experts.gate_up_proj" [E, 2I, H] <- stacked {expert}, concat(gate_proj,
//   up_proj) transpose:   a source stored as [in, out] for a block [out, in] reshape:     one
//   source stored in another shape with the block's element count
//
// Several rules may target the same parameter (for example experts stored
// fused or per expert): the first whose sources all exist is used. Every
// checkpoint tensor must be consumed by exactly one rule unless it matches
// an `ignored` pattern (std::regex, whole-key match).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "fsdp/checkpoint/hf_checkpoint.h"
#include "fsdp/flat_layout.h"

namespace fsdp::checkpoint {

struct SourcePattern {
  std::string key;
  // Stored with its last two dimensions swapped relative to its block.
  bool transposed = false;
};

struct ConversionRule {
  std::string parameter;
  std::vector<std::string> stacked;    // placeholder names, outermost first
  std::vector<SourcePattern> sources;  // concatenated in this order
  int concat_dim = 0;                  // within the block
  // Reshape: one source stored in this shape (with the block's element count);
  // empty for none. Row-major order is kept, so loading is a plain copy.
  std::vector<std::int64_t> stored_shape;
  // Each source's extent along concat_dim, when they differ (grouped-query
  // attention: q has more rows than k and v); empty: equal parts. Export
  // needs it to split the block; import checks every source against it.
  std::vector<std::int64_t> concat_sizes;

  // Builders for the common cases.
  static ConversionRule rename(std::string parameter, std::string key);
  static ConversionRule concatenate(std::string parameter, std::vector<std::string> keys,
                                    int dim = 0);
  static ConversionRule reshaped(std::string parameter, std::string key,
                                 std::vector<std::int64_t> stored_shape);
  bool reshapes() const { return !stored_shape.empty(); }
  ConversionRule& stack_over(std::string placeholder);     // appends an inner stacked placeholder
  ConversionRule& transposed();                            // every source is stored transposed
  ConversionRule& sized(std::vector<std::int64_t> sizes);  // sets concat_sizes
};

struct ConversionRules {
  std::vector<ConversionRule> rules;
  std::vector<std::string> ignored;  // regexes of checkpoint keys nothing needs
};

// One checkpoint tensor's place in a runtime parameter. Source elements, taken
// in "block order" (the source's own row-major order, or its transpose's when
// `transposed`), land at parameter flat indices
//     destination(k) = destination_base + (k / run) * destination_stride + k % run
// which is increasing in k: the elements landing in any parameter range come
// from one interval of block order. That is what lets every rank read only its own bytes.
struct ConversionPiece {
  std::string key;
  std::string parameter;
  LocatedTensor source;             // null file/entry in plans made without a checkpoint
  std::vector<std::int64_t> shape;  // the source's shape as stored
  bool transposed = false;
  std::int64_t numel = 0;
  std::int64_t run = 0;  // contiguous elements per step (> 0 unless numel == 0)
  std::int64_t destination_base = 0;
  std::int64_t destination_stride = 0;

  std::int64_t destination(std::int64_t k) const {
    return destination_base + (k / run) * destination_stride + k % run;
  }
  // The block-order interval [first, last) of elements landing in parameter range `range`.
  ElementRange block_interval(ElementRange range) const;
  // For a transposed piece: where block-order element k sits in the stored source.
  std::int64_t stored_index(std::int64_t k) const;
};

// The pieces of one runtime parameter, in increasing destination order.
struct ParameterPlan {
  std::string parameter;
  std::vector<ConversionPiece> pieces;
};

// Plans loading every parameter of `layouts` from `checkpoint` and checks
// that the pieces tile each parameter exactly. Strict: throws CheckpointError
//   - naming the parameter when no rule targets it;
//   - naming the missing key, the parameter, and the checkpoint source when a
//     rule's tensor is absent (with the placeholder values, e.g. "expert 7");
//   - naming both shapes (or dtypes) when a tensor does not fit its place;
//   - listing checkpoint tensors that no rule consumed and no `ignored`
//     pattern covers (with a hint when one looks like an extra layer or expert).
// The result has one plan per parameter, keyed by runtime name.
std::map<std::string, ParameterPlan> plan_import(const std::vector<const FlatLayout*>& layouts,
                                                 const HfCheckpoint& checkpoint,
                                                 const ConversionRules& rules);

// Plans writing every parameter of `layouts` back to checkpoint tensors (the
// inverse: one output tensor per piece, its shape as the rule's first
// matching alternative stores it). Throws CheckpointError naming a parameter
// no rule targets.
std::vector<ConversionPiece> plan_export(const std::vector<const FlatLayout*>& layouts,
                                         const ConversionRules& rules);

}  // namespace fsdp::checkpoint
