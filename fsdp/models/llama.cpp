#include "fsdp/models/llama.h"

#include <ATen/ATen.h>
#include <torch/version.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fsdp/models/rms_norm.h"
#include "fsdp/models/stack_slice.h"
#include "fsdp/models/swiglu.h"

// libtorch 2's at::scaled_dot_product_attention (DecoderBlock::attention).
#if defined(TORCH_VERSION_MAJOR) && TORCH_VERSION_MAJOR >= 2
#define FSDP_FUSED_ATTENTION 1
#else
#define FSDP_FUSED_ATTENTION 0
#endif

namespace fsdp::models {
namespace {

using stages::Layer;

class TokenEmbedding final : public Layer {
 public:
  explicit TokenEmbedding(const LlamaConfig& config) : config_(config) {}
  std::vector<ParameterSpec> parameter_specs() const override {
    return {{"embedding.weight",
             {config_.vocabulary, config_.hidden},
             ElementType::kFloat32,
             ParameterInit::normal(0, config_.init_std)}};
  }
  void bind(std::vector<at::Tensor> parameters) override { weight_ = parameters.at(0); }
  // input: token ids [batch, sequence] -> [batch, sequence, hidden]
  at::Tensor forward(const at::Tensor& tokens) override { return at::embedding(weight_, tokens); }
  stages::ActivationBytes activation_bytes(std::int64_t batch, std::int64_t sequence,
                                           std::int64_t element_size) const override {
    // The token ids (int64) are kept; the output is the first block's input.
    return {batch * sequence * 8, batch * sequence * config_.hidden * element_size};
  }

 private:
  LlamaConfig config_;
  at::Tensor weight_;
};

// RoPE inverse frequencies [head_size / 2], in double, with the config's scaling.
at::Tensor rope_inverse_frequencies(const LlamaConfig& config) {
  const std::int64_t head_size = config.head_size();
  at::Tensor inv_freq = 1.0 / at::pow(config.rope_theta, at::arange(0, head_size, 2, at::kDouble) /
                                                             static_cast<double>(head_size));
  if (config.rope_scaling.type == RopeScaling::Type::kLlama3) {
    const RopeScaling& scaling = config.rope_scaling;
    const double original = static_cast<double>(scaling.original_max_position);
    const double low_frequency_wavelength = original / scaling.low_frequency_factor;
    const double high_frequency_wavelength = original / scaling.high_frequency_factor;
    const at::Tensor wavelength = 2 * M_PI / inv_freq;
    const at::Tensor scaled =
        at::where(wavelength > low_frequency_wavelength, inv_freq / scaling.factor, inv_freq);
    const at::Tensor smooth = (original / wavelength - scaling.low_frequency_factor) /
                              (scaling.high_frequency_factor - scaling.low_frequency_factor);
    const at::Tensor smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled;
    const at::Tensor medium = wavelength.ge(high_frequency_wavelength)
                                  .logical_and(wavelength.le(low_frequency_wavelength));
    inv_freq = at::where(medium, smoothed, scaled);
  }
  return inv_freq;
}

// The RoPE cos/sin tables and the additive attention mask of one attention
// window, built once per model and shared by every block attending alike
// (they are non-persistent buffers: computed, never loaded), and converted to
// a device and dtype once, on first use, rather than in every forward. The
// mask is [max_sequence, max_sequence]: one per block would cost layers x T^2.
// Thread-safety: none (the conversion cache is filled from forward).
class PositionTables {
 public:
  PositionTables(const LlamaConfig& config, std::int64_t window) {
    const at::Tensor angles =
        at::outer(at::arange(config.max_sequence, at::kDouble), rope_inverse_frequencies(config));
    const at::Tensor doubled = at::cat({angles, angles}, -1).to(at::kFloat);
    cos_ = doubled.cos();
    sin_ = doubled.sin();
    // libtorch 2's fused attention takes full causal attention as a flag.
    if (FSDP_FUSED_ATTENTION && window == 0) return;
    // Masked: the future, and with a window w, everything w or more tokens back.
    const at::Tensor positions = at::arange(config.max_sequence, at::kLong);
    const at::Tensor distance = positions.unsqueeze(1) - positions.unsqueeze(0);  // query - key
    at::Tensor hidden_from_query = distance.lt(0);
    if (window > 0) hidden_from_query = hidden_from_query.logical_or(distance.ge(window));
    mask_ = at::zeros({config.max_sequence, config.max_sequence})
                .masked_fill(hidden_from_query, -std::numeric_limits<float>::infinity());
  }

