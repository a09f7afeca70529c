"""Generation through the graph runtimes (ONNX Runtime, OpenVINO): the same frames as PyTorch (CLI and
API, checkpoints and Hub folders), a graph exported once per weights and size and reused by both, each
runtime checked once, `auto` running the fastest by the speeds it timed, a corrupted cache rebuilt, a
graph that fails its check never used, threads within the CPUs the process may use, and one-line
refusals."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys

import cv2
import pytest
import torch

from fundus2video import onnx_runtime
from fundus2video.commands.cli import main
from fundus2video.data_modules.phantom import make_case
from fundus2video.errors import UserError
from fundus2video.hub import load_module
from fundus2video.inference import generate_videos, rollout_photos

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
if not onnx_runtime.installed("openvino"):  # not importorskip: importing openvino here would start its telemetry
    pytest.skip("openvino is not installed (the [openvino] extra)", allow_module_level=True)

ATOL = 1e-4  # the bound on |ORT - torch| per frame value


@pytest.fixture(scope="module")
def trained(trained_run):
    """A tiny trained checkpoint with the local enhancer and a KBA head (both must export)."""
    return trained_run("local_kba") / "checkpoints" / "last.ckpt"


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """The user cache in the test's folder: nothing goes to ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "fundus2video" / "onnx"


@pytest.fixture
def ckpt(trained, tmp_path):
    """The checkpoint copied into the test's folder: each test starts with no graph cached beside it."""
    (tmp_path / "ck").mkdir()
    return shutil.copy(trained, tmp_path / "ck" / "model.ckpt")


@pytest.fixture
def exports(monkeypatch):
    """The graphs exported during the test, in order."""
    calls = []
    real = onnx_runtime.export_window

    def counting(module, graph, key, shape, runtime="onnxruntime"):
        calls.append(graph)
        return real(module, graph, key, shape, runtime)

    monkeypatch.setattr(onnx_runtime, "export_window", counting)
    return calls


def _photo(path, index=5, size=96):
    cv2.imwrite(str(path), make_case(index, size=size, n_frames=2).cf[..., ::-1])
    return path


def _cli_frames(monkeypatch, *args) -> tuple[int, list[torch.Tensor]]:
    """`fundus2video generate ARGS` in this process, and the float frames it wrote (before H.264)."""
    import fundus2video.inference as inference

    frames, real = [], inference.write_outputs

    def keep(video, *rest, **kwargs):
        frames.append(video.clone())
        return real(video, *rest, **kwargs)

    monkeypatch.setattr(inference, "write_outputs", keep)
    code = main(["generate", *map(str, args)])
    monkeypatch.setattr(inference, "write_outputs", real)
    return code, frames


def _cache(ckpt):
    return ckpt.parent / f"{ckpt.name}.onnx-cache"


def test_cli_onnxruntime_frames_equal_torch_and_the_graph_is_cached_beside_the_checkpoint(
        ckpt, tmp_path, monkeypatch, exports):
    photo = _photo(tmp_path / "eye.png")
    before = ckpt.read_bytes()
    common = ["--ckpt", ckpt, "--cf", photo, "--frames", 5, "--strip"]
    code, torch_frames = _cli_frames(monkeypatch, *common, "--out", tmp_path / "torch.mp4", "--runtime", "torch")
    assert code == 0 and not _cache(ckpt).exists() and not exports
    code, ort_frames = _cli_frames(monkeypatch, *common, "--out", tmp_path / "ort.mp4", "--runtime", "onnxruntime")
    assert code == 0 and exports == [_cache(ckpt) / "32x32.onnx"]
    assert sorted(p.name for p in _cache(ckpt).iterdir()) == ["32x32.json", "32x32.onnx"]  # no temp files left
    (t,), (o,) = torch_frames, ort_frames
    assert o.shape == t.shape == (5, 1, 32, 32) and o.dtype == torch.float32
    assert (o - t).abs().max() <= ATOL
    assert (tmp_path / "ort.mp4").is_file() and (tmp_path / "ort_strip.png").is_file()
    assert ckpt.read_bytes() == before  # the cache goes beside the checkpoint, never over it
    # another process (a new module): the cached graph, no export
    code, again = _cli_frames(monkeypatch, *common, "--out", tmp_path / "again.mp4", "--runtime", "onnxruntime")
    assert code == 0 and len(exports) == 1 and torch.equal(again[0], o)


