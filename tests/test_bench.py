"""The benchmark's CPU path and byte model (the timings themselves run only on a GPU: bench/NOTES.md)."""

from fused_qkv.bench.bench import SHAPES, min_bytes, smoke


def test_bench_cpu_smoke_runs_and_says_so(capsys):
    assert smoke() == 0  # main() would run the full benchmark on a GPU machine
    assert "CPU smoke run" in capsys.readouterr().out


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