  // [sequence, head] cos and sin and the [sequence, sequence] mask (undefined
  // when not needed), on `like`'s device and in its dtype.
  struct Tables {
    at::Tensor cos, sin, mask;
  };
  Tables for_input(const at::Tensor& like, std::int64_t sequence) {
    const Tables& full = converted(like.device(), like.scalar_type());
    return {full.cos.narrow(0, 0, sequence), full.sin.narrow(0, 0, sequence),
            full.mask.defined() ? full.mask.narrow(0, 0, sequence).narrow(1, 0, sequence)
                                : at::Tensor()};
  }

 private:
  struct Converted {
    c10::Device device;
    at::ScalarType dtype;
    Tables tables;
  };
  at::Tensor cos_, sin_, mask_;  // float32, on the CPU
  std::vector<Converted> converted_;

  const Tables& converted(c10::Device device, at::ScalarType dtype) {
    for (const Converted& entry : converted_) {
      if (entry.device == device && entry.dtype == dtype) return entry.tables;
    }
    const auto to = [&](const at::Tensor& t) { return t.defined() ? t.to(device, dtype) : t; };
    converted_.push_back({device, dtype, {to(cos_), to(sin_), to(mask_)}});
    return converted_.back().tables;
  }
};

// One PositionTables per attention window, made on first request.
class PositionTableSet {
 public:
  explicit PositionTableSet(const LlamaConfig& config) : config_(config) {}
  std::shared_ptr<PositionTables> for_window(std::int64_t window) {
    std::shared_ptr<PositionTables>& tables = by_window_[window];
    if (!tables) tables = std::make_shared<PositionTables>(config_, window);
    return tables;
  }

 private:
  const LlamaConfig& config_;
  std::map<std::int64_t, std::shared_ptr<PositionTables>> by_window_;
};

class DecoderBlock final : public Layer {
 public:
  // `prefix` names the parameters: "decoder.3." for a block of its own, "decoder." inside a stack.
  // `layer` is its index among the decoder layers (MoE or dense, attention window).
  // `tables` must be the set of the same config (shared by the model's blocks).
  DecoderBlock(const LlamaConfig& config, std::string prefix, std::int64_t layer,
               PositionTableSet& tables)
      : config_(config),
        prefix_(std::move(prefix)),
        moe_(config.is_moe_layer(layer)),
        head_size_(config.head_size()),
        kv_heads_(config.key_value_heads()),
        window_(config.attention_window(layer)),
        tables_(tables.for_window(window_)) {
    // Which optional parameters this block has, in parameter_specs() order.
    for (const auto& [role, spec] : roled_specs()) {
      (void)spec;
      roles_.push_back(role);
    }
  }

  std::vector<ParameterSpec> parameter_specs() const override {
    std::vector<ParameterSpec> specs;
    for (auto& [role, spec] : roled_specs()) specs.push_back(std::move(spec));
    return specs;
  }

  void bind(std::vector<at::Tensor> parameters) override {
    for (at::Tensor& tensor : bound_) tensor = at::Tensor();
    for (std::size_t i = 0; i < parameters.size(); ++i) {
      bound_[static_cast<std::size_t>(roles_.at(i))] = std::move(parameters[i]);
    }
  }

  stages::SideOutputs take_side_outputs() override { return std::exchange(side_, {}); }

