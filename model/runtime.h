// Where a model runs, behind one interface for the workers: the fp32 CPU model
// (model/model.h) or, when this build has CUDA and a usable GPU is present, the bf16 GPU
// model (model/cuda_model.h). A Sequence is one prompt's KV on that device.
//
// The two runtimes compute different KV (fp32 or bf16 arithmetic), so their specs differ
// (kv_dtype fp32 or bf16, hence the block keys' model fingerprint): blocks of one are never
// served to the other by mistake.
#ifndef TIERKV_MODEL_RUNTIME_H_
#define TIERKV_MODEL_RUNTIME_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "core/block_key.h"
#include "kernels/device.h"
#include "model/model.h"
#include "model/sparse_plan.h"

namespace tierkv {

struct RuntimeOptions {
  // "auto" (the GPU when this build has CUDA, an sm_90 device is present and the GPU runtime
  // supports the model's shape, else the CPU), "cpu" or "cuda" (an error when no usable GPU
  // is present or the model's shape is not supported there).
  std::string device = "auto";
  // CPU only: kernel threads (0: one per core). The CPU keeps fp32 KV and the GPU bf16 KV,
  // and nothing else is offered: a CPU runtime with bf16 KV would have the GPU's spec while
  // computing other bits.
  int num_threads = 0;
  std::string model_id;
  uint32_t block_tokens = kDefaultBlockTokens;
  // Sparse attention for long prefills (model/sparse_plan.h; null: dense). The CPU runtime
  // runs every pattern through the reference kernels (correct, not fast); the GPU runtime
  // runs every pattern with its GPU index builders and kernels
  // (CudaModelOptions::sparse_plan).
  std::shared_ptr<const SparsePlan> sparse_plan;
};

// One sequence's KV on the runtime's device. Used by one thread at a time; must not outlive
// its runtime.
class Sequence {
 public:
  virtual ~Sequence() = default;
  virtual int64_t tokens() const = 0;
  // Appends block objects of the runtime's spec (each spec.RawBlockBytes() long), in order,
  // at a block boundary. INVALID_ARGUMENT for a payload of the wrong size; FAILED_PRECONDITION
  // when tokens() is not a block boundary; RESOURCE_EXHAUSTED past the sequence's capacity.
  // Nothing is appended on error.
  virtual absl::Status AppendBlocks(std::span<const std::string> blocks) = 0;
  // Appends blocks whose payloads lie in this process's memory in pieces (block i is the
  // concatenation of blocks[i]), typically in the cache manager's host tier. `verify` gets
  // the bytes to check (the source itself when the device reads it directly, as the GPU's
  // DMA does; the sequence's own copies otherwise), runs while the bytes move, and returns
  // how many leading blocks are intact (their checksums matched); only those are kept, and
  // their count is returned. The memory must stay valid and unchanged until this returns
  // (a read lease). Errors as AppendBlocks (nothing appended).
  using VerifyFn =
      absl::FunctionRef<size_t(std::span<const std::span<const PayloadPiece>> blocks)>;
  virtual absl::StatusOr<size_t> AppendBlocksInPlace(
      std::span<const std::span<const PayloadPiece>> blocks, VerifyFn verify) = 0;
  // Appends blocks whose payloads lie in device memory of the runtime's GPU (the cache's
  // GPU tier in this process), checking each against checksums[i] on the device as it lands;
  // only the leading intact blocks are kept, and their count is returned. The memory must
  // stay valid and unchanged until this returns (a read lease). FAILED_PRECONDITION on the
  // CPU runtime (it has no device memory); otherwise errors as AppendBlocks.
  virtual absl::StatusOr<size_t> AppendDeviceBlocks(
      std::span<const std::span<const PayloadPiece>> blocks,
      std::span<const uint64_t> checksums) = 0;
  // Block `index` as a block object. OUT_OF_RANGE when the sequence does not hold all of it.
  virtual absl::StatusOr<std::string> ExtractBlock(uint64_t index) const = 0;
  // Writes blocks [first, first + blocks.size()) as block objects into memory of this
  // process in pieces (block i into the concatenation of blocks[i]), such as space the cache
  // manager's host tier reserved for them. Returns once the bytes are there. OUT_OF_RANGE
  // when the sequence does not hold the blocks; INVALID_ARGUMENT when pieces do not add up
  // to a block. `checksums`, when not empty (one per block), receives each block's
  // BlockChecksum computed from the sequence's own bytes (on the GPU, before they leave the
  // device), so that a write that landed wrong cannot pass for the right block.
  virtual absl::Status WriteBlocksInPlace(uint64_t first,
                                          std::span<const std::span<const PayloadTarget>> blocks,
                                          std::span<uint64_t> checksums = {}) const = 0;
  // Blocks [first, first + count) as block objects, in one pass (the GPU moves them in large
  // copies). OUT_OF_RANGE when the sequence does not hold all of them.
  virtual absl::StatusOr<std::vector<std::string>> ExtractBlocks(uint64_t first,
                                                                 uint64_t count) const = 0;
};

// Keeps host memory registered with a runtime (Runtime::RegisterHostMemory) until destroyed.
class HostMemoryRegistration {
 public:
  virtual ~HostMemoryRegistration() = default;
};

// Device memory on the runtime's GPU that the cache manager's GPU tier hands out (tierkv up
// runs both in one process), with the two things the tier needs done there. Thread-safe.
class DeviceArena {
 public:
  virtual ~DeviceArena() = default;
  // The region (device memory, 64 KiB-aligned) and its size.
  virtual uint8_t* base() const = 0;
  virtual size_t bytes() const = 0;
  // "cuda:0 NVIDIA H200".
  virtual std::string Describe() const = 0;
  // Copies a payload lying in the arena in pieces `src` into host memory `dst` (pieces of
  // the same total size). Returns once the bytes are there; the CUDA error otherwise.
  virtual absl::Status CopyToHost(std::span<const PayloadPiece> src,
                                  std::span<const std::span<uint8_t>> dst) = 0;
  // out[i] = BlockChecksum of blocks[i] (pieces in the arena), computed on the GPU.
  virtual absl::Status Checksums(std::span<const std::span<const PayloadPiece>> blocks,
                                 std::span<uint64_t> out) = 0;
};

// Immutable after creation; Prefill may be called from several threads on different
// sequences.
class Runtime {
 public:
  // Loads "builtin:tiny" or a Hugging Face directory on the device the options ask for.
  // INVALID_ARGUMENT for an unknown device name; UNAVAILABLE for "cuda" without a usable GPU
  // (or in a build without CUDA); errors of Model::Load / CudaModel::Load.
  static absl::StatusOr<std::unique_ptr<Runtime>> Load(const std::string& name_or_dir,
                                                       const RuntimeOptions& options = {});
  // A CPU runtime over an existing model.
  static std::unique_ptr<Runtime> OnCpu(std::unique_ptr<Model> model);

