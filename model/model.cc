#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/ops.h"

namespace tierkv {

// Weights of one layer, packed for the kernels: q/k/v fused into one projection (rows q,
// then k, then v) and gate/up into another (rows gate, then up), so that each is a single
// Matmul. Fusing does not change any output element's arithmetic.
struct Model::Layer {
  std::vector<float> attn_norm;  // [hidden]
  std::vector<float> wqkv;       // [(num_heads + 2 * num_kv_heads) * head_dim][hidden]
  std::vector<float> bqkv;       // Same rows, or empty.
  std::vector<float> wo;         // [hidden][num_heads * head_dim]
  std::vector<float> bo;         // [hidden] or empty.
  std::vector<float> mlp_norm;   // [hidden]
  std::vector<float> w_gate_up;  // [2 * intermediate][hidden]
  std::vector<float> w_down;     // [hidden][intermediate]
};

namespace {

std::vector<float> Concat(std::initializer_list<HostTensor*> parts) {
  size_t n = 0;
  for (HostTensor* t : parts) n += t->data.size();
  std::vector<float> out;
  out.reserve(n);
  for (HostTensor* t : parts) {
    out.insert(out.end(), t->data.begin(), t->data.end());
    *t = HostTensor();  // Free as we go: weights are large.
  }
  return out;
}

absl::Status CheckOptions(const ModelOptions& options) {
  if (options.device != kernels::Device::kCpu) {
    return absl::UnimplementedError(absl::StrCat(
        "device ", std::string(kernels::DeviceName(options.device)),
        " is not built yet; the model runs on the CPU only"));
  }
  if (!kernels::ParseDTypeName(options.kv_dtype).has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv_dtype \"", options.kv_dtype, "\" is not one of fp32, bf16, fp16"));
  }
  if (options.prefill_chunk_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("prefill_chunk_tokens must be positive, got ",
                                                   options.prefill_chunk_tokens));
  }
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_threads must be >= 0, got ", options.num_threads));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckPrefillInput(const ModelConfig& config, const ModelSpec& spec,
                               std::span<const uint32_t> tokens, int kv_layers,
                               int kv_heads, int kv_head_dim) {
  if (tokens.empty()) {
    return absl::InvalidArgumentError("Prefill: no tokens (a prompt needs at least one)");
  }
  if (kv_layers != config.num_layers || kv_heads != config.num_kv_heads ||
      kv_head_dim != config.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Prefill: KV cache of ", kv_layers, " layers, ", kv_heads, " heads, ", kv_head_dim,
        " dims does not belong to model ", spec.model_id));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("Prefill: token ", i, " has id ", tokens[i],
                                                     ", beyond the vocabulary of ",
                                                     config.vocab_size));
    }
  }
  return absl::OkStatus();
}

ModelSpec ModelSpecFor(const ModelConfig& config, std::string model_id,
                       std::string weights_digest, std::string kv_dtype, uint32_t block_tokens) {
  ModelSpec spec;
  spec.model_id = std::move(model_id);
  spec.weights_digest = std::move(weights_digest);
  spec.num_layers = static_cast<uint32_t>(config.num_layers);
  spec.num_kv_heads = static_cast<uint32_t>(config.num_kv_heads);
  spec.head_dim = static_cast<uint32_t>(config.head_dim);
  spec.kv_dtype = std::move(kv_dtype);
  spec.block_tokens = block_tokens;
  spec.tp_rank = 0;
  spec.tp_size = 1;
  return spec;
}

Model::Model(const ModelConfig& config, ModelSpec spec, const ModelOptions& options)
    : config_(config),
      spec_(std::move(spec)),
      kv_dtype_(*kernels::ParseDTypeName(options.kv_dtype)),
      chunk_tokens_(options.prefill_chunk_tokens),
      rope_inv_freq_(config.RopeInvFreq()),
      sparse_plan_(options.sparse_plan) {
  if (options.num_threads > 0) {
    own_pool_ = std::make_unique<kernels::ThreadPool>(options.num_threads);
    pool_ = own_pool_.get();
  } else {
    pool_ = kernels::ThreadPool::Default();
  }
}