  stages::ActivationBytes activation_bytes(std::int64_t batch, std::int64_t sequence,
                                           std::int64_t element_size) const override {
    // Per token, what autograd keeps of the code below: norms their input,
    // projections theirs (a norm's output; the attention's output), the
    // attention products the rotated queries and keys and the values, the
    // softmax its output (T per head and token, unless a fused kernel keeps
    // only a log-sum-exp per head and token), the SwiGLU its gate and up
    // halves (rms_norm, swiglu_down). The projection of q, k and v itself is
    // not kept: only views of it are, by nothing that saves them.
    const std::int64_t h = config_.hidden;
    const std::int64_t query = config_.heads * head_size_;
    const std::int64_t key_value = kv_heads_ * head_size_;
    // The two parts (forward_part) counted apart: the attention, the MLP.
    std::int64_t attention = 2 * h + (query + 2 * key_value) + query;
    if (kv_heads_ != config_.heads) attention += 2 * query;  // repeated keys and values
    const bool fused = FSDP_FUSED_ATTENTION && window_ == 0;
    const std::int64_t softmax = fused ? config_.heads : config_.heads * sequence;
    attention += softmax;
    // While a part runs, the scores exist beside the softmax for a moment.
    const std::int64_t scores = fused ? 0 : config_.heads * sequence;
    std::int64_t mlp = 2 * h;
    if (!moe_) {
      mlp += 2 * config_.intermediate;
    } else {
      const std::int64_t k = config_.experts_per_token;
      mlp += 3 * config_.experts + k * (3 * h + 2 * config_.experts_intermediate());
    }
    const std::int64_t tokens_bytes = batch * sequence * element_size;
    return {tokens_bytes * (attention + mlp), tokens_bytes * h,
            tokens_bytes * std::max(attention + scores, mlp)};
  }

  at::Tensor forward(const at::Tensor& x) override { return mlp_part(attention_part(x)); }

  // Part 0, the attention with its residual; part 1, the MLP (or the
  // experts) with its residual. The MLP part sets the side outputs.
  std::size_t forward_parts() const override { return 2; }
  at::Tensor forward_part(std::size_t part, const at::Tensor& input) override {
    if (part > 1) {
      throw std::out_of_range(prefix_ + "forward_part: part " + std::to_string(part) +
                              " of a block of 2 parts");
    }
    return part == 0 ? attention_part(input) : mlp_part(input);
  }

 private:
  at::Tensor attention_part(const at::Tensor& x) {
    const std::int64_t batch = x.size(0);
    const std::int64_t sequence = x.size(1);
    if (sequence > config_.max_sequence) {
      throw std::invalid_argument(prefix_ + "attention: sequence of " + std::to_string(sequence) +
                                  " tokens is longer than max_sequence " +
                                  std::to_string(config_.max_sequence));
    }
    const std::int64_t heads = config_.heads;
    const std::int64_t query_width = heads * head_size_;
    const std::int64_t key_value_width = kv_heads_ * head_size_;

    // Attention: q [batch, heads, sequence, head], k and v [batch, kv_heads, sequence, head].
    const at::Tensor qkv = at::linear(rms_norm(x, get(Role::kAttentionNorm), config_.rms_epsilon),
                                      get(Role::kQkvWeight), get(Role::kQkvBias));
    const std::vector<at::Tensor> parts =
        qkv.split_with_sizes({query_width, key_value_width, key_value_width}, -1);
    at::Tensor q = parts[0].view({batch, sequence, heads, head_size_});
    at::Tensor k = parts[1].view({batch, sequence, kv_heads_, head_size_});
    const at::Tensor v = parts[2].view({batch, sequence, kv_heads_, head_size_}).transpose(1, 2);
    if (config_.qk_norm) {
      q = rms_norm(q, get(Role::kQueryNorm), config_.rms_epsilon);
      k = rms_norm(k, get(Role::kKeyNorm), config_.rms_epsilon);
    }
    // Tables and mask on the activations' device, in their dtype (bfloat16 under mixed precision).
    const PositionTables::Tables tables = tables_->for_input(x, sequence);
    q = rotate(q.transpose(1, 2), tables.cos, tables.sin);
    k = rotate(k.transpose(1, 2), tables.cos, tables.sin);
    // Grouped-query attention: key/value head j serves query heads
    // j * group .. (j + 1) * group - 1, as transformers' repeat_kv lays them out.
    const std::int64_t group = heads / kv_heads_;
    const at::Tensor keys = group == 1 ? k : k.repeat_interleave(group, 1);
    const at::Tensor values = group == 1 ? v : v.repeat_interleave(group, 1);
    const at::Tensor attended = attention(q, keys, values, tables.mask)
                                    .transpose(1, 2)
                                    .reshape({batch, sequence, query_width});
    return x + at::linear(attended, get(Role::kOutputWeight), get(Role::kOutputBias));
  }

