#!/usr/bin/env python3
"""Runs examples/frontend_client.py --check against a `tierkv up` started for the test.

`tierkv up` binds 127.0.0.1 on a free port (--listen 127.0.0.1:0 --port-file), is bounded in
time, and is stopped by its PID (SIGTERM, then SIGKILL) however the test ends. The example
runs under Debian's /usr/bin/python3, which has python3-grpcio and python3-protobuf.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tierkv", required=True)
    parser.add_argument("--example", required=True)
    parser.add_argument("--stubs", required=True)
    args = parser.parse_args()

    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    with tempfile.TemporaryDirectory(prefix="frontend_example.") as tmp:
        port_file = Path(tmp) / "port"
        log_path = Path(tmp) / "tierkv.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [args.tierkv, "up", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                 "--host-capacity", "256MiB"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            port = None
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                if port_file.exists() and port_file.read_text().strip():
                    port = int(port_file.read_text().strip())
                    break
                time.sleep(0.1)
            if port is None:
                print(f"tierkv up did not start:\n{log_path.read_text(errors='replace')}")
                return 1
            result = subprocess.run(
                [python, args.example, "--server", f"127.0.0.1:{port}", "--stubs", args.stubs,
                 "--check"],
                capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S,
                stdin=subprocess.DEVNULL)
            print(result.stdout)
            print(result.stderr, file=sys.stderr)
            if result.returncode != 0:
                print(f"--- tierkv up log ---\n{log_path.read_text(errors='replace')}")
            return result.returncode
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
