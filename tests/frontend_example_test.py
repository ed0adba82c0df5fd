#!/usr/bin/env python3
"""Runs examples/frontend_client.py --check against tierkv started for the test.

Either `tierkv up` (every role in one process; --tierkv) or the three role binaries as
separate processes (--cache-manager, --prefill-worker, --decode-worker), the workers
reaching the cache manager over gRPC and its UCX data plane. Every process binds 127.0.0.1
on a free port (--listen 127.0.0.1:0 --port-file), is bounded in time, and is stopped by its
PID (SIGTERM, then SIGKILL) however the test ends. The example runs under Debian's
/usr/bin/python3, which has python3-grpcio and python3-protobuf.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_TIMEOUT_S = 120
EXAMPLE_TIMEOUT_S = 240


class Process:
    """A tierkv binary on 127.0.0.1 with a free port, stopped by its PID."""

    def __init__(self, tmp, name, argv):
        self.name = name
        self.port_file = Path(tmp) / f"{name}.port"
        self.log_path = Path(tmp) / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*argv, "--listen", "127.0.0.1:0", "--port-file", str(self.port_file)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_port(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.port_file.exists() and self.port_file.read_text().strip():
                return f"127.0.0.1:{int(self.port_file.read_text().strip())}"
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start:\n{self.log()}")

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tierkv", help="tierkv binary: run `tierkv up`")
    parser.add_argument("--cache-manager", help="tierkv-cache-manager: run roles apart")
    parser.add_argument("--prefill-worker")
    parser.add_argument("--decode-worker")
    parser.add_argument("--example", required=True)
    parser.add_argument("--stubs", required=True)
    args = parser.parse_args()

    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    processes = []
    with tempfile.TemporaryDirectory(prefix="frontend_example.") as tmp:
        try:
            if args.tierkv:
                up = Process(tmp, "tierkv-up", [args.tierkv, "up", "--host-capacity", "256MiB",
                                                   "--data-dir", str(Path(tmp) / "data")])
                processes.append(up)
                address = up.wait_port()
                addresses = ["--server", address]
            else:
                cache = Process(tmp, "cache-manager",
                                [args.cache_manager, "--host-capacity", "256MiB"])
                processes.append(cache)
                cache_address = cache.wait_port()
                prefill = Process(tmp, "prefill-worker",
                                  [args.prefill_worker, "--cache", cache_address])
                decode = Process(tmp, "decode-worker",
                                 [args.decode_worker, "--cache", cache_address])
                processes += [prefill, decode]
                addresses = ["--cache", cache_address, "--prefill", prefill.wait_port(),
                             "--decode", decode.wait_port()]
            result = subprocess.run(
                [python, args.example, *addresses, "--stubs", args.stubs, "--check"],
                capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S,
                stdin=subprocess.DEVNULL)
            print(result.stdout)
            print(result.stderr, file=sys.stderr)
            if result.returncode != 0:
                for p in processes:
                    print(f"--- {p.name} log ---\n{p.log()}")
            return result.returncode
        except RuntimeError as e:
            print(e)
            return 1
        finally:
            for p in processes:
                p.stop()


if __name__ == "__main__":
    sys.exit(main())