  at::Tensor mlp_part(const at::Tensor& after_attention) {
    const at::Tensor normalized =
        rms_norm(after_attention, get(Role::kMlpNorm), config_.rms_epsilon);
    if (!moe_) {
      return after_attention + swiglu(normalized, get(Role::kGateUpWeight), get(Role::kDownWeight),
                                      get(Role::kGateUpBias), get(Role::kDownBias));
    }
    return after_attention + mixture_of_experts(normalized);
  }

  enum class Role {
    kAttentionNorm,
    kQkvWeight,
    kQkvBias,
    kQueryNorm,
    kKeyNorm,
    kOutputWeight,
    kOutputBias,
    kMlpNorm,
    kGateUpWeight,
    kGateUpBias,
    kDownWeight,
    kDownBias,
    kRouter,
    kExpertsGateUp,
    kExpertsDown,
    kCount
  };

  // The parameters this block declares, each with the role forward() uses it in.
  std::vector<std::pair<Role, ParameterSpec>> roled_specs() const {
    const auto normal = ParameterInit::normal(0, config_.init_std);
    const auto ones = ParameterInit::constant(1.0);
    const auto zeros = ParameterInit::constant(0.0);
    const std::int64_t h = config_.hidden;
    const std::int64_t qkv_rows = (config_.heads + 2 * kv_heads_) * head_size_;
    const std::int64_t attended = config_.heads * head_size_;
    std::vector<std::pair<Role, ParameterSpec>> specs;
    const auto add = [&](Role role, std::string name, std::vector<std::int64_t> shape,
                         ParameterInit init) {
      specs.push_back({role, {prefix_ + name, std::move(shape), ElementType::kFloat32, init}});
    };
    add(Role::kAttentionNorm, "attention_norm.weight", {h}, ones);
    add(Role::kQkvWeight, "attention.qkv.weight", {qkv_rows, h}, normal);
    if (config_.qkv_bias) add(Role::kQkvBias, "attention.qkv.bias", {qkv_rows}, zeros);
    if (config_.qk_norm) {
      add(Role::kQueryNorm, "attention.q_norm.weight", {head_size_}, ones);
      add(Role::kKeyNorm, "attention.k_norm.weight", {head_size_}, ones);
    }
    add(Role::kOutputWeight, "attention.dense.weight", {h, attended}, normal);
    if (config_.output_bias) add(Role::kOutputBias, "attention.dense.bias", {h}, zeros);
    add(Role::kMlpNorm, "mlp_norm.weight", {h}, ones);
    if (!moe_) {
      const std::int64_t i = config_.intermediate;
      add(Role::kGateUpWeight, "mlp.gate_up.weight", {2 * i, h}, normal);
      if (config_.mlp_bias) add(Role::kGateUpBias, "mlp.gate_up.bias", {2 * i}, zeros);
      add(Role::kDownWeight, "mlp.down.weight", {h, i}, normal);
      if (config_.mlp_bias) add(Role::kDownBias, "mlp.down.bias", {h}, zeros);
    } else {
      const std::int64_t e = config_.experts;
      const std::int64_t i = config_.experts_intermediate();
      add(Role::kRouter, "mlp.router.weight", {e, h}, normal);
      add(Role::kExpertsGateUp, "mlp.experts.gate_up_proj", {e, 2 * i, h}, normal);
      add(Role::kExpertsDown, "mlp.experts.down_proj", {e, h, i}, normal);
    }
    return specs;
  }

