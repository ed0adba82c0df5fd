// UCX at the edge: the one conversion of ucs_status_t into absl::Status, and move-only
// owners for every ucp handle the engine holds.
//
// Invariants: an owner holds either nothing (nullptr) or one live handle that it releases
// exactly once, in its destructor or reset(). Owners that need a second handle to release
// theirs (a memory handle needs its context, a worker address its worker) keep a
// non-owning copy of it; that handle must outlive the owner, which the engine guarantees
// by member order (context, then worker, then everything made from them).
//
// Nothing here is thread-safe by itself: the engine calls UCX from its progress thread only
// (see transfer/engine.cc), except ucp_worker_signal, which UCX allows from any thread.
#ifndef TIERKV_TRANSFER_INTERNAL_UCX_H_
#define TIERKV_TRANSFER_INTERNAL_UCX_H_

#include <ucp/api/ucp.h>

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"

namespace tierkv::transfer::internal {

// Maps a UCX status to the canonical code a caller can act on, with `context` and UCX's own
// text in the message:
//   UCS_OK                                         -> OK
//   UCS_ERR_CANCELED                               -> CANCELLED
//   UCS_ERR_TIMED_OUT, UCS_ERR_ENDPOINT_TIMEOUT    -> DEADLINE_EXCEEDED
//   UCS_ERR_UNREACHABLE, UCS_ERR_CONNECTION_RESET, UCS_ERR_NOT_CONNECTED,
//   UCS_ERR_REJECTED, UCS_ERR_IO_ERROR, UCS_ERR_BUSY, UCS_ERR_NO_DEVICE,
//   UCS_ERR_SHMEM_SEGMENT                          -> UNAVAILABLE (the peer or the path is gone)
//   UCS_ERR_NO_MEMORY, UCS_ERR_NO_RESOURCE, UCS_ERR_EXCEEDS_LIMIT -> RESOURCE_EXHAUSTED
//   UCS_ERR_INVALID_PARAM, UCS_ERR_INVALID_ADDR    -> INVALID_ARGUMENT
//   UCS_ERR_OUT_OF_RANGE                           -> OUT_OF_RANGE
//   UCS_ERR_NO_ELEM                                -> NOT_FOUND
//   UCS_ERR_ALREADY_EXISTS                         -> ALREADY_EXISTS
//   UCS_ERR_UNSUPPORTED, UCS_ERR_NOT_IMPLEMENTED   -> UNIMPLEMENTED
//   anything else (MESSAGE_TRUNCATED, ...)         -> INTERNAL
absl::Status UcsToStatus(ucs_status_t status, std::string_view context);

// Owner of a handle released by a one-argument UCX function.
template <typename Handle, void (*Release)(Handle)>
class UniqueHandle {
 public:
  UniqueHandle() = default;
  explicit UniqueHandle(Handle handle) : handle_(handle) {}
  ~UniqueHandle() { reset(); }
  UniqueHandle(UniqueHandle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  UniqueHandle& operator=(UniqueHandle&& other) noexcept {
    if (this != &other) {
      reset();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  UniqueHandle(const UniqueHandle&) = delete;
  UniqueHandle& operator=(const UniqueHandle&) = delete;

  Handle get() const { return handle_; }
  explicit operator bool() const { return handle_ != nullptr; }
  void reset() {
    if (handle_ != nullptr) Release(std::exchange(handle_, nullptr));
  }
  // Gives the handle up without releasing it.
  Handle release() { return std::exchange(handle_, nullptr); }

 private:
  Handle handle_ = nullptr;
};

using UcpConfig = UniqueHandle<ucp_config_t*, &ucp_config_release>;
using UcpContext = UniqueHandle<ucp_context_h, &ucp_cleanup>;
using UcpWorker = UniqueHandle<ucp_worker_h, &ucp_worker_destroy>;
// A remote key unpacked on an endpoint; must be destroyed before that endpoint is.
using UcpRkey = UniqueHandle<ucp_rkey_h, &ucp_rkey_destroy>;
// The buffer ucp_rkey_pack fills.
using UcpRkeyBuffer = UniqueHandle<void*, &ucp_rkey_buffer_release>;
// A request returned by a *_nbx call. Freeing a request that is still in flight is allowed:
// the operation goes on inside UCX, but its callback will not run any more, so the engine
// frees a request only from its callback or when it no longer cares about the outcome.
using UcpRequest = UniqueHandle<void*, &ucp_request_free>;

// A registered memory region (ucp_mem_map of caller memory). Its context must outlive it.
class UcpMemHandle {
 public:
  UcpMemHandle() = default;
  UcpMemHandle(ucp_context_h context, ucp_mem_h memh) : context_(context), memh_(memh) {}
  ~UcpMemHandle() { reset(); }
  UcpMemHandle(UcpMemHandle&& other) noexcept
      : context_(other.context_), memh_(std::exchange(other.memh_, nullptr)) {}
  UcpMemHandle& operator=(UcpMemHandle&& other) noexcept {
    if (this != &other) {
      reset();
      context_ = other.context_;
      memh_ = std::exchange(other.memh_, nullptr);
    }
    return *this;
  }
  UcpMemHandle(const UcpMemHandle&) = delete;
  UcpMemHandle& operator=(const UcpMemHandle&) = delete;

  ucp_mem_h get() const { return memh_; }
  void reset() {
    if (memh_ != nullptr) ucp_mem_unmap(context_, std::exchange(memh_, nullptr));
  }

 private:
  ucp_context_h context_ = nullptr;  // Not owned.
  ucp_mem_h memh_ = nullptr;
};

// A worker's address as ucp_worker_get_address returns it. Its worker must outlive it.
class UcpWorkerAddress {
 public:
  UcpWorkerAddress() = default;
  UcpWorkerAddress(ucp_worker_h worker, ucp_address_t* address, size_t length)
      : worker_(worker), address_(address), length_(length) {}
  ~UcpWorkerAddress() { reset(); }
  UcpWorkerAddress(UcpWorkerAddress&& other) noexcept
      : worker_(other.worker_),
        address_(std::exchange(other.address_, nullptr)),
        length_(other.length_) {}
  UcpWorkerAddress& operator=(UcpWorkerAddress&& other) noexcept {
    if (this != &other) {
      reset();
      worker_ = other.worker_;
      address_ = std::exchange(other.address_, nullptr);
      length_ = other.length_;
    }
    return *this;
  }
  UcpWorkerAddress(const UcpWorkerAddress&) = delete;
  UcpWorkerAddress& operator=(const UcpWorkerAddress&) = delete;

  std::string_view bytes() const {
    return std::string_view(reinterpret_cast<const char*>(address_), length_);
  }
  void reset() {
    if (address_ != nullptr) ucp_worker_release_address(worker_, std::exchange(address_, nullptr));
  }

 private:
  ucp_worker_h worker_ = nullptr;  // Not owned.
  ucp_address_t* address_ = nullptr;
  size_t length_ = 0;
};

// An endpoint. Closing is asynchronous in UCX, so the owner does not close in its
// destructor by itself: whoever holds it calls StartClose() from the thread that progresses
// the worker and progresses until the returned request (if any) completes. The destructor
// of an endpoint that was never closed force-closes it without waiting (used only when the
// worker is about to be destroyed anyway).
class UcpEndpoint {
 public:
  UcpEndpoint() = default;
  explicit UcpEndpoint(ucp_ep_h ep) : ep_(ep) {}
  ~UcpEndpoint();
  UcpEndpoint(UcpEndpoint&& other) noexcept : ep_(std::exchange(other.ep_, nullptr)) {}
  UcpEndpoint& operator=(UcpEndpoint&& other) noexcept;
  UcpEndpoint(const UcpEndpoint&) = delete;
  UcpEndpoint& operator=(const UcpEndpoint&) = delete;

  ucp_ep_h get() const { return ep_; }
  explicit operator bool() const { return ep_ != nullptr; }

  // Starts closing: with `force`, outstanding requests complete at once with
  // UCS_ERR_CANCELED (UCX requires peer error handling on both sides for that); without it,
  // they are flushed first. Returns the close request to wait on (null when the close
  // completed at once) or an error. The endpoint is empty afterwards either way.
  ucs_status_ptr_t StartClose(bool force);

 private:
  ucp_ep_h ep_ = nullptr;
};

}  // namespace tierkv::transfer::internal

#endif  // TIERKV_TRANSFER_INTERNAL_UCX_H_
