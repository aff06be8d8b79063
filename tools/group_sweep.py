"""Sweep the head group (``plan.head_group``) and the tiles of the model-coverage and fp8 shapes (S5-S8) against
the same shapes without their options, on the GPU, timed as ``fused-qkv bench`` times them (CUDA-graph replays).

    python tools/group_sweep.py --out DIR [--tokens 1024,4096,8192,32768] [--shapes S5,S6,S7,S8]
        [--tiles all|default|16:4,32:8] [--groups auto|all] [--group-list 1,2,4,8] [--rows-list 1,2,4]

Writes DIR/group_sweep.json and prints the best choices per (shape, T) in % of the copy bandwidth measured first.
"""

import argparse
import json
import os

import torch
from fused_qkv.bench import bench
from fused_qkv.core import plan
from fused_qkv.torch_api.op import clear_caches

TILES = [None, (2, 1), (4, 1), (4, 2), (8, 1), (8, 2), (16, 2), (16, 4), (32, 4)]


def timed(fn, T, nbytes, copy_bw):
    reps = 200 if T <= bench.L2_TOKENS else 40
    per_graph = bench.calls_per_graph(T, nbytes / (copy_bw * 1e9) * 1e6)
    clear_caches()
    return bench.graph_time_us(fn, reps, per_graph)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokens", default="1024,4096,8192,32768")
    parser.add_argument("--shapes", default="S5,S6")
    parser.add_argument("--tiles", default="all", help="all, default, or BLOCK_T:warps pairs, e.g. 16:4,32:8")
    parser.add_argument("--groups", default="auto", choices=("auto", "all"),
                        help="auto: groups for mRoPE and fp8-q shapes only; all: for every shape")
    parser.add_argument("--group-list", default="1,2,4,8", help="the heads per program tried")
    parser.add_argument("--rows-list", default="1", help="the heads side by side in a tile's rows tried "
                        "(plan.head_rows; with a group of g heads, g * rows must divide the head counts)")
    args = parser.parse_args()
    tile_list = (TILES if args.tiles == "all" else [None] if args.tiles == "default"
                 else [tuple(map(int, t.split(":"))) for t in args.tiles.split(",")])
    copy_bw = bench.copy_bandwidth_gbps()
    print(f"copy bandwidth {copy_bw:.0f} GB/s", flush=True)
    real_group = plan.head_group
    found = []
    for sname in args.shapes.split(","):
        shape = bench.SHAPES[sname]
        # the shapes whose programs may rotate several heads: mRoPE (shared table rows), fp8 q (adjacent scales)
        grouped = shape.get("mrope_section") or sname in ("S7", "S8") or args.groups == "all"
        groups = [g for g in map(int, args.group_list.split(",")) if shape["num_kv_heads"] % g == 0] if grouped else [1]
        for T in [int(t) for t in args.tokens.split(",")]:
            inp = bench.torch_inputs(shape, T)
            fns = bench.torch_impls(shape, inp)
            nbytes = bench.min_bytes(shape, T)
            pct = lambda us, nbytes=nbytes: 100 * nbytes / (us * 1e-6) / 1e9 / copy_bw  # noqa: E731
            rows = []
            for variant in [v for v in ("fused_torch", "fused_plain") if v in fns]:  # S1-S4 have no plain twin
                for g, hr in ([(g, hr) for g in groups for hr in map(int, args.rows_list.split(","))
                               if shape["num_kv_heads"] % (g * hr) == 0] if variant == "fused_torch" else [(1, 1)]):
                    for tiles in tile_list:
                        if tiles and tiles[0] * plan.next_pow2(shape["head_dim"]) > 16384:
                            continue
                        plan.head_group = lambda c, r, n, d=False, g=g: g
                        try:
                            with plan.head_rows_override(hr):
                                if tiles:
                                    with plan.tile_override(*tiles):
                                        us = timed(fns[variant], T, nbytes, copy_bw)
                                else:
                                    us = timed(fns[variant], T, nbytes, copy_bw)
                        finally:
                            plan.head_group = real_group
                        rows.append(dict(variant=variant, group=g, head_rows=hr, tiles=tiles, us=us))
            plan.head_group = real_group
            default = timed(fns["fused_torch"], T, nbytes, copy_bw)
            plain_default = timed(fns["fused_plain"], T, nbytes, copy_bw) if "fused_plain" in fns else float("nan")
            found.append(dict(shape=sname, T=T, default_us=default, plain_default_us=plain_default, rows=rows))
            best = sorted((r for r in rows if r["variant"] == "fused_torch"), key=lambda r: r["us"])[:5]
            bestp = sorted((r for r in rows if r["variant"] == "fused_plain"), key=lambda r: r["us"])[:3]
            print(f"{sname} T={T}: default {default:.1f} us ({pct(default):.1f}%), plain default {plain_default:.1f}"
                  f" ({pct(plain_default):.1f}%)", flush=True)
            print("   best: " + "; ".join(f"g={r['group']} rows={r['head_rows']} tiles={r['tiles']} {r['us']:.1f} "
                                         f"({pct(r['us']):.1f}%)" for r in best), flush=True)
            print("   plain best: " + "; ".join(f"tiles={r['tiles']} {r['us']:.1f} ({pct(r['us']):.1f}%)"
                                               for r in bestp), flush=True)
            for r in rows:
                if r["variant"] == "fused_torch" and r["tiles"] is None:
                    print(f"   g={r['group']} rows={r['head_rows']} default tiles: {r['us']:.1f} "
                          f"({pct(r['us']):.1f}%)", flush=True)
            del inp, fns
            torch.cuda.empty_cache()
            os.makedirs(args.out, exist_ok=True)  # after every size: a run cut short keeps what it measured
            with open(os.path.join(args.out, "group_sweep.json"), "w") as f:
                json.dump(dict(copy_bandwidth_gbps=copy_bw, results=found), f, indent=1)


if __name__ == "__main__":
    main()