  // The bound parameter of `role`; an undefined tensor for an absent optional one.
  const at::Tensor& get(Role role) const { return bound_[static_cast<std::size_t>(role)]; }

  // softmax(q k^T / sqrt(head) + mask) v. libtorch 2 has a fused kernel
  // (flash attention on CPU and GPU) that never holds the T x T scores; 1.13
  // has only a private math version that does, so we spell it out there.
  at::Tensor attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                       const at::Tensor& mask) const {
#if FSDP_FUSED_ATTENTION
    // Without a window the mask is the causal one, which is_causal says
    // without a tensor (and lets the kernel skip the masked blocks).
    if (window_ == 0) {
      return at::scaled_dot_product_attention(q, keys, values, {}, 0.0, /*is_causal=*/true);
    }
    return at::scaled_dot_product_attention(q, keys, values, mask);
#else
    // Scaled and masked in place, and dropped once the softmax has them: the
    // same operations in the same order as `q k^T / sqrt(d) + mask`, with one
    // batch x heads x T x T tensor alive at a time where that expression's
    // temporaries were three (under checkpointing, one layer's attention sets
    // the step's peak). matmul's backward needs its inputs, not its output.
    at::Tensor scores = at::matmul(q, keys.transpose(-2, -1));
    scores.div_(std::sqrt(static_cast<double>(head_size_))).add_(mask);
    const at::Tensor weights = at::softmax(scores, -1);
    scores.reset();
    return at::matmul(weights, values);
#endif
  }

  // down(silu(gate) * up), with gate and up the two halves of x @ gate_up^T.
  static at::Tensor swiglu(const at::Tensor& x, const at::Tensor& gate_up, const at::Tensor& down,
                           const at::Tensor& gate_up_bias = {}, const at::Tensor& down_bias = {}) {
    return swiglu_down(at::linear(x, gate_up, gate_up_bias), down, down_bias);
  }

  // Top-k routing over fused experts. The (token, expert) choices are sorted
  // by expert once, so each expert runs on one contiguous slice of the
  // gathered tokens, and the outputs, weighted by the token's router
  // probability (renormalised over the top k when the config says so), are
  // added back with one index_add: one host sync per layer (the slice sizes)
  // instead of one per expert. Differentiable end to end. On the CPU the sum
  // per token runs in expert order, as a loop over experts would add it.
  at::Tensor mixture_of_experts(const at::Tensor& x) {
    const at::Tensor& gate_up = get(Role::kExpertsGateUp);  // [E, 2I, H]
    const at::Tensor& down = get(Role::kExpertsDown);       // [E, H, I]
    const at::Tensor tokens = x.reshape({-1, config_.hidden});
    const at::Tensor logits = at::linear(tokens, get(Role::kRouter));
    const at::Tensor probabilities = at::softmax(logits, -1);
    const auto [top_probabilities, top_experts] = probabilities.topk(config_.experts_per_token, -1);
    record_routing(logits, probabilities, top_experts, x.size(0));
    const at::Tensor weights = config_.normalize_top_k
                                   ? top_probabilities / top_probabilities.sum(-1, true)
                                   : top_probabilities;
    const at::Tensor choices = top_experts.reshape({-1});  // [tokens * k], token-major
    const at::Tensor order =
        std::get<1>(choices.sort(c10::optional<bool>(/*stable=*/true), /*dim=*/0));
    const at::Tensor token_index = order.div(config_.experts_per_token, "floor");
    const at::Tensor counts = at::bincount(choices, {}, config_.experts).cpu();
    const at::Tensor routed = tokens.index_select(0, token_index);
    const at::Tensor routed_weight = weights.reshape({-1}).index_select(0, order).unsqueeze(-1);
    std::vector<at::Tensor> outputs;
    std::int64_t start = 0;
    const auto* count = counts.data_ptr<std::int64_t>();
    for (std::int64_t expert = 0; expert < config_.experts; ++expert) {
      if (count[expert] == 0) continue;
      outputs.push_back(
          swiglu(routed.narrow(0, start, count[expert]), gate_up[expert], down[expert]));
      start += count[expert];
    }
    const at::Tensor output =
        at::zeros_like(tokens).index_add(0, token_index, at::cat(outputs) * routed_weight);
    return output.view(x.sizes());
  }

