"""Helpers the diagnostics share (not installed; the tools run from the repository root as ``python tools/X.py``)."""

import contextlib


@contextlib.contextmanager
def python_launcher_only():
    """Inside: the torch op's eager calls skip the native launcher (torch_api/native.cpp) and take the Python path."""
    from fused_qkv.torch_api import native

    loaded = native.loaded
    native.loaded = lambda: None
    try:
        yield
    finally:
        native.loaded = loaded


def recorded_launch(fn):
    """Clear the torch op's caches and call ``fn`` (one eager call of it) twice through the Python path; returns
    (the fast-path entry, the arguments its second call handed Triton's launcher, that call's outputs, which must
    stay alive while the arguments are reused)."""
    from fused_qkv.torch_api import fast_path
    from fused_qkv.torch_api.op import clear_caches

    clear_caches()
    with python_launcher_only():
        fn()
        (entry,) = fast_path._FAST.values()
        recorded, run = [], entry.run
        entry.run = lambda *args: recorded.append(args)
        try:
            out = fn()
        finally:
            entry.run = run
    return entry, recorded[0], out
