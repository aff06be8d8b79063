"""What the GPU runs for one call of each fused op: ``python tools/kernel_events.py S2 4 [S2 16 ...]``
lists, for the torch op (int64 and int32 indices; int32 also with a synchronisation after each call, as the JAX
calls run) and the jitted JAX op on the bench's inputs, every kernel, copy and memset that CUPTI records (through
``torch.profiler``) over 20 calls, with its mean duration and count per call. Used to tell a slower kernel apart
from extra work around it, or from the calls' context (back-to-back or one at a time)."""

import collections
import sys

from fused_qkv.bench.bench import SHAPES, gpu_activities, jax_impls, synced, torch_impls, torch_inputs


def events(call, n=20):
    acc = collections.defaultdict(list)
    for name, us in gpu_activities(call, n):
        acc[name].append(us)
    return {name: (sum(d) / len(d), len(d) / n) for name, d in acc.items()}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pairs = [(argv[i], int(argv[i + 1])) for i in range(0, len(argv), 2)]
    for sname, T in pairs:
        inp = torch_inputs(SHAPES[sname], T)
        # the JAX op gets int32 positions and slots (the bench's JAX inputs); the torch op both int64 and int32
        inp32 = dict(inp, positions=inp["positions"].int(), slot_mapping=inp["slot_mapping"].int())
        torch32 = torch_impls(SHAPES[sname], inp32)["fused_torch"]
        calls = {"torch": torch_impls(SHAPES[sname], inp)["fused_torch"], "torch, int32 indices": torch32,
                 "torch, int32, synced": synced(torch32), "jax": jax_impls(SHAPES[sname], inp)["fused_jax"]}
        for label, call in calls.items():
            for name, (us, per_call) in sorted(events(call).items(), key=lambda kv: -kv[1][0] * kv[1][1]):
                print(f"{sname} T={T} {label:<20} {us:7.2f} us x {per_call:4.1f} per call  {name[:110]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