  // The tokens per expert and the router losses (LlamaConfig's
  // router_*_coefficient), per sequence: `logits` and `probabilities` are
  // [sequences * T, E], `top_experts` [sequences * T, k].
  void record_routing(const at::Tensor& logits, const at::Tensor& probabilities,
                      const at::Tensor& top_experts, std::int64_t sequences) {
    const std::int64_t experts = config_.experts;
    // [sequences, T, E]: 1 where the token goes to the expert (top-k experts are distinct).
    const at::Tensor routed = at::zeros({top_experts.size(0), experts}, top_experts.options())
                                  .scatter_(1, top_experts, 1)
                                  .view({sequences, -1, experts});
    const at::Tensor per_sequence = routed.sum(1);  // [sequences, E]
    side_.expert_tokens = per_sequence.sum(0);
    at::Tensor loss;
    const auto add = [&loss](const at::Tensor& term) {
      loss = loss.defined() ? loss + term : term;
    };
    // In float32 at least: bfloat16 means and logsumexp squares are coarse.
    const auto precision = at::promote_types(logits.scalar_type(), at::kFloat);
    if (config_.router_aux_loss_coefficient != 0) {
      const auto length = static_cast<double>(routed.size(1));
      const at::Tensor fraction = per_sequence.to(precision) / length;
      const at::Tensor mean_probability =
          probabilities.to(precision).view({sequences, -1, experts}).mean(1);
      add((fraction * mean_probability).sum(-1).mean() *
          (static_cast<double>(experts) * config_.router_aux_loss_coefficient));
    }
    if (config_.router_z_loss_coefficient != 0) {
      add(at::logsumexp(logits.to(precision), -1).square().mean() *
          config_.router_z_loss_coefficient);
    }
    side_.auxiliary_loss = loss;
  }

  // Rotary embedding, "rotate half" convention: x * cos + rotate_half(x) * sin.
  static at::Tensor rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    const std::vector<at::Tensor> halves = x.chunk(2, -1);
    return x * cos + at::cat({-halves[1], halves[0]}, -1) * sin;
  }

  LlamaConfig config_;
  std::string prefix_;
  bool moe_;
  std::int64_t head_size_;
  std::int64_t kv_heads_;
  std::int64_t window_ = 0;  // attention window; 0: full causal attention
  std::shared_ptr<PositionTables> tables_;
  std::vector<Role> roles_;
  std::array<at::Tensor, static_cast<std::size_t>(Role::kCount)> bound_;
  stages::SideOutputs side_;  // of the last forward, until taken
};

