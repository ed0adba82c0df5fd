#include "model/runtime.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/status.h"

#if TIERKV_HAVE_CUDA
#include "kernels/cuda/memory.h"
#include "kernels/cuda/ops.h"
#include "model/cuda_model.h"
#endif

namespace tierkv {
namespace {

absl::Status CheckBlockSizes(std::span<const std::string> blocks, const ModelSpec& spec) {
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i].size() != spec.RawBlockBytes()) {
      return absl::InvalidArgumentError(absl::StrCat("block ", i, " is ", blocks[i].size(),
                                                     " bytes; a block of this model is ",
                                                     spec.RawBlockBytes()));
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------
// CPU

class CpuSequence : public Sequence {
 public:
  CpuSequence(KvCache kv, const ModelSpec* spec) : kv_(std::move(kv)), spec_(spec) {}
  int64_t tokens() const override { return kv_.tokens(); }
  absl::Status AppendBlocks(std::span<const std::string> blocks) override {
    TIERKV_RETURN_IF_ERROR(CheckBlockSizes(blocks, *spec_));
    const int64_t before = kv_.tokens();
    for (const std::string& b : blocks) {
      absl::Status s = AppendBlock(&kv_, b, *spec_);
      if (!s.ok()) {
        kv_.Truncate(before);
        return s;
      }
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExtractBlock(uint64_t index) const override {
    return tierkv::ExtractBlock(kv_, index, *spec_);
  }
  KvCache* kv() { return &kv_; }

 private:
  KvCache kv_;
  const ModelSpec* spec_;  // The runtime's; outlives the sequence.
};

class CpuRuntime : public Runtime {
 public:
  explicit CpuRuntime(std::unique_ptr<Model> model) : model_(std::move(model)) {}
  kernels::Device device() const override { return kernels::Device::kCpu; }
  const ModelSpec& spec() const override { return model_->spec(); }
  int64_t vocab_size() const override { return model_->vocab_size(); }
  int64_t max_positions() const override { return model_->max_positions(); }
  absl::StatusOr<std::unique_ptr<Sequence>> NewSequence(int64_t max_tokens) const override {
    if (max_tokens < 1 || max_tokens > max_positions()) {
      return absl::InvalidArgumentError(absl::StrCat("a sequence holds 1 to ", max_positions(),
                                                     " tokens; asked for ", max_tokens));
    }
    return std::make_unique<CpuSequence>(model_->NewKvCache(), &model_->spec());
  }
  absl::StatusOr<std::vector<float>> Prefill(std::span<const uint32_t> tokens,
                                             Sequence* seq) const override {
    return model_->Prefill(tokens, static_cast<CpuSequence*>(seq)->kv());
  }

 private:
  std::unique_ptr<Model> model_;
};

#if TIERKV_HAVE_CUDA
// ---------------------------------------------------------------------------------------
// GPU

namespace cu = kernels::cuda;

// Pinned buffers through which block objects move between host strings and the device, two
// so that filling one overlaps the DMA of the other.
class Staging {
 public:
  static constexpr size_t kBytes = 32 << 20;

  absl::Status Init() {
    for (int i = 0; i < 2; ++i) {
      TIERKV_ASSIGN_OR_RETURN(buf_[i], cu::PinnedBuffer::Allocate(kBytes));
      TIERKV_ASSIGN_OR_RETURN(done_[i], cu::EventOwner::Create());
    }
    return absl::OkStatus();
  }
  absl::Mutex& mu() { return mu_; }
  cu::PinnedBuffer& buffer(int i) { return buf_[i]; }
  // Recorded after the copy that reads buffer(i).
  cu::EventOwner& done(int i) { return done_[i]; }

 private:
  absl::Mutex mu_;
  cu::PinnedBuffer buf_[2];
  cu::EventOwner done_[2];
};

class GpuSequence : public Sequence {
 public:
  GpuSequence(CudaKvCache kv, const CudaModel* model, Staging* staging)
      : kv_(std::move(kv)), model_(model), staging_(staging) {}
  int64_t tokens() const override { return kv_.tokens(); }

  absl::Status AppendBlocks(std::span<const std::string> blocks) override {
    const ModelSpec& spec = model_->spec();
    TIERKV_RETURN_IF_ERROR(CheckBlockSizes(blocks, spec));
    const size_t bytes = spec.RawBlockBytes();
    const int64_t before = kv_.tokens();
    if (before % spec.block_tokens != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the sequence holds ", before, " tokens, not a multiple of the block size ",
          spec.block_tokens));
    }
    if (before + static_cast<int64_t>(blocks.size()) * spec.block_tokens > kv_.capacity()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          blocks.size(), " blocks do not fit after ", before, " tokens in a sequence of ",
          kv_.capacity()));
    }
    if (bytes > Staging::kBytes) {
      return absl::InternalError(
          absl::StrCat("blocks of ", bytes, " bytes exceed the staging buffer"));
    }
    const size_t per_batch = Staging::kBytes / bytes;
    absl::MutexLock lock(&staging_->mu());
    absl::Status s;
    for (size_t done = 0, batch = 0; s.ok() && done < blocks.size(); ++batch) {
      const size_t n = std::min(per_batch, blocks.size() - done);
      const int b = static_cast<int>(batch % 2);
      // The copy that read this buffer two batches ago must be done before it is refilled;
      // the other buffer's copy keeps running meanwhile.
      s = staging_->done(b).Synchronize();
      if (!s.ok()) break;
      uint8_t* dst = staging_->buffer(b).as<uint8_t>();
      for (size_t i = 0; i < n; ++i) std::memcpy(dst + i * bytes, blocks[done + i].data(), bytes);
      s = kv_.AppendBlocks(dst, static_cast<int64_t>(n), spec, model_->stream());
      if (s.ok()) s = staging_->done(b).Record(model_->stream());
      done += n;
    }
    if (s.ok()) s = cu::StreamSynchronize(model_->stream());
    if (!s.ok()) kv_.Truncate(before);
    return s;
  }

