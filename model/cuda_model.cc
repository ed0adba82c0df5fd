#include "model/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/dtype.h"
#include "kernels/ops.h"
#include "kernels/random.h"
#include "kernels/thread_pool.h"
#include "model/model.h"

namespace tierkv {

namespace cu = kernels::cuda;
using cu::Bf16;
using cu::DeviceBuffer;

// Weights of one layer on the device, fused like the CPU model's: q/k/v in one projection
// (rows q, k, v) and gate/up in another (rows gate, up).
struct CudaModel::Layer {
  DeviceBuffer attn_norm, wqkv, bqkv, wo, bo, mlp_norm, w_gate_up, w_down;
};

// Activations of one forward chunk, sized for chunk_tokens_ rows.
struct CudaModel::Scratch {
  DeviceBuffer h;        // fp32 [chunk][hidden]: the residual stream.
  DeviceBuffer xn;       // bf16 [chunk][hidden]
  DeviceBuffer qkv;      // bf16 [chunk][qkv_dim]
  DeviceBuffer q;        // bf16 [chunk][q_dim]
  DeviceBuffer attn;     // bf16 [chunk][q_dim]
  DeviceBuffer gate_up;  // bf16 [chunk][2 * inter]
  DeviceBuffer act;      // bf16 [chunk][inter]
  DeviceBuffer ids;      // int32 [chunk]
  DeviceBuffer logits;   // fp32 [vocab]
  DeviceBuffer workspace;  // Attention's, grown on demand.
  // Sparse attention (CudaModelOptions::sparse_plan), grown on demand.
  DeviceBuffer per_key, per_distance, verticals, slashes, block_offsets, column_offsets;
  DeviceBuffer blocks, columns, skip, sparse_workspace;
  std::vector<int64_t> host_block_offsets, host_column_offsets;
  std::vector<uint8_t> host_skip;
  cu::PinnedBuffer host_ids;     // int32 [chunk]
  cu::PinnedBuffer host_logits;  // fp32 [vocab]
};

namespace {

absl::StatusOr<DeviceBuffer> UploadBf16(std::initializer_list<const HostTensor*> parts) {
  size_t n = 0;
  for (const HostTensor* t : parts) n += t->data.size();
  std::vector<uint16_t> bits;
  bits.reserve(n);
  for (const HostTensor* t : parts) {
    for (float f : t->data) bits.push_back(kernels::FloatToBf16(f));
  }
  return cu::Upload(std::span<const uint16_t>(bits));
}

// A plan the GPU runs: any patterns and budgets per head, but no sliding window.
absl::Status CheckSparsePlan(const SparsePlan& plan, const ModelConfig& config) {
  if (config.sliding_window == 0) return absl::OkStatus();
  for (int l = 0; l < config.num_layers; ++l) {
    if (plan.AnySparseHead(l, static_cast<int>(config.num_heads))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", l, ": sparse attention plans do not combine with a sliding window"));
    }
  }
  return absl::OkStatus();
}

// Whether two heads' patterns build the same index (one build serves both).
bool SamePattern(const kernels::HeadPattern& a, const kernels::HeadPattern& b) {
  if (a.pattern != b.pattern) return false;
  switch (a.pattern) {
    case kernels::SparsePattern::kAShape:
      return a.a_shape.n_init == b.a_shape.n_init && a.a_shape.local == b.a_shape.local;
    case kernels::SparsePattern::kVerticalSlash:
      // One build takes every head's own budgets; the estimate needs one last_q.
      return a.vertical_slash.last_q == b.vertical_slash.last_q;
    case kernels::SparsePattern::kBlockSparse:
      return a.block_sparse.top_blocks == b.block_sparse.top_blocks;
    case kernels::SparsePattern::kDense:
      return true;
  }
  return false;
}

absl::Status CheckOptions(const CudaModelOptions& options) {
  if (options.prefill_chunk_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("prefill_chunk_tokens must be positive, got ",
                                                   options.prefill_chunk_tokens));
  }
  TIERKV_ASSIGN_OR_RETURN(cu::DeviceInfo info, cu::CurrentDevice());
  if (!cu::Available()) {
    return absl::UnavailableError(absl::StrCat("GPU ", info.name, " is compute capability ",
                                               info.sm_major, ".", info.sm_minor,
                                               "; the kernels are built for 9.0 only"));
  }
  return absl::OkStatus();
}

absl::Status CheckConfig(const ModelConfig& config) {
  TIERKV_RETURN_IF_ERROR(config.Validate());
  if (config.head_dim != 64 && config.head_dim != 128) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the GPU runtime supports head_dim 64 and 128; this model has ", config.head_dim));
  }
  return absl::OkStatus();
}

size_t Bytes(int64_t elems, size_t elem_bytes) { return static_cast<size_t>(elems) * elem_bytes; }

// y = x * w^T (+ bias) for contiguous rows: x [m][k], w [n][k], y [m][n].
struct Linear : cu::GemmParams {
  Linear(const DeviceBuffer& x_buf, const DeviceBuffer& w_buf, const DeviceBuffer& bias_buf,
         int64_t rows, int64_t out, int64_t in) {
    x = x_buf.as<Bf16>();
    ldx = in;
    w = w_buf.as<Bf16>();
    ldw = in;
    bias = bias_buf.as<Bf16>();  // Null when the buffer is empty.
    ldy = out;
    m = rows;
    n = out;
    k = in;
  }
  // Writes bf16 y.
  const cu::GemmParams& Into(Bf16* y) {
    y_bf16 = y;
    return *this;
  }
  // Adds to fp32 y.
  const cu::GemmParams& AddTo(float* y) {
    y_f32 = y;
    accumulate = true;
    return *this;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------
// CudaKvCache

Bf16* CudaKvCache::k(int layer) const {
  return storage_.as<Bf16>() + (2 * static_cast<int64_t>(layer)) * capacity_ * row_elems();
}

Bf16* CudaKvCache::v(int layer) const {
  return storage_.as<Bf16>() + (2 * static_cast<int64_t>(layer) + 1) * capacity_ * row_elems();
}

absl::Status CudaKvCache::CheckSpec(const ModelSpec& spec) const {
  TIERKV_RETURN_IF_ERROR(spec.Validate());
  if (spec.kv_dtype != "bf16") {
    return absl::InvalidArgumentError(
        absl::StrCat("GPU KV is bf16; the spec's kv_dtype is ", spec.kv_dtype));
  }
  if (static_cast<int>(spec.num_layers) != num_layers_ ||
      static_cast<int>(spec.num_kv_heads) != num_kv_heads_ ||
      static_cast<int>(spec.head_dim) != head_dim_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec of ", spec.num_layers, " layers, ", spec.num_kv_heads, " KV heads, head_dim ",
        spec.head_dim, " does not match the cache (", num_layers_, ", ", num_kv_heads_, ", ",
        head_dim_, ")"));
  }
  return absl::OkStatus();
}

