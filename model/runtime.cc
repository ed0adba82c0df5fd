#include "model/runtime.h"

#include <algorithm>
#include <iostream>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/status.h"
#include "kernels/thread_pool.h"

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
  CpuSequence(KvCache kv, const ModelSpec* spec, int64_t capacity)
      : kv_(std::move(kv)), spec_(spec), capacity_(capacity) {}
  int64_t tokens() const override { return kv_.tokens(); }
  // RESOURCE_EXHAUSTED when `more` tokens do not fit, as on the GPU.
  absl::Status CheckRoom(int64_t more) const {
    if (kv_.tokens() + more <= capacity_) return absl::OkStatus();
    return absl::ResourceExhaustedError(absl::StrCat(more, " more tokens do not fit after ",
                                                     kv_.tokens(), " in a sequence of ",
                                                     capacity_));
  }
  absl::Status AppendBlocks(std::span<const std::string> blocks) override {
    TIERKV_RETURN_IF_ERROR(CheckBlockSizes(blocks, *spec_));
    TIERKV_RETURN_IF_ERROR(
        CheckRoom(static_cast<int64_t>(blocks.size()) * spec_->block_tokens));
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
  absl::StatusOr<size_t> AppendBlocksInPlace(
      std::span<const std::span<const PayloadPiece>> blocks,
      VerifyFn verify) override {
    for (size_t i = 0; i < blocks.size(); ++i) {
      size_t sum = 0;
      for (const PayloadPiece& p : blocks[i]) sum += p.size;
      if (sum != spec_->RawBlockBytes()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "block ", i, " is ", sum, " bytes; a block of this model is ", spec_->RawBlockBytes()));
      }
    }
    TIERKV_RETURN_IF_ERROR(
        CheckRoom(static_cast<int64_t>(blocks.size()) * spec_->block_tokens));
    // Copy first, then check the copies: the checksums cover exactly the bytes converted,
    // whatever happens to the source afterwards.
    const size_t bytes = spec_->RawBlockBytes();
    std::string copies(blocks.size() * bytes, '\0');
    std::vector<PayloadPiece> own(blocks.size());
    for (size_t i = 0; i < blocks.size(); ++i) {
      size_t at = i * bytes;
      for (const PayloadPiece& p : blocks[i]) {
        std::memcpy(copies.data() + at, p.data, p.size);
        at += p.size;
      }
      own[i] = {copies.data() + i * bytes, bytes};
    }
    std::vector<std::span<const PayloadPiece>> own_blocks;
    for (const PayloadPiece& p : own) own_blocks.emplace_back(&p, 1);
    const size_t good = std::min(verify(own_blocks), blocks.size());
    const int64_t before = kv_.tokens();
    for (size_t i = 0; i < good; ++i) {
      absl::Status s = AppendBlock(
          &kv_, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(own[i].data), bytes),
          *spec_);
      if (!s.ok()) {
        kv_.Truncate(before);
        return s;
      }
    }
    return good;
  }
  absl::StatusOr<size_t> AppendDeviceBlocks(std::span<const std::span<const PayloadPiece>>,
                                            std::span<const uint64_t>) override {
    return absl::FailedPreconditionError(
        "the CPU runtime cannot read device memory; its cache has no GPU tier");
  }
  absl::StatusOr<std::string> ExtractBlock(uint64_t index) const override {
    return tierkv::ExtractBlock(kv_, index, *spec_);
  }
  absl::Status WriteBlocksInPlace(uint64_t first,
                                  std::span<const std::span<const PayloadTarget>> blocks,
                                  std::span<uint64_t> checksums) const override {
    const size_t bytes = spec_->RawBlockBytes();
    if (!checksums.empty() && checksums.size() != blocks.size()) {
      return absl::InvalidArgumentError("one checksum slot per block, or none");
    }
    std::string joined;
    for (size_t i = 0; i < blocks.size(); ++i) {
      size_t sum = 0;
      for (const PayloadTarget& p : blocks[i]) sum += p.size;
      if (sum != bytes) {
        return absl::InvalidArgumentError(
            absl::StrCat("block ", i, " has room for ", sum, " bytes; a block is ", bytes));
      }
    }
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (blocks[i].size() == 1) {
        TIERKV_RETURN_IF_ERROR(ExtractBlockInto(
            kv_, first + i, *spec_,
            std::span<uint8_t>(static_cast<uint8_t*>(blocks[i][0].data), bytes)));
        continue;
      }
      TIERKV_ASSIGN_OR_RETURN(joined, tierkv::ExtractBlock(kv_, first + i, *spec_));
      size_t at = 0;
      for (const PayloadTarget& p : blocks[i]) {
        std::memcpy(p.data, joined.data() + at, p.size);
        at += p.size;
      }
    }
    // The CPU wrote every byte itself, so the written bytes are the sequence's own.
    if (!checksums.empty()) ChecksumsOf(blocks, checksums);
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<std::string>> ExtractBlocks(uint64_t first,
                                                         uint64_t count) const override {
    std::vector<std::string> out;
    out.reserve(count);
    for (uint64_t i = first; i < first + count; ++i) {
      TIERKV_ASSIGN_OR_RETURN(std::string b, tierkv::ExtractBlock(kv_, i, *spec_));
      out.push_back(std::move(b));
    }
    return out;
  }
  KvCache* kv() { return &kv_; }

 private:
  KvCache kv_;
  const ModelSpec* spec_;  // The runtime's; outlives the sequence.
  const int64_t capacity_;
};

