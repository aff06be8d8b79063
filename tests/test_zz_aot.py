"""Portability: every kernel specialisation this test session planned -- recorded from the launch plan by
conftest, as the torch frontend and as the JAX frontend specialise it, with each target's own tile sizes --
compiles ahead of time for CUDA sm_90, ROCm gfx942 (MI300) and gfx950 (MI350), on a CPU-only machine. The
compilers (``aot_compile.Compilers``, one process per target) start at collection and take each plan as conftest
records it, so they run beside the tests; this test closes their input and waits for them. White-box where run
alone: ``helpers.plan_for`` reaches the torch frontend's ``plan_call``.

Collected last (file name), so it sees the plans of every other test. The interpreter does not type-check the
kernel as the compiler does, so this is also what keeps CPU CI honest about compiled code.
"""

from aot_compile import TARGETS, Compilers
from conftest import AOT, RECORDED_PLANS
from helpers import plan_for


def _ensure_some_plans():
    """Run alone, this file still compiles the oracle case list's plans."""
    if RECORDED_PLANS:
        return
    from test_torch_op import CASES

    for case in CASES:
        plan_for(case, target="interpreter")  # recorded by conftest's plan observer


def test_every_planned_specialisation_compiles_for_every_target():
    _ensure_some_plans()
    plans = list(RECORDED_PLANS.values())
    compilers = AOT["compilers"]
    if compilers is not None:  # started at collection (conftest): every recorded plan has been sent to them
        if "test_scan_over_layers_with_donated_stacked_cache" in AOT["items"]:
            assert any(p.has_layer for p in plans)  # the JAX frontend's layer path is among them
        results = compilers.finish()
        AOT["compilers"] = None
    else:  # pytest-xdist workers: compile the plans this worker recorded, now
        results = Compilers.compile_all(plans)
    print(f"{len(plans)} distinct specialisations planned in this session")
    for t in TARGETS:
        out = results[t][1].strip()
        print(out.splitlines()[-1] if out else f"{t}: no output")
    bad = {t: out[-6000:] for t, (code, out) in results.items() if code != 0 or "0 failed" not in out}
    assert not bad, bad


def test_retargeting_replaces_every_interpreter_fp8_encoding_with_the_hardware_cast():
    from fused_qkv.core.aot import retarget
    from helpers import Case

    case = Case(T=16, num_blocks=16, cache_dtype="float8_e4m3fnuz", q_fp8="dynamic", q_dtype="float8_e4m3fnuz",
                scale_cache="kv")
    plan = plan_for(case, target="interpreter")
    soft = ("Q_SOFT_FP8", "K_SOFT_FP8", "V_SOFT_FP8")
    assert all(plan.constexprs[k] for k in soft) and not plan.constexprs["HW_CAST"]
    for target in ("hip:gfx942", "hip:gfx950", "cuda"):
        tplan = retarget(plan, target)
        assert not any(tplan.constexprs[k] for k in soft), target
        assert tplan.constexprs["HW_CAST"] == (2 if target == "cuda" else 1), target  # only CUDA's casts saturate
