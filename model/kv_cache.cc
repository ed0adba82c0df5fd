#include "model/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/dtype.h"
#include "kernels/ops.h"

namespace tierkv {
namespace {

constexpr int64_t kKeyBlock = kernels::kAttentionKeyBlock;

absl::Status CheckSpec(const KvCache& kv, const ModelSpec& spec) {
  TIERKV_RETURN_IF_ERROR(spec.Validate());
  if (spec.num_layers != static_cast<uint32_t>(kv.num_layers()) ||
      spec.num_kv_heads != static_cast<uint32_t>(kv.num_kv_heads()) ||
      spec.head_dim != static_cast<uint32_t>(kv.head_dim())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model spec ", spec.model_id, " has ", spec.num_layers, " layers, ", spec.num_kv_heads,
        " KV heads of ", spec.head_dim, " dims but the KV cache has ", kv.num_layers(), ", ",
        kv.num_kv_heads(), ", ", kv.head_dim()));
  }
  return absl::OkStatus();
}

}  // namespace

KvCache::KvCache(int num_layers, int num_kv_heads, int head_dim)
    : num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      layers_(std::max(num_layers, 0)) {}

void KvCache::Resize(int64_t tokens) {
  const size_t floats = static_cast<size_t>(tokens * row_floats());
  for (Layer& l : layers_) {
    l.k.resize(floats);
    l.v.resize(floats);
    if (l.kt_blocks * kKeyBlock > tokens) {
      l.kt_blocks = tokens / kKeyBlock;
      l.kt.resize(static_cast<size_t>(l.kt_blocks * kKeyBlock * row_floats()));
    }
  }
  tokens_ = tokens;
}

void KvCache::Reserve(int64_t tokens) {
  const size_t floats = static_cast<size_t>(tokens * row_floats());
  for (Layer& l : layers_) {
    l.k.reserve(floats);
    l.v.reserve(floats);
    l.kt.reserve(static_cast<size_t>(tokens / kKeyBlock * kKeyBlock * row_floats()));
  }
}

void KvCache::WriteRows(int layer, int64_t row, int64_t count, const float* k, int64_t ldk,
                        const float* v, int64_t ldv) {
  Layer& l = layers_[layer];
  const int64_t n = row_floats();
  for (int64_t i = 0; i < count; ++i) {
    std::memcpy(l.k.data() + (row + i) * n, k + i * ldk, n * sizeof(float));
    std::memcpy(l.v.data() + (row + i) * n, v + i * ldv, n * sizeof(float));
  }
  // Transposed blocks that include a rewritten row are stale.
  if (count > 0 && l.kt_blocks > row / kKeyBlock) {
    l.kt_blocks = row / kKeyBlock;
    l.kt.resize(static_cast<size_t>(l.kt_blocks * kKeyBlock * n));
  }
}

absl::Status KvCache::UpdateKeyBlocks(int layer, kernels::ThreadPool* pool) {
  Layer& l = layers_[layer];
  const int64_t full = tokens_ / kKeyBlock;
  if (full <= l.kt_blocks) return absl::OkStatus();
  const int64_t block_floats = kKeyBlock * row_floats();
  l.kt.resize(static_cast<size_t>(full * block_floats));
  kernels::TransposeKeysParams p;
  p.k = l.k.data();
  p.ldk = row_floats();
  p.num_keys = tokens_;
  p.num_kv_heads = num_kv_heads_;
  p.head_dim = head_dim_;
  p.block_begin = l.kt_blocks;
  p.block_end = full;
  p.kt = l.kt.data() + l.kt_blocks * block_floats;
  TIERKV_RETURN_IF_ERROR(kernels::TransposeKeys(p, pool));
  l.kt_blocks = full;
  return absl::OkStatus();
}

absl::StatusOr<std::string> ExtractBlock(const KvCache& kv, uint64_t block_index,
                                         const ModelSpec& spec) {
  TIERKV_RETURN_IF_ERROR(CheckSpec(kv, spec));
  std::string out(spec.RawBlockBytes(), '\0');
  TIERKV_RETURN_IF_ERROR(ExtractBlockInto(
      kv, block_index, spec,
      std::span<uint8_t>(reinterpret_cast<uint8_t*>(out.data()), out.size())));
  return out;
}

absl::Status ExtractBlockInto(const KvCache& kv, uint64_t block_index, const ModelSpec& spec,
                              std::span<uint8_t> out) {
  TIERKV_RETURN_IF_ERROR(CheckSpec(kv, spec));
  if (out.size() != spec.RawBlockBytes()) {
    return absl::InvalidArgumentError(absl::StrCat("ExtractBlockInto: output of ", out.size(),
                                                   " bytes, a block of ", spec.model_id, " is ",
                                                   spec.RawBlockBytes()));
  }
  const uint64_t t = spec.block_tokens;
  if ((block_index + 1) * t > static_cast<uint64_t>(kv.tokens())) {
    return absl::OutOfRangeError(absl::StrCat("block ", block_index, " needs tokens [",
                                              block_index * t, ", ", (block_index + 1) * t,
                                              ") but the KV cache holds ", kv.tokens()));
  }
  const kernels::DType dtype = *kernels::ParseDTypeName(spec.kv_dtype);
  const size_t elems = t * kv.row_floats();
  const size_t tensor_bytes = elems * kernels::DTypeBytes(dtype);
  const size_t first = block_index * t * kv.row_floats();
  for (int l = 0; l < kv.num_layers(); ++l) {
    kernels::ConvertFromFloat(kv.k(l) + first, elems, dtype, out.data() + (2 * l) * tensor_bytes);
    kernels::ConvertFromFloat(kv.v(l) + first, elems, dtype,
                              out.data() + (2 * l + 1) * tensor_bytes);
  }
  return absl::OkStatus();
}

absl::Status AppendBlock(KvCache* kv, std::span<const uint8_t> bytes, const ModelSpec& spec) {
  TIERKV_RETURN_IF_ERROR(CheckSpec(*kv, spec));
  if (bytes.size() != spec.RawBlockBytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block object of ", bytes.size(), " bytes, but a raw block of ", spec.model_id, " (",
        spec.num_layers, " layers x K,V x ", spec.block_tokens, " tokens x ", spec.num_kv_heads,
        " heads x ", spec.head_dim, " dims x ", spec.kv_dtype, ") is ", spec.RawBlockBytes()));
  }
  const int64_t t = spec.block_tokens;
  if (kv->tokens() % t != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("AppendBlock: the KV cache holds ", kv->tokens(),
                     " tokens, not a multiple of block_tokens ", t,
                     "; blocks can only extend whole blocks"));
  }
  const kernels::DType dtype = *kernels::ParseDTypeName(spec.kv_dtype);
  const int64_t row = kv->tokens();
  const size_t elems = t * kv->row_floats();
  const size_t tensor_bytes = elems * kernels::DTypeBytes(dtype);
  std::vector<float> k(elems), v(elems);
  kv->Resize(row + t);
  for (int l = 0; l < kv->num_layers(); ++l) {
    kernels::ConvertToFloat(bytes.data() + (2 * l) * tensor_bytes, dtype, elems, k.data());
    kernels::ConvertToFloat(bytes.data() + (2 * l + 1) * tensor_bytes, dtype, elems, v.data());
    kv->WriteRows(l, row, t, k.data(), kv->row_floats(), v.data(), kv->row_floats());
  }
  return absl::OkStatus();
}

}  // namespace tierkv