class CpuRuntime : public Runtime {
 public:
  explicit CpuRuntime(std::unique_ptr<Model> model) : model_(std::move(model)) {}
  kernels::Device device() const override { return kernels::Device::kCpu; }
  const ModelSpec& spec() const override { return model_->spec(); }
  int64_t vocab_size() const override { return model_->vocab_size(); }
  int64_t max_positions() const override { return model_->max_positions(); }
  absl::StatusOr<std::unique_ptr<HostMemoryRegistration>> RegisterHostMemory(
      void* base, size_t bytes) const override {
    return std::make_unique<HostMemoryRegistration>();
  }
  absl::StatusOr<std::unique_ptr<DeviceArena>> AllocateDeviceArena(size_t) const override {
    return absl::FailedPreconditionError("the CPU runtime has no device memory for a GPU tier");
  }
  absl::StatusOr<std::unique_ptr<Sequence>> NewSequence(int64_t max_tokens) const override {
    if (max_tokens < 1 || max_tokens > max_positions()) {
      return absl::InvalidArgumentError(absl::StrCat("a sequence holds 1 to ", max_positions(),
                                                     " tokens; asked for ", max_tokens));
    }
    return std::make_unique<CpuSequence>(model_->NewKvCache(), &model_->spec(), max_tokens);
  }
  absl::StatusOr<std::vector<float>> Prefill(std::span<const uint32_t> tokens,
                                             Sequence* seq) const override {
    auto* cpu = static_cast<CpuSequence*>(seq);
    TIERKV_RETURN_IF_ERROR(cpu->CheckRoom(static_cast<int64_t>(tokens.size())));
    return model_->Prefill(tokens, cpu->kv());
  }

 private:
  std::unique_ptr<Model> model_;
};

#if TIERKV_HAVE_CUDA
// ---------------------------------------------------------------------------------------
// GPU

namespace cu = kernels::cuda;

// Buffers through which block objects move between host memory and a sequence's KV: device
// memory where whole blocks land before ScatterKvBlocks spreads them, and a pinned buffer for
// blocks on their way out. One transfer at a time per runtime (the mutex).
class Staging {
 public:
  static constexpr size_t kDeviceBytes = 256 << 20;
  static constexpr size_t kPinnedBytes = 64 << 20;
  static constexpr size_t kMaxChecksums = 65536;

  absl::Status Init() {
    TIERKV_ASSIGN_OR_RETURN(device_, cu::DeviceBuffer::Allocate(kDeviceBytes));
    TIERKV_ASSIGN_OR_RETURN(pinned_, cu::PinnedBuffer::Allocate(kPinnedBytes));
    TIERKV_ASSIGN_OR_RETURN(sums_device_, cu::DeviceBuffer::Allocate(kMaxChecksums * 8));
    TIERKV_ASSIGN_OR_RETURN(sums_pinned_, cu::PinnedBuffer::Allocate(kMaxChecksums * 8));
    TIERKV_ASSIGN_OR_RETURN(starts_device_, cu::DeviceBuffer::Allocate(kMaxChecksums * 8));
    TIERKV_ASSIGN_OR_RETURN(starts_pinned_, cu::PinnedBuffer::Allocate(kMaxChecksums * 8));
    for (cu::EventOwner& e : events_) {
      TIERKV_ASSIGN_OR_RETURN(e, cu::EventOwner::Create());
    }
    return absl::OkStatus();
  }
  // Two events marking the copies into each half of pinned().
  cu::EventOwner* events() { return events_; }
  absl::Mutex& mu() { return mu_; }
  cu::DeviceBuffer& device() { return device_; }
  cu::PinnedBuffer& pinned() { return pinned_; }
  // Block checksums computed on the device, and their way to the host.
  uint64_t* sums_device() { return sums_device_.as<uint64_t>(); }
  uint64_t* sums_pinned() { return sums_pinned_.as<uint64_t>(); }
  // Block start addresses for BlockChecksumsAt, and their way to the device.
  const void** starts_pinned() { return starts_pinned_.as<const void*>(); }
  const void** starts_device() { return starts_device_.as<const void*>(); }

 private:
  absl::Mutex mu_;
  cu::DeviceBuffer device_;
  cu::PinnedBuffer pinned_;
  cu::EventOwner events_[2];
  cu::DeviceBuffer sums_device_;  // kMaxChecksums block checksums.
  cu::PinnedBuffer sums_pinned_;
  cu::DeviceBuffer starts_device_;  // kMaxChecksums block start addresses.
  cu::PinnedBuffer starts_pinned_;
};

