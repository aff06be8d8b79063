"""The benchmark's CPU path and byte model (the timings themselves run only on a GPU: docs/performance.md)."""

from fused_qkv.bench.bench import SHAPES, min_bytes


def test_min_bytes_counts_each_input_and_output_once():
    s1 = SHAPES["S1"]
    T = 4096
    qkv = T * (32 + 16) * 128 * 2
    tables = 2 * T * 64 * 4
    idx = 2 * T * 8
    q = T * 32 * 128 * 2
    kv_out = 2 * T * 8 * 128 * 2
    cache = 2 * T * 8 * 128 * 2
    assert min_bytes(s1, T) == qkv + tables + idx + q + kv_out + cache
    assert min_bytes(SHAPES["S4"], T) == min_bytes(s1, T) - kv_out  # return_kv=False: no k/v outputs
    assert min_bytes(SHAPES["S3"], T) == min_bytes(s1, T) - cache // 2  # fp8 cache: one byte per element
    assert min_bytes(SHAPES["S7"], T) == min_bytes(SHAPES["S3"], T) - q // 2  # fp8 q
    scales = T * 32 * 4 + 2 * T * 8 * 4  # q_scales [T, QH], k/v scale caches [T, KVH] each
    assert min_bytes(SHAPES["S8"], T) == min_bytes(SHAPES["S7"], T) + scales


def test_table_has_a_value_under_every_heading(capsys, tmp_path):
    """The printed table and the plot from a result as ``run`` writes it (rows with and without the same-bytes copy,
    which results of older runs have only above the L2 sizes)."""
    from fused_qkv.bench.bench import plot, print_table

    rows = []
    for T, impls in ((16, ("fused_torch", "fused_jax", "unfused_eager", "compiled_math", "unfused_jax", "floor")),
                     (4096, ("fused_torch", "fused_jax", "unfused_eager", "compiled_math", "unfused_jax",
                             "copy_same_bytes", "floor"))):
        for n, impl in enumerate(impls):
            us = 10.0 + n
            rows.append(dict(shape="S1", T=T, impl=impl, us=us, bytes=1000, gbps=1000 / us, pct_copy=30.0 / us,
                             latency_only=T <= 1024))
    for impl, us in (("fused_torch", 12.0), ("fused_jax", 12.5), ("fused_plain", 10.0), ("floor", 9.0)):  # S5/S6 rows
        rows.append(dict(shape="S5", T=4096, impl=impl, us=us, bytes=1000, gbps=1000 / us, pct_copy=30.0 / us,
                         latency_only=False))
    result = dict(device="test", copy_bandwidth_gbps=3000.0, host_overhead_ratio={"S1:fused_torch": 1.5},
                  kernel_us={"S1:16:fused_torch": 1.0, "S1:16:fused_jax": 1.1}, rows=rows)
    print_table(result)
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("shape"))
    table = lines[head:head + 4]
    # right-aligned columns: a heading missing or extra would make the heading line shorter or longer
    assert len(table[0]) == len(table[1]) == len(table[2]) == len(table[3]), table
    assert table[2].split()[-2] == f"{30.0 / 15.0:.1f}"  # 1-copy %: the same-bytes copy's row
    assert table[1].split()[-2] == "nan" and table[1].split()[-1] == "nan"  # no copy row, no plain variant
    assert table[3].split()[-1] == f"{12.0 / 10.0:.2f}"  # x plain: the options' cost
    plot(result, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_sweeps_record_every_case_and_leave_no_override(monkeypatch, tmp_path):
    """``--sweep`` and ``--sweep-stream`` with the timing faked (no GPU): one record per shape and size, the
    overrides they force seen by the plans of the timed calls, and gone afterwards."""
    import json

    import torch
    from fused_qkv.bench import bench
    from fused_qkv.core import plan

    seen = []

    def fake_time(fn, reps, per_graph):  # what a GPU plan would use now: tiles and hints
        seen.append((plan.choose_tiles(4096, 128, "cuda"), plan.evict_first(4096, 12288, "cuda")))
        return 10.0 + len(seen)

    default = (plan.choose_tiles(4096, 128, "cuda"), plan.evict_first(4096, 12288, "cuda"))
    monkeypatch.setattr(bench, "torch_inputs", lambda shape, T: {"qkv": torch.ones(T, 8, dtype=torch.bfloat16)})
    monkeypatch.setattr(bench, "torch_impls", lambda shape, inp: {"fused_torch": None})
    monkeypatch.setattr(bench, "graph_time_us", fake_time)
    monkeypatch.setattr(bench, "copy_bandwidth_gbps", lambda: 4000.0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    bench.sweep_stream(["S1", "S2"], [16, 4096], tmp_path)
    result = json.loads((tmp_path / "sweep_stream.json").read_text())
    assert result["copy_bandwidth_gbps"] == 4000.0
    assert [(r["shape"], r["T"], len(r["off_us"]), len(r["on_us"])) for r in result["results"]] == \
        [("S1", 16, 3, 3), ("S1", 4096, 3, 3), ("S2", 16, 3, 3), ("S2", 4096, 3, 3)]
    assert {hints for _, hints in seen} == {False, True}
    assert (plan.choose_tiles(4096, 128, "cuda"), plan.evict_first(4096, 12288, "cuda")) == default
    seen.clear()
    bench.sweep(["S1"], [16], tmp_path)
    (record,) = json.loads((tmp_path / "sweep.json").read_text())["results"]
    assert len(record["timings"]) == len(seen) - 1 and seen[-1] == default  # the last: the default tiles
    assert {tiles for tiles, _ in seen[:-1]} == {(t["block_t"], t["num_warps"]) for t in record["timings"]}
    assert (plan.choose_tiles(4096, 128, "cuda"), plan.evict_first(4096, 12288, "cuda")) == default