// Every decoder block's parameters stacked along a leading [layers] dimension;
// block l computes with slice l of each.
class StackedDecoder final : public Layer {
 public:
  StackedDecoder(const LlamaConfig& config, PositionTableSet& tables) {
    for (std::int64_t l = 0; l < config.layers; ++l) {
      blocks_.push_back(std::make_unique<DecoderBlock>(config, "decoder.", l, tables));
    }
  }
  std::vector<ParameterSpec> parameter_specs() const override {
    std::vector<ParameterSpec> specs = blocks_.front()->parameter_specs();
    for (ParameterSpec& spec : specs) {
      spec.shape.insert(spec.shape.begin(), static_cast<std::int64_t>(blocks_.size()));
    }
    return specs;
  }
  void bind(std::vector<at::Tensor> parameters) override { stacked_ = std::move(parameters); }
  at::Tensor forward(const at::Tensor& x) override {
    side_ = {};
    std::vector<at::Tensor> block_tokens;
    at::Tensor activation = x;
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      bind_block(l);
      activation = blocks_[l]->forward(activation);
      stages::SideOutputs block = blocks_[l]->take_side_outputs();
      if (block.auxiliary_loss.defined()) {
        side_.auxiliary_loss = side_.auxiliary_loss.defined()
                                   ? side_.auxiliary_loss + block.auxiliary_loss
                                   : block.auxiliary_loss;
      }
      if (block.expert_tokens.defined()) block_tokens.push_back(block.expert_tokens);
    }
    if (!block_tokens.empty()) side_.expert_tokens = at::stack(block_tokens);
    return activation;
  }

  // Every block's parts in turn (block l's part q is part l * 2 + q), so that
  // activation checkpointing recomputes one block's attention or MLP at a
  // time, as it does for unstacked blocks, rather than the whole stack.
  std::size_t forward_parts() const override { return blocks_.size() * kBlockParts; }
  at::Tensor forward_part(std::size_t part, const at::Tensor& input) override {
    if (part >= forward_parts()) {
      throw std::out_of_range("decoder: forward_part: part " + std::to_string(part) +
                              " of a stack of " + std::to_string(forward_parts()) + " parts");
    }
    const std::size_t l = part / kBlockParts;
    bind_block(l);
    const at::Tensor output = blocks_[l]->forward_part(part % kBlockParts, input);
    side_ = blocks_[l]->take_side_outputs();
    if (side_.expert_tokens.defined()) {
      // The stack reports [blocks, experts]: this block's row, zeros elsewhere
      // (the model adds the parts' counts up).
      at::Tensor rows =
          at::zeros({static_cast<std::int64_t>(blocks_.size()), side_.expert_tokens.size(0)},
                    side_.expert_tokens.options());
      rows.select(0, static_cast<std::int64_t>(l)).copy_(side_.expert_tokens);
      side_.expert_tokens = rows;
    }
    return output;
  }
  stages::SideOutputs take_side_outputs() override { return std::exchange(side_, {}); }
  stages::ActivationBytes activation_bytes(std::int64_t batch, std::int64_t sequence,
                                           std::int64_t element_size) const override {
    stages::ActivationBytes total;
    for (const auto& block : blocks_) {
      const stages::ActivationBytes one = block->activation_bytes(batch, sequence, element_size);
      total.saved += one.saved;
      total.output = one.output;
      total.largest_part = std::max(total.largest_part, one.largest_part);
      total.backward_window = std::max(total.backward_window, one.saved);
    }
    return total;
  }

 private:
  static constexpr std::size_t kBlockParts = 2;  // DecoderBlock::forward_parts()

  // Binds block l to slice l of every stacked parameter. The slices are taken
  // here, inside the graph of the forward that uses them (or the recompute of
  // a checkpointed part), so that autograd routes the block's gradients into
  // its slice of the stack's gradient, directly (stack_slice).
  void bind_block(std::size_t l) {
    std::vector<at::Tensor> slices;
    for (const at::Tensor& stacked : stacked_) {
      slices.push_back(stack_slice(stacked, static_cast<std::int64_t>(l)));
    }
    blocks_[l]->bind(std::move(slices));
  }

  std::vector<std::unique_ptr<DecoderBlock>> blocks_;
  std::vector<at::Tensor> stacked_;
  stages::SideOutputs side_;
};

