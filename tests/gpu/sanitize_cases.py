"""Run under ``compute-sanitizer --tool memcheck``: the oracle case list plus fuzzed configurations through the
torch op on CUDA (each also checked against the oracle). The sanitizer reports any out-of-bounds access. Each
configuration runs twice, on new tensors of the same metadata: the second call takes the eager fast path (the
native launcher where it is built)."""

import dataclasses
import os
import random
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("FUSED_QKV_TEST_DEVICE", "cuda")

from helpers import run_torch  # noqa: E402
from hypothesis.errors import NonInteractiveExampleWarning  # noqa: E402
from test_fuzz import cases, valid  # noqa: E402
from test_torch_op import DEVICE_CASES  # noqa: E402

warnings.filterwarnings("ignore", category=NonInteractiveExampleWarning)


def main(n_fuzz: int) -> int:
    from fused_qkv.torch_api import fast_path, native
    from fused_qkv.torch_api import op as op_module

    checked, real = [], op_module._checked_call
    op_module._checked_call = lambda *args, **kw: (checked.append(1), real(*args, **kw))[1]
    python_fast, real_fast = [], fast_path._FastLaunch.__call__
    fast_path._FastLaunch.__call__ = lambda self, *a: (python_fast.append(1), real_fast(self, *a))[1]
    random.seed(0)
    configs = list(DEVICE_CASES) + [valid(cases().example()) for _ in range(n_fuzz)]
    for case in configs:
        run_torch(case, "cuda")
        run_torch(dataclasses.replace(case, seed=case.seed + 1), "cuda")
    calls = 2 * len(configs)
    native_calls = calls - len(checked) - len(python_fast)  # the native launcher returns before the Python paths
    print(f"SANITIZE RUN DONE: {len(configs)} configurations, two calls each; {len(checked)} calls took the checked "
          f"path, {len(python_fast)} reached the Python fast path, {native_calls} launched from the native launcher "
          f"({native.status()})")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 40))