  absl::StatusOr<std::string> ExtractBlock(uint64_t index) const override {
    const ModelSpec& spec = model_->spec();
    const size_t bytes = spec.RawBlockBytes();
    if (bytes > Staging::kBytes) {
      return absl::InternalError(
          absl::StrCat("blocks of ", bytes, " bytes exceed the staging buffer"));
    }
    absl::MutexLock lock(&staging_->mu());
    cu::PinnedBuffer& buf = staging_->buffer(0);
    TIERKV_RETURN_IF_ERROR(
        kv_.ExtractBlocks(static_cast<int64_t>(index), 1, spec, buf.data(), model_->stream()));
    TIERKV_RETURN_IF_ERROR(cu::StreamSynchronize(model_->stream()));
    return std::string(buf.as<char>(), bytes);
  }

  CudaKvCache* kv() { return &kv_; }

 private:
  CudaKvCache kv_;
  const CudaModel* model_;  // The runtime's; outlives the sequence.
  Staging* staging_;        // Same.
};

class GpuRuntime : public Runtime {
 public:
  explicit GpuRuntime(std::unique_ptr<CudaModel> model) : model_(std::move(model)) {}
  absl::Status Init() { return staging_.Init(); }
  kernels::Device device() const override { return kernels::Device::kCuda; }
  const ModelSpec& spec() const override { return model_->spec(); }
  int64_t vocab_size() const override { return model_->config().vocab_size; }
  int64_t max_positions() const override { return model_->config().max_position_embeddings; }
  absl::StatusOr<std::unique_ptr<Sequence>> NewSequence(int64_t max_tokens) const override {
    TIERKV_ASSIGN_OR_RETURN(CudaKvCache kv, model_->NewKvCache(max_tokens));
    return std::make_unique<GpuSequence>(std::move(kv), model_.get(), &staging_);
  }
  absl::StatusOr<std::vector<float>> Prefill(std::span<const uint32_t> tokens,
                                             Sequence* seq) const override {
    return model_->Prefill(tokens, static_cast<GpuSequence*>(seq)->kv());
  }

 private:
  std::unique_ptr<CudaModel> model_;
  mutable Staging staging_;
};
#endif  // TIERKV_HAVE_CUDA

}  // namespace

bool GpuRuntimeAvailable() {
#if TIERKV_HAVE_CUDA
  return kernels::cuda::Available();
#else
  return false;
#endif
}

std::unique_ptr<Runtime> Runtime::OnCpu(std::unique_ptr<Model> model) {
  return std::make_unique<CpuRuntime>(std::move(model));
}

absl::StatusOr<std::unique_ptr<Runtime>> Runtime::Load(const std::string& name_or_dir,
                                                       const RuntimeOptions& options) {
  if (options.device != "auto" && options.device != "cpu" && options.device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("device \"", options.device, "\" is not one of auto, cpu, cuda"));
  }
  const bool gpu =
      options.device == "cuda" || (options.device == "auto" && GpuRuntimeAvailable());
  if (gpu) {
#if TIERKV_HAVE_CUDA
    CudaModelOptions o;
    o.model_id = options.model_id;
    o.block_tokens = options.block_tokens;
    TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<CudaModel> model, CudaModel::Load(name_or_dir, o));
    auto runtime = std::make_unique<GpuRuntime>(std::move(model));
    TIERKV_RETURN_IF_ERROR(runtime->Init());
    return runtime;
#else
    return absl::UnavailableError(
        "device cuda: this build has no CUDA (configure with a CUDA toolkit, TIERKV_CUDA=ON)");
#endif
  }
  ModelOptions o;
  o.num_threads = options.num_threads;
  o.kv_dtype = options.kv_dtype;
  o.model_id = options.model_id;
  o.block_tokens = options.block_tokens;
  TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(name_or_dir, o));
  return OnCpu(std::move(model));
}

}  // namespace tierkv