absl::Status CudaKvCache::AppendBlocks(const void* blocks, int64_t num_blocks,
                                       const ModelSpec& spec, cu::Stream stream) {
  TIERKV_RETURN_IF_ERROR(CheckSpec(spec));
  if (num_blocks < 0) return absl::InvalidArgumentError("num_blocks is negative");
  const int64_t t = spec.block_tokens;
  if (tokens_ % t != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the cache holds ", tokens_, " tokens, not a multiple of the block size ", t));
  }
  if (tokens_ + num_blocks * t > capacity_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        num_blocks, " blocks of ", t, " tokens do not fit after ", tokens_, " tokens in a cache of ",
        capacity_));
  }
  if (num_blocks == 0) return absl::OkStatus();
  // A block object holds, per layer, K then V as [T][row] bf16: each part of all blocks is
  // one strided 2-D copy into the contiguous rows of the cache.
  const size_t part = Bytes(t * row_elems(), 2);
  const size_t block_bytes = spec.RawBlockBytes();
  const uint8_t* src = static_cast<const uint8_t*>(blocks);
  for (int l = 0; l < num_layers_; ++l) {
    TIERKV_RETURN_IF_ERROR(cu::Copy2DAsync(k(l) + tokens_ * row_elems(), part,
                                           src + (2 * l) * part, block_bytes, part, num_blocks,
                                           stream));
    TIERKV_RETURN_IF_ERROR(cu::Copy2DAsync(v(l) + tokens_ * row_elems(), part,
                                           src + (2 * l + 1) * part, block_bytes, part,
                                           num_blocks, stream));
  }
  tokens_ += num_blocks * t;
  return absl::OkStatus();
}

absl::Status CudaKvCache::CheckAppend(int64_t n, const ModelSpec& spec) const {
  TIERKV_RETURN_IF_ERROR(CheckSpec(spec));
  const int64_t t = spec.block_tokens;
  if (tokens_ % t != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the cache holds ", tokens_, " tokens, not a multiple of the block size ", t));
  }
  if (n < 0 || tokens_ + n * t > capacity_) {
    return absl::ResourceExhaustedError(absl::StrCat(n, " blocks of ", t,
                                                     " tokens do not fit after ", tokens_,
                                                     " tokens in a cache of ", capacity_));
  }
  return absl::OkStatus();
}

absl::Status CudaKvCache::AppendBlocksFromHost(
    std::span<const std::span<const PayloadPiece>> blocks, const ModelSpec& spec, void* staging,
    size_t staging_bytes, cu::Stream stream, uint64_t* device_checksums) {
  const int64_t t = spec.block_tokens;
  const size_t bytes = spec.RawBlockBytes();
  const int64_t n = static_cast<int64_t>(blocks.size());
  TIERKV_RETURN_IF_ERROR(CheckAppend(n, spec));
  if (staging == nullptr || staging_bytes < bytes) {
    return absl::InvalidArgumentError("the device staging buffer does not hold one block");
  }
  for (int64_t i = 0; i < n; ++i) {
    size_t sum = 0;
    for (const PayloadPiece& p : blocks[i]) sum += p.size;
    if (sum != bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("block ", i, " is ", sum, " bytes; a block of this model is ", bytes));
    }
  }
  const int64_t per_batch = static_cast<int64_t>(staging_bytes / bytes);
  uint8_t* dst = static_cast<uint8_t*>(staging);
  for (int64_t done = 0; done < n;) {
    const int64_t m = std::min(per_batch, n - done);
    for (int64_t i = 0; i < m; ++i) {
      size_t at = static_cast<size_t>(i) * bytes;
      for (const PayloadPiece& p : blocks[done + i]) {
        TIERKV_RETURN_IF_ERROR(cu::CopyAsync(dst + at, p.data, p.size, stream));
        at += p.size;
      }
    }
    if (device_checksums != nullptr) {
      TIERKV_RETURN_IF_ERROR(
          cu::BlockChecksums(staging, bytes, m, device_checksums + done, stream));
    }
    cu::ScatterKvBlocksParams sp;
    sp.blocks = static_cast<const Bf16*>(staging);
    sp.num_blocks = m;
    sp.num_layers = num_layers_;
    sp.block_tokens = t;
    sp.row_elems = row_elems();
    sp.kv = storage_.as<Bf16>();
    sp.capacity = capacity_;
    sp.row0 = tokens_ + done * t;
    TIERKV_RETURN_IF_ERROR(cu::ScatterKvBlocks(sp, stream));
    done += m;
  }
  tokens_ += n * t;
  return absl::OkStatus();
}

absl::Status CudaKvCache::AppendBlocksAt(const void* const* device_starts, int64_t n,
                                         const ModelSpec& spec, cu::Stream stream) {
  TIERKV_RETURN_IF_ERROR(CheckAppend(n, spec));
  const int64_t t = spec.block_tokens;
  if (n == 0) return absl::OkStatus();
  cu::ScatterKvBlocksParams sp;
  sp.block_starts = reinterpret_cast<const Bf16* const*>(device_starts);
  sp.num_blocks = n;
  sp.num_layers = num_layers_;
  sp.block_tokens = t;
  sp.row_elems = row_elems();
  sp.kv = storage_.as<Bf16>();
  sp.capacity = capacity_;
  sp.row0 = tokens_;
  TIERKV_RETURN_IF_ERROR(cu::ScatterKvBlocks(sp, stream));
  tokens_ += n * t;
  return absl::OkStatus();
}

