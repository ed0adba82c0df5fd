#!/usr/bin/env python3
"""Checks project #includes against the layering table in ARCHITECTURE.md.

Two rules:
  1. An `#include "X/..."` from a file under folder Y is allowed only when X is
     Y itself or a folder that Y may depend on (ALLOWED below, copied from the
     "Layout and layering" table). Generated headers `tierkv/v1/*.pb.h` belong
     to proto/.
  2. RocksDB, UCX and CUDA headers appear only in .cc/.cu files and internal/
     headers (STYLE.md), never in a public `.h`.

Usage:
  check_layering.py [--root DIR]   check the tree; exit 1 on any violation
  check_layering.py --self-test    check the rules themselves on small examples
"""

import argparse
import os
import re
import sys
import tempfile
from typing import Dict, FrozenSet, Iterator, List, NamedTuple, Optional, Tuple

ANYTHING = None  # marks a folder that may include any project folder

# Folder -> project folders it may include besides itself. Keep in step with the
# table in ARCHITECTURE.md.
ALLOWED: Dict[str, Optional[FrozenSet[str]]] = {
    "core": frozenset(),
    "proto": frozenset(),
    "storage": frozenset({"core"}),
    "transfer": frozenset({"core"}),
    "kernels": frozenset({"core"}),
    "model": frozenset({"kernels", "core"}),
    "cache_manager": frozenset({"storage", "transfer", "proto", "core"}),
    # The client side of the cache manager's API (gRPC control plane + data plane), shared
    # by both workers and by tools; README.md lists it beside ARCHITECTURE.md's table.
    "cache_client": frozenset({"transfer", "proto", "core"}),
    "prefill_worker": frozenset({"cache_client", "model", "transfer", "proto", "core"}),
    # A decode worker prefills by itself on a miss: it reuses the prefill library.
    "decode_worker": frozenset({"prefill_worker", "cache_client", "model", "transfer",
                                "proto", "core"}),
    "cli": ANYTHING,
    "tests": ANYTHING,
    "bench": ANYTHING,
}

SOURCE_SUFFIXES = (".h", ".cc", ".cu", ".cuh")

# Include prefixes that name a project folder although they are not one:
# protoc writes the generated headers under tierkv/v1/ in the build tree.
ALIASES = {"tierkv": "proto"}

# Third-party headers that must stay out of public headers.
PRIVATE_HEADERS: Tuple[Tuple[str, str], ...] = (
    ("rocksdb/", "RocksDB"),
    ("ucp/", "UCX"),
    ("uct/", "UCX"),
    ("ucs/", "UCX"),
    ("cuda_runtime", "CUDA"),
    ("cuda.h", "CUDA"),
    ("cublas", "cuBLAS"),
)

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')


class Violation(NamedTuple):
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _allowed_text(folder: str) -> str:
    allowed = ALLOWED[folder]
    if allowed is ANYTHING:
        return "anything"
    return ", ".join(sorted(allowed | {folder}))


def _is_public_header(relpath: str) -> bool:
    parts = relpath.split("/")
    return relpath.endswith(".h") and "internal" not in parts[:-1]


def check_file(relpath: str, text: str) -> Tuple[List[Violation], int]:
    """Returns the violations in one file and how many project includes it has.

    relpath is relative to the repository root, with '/' separators; its first
    component must be a key of ALLOWED.
    """
    folder = relpath.split("/", 1)[0]
    allowed = ALLOWED[folder]
    public_header = _is_public_header(relpath)
    violations: List[Violation] = []
    project_includes = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        match = INCLUDE_RE.match(line)
        if not match:
            continue
        bracket, target = match.groups()
        if public_header:
            for prefix, library in PRIVATE_HEADERS:
                if target.startswith(prefix):
                    violations.append(Violation(
                        relpath, lineno,
                        f"public header may not include {library} header "
                        f"{target} (only .cc/.cu files and internal/ headers "
                        f"may)"))
        if bracket != '"' or "/" not in target:
            continue
        first = target.split("/", 1)[0]
        dep = ALIASES.get(first, first)
        if dep not in ALLOWED:
            continue  # third-party header such as "absl/status/status.h"
        project_includes += 1
        if dep == folder or allowed is ANYTHING or dep in allowed:
            continue
        violations.append(Violation(
            relpath, lineno,
            f"folder {folder} may not include {target} "
            f"(allowed: {_allowed_text(folder)})"))
    return violations, project_includes


def source_files(root: str) -> Iterator[str]:
    """Yields the C++/CUDA sources under the project folders, relative to root."""
    for folder in sorted(ALLOWED):
        top = os.path.join(root, folder)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(SOURCE_SUFFIXES):
                    full = os.path.join(dirpath, name)
                    yield os.path.relpath(full, root).replace(os.sep, "/")


