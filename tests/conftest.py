"""Test configuration: the device the suite runs on.

``FUSED_QKV_TEST_DEVICE`` (default ``cpu``): ``cpu`` runs every kernel under Triton's
interpreter; ``cuda`` runs the compiled kernel on the GPU and also collects ``tests/gpu/``.
"""

import os
import sys

import pytest
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py

DEVICE = os.environ.get("FUSED_QKV_TEST_DEVICE", "cpu")

# fp8 cache dtypes the device's target stores (see fused_qkv.core.plan.TARGET_FP8)
FP8_ON_DEVICE = (["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz"] if DEVICE == "cpu"
                 else ["float8_e4m3fn", "float8_e5m2"])
Q_FP8_ON_DEVICE = ["float8_e4m3fn", "float8_e4m3fnuz"] if DEVICE == "cpu" else ["float8_e4m3fn"]  # fp8 q: e4m3

collect_ignore = [] if DEVICE.startswith("cuda") else ["gpu"]

# CI runs a fixed, reproducible set of fuzz examples; local runs explore new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Every kernel specialisation the session launches (or plans), recorded from the launch spec, so that
# tests/test_zz_aot.py (collected last) can compile each one ahead of time for every GPU target.
RECORDED_PLANS: dict = {}


def _record_plan(plan, target):
    import json

    values = list(plan.constexprs.values()) + list(plan.scalars.values())
    if not all(isinstance(v, (bool, int, float, str, type(None))) for v in values):
        return  # symbolic shapes (fake tensors under dynamic tracing): not a specialisation that launches

    key = json.dumps([sorted(plan.constexprs.items()), sorted(plan.pointer_dtypes.items()),
                      sorted((k, abs(v) >= 2**31) for k, v in plan.scalars.items() if isinstance(v, int))],
                     default=str)
    if key not in RECORDED_PLANS:
        RECORDED_PLANS[key] = plan
        if AOT["compilers"] is not None:
            AOT["compilers"].send(plan)


# tests/test_zz_aot.py's compilers, started at collection when it is among the tests to run (not in pytest-xdist
# workers, which would each start their own): they compile each plan as it is recorded, beside the tests.
AOT: dict = {"compilers": None, "items": set()}


def pytest_collection_finish(session):
    AOT["items"] = {item.originalname for item in session.items}
    wanted = any(item.name == "test_every_planned_specialisation_compiles_for_every_target" for item in session.items)
    if wanted and "PYTEST_XDIST_WORKER" not in os.environ and not session.config.option.collectonly:
        from aot_compile import Compilers

        AOT["compilers"] = Compilers()


def pytest_sessionfinish(session):
    if AOT["compilers"] is not None:  # the AOT test did not run to the end (-x, interrupt): stop its compilers
        AOT["compilers"].kill()
        AOT["compilers"] = None


@pytest.fixture(autouse=True, scope="session")
def _record_every_plan():
    from fused_qkv.core.plan import recording_plans

    with recording_plans(_record_plan):
        yield


def _jax_x64(flag: bool):
    import jax

    saved = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", flag)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", saved)


@pytest.fixture
def x64_on():
    """JAX keeps 64-bit dtypes (tests/test_jax_op.py turns this on for the whole session at import)."""
    yield from _jax_x64(True)


@pytest.fixture
def x64_off():
    """JAX's default: 64-bit arrays are narrowed to 32 bits."""
    yield from _jax_x64(False)