// The widest alignment (16, 8 or 1) of every address in `starts`.
size_t CommonAlignment(std::span<const void* const> starts) {
  uintptr_t any = 0;
  for (const void* p : starts) any |= reinterpret_cast<uintptr_t>(p);
  return any % 16 == 0 ? 16 : (any % 8 == 0 ? 8 : 1);
}

// Sets sums[i] to the checksum of the block of `block_bytes` starting at device address
// starts[i], hashing all of them in one launch on `stream` (starts go through the pinned
// and device arrays given, of at least starts.size() entries). Waits for the result.
absl::Status DeviceChecksumsAt(std::span<const void* const> starts, size_t block_bytes,
                               const void** starts_pinned, const void** starts_device,
                               uint64_t* sums_device, uint64_t* sums_pinned, cu::Stream stream) {
  std::memcpy(starts_pinned, starts.data(), starts.size() * sizeof(void*));
  absl::Status s = cu::CopyAsync(starts_device, starts_pinned, starts.size() * sizeof(void*),
                                 stream);
  if (s.ok()) {
    s = cu::BlockChecksumsAt(starts_device, CommonAlignment(starts), block_bytes,
                             static_cast<int64_t>(starts.size()), sums_device, stream);
  }
  if (s.ok()) s = cu::CopyAsync(sums_pinned, sums_device, starts.size() * 8, stream);
  // Wait even after an error: copies already queued still use the pinned arrays.
  absl::Status synced = cu::StreamSynchronize(stream);
  return s.ok() ? synced : s;
}

class GpuHostRegistration : public HostMemoryRegistration {
 public:
  explicit GpuHostRegistration(cu::HostRegistration r) : r_(std::move(r)) {}

 private:
  cu::HostRegistration r_;
};

// Device memory of finished sequences, kept for the next ones: allocating gigabytes of KV
// with cudaMalloc costs milliseconds a request.
class KvMemoryCache {
 public:
  static constexpr size_t kMaxBytes = size_t{16} << 30;

  // A buffer of at least `bytes` (and at most twice that, so small sequences do not pin
  // large buffers), or an empty one.
  cu::DeviceBuffer Take(size_t bytes) {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < free_.size(); ++i) {
      if (free_[i].size() >= bytes && free_[i].size() <= 2 * bytes) {
        cu::DeviceBuffer b = std::move(free_[i]);
        free_.erase(free_.begin() + static_cast<ptrdiff_t>(i));
        held_ -= b.size();
        return b;
      }
    }
    return {};
  }
  // Frees every kept buffer (when the device runs out of memory).
  void Clear() {
    absl::MutexLock lock(&mu_);
    free_.clear();
    held_ = 0;
  }
  void Give(cu::DeviceBuffer b) {
    if (b.size() == 0) return;
    absl::MutexLock lock(&mu_);
    while (!free_.empty() && held_ + b.size() > kMaxBytes) {
      held_ -= free_.front().size();
      free_.erase(free_.begin());  // Oldest first.
    }
    if (held_ + b.size() > kMaxBytes) return;  // Larger than the whole cache: just free it.
    held_ += b.size();
    free_.push_back(std::move(b));
  }

 private:
  absl::Mutex mu_;
  std::vector<cu::DeviceBuffer> free_ ABSL_GUARDED_BY(mu_);
  size_t held_ ABSL_GUARDED_BY(mu_) = 0;
};

class GpuSequence : public Sequence {
 public:
  GpuSequence(CudaKvCache kv, const CudaModel* model, Staging* staging, KvMemoryCache* memory)
      : kv_(std::move(kv)), model_(model), staging_(staging), memory_(memory) {}
  ~GpuSequence() override {
    // Work queued on the model's stream may still use this KV: wait before handing it on.
    if (cu::StreamSynchronize(model_->stream()).ok()) memory_->Give(std::move(kv_).TakeStorage());
  }
  int64_t tokens() const override { return kv_.tokens(); }

  // Blocks in ordinary (pageable) memory, as a worker that fetched them over UCX holds them:
  // all CPU threads copy a batch into one half of the pinned staging while the other half's
  // batch crosses PCIe (the driver would otherwise stage pageable memory one thread at a time).
  absl::Status AppendBlocks(std::span<const std::string> blocks) override {
    const ModelSpec& spec = model_->spec();
    TIERKV_RETURN_IF_ERROR(CheckBlockSizes(blocks, spec));
    const size_t bytes = spec.RawBlockBytes();
    const size_t half = Staging::kPinnedBytes / 2;
    if (bytes > half) {
      return absl::InternalError(
          absl::StrCat("blocks of ", bytes, " bytes exceed the staging buffer"));
    }
    const size_t per = half / bytes;
    const int64_t before = kv_.tokens();
    absl::MutexLock lock(&staging_->mu());
    cu::EventOwner* done = staging_->events();
    uint8_t* pinned = staging_->pinned().as<uint8_t>();
    absl::Status s;
    for (size_t at = 0, b = 0; s.ok() && at < blocks.size(); at += per, ++b) {
      const size_t n = std::min(per, blocks.size() - at);
      uint8_t* buf = pinned + (b % 2) * half;
      s = done[b % 2].Synchronize();  // The copy that read this half two batches ago.
      if (!s.ok()) break;
      kernels::ParallelFor(kernels::ThreadPool::Default(), static_cast<int64_t>(n),
                           [&](int64_t i) {
                             std::memcpy(buf + i * bytes, blocks[at + i].data(), bytes);
                           });
      std::vector<PayloadPiece> pieces(n);
      std::vector<std::span<const PayloadPiece>> spans;
      for (size_t i = 0; i < n; ++i) {
        pieces[i] = {buf + i * bytes, bytes};
        spans.emplace_back(&pieces[i], 1);
      }
      s = kv_.AppendBlocksFromHost(spans, spec, staging_->device().data(),
                                   staging_->device().size(), model_->stream());
      if (s.ok()) s = done[b % 2].Record(model_->stream());
    }
    // Wait even after an error: copies already queued still read the staging.
    absl::Status synced = cu::StreamSynchronize(model_->stream());
    if (s.ok()) s = synced;
    if (!s.ok()) kv_.Truncate(before);
    return s;
  }

