"""Generate the Python gRPC code beside every .proto under protos/, reproducibly.

Run from anywhere: `python -m protos.generate` writes *_pb2.py, *_pb2.pyi and
*_pb2_grpc.py next to each .proto (include root = the repository root, so the
generated imports read `from protos... import ..._pb2`). `--check` regenerates
into a scratch folder and fails, naming the file, if what is committed is stale.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(p.relative_to(REPO) for p in (REPO / "protos").rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    include = Path(protoc.__file__).parent / "_proto"
    written: list[Path] = []
    for proto in proto_files():
        args = [
            "grpc_tools.protoc",
            f"-I{REPO}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(REPO / proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")
        stem = proto.with_suffix("")
        written += [Path(f"{stem}{suffix}") for suffix in GENERATED_SUFFIXES]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed generated code is stale")
    args = parser.parse_args(argv)
    if not args.check:
        for path in generate(REPO):
            print(f"wrote {path}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        stale = [
            str(path)
            for path in generate(Path(scratch))
            if not (REPO / path).exists() or not filecmp.cmp(Path(scratch) / path, REPO / path, shallow=False)
        ]
        shutil.rmtree(scratch, ignore_errors=True)
    if stale:
        print(
            "generated gRPC code is stale; run `python -m protos.generate`:",
            *stale,
            sep="\n  ",
            file=sys.stderr,
        )
        return 1
    print(f"generated gRPC code is up to date ({len(proto_files())} proto files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
