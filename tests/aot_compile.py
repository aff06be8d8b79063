"""Compile pickled launch plans ahead of time for one GPU target (run by test_zz_aot.py, one process per target:
Triton 3.6's AMD backend keeps process-wide state, and a gfx942 e4m3fnuz compile after gfx950 compiles in one
process trips an assertion in its software fp8 conversion; each target alone compiles cleanly).

Usage: python aot_compile.py PLANS.pickle TARGET  -> prints one line per failure and a summary line.
"""

import pickle
import sys

from fused_qkv.core.aot import compile_for, jax_pointer_dtypes, retarget, signature
from fused_qkv.core.plan import TARGET_FP8, TARGET_Q_FP8


def main(path, target):
    with open(path, "rb") as f:
        plans = pickle.load(f)
    done = failed = 0
    seen = set()
    for plan in plans:
        caches = {plan.pointer_dtypes["key_cache"], plan.pointer_dtypes["value_cache"]}
        if any(c.startswith("float8") and c not in TARGET_FP8[target] for c in caches):
            continue  # this target cannot store that cache dtype (the spec rejects it there)
        if plan.pointer_dtypes["q"].startswith("float8") and plan.pointer_dtypes["q"] not in TARGET_Q_FP8[target]:
            continue  # nor that fp8 q
        tplan = retarget(plan, target)
        styles = {"torch": dict(plan.pointer_dtypes), "jax": jax_pointer_dtypes(plan)}
        for style, ptrs in styles.items():
            # interpreter plans that differ only in their own tiles are one specialisation on the target
            key = repr((sorted(tplan.constexprs.items()), tplan.num_warps, sorted(ptrs.items()),
                        signature(tplan, ptrs)[0]))
            if key in seen:
                continue
            seen.add(key)
            try:
                kernel = compile_for(tplan, ptrs, target)
                assert kernel.asm["cubin" if target == "cuda" else "hsaco"]
                done += 1
            except Exception as exc:  # report every failing specialisation
                failed += 1
                print(f"FAILED {target} {style} {dict(tplan.constexprs)} {ptrs}: {str(exc)[:1500]}")
    print(f"compiled {done} distinct specialisations for {target} (of {len(plans)} plans, torch and JAX style), "
          f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
