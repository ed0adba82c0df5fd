#include "kernels/cuda/memory.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "core/status.h"
#include "kernels/cuda/internal/check.h"

namespace tierkv::kernels::cuda {

template <MemoryKind kKind>
absl::StatusOr<Buffer<kKind>> Buffer<kKind>::Allocate(size_t bytes) {
  Buffer b;
  const cudaError_t err = kKind == MemoryKind::kDevice
                              ? cudaMalloc(&b.ptr_, bytes)
                              : cudaHostAlloc(&b.ptr_, bytes, cudaHostAllocPortable);
  if (absl::Status s = CudaStatus(err, absl::StrCat(kKind == MemoryKind::kDevice
                                                        ? "cudaMalloc("
                                                        : "cudaHostAlloc(",
                                                    bytes, " bytes)"));
      !s.ok()) {
    b.ptr_ = nullptr;
    return s;
  }
  b.bytes_ = bytes;
  return b;
}

template <MemoryKind kKind>
void Buffer<kKind>::Free() {
  if (ptr_ == nullptr) return;
  if (kKind == MemoryKind::kDevice) {
    cudaFree(ptr_);
  } else {
    cudaFreeHost(ptr_);
  }
  ptr_ = nullptr;
  bytes_ = 0;
}

template class Buffer<MemoryKind::kDevice>;
template class Buffer<MemoryKind::kPinned>;

absl::StatusOr<StreamOwner> StreamOwner::Create() {
  StreamOwner s;
  cudaStream_t st = nullptr;
  if (absl::Status e = CudaStatus(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking),
                                  "cudaStreamCreateWithFlags");
      !e.ok()) {
    return e;
  }
  s.stream_ = reinterpret_cast<Stream>(st);
  return s;
}

StreamOwner::~StreamOwner() {
  if (stream_ != nullptr) {
    cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream_));
    cudaStreamDestroy(reinterpret_cast<cudaStream_t>(stream_));
  }
}

StreamOwner::StreamOwner(StreamOwner&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)) {}

StreamOwner& StreamOwner::operator=(StreamOwner&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) {
      cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream_));
      cudaStreamDestroy(reinterpret_cast<cudaStream_t>(stream_));
    }
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

absl::Status StreamOwner::Synchronize() const {
  return CudaStatus(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream_)),
                    "cudaStreamSynchronize");
}

absl::StatusOr<EventOwner> EventOwner::Create() {
  EventOwner e;
  cudaEvent_t ev = nullptr;
  if (absl::Status s = CudaStatus(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming),
                                  "cudaEventCreateWithFlags");
      !s.ok()) {
    return s;
  }
  e.event_ = ev;
  return e;
}

EventOwner::~EventOwner() {
  if (event_ != nullptr) cudaEventDestroy(event_);
}

EventOwner::EventOwner(EventOwner&& other) noexcept
    : event_(std::exchange(other.event_, nullptr)) {}

EventOwner& EventOwner::operator=(EventOwner&& other) noexcept {
  if (this != &other) {
    if (event_ != nullptr) cudaEventDestroy(event_);
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

absl::Status EventOwner::Record(Stream stream) {
  return CudaStatus(cudaEventRecord(event_, reinterpret_cast<cudaStream_t>(stream)),
                    "cudaEventRecord");
}

absl::Status EventOwner::Synchronize() const {
  return CudaStatus(cudaEventSynchronize(event_), "cudaEventSynchronize");
}

absl::StatusOr<HostRegistration> HostRegistration::Register(void* base, size_t bytes) {
  if (base == nullptr || bytes == 0) {
    return absl::InvalidArgumentError("HostRegistration: empty range");
  }
  HostRegistration r;
  const cudaError_t err = cudaHostRegister(base, bytes, cudaHostRegisterPortable);
  if (err == cudaErrorHostMemoryAlreadyRegistered) {
    // Someone in this process (UCX's CUDA support, say) registered it first: it is DMA-capable
    // already, and that registration is theirs to release.
    cudaGetLastError();
    return r;
  }
  if (err != cudaSuccess) cudaGetLastError();  // Not sticky: leave no error for later calls.
  if (absl::Status s = CudaStatus(err, absl::StrCat("cudaHostRegister(", bytes, " bytes)"));
      !s.ok()) {
    return s;
  }
  r.base_ = base;
  return r;
}

HostRegistration::~HostRegistration() {
  if (base_ != nullptr) cudaHostUnregister(base_);
}

HostRegistration::HostRegistration(HostRegistration&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)) {}

HostRegistration& HostRegistration::operator=(HostRegistration&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr) cudaHostUnregister(base_);
    base_ = std::exchange(other.base_, nullptr);
  }
  return *this;
}

absl::Status CopyToDevice(void* dst, const void* src, size_t bytes) {
  return CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}

absl::Status CopyToHost(void* dst, const void* src, size_t bytes) {
  return CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}

// cudaMemcpy device to device and cudaMemset of device memory may return before the work
// is done (it runs on the legacy stream, which non-blocking streams do not wait for): wait
// for it, as these calls promise.
absl::Status CopyDeviceToDevice(void* dst, const void* src, size_t bytes) {
  TIERKV_RETURN_IF_ERROR(
      CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy D2D"));
  return CudaStatus(cudaStreamSynchronize(cudaStreamLegacy), "cudaMemcpy D2D (wait)");
}

absl::Status FillBytes(void* dst, int value, size_t bytes) {
  TIERKV_RETURN_IF_ERROR(CudaStatus(cudaMemset(dst, value, bytes), "cudaMemset"));
  return CudaStatus(cudaStreamSynchronize(cudaStreamLegacy), "cudaMemset (wait)");
}

absl::Status StreamSynchronize(Stream stream) {
  return CudaStatus(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)),
                    "cudaStreamSynchronize");
}

absl::Status SynchronizeDevice() {
  return CudaStatus(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

absl::Status CopyAsync(void* dst, const void* src, size_t bytes, Stream stream) {
  return CudaStatus(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, reinterpret_cast<cudaStream_t>(stream)),
      "cudaMemcpyAsync");
}

absl::Status Copy2DAsync(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                         size_t width, size_t rows, Stream stream) {
  return CudaStatus(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows,
                                      cudaMemcpyDefault, reinterpret_cast<cudaStream_t>(stream)),
                    "cudaMemcpy2DAsync");
}

}  // namespace tierkv::kernels::cuda