Model::~Model() = default;

absl::Status Model::SparseLayerAttention(kernels::AttentionParams ap, int layer,
                                         kernels::ThreadPool* pool) const {
  // A layer whose heads are all dense runs the dense kernel (with its transposed keys).
  if (!sparse_plan_->AnySparseHead(layer, ap.num_q_heads)) return kernels::Attention(ap, pool);
  ap.kt = nullptr;  // The sparse path reads keys row by row.
  ap.kt_blocks = 0;
  const kernels::SparseShape shape{ap.num_queries, ap.query_position};
  std::vector<kernels::SparseHeadIndex> indices(ap.num_q_heads);
  for (int h = 0; h < ap.num_q_heads; ++h) {
    TIERKV_ASSIGN_OR_RETURN(indices[h],
                            kernels::BuildIndex(ap, h, sparse_plan_->For(layer, h)));
    // An index that keeps nearly everything runs dense: it would only add its own cost.
    if (kernels::CoveredFraction(indices[h], shape) > sparse_plan_->max_coverage) {
      indices[h] = kernels::FullIndex(shape);
    }
  }
  return kernels::SparseAttention(ap, indices, pool);
}

absl::Status Model::Pack(ModelWeights w) {
  layers_.resize(w.layers.size());
  for (size_t i = 0; i < w.layers.size(); ++i) {
    LayerWeights& in = w.layers[i];
    Layer& out = layers_[i];
    out.attn_norm = std::move(in.input_layernorm.data);
    out.wqkv = Concat({&in.q_proj, &in.k_proj, &in.v_proj});
    if (config_.qkv_bias) out.bqkv = Concat({&in.q_bias, &in.k_bias, &in.v_bias});
    out.wo = std::move(in.o_proj.data);
    if (config_.o_bias) out.bo = std::move(in.o_bias.data);
    out.mlp_norm = std::move(in.post_attention_layernorm.data);
    out.w_gate_up = Concat({&in.gate_proj, &in.up_proj});
    out.w_down = std::move(in.down_proj.data);
  }
  embed_ = std::move(w.embed_tokens.data);
  norm_ = std::move(w.norm.data);
  if (!config_.tie_word_embeddings) lm_head_ = std::move(w.lm_head.data);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Model>> Model::Create(const ModelConfig& config,
                                                     ModelWeights weights, std::string model_id,
                                                     std::string weights_digest,
                                                     const ModelOptions& options) {
  TIERKV_RETURN_IF_ERROR(CheckOptions(options));
  TIERKV_RETURN_IF_ERROR(ValidateWeights(config, weights));
  ModelSpec spec = ModelSpecFor(config, std::move(model_id), std::move(weights_digest),
                                options.kv_dtype, options.block_tokens);
  TIERKV_RETURN_IF_ERROR(spec.Validate());
  std::unique_ptr<Model> model(new Model(config, std::move(spec), options));
  TIERKV_RETURN_IF_ERROR(model->Pack(std::move(weights)));
  return model;
}

absl::StatusOr<std::unique_ptr<Model>> Model::BuiltinTiny(const ModelOptions& options) {
  TIERKV_RETURN_IF_ERROR(CheckOptions(options));
  const ModelConfig config = BuiltinTinyConfig();
  kernels::ThreadPool pool_for_init(options.num_threads > 0 ? options.num_threads : 1);
  kernels::ThreadPool* init_pool =
      options.num_threads > 0 ? &pool_for_init : kernels::ThreadPool::Default();
  ModelWeights weights = SeededWeights(config, kBuiltinTinySeed, init_pool);
  return Create(config, std::move(weights),
                options.model_id.empty() ? std::string(kBuiltinTinyModelId) : options.model_id,
                absl::StrCat("seed:", kBuiltinTinySeed), options);
}

absl::StatusOr<std::unique_ptr<Model>> Model::LoadHf(const std::string& dir,
                                                     const ModelOptions& options) {
  TIERKV_RETURN_IF_ERROR(CheckOptions(options));
  TIERKV_ASSIGN_OR_RETURN(ModelConfig config, LoadHfConfig(dir));
  kernels::ThreadPool pool_for_init(options.num_threads > 0 ? options.num_threads : 1);
  kernels::ThreadPool* init_pool =
      options.num_threads > 0 ? &pool_for_init : kernels::ThreadPool::Default();
  TIERKV_ASSIGN_OR_RETURN(ModelWeights weights, LoadHfWeights(dir, config, init_pool));
  TIERKV_ASSIGN_OR_RETURN(std::string digest, HfWeightsDigest(dir, options.digest_mode));
  std::string model_id = options.model_id;
  if (model_id.empty()) {
    std::filesystem::path p(dir);
    while (!p.empty() && p.filename().empty()) p = p.parent_path();  // Trailing slashes.
    model_id = std::filesystem::absolute(p).lexically_normal().filename().string();
  }
  return Create(config, std::move(weights), std::move(model_id), std::move(digest), options);
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& name_or_dir,
                                                   const ModelOptions& options) {
  if (name_or_dir == kBuiltinTinyModelId) return BuiltinTiny(options);
  if (name_or_dir == kBuiltinLlama3_8BRandomId) {
    return absl::FailedPreconditionError(absl::StrCat(
        name_or_dir, " runs on the GPU only (its weights are generated there); use --device "
                     "cuda on a machine with an sm_90 GPU, or builtin:tiny on the CPU"));
  }
  if (name_or_dir.rfind("builtin:", 0) == 0) {
    return absl::NotFoundError(absl::StrCat("unknown built-in model \"", name_or_dir,
                                            "\"; the built-in models are builtin:tiny and ",
                                            std::string(kBuiltinLlama3_8BRandomId), " (GPU only)"));
  }
  return LoadHf(name_or_dir, options);
}

absl::StatusOr<ModelConfig> ModelConfigOf(const std::string& name_or_dir) {
  if (name_or_dir == kBuiltinTinyModelId) return BuiltinTinyConfig();
  if (name_or_dir == kBuiltinLlama3_8BRandomId) return Llama3_8BShapeConfig();
  if (name_or_dir.rfind("builtin:", 0) == 0) {
    return absl::NotFoundError(absl::StrCat("unknown built-in model \"", name_or_dir,
                                            "\"; the built-in models are builtin:tiny and ",
                                            std::string(kBuiltinLlama3_8BRandomId), " (GPU only)"));
  }
  return LoadHfConfig(name_or_dir);
}

KvCache Model::NewKvCache() const {
  return KvCache(static_cast<int>(config_.num_layers), static_cast<int>(config_.num_kv_heads),
                 static_cast<int>(config_.head_dim));
}

absl::StatusOr<std::vector<float>> Model::Prefill(std::span<const uint32_t> tokens,
                                                  KvCache* kv) const {
  return PrefillObserved(tokens, kv, nullptr);
}

absl::StatusOr<std::vector<float>> Model::PrefillObserved(std::span<const uint32_t> tokens,
                                                          KvCache* kv,
                                                          const AttentionObserver& observe) const {
  TIERKV_RETURN_IF_ERROR(CheckPrefillInput(config_, spec_, tokens, kv->num_layers(),
                                           kv->num_kv_heads(), kv->head_dim()));
  const int64_t start = kv->tokens();
  if (start + static_cast<int64_t>(tokens.size()) > config_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Prefill: ", start, " cached plus ", tokens.size(), " new tokens exceed the context of ",
        spec_.model_id, " (", config_.max_position_embeddings, " positions)"));
  }
  // One allocation for a long prompt; decode steps rely on the geometric growth of Resize.
  if (tokens.size() > 1) kv->Reserve(start + static_cast<int64_t>(tokens.size()));
  std::vector<float> logits(config_.vocab_size);
  for (size_t done = 0; done < tokens.size();) {
    const size_t n = std::min<size_t>(tokens.size() - done, chunk_tokens_);
    const bool last = done + n == tokens.size();
    absl::Status s =
        Forward(tokens.subspan(done, n), kv, last ? logits.data() : nullptr, observe);
    if (!s.ok()) {
      kv->Truncate(start);
      return s;
    }
    done += n;
  }
  return logits;
}