absl::Status CudaKvCache::ExtractBlocksToHost(
    int64_t first_block, std::span<const std::span<const PayloadTarget>> blocks,
    const ModelSpec& spec, void* staging, size_t staging_bytes, cu::Stream stream,
    uint64_t* device_checksums) const {
  TIERKV_RETURN_IF_ERROR(CheckSpec(spec));
  const int64_t t = spec.block_tokens;
  const int64_t n = static_cast<int64_t>(blocks.size());
  const size_t bytes = spec.RawBlockBytes();
  if (first_block < 0 || (first_block + n) * t > tokens_) {
    return absl::OutOfRangeError(absl::StrCat("blocks [", first_block, ", ", first_block + n,
                                              ") of ", t, " tokens are not all in a cache of ",
                                              tokens_, " tokens"));
  }
  if (staging == nullptr || staging_bytes < bytes) {
    return absl::InvalidArgumentError("the device staging buffer does not hold one block");
  }
  for (int64_t i = 0; i < n; ++i) {
    size_t sum = 0;
    for (const PayloadTarget& p : blocks[i]) sum += p.size;
    if (sum != bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("block ", i, " has room for ", sum, " bytes; a block is ", bytes));
    }
  }
  const int64_t per_batch = static_cast<int64_t>(staging_bytes / bytes);
  uint8_t* src = static_cast<uint8_t*>(staging);
  for (int64_t done = 0; done < n;) {
    const int64_t m = std::min(per_batch, n - done);
    cu::ScatterKvBlocksParams gp;
    gp.num_blocks = m;
    gp.num_layers = num_layers_;
    gp.block_tokens = t;
    gp.row_elems = row_elems();
    gp.kv = storage_.as<Bf16>();
    gp.capacity = capacity_;
    gp.row0 = (first_block + done) * t;
    TIERKV_RETURN_IF_ERROR(cu::GatherKvBlocks(gp, static_cast<Bf16*>(staging), stream));
    if (device_checksums != nullptr) {
      TIERKV_RETURN_IF_ERROR(
          cu::BlockChecksums(staging, bytes, m, device_checksums + done, stream));
    }
    for (int64_t i = 0; i < m; ++i) {
      size_t at = static_cast<size_t>(i) * bytes;
      for (const PayloadTarget& p : blocks[done + i]) {
        TIERKV_RETURN_IF_ERROR(cu::CopyAsync(p.data, src + at, p.size, stream));
        at += p.size;
      }
    }
    done += m;
  }
  return absl::OkStatus();
}