  absl::StatusOr<size_t> AppendBlocksInPlace(
      std::span<const std::span<const PayloadPiece>> blocks,
      VerifyFn verify) override {
    const ModelSpec& spec = model_->spec();
    const int64_t before = kv_.tokens();
    absl::MutexLock lock(&staging_->mu());
    absl::Status s = kv_.AppendBlocksFromHost(blocks, spec, staging_->device().data(),
                                              staging_->device().size(), model_->stream());
    // Checksums are checked while the copies run; nothing reads the new KV before both end.
    const size_t good = s.ok() ? std::min(verify(blocks), blocks.size()) : 0;
    // Wait even after an error: copies already queued still read the caller's memory.
    absl::Status synced = cu::StreamSynchronize(model_->stream());
    if (s.ok()) s = synced;
    if (!s.ok()) {
      kv_.Truncate(before);
      return s;
    }
    kv_.Truncate(before + static_cast<int64_t>(good) * spec.block_tokens);
    return good;
  }

  absl::StatusOr<size_t> AppendDeviceBlocks(std::span<const std::span<const PayloadPiece>> blocks,
                                            std::span<const uint64_t> checksums) override {
    if (checksums.size() != blocks.size()) {
      return absl::InvalidArgumentError("one checksum per block");
    }
    const ModelSpec& spec = model_->spec();
    const int64_t before = kv_.tokens();
    absl::MutexLock lock(&staging_->mu());
    bool whole = true;  // Every block in one piece, as the GPU tier's pages mostly hold them.
    for (size_t i = 0; i < blocks.size(); ++i) {
      size_t sum = 0;
      for (const PayloadPiece& piece : blocks[i]) sum += piece.size;
      if (sum != spec.RawBlockBytes()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "block ", i, " is ", sum, " bytes; a block of this model is ", spec.RawBlockBytes()));
      }
      whole = whole && blocks[i].size() == 1;
    }
    if (whole) {
      // All blocks hashed where they lie in one launch per kMaxChecksums (thousands of warps
      // in flight), then only the intact prefix is copied into the KV. The read lease keeps
      // the bytes unchanged between the check and the copy.
      size_t good = 0;
      for (size_t at = 0; at < blocks.size() && good == at;) {
        const size_t n = std::min(Staging::kMaxChecksums, blocks.size() - at);
        std::vector<const void*> starts(n);
        for (size_t i = 0; i < n; ++i) starts[i] = blocks[at + i][0].data;
        TIERKV_RETURN_IF_ERROR(DeviceChecksumsAt(
            starts, spec.RawBlockBytes(), staging_->starts_pinned(), staging_->starts_device(),
            staging_->sums_device(), staging_->sums_pinned(), model_->stream()));
        size_t intact = 0;
        while (intact < n && staging_->sums_pinned()[intact] == checksums[at + intact]) ++intact;
        // The starts are on the device already: the scatter reads the blocks where they lie
        // (16-byte loads need 16-byte-aligned starts; the tier's pages are).
        absl::Status s =
            CommonAlignment(starts) == 16
                ? kv_.AppendBlocksAt(staging_->starts_device(), static_cast<int64_t>(intact),
                                     spec, model_->stream())
                : kv_.AppendBlocksFromHost(blocks.subspan(at, intact), spec,
                                           staging_->device().data(),
                                           staging_->device().size(), model_->stream());
        absl::Status synced = cu::StreamSynchronize(model_->stream());
        if (s.ok()) s = synced;
        if (!s.ok()) {
          kv_.Truncate(before);
          return s;
        }
        good += intact;
        at += n;
      }
      return good;
    }
    // Blocks in pieces: in batches of at most kMaxChecksums blocks, copies on the device
    // into the staging, checksums of what landed there, then the KV; a batch with a bad
    // block ends the run.
    size_t good = 0;
    absl::Status s;
    for (size_t at = 0; s.ok() && at < blocks.size() && good == at;) {
      const size_t n = std::min(Staging::kMaxChecksums, blocks.size() - at);
      const int64_t batch_start = kv_.tokens();
      s = kv_.AppendBlocksFromHost(blocks.subspan(at, n), spec, staging_->device().data(),
                                   staging_->device().size(), model_->stream(),
                                   staging_->sums_device());
      if (s.ok()) {
        s = cu::CopyAsync(staging_->sums_pinned(), staging_->sums_device(), n * 8,
                          model_->stream());
      }
      absl::Status synced = cu::StreamSynchronize(model_->stream());
      if (s.ok()) s = synced;
      if (!s.ok()) break;
      size_t intact = 0;
      while (intact < n && staging_->sums_pinned()[intact] == checksums[at + intact]) ++intact;
      kv_.Truncate(batch_start + static_cast<int64_t>(intact) * spec.block_tokens);
      good += intact;
      at += n;
    }
    if (!s.ok()) {
      kv_.Truncate(before);
      return s;
    }
    return good;
  }

  absl::StatusOr<std::string> ExtractBlock(uint64_t index) const override {
    const ModelSpec& spec = model_->spec();
    const size_t bytes = spec.RawBlockBytes();
    if (bytes > Staging::kPinnedBytes) {
      return absl::InternalError(
          absl::StrCat("blocks of ", bytes, " bytes exceed the staging buffer"));
    }
    absl::MutexLock lock(&staging_->mu());
    cu::PinnedBuffer& buf = staging_->pinned();
    TIERKV_RETURN_IF_ERROR(
        kv_.ExtractBlocks(static_cast<int64_t>(index), 1, spec, buf.data(), model_->stream()));
    TIERKV_RETURN_IF_ERROR(cu::StreamSynchronize(model_->stream()));
    return std::string(buf.as<char>(), bytes);
  }

  absl::Status WriteBlocksInPlace(uint64_t first,
                                  std::span<const std::span<const PayloadTarget>> blocks,
                                  std::span<uint64_t> checksums) const override {
    if (!checksums.empty() && checksums.size() != blocks.size()) {
      return absl::InvalidArgumentError("one checksum slot per block, or none");
    }
    absl::MutexLock lock(&staging_->mu());
    absl::Status s;
    // In batches of at most Staging::kMaxChecksums blocks when checksums are wanted.
    const size_t step = checksums.empty() ? blocks.size() : Staging::kMaxChecksums;
    for (size_t at = 0; s.ok() && at < blocks.size(); at += step) {
      const size_t n = std::min(step, blocks.size() - at);
      s = kv_.ExtractBlocksToHost(static_cast<int64_t>(first + at), blocks.subspan(at, n),
                                  model_->spec(), staging_->device().data(),
                                  staging_->device().size(), model_->stream(),
                                  checksums.empty() ? nullptr : staging_->sums_device());
      if (s.ok() && !checksums.empty()) {
        s = cu::CopyAsync(staging_->sums_pinned(), staging_->sums_device(), n * 8,
                          model_->stream());
      }
      // Wait even after an error: copies already queued still write the caller's memory.
      absl::Status synced = cu::StreamSynchronize(model_->stream());
      if (s.ok()) s = synced;
      if (s.ok() && !checksums.empty()) {
        std::memcpy(checksums.data() + at, staging_->sums_pinned(), n * 8);
      }
    }
    return s;
  }
  absl::StatusOr<std::vector<std::string>> ExtractBlocks(uint64_t first,
                                                         uint64_t count) const override {
    const ModelSpec& spec = model_->spec();
    const size_t bytes = spec.RawBlockBytes();
    const size_t half = Staging::kPinnedBytes / 2;  // Two halves: copy one, drain the other.
    if (bytes > half) {
      return absl::InternalError(
          absl::StrCat("blocks of ", bytes, " bytes exceed the staging buffer"));
    }
    if ((first + count) * spec.block_tokens > static_cast<uint64_t>(kv_.tokens())) {
      return absl::OutOfRangeError(absl::StrCat("blocks [", first, ", ", first + count,
                                                ") are not all in a sequence of ",
                                                kv_.tokens(), " tokens"));
    }
    std::vector<std::string> out(count);
    const uint64_t per = half / bytes;
    absl::MutexLock lock(&staging_->mu());
    uint8_t* pinned = staging_->pinned().as<uint8_t>();
    cu::EventOwner* done = staging_->events();
    // Batch b goes to half b % 2; while it copies, the host drains batch b - 1.
    uint64_t batches = (count + per - 1) / per;
    for (uint64_t b = 0; b <= batches; ++b) {
      if (b < batches) {
        const uint64_t n = std::min(per, count - b * per);
        TIERKV_RETURN_IF_ERROR(kv_.ExtractBlocks(static_cast<int64_t>(first + b * per),
                                                 static_cast<int64_t>(n), spec,
                                                 pinned + (b % 2) * half, model_->stream()));
        TIERKV_RETURN_IF_ERROR(done[b % 2].Record(model_->stream()));
      }
      if (b > 0) {
        const uint64_t p = b - 1;
        TIERKV_RETURN_IF_ERROR(done[p % 2].Synchronize());
        const uint64_t n = std::min(per, count - p * per);
        // New strings fault their pages in as they are written: spread that over the CPUs.
        kernels::ParallelFor(kernels::ThreadPool::Default(), static_cast<int64_t>(n),
                             [&](int64_t i) {
                               out[p * per + i].assign(
                                   reinterpret_cast<const char*>(pinned + (p % 2) * half +
                                                                 i * bytes),
                                   bytes);
                             });
      }
    }
    return out;
  }

  CudaKvCache* kv() { return &kv_; }

 private:
  CudaKvCache kv_;
  const CudaModel* model_;  // The runtime's; outlives the sequence.
  Staging* staging_;        // Same.
  KvMemoryCache* memory_;   // Same.
};

