"""One-off experiment (session 5, on the kernel of commit 8eacc06, which it rewrites in place and restores):
cache hints on the streaming loads and stores, S3/S4/S1 at T=4096, 3 alternating rounds in fresh processes.
Its output: experiment.log. The hints it found best are now the kernel's STREAM constexpr (spec.streams)."""
import json
import pathlib
import re
import subprocess
import sys

KERNEL = pathlib.Path(__file__).resolve().parents[3] / "core" / "kernel.py"


def variant(src: str, name: str) -> str:
    if name == "base":
        return src
    out = src
    if "lf" in name:  # qkv loads evict_first
        for pat in (r"(tl\.load\(src \+ [abp]_offs, mask=[^)]*?, other=0\.0)\)",
                    r"(tl\.load\(qkv_row \+ V_COL0 [^\n]*?mask=row_mask & d_mask)\)",
                    r"(tl\.load\(qkv_row \+ GATE_COL0 [^\n]*?mask=row_mask & d_mask)\)"):
            out, n = re.subn(pat, r'\1, eviction_policy="evict_first")', out)
            assert n >= 1, pat
    if "scs" in name:  # all stores: streaming
        out, n = re.subn(r"(tl\.store\([^\n]*?mask=mask)\)", r'\1, cache_modifier=".cs")', out)
        assert n == 2, n
        out, n = re.subn(r"(tl\.store\([^\n]*?d_mask)\)", r'\1, cache_modifier=".cs")', out)
        assert n == 3, n
    if "sef" in name:  # all stores: evict_first
        out, n = re.subn(r"(tl\.store\([^\n]*?mask=mask)\)", r'\1, eviction_policy="evict_first")', out)
        assert n == 2, n
        out, n = re.subn(r"(tl\.store\([^\n]*?d_mask)\)", r'\1, eviction_policy="evict_first")', out)
        assert n == 3, n
    return out


def child(name):
    from fused_qkv.bench.bench import SHAPES, calls_per_graph, graph_time_us, min_bytes, torch_impls, torch_inputs
    res = {}
    for s in ("S3", "S4", "S1"):
        inp = torch_inputs(SHAPES[s], 4096)
        fn = torch_impls(SHAPES[s], inp)["fused_torch"]
        nb = min_bytes(SHAPES[s], 4096)
        res[s] = graph_time_us(fn, 40, calls_per_graph(4096, nb / 3000e9 * 1e6))
    print("RESULT", json.dumps({name: res}), flush=True)


def main():
    if len(sys.argv) > 1:
        return child(sys.argv[1])
    orig = KERNEL.read_text()
    names = ["base", "lf", "lf_scs", "lf_sef", "sef"]
    results = {n: {} for n in names}
    try:
        for rnd in range(3):
            for n in names:
                KERNEL.write_text(variant(orig, n))
                p = subprocess.run([sys.executable, __file__, n], capture_output=True,
                                   text=True)
                line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT")]
                if not line:
                    print(n, "FAILED", p.stderr[-2000:], flush=True)
                    continue
                r = json.loads(line[0][7:])[n]
                print(rnd, n, {k: round(v, 2) for k, v in r.items()}, flush=True)
                for k, v in r.items():
                    results[n].setdefault(k, []).append(v)
    finally:
        KERNEL.write_text(orig)
    for n, r in results.items():
        print(n, {k: round(sorted(v)[len(v) // 2], 2) for k, v in r.items()})


if __name__ == "__main__":
    main()
