#include "proto/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"

namespace tierkv {

absl::StatusOr<StartedServer> StartGrpcServer(const std::string& listen_address,
                                              std::span<grpc::Service* const> services) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  StartedServer out;
  builder.AddListeningPort(listen_address, grpc::InsecureServerCredentials(), &out.port);
  builder.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  builder.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  for (grpc::Service* service : services) builder.RegisterService(service);
  out.server = builder.BuildAndStart();
  if (out.server == nullptr || out.port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", listen_address,
        ": the address is malformed, not local, or the port is taken"));
  }
  out.address = absl::StrCat(listen_address.substr(0, listen_address.rfind(':')), ":", out.port);
  return out;
}

}  // namespace tierkv
