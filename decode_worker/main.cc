// tierkv-decode-worker: serves DecodeService for one model, reusing KV from a cache manager.
#include "CLI/CLI.hpp"
#include "core/process.h"
#include "decode_worker/decode_service.h"
#include "prefill_worker/worker_flags.h"

int main(int argc, char** argv) {
  tierkv::DisableMutexDeadlockDetection();
  CLI::App app{"tierkv decode worker: generates tokens, reusing cached KV of the prompt"};
  tierkv::WorkerFlags flags;
  flags.Register(app, "127.0.0.1:7473");
  CLI11_PARSE(app, argc, argv);
  return tierkv::RunWorker("tierkv-decode-worker", flags,
                           [](const tierkv::Runtime* model, tierkv::CacheClient* cache) {
                             return std::make_unique<tierkv::DecodeServiceImpl>(model, cache);
                           });
}