def _record(ckpt, size=32):
    return json.loads((_cache(ckpt) / f"{size}x{size}.json").read_text())


def test_openvino_frames_equal_torch_from_the_same_graph(ckpt, tmp_path, monkeypatch, exports):
    photo = _photo(tmp_path / "eye.png")
    common = ["--ckpt", ckpt, "--cf", photo, "--frames", 5]
    code, (t,) = _cli_frames(monkeypatch, *common, "--out", tmp_path / "torch.mp4", "--runtime", "torch")
    code, (o,) = _cli_frames(monkeypatch, *common, "--out", tmp_path / "ort.mp4", "--runtime", "onnxruntime")
    assert code == 0 and len(exports) == 1
    assert list(_record(ckpt)["max_abs_diff_vs_torch"]) == [onnx_runtime.runtime_version("onnxruntime")]
    code, (v,) = _cli_frames(monkeypatch, *common, "--out", tmp_path / "ov.mp4", "--runtime", "openvino")
    assert code == 0 and len(exports) == 1  # the cached graph, checked once more for OpenVINO
    checks = _record(ckpt)["max_abs_diff_vs_torch"]
    assert sorted(checks) == sorted(onnx_runtime.runtime_version(r) for r in ("onnxruntime", "openvino"))
    assert all(0 <= d <= ATOL for d in checks.values())
    assert (v - t).abs().max() <= ATOL and (v - o).abs().max() <= ATOL
    # OpenVINO reuses its output buffer: the rollout's windows must not overwrite each other
    assert not torch.equal(v[0], v[-1])
    # and OpenVINO sent no usage event: its telemetry is the no-op stub in this process
    import openvino.tools.ovc.telemetry_utils as telemetry

    assert telemetry.tm.__name__.endswith("telemetry_stub")


def test_auto_runs_the_fastest_by_the_speeds_it_timed(ckpt, tmp_path, monkeypatch, exports, caplog):
    assert onnx_runtime.resolve_runtime("auto", "cpu") == "auto"
    assert onnx_runtime.resolve_runtime("auto", "cuda") == "torch"
    assert onnx_runtime.resolve_runtime("auto", torch.device("cpu"), bf16=True) == "torch"  # bf16 asked for
    photo = _photo(tmp_path / "eye.png")
    with caplog.at_level(logging.INFO, logger="fundus2video.onnx_runtime"):
        code, (first,) = _cli_frames(monkeypatch, "--ckpt", ckpt, "--cf", photo, "--out", tmp_path / "v.mp4",
                                     "--frames", 3)  # no --runtime: auto
    assert code == 0 and exports == [_cache(ckpt) / "32x32.onnx"]  # one graph for both runtimes
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--runtime auto:")]
    (speeds,) = _record(ckpt)["seconds_per_window"].values()  # this machine's
    names = {onnx_runtime.runtime_version(r) for r in ("onnxruntime", "openvino")} | {f"torch {torch.__version__}"}
    assert set(speeds) == names and all(s > 0 for s in speeds.values())
    fastest = min(speeds, key=speeds.get).split(" ")[0]
    assert line.startswith(f"--runtime auto: {fastest}, ")
    torch_frames = rollout_photos(load_module(ckpt), _prepared(photo), 3)[0]
    assert (first - torch_frames).abs().max() <= ATOL
    # the speeds are kept: another process reads them and times nothing; edited, they decide
    module = load_module(ckpt)
    opened = []
    for runtime, opener in list(onnx_runtime.OPENERS.items()):
        monkeypatch.setitem(onnx_runtime.OPENERS, runtime,
                            lambda *a, runtime=runtime, opener=opener: opened.append(runtime) or opener(*a))
    for winner in ("openvino", "onnxruntime", "torch"):
        record = _record(ckpt)
        machine = next(iter(record["seconds_per_window"]))
        record["seconds_per_window"][machine] = {n: (0.1 if n.startswith(winner + " ") else 9.0) for n in names}
        (_cache(ckpt) / "32x32.json").write_text(json.dumps(record))
        onnx_runtime._SESSIONS.clear()
        opened.clear()
        monkeypatch.setattr(onnx_runtime, "_seconds_per_window", lambda *a: pytest.fail("timed again"))
        window = onnx_runtime.window_function(module, 32, "auto", ckpt)
        assert (window is None) if winner == "torch" else (window.runtime == winner)
        assert opened == ([] if winner == "torch" else [winner])  # only the fastest is loaded
    assert len(exports) == 1
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if neither graph runtime were installed
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert onnx_runtime.resolve_runtime("auto", "cpu") == "torch"


