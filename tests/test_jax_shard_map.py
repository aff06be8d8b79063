"""Tensor parallelism: the JAX op under jax.shard_map on a simulated 4-device CPU mesh (own process: the
device count is fixed when JAX starts), bit-identical to the unsharded op."""

import os
import subprocess
import sys


def test_shard_map_heads_split_across_4_devices():
    # always the simulated CPU mesh, also on a GPU machine (a real multi-GPU run is a separate issue)
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    script = os.path.join(os.path.dirname(__file__), "shard_map_check.py")
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "SHARD_MAP OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_tensor_parallel_columns_is_a_permutation():
    from fused_qkv.core import tensor_parallel_columns

    for gate, layout in ((False, "interleaved"), (True, "interleaved"), (True, "blocked")):
        for k_eq_v in (False, True):
            perm = tensor_parallel_columns(2, num_q_heads=4, num_kv_heads=2, head_dim=16, attn_output_gate=gate,
                                           gated_qkv_layout=layout, k_eq_v=k_eq_v)
            assert sorted(perm) == list(range((4 * (2 if gate else 1) + (2 if k_eq_v else 4)) * 16))
