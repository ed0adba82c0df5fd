// Device (GPU) memory as the transfer engine sees it.
//
// UCX builds without CUDA transports (Debian's 1.13 among them) cannot move bytes to or from
// GPU memory. An engine created with EngineOptions::device_memory recognises device buffers
// through this interface and stages them through pinned host bounce buffers it allocates
// here, with the host<->device copies made here (see transfer/engine.h). The interface has
// no CUDA in it: transfer/cuda_device_memory.h makes the CUDA implementation, and tests use
// a fake whose "device" is a host arena.
//
// Copies are asynchronous and ordered per lane: a lane is an in-order queue of copies
// (a CUDA stream), numbered 0 .. lanes() - 1, and WaitLane waits for everything queued on
// one lane so far. Copies on different lanes may run concurrently.
//
// Thread safety: implementations must allow calls from several threads at once; calls
// that queue on the same lane from several threads are ordered as they are made. The engine
// drives its lanes from one thread of its own.
#ifndef TIERKV_TRANSFER_DEVICE_MEMORY_H_
#define TIERKV_TRANSFER_DEVICE_MEMORY_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tierkv::transfer {

class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;

  // Whether `p` points into device memory that the host cannot read or write directly (and
  // UCX therefore cannot either). Memory the host can address (ordinary, pinned, managed)
  // is not device memory. Must be cheap: the engine asks once per op.
  virtual bool IsDevice(const void* p) const = 0;

  // Number of lanes (>= 1).
  virtual int lanes() const = 0;

  // `bytes` (> 0) of page-locked host memory, for bounce buffers that copies to and from
  // the device can use directly; freed with FreePinned. RESOURCE_EXHAUSTED (or the
  // implementation's error) when it cannot be had.
  virtual absl::StatusOr<void*> AllocatePinned(size_t bytes) = 0;
  // Frees what AllocatePinned returned. Nothing may be queued on it any more.
  virtual void FreePinned(void* p) = 0;

  // Queue a copy of `bytes` bytes on `lane` (0 <= lane < lanes()): from host memory `src`
  // to device memory `dst`, or from device memory `src` to host memory `dst`. They return
  // once the copy is queued, before it has happened: the memory must stay valid and
  // unchanged (the source) or untouched (the destination) until WaitLane(lane) returns. An
  // error here means the copy was not queued; an error of the copy itself shows in
  // WaitLane.
  virtual absl::Status CopyToDeviceAsync(void* dst, const void* src, size_t bytes, int lane) = 0;
  virtual absl::Status CopyToHostAsync(void* dst, const void* src, size_t bytes, int lane) = 0;

  // Blocks until every copy queued on `lane` so far has completed. OK when they all
  // succeeded; otherwise the error of one that failed (then the destinations of the copies
  // waited for may hold any bytes).
  virtual absl::Status WaitLane(int lane) = 0;
};

}  // namespace tierkv::transfer

#endif  // TIERKV_TRANSFER_DEVICE_MEMORY_H_