def test_auto_leaves_out_a_runtime_that_fails_its_check(ckpt, monkeypatch, caplog):
    real = onnx_runtime._difference
    monkeypatch.setattr(onnx_runtime, "_difference",
                        lambda window, *rest: 1.0 if window.runtime == "openvino" else real(window, *rest))
    module = load_module(ckpt)
    with caplog.at_level(logging.INFO, logger="fundus2video.onnx_runtime"):
        window = onnx_runtime.window_function(module, 32, "auto", ckpt)
    assert "--runtime auto: leaving openvino out" in caplog.text and "differs from the PyTorch generator" in caplog.text
    assert window is None or window.runtime == "onnxruntime"
    (speeds,) = _record(ckpt)["seconds_per_window"].values()
    assert not any(name.startswith("openvino") for name in speeds)
    # the failed check is kept: asked for by name, OpenVINO is refused without a new export or check
    monkeypatch.setattr(onnx_runtime, "_difference", lambda *a: pytest.fail("checked again"))
    onnx_runtime._SESSIONS.clear()
    with pytest.raises(UserError, match=r"under openvino differs from the PyTorch generator by up to 1 \(> "
                                        r"0.0001\); the graph stays cached"):
        onnx_runtime.window_function(module, 32, "openvino", ckpt)


def _prepared(photo):
    from fundus2video.inference import prepare_photo

    return prepare_photo(photo, 32)[None]


