// tierkv-decode-worker: serves DecodeService for one model, reusing KV from a cache manager.
#include <unistd.h>

#include <iostream>

#include "CLI/CLI.hpp"
#include "core/process.h"
#include "decode_worker/decode_service.h"
#include "prefill_worker/worker_flags.h"
#include "proto/grpc_server.h"

int main(int argc, char** argv) {
  CLI::App app{"tierkv decode worker: generates tokens, reusing cached KV of the prompt"};
  tierkv::WorkerFlags flags;
  flags.Register(app, "127.0.0.1:7473");
  CLI11_PARSE(app, argc, argv);

  tierkv::BlockShutdownSignals();
  auto model = flags.LoadModel();
  if (!model.ok()) {
    std::cerr << "tierkv-decode-worker: --model " << flags.model << ": " << model.status() << "\n";
    return 1;
  }
  auto cache = flags.CacheClientFor();
  if (!cache.ok()) {
    std::cerr << "tierkv-decode-worker: --cache: " << cache.status().message() << "\n";
    return 2;
  }
  tierkv::DecodeServiceImpl service(model->get(), cache->get());
  grpc::Service* services[] = {&service};
  auto server = tierkv::StartGrpcServer(flags.listen, services);
  if (!server.ok()) {
    std::cerr << "tierkv-decode-worker: " << server.status().message() << "\n";
    return 1;
  }
  std::cout << "tierkv-decode-worker serving " << (*model)->spec().model_id << " on "
            << server->address << ", cache manager " << flags.cache << " (pid " << getpid()
            << ")" << std::endl;
  if (absl::Status s = tierkv::WritePortFile(flags.port_file, server->port); !s.ok()) {
    std::cerr << "tierkv-decode-worker: --port-file: " << s.message() << "\n";
    return 1;
  }
  tierkv::WaitForShutdownSignal();
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