absl::Status CudaKvCache::ExtractBlocks(int64_t first_block, int64_t num_blocks,
                                        const ModelSpec& spec, void* out,
                                        cu::Stream stream) const {
  TIERKV_RETURN_IF_ERROR(CheckSpec(spec));
  const int64_t t = spec.block_tokens;
  if (first_block < 0 || num_blocks < 0 || (first_block + num_blocks) * t > tokens_) {
    return absl::OutOfRangeError(absl::StrCat("blocks [", first_block, ", ",
                                              first_block + num_blocks, ") of ", t,
                                              " tokens are not all in a cache of ", tokens_,
                                              " tokens"));
  }
  if (num_blocks == 0) return absl::OkStatus();
  const size_t part = Bytes(t * row_elems(), 2);
  const size_t block_bytes = spec.RawBlockBytes();
  uint8_t* dst = static_cast<uint8_t*>(out);
  const int64_t row0 = first_block * t;
  for (int l = 0; l < num_layers_; ++l) {
    TIERKV_RETURN_IF_ERROR(cu::Copy2DAsync(dst + (2 * l) * part, block_bytes,
                                           k(l) + row0 * row_elems(), part, part, num_blocks,
                                           stream));
    TIERKV_RETURN_IF_ERROR(cu::Copy2DAsync(dst + (2 * l + 1) * part, block_bytes,
                                           v(l) + row0 * row_elems(), part, part, num_blocks,
                                           stream));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------
// CudaModel

CudaModel::CudaModel(const ModelConfig& config, ModelSpec spec, const CudaModelOptions& options)
    : config_(config),
      spec_(std::move(spec)),
      chunk_tokens_(options.prefill_chunk_tokens),
      sparse_plan_(options.sparse_plan) {}

CudaModel::~CudaModel() = default;

absl::Status CudaModel::Init() {
  if (sparse_plan_ != nullptr) {
    TIERKV_RETURN_IF_ERROR(CheckSparsePlan(*sparse_plan_, config_));
  }
  TIERKV_ASSIGN_OR_RETURN(stream_, cu::StreamOwner::Create());
  // RoPE tables: the CPU runtime's own fp32 values (kernels::RopeCosSin), for every position.
  const std::vector<float> inv_freq = config_.RopeInvFreq();
  rope_rows_ = config_.max_position_embeddings;
  const int64_t half = config_.head_dim / 2;
  std::vector<float> cos(rope_rows_ * half), sin(rope_rows_ * half);
  kernels::ParallelFor(kernels::ThreadPool::Default(), (rope_rows_ + 4095) / 4096,
                       [&](int64_t c) {
                         const int64_t r0 = c * 4096;
                         const int64_t n = std::min<int64_t>(4096, rope_rows_ - r0);
                         kernels::RopeCosSin(inv_freq, r0, n, cos.data() + r0 * half,
                                             sin.data() + r0 * half);
                       });
  TIERKV_ASSIGN_OR_RETURN(rope_cos_, cu::Upload(std::span<const float>(cos)));
  TIERKV_ASSIGN_OR_RETURN(rope_sin_, cu::Upload(std::span<const float>(sin)));

  auto scratch = std::make_unique<Scratch>();
  const int64_t c = chunk_tokens_;
  const int64_t hidden = config_.hidden_size, inter = config_.intermediate_size;
  const int64_t q_dim = config_.num_heads * config_.head_dim;
  const int64_t qkv_dim = q_dim + 2 * config_.num_kv_heads * config_.head_dim;
  TIERKV_ASSIGN_OR_RETURN(scratch->h, DeviceBuffer::Allocate(Bytes(c * hidden, 4)));
  TIERKV_ASSIGN_OR_RETURN(scratch->xn, DeviceBuffer::Allocate(Bytes(c * hidden, 2)));
  TIERKV_ASSIGN_OR_RETURN(scratch->qkv, DeviceBuffer::Allocate(Bytes(c * qkv_dim, 2)));
  TIERKV_ASSIGN_OR_RETURN(scratch->q, DeviceBuffer::Allocate(Bytes(c * q_dim, 2)));
  TIERKV_ASSIGN_OR_RETURN(scratch->attn, DeviceBuffer::Allocate(Bytes(c * q_dim, 2)));
  TIERKV_ASSIGN_OR_RETURN(scratch->gate_up, DeviceBuffer::Allocate(Bytes(c * 2 * inter, 2)));
  TIERKV_ASSIGN_OR_RETURN(scratch->act, DeviceBuffer::Allocate(Bytes(c * inter, 2)));
  TIERKV_ASSIGN_OR_RETURN(scratch->ids, DeviceBuffer::Allocate(Bytes(c, 4)));
  TIERKV_ASSIGN_OR_RETURN(scratch->logits, DeviceBuffer::Allocate(Bytes(config_.vocab_size, 4)));
  TIERKV_ASSIGN_OR_RETURN(scratch->host_ids, cu::PinnedBuffer::Allocate(Bytes(c, 4)));
  TIERKV_ASSIGN_OR_RETURN(scratch->host_logits,
                          cu::PinnedBuffer::Allocate(Bytes(config_.vocab_size, 4)));
  absl::MutexLock lock(&mu_);
  scratch_ = std::move(scratch);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Create(const ModelConfig& config,
                                                             const ModelWeights& weights,
                                                             std::string model_id,
                                                             std::string weights_digest,
                                                             const CudaModelOptions& options) {
  TIERKV_RETURN_IF_ERROR(CheckOptions(options));
  TIERKV_RETURN_IF_ERROR(CheckConfig(config));
  TIERKV_RETURN_IF_ERROR(ValidateWeights(config, weights));
  ModelSpec spec =
      ModelSpecFor(config, std::move(model_id), std::move(weights_digest), "bf16",
                   options.block_tokens);
  TIERKV_RETURN_IF_ERROR(spec.Validate());
  std::unique_ptr<CudaModel> m(new CudaModel(config, std::move(spec), options));
  TIERKV_RETURN_IF_ERROR(m->Init());
  m->layers_.resize(weights.layers.size());
  for (size_t i = 0; i < weights.layers.size(); ++i) {
    const LayerWeights& in = weights.layers[i];
    Layer& out = m->layers_[i];
    TIERKV_ASSIGN_OR_RETURN(out.attn_norm, UploadBf16({&in.input_layernorm}));
    TIERKV_ASSIGN_OR_RETURN(out.wqkv, UploadBf16({&in.q_proj, &in.k_proj, &in.v_proj}));
    if (config.qkv_bias) {
      TIERKV_ASSIGN_OR_RETURN(out.bqkv, UploadBf16({&in.q_bias, &in.k_bias, &in.v_bias}));
    }
    TIERKV_ASSIGN_OR_RETURN(out.wo, UploadBf16({&in.o_proj}));
    if (config.o_bias) {
      TIERKV_ASSIGN_OR_RETURN(out.bo, UploadBf16({&in.o_bias}));
    }
    TIERKV_ASSIGN_OR_RETURN(out.mlp_norm, UploadBf16({&in.post_attention_layernorm}));
    TIERKV_ASSIGN_OR_RETURN(out.w_gate_up, UploadBf16({&in.gate_proj, &in.up_proj}));
    TIERKV_ASSIGN_OR_RETURN(out.w_down, UploadBf16({&in.down_proj}));
  }
  TIERKV_ASSIGN_OR_RETURN(m->embed_, UploadBf16({&weights.embed_tokens}));
  TIERKV_ASSIGN_OR_RETURN(m->norm_, UploadBf16({&weights.norm}));
  if (!config.tie_word_embeddings) {
    TIERKV_ASSIGN_OR_RETURN(m->lm_head_, UploadBf16({&weights.lm_head}));
  }
  return m;
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Seeded(const ModelConfig& config,
                                                             uint64_t seed,
                                                             const CudaModelOptions& options) {
  TIERKV_RETURN_IF_ERROR(CheckOptions(options));
  TIERKV_RETURN_IF_ERROR(CheckConfig(config));
  ModelSpec spec = ModelSpecFor(
      config, options.model_id.empty() ? absl::StrCat("seeded:", seed) : options.model_id,
      absl::StrCat("seed:", seed), "bf16", options.block_tokens);
  TIERKV_RETURN_IF_ERROR(spec.Validate());
  std::unique_ptr<CudaModel> m(new CudaModel(config, std::move(spec), options));
  TIERKV_RETURN_IF_ERROR(m->Init());
  // The slots say each tensor's name and shape; fused device tensors take their parts in the
  // same order as the CPU model (q, k, v / gate, up), each generated at its own offset.
  ModelWeights names_only;
  const std::vector<WeightSlot> slots = WeightSlots(config, &names_only);
  auto numel = [](const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  };
  // Sum of the sizes of the slots with these names (the parts of one device tensor).
  std::map<std::string, const WeightSlot*> by_name;
  for (const WeightSlot& s : slots) by_name[s.name] = &s;
  auto fill = [&](DeviceBuffer* dst, std::initializer_list<std::string> names) -> absl::Status {
    int64_t total = 0;
    for (const std::string& n : names) total += numel(by_name.at(n)->shape);
    TIERKV_ASSIGN_OR_RETURN(*dst, DeviceBuffer::Allocate(Bytes(total, 2)));
    int64_t at = 0;
    for (const std::string& n : names) {
      const WeightSlot& s = *by_name.at(n);
      const SeededAffine a = SeededAffineOf(s.name, s.shape);
      const int64_t count = numel(s.shape);
      TIERKV_RETURN_IF_ERROR(cu::FillSeeded(dst->as<Bf16>() + at, count,
                                            kernels::StreamKey(seed, kernels::Fnv1a64(s.name)),
                                            0, a.scale, a.shift, m->stream()));
      at += count;
    }
    return absl::OkStatus();
  };
  m->layers_.resize(config.num_layers);
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    Layer& l = m->layers_[i];
    TIERKV_RETURN_IF_ERROR(fill(&l.attn_norm, {p + "input_layernorm.weight"}));
    TIERKV_RETURN_IF_ERROR(fill(&l.wqkv, {p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
                                          p + "self_attn.v_proj.weight"}));
    if (config.qkv_bias) {
      TIERKV_RETURN_IF_ERROR(fill(&l.bqkv, {p + "self_attn.q_proj.bias", p + "self_attn.k_proj.bias",
                                            p + "self_attn.v_proj.bias"}));
    }
    TIERKV_RETURN_IF_ERROR(fill(&l.wo, {p + "self_attn.o_proj.weight"}));
    if (config.o_bias) TIERKV_RETURN_IF_ERROR(fill(&l.bo, {p + "self_attn.o_proj.bias"}));
    TIERKV_RETURN_IF_ERROR(fill(&l.mlp_norm, {p + "post_attention_layernorm.weight"}));
    TIERKV_RETURN_IF_ERROR(
        fill(&l.w_gate_up, {p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"}));
    TIERKV_RETURN_IF_ERROR(fill(&l.w_down, {p + "mlp.down_proj.weight"}));
  }
  TIERKV_RETURN_IF_ERROR(fill(&m->embed_, {"model.embed_tokens.weight"}));
  TIERKV_RETURN_IF_ERROR(fill(&m->norm_, {"model.norm.weight"}));
  if (!config.tie_word_embeddings) TIERKV_RETURN_IF_ERROR(fill(&m->lm_head_, {"lm_head.weight"}));
  TIERKV_RETURN_IF_ERROR(m->stream_.Synchronize());
  return m;
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Load(const std::string& name_or_dir,
                                                           const CudaModelOptions& options) {
  TIERKV_RETURN_IF_ERROR(CheckOptions(options));
  if (name_or_dir == kBuiltinTinyModelId) {
    const ModelConfig config = BuiltinTinyConfig();
    ModelWeights weights = SeededWeights(config, kBuiltinTinySeed, kernels::ThreadPool::Default());
    return Create(config, weights,
                  options.model_id.empty() ? std::string(kBuiltinTinyModelId) : options.model_id,
                  absl::StrCat("seed:", kBuiltinTinySeed), options);
  }
  if (name_or_dir == kBuiltinLlama3_8BRandomId) {
    CudaModelOptions o = options;
    if (o.model_id.empty()) o.model_id = std::string(kBuiltinLlama3_8BRandomId);
    return Seeded(Llama3_8BShapeConfig(), kBuiltinTinySeed, o);
  }
  if (name_or_dir.rfind("builtin:", 0) == 0) {
    return absl::NotFoundError(absl::StrCat("unknown built-in model \"", name_or_dir,
                                            "\"; the built-in models are builtin:tiny and ",
                                            std::string(kBuiltinLlama3_8BRandomId)));
  }
  TIERKV_ASSIGN_OR_RETURN(ModelConfig config, LoadHfConfig(name_or_dir));
  TIERKV_ASSIGN_OR_RETURN(ModelWeights weights,
                          LoadHfWeights(name_or_dir, config, kernels::ThreadPool::Default()));
  TIERKV_ASSIGN_OR_RETURN(std::string digest, HfWeightsDigest(name_or_dir, options.digest_mode));
  std::string model_id = options.model_id;
  if (model_id.empty()) {
    std::filesystem::path p(name_or_dir);
    while (!p.empty() && p.filename().empty()) p = p.parent_path();
    model_id = std::filesystem::absolute(p).lexically_normal().filename().string();
  }
  return Create(config, weights, std::move(model_id), std::move(digest), options);
}

size_t CudaModel::KvCacheBytes(int64_t capacity_tokens) const {
  return Bytes(2 * config_.num_layers * capacity_tokens * config_.num_kv_heads *
                   config_.head_dim,
               2);
}

absl::StatusOr<CudaKvCache> CudaModel::NewKvCache(int64_t capacity_tokens,
                                                  DeviceBuffer* reuse) const {
  if (capacity_tokens <= 0 || capacity_tokens > config_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("KV capacity must be in [1, ",
                                                   config_.max_position_embeddings, "], got ",
                                                   capacity_tokens));
  }
  CudaKvCache kv;
  kv.num_layers_ = static_cast<int>(config_.num_layers);
  kv.num_kv_heads_ = static_cast<int>(config_.num_kv_heads);
  kv.head_dim_ = static_cast<int>(config_.head_dim);
  kv.capacity_ = capacity_tokens;
  const size_t bytes = KvCacheBytes(capacity_tokens);
  if (reuse != nullptr && reuse->size() >= bytes) {
    kv.storage_ = std::move(*reuse);
  } else {
    TIERKV_ASSIGN_OR_RETURN(kv.storage_, DeviceBuffer::Allocate(bytes));
  }
  return kv;
}

absl::StatusOr<std::vector<float>> CudaModel::Prefill(std::span<const uint32_t> tokens,
                                                      CudaKvCache* kv) const {
  TIERKV_RETURN_IF_ERROR(CheckPrefillInput(config_, spec_, tokens, kv->num_layers(),
                                           kv->num_kv_heads(), kv->head_dim()));
  const int64_t start = kv->tokens();
  if (start + static_cast<int64_t>(tokens.size()) > kv->capacity()) {
    return absl::ResourceExhaustedError(absl::StrCat("Prefill: ", start, " cached plus ",
                                                     tokens.size(),
                                                     " new tokens exceed the KV capacity of ",
                                                     kv->capacity()));
  }
  absl::MutexLock lock(&mu_);
  for (size_t done = 0; done < tokens.size();) {
    const size_t n = std::min<size_t>(tokens.size() - done, chunk_tokens_);
    const bool last = done + n == tokens.size();
    absl::Status s = Forward(tokens.subspan(done, n), kv, last);
    if (!s.ok()) {
      kv->Truncate(start);
      return s;
    }
    done += n;
  }
  if (absl::Status s = stream_.Synchronize(); !s.ok()) {
    kv->Truncate(start);
    return s;
  }
  const float* host = scratch_->host_logits.as<float>();
  return std::vector<float>(host, host + config_.vocab_size);
}

namespace {

// `buffer` holds at least `bytes` (reallocated, contents dropped, when it does not).
absl::Status Ensure(DeviceBuffer& buffer, size_t bytes) {
  if (buffer.size() >= bytes) return absl::OkStatus();
  TIERKV_ASSIGN_OR_RETURN(buffer, DeviceBuffer::Allocate(std::max<size_t>(bytes, 256)));
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaModel::BuildSparseIndex(const cu::AttentionParams& ap,
                                         const kernels::HeadPattern& pattern,
                                         std::span<const kernels::HeadPattern* const> members,
                                         int64_t* total_blocks, int64_t* total_columns) const {
  Scratch& s = *scratch_;
  const cu::Stream st = stream_.get();
  const int hq = ap.num_q_heads;
  const int64_t t = ap.num_queries, keys = ap.num_keys;
  const int64_t rows = (t + kernels::kSparseBlock - 1) / kernels::kSparseBlock;
  TIERKV_RETURN_IF_ERROR(Ensure(s.block_offsets, Bytes(hq * rows + 1, 8)));
  TIERKV_RETURN_IF_ERROR(Ensure(s.column_offsets, Bytes(hq * rows + 1, 8)));
  // The lists start small and grow to what a build reports it needs: a builder counts first,
  // writes nothing past the capacity, and says RESOURCE_EXHAUSTED with the totals.
  TIERKV_RETURN_IF_ERROR(Ensure(s.blocks, Bytes(hq * rows * 4, 4)));
  TIERKV_RETURN_IF_ERROR(Ensure(s.columns, 256));
  auto grow_and_retry = [&](auto build, int64_t need_blocks, int64_t need_columns,
                            absl::Status first) -> absl::Status {
    if (first.code() != absl::StatusCode::kResourceExhausted) return first;
    TIERKV_RETURN_IF_ERROR(Ensure(s.blocks, Bytes(need_blocks, 4)));
    TIERKV_RETURN_IF_ERROR(Ensure(s.columns, Bytes(need_columns, 4)));
    return build();
  };
  // Builders whose lists are blocks only (A-shape, block-sparse): offsets, workspace, the
  // build and its retry, the totals.
  auto blocks_only = [&](auto& p, auto workspace_bytes, auto builder) -> absl::Status {
    p.block_offsets = s.block_offsets.as<int64_t>();
    p.column_offsets = s.column_offsets.as<int64_t>();
    TIERKV_RETURN_IF_ERROR(Ensure(s.sparse_workspace, workspace_bytes(p)));
    p.workspace = s.sparse_workspace.data();
    p.workspace_bytes = s.sparse_workspace.size();
    auto build = [&] {
      p.blocks = s.blocks.as<int32_t>();
      p.blocks_capacity = static_cast<int64_t>(s.blocks.size() / 4);
      return builder(p, st);
    };
    const absl::Status first = build();  // Sets the totals the retry needs.
    TIERKV_RETURN_IF_ERROR(grow_and_retry(build, p.total_blocks, 0, first));
    *total_blocks = p.total_blocks;
    *total_columns = 0;
    return absl::OkStatus();
  };
  switch (pattern.pattern) {
    case kernels::SparsePattern::kAShape: {
      cu::AShapeIndexParams p;
      p.heads = hq;
      p.num_queries = t;
      p.query_position = ap.query_position;
      p.n_init = pattern.a_shape.n_init;
      p.local = pattern.a_shape.local;
      return blocks_only(
          p, [](const cu::AShapeIndexParams& x) { return cu::AShapeIndexWorkspaceBytes(x); },
          [](cu::AShapeIndexParams& x, cu::Stream y) { return cu::BuildAShapeIndex(x, y); });
    }
    case kernels::SparsePattern::kBlockSparse: {
      cu::BlockSparseIndexParams p;
      p.q = ap.q;
      p.ldq = ap.ldq;
      p.k = ap.k;
      p.ldkv = ap.ldkv;
      p.num_queries = t;
      p.query_position = ap.query_position;
      p.num_q_heads = hq;
      p.num_kv_heads = ap.num_kv_heads;
      p.head_dim = ap.head_dim;
      p.scale = ap.scale;
      p.top_blocks = pattern.block_sparse.top_blocks;
      return blocks_only(
          p,
          [hq](const cu::BlockSparseIndexParams& x) {
            return cu::BlockSparseIndexWorkspaceBytes(x, std::min(hq, 8));  // 8 heads a round.
          },
          [](cu::BlockSparseIndexParams& x, cu::Stream y) {
            return cu::BuildBlockSparseIndex(x, y);
          });
    }
    case kernels::SparsePattern::kVerticalSlash:
      break;
    case kernels::SparsePattern::kDense:
      return absl::InternalError("BuildSparseIndex: a dense head has no index");
  }
  const kernels::VerticalSlashParams& vs = pattern.vertical_slash;
  // Each member head its own budgets (others none: they are not run from this index); the
  // largest sizes the rows of the line lists.
  std::vector<int64_t> head_v(hq, 0), head_s(hq, 0), keep_v(hq, 0), keep_s(hq, 0);
  int64_t vertical = 0, slash = 1;
  for (int h = 0; h < hq; ++h) {
    if (members[h] == nullptr) continue;
    const kernels::VerticalSlashParams& own = members[h]->vertical_slash;
    head_v[h] = std::min(own.vertical, keys);
    head_s[h] = std::min(own.slash, keys);
    keep_v[h] = std::min(own.keep_first, head_v[h]);
    keep_s[h] = std::min(own.keep_near, head_s[h]);
    vertical = std::max(vertical, head_v[h]);
    slash = std::max(slash, head_s[h]);
  }
  TIERKV_RETURN_IF_ERROR(Ensure(s.per_key, Bytes(hq * keys, 4)));
  TIERKV_RETURN_IF_ERROR(Ensure(s.per_distance, Bytes(hq * keys, 4)));
  TIERKV_RETURN_IF_ERROR(Ensure(s.verticals, Bytes(hq * std::max<int64_t>(vertical, 1), 4)));
  TIERKV_RETURN_IF_ERROR(Ensure(s.slashes, Bytes(hq * slash, 4)));
  cu::AttentionMassParams mp;
  mp.q = ap.q;
  mp.ldq = ap.ldq;
  mp.k = ap.k;
  mp.ldkv = ap.ldkv;
  mp.num_queries = t;
  mp.query_position = ap.query_position;
  mp.num_q_heads = hq;
  mp.num_kv_heads = ap.num_kv_heads;
  mp.head_dim = ap.head_dim;
  mp.scale = ap.scale;
  mp.last_q = std::min<int64_t>(vs.last_q, t);
  mp.per_key = s.per_key.as<float>();
  mp.per_distance = s.per_distance.as<float>();
  cu::TopIndicesParams tv{s.per_key.as<float>(), keys, hq, vertical, 0,
                          s.verticals.as<int32_t>()};
  tv.segment_counts = head_v.data();
  tv.segment_keeps = keep_v.data();
  cu::TopIndicesParams ts{s.per_distance.as<float>(), keys, hq, slash, 0,
                          s.slashes.as<int32_t>()};
  ts.segment_counts = head_s.data();
  ts.segment_keeps = keep_s.data();
  cu::VerticalSlashIndexParams ip;
  ip.verticals = s.verticals.as<int32_t>();
  ip.num_verticals = vertical;
  ip.slashes = s.slashes.as<int32_t>();
  ip.num_slashes = slash;
  ip.head_verticals = head_v.data();
  ip.head_slashes = head_s.data();
  ip.heads = hq;
  ip.num_queries = t;
  ip.query_position = ap.query_position;
  ip.block_offsets = s.block_offsets.as<int64_t>();
  ip.column_offsets = s.column_offsets.as<int64_t>();
  // Up to 8 heads' scores at a time in the estimate's workspace.
  const size_t ws = std::max({cu::AttentionMassMinWorkspaceBytes(mp) * std::min(hq, 8),
                              cu::TopIndicesWorkspaceBytes(tv), cu::TopIndicesWorkspaceBytes(ts),
                              cu::VerticalSlashIndexWorkspaceBytes(ip)});
  TIERKV_RETURN_IF_ERROR(Ensure(s.sparse_workspace, ws));
  mp.workspace = tv.workspace = ts.workspace = ip.workspace = s.sparse_workspace.data();
  mp.workspace_bytes = tv.workspace_bytes = ts.workspace_bytes = ip.workspace_bytes =
      s.sparse_workspace.size();
  TIERKV_RETURN_IF_ERROR(cu::EstimateAttentionMass(mp, st));
  TIERKV_RETURN_IF_ERROR(cu::TopIndices(tv, st));
  TIERKV_RETURN_IF_ERROR(cu::TopIndices(ts, st));
  auto build = [&] {
    ip.blocks = s.blocks.as<int32_t>();
    ip.blocks_capacity = static_cast<int64_t>(s.blocks.size() / 4);
    ip.columns = s.columns.as<int32_t>();
    ip.columns_capacity = static_cast<int64_t>(s.columns.size() / 4);
    return cu::BuildVerticalSlashIndex(ip, st);  // Waits for the counts.
  };
  const absl::Status first = build();  // Sets the totals the retry needs.
  TIERKV_RETURN_IF_ERROR(grow_and_retry(build, ip.total_blocks, ip.total_columns, first));
  *total_blocks = ip.total_blocks;
  *total_columns = ip.total_columns;
  return absl::OkStatus();
}

absl::Status CudaModel::SparseLayerAttention(const cu::AttentionParams& ap, int layer) const {
  Scratch& s = *scratch_;
  const cu::Stream st = stream_.get();
  const int hq = ap.num_q_heads;
  // A layer whose heads are all dense skips the estimate altogether.
  if (!sparse_plan_->AnySparseHead(layer, hq)) return cu::Attention(ap, st);
  const int64_t t = ap.num_queries;
  const int64_t rows = (t + kernels::kSparseBlock - 1) / kernels::kSparseBlock;
  // Buffers may be reallocated below: nothing queued may still use the old ones.
  TIERKV_RETURN_IF_ERROR(stream_.Synchronize());
  TIERKV_RETURN_IF_ERROR(Ensure(s.skip, Bytes(hq, 1)));
  double causal_tiles = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t last = ap.query_position + std::min(t, (r + 1) * kernels::kSparseBlock) - 1;
    causal_tiles += static_cast<double>(last / kernels::kSparseBlock + 1);
  }
  // Heads that share a pattern and its budgets share one index build (over every head: the
  // builders take the q heads as a whole); each build's sparse heads then run in one launch,
  // the others masked out by skip_heads.
  std::vector<const kernels::HeadPattern*> groups;
  std::vector<int> group_of(hq, -1);
  for (int h = 0; h < hq; ++h) {
    const kernels::HeadPattern& p = sparse_plan_->For(layer, h);
    if (p.pattern == kernels::SparsePattern::kDense) continue;
    size_t g = 0;
    while (g < groups.size() && !SamePattern(*groups[g], p)) ++g;
    if (g == groups.size()) groups.push_back(&p);
    group_of[h] = static_cast<int>(g);
  }
  std::vector<uint8_t> dense(hq, 1);  // Heads left for the dense kernel.
  for (size_t g = 0; g < groups.size(); ++g) {
    int64_t total_blocks = 0, total_columns = 0;
    // This build reuses (and may grow) the index buffers of the previous one, whose kernels
    // may still be queued.
    if (g > 0) TIERKV_RETURN_IF_ERROR(stream_.Synchronize());
    std::vector<const kernels::HeadPattern*> members(hq, nullptr);
    for (int h = 0; h < hq; ++h) {
      if (group_of[h] == static_cast<int>(g)) members[h] = &sparse_plan_->For(layer, h);
    }
    TIERKV_RETURN_IF_ERROR(
        BuildSparseIndex(ap, *groups[g], members, &total_blocks, &total_columns));
    // A head of this group whose index covers more than max_coverage of the chunk's causal
    // tiles runs dense instead (never slower than dense). Coverage is what the kernel will
    // compute (its pairs of row blocks take the union of both lists), where it can say;
    // else the listed blocks plus columns / 64.
    s.host_block_offsets.resize(hq * rows + 1);
    s.host_column_offsets.resize(hq * rows + 1);
    TIERKV_RETURN_IF_ERROR(cu::CopyToHost(s.host_block_offsets.data(), s.block_offsets.data(),
                                          Bytes(hq * rows + 1, 8)));
    TIERKV_RETURN_IF_ERROR(cu::CopyToHost(s.host_column_offsets.data(),
                                          s.column_offsets.data(), Bytes(hq * rows + 1, 8)));
    cu::SparseIndexView view{s.block_offsets.as<int64_t>(), s.blocks.as<int32_t>(),
                             s.column_offsets.as<int64_t>(), s.columns.as<int32_t>()};
    view.total_blocks = total_blocks;
    view.total_columns = total_columns;
    // The kernel's workspace (merged lists of row-block pairs) reuses the index builders'
    // one: their work on it is queued before this on the same stream. Growing it needs
    // nothing queued to hold the old one.
    const size_t kernel_ws = cu::SparseAttentionWorkspaceBytes(ap, view);
    if (kernel_ws > s.sparse_workspace.size()) {
      TIERKV_RETURN_IF_ERROR(stream_.Synchronize());
      TIERKV_RETURN_IF_ERROR(Ensure(s.sparse_workspace, kernel_ws));
    }
    cu::AttentionParams sap = ap;
    sap.workspace = s.sparse_workspace.data();
    sap.workspace_bytes = s.sparse_workspace.size();
    absl::StatusOr<std::vector<int64_t>> computed =
        cu::SparseAttentionComputedTiles(sap, view, st);
    if (!computed.ok() && computed.status().code() != absl::StatusCode::kFailedPrecondition) {
      return computed.status();
    }
    s.host_skip.assign(hq, 1);
    bool any_sparse = false;
    for (int h = 0; h < hq; ++h) {
      if (group_of[h] != static_cast<int>(g)) continue;
      const int64_t b = s.host_block_offsets[(h + 1) * rows] - s.host_block_offsets[h * rows];
      const int64_t c = s.host_column_offsets[(h + 1) * rows] - s.host_column_offsets[h * rows];
      const double tiles =
          computed.ok() ? static_cast<double>((*computed)[h]) : static_cast<double>(b) + c / 64.0;
      // (The computed tiles can pass the causal ones by the rounding to whole tiles: a
      // max_coverage of 1 still means never falling back.)
      if (sparse_plan_->max_coverage < 1.0 && tiles / causal_tiles > sparse_plan_->max_coverage) {
        continue;
      }
      s.host_skip[h] = 0;
      dense[h] = 0;
      any_sparse = true;
    }
    if (!any_sparse) continue;
    // On the model's stream (a plain cudaMemcpy runs on the legacy stream, which a
    // non-blocking stream does not wait for); pageable memory is staged before this returns.
    TIERKV_RETURN_IF_ERROR(cu::CopyAsync(s.skip.data(), s.host_skip.data(), hq, st));
    view.skip_heads = s.skip.as<uint8_t>();
    TIERKV_RETURN_IF_ERROR(cu::SparseAttention(sap, view, st));
  }
  // Dense heads: all of them in one call when no head went sparse, else one q head at a time
  // against its KV head.
  if (std::count(dense.begin(), dense.end(), 1) == hq) return cu::Attention(ap, st);
  const int group = hq / ap.num_kv_heads;
  for (int h = 0; h < hq; ++h) {
    if (!dense[h]) continue;
    cu::AttentionParams one = ap;
    one.q = ap.q + static_cast<int64_t>(h) * ap.head_dim;
    one.k = ap.k + static_cast<int64_t>(h / group) * ap.head_dim;
    one.v = ap.v + static_cast<int64_t>(h / group) * ap.head_dim;
    one.out = ap.out + static_cast<int64_t>(h) * ap.head_dim;
    one.num_q_heads = 1;
    one.num_kv_heads = 1;
    TIERKV_RETURN_IF_ERROR(cu::Attention(one, st));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> CudaModel::Decode(uint32_t token, CudaKvCache* kv) const {
  return Prefill(std::span<const uint32_t>(&token, 1), kv);
}

absl::Status CudaModel::Forward(std::span<const uint32_t> tokens, CudaKvCache* kv,
                                bool logits) const {
  Scratch& s = *scratch_;
  const cu::Stream st = stream_.get();
  const int64_t t = static_cast<int64_t>(tokens.size());
  const int64_t p0 = kv->tokens();
  const int64_t hidden = config_.hidden_size;
  const int64_t inter = config_.intermediate_size;
  const int hq = static_cast<int>(config_.num_heads);
  const int hkv = static_cast<int>(config_.num_kv_heads);
  const int d = static_cast<int>(config_.head_dim);
  const int64_t q_dim = static_cast<int64_t>(hq) * d;
  const int64_t qkv_dim = q_dim + 2 * static_cast<int64_t>(hkv) * d;
  const float eps = static_cast<float>(config_.rms_norm_eps);

  // The previous chunk's copy out of host_ids has finished once the stream got this far on
  // the host side: synchronize before overwriting the pinned buffer.
  TIERKV_RETURN_IF_ERROR(stream_.Synchronize());
  int32_t* ids = s.host_ids.as<int32_t>();
  for (int64_t i = 0; i < t; ++i) ids[i] = static_cast<int32_t>(tokens[i]);
  TIERKV_RETURN_IF_ERROR(cu::CopyAsync(s.ids.data(), ids, Bytes(t, 4), st));
  TIERKV_RETURN_IF_ERROR(cu::Embedding(
      {s.ids.as<int32_t>(), embed_.as<Bf16>(), config_.vocab_size, s.h.as<float>(), hidden, t,
       hidden},
      st));

  cu::AttentionParams ap;
  ap.q = s.q.as<Bf16>();
  ap.ldq = q_dim;
  ap.ldkv = static_cast<int64_t>(hkv) * d;
  ap.out = s.attn.as<Bf16>();
  ap.ldo = q_dim;
  ap.num_queries = t;
  ap.query_position = p0;
  ap.num_keys = p0 + t;
  ap.num_q_heads = hq;
  ap.num_kv_heads = hkv;
  ap.head_dim = d;
  ap.scale = 1.0f / std::sqrt(static_cast<float>(d));
  ap.sliding_window = config_.sliding_window;
  ap.k = kv->k(0);  // Per layer below; set now so that the workspace query sees valid params.
  ap.v = kv->v(0);
  const size_t ws = cu::AttentionWorkspaceBytes(ap);
  if (ws > s.workspace.size()) {
    TIERKV_RETURN_IF_ERROR(stream_.Synchronize());
    TIERKV_ASSIGN_OR_RETURN(s.workspace, DeviceBuffer::Allocate(ws));
  }
  ap.workspace = s.workspace.data();
  ap.workspace_bytes = s.workspace.size();

  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& w = layers_[l];
    const int li = static_cast<int>(l);
    TIERKV_RETURN_IF_ERROR(cu::RmsNorm({s.h.as<float>(), hidden, w.attn_norm.as<Bf16>(),
                                        s.xn.as<Bf16>(), hidden, t, hidden, eps},
                                       st));
    TIERKV_RETURN_IF_ERROR(
        cu::Gemm(Linear(s.xn, w.wqkv, w.bqkv, t, qkv_dim, hidden).Into(s.qkv.as<Bf16>()), st));
    cu::RopeQkvParams rp;
    rp.qkv = s.qkv.as<Bf16>();
    rp.ld_qkv = qkv_dim;
    rp.q_out = s.q.as<Bf16>();
    rp.k_cache = kv->k(li);
    rp.v_cache = kv->v(li);
    rp.cache_row0 = p0;
    rp.rows = t;
    rp.position0 = p0;
    rp.num_q_heads = hq;
    rp.num_kv_heads = hkv;
    rp.head_dim = d;
    rp.cos = rope_cos_.as<float>();
    rp.sin = rope_sin_.as<float>();
    rp.table_rows = rope_rows_;
    TIERKV_RETURN_IF_ERROR(cu::RopeQkv(rp, st));
    ap.k = kv->k(li);
    ap.v = kv->v(li);
    if (sparse_plan_ != nullptr && t >= kernels::kSparseBlock &&
        ap.num_keys >= sparse_plan_->min_tokens) {
      TIERKV_RETURN_IF_ERROR(SparseLayerAttention(ap, li));
    } else {
      TIERKV_RETURN_IF_ERROR(cu::Attention(ap, st));
    }
    // The residual stream takes the attention output, then the MLP's, in place (fp32).
    TIERKV_RETURN_IF_ERROR(cu::Gemm(
        Linear(s.attn, w.wo, w.bo, t, hidden, q_dim).AddTo(s.h.as<float>()), st));
    TIERKV_RETURN_IF_ERROR(cu::RmsNorm({s.h.as<float>(), hidden, w.mlp_norm.as<Bf16>(),
                                        s.xn.as<Bf16>(), hidden, t, hidden, eps},
                                       st));
    TIERKV_RETURN_IF_ERROR(cu::Gemm(
        Linear(s.xn, w.w_gate_up, {}, t, 2 * inter, hidden).Into(s.gate_up.as<Bf16>()), st));
    TIERKV_RETURN_IF_ERROR(cu::SwiGlu(
        {s.gate_up.as<Bf16>(), 2 * inter, s.act.as<Bf16>(), inter, t, inter}, st));
    TIERKV_RETURN_IF_ERROR(
        cu::Gemm(Linear(s.act, w.w_down, {}, t, hidden, inter).AddTo(s.h.as<float>()), st));
  }
  kv->tokens_ = p0 + t;
  if (!logits) return absl::OkStatus();
  TIERKV_RETURN_IF_ERROR(cu::RmsNorm({s.h.as<float>() + (t - 1) * hidden, hidden,
                                      norm_.as<Bf16>(), s.xn.as<Bf16>(), hidden, 1, hidden, eps},
                                     st));
  const DeviceBuffer& head = config_.tie_word_embeddings ? embed_ : lm_head_;
  cu::GemmParams g = Linear(s.xn, head, {}, 1, config_.vocab_size, hidden);
  g.y_f32 = s.logits.as<float>();
  TIERKV_RETURN_IF_ERROR(cu::Gemm(g, st));
  return cu::CopyAsync(s.host_logits.data(), s.logits.data(), Bytes(config_.vocab_size, 4), st);
}

}  // namespace tierkv
