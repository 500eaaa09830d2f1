import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from prunekit.measure import (Comparison, count, file_size, measure, measure_latency, peak_activation_bytes,
                              tensor_bytes)


def test_known_sizes_give_exact_params_and_macs():
    m = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    c = count(m, torch.randn(3, 10))
    assert c.params == 10 * 20 + 20 + 20 * 5 + 5
    assert c.macs == 3 * (10 * 20 + 20 * 5)
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    assert count(conv, torch.randn(2, 4, 5, 5)).macs == 2 * 8 * 5 * 5 * 4 * 9
    assert tensor_bytes(m) == c.params * 4


def test_file_size_matches_the_file(tmp_path):
    m = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32))
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    assert file_size(m) == os.path.getsize(path)
    sparse = nn.Linear(512, 512)
    with torch.no_grad():
        sparse.weight[:, 64:] = 0
    assert file_size(sparse, sparse=True) < 0.25 * file_size(sparse)


def test_latency_reports_median_spread_threads_and_batch():
    before = torch.get_num_threads()
    lat = measure_latency(nn.Linear(256, 256), torch.randn(16, 256), threads=1, warmup=2, repeats=9)
    assert lat.p10_ms <= lat.median_ms <= lat.p90_ms and lat.median_ms > 0
    assert (lat.threads, lat.batch_size, lat.repeats, lat.warmup) == (1, 16, 9, 2)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        measure_latency(nn.Linear(2, 2), torch.randn(1, 2), repeats=0)


def test_peak_activation_memory_grows_with_the_batch():
    m = nn.Sequential(nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 1000))
    small = peak_activation_bytes(m, torch.randn(8, 1000))
    big = peak_activation_bytes(m, torch.randn(256, 1000))
    assert big >= 256 * 1000 * 4  # at least one (256, 1000) float activation is alive
    assert big > 4 * small


def test_comparison_table_and_json():
    before = measure(nn.Linear(64, 64), torch.randn(4, 64), repeats=3, warmup=1, evaluate=lambda m: 0.9)
    after = measure(nn.Linear(64, 32), torch.randn(4, 64), repeats=3, warmup=1, evaluate=lambda m: 0.88)
    cmp = Comparison(before, after)
    text = cmp.table()
    assert "params" in text and "MACs" in text and "latency" in text and "file MB" in text and "-0.0200" in text
    assert '"params": 2080' in cmp.to_json()


def test_peak_memory_holds_back_the_profilers_status_lines_only(capfd):
    import os

    from prunekit.compat import quiet_profiler_stderr
    from prunekit.measure.memory import peak_memory

    peak_memory(nn.Sequential(nn.Linear(8, 8)), torch.randn(2, 8))
    with quiet_profiler_stderr():
        os.write(2, b"USDT:2026 x SyncActivityProfilerHandler.cpp:39] profiler_start\nreal problem\n")
    err = capfd.readouterr().err
    assert "USDT" not in err and "profiler_start" not in err
    assert "real problem" in err
