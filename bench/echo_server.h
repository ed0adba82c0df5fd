// A bare gRPC echo server (bench/echo.proto) for benchmark baselines: it answers with
// replies of the requested sizes and does nothing else, so the cost of a tierkv call can be
// compared with the cost of gRPC moving the same bytes.
//
// Thread-safe.
#ifndef TIERKV_BENCH_ECHO_SERVER_H_
#define TIERKV_BENCH_ECHO_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace tierkv::bench {

struct EchoServerOptions {
  // host:port to listen on; port 0 picks a free one.
  std::string listen_address = "127.0.0.1:0";
  // Largest request message accepted (gRPC's default is 4 MiB).
  int max_receive_message_bytes = 64 << 20;
};

class EchoServer {
 public:
  // Starts serving. UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<EchoServer>> Start(const EchoServerOptions& options);
  virtual ~EchoServer() = default;

  virtual int port() const = 0;
  // "127.0.0.1:port"-style address to dial.
  virtual std::string address() const = 0;
  // Stops accepting calls and cancels the ones in flight. Idempotent.
  virtual void Shutdown() = 0;
};

// Largest reply payload the server produces for one message; larger requests are refused
// with INVALID_ARGUMENT.
inline constexpr uint32_t kMaxEchoReplyBytes = 256u << 20;

}  // namespace tierkv::bench

#endif  // TIERKV_BENCH_ECHO_SERVER_H_
