#include "transfer/internal/ucx.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace tierkv::transfer::internal {

absl::Status UcsToStatus(ucs_status_t status, std::string_view context) {
  if (status == UCS_OK) return absl::OkStatus();
  std::string message = absl::StrCat(std::string(context), ": ", ucs_status_string(status));
  switch (status) {
    case UCS_ERR_CANCELED:
      return absl::CancelledError(message);
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_ENDPOINT_TIMEOUT:
      return absl::DeadlineExceededError(message);
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_REJECTED:
    case UCS_ERR_IO_ERROR:
    case UCS_ERR_BUSY:
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_SHMEM_SEGMENT:
      return absl::UnavailableError(message);
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
      return absl::ResourceExhaustedError(message);
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
      return absl::InvalidArgumentError(message);
    case UCS_ERR_OUT_OF_RANGE:
      return absl::OutOfRangeError(message);
    case UCS_ERR_NO_ELEM:
      return absl::NotFoundError(message);
    case UCS_ERR_ALREADY_EXISTS:
      return absl::AlreadyExistsError(message);
    case UCS_ERR_UNSUPPORTED:
    case UCS_ERR_NOT_IMPLEMENTED:
      return absl::UnimplementedError(message);
    default:
      return absl::InternalError(message);
  }
}

UcpEndpoint::~UcpEndpoint() {
  if (ep_ == nullptr) return;
  ucs_status_ptr_t request = StartClose(/*force=*/true);
  if (UCS_PTR_IS_PTR(request)) ucp_request_free(request);
}

UcpEndpoint& UcpEndpoint::operator=(UcpEndpoint&& other) noexcept {
  if (this != &other) {
    if (ep_ != nullptr) {
      ucs_status_ptr_t request = StartClose(/*force=*/true);
      if (UCS_PTR_IS_PTR(request)) ucp_request_free(request);
    }
    ep_ = std::exchange(other.ep_, nullptr);
  }
  return *this;
}

ucs_status_ptr_t UcpEndpoint::StartClose(bool force) {
  if (ep_ == nullptr) return nullptr;
  ucp_request_param_t param{};
  if (force) {
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  }
  return ucp_ep_close_nbx(std::exchange(ep_, nullptr), &param);
}

}  // namespace tierkv::transfer::internal