  virtual ~Runtime() = default;
  virtual kernels::Device device() const = 0;
  virtual const ModelSpec& spec() const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t max_positions() const = 0;

  // Makes [base, base + bytes) a fast source of AppendBlocksInPlace until the returned handle
  // is destroyed: the GPU runtime page-locks and maps it for DMA (the CUDA error when it
  // cannot); the CPU runtime needs nothing. The memory must outlive the handle.
  virtual absl::StatusOr<std::unique_ptr<HostMemoryRegistration>> RegisterHostMemory(
      void* base, size_t bytes) const = 0;

  // `bytes` of device memory for the cache's GPU tier. FAILED_PRECONDITION on the CPU
  // runtime; RESOURCE_EXHAUSTED when the GPU lacks the room.
  virtual absl::StatusOr<std::unique_ptr<DeviceArena>> AllocateDeviceArena(size_t bytes) const = 0;

  // An empty sequence with room for `max_tokens` tokens (the GPU allocates it up front).
  // INVALID_ARGUMENT outside [1, max_positions()]; RESOURCE_EXHAUSTED when device memory
  // lacks room.
  virtual absl::StatusOr<std::unique_ptr<Sequence>> NewSequence(int64_t max_tokens) const = 0;
  // Runs `tokens` after what `seq` holds and returns the last token's fp32 logits; the
  // contract of Model::Prefill (seq unchanged on error).
  virtual absl::StatusOr<std::vector<float>> Prefill(std::span<const uint32_t> tokens,
                                                     Sequence* seq) const = 0;
  absl::StatusOr<std::vector<float>> Decode(uint32_t token, Sequence* seq) const {
    return Prefill(std::span<const uint32_t>(&token, 1), seq);
  }
};

// How many leading blocks match their checksums (BlockChecksum of their pieces), hashing
// blocks in parallel on the kernels' thread pool.
size_t IntactPrefix(std::span<const std::span<const PayloadPiece>> blocks,
                    std::span<const uint64_t> checksums);

// Sets out[i] to the BlockChecksum of blocks[i]'s pieces, in parallel on the kernels' pool.
void ChecksumsOf(std::span<const std::span<const PayloadTarget>> blocks,
                 std::span<uint64_t> out);

// True when this build has CUDA and an sm_90 GPU is usable now.
bool GpuRuntimeAvailable();

}  // namespace tierkv

#endif  // TIERKV_MODEL_RUNTIME_H_