class OutputHead final : public Layer {
 public:
  explicit OutputHead(const LlamaConfig& config) : config_(config) {}
  std::vector<ParameterSpec> parameter_specs() const override {
    return {{"final_norm.weight",
             {config_.hidden},
             ElementType::kFloat32,
             ParameterInit::constant(1.0)},
            {config_.tie_embeddings ? "embedding.weight" : "head.weight",
             {config_.vocabulary, config_.hidden},
             ElementType::kFloat32,
             ParameterInit::normal(0, config_.init_std)}};
  }
  void bind(std::vector<at::Tensor> parameters) override { parameters_ = std::move(parameters); }
  stages::ActivationBytes activation_bytes(std::int64_t batch, std::int64_t sequence,
                                           std::int64_t element_size) const override {
    // The norm's input and output, and the logits, which the loss keeps in
    // float32 (its log-softmax) besides the logits themselves.
    const std::int64_t tokens = batch * sequence;
    return {tokens * (2 * config_.hidden * element_size + config_.vocabulary * 4),
            tokens * config_.vocabulary * element_size};
  }
  // -> logits [batch, sequence, vocabulary]
  at::Tensor forward(const at::Tensor& x) override {
    return at::linear(rms_norm(x, parameters_.at(0), config_.rms_epsilon), parameters_.at(1));
  }

 private:
  LlamaConfig config_;
  std::vector<at::Tensor> parameters_;
};

}  // namespace

bool LlamaConfig::is_moe_layer(std::int64_t layer) const {
  return experts > 0 &&
         std::find(dense_layers.begin(), dense_layers.end(), layer) == dense_layers.end();
}

std::int64_t LlamaConfig::attention_window(std::int64_t layer) const {
  if (sliding_window <= 0) return 0;
  if (sliding_layers.empty()) return sliding_window;
  return sliding_layers.at(static_cast<std::size_t>(layer)) ? sliding_window : 0;
}

namespace {

void check_config(const LlamaConfig& config) {
  const auto fail = [](const std::string& message) {
    throw std::invalid_argument("llama config: " + message);
  };
  if (config.heads < 1 || config.key_value_heads() < 1 || config.heads % config.key_value_heads()) {
    fail("heads " + std::to_string(config.heads) + " must be a positive multiple of kv_heads " +
         std::to_string(config.key_value_heads()));
  }
  if (config.head_dim == 0 && config.hidden % config.heads != 0) {
    fail("hidden size " + std::to_string(config.hidden) + " is not a multiple of heads " +
         std::to_string(config.heads) + " (and no head_dim is given)");
  }
  if (config.head_size() < 2 || config.head_size() % 2 != 0) {
    fail("head size " + std::to_string(config.head_size()) +
         " must be even (rotary embeddings rotate pairs)");
  }
  for (const std::int64_t layer : config.dense_layers) {
    if (layer < 0 || layer >= config.layers) {
      fail("dense layer " + std::to_string(layer) + " is not one of the " +
           std::to_string(config.layers) + " decoder layers");
    }
  }
  if (!config.sliding_layers.empty() &&
      static_cast<std::int64_t>(config.sliding_layers.size()) != config.layers) {
    fail(std::to_string(config.sliding_layers.size()) + " sliding-window layer flags for " +
         std::to_string(config.layers) + " layers");
  }
  if (config.stacked_layers) {
    if (config.layers < 1) fail("stacked_layers needs at least one decoder layer");
    for (std::int64_t l = 1; l < config.layers; ++l) {
      if (config.is_moe_layer(l) != config.is_moe_layer(0) ||
          config.attention_window(l) != config.attention_window(0)) {
        fail("stacked_layers needs every decoder layer alike, but layer " + std::to_string(l) +
             " differs from layer 0 (dense/MoE or attention window)");
      }
    }
  }
}

}  // namespace

std::vector<std::unique_ptr<Layer>> build_llama_layers(const LlamaConfig& config) {
  check_config(config);
  std::vector<std::unique_ptr<Layer>> layers;
  layers.push_back(std::make_unique<TokenEmbedding>(config));
  PositionTableSet tables(config);
  if (config.stacked_layers) {
    layers.push_back(std::make_unique<StackedDecoder>(config, tables));
  } else {
    for (std::int64_t i = 0; i < config.layers; ++i) {
      layers.push_back(
          std::make_unique<DecoderBlock>(config, "decoder." + std::to_string(i) + ".", i, tables));
    }
  }
  layers.push_back(std::make_unique<OutputHead>(config));
  return layers;
}

}  // namespace fsdp::models