def test_threads_stay_within_the_cpus_the_process_may_use(tmp_path, monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a container's quota: 1.5 CPUs
    assert onnx_runtime.usable_cpus(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert onnx_runtime.usable_cpus(tmp_path) == affinity
    (tmp_path / "cpu.max").unlink()  # cgroup v1
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert onnx_runtime.usable_cpus(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert onnx_runtime.usable_cpus(tmp_path) == affinity
    assert onnx_runtime.usable_cpus(tmp_path / "none") == affinity
    threads = torch.get_num_threads()
    monkeypatch.setattr(onnx_runtime, "usable_cpus", lambda: 1)
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice stands
        torch.set_num_threads(2)
        assert onnx_runtime.limit_torch_threads() == 2
        assert onnx_runtime.runtime_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert onnx_runtime.limit_torch_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_the_cli_offers_every_runtime(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--ckpt", "c.ckpt", "--cf", "p.png", "--out", "v.mp4", "--runtime", "tensorrt"])
    err = capsys.readouterr().err
    assert "choose from " + ", ".join(f"'{r}'" for r in onnx_runtime.RUNTIMES) + ")" in err, err


def test_api_batches_and_hub_folders_equal_torch(ckpt, tmp_path, exports):
    from fundus2video.export import export_generator

    photos = [_photo(tmp_path / f"p{i}.png", index=i, size=size) for i, size in enumerate((96, 128, 80))]
    module = load_module(ckpt)
    expected = [r.frames for r in generate_videos(module, photos, tmp_path / "torch", n_frames=4)]
    # three photos, batch 2: a batch of two runs sample by sample through the batch-1 graph
    got = [r.frames for r in generate_videos(module, photos, tmp_path / "ort", n_frames=4, batch=2,
                                             runtime="onnxruntime", checkpoint=ckpt)]
    assert len(got) == 3 and all((g - e).abs().max() <= ATOL for g, e in zip(got, expected, strict=True))
    assert sorted(p.name for p in (tmp_path / "ort").iterdir()) == ["p0.mp4", "p1.mp4", "p2.mp4"]
    # a Hub folder: its source names the cache folder, beside it
    folder = export_generator(ckpt, tmp_path / "hub", "hub").path
    hub_module = load_module(folder)
    frames = rollout_photos(hub_module, torch.rand(1, 3, 32, 32) * 2 - 1, 3, runtime="onnxruntime")
    assert frames.shape == (1, 3, 1, 32, 32)
    assert exports == [_cache(ckpt) / "32x32.onnx", tmp_path / "hub.onnx-cache" / "32x32.onnx"]
    cf = torch.rand(2, 3, 32, 32) * 2 - 1
    assert (rollout_photos(hub_module, cf, 4, runtime="onnxruntime") - rollout_photos(hub_module, cf, 4)).abs().max() \
        <= ATOL
    assert len(exports) == 2  # the process keeps its session


def test_the_cache_is_reused_and_follows_the_weights(ckpt, monkeypatch, exports):
    module = load_module(ckpt)
    first = onnx_runtime.onnx_window(module, 32, ckpt)
    assert onnx_runtime.onnx_window(module, 32, ckpt) is first  # the process's session
    graph = _cache(ckpt) / "32x32.onnx"
    mtime = graph.stat().st_mtime_ns
    onnx_runtime._SESSIONS.clear()  # as a new process: from the disk
    assert onnx_runtime.onnx_window(module, 32, ckpt) is not first
    assert len(exports) == 1 and graph.stat().st_mtime_ns == mtime
    with torch.no_grad():  # weights changed in place: another key, a new graph
        next(module.generator.parameters()).add_(0.05)
    window = onnx_runtime.onnx_window(module, 32, ckpt)
    assert len(exports) == 2
    cf = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        x = torch.cat([cf, cf], dim=1)
        assert (window(x) - module.generator(x)).abs().max() <= ATOL
    onnx_runtime.onnx_window(module, 64, ckpt)  # another size: its own graph
    assert len(exports) == 3 and sorted(p.name for p in _cache(ckpt).glob("*.onnx")) == ["32x32.onnx", "64x64.onnx"]


def test_a_generator_loaded_under_inference_mode_exports_and_runs(ckpt, exports):
    """Weights made under torch.inference_mode have no version counter: the session memo keys on their storage."""
    with torch.inference_mode():
        module = load_module(ckpt)
        window = onnx_runtime.onnx_window(module, 32, ckpt)
        assert onnx_runtime.onnx_window(module, 32, ckpt) is window and len(exports) == 1
        x = torch.rand(1, 3 + module.cfg.model.window, 32, 32) * 2 - 1
        assert (window(x) - module.generator(x)).abs().max() <= ATOL


@pytest.mark.parametrize("damage", ["junk", "truncated", "one byte"])
def test_a_corrupted_cache_is_rebuilt(ckpt, tmp_path, monkeypatch, exports, caplog, capsys, damage):
    photo = _photo(tmp_path / "eye.png")
    args = ["--ckpt", ckpt, "--cf", photo, "--frames", 3, "--runtime", "onnxruntime"]
    code, (good,) = _cli_frames(monkeypatch, *args, "--out", tmp_path / "a.mp4")
    assert code == 0 and len(exports) == 1
    graph = _cache(ckpt) / "32x32.onnx"
    data = bytearray(graph.read_bytes())
    if damage == "junk":
        data = bytearray(b"not an onnx graph")
    elif damage == "truncated":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF  # the same size, and still parsed: only the SHA-256 tells
    graph.write_bytes(bytes(data))
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="fundus2video.onnx_runtime"):
        code, (again,) = _cli_frames(monkeypatch, *args, "--out", tmp_path / "b.mp4")
    assert code == 0 and len(exports) == 2
    assert any("does not match its record" in r.getMessage() and str(graph) in r.getMessage()
               for r in caplog.records), caplog.text
    assert "Traceback" not in capsys.readouterr().err
    assert (again - good).abs().max() <= ATOL


def test_a_graph_that_fails_its_check_is_never_cached(ckpt, monkeypatch, caplog):
    monkeypatch.setattr(onnx_runtime, "TOLERANCE", -1.0)  # no difference passes
    module = load_module(ckpt)
    cf = torch.rand(1, 3, 32, 32) * 2 - 1
    with pytest.raises(UserError) as err:
        rollout_photos(module, cf, 3, runtime="onnxruntime", checkpoint=ckpt)
    message = str(err.value)
    assert message.startswith(str(_cache(ckpt) / "32x32.onnx")) and "differs from the PyTorch generator" in message
    assert "\n" not in message and not list(_cache(ckpt).glob("*.onnx")) and not list(_cache(ckpt).glob(".*"))
    with caplog.at_level(logging.WARNING, logger="fundus2video.onnx_runtime"):  # auto: PyTorch, with a warning
        frames = rollout_photos(module, cf, 3, runtime="auto", checkpoint=ckpt)
    assert torch.equal(frames, rollout_photos(module, cf, 3))
    assert "falling back to PyTorch" in caplog.text


def test_a_checkpoint_folder_that_is_not_writable_caches_in_the_user_cache(ckpt, user_cache, monkeypatch, exports):
    real = onnx_runtime._writable
    monkeypatch.setattr(onnx_runtime, "_writable", lambda f: not f.name.endswith(".onnx-cache") and real(f))
    module = load_module(ckpt)
    onnx_runtime.onnx_window(module, 32, ckpt)
    assert not _cache(ckpt).exists() or not list(_cache(ckpt).iterdir())
    (graph,) = exports
    assert graph.parent.parent == user_cache and graph.is_file()
    # a module with no checkpoint (built in memory): the user cache too, found again by its weights
    onnx_runtime._SESSIONS.clear()
    onnx_runtime.onnx_window(module, 32)
    assert len(exports) == 1


@pytest.mark.parametrize("extra, expected", [
    (["--bf16"], "--runtime onnxruntime runs in float32, found --bf16"),
    (["--device", "cuda"], "--runtime onnxruntime runs on the CPU, found --device cuda"),
    ([], "pip install 'fundus2video[export]'"),  # the extra missing
    (["openvino"], "pip install 'fundus2video[openvino]'"),
])
def test_refusals_are_one_line(ckpt, tmp_path, monkeypatch, capsys, extra, expected):
    runtime = "onnxruntime"
    if extra in ([], ["openvino"]):  # what `import onnxruntime` (openvino) sees when not installed
        runtime, extra = (extra or ["onnxruntime"])[0], []
        monkeypatch.setitem(sys.modules, runtime, None)
    photo = _photo(tmp_path / "eye.png")
    code = main(["generate", "--ckpt", str(ckpt), "--cf", str(photo), "--out", str(tmp_path / "v.mp4"),
                 "--runtime", runtime, *extra])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "v.mp4").exists() and not _cache(ckpt).exists()
    with pytest.raises(UserError, match="expected one of auto, torch, onnxruntime"):
        onnx_runtime.resolve_runtime("tensorrt", "cpu")


def test_outputs_never_replace_an_input(ckpt, tmp_path, capsys):
    photo = _photo(tmp_path / "eye_strip.png")
    before = photo.read_bytes()
    code = main(["generate", "--ckpt", str(ckpt), "--cf", str(photo), "--out", str(tmp_path / "eye.mp4"), "--strip",
                 "--runtime", "onnxruntime"])
    err = capsys.readouterr().err
    assert code == 2 and "would overwrite the input photo" in err and len(err.strip().splitlines()) == 1, err
    assert photo.read_bytes() == before and not _cache(ckpt).exists()
