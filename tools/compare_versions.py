"""Time the fused torch op alone, to compare two versions of this package on one GPU.

``python tools/compare_versions.py --out FILE [--shapes S1,S2] [--tokens 1,16,4096] [--index-dtype int32]`` writes,
per shape and T, the CUDA-graph time per call with 4 and with 20 back-to-back calls per graph, the kernel time from
CUPTI (``device_time_us``) and, at T=16, the eager host time per call as a ratio to one aten op. Only functions
that every version of ``bench.py`` has are used, so with an older install first on ``PYTHONPATH`` the same script
times that version, minutes apart on the same machine (``.ci/gpu.sh compare DIR`` does both). The copy bandwidth
is measured in each run.
"""

import argparse
import json
import sys

from fused_qkv.bench.bench import (
    SHAPES,
    copy_bandwidth_gbps,
    device_time_us,
    graph_time_us,
    host_ratio,
    min_bytes,
    torch_impls,
    torch_inputs,
)


def main(argv=None) -> int:
    import fused_qkv.torch_api
    import torch

    parser = argparse.ArgumentParser(prog="python tools/compare_versions.py")
    parser.add_argument("--shapes", default="S1,S2,S3,S4")
    parser.add_argument("--tokens", default="1,16,4096,16384")
    parser.add_argument("--index-dtype", choices=("int64", "int32"), default="int64",
                        help="dtype of positions and slot_mapping (int32: what the JAX frontend passes)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    copy_bw = copy_bandwidth_gbps()
    x, y = torch.randn(16, device="cuda"), torch.empty(16, device="cuda")
    aten = lambda: torch.add(x, 1.0, out=y)  # noqa: E731
    print(f"package {fused_qkv.torch_api.__file__}; copy bandwidth {copy_bw:.0f} GB/s", flush=True)
    rows = []
    for sname in args.shapes.split(","):
        for T in (int(t) for t in args.tokens.split(",")):
            inp = torch_inputs(SHAPES[sname], T)
            if args.index_dtype == "int32":
                inp.update(positions=inp["positions"].int(), slot_mapping=inp["slot_mapping"].int())
            fn = torch_impls(SHAPES[sname], inp)["fused_torch"]
            nbytes = min_bytes(SHAPES[sname], T)
            row = dict(shape=sname, T=T, index_dtype=args.index_dtype, bytes=nbytes)
            for per_graph in (4, 20):
                row[f"graph{per_graph}_us"] = graph_time_us(fn, max(40, 2 * per_graph), calls_per_graph=per_graph)
            row["kernel_us"] = device_time_us(fn, 50 if T <= 1024 else 20)
            if T == 16:
                row["host_aten_ratio"], row["host_us"] = host_ratio(fn, aten)
            for k in ("graph4_us", "graph20_us", "kernel_us"):
                row[k.replace("_us", "_pct_copy")] = 100 * nbytes / (row[k] * 1e-6) / 1e9 / copy_bw
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
            rows.append(row)
            del inp, fn
            torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(dict(package=fused_qkv.torch_api.__file__, copy_bandwidth_gbps=copy_bw, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
