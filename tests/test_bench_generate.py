"""benchmarks/generate.py's arithmetic count: the FLOPs of a window, from its ONNX graph."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("onnx")


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # its _common, as when run as a script
    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "benchmarks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_generate", module)
    spec.loader.exec_module(module)
    return module


def test_the_count_is_every_convolutions_multiply_adds_twice(bench, tmp_path):
    from fundus2video.onnx_runtime import save_onnx

    net = torch.nn.Sequential(
        torch.nn.ReflectionPad2d(3), torch.nn.Conv2d(6, 8, 7),  # 8 x 16 x 16 outputs, 6 x 49 MACs each
        torch.nn.InstanceNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),  # 16 x 8 x 8 outputs, 8 x 9 each
        torch.nn.ConvTranspose2d(16, 4, 3, stride=2, padding=1, output_padding=1),  # 16 x 8 x 8 inputs, 4 x 9 each
        torch.nn.Conv2d(4, 4, 3, padding=1, groups=2))  # 4 x 16 x 16 outputs, 2 x 9 each
    save_onnx(net.eval(), torch.rand(1, 6, 16, 16), tmp_path / "w.onnx", ("x", "y"), dynamic_batch=False)
    macs = 8 * 16 * 16 * 6 * 49 + 16 * 8 * 8 * 8 * 9 + 16 * 8 * 8 * 4 * 9 + 4 * 16 * 16 * 2 * 9
    assert bench.graph_gflop(tmp_path / "w.onnx") == pytest.approx(2 * macs / 1e9, rel=1e-12)


def test_the_fma_peak_program_builds_and_reports_a_rate(bench, tmp_path):
    import shutil

    rate = bench.fma_peak_gflops(1, tmp_path, iters=2_000_000)
    avx512 = "avx512f" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else False
    if shutil.which("cc") and avx512:
        assert rate is not None and 1 < rate < 10_000  # one core: GFLOPS, not FLOPS or a wrong count
    else:
        assert rate is None
