#include "models/llama.h"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace fsdp::models {
namespace {

using stages::Layer;

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double epsilon) {
  return x * at::rsqrt(x.square().mean({-1}, /*keepdim=*/true) + epsilon) * weight;
}

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

 private:
  LlamaConfig config_;
  at::Tensor weight_;
};

class DecoderBlock final : public Layer {
 public:
  // `prefix` names the parameters: "decoder.3." for a block of its own, "decoder." inside a stack.
  DecoderBlock(const LlamaConfig& config, std::string prefix)
      : config_(config), prefix_(std::move(prefix)) {
    const std::int64_t head_size = config.hidden / config.heads;
    // Non-persistent buffers, computed here as real tensors (seed 001's RoPE
    // inv_freq lost on the meta device cannot happen: they are not parameters).
    const at::Tensor inv_freq =
        1.0 / at::pow(config.rope_theta,
                      at::arange(0, head_size, 2, at::kDouble) / static_cast<double>(head_size));
    const at::Tensor angles = at::outer(at::arange(config.max_sequence, at::kDouble), inv_freq);
    const at::Tensor doubled = at::cat({angles, angles}, -1).to(at::kFloat);
    cos_ = doubled.cos();
    sin_ = doubled.sin();
    causal_mask_ = at::full({config.max_sequence, config.max_sequence},
                            -std::numeric_limits<float>::infinity())
                       .triu(1);
  }

  std::vector<ParameterSpec> parameter_specs() const override {
    const auto normal = ParameterInit::normal(0, config_.init_std);
    const auto ones = ParameterInit::constant(1.0);
    const std::int64_t h = config_.hidden;
    const std::int64_t i = config_.intermediate;
    std::vector<ParameterSpec> specs = {
        {prefix_ + "attention_norm.weight", {h}, ElementType::kFloat32, ones},
        {prefix_ + "attention.qkv.weight", {3 * h, h}, ElementType::kFloat32, normal},
        {prefix_ + "attention.dense.weight", {h, h}, ElementType::kFloat32, normal},
        {prefix_ + "mlp_norm.weight", {h}, ElementType::kFloat32, ones}};
    if (config_.experts == 0) {
      specs.push_back({prefix_ + "mlp.gate_up.weight", {2 * i, h}, ElementType::kFloat32, normal});
      specs.push_back({prefix_ + "mlp.down.weight", {h, i}, ElementType::kFloat32, normal});
    } else {
      const std::int64_t e = config_.experts;
      specs.push_back({prefix_ + "mlp.router.weight", {e, h}, ElementType::kFloat32, normal});
      specs.push_back(
          {prefix_ + "mlp.experts.gate_up_proj", {e, 2 * i, h}, ElementType::kFloat32, normal});
      specs.push_back(
          {prefix_ + "mlp.experts.down_proj", {e, h, i}, ElementType::kFloat32, normal});
    }
    return specs;
  }

  void bind(std::vector<at::Tensor> parameters) override { parameters_ = std::move(parameters); }

  at::Tensor forward(const at::Tensor& x) override {
    const at::Tensor& attention_norm = parameters_.at(0);
    const at::Tensor& qkv_weight = parameters_.at(1);
    const at::Tensor& dense_weight = parameters_.at(2);
    const at::Tensor& mlp_norm = parameters_.at(3);
    const std::int64_t batch = x.size(0);
    const std::int64_t sequence = x.size(1);
    const std::int64_t head_size = config_.hidden / config_.heads;
    if (sequence > config_.max_sequence) {
      throw std::invalid_argument(prefix_ + "attention: sequence of " + std::to_string(sequence) +
                                  " tokens is longer than max_sequence " +
                                  std::to_string(config_.max_sequence));
    }

    // Attention: [batch, sequence, 3, heads, head] -> q, k, v of [batch, heads, sequence, head].
    const at::Tensor qkv = at::linear(rms_norm(x, attention_norm, config_.rms_epsilon), qkv_weight)
                               .view({batch, sequence, 3, config_.heads, head_size})
                               .permute({2, 0, 3, 1, 4});
    // Tables and mask on the activations' device, in their dtype (bfloat16 under mixed precision).
    const at::Tensor cos = cos_.narrow(0, 0, sequence).to(x.device(), x.scalar_type());
    const at::Tensor sin = sin_.narrow(0, 0, sequence).to(x.device(), x.scalar_type());
    const at::Tensor q = rotate(qkv[0], cos, sin);
    const at::Tensor k = rotate(qkv[1], cos, sin);
    const at::Tensor scores =
        at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(head_size)) +
        causal_mask_.narrow(0, 0, sequence).narrow(1, 0, sequence).to(x.device(), x.scalar_type());
    const at::Tensor attended = at::matmul(at::softmax(scores, -1), qkv[2])
                                    .transpose(1, 2)
                                    .reshape({batch, sequence, config_.hidden});
    const at::Tensor after_attention = x + at::linear(attended, dense_weight);

