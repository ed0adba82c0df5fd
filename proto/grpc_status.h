// Conversion between absl::Status and grpc::Status. The two share the canonical code set,
// so the conversion keeps code and message unchanged.
#ifndef TIERKV_PROTO_GRPC_STATUS_H_
#define TIERKV_PROTO_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace tierkv {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace tierkv

#endif  // TIERKV_PROTO_GRPC_STATUS_H_