absl::StatusOr<std::vector<float>> Model::Decode(uint32_t token, KvCache* kv) const {
  return Prefill(std::span<const uint32_t>(&token, 1), kv);
}

absl::Status Model::Forward(std::span<const uint32_t> tokens, KvCache* kv, float* logits,
                            const AttentionObserver& observe) const {
  const int64_t t = static_cast<int64_t>(tokens.size());
  const int64_t p0 = kv->tokens();
  const int64_t hidden = config_.hidden_size;
  const int64_t inter = config_.intermediate_size;
  const int hq = static_cast<int>(config_.num_heads);
  const int hkv = static_cast<int>(config_.num_kv_heads);
  const int d = static_cast<int>(config_.head_dim);
  const int64_t q_dim = static_cast<int64_t>(hq) * d;
  const int64_t kv_dim = static_cast<int64_t>(hkv) * d;
  const int64_t qkv_dim = q_dim + 2 * kv_dim;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  kernels::ThreadPool* pool = pool_;

  std::vector<float> h(t * hidden), xn(t * hidden), qkv(t * qkv_dim), attn(t * q_dim),
      gu(t * 2 * inter), act(t * inter);
  std::vector<float> cos(t * d / 2), sin(t * d / 2);
  kernels::RopeCosSin(rope_inv_freq_, p0, t, cos.data(), sin.data());
  for (int64_t i = 0; i < t; ++i) {
    std::memcpy(h.data() + i * hidden, embed_.data() + tokens[i] * hidden, hidden * sizeof(float));
  }
  kv->Resize(p0 + t);

  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& w = layers_[l];
    TIERKV_RETURN_IF_ERROR(kernels::RmsNorm(
        {h.data(), hidden, w.attn_norm.data(), xn.data(), hidden, t, hidden, eps}, pool));
    TIERKV_RETURN_IF_ERROR(kernels::Matmul({xn.data(), hidden, w.wqkv.data(), hidden,
                                            w.bqkv.empty() ? nullptr : w.bqkv.data(), qkv.data(),
                                            qkv_dim, t, qkv_dim, hidden, false},
                                           pool));
    TIERKV_RETURN_IF_ERROR(
        kernels::ApplyRope({qkv.data(), qkv_dim, t, hq, d, cos.data(), sin.data()}, pool));
    TIERKV_RETURN_IF_ERROR(kernels::ApplyRope(
        {qkv.data() + q_dim, qkv_dim, t, hkv, d, cos.data(), sin.data()}, pool));
    if (kv_dtype_ != kernels::DType::kF32) {
      // KV as stored in kv_dtype: what a reader of this sequence's blocks will see.
      for (int64_t i = 0; i < t; ++i) {
        float* row = qkv.data() + i * qkv_dim + q_dim;
        for (int64_t j = 0; j < 2 * kv_dim; ++j) row[j] = kernels::RoundToDType(row[j], kv_dtype_);
      }
    }
    const int li = static_cast<int>(l);
    kv->WriteRows(li, p0, t, qkv.data() + q_dim, qkv_dim, qkv.data() + q_dim + kv_dim, qkv_dim);
    TIERKV_RETURN_IF_ERROR(kv->UpdateKeyBlocks(li, pool));

    kernels::AttentionParams ap;
    ap.q = qkv.data();
    ap.ldq = qkv_dim;
    ap.k = kv->k(li);
    ap.v = kv->v(li);
    ap.ldkv = kv_dim;
    ap.out = attn.data();
    ap.ldo = q_dim;
    ap.num_queries = t;
    ap.query_position = p0;
    ap.num_keys = p0 + t;
    ap.num_q_heads = hq;
    ap.num_kv_heads = hkv;
    ap.head_dim = d;
    ap.scale = 1.0f / std::sqrt(static_cast<float>(d));
    ap.sliding_window = config_.sliding_window;
    ap.kt = kv->key_blocks(li);
    ap.kt_blocks = kv->num_key_blocks(li);
    if (observe) observe(li, ap);
    if (sparse_plan_ != nullptr && config_.sliding_window == 0 &&
        ap.num_queries >= kernels::kSparseBlock && ap.num_keys >= sparse_plan_->min_tokens) {
      TIERKV_RETURN_IF_ERROR(SparseLayerAttention(ap, li, pool));
    } else {
      TIERKV_RETURN_IF_ERROR(kernels::Attention(ap, pool));
    }

    TIERKV_RETURN_IF_ERROR(kernels::Matmul({attn.data(), q_dim, w.wo.data(), q_dim,
                                            w.bo.empty() ? nullptr : w.bo.data(), h.data(), hidden,
                                            t, hidden, q_dim, /*accumulate=*/true},
                                           pool));
    TIERKV_RETURN_IF_ERROR(kernels::RmsNorm(
        {h.data(), hidden, w.mlp_norm.data(), xn.data(), hidden, t, hidden, eps}, pool));
    TIERKV_RETURN_IF_ERROR(kernels::Matmul({xn.data(), hidden, w.w_gate_up.data(), hidden, nullptr,
                                            gu.data(), 2 * inter, t, 2 * inter, hidden, false},
                                           pool));
    TIERKV_RETURN_IF_ERROR(
        kernels::SwiGlu({gu.data(), 2 * inter, act.data(), inter, t, inter}, pool));
    TIERKV_RETURN_IF_ERROR(kernels::Matmul({act.data(), inter, w.w_down.data(), inter, nullptr,
                                            h.data(), hidden, t, hidden, inter,
                                            /*accumulate=*/true},
                                           pool));
  }
  if (logits == nullptr) return absl::OkStatus();
  const float* last = h.data() + (t - 1) * hidden;
  TIERKV_RETURN_IF_ERROR(
      kernels::RmsNorm({last, hidden, norm_.data(), xn.data(), hidden, 1, hidden, eps}, pool));
  const std::vector<float>& head = lm_head_.empty() ? embed_ : lm_head_;
  return kernels::Matmul({xn.data(), hidden, head.data(), hidden, nullptr, logits,
                          config_.vocab_size, 1, config_.vocab_size, hidden, false},
                         pool);
}

absl::StatusOr<std::vector<uint32_t>> Generate(const Model& model,
                                               std::span<const uint32_t> prompt, KvCache* kv,
                                               const GenerateOptions& options) {
  TIERKV_RETURN_IF_ERROR(kernels::ValidateSamplingParams(options.sampling));
  std::vector<uint32_t> out;
  if (options.max_new_tokens <= 0) return out;
  TIERKV_ASSIGN_OR_RETURN(std::vector<float> logits, model.Prefill(prompt, kv));
  kernels::Sampler sampler(options.sampling);
  for (;;) {
    const uint32_t token = sampler.Next(logits);
    out.push_back(token);
    const bool stop = std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) !=
                      options.stop_tokens.end();
    if (stop || static_cast<int64_t>(out.size()) >= options.max_new_tokens) return out;
    TIERKV_ASSIGN_OR_RETURN(logits, model.Decode(token, kv));
  }
}

}  // namespace tierkv
