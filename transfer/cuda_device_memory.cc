// CUDA DeviceMemory: a non-blocking stream and a blocking-sync event per lane.
#include "transfer/cuda_device_memory.h"

#include <cuda_runtime_api.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace tierkv::transfer {
namespace {

// cudaError_t -> absl::Status, once, at the edge. `what` names the call.
absl::Status CudaStatus(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  std::string message = absl::StrCat(std::string(what), ": ", cudaGetErrorName(err), " (",
                                     cudaGetErrorString(err), ")");
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInitializationError:
    case cudaErrorDevicesUnavailable:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

// Returns the converted error of a failed CUDA call.
#define TIERKV_CUDA_RETURN(call, what)                                      \
  do {                                                                      \
    if (absl::Status status_ = CudaStatus((call), (what)); !status_.ok()) { \
      return status_;                                                       \
    }                                                                       \
  } while (0)

// Move-only owners of a stream and an event. Destroyed with the device current.
class Stream {
 public:
  Stream() = default;
  explicit Stream(cudaStream_t s) : s_(s) {}
  Stream(Stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  Stream& operator=(Stream&& o) noexcept {
    std::swap(s_, o.s_);
    return *this;
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    if (s_ != nullptr) cudaStreamDestroy(s_);
  }
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

class Event {
 public:
  Event() = default;
  explicit Event(cudaEvent_t e) : e_(e) {}
  Event(Event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  Event& operator=(Event&& o) noexcept {
    std::swap(e_, o.e_);
    return *this;
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() {
    if (e_ != nullptr) cudaEventDestroy(e_);
  }
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

struct Lane {
  Stream stream;
  Event event;
  // Orders record + synchronize of the event between threads waiting on one lane.
  absl::Mutex mu;
};

class CudaDeviceMemory final : public DeviceMemory {
 public:
  explicit CudaDeviceMemory(int device) : device_(device) {}
  ~CudaDeviceMemory() override {
    cudaSetDevice(device_);
    for (auto& lane : lanes_) cudaStreamSynchronize(lane->stream.get());
    lanes_.clear();
  }

  absl::Status Init(int lanes) {
    if (absl::Status s = CudaStatus(cudaSetDevice(device_), "cudaSetDevice"); !s.ok()) return s;
    for (int i = 0; i < lanes; ++i) {
      auto lane = std::make_unique<Lane>();
      cudaStream_t stream = nullptr;
      if (absl::Status s = CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                                      "cudaStreamCreateWithFlags");
          !s.ok()) {
        return s;
      }
      lane->stream = Stream(stream);
      cudaEvent_t event = nullptr;
      if (absl::Status s = CudaStatus(
              cudaEventCreateWithFlags(&event, cudaEventDisableTiming | cudaEventBlockingSync),
              "cudaEventCreateWithFlags");
          !s.ok()) {
        return s;
      }
      lane->event = Event(event);
      lanes_.push_back(std::move(lane));
    }
    return absl::OkStatus();
  }

  bool IsDevice(const void* p) const override {
    cudaPointerAttributes attributes;
    const cudaError_t err = cudaPointerGetAttributes(&attributes, p);
    if (err == cudaSuccess) return attributes.type == cudaMemoryTypeDevice;
    if (err == cudaErrorInvalidValue) {
      cudaGetLastError();  // Not a pointer CUDA knows: host memory. Leave no error behind.
      return false;
    }
    // CUDA itself is failing (a sticky error, say): take the staging path, where the copy
    // fails with a status, rather than hand what may be device memory to UCX.
    return true;
  }

  int lanes() const override { return static_cast<int>(lanes_.size()); }

  absl::StatusOr<void*> AllocatePinned(size_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("AllocatePinned of 0 bytes");
    TIERKV_CUDA_RETURN(cudaSetDevice(device_), "cudaSetDevice");
    void* p = nullptr;
    TIERKV_CUDA_RETURN(cudaHostAlloc(&p, bytes, cudaHostAllocPortable), "cudaHostAlloc");
    return p;
  }

  void FreePinned(void* p) override {
    if (p != nullptr) cudaFreeHost(p);
  }

  absl::Status CopyToDeviceAsync(void* dst, const void* src, size_t bytes, int lane) override {
    return Copy(dst, src, bytes, lane, "cudaMemcpyAsync to the device");
  }
  absl::Status CopyToHostAsync(void* dst, const void* src, size_t bytes, int lane) override {
    return Copy(dst, src, bytes, lane, "cudaMemcpyAsync to the host");
  }

  absl::Status WaitLane(int lane) override {
    if (lane < 0 || lane >= lanes()) return absl::InvalidArgumentError("no such lane");
    Lane& l = *lanes_[lane];
    absl::MutexLock lock(&l.mu);
    TIERKV_CUDA_RETURN(cudaSetDevice(device_), "cudaSetDevice");
    TIERKV_CUDA_RETURN(cudaEventRecord(l.event.get(), l.stream.get()), "cudaEventRecord");
    TIERKV_CUDA_RETURN(cudaEventSynchronize(l.event.get()), "cudaEventSynchronize");
    return absl::OkStatus();
  }

 private:
  absl::Status Copy(void* dst, const void* src, size_t bytes, int lane, const char* what) {
    if (lane < 0 || lane >= lanes()) return absl::InvalidArgumentError("no such lane");
    TIERKV_CUDA_RETURN(cudaSetDevice(device_), "cudaSetDevice");
    // cudaMemcpyDefault: unified addressing tells the direction (and the device).
    return CudaStatus(
        cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, lanes_[lane]->stream.get()), what);
  }

  // Constant after Init().
  const int device_;
  std::vector<std::unique_ptr<Lane>> lanes_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<DeviceMemory>> NewCudaDeviceMemory(
    const CudaDeviceMemoryOptions& options) {
  if (options.lanes < 1) return absl::InvalidArgumentError("lanes must be >= 1");
  int count = 0;
  if (cudaError_t err = cudaGetDeviceCount(&count); err != cudaSuccess) {
    cudaGetLastError();
    return CudaStatus(err, "cudaGetDeviceCount");
  }
  if (count == 0) return absl::UnavailableError("no CUDA device present");
  int device = options.device;
  if (device < 0) {
    if (absl::Status s = CudaStatus(cudaGetDevice(&device), "cudaGetDevice"); !s.ok()) return s;
  }
  if (device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", device, " of ", count, " devices"));
  }
  auto memory = std::make_shared<CudaDeviceMemory>(device);
  if (absl::Status s = memory->Init(options.lanes); !s.ok()) return s;
  return std::shared_ptr<DeviceMemory>(std::move(memory));
}

}  // namespace tierkv::transfer