// The GPU tier's memory: one cudaMalloc'ed region, its own stream for copies out, and a
// scratch buffer where blocks scattered over the region are gathered (device to device) so
// that one checksum kernel hashes many of them.
class GpuDeviceArena : public DeviceArena {
 public:
  static constexpr size_t kAlign = 64 << 10;
  static constexpr size_t kScratchBytes = 256 << 20;  // The largest block the cache takes.
  static constexpr size_t kMinHashedBytes = 240;       // The checksum kernel's lower bound.
  static constexpr size_t kMaxSums = 16384;

  static absl::StatusOr<std::unique_ptr<DeviceArena>> Create(size_t bytes) {
    if (bytes == 0) return absl::InvalidArgumentError("a GPU tier of 0 bytes");
    auto a = std::unique_ptr<GpuDeviceArena>(new GpuDeviceArena());
    TIERKV_ASSIGN_OR_RETURN(a->memory_, cu::DeviceBuffer::Allocate(bytes + kAlign));
    const auto p = reinterpret_cast<uintptr_t>(a->memory_.data());
    a->base_ = reinterpret_cast<uint8_t*>((p + kAlign - 1) / kAlign * kAlign);
    a->bytes_ = bytes;
    TIERKV_ASSIGN_OR_RETURN(a->stream_, cu::StreamOwner::Create());
    TIERKV_ASSIGN_OR_RETURN(a->scratch_, cu::DeviceBuffer::Allocate(kScratchBytes));
    TIERKV_ASSIGN_OR_RETURN(a->sums_device_, cu::DeviceBuffer::Allocate(kMaxSums * 8));
    TIERKV_ASSIGN_OR_RETURN(a->sums_pinned_, cu::PinnedBuffer::Allocate(kMaxSums * 8));
    TIERKV_ASSIGN_OR_RETURN(a->starts_device_, cu::DeviceBuffer::Allocate(kMaxSums * 8));
    TIERKV_ASSIGN_OR_RETURN(a->starts_pinned_, cu::PinnedBuffer::Allocate(kMaxSums * 8));
    absl::StatusOr<cu::DeviceInfo> info = cu::CurrentDevice();
    a->name_ = info.ok() ? absl::StrCat("cuda:", info->ordinal, " ", info->name) : "cuda";
    return std::unique_ptr<DeviceArena>(std::move(a));
  }