def check_tree(root: str) -> Tuple[List[Violation], int, int]:
    """Returns (violations, files checked, project includes checked)."""
    violations: List[Violation] = []
    files = includes = 0
    for relpath in source_files(root):
        with open(os.path.join(root, relpath), encoding="utf-8",
                  errors="replace") as f:
            found, count = check_file(relpath, f.read())
        violations.extend(found)
        files += 1
        includes += count
    return violations, files, includes


def self_test() -> int:
    """Runs the rules on small examples; returns the number of failures."""
    cases = [
        # (path, text, expected number of violations)
        ("storage/host_pool.cc", '#include "core/block_key.h"\n', 0),
        ("storage/host_pool.cc", '#include "cache_manager/server.h"\n', 1),
        ("storage/host_pool.h", '#include "storage/slab.h"\n', 0),
        ("core/status.h", '#include "absl/status/status.h"\n', 0),
        ("core/status.h", '#include "storage/host_pool.h"\n', 1),
        ("proto/grpc_status.cc", '#include "core/status.h"\n', 1),
        ("proto/grpc_status.cc", '#include "tierkv/v1/common.pb.h"\n', 0),
        ("storage/x.cc", '#include "tierkv/v1/common.pb.h"\n', 1),
        ("cache_manager/x.cc", '#include "tierkv/v1/cache_service.grpc.pb.h"\n'
         '#include "storage/host_pool.h"\n#include "transfer/engine.h"\n', 0),
        ("cache_manager/x.cc", '#include "model/llama.h"\n', 1),
        ("model/llama.cc", '#include "kernels/attention.h"\n', 0),
        ("prefill_worker/x.cc", '#include "cache_manager/server.h"\n', 1),
        ("decode_worker/x.cc", '#include "storage/host_pool.h"\n', 1),
        ("cli/kvctl.cc", '#include "cache_manager/server.h"\n'
         '#include "model/llama.h"\n', 0),
        ("tests/x.cc", '#include "decode_worker/service.h"\n', 0),
        ("storage/ssd.h", "#include <rocksdb/db.h>\n", 1),
        ("storage/ssd.cc", "#include <rocksdb/db.h>\n", 0),
        ("storage/internal/catalog.h", "#include <rocksdb/db.h>\n", 0),
        ("transfer/engine.h", "#include <ucp/api/ucp.h>\n", 1),
        ("kernels/attention.h", "#include <cuda_runtime.h>\n", 1),
        ("kernels/gemm.h", '#include "cublas_v2.h"\n', 1),
        ("kernels/attention.cu", "#include <cuda_runtime.h>\n", 0),
        ("core/x.h", '// #include "storage/host_pool.h"\n', 0),
        ("core/x.h", '  #  include "storage/host_pool.h"\n', 1),
    ]
    failures = 0
    for path, text, expected in cases:
        found, _ = check_file(path, text)
        if len(found) != expected:
            failures += 1
            print(f"self-test FAILED: {path} with {text.strip()!r}: expected "
                  f"{expected} violation(s), got {[str(v) for v in found]}")

    # The tree walk too: one allowed and one forbidden include on disk must
    # give exactly one violation, in the right place.
    with tempfile.TemporaryDirectory() as root:
        files = {
            "storage/a.cc": '#include "core/b.h"\n',
            "core/b.h": '#include "absl/status/status.h"\n\n'
                        '#include "storage/a.h"\n',
            "docs/c.h": '#include "storage/a.h"\n',  # not a project folder
        }
        for relpath, text in files.items():
            os.makedirs(os.path.join(root, os.path.dirname(relpath)),
                        exist_ok=True)
            with open(os.path.join(root, relpath), "w", encoding="utf-8") as f:
                f.write(text)
        found, nfiles, nincludes = check_tree(root)
        want = "core/b.h:3: folder core may not include storage/a.h (allowed: core)"
        if [str(v) for v in found] != [want] or (nfiles, nincludes) != (2, 2):
            failures += 1
            print(f"self-test FAILED: tree walk gave {[str(v) for v in found]}, "
                  f"{nfiles} files, {nincludes} includes; wanted [{want!r}], "
                  f"2 files, 2 includes")

    total = len(cases) + 1
    print(f"layering self-test: {total - failures} passed, {failures} failed")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root", default=os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))),
        help="repository root (default: the one holding this script)")
    parser.add_argument("--self-test", action="store_true",
                        help="check the rules on built-in examples")
    args = parser.parse_args()

    if args.self_test:
        return 1 if self_test() else 0

    violations, files, includes = check_tree(args.root)
    for v in violations:
        print(v)
    if files == 0:
        print(f"layering: no source files found under {args.root}")
        return 1
    if violations:
        print(f"layering: {len(violations)} violation(s) in {files} files")
        return 1
    print(f"layering: ok, {includes} project includes in {files} files follow "
          f"ARCHITECTURE.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
