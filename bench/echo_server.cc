#include "bench/echo_server.h"

#include <grpcpp/grpcpp.h>

#include <deque>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "bench/echo.grpc.pb.h"

namespace tierkv::bench {
namespace {

grpc::Status CheckReplySize(uint32_t bytes) {
  if (bytes > kMaxEchoReplyBytes) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("reply of ", bytes, " bytes; at most ", kMaxEchoReplyBytes));
  }
  return grpc::Status::OK;
}

// Reads the whole client stream, then answers once with the size the first message asked for.
class UploadReactor final : public grpc::ServerReadReactor<EchoRequest> {
 public:
  explicit UploadReactor(EchoResponse* response) : response_(response) { StartRead(&request_); }

  void OnReadDone(bool ok) override {
    if (ok) {
      if (first_) {
        first_ = false;
        reply_bytes_ = request_.reply_bytes_size() > 0 ? request_.reply_bytes(0) : 0;
      }
      StartRead(&request_);
      return;
    }
    grpc::Status status = CheckReplySize(reply_bytes_);
    if (status.ok()) response_->mutable_payload()->assign(reply_bytes_, 'u');
    Finish(status);
  }

  void OnDone() override { delete this; }

 private:
  EchoResponse* const response_;  // Owned by gRPC; valid until OnDone.
  EchoRequest request_;
  bool first_ = true;
  uint32_t reply_bytes_ = 0;
};

// Writes one reply per entry of the request's reply_bytes, one write in flight at a time.
class DownloadReactor final : public grpc::ServerWriteReactor<EchoResponse> {
 public:
  explicit DownloadReactor(const EchoRequest& request)
      : sizes_(request.reply_bytes().begin(), request.reply_bytes().end()) {
    for (uint32_t bytes : sizes_) {
      grpc::Status status = CheckReplySize(bytes);
      if (!status.ok()) {
        Finish(status);
        return;
      }
    }
    WriteNext();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    WriteNext();
  }

  void OnDone() override { delete this; }

 private:
  void WriteNext() {
    if (sizes_.empty()) {
      Finish(grpc::Status::OK);
      return;
    }
    response_.mutable_payload()->assign(sizes_.front(), 'd');
    sizes_.pop_front();
    StartWrite(&response_);
  }

  std::deque<uint32_t> sizes_;
  EchoResponse response_;
};

class EchoServiceImpl final : public EchoService::CallbackService {
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, const EchoRequest* request,
                                  EchoResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    uint32_t bytes = request->reply_bytes_size() > 0 ? request->reply_bytes(0) : 0;
    grpc::Status status = CheckReplySize(bytes);
    if (status.ok()) response->mutable_payload()->assign(bytes, 'e');
    reactor->Finish(status);
    return reactor;
  }

  grpc::ServerReadReactor<EchoRequest>* Upload(grpc::CallbackServerContext* context,
                                               EchoResponse* response) override {
    return new UploadReactor(response);
  }

  grpc::ServerWriteReactor<EchoResponse>* Download(grpc::CallbackServerContext* context,
                                                   const EchoRequest* request) override {
    return new DownloadReactor(*request);
  }
};

class EchoServerImpl final : public EchoServer {
 public:
  EchoServerImpl(std::unique_ptr<EchoServiceImpl> service, std::unique_ptr<grpc::Server> server,
                 std::string address, int port)
      : service_(std::move(service)),
        server_(std::move(server)),
        address_(std::move(address)),
        port_(port) {}
  ~EchoServerImpl() override { Shutdown(); }

  int port() const override { return port_; }
  std::string address() const override { return address_; }

  void Shutdown() override {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
    server_->Shutdown();
    server_->Wait();
  }

 private:
  // Constant after construction.
  const std::unique_ptr<EchoServiceImpl> service_;  // Must outlive server_.
  const std::unique_ptr<grpc::Server> server_;
  const std::string address_;
  const int port_;

  absl::Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<EchoServer>> EchoServer::Start(const EchoServerOptions& options) {
  auto service = std::make_unique<EchoServiceImpl>();
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  builder.RegisterService(service.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("echo server: cannot listen on ", options.listen_address));
  }
  std::string host = options.listen_address.substr(0, options.listen_address.rfind(':'));
  return std::make_unique<EchoServerImpl>(std::move(service), std::move(server),
                                          absl::StrCat(host, ":", port), port);
}

}  // namespace tierkv::bench