  uint8_t* base() const override { return base_; }
  size_t bytes() const override { return bytes_; }
  std::string Describe() const override { return name_; }

  absl::Status CopyToHost(std::span<const PayloadPiece> src,
                          std::span<const std::span<uint8_t>> dst) override {
    size_t src_total = 0, dst_total = 0;
    for (const PayloadPiece& p : src) src_total += p.size;
    for (const auto& d : dst) dst_total += d.size();
    if (src_total != dst_total) {
      return absl::InvalidArgumentError(absl::StrCat("copy of ", src_total, " bytes into ",
                                                     dst_total, " bytes of host memory"));
    }
    absl::MutexLock lock(&mu_);
    size_t si = 0, so = 0, di = 0, doff = 0;
    absl::Status s;
    while (s.ok() && si < src.size() && di < dst.size()) {
      const size_t n = std::min(src[si].size - so, dst[di].size() - doff);
      if (n > 0) {
        s = cu::CopyAsync(dst[di].data() + doff, static_cast<const uint8_t*>(src[si].data) + so,
                          n, stream_.get());
      }
      so += n;
      doff += n;
      if (so == src[si].size) ++si, so = 0;
      if (doff == dst[di].size()) ++di, doff = 0;
    }
    // Wait even after an error: copies already queued still write the host memory.
    absl::Status synced = stream_.Synchronize();
    return s.ok() ? synced : s;
  }