    const at::Tensor normalized = rms_norm(after_attention, mlp_norm, config_.rms_epsilon);
    if (config_.experts == 0) {
      return after_attention + swiglu(normalized, parameters_.at(4), parameters_.at(5));
    }
    return after_attention + mixture_of_experts(normalized);
  }

 private:
  // down(silu(gate) * up), with gate and up the two halves of x @ gate_up^T.
  static at::Tensor swiglu(const at::Tensor& x, const at::Tensor& gate_up, const at::Tensor& down) {
    const std::vector<at::Tensor> halves = at::linear(x, gate_up).chunk(2, -1);
    return at::linear(at::silu(halves[0]) * halves[1], down);
  }

  // Top-k routing over fused experts. Each expert runs on the tokens routed to
  // it (gathered by index), and its outputs are added back weighted by the
  // token's renormalised router probability: differentiable end to end.
  at::Tensor mixture_of_experts(const at::Tensor& x) const {
    const at::Tensor& router = parameters_.at(4);
    const at::Tensor& gate_up = parameters_.at(5);  // [E, 2I, H]
    const at::Tensor& down = parameters_.at(6);     // [E, H, I]
    const at::Tensor tokens = x.reshape({-1, config_.hidden});
    const at::Tensor probabilities = at::softmax(at::linear(tokens, router), -1);
    const auto [top_probabilities, top_experts] = probabilities.topk(config_.experts_per_token, -1);
    const at::Tensor weights = top_probabilities / top_probabilities.sum(-1, true);
    at::Tensor output = at::zeros_like(tokens);
    for (std::int64_t expert = 0; expert < config_.experts; ++expert) {
      const at::Tensor routed = top_experts.eq(expert);  // [tokens, k]
      const at::Tensor token_index = routed.any(-1).nonzero().reshape({-1});
      if (token_index.numel() == 0) continue;
      const at::Tensor token_weight =
          (weights * routed).sum(-1).index_select(0, token_index).unsqueeze(-1);
      const at::Tensor expert_output =
          swiglu(tokens.index_select(0, token_index), gate_up[expert], down[expert]);
      output = output.index_add(0, token_index, expert_output * token_weight);
    }
    return output.view(x.sizes());
  }

  // Rotary embedding, "rotate half" convention: x * cos + rotate_half(x) * sin.
  static at::Tensor rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    const std::vector<at::Tensor> halves = x.chunk(2, -1);
    return x * cos + at::cat({-halves[1], halves[0]}, -1) * sin;
  }

  LlamaConfig config_;
  std::string prefix_;
  at::Tensor cos_;
  at::Tensor sin_;
  at::Tensor causal_mask_;
  std::vector<at::Tensor> parameters_;
};

// Every decoder block's parameters stacked along a leading [layers] dimension;
// block l computes with slice l of each.
class StackedDecoder final : public Layer {
 public:
  explicit StackedDecoder(const LlamaConfig& config) {
    for (std::int64_t l = 0; l < config.layers; ++l) {
      blocks_.push_back(std::make_unique<DecoderBlock>(config, "decoder."));
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
    at::Tensor activation = x;
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      // Slices are taken here, inside the graph of this forward, so that
      // autograd routes each block's gradients into its slice of the stack.
      std::vector<at::Tensor> slices;
      for (const at::Tensor& stacked : stacked_) {
        slices.push_back(stacked.select(0, static_cast<std::int64_t>(l)));
      }
      blocks_[l]->bind(std::move(slices));
      activation = blocks_[l]->forward(activation);
    }
    return activation;
  }

 private:
  std::vector<std::unique_ptr<DecoderBlock>> blocks_;
  std::vector<at::Tensor> stacked_;
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
  // -> logits [batch, sequence, vocabulary]
  at::Tensor forward(const at::Tensor& x) override {
    return at::linear(rms_norm(x, parameters_.at(0), config_.rms_epsilon), parameters_.at(1));
  }

 private:
  LlamaConfig config_;
  std::vector<at::Tensor> parameters_;
};

}  // namespace

std::vector<std::unique_ptr<Layer>> build_llama_layers(const LlamaConfig& config) {
  if (config.heads < 1 || config.hidden % (2 * config.heads) != 0) {
    throw std::invalid_argument("llama: hidden size " + std::to_string(config.hidden) +
                                " must be a multiple of 2 x heads (" +
                                std::to_string(config.heads) + ") for rotary embeddings");
  }
  if (config.stacked_layers && config.layers < 1) {
    throw std::invalid_argument("llama: stacked_layers needs at least one decoder layer");
  }
  std::vector<std::unique_ptr<Layer>> layers;
  layers.push_back(std::make_unique<TokenEmbedding>(config));
  if (config.stacked_layers) {
    layers.push_back(std::make_unique<StackedDecoder>(config));
  } else {
    for (std::int64_t i = 0; i < config.layers; ++i) {
      layers.push_back(
          std::make_unique<DecoderBlock>(config, "decoder." + std::to_string(i) + "."));
    }
  }
  layers.push_back(std::make_unique<OutputHead>(config));
  return layers;
}

}  // namespace fsdp::models
