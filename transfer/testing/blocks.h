// Small helpers shared by the transfer tests and benchmark.
#ifndef TIERKV_TRANSFER_TESTING_BLOCKS_H_
#define TIERKV_TRANSFER_TESTING_BLOCKS_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <string>

#include "transfer/engine.h"

namespace tierkv::transfer::testing {

// A block size from 1 byte up to `max`, log-uniform: each order of magnitude is as likely.
inline size_t RandomBlockSize(std::mt19937_64& rng, size_t max) {
  double exponent = std::uniform_real_distribution<double>(0, std::log2(double(max)))(rng);
  return std::clamp<size_t>(static_cast<size_t>(std::exp2(exponent)), 1, max);
}

// "tcp_one_sided", "shm_two_sided", ...: names of parameterized test cases.
inline std::string TransportPathName(const std::string& transport, PathPolicy path) {
  return transport + (path == PathPolicy::kOneSided   ? "_one_sided"
                      : path == PathPolicy::kTwoSided ? "_two_sided"
                                                      : "_auto");
}

// Options of an engine for tests on this host: `transport` ("tcp": over lo only, or "shm"),
// the given path policy, and a 10 s op timeout that bounds any hang.
inline EngineOptions LoopbackOptions(const std::string& transport, PathPolicy path) {
  EngineOptions options;
  options.transports = transport;
  if (transport == "tcp") options.net_devices = "lo";
  options.path = path;
  options.op_timeout = absl::Seconds(10);
  return options;
}

}  // namespace tierkv::transfer::testing

#endif  // TIERKV_TRANSFER_TESTING_BLOCKS_H_