  absl::Status Checksums(std::span<const std::span<const PayloadPiece>> blocks,
                         std::span<uint64_t> out) override {
    if (out.size() < blocks.size()) return absl::InvalidArgumentError("one output per block");
    absl::MutexLock lock(&mu_);
    // Blocks of one size, each in one piece (the usual case): hashed where they lie, up to
    // kMaxSums in one launch.
    bool whole = !blocks.empty();
    for (const auto& b : blocks) {
      whole = whole && b.size() == 1 && b[0].size == blocks[0][0].size &&
              b[0].size > kMinHashedBytes;
    }
    if (whole) {
      for (size_t at = 0; at < blocks.size();) {
        const size_t n = std::min(kMaxSums, blocks.size() - at);
        std::vector<const void*> starts(n);
        for (size_t i = 0; i < n; ++i) starts[i] = blocks[at + i][0].data;
        TIERKV_RETURN_IF_ERROR(DeviceChecksumsAt(
            starts, blocks[0][0].size, starts_pinned_.as<const void*>(),
            starts_device_.as<const void*>(), sums_device_.as<uint64_t>(),
            sums_pinned_.as<uint64_t>(), stream_.get()));
        std::memcpy(out.data() + at, sums_pinned_.data(), n * 8);
        at += n;
      }
      return absl::OkStatus();
    }
    // Otherwise gathered into the scratch, a run of equal-sized blocks at a time.
    uint8_t* scratch = scratch_.as<uint8_t>();
    for (size_t at = 0; at < blocks.size();) {
      // A run of blocks of one size that fits the scratch.
      size_t size = 0;
      for (const PayloadPiece& p : blocks[at]) size += p.size;
      if (size == 0 || size > kScratchBytes) {
        return absl::InvalidArgumentError(absl::StrCat("block of ", size, " bytes; the GPU "
                                                       "tier checks blocks of 1 to ",
                                                       kScratchBytes));
      }
      const size_t most = std::min(kMaxSums, kScratchBytes / size);
      size_t n = 0;
      absl::Status s;
      for (; s.ok() && n < most && at + n < blocks.size(); ++n) {
        size_t this_size = 0;
        for (const PayloadPiece& p : blocks[at + n]) this_size += p.size;
        if (this_size != size) break;
        size_t off = n * size;
        for (const PayloadPiece& p : blocks[at + n]) {
          if (!s.ok()) break;
          s = cu::CopyAsync(scratch + off, p.data, p.size, stream_.get());
          off += p.size;
        }
      }
      if (s.ok()) {
        s = cu::BlockChecksums(scratch, size, static_cast<int64_t>(n),
                               sums_device_.as<uint64_t>(), stream_.get());
      }
      if (s.ok()) {
        s = cu::CopyAsync(sums_pinned_.data(), sums_device_.data(), n * 8, stream_.get());
      }
      absl::Status synced = stream_.Synchronize();
      if (s.ok()) s = synced;
      if (!s.ok()) return s;
      std::memcpy(out.data() + at, sums_pinned_.data(), n * 8);
      at += n;
    }
    return absl::OkStatus();
  }

 private:
  GpuDeviceArena() = default;
  absl::Mutex mu_;
  cu::DeviceBuffer memory_;
  uint8_t* base_ = nullptr;
  size_t bytes_ = 0;
  cu::StreamOwner stream_;
  cu::DeviceBuffer scratch_;
  cu::DeviceBuffer sums_device_;
  cu::PinnedBuffer sums_pinned_;
  cu::DeviceBuffer starts_device_;
  cu::PinnedBuffer starts_pinned_;
  std::string name_;
};

