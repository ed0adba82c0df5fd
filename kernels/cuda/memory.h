// Owners of device memory, pinned host memory and streams, and synchronous copies, for the
// GPU runtime and its tests. No CUDA headers needed.
#ifndef TIERKV_KERNELS_CUDA_MEMORY_H_
#define TIERKV_KERNELS_CUDA_MEMORY_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/ops.h"

struct CUevent_st;

namespace tierkv::kernels::cuda {

enum class MemoryKind {
  kDevice,  // cudaMalloc / cudaFree.
  kPinned,  // Page-locked host memory: cudaHostAlloc (portable) / cudaFreeHost.
};

// Memory of one kind, freed on destruction. Move-only.
template <MemoryKind kKind>
class Buffer {
 public:
  Buffer() = default;
  // RESOURCE_EXHAUSTED when `bytes` are not available; UNAVAILABLE without a device.
  static absl::StatusOr<Buffer> Allocate(size_t bytes);
  ~Buffer() { Free(); }
  Buffer(Buffer&& other) noexcept : ptr_(other.ptr_), bytes_(other.bytes_) {
    other.ptr_ = nullptr;
    other.bytes_ = 0;
  }
  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      Free();
      ptr_ = other.ptr_;
      bytes_ = other.bytes_;
      other.ptr_ = nullptr;
      other.bytes_ = 0;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t size() const { return bytes_; }

 private:
  void Free();

  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};
using DeviceBuffer = Buffer<MemoryKind::kDevice>;
using PinnedBuffer = Buffer<MemoryKind::kPinned>;
extern template class Buffer<MemoryKind::kDevice>;
extern template class Buffer<MemoryKind::kPinned>;

// A non-blocking CUDA stream, destroyed (after finishing its work) with the owner.
class StreamOwner {
 public:
  static absl::StatusOr<StreamOwner> Create();
  StreamOwner() = default;
  ~StreamOwner();
  StreamOwner(StreamOwner&& other) noexcept;
  StreamOwner& operator=(StreamOwner&& other) noexcept;
  StreamOwner(const StreamOwner&) = delete;
  StreamOwner& operator=(const StreamOwner&) = delete;

  Stream get() const { return stream_; }
  // Waits for the stream's work; the first asynchronous error of it, if any.
  absl::Status Synchronize() const;

 private:
  Stream stream_ = nullptr;
};

// A CUDA event (timing disabled) to wait for a point in a stream's work. Move-only.
class EventOwner {
 public:
  static absl::StatusOr<EventOwner> Create();
  EventOwner() = default;
  ~EventOwner();
  EventOwner(EventOwner&& other) noexcept;
  EventOwner& operator=(EventOwner&& other) noexcept;
  EventOwner(const EventOwner&) = delete;
  EventOwner& operator=(const EventOwner&) = delete;

  // Marks the current end of `stream`'s queued work.
  absl::Status Record(Stream stream);
  // Waits until the work before the last Record is done (at once when never recorded).
  absl::Status Synchronize() const;

 private:
  CUevent_st* event_ = nullptr;
};

// Host memory page-locked and mapped for DMA (cudaHostRegister) for the owner's lifetime.
// The memory must outlive the registration. Move-only.
class HostRegistration {
 public:
  // INVALID_ARGUMENT for a null or empty range; the CUDA error otherwise. A range that is
  // registered already (by other code in this process) is fine: the handle then owns
  // nothing.
  static absl::StatusOr<HostRegistration> Register(void* base, size_t bytes);
  HostRegistration() = default;
  ~HostRegistration();
  HostRegistration(HostRegistration&& other) noexcept;
  HostRegistration& operator=(HostRegistration&& other) noexcept;
  HostRegistration(const HostRegistration&) = delete;
  HostRegistration& operator=(const HostRegistration&) = delete;

 private:
  void* base_ = nullptr;
};

// Synchronous copies (the calls return once the bytes have arrived). Errors: INTERNAL with the
// CUDA error (e.g. an earlier kernel fault surfaces here).
absl::Status CopyToDevice(void* dst, const void* src, size_t bytes);
absl::Status CopyToHost(void* dst, const void* src, size_t bytes);
absl::Status CopyDeviceToDevice(void* dst, const void* src, size_t bytes);
// Sets `bytes` bytes of device memory to `value`; returns once they are set.
absl::Status FillBytes(void* dst, int value, size_t bytes);
// Waits for the work queued on `stream`; its first asynchronous error, if any.
absl::Status StreamSynchronize(Stream stream);
// Waits for all work on the device; its first asynchronous error, if any.
absl::Status SynchronizeDevice();

// Asynchronous copies on `stream` (host memory must be pinned for real asynchrony).
absl::Status CopyAsync(void* dst, const void* src, size_t bytes, Stream stream);
// Copies `rows` rows of `width` bytes from src (rows `src_pitch` apart) to dst (`dst_pitch`
// apart), any direction; one call instead of one per row.
absl::Status Copy2DAsync(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                         size_t width, size_t rows, Stream stream);

// Convenience for tests and loaders: a device copy of host data.
template <typename T>
absl::StatusOr<DeviceBuffer> Upload(std::span<const T> host) {
  absl::StatusOr<DeviceBuffer> buf = DeviceBuffer::Allocate(host.size_bytes() ? host.size_bytes() : 1);
  if (!buf.ok()) return buf.status();
  if (absl::Status s = CopyToDevice(buf->data(), host.data(), host.size_bytes()); !s.ok()) {
    return s;
  }
  return buf;
}
template <typename T>
absl::StatusOr<std::vector<T>> Download(const void* device, size_t count) {
  std::vector<T> out(count);
  if (absl::Status s = CopyToHost(out.data(), device, count * sizeof(T)); !s.ok()) return s;
  return out;
}

}  // namespace tierkv::kernels::cuda

#endif  // TIERKV_KERNELS_CUDA_MEMORY_H_
