// Builds and starts a gRPC server the way every tierkv process serves: the given services
// plus grpc.health.v1.Health and server reflection, 64 MiB message limits (bulk chunks and
// million-key lookups), listening on one address.
#ifndef TIERKV_PROTO_GRPC_SERVER_H_
#define TIERKV_PROTO_GRPC_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"

namespace tierkv {

inline constexpr int kMaxGrpcMessageBytes = 64 << 20;

struct StartedServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  // "host:port" to dial, with the port resolved when the address asked for port 0.
  std::string address;
};

// Services must outlive the server. UNAVAILABLE when the address cannot be bound.
absl::StatusOr<StartedServer> StartGrpcServer(const std::string& listen_address,
                                              std::span<grpc::Service* const> services);

}  // namespace tierkv

#endif  // TIERKV_PROTO_GRPC_SERVER_H_