class GpuRuntime : public Runtime {
 public:
  explicit GpuRuntime(std::unique_ptr<CudaModel> model) : model_(std::move(model)) {}
  absl::Status Init() { return staging_.Init(); }
  // The first request of a kind pays one-time costs: CUDA loads each kernel at its first
  // launch and cuBLAS sets up each GEMM shape. Measured on an H200 (bench/RESULTS.md,
  // ttft_bench): the first warm request of a process computed its 16 new tokens over a
  // cached 32K prefix in 27-34 ms, later ones in 6.7 ms. A short prompt, a 16-token
  // continuation over it, a decode step and a checksummed store of one block run here, at
  // start, instead. The sequence and its KV are dropped afterwards.
  absl::Status WarmUp() {
    const int64_t block = spec().block_tokens;
    const int64_t prefix = 4 * block;
    const int64_t total = prefix + 16 + 1;
    if (total > max_positions()) return absl::OkStatus();
    std::vector<uint32_t> tokens(total);
    for (int64_t i = 0; i < total; ++i) tokens[i] = static_cast<uint32_t>((7 * i + 1) % vocab_size());
    TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<Sequence> seq, NewSequence(total));
    const std::span<const uint32_t> all(tokens);
    TIERKV_RETURN_IF_ERROR(Prefill(all.first(prefix), seq.get()).status());
    TIERKV_RETURN_IF_ERROR(Prefill(all.subspan(prefix, 16), seq.get()).status());
    TIERKV_RETURN_IF_ERROR(Prefill(all.subspan(prefix + 16, 1), seq.get()).status());
    std::string object(spec().RawBlockBytes(), '\0');
    const PayloadTarget target{object.data(), object.size()};
    const std::span<const PayloadTarget> pieces(&target, 1);
    uint64_t checksum = 0;
    return seq->WriteBlocksInPlace(0, std::span<const std::span<const PayloadTarget>>(&pieces, 1),
                                   std::span<uint64_t>(&checksum, 1));
  }
  kernels::Device device() const override { return kernels::Device::kCuda; }
  absl::StatusOr<std::unique_ptr<HostMemoryRegistration>> RegisterHostMemory(
      void* base, size_t bytes) const override {
    TIERKV_ASSIGN_OR_RETURN(cu::HostRegistration r, cu::HostRegistration::Register(base, bytes));
    return std::make_unique<GpuHostRegistration>(std::move(r));
  }
  absl::StatusOr<std::unique_ptr<DeviceArena>> AllocateDeviceArena(size_t bytes) const override {
    return GpuDeviceArena::Create(bytes);
  }
  const ModelSpec& spec() const override { return model_->spec(); }
  int64_t vocab_size() const override { return model_->config().vocab_size; }
  int64_t max_positions() const override { return model_->config().max_position_embeddings; }
  absl::StatusOr<std::unique_ptr<Sequence>> NewSequence(int64_t max_tokens) const override {
    if (max_tokens < 1 || max_tokens > max_positions()) {
      return absl::InvalidArgumentError(absl::StrCat("a sequence holds 1 to ", max_positions(),
                                                     " tokens; asked for ", max_tokens));
    }
    cu::DeviceBuffer reuse = memory_.Take(model_->KvCacheBytes(max_tokens));
    absl::StatusOr<CudaKvCache> kv = model_->NewKvCache(max_tokens, &reuse);
    memory_.Give(std::move(reuse));  // Still here only when it was not used.
    if (kv.status().code() == absl::StatusCode::kResourceExhausted) {
      memory_.Clear();  // Buffers kept for reuse may be what is missing: try once more.
      kv = model_->NewKvCache(max_tokens);
    }
    if (!kv.ok()) return kv.status();
    return std::make_unique<GpuSequence>(*std::move(kv), model_.get(), &staging_, &memory_);
  }
  absl::StatusOr<std::vector<float>> Prefill(std::span<const uint32_t> tokens,
                                             Sequence* seq) const override {
    return model_->Prefill(tokens, static_cast<GpuSequence*>(seq)->kv());
  }

 private:
  std::unique_ptr<CudaModel> model_;
  mutable Staging staging_;
  mutable KvMemoryCache memory_;
};
#endif  // TIERKV_HAVE_CUDA

}  // namespace

size_t IntactPrefix(std::span<const std::span<const PayloadPiece>> blocks,
                    std::span<const uint64_t> checksums) {
  const size_t n = std::min(blocks.size(), checksums.size());
  std::vector<uint8_t> ok(n);
  kernels::ParallelFor(kernels::ThreadPool::Default(), static_cast<int64_t>(n),
                       [&](int64_t i) { ok[i] = BlockChecksum(blocks[i]) == checksums[i]; });
  size_t good = 0;
  while (good < n && ok[good]) ++good;
  return good;
}

void ChecksumsOf(std::span<const std::span<const PayloadTarget>> blocks,
                 std::span<uint64_t> out) {
  kernels::ParallelFor(kernels::ThreadPool::Default(),
                       static_cast<int64_t>(std::min(blocks.size(), out.size())), [&](int64_t i) {
                         ChecksumBuilder b;
                         for (const PayloadTarget& p : blocks[i]) b.Update(p.data, p.size);
                         out[i] = blocks[i].size() == 1
                                      ? BlockChecksum(blocks[i][0].data, blocks[i][0].size)
                                      : b.Finish();
                       });
}

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
    o.sparse_plan = options.sparse_plan;
    absl::StatusOr<std::unique_ptr<CudaModel>> model = CudaModel::Load(name_or_dir, o);
    // "auto" falls back to the CPU for a model the GPU runtime cannot run (its shape); a
    // missing file or a full device is an error either way.
    const bool unsupported = !model.ok() && model.status().code() == absl::StatusCode::kInvalidArgument;
    if (model.ok() || options.device == "cuda" || !unsupported) {
      if (!model.ok()) return model.status();

      auto runtime = std::make_unique<GpuRuntime>(*std::move(model));
      TIERKV_RETURN_IF_ERROR(runtime->Init());
      const absl::Time start = absl::Now();
      if (absl::Status s = runtime->WarmUp(); !s.ok()) {
        return absl::Status(s.code(), absl::StrCat("warming up the GPU runtime: ", s.message()));
      }
      std::cerr << "tierkv: " << name_or_dir << " on the GPU; kernels warmed up in "
                << absl::ToInt64Milliseconds(absl::Now() - start) << " ms\n";
      return runtime;
    }
    std::cerr << "tierkv: " << name_or_dir << " runs on the CPU: " << model.status().message()
              << "\n";
#else
    return absl::UnavailableError(
        "device cuda: this build has no CUDA (configure with a CUDA toolkit, TIERKV_CUDA=ON)");
#endif
  }
  ModelOptions o;
  o.num_threads = options.num_threads;
  o.model_id = options.model_id;
  o.sparse_plan = options.sparse_plan;
  o.block_tokens = options.block_tokens;
  TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(name_or_dir, o));
  return OnCpu(std::move(model));
}

}  // namespace tierkv
