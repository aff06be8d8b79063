"""Compile launch plans ahead of time for GPU targets, one process per target (Triton 3.6's AMD backend keeps
process-wide state, and a gfx942 e4m3fnuz compile after gfx950 compiles in one process trips an assertion in its
software fp8 conversion; each target alone compiles cleanly).

``Compilers`` starts ``python aot_compile.py --stream TARGET`` for each target and sends it plans (length-prefixed
pickles on stdin) as they come: the test session starts them at collection, so the compiles run beside the
interpreted tests (CI has 2 cores, the interpreter uses one). Each prints one line per failure and a summary
line, and exits 1 if any failed.
"""

import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading

TARGETS = ("cuda", "hip:gfx942", "hip:gfx950")


class _Compiler:
    """Compiles each distinct specialisation once for one target, counting successes and printing failures."""

    def __init__(self, target):
        self.target, self.done, self.failed, self.plans, self.seen = target, 0, 0, 0, set()

    def add(self, plan):
        from fused_qkv.core.aot import compile_for, jax_pointer_dtypes, retarget, signature
        from fused_qkv.core.plan import TARGET_FP8, TARGET_Q_FP8

        self.plans += 1
        target = self.target
        caches = {plan.pointer_dtypes["key_cache"], plan.pointer_dtypes["value_cache"]}
        if any(c.startswith("float8") and c not in TARGET_FP8[target] for c in caches):
            return  # this target cannot store that cache dtype (the spec rejects it there)
        if plan.pointer_dtypes["q"].startswith("float8") and plan.pointer_dtypes["q"] not in TARGET_Q_FP8[target]:
            return  # nor that fp8 q
        tplan = retarget(plan, target)
        styles = {"torch": dict(plan.pointer_dtypes), "jax": jax_pointer_dtypes(plan)}
        for style, ptrs in styles.items():
            # interpreter plans that differ only in their own tiles are one specialisation on the target
            key = repr((sorted(tplan.constexprs.items()), tplan.num_warps, sorted(ptrs.items()),
                        signature(tplan, ptrs)[0]))
            if key in self.seen:
                continue
            self.seen.add(key)
            try:
                kernel = compile_for(tplan, ptrs, target)
                assert kernel.asm["cubin" if target == "cuda" else "hsaco"]
                self.done += 1
            except Exception as exc:  # report every failing specialisation
                self.failed += 1
                print(f"FAILED {target} {style} {dict(tplan.constexprs)} {ptrs}: {str(exc)[:1500]}", flush=True)

    def summary(self):
        print(f"compiled {self.done} distinct specialisations for {self.target} (of {self.plans} plans, torch and "
              f"JAX style), {self.failed} failed", flush=True)
        return 1 if self.failed else 0


def stream(target):
    """Read plans from stdin on a thread and compile them here. The thread drains the pipe whenever it gets the
    GIL, so the test process blocks on a full pipe at most until a compile step releases it."""
    os.nice(5)  # the interpreted tests come first; the compiles take the idle core
    inbox = queue.Queue()

    def read():  # raw bytes only: nothing here can fail but the pipe, and the end is always signalled
        src = sys.stdin.buffer
        try:
            while (head := src.read(8)) and len(head) == 8:
                inbox.put(src.read(int.from_bytes(head, "little")))
        finally:
            inbox.put(None)

    threading.Thread(target=read, daemon=True).start()
    compiler = _Compiler(target)
    while (data := inbox.get()) is not None:
        compiler.add(pickle.loads(data))
    return compiler.summary()


class Compilers:
    """One ``--stream`` process per target, fed plans by ``send`` (every plan the session records, or a list:
    ``compile_all``); ``finish`` closes their input and returns ``{target: (exit code, output)}``."""

    def __init__(self, targets=TARGETS):
        self.logs = {t: tempfile.TemporaryFile() for t in targets}
        self.procs = {t: subprocess.Popen([sys.executable, os.path.abspath(__file__), "--stream", t],
                                          stdin=subprocess.PIPE, stdout=self.logs[t], stderr=subprocess.STDOUT)
                      for t in targets}

    def send(self, plan):
        data = pickle.dumps(plan)
        for p in self.procs.values():
            try:
                p.stdin.write(len(data).to_bytes(8, "little") + data)
                p.stdin.flush()
            except OSError:  # the compiler died: finish() reports its exit code and output
                pass

    def finish(self, timeout=1800):
        results = {}
        for p in self.procs.values():
            try:
                p.stdin.close()
            except OSError:
                pass
        try:
            for t, p in self.procs.items():
                code = p.wait(timeout=timeout)
                self.logs[t].seek(0)
                results[t] = (code, self.logs[t].read().decode(errors="replace"))
        finally:
            self.kill()  # a timeout or an interrupt leaves no compiler behind
        return results

    @classmethod
    def compile_all(cls, plans, targets=TARGETS):
        compilers = cls(targets)
        for plan in plans:
            compilers.send(plan)
        return compilers.finish()

    def kill(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()


if __name__ == "__main__":
    assert sys.argv[1] == "--stream", "usage: python aot_compile.py --stream TARGET"
    sys.exit(stream(sys.argv[2]))
