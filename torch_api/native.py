"""The native eager launcher: ``native.cpp``, built on first use against the installed torch and cached on disk.

The Python frontend validates, plans and compiles a call signature once; it then records the signature here, and
later eager calls with the same configuration and tensor metadata allocate their outputs and launch the compiled
kernel from C++ (about one aten op of host time instead of five to nine). Whatever the native path does not cover
(another current device, misaligned pointers, arrays that meet, tensor subclasses, launch hooks) goes back to the
Python path, which checks everything.

Building needs a C++ compiler (``g++``; ``CXX`` overrides), the torch headers that come with the torch wheel and
the Python headers. It takes 10-20 s once per torch version and machine, announced on stderr when it starts and
when it ends; ``fused-qkv build-native`` does it ahead of time and says why it cannot. The library is cached under
``$FUSED_QKV_CACHE_DIR`` (default ``~/.cache/fused_qkv``). ``FUSED_QKV_NATIVE=0`` turns the native path off; when
the build is impossible or fails, the op warns once and keeps using the Python launcher. :func:`status` says which
is in use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings

SOURCE = pathlib.Path(__file__).with_name("native.cpp")
MODULE_NAME = "fused_qkv_native"
_lock = threading.Lock()
_state = {"tried": False, "module": None, "reason": "not built yet (it builds on the first CUDA eager call)"}


def enabled() -> bool:
    """False when ``FUSED_QKV_NATIVE=0``."""
    return os.environ.get("FUSED_QKV_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> pathlib.Path:
    root = os.environ.get("FUSED_QKV_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fused_qkv")
    return pathlib.Path(root) / "native"


def _compiler() -> list:
    return shlex.split(os.environ.get("CXX", "g++")) or ["g++"]


def missing_prerequisite():
    """Why the library cannot be built here (no compiler, no torch or Python headers), or None."""
    import torch

    cxx = _compiler()
    if shutil.which(cxx[0]) is None:
        return f"no C++ compiler: {cxx[0]!r} is not on PATH (install g++ or set CXX)"
    include = pathlib.Path(torch.__file__).parent / "include"
    for header in (include / "ATen" / "core" / "Tensor.h",
                   include / "torch" / "csrc" / "autograd" / "python_variable.h"):
        if not header.exists():
            return f"torch headers missing: {header} not found (this torch install ships no C++ headers)"
    python_h = pathlib.Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not python_h.exists():
        return f"Python headers missing: {python_h} not found (install the python3-dev package)"
    return None


def _compile_command(output: str) -> list:
    import torch

    torch_dir = pathlib.Path(torch.__file__).parent
    cxx = _compiler()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [*cxx, "-O2", "-std=c++20", "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
            f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", output, f"-L{torch_dir / 'lib'}",
            "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python", f"-Wl,-rpath,{torch_dir / 'lib'}"]


def library_path() -> pathlib.Path:
    """Where the library for this source, torch and Python is (or will be) cached."""
    import torch

    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join(_compile_command("OUT")).encode())
    key.update(f"{torch.__version__} {sys.version}".encode())
    return cache_dir() / f"{MODULE_NAME}-{key.hexdigest()[:16]}.so"


def build(path: pathlib.Path) -> None:
    """Compile ``native.cpp`` to ``path`` (atomically: concurrent builders each write a temporary file); one line on
    stderr when the build starts and one when it ends."""
    reason = missing_prerequisite()
    if reason is not None:
        raise RuntimeError(reason)
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"fused_qkv: building the native eager launcher with {_compiler()[0]} (once per machine and torch "
          f"version, 10-20 s) -> {path}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        cmd = _compile_command(tmp)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        os.replace(tmp, path)
        print(f"fused_qkv: native eager launcher built in {time.perf_counter() - start:.1f} s", file=sys.stderr,
              flush=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _import(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(*, warn: bool = True):
    """The native module, building it if needed; None when it is turned off or cannot be built (then
    :func:`status` says why, and a warning is given once if ``warn``)."""
    if _state["tried"]:
        return _state["module"]
    with _lock:
        if _state["tried"]:
            return _state["module"]
        if not enabled():
            _state.update(tried=True, module=None, reason="turned off (FUSED_QKV_NATIVE=0)")
            return None
        try:
            path = library_path()
            if not path.exists():
                build(path)
            module = _import(path)
            _state.update(tried=True, module=module, reason=f"in use ({path})")
        except Exception as exc:  # no compiler, no headers, ...: the Python launcher keeps working
            _state.update(tried=True, module=None, reason=f"unavailable: {exc}")
            if warn:
                warnings.warn(f"fused_qkv: the native eager launcher is unavailable, eager calls use the Python "
                              f"launcher (more host time per call). Set FUSED_QKV_NATIVE=0 to silence this. "
                              f"{_state['reason'][:2000]}", RuntimeWarning, stacklevel=3)
        return _state["module"]


def loaded():
    """The native module if it was loaded, else None (never builds)."""
    return _state["module"]


def status() -> str:
    """Whether eager CUDA calls launch from C++, and if not, why."""
    return _state["reason"]


def reset() -> None:
    """Forget the load attempt (tests); a loaded module stays imported but is not used until loaded again."""
    with _lock:
        _state.update(tried=False, module=None, reason="not built yet (it builds on the first CUDA eager call)")
