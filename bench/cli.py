"""The ``fused-qkv`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fused-qkv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the op on this machine's device and verify it against the oracle")
    demo.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda[:N]")
    sub.add_parser("bench", add_help=False, help="time the op against its baselines on the GPU (see --help)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from fused_qkv.bench.bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from fused_qkv.bench.demo import main as demo_main

        return demo_main(args.device)
    return 2


if __name__ == "__main__":
    sys.exit(main())
