"""The ``fused-qkv`` command line: ``demo`` (run and verify the op here), ``bench`` (time it on a GPU) and
``build-native`` (build the torch frontend's native eager launcher ahead of its first use)."""

from __future__ import annotations

import argparse
import sys


def _version() -> str:
    import fused_qkv

    return fused_qkv.__version__


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fused-qkv", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fused-qkv {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the op on this machine's device and verify it against the oracle",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--device", default="auto",
                      help="auto (the first CUDA device if there is one, else cpu), cpu, cuda or cuda:N")
    sub.add_parser("bench", add_help=False, help="time the op against its baselines on the GPU (see bench --help)")
    sub.add_parser("build-native", help="build the torch frontend's native eager launcher now (cached on disk), "
                                        "or say why it cannot be built here",
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from fused_qkv.bench.bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from fused_qkv.bench.demo import main as demo_main

        return demo_main(args.device)
    if args.command == "build-native":
        return build_native()
    return 2


def build_native() -> int:
    """Build (or find cached) the native launcher; 0 when it loads, 1 with the reason when it cannot."""
    try:
        from fused_qkv.torch_api import native
    except ImportError as exc:
        print(f"fused-qkv build-native: the torch frontend is not importable here ({exc}); "
              f"install fused-qkv[torch]", file=sys.stderr)
        return 1
    module = native.load(warn=False)
    if module is None:
        print(f"fused-qkv build-native: not built: {native.status()}", file=sys.stderr)
        return 1
    print(f"fused-qkv build-native: {native.status()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
