"""benchmarks/gpu_check.py on a CPU: its command line, dry run, summary, time limits and skips; the GPU
steps themselves need a GPU (`make gpu-check`)."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_script():
    """benchmarks/gpu_check.py as a module (benchmarks/ is scripts, not a package; putting it on sys.path
    would let its data.py or inference.py shadow other modules)."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load_script()
Cmd, Result, Step = gpu_check.Cmd, gpu_check.Result, gpu_check.Step


def script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/gpu_check.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_dry_run_lists_every_step_and_writes_the_summary(tmp_path):
    done = script("--dry-run", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    steps = gpu_check.build_steps(tmp_path / "out", sys.executable)
    assert [s.name for s in steps] == ["env", "prepare", "smoke-16-mixed", "smoke-bf16-mixed", "train-window",
                                       "speed-switches", "generate-cuda-vs-cpu", "evaluate-cuda-vs-cpu",
                                       "ddp-one-rank", "ddp-two-ranks-one-gpu"]
    assert sum(s.timeout for s in steps) < 600  # the 10 minutes
    for step in steps:
        assert f"{step.name} (limit {step.timeout:.0f} s" in done.stdout
        for cmd in step.commands:
            assert cmd.shell() in done.stdout  # the exact command line
    report = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert report["dry_run"] is True and report["limits_s"] == round(sum(s.timeout for s in steps))
    assert [(s["name"], s["status"]) for s in report["steps"]] == [(s.name, "dry-run") for s in steps]
    md = (tmp_path / "out" / "summary.md").read_text()
    for step in steps:
        assert f"| {step.name} | dry-run |" in md
    assert not list((tmp_path / "out").glob(".*tmp"))  # the temporary files were renamed
    assert not (tmp_path / "out" / "env.log").exists()  # nothing ran


def test_dry_run_commands_match_the_cli():
    """The steps' commands name subcommands, options and keys that exist."""
    steps = {s.name: s for s in gpu_check.build_steps(Path("/x"), "python")}
    train = steps["smoke-16-mixed"].commands[0].argv
    assert train[1:5] == ["-m", "fundus2video", "train", "fundus2video_cpu"]
    overrides = [a for a in train[5:] if not a.startswith(("loss.vgg_weights=", "logging.root="))]
    done = subprocess.run([sys.executable, "-m", "fundus2video", "config", "fundus2video_cpu", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr  # every key exists and every value is valid
    assert "precision: 16-mixed" in done.stdout and "accelerator: gpu" in done.stdout
    assert "trainer.strategy=ddp" in steps["ddp-one-rank"].commands[0].argv
    assert "trainer.precision=bf16-mixed" in steps["smoke-bf16-mixed"].commands[0].argv
    for name, sub in (("generate-cuda-vs-cpu", "generate"), ("evaluate-cuda-vs-cpu", "evaluate")):
        devices = [c.argv[c.argv.index("--device") + 1] for c in steps[name].commands if sub in c.argv]
        assert devices == ["cuda", "cpu"]
    helpers = [c.argv[2] for s in steps.values() for c in s.commands if c.argv[1] == gpu_check.ME]
    assert set(helpers) <= set(gpu_check.HELPERS)
    assert all((ROOT / c.argv[1]).is_file() for s in steps.values() for c in s.commands
               if c.argv[1].startswith("benchmarks/"))


def test_steps_subset_adds_what_they_need_and_budget_scale(tmp_path):
    done = script("--dry-run", "--steps", "train-window,env", "--out", str(tmp_path / "a"), "--budget-scale", "2")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert [s["name"] for s in report["steps"]] == ["env", "train-window"]  # the usual order
    assert [s["timeout"] for s in report["steps"]] == [40, 120]
    assert "smoke-16-mixed" not in done.stdout

    steps, added = gpu_check.select(gpu_check.build_steps(tmp_path, "python"), "generate-cuda-vs-cpu")
    assert [s.name for s in steps] == ["prepare", "smoke-16-mixed", "generate-cuda-vs-cpu"]
    assert added == ["prepare", "smoke-16-mixed"]


@pytest.mark.parametrize("args, words", [
    (["--steps", "env,nope"], ["--steps", "'nope'", "valid:", "smoke-16-mixed", "ddp-one-rank"]),
    (["--budget-scale", "0"], ["--budget-scale"]),
    (["--python", "/no/such/python"], ["--python", "/no/such/python"]),
    (["--bogus"], ["unrecognized arguments: --bogus"]),
])
def test_usage_errors_are_one_line_with_status_2(args, words, capsys):
    assert gpu_check.main(["--dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpu_check: error:")
    for word in words:
        assert word in err


def test_unknown_step_from_the_command_line(tmp_path):
    done = script("--dry-run", "--steps", "smoke", "--out", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "'smoke'" in done.stderr and "smoke-16-mixed" in done.stderr
    assert not (tmp_path / "summary.json").exists()


def test_without_cuda_it_stops_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    done = script("--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.startswith("gpu_check: error: no CUDA device: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "env.log").exists()


def test_a_step_over_its_limit_is_killed_with_its_children_and_the_next_runs(tmp_path):
    """A 1 s limit on a command that sleeps 30 s and started a child that sleeps too: both go, the
    step reads as timeout, and the following steps still run (the one needing it is skipped)."""
    pids = tmp_path / "pids"
    sleeper = ("import os, subprocess, sys, time\n"
               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
               f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
               "print('sleeping', flush=True)\n"
               "time.sleep(30)\n")
    steps = [Step("sleepy", "sleeps", 1, [Cmd([sys.executable, "-c", sleeper])]),
             Step("after", "prints numbers", 30, [
                 Cmd([sys.executable, "-c", "print('gpu-check: {\"x\": 1.5}')"]),
                 Cmd([sys.executable, "-c", "print('{\"y\": 2}')"], stdout=tmp_path / "y.json")],
                  parse=lambda step: (json.loads(step.commands[-1].stdout.read_text()), [{"row": 1}])),
             Step("needs-sleepy", "never runs", 30, [Cmd([sys.executable, "-c", "raise SystemExit(1)"])],
                  needs=("sleepy",)),
             Step("fails", "exits 3", 30, [Cmd([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); "
                                                "raise SystemExit(3)"]), Cmd([sys.executable, "-c", "pass"])]),
             Step("needs-after", "runs", 30, [Cmd([sys.executable, "-c", "pass"])], needs=("after",))]
    seen = []
    start = time.monotonic()
    results = gpu_check.run_steps(steps, tmp_path / "out", on_result=lambda rs: seen.append([r.status for r in rs]))
    assert time.monotonic() - start < 25
    by = {r.name: r for r in results}
    assert by["sleepy"].status == "timeout" and by["sleepy"].status_text() == "timeout after 1s"
    assert 1 <= by["sleepy"].seconds < 10
    parent, child = map(int, pids.read_text().split())
    deadline = time.monotonic() + 5
    while (alive(parent) or alive(child)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(parent) and not alive(child)
    assert "sleeping" in (tmp_path / "out" / "sleepy.log").read_text()
    assert by["after"].status == "ok" and by["after"].numbers == {"x": 1.5, "y": 2}
    assert by["after"].rows == [{"row": 1}]
    assert by["needs-sleepy"].status_text() == "skipped: needs sleepy"
    assert not (tmp_path / "out" / "needs-sleepy.log").exists()
    assert by["fails"].status_text() == "failed rc=3" and by["fails"].note == "boom"
    assert "$ " + steps[3].commands[1].shell() not in (tmp_path / "out" / "fails.log").read_text()  # stopped
    assert by["needs-after"].status == "ok"
    assert seen[0] == ["timeout", "pending", "pending", "pending", "pending"]
    assert seen[-1] == ["timeout", "ok", "skipped", "failed", "ok"]


def test_summary_table_of_every_status(tmp_path):
    results = [
        Result("env", "ok", seconds=2.04, timeout=20, numbers={"gpu": "NVIDIA H200", "torch": "2.13.0+cu128",
                                                               "bf16": True}),
        Result("smoke-16-mixed", "failed", "rc=1", seconds=12.5, timeout=55, numbers={"non-finite": 2},
               note="gpu-check: FAIL: non-finite losses logged: train/g_gan|x", log="smoke-16-mixed.log"),
        Result("speed-switches", "timeout", seconds=195.0, timeout=190, note="killed", log="speed-switches.log",
               rows=[{"switch": "baseline", "s/window": 0.212345, "peak GiB": None},
                     {"switch": "compile", "s/window": None, "error": "RuntimeError: no gcc"}]),
        Result("generate-cuda-vs-cpu", "skipped", "needs smoke-16-mixed", timeout=55),
    ]
    md = gpu_check.write_summary(tmp_path, results, {"started": "2026-01-01T00:00:00", "out": str(tmp_path)})
    assert (tmp_path / "summary.md").read_text() == md
    lines = md.splitlines()
    assert lines[0] == "# GPU check, 2026-01-01T00:00:00"
    assert "gpu NVIDIA H200, torch 2.13.0+cu128, bf16 True" in md
    assert "1 of 4 steps ok in 210 s (limits sum to 320 s)" in md
    assert "| step | status | s | limit s | key numbers |" in lines
    assert "| env | ok | 2.04 | 20 | gpu=NVIDIA H200, torch=2.13.0+cu128, bf16=True |" in lines
    assert "| smoke-16-mixed | failed rc=1 | 12.5 | 55 | non-finite=2 |" in lines
    assert "| speed-switches | timeout after 190s | 195 | 190 |  |" in lines
    assert "| generate-cuda-vs-cpu | skipped: needs smoke-16-mixed |  | 55 |  |" in lines
    assert "## speed-switches" in lines
    assert "| switch | s/window | peak GiB | error |" in lines
    assert "| baseline | 0.2123 |  |  |" in lines and "| compile |  |  | RuntimeError: no gcc |" in lines
    assert ("- smoke-16-mixed (failed rc=1, smoke-16-mixed.log): gpu-check: FAIL: non-finite losses logged: "
            "train/g_gan\\|x") in lines
    report = json.loads((tmp_path / "summary.json").read_text())
    assert report["ok"] is False
    assert [s["status_text"] for s in report["steps"]] == ["ok", "failed rc=1", "timeout after 190s",
                                                           "skipped: needs smoke-16-mixed"]


def write_run(root: Path, rows: list[dict], ckpt: bool = True, samples: bool = True) -> Path:
    """A run directory as `train` lays it out: <root>/<stamp>, <root>/latest -> it."""
    run = root / "20260101-000000"
    (run / "checkpoints").mkdir(parents=True)
    if ckpt:
        import zipfile

        with zipfile.ZipFile(run / "checkpoints" / "last.ckpt", "w") as z:
            z.writestr("archive/data.pkl", b"x")
    if samples:
        (run / "samples").mkdir()
        (run / "samples" / "last.mp4").write_bytes(b"\0")
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", "train/g_total", "train/d_total", "train/lr",
                                               "val/psnr"])
        writer.writeheader()
        writer.writerows(rows)
    (root / "latest").symlink_to(run.name)
    return run


def test_check_run(tmp_path):
    good = [{"epoch": 0, "step": 1, "train/g_total": 3.5, "train/d_total": 0.5, "train/lr": 5e-4},
            {"epoch": 0, "step": 2, "val/psnr": "nan"},  # validation rows leave the train columns empty
            {"epoch": 0, "step": 3, "train/g_total": 3.0, "train/d_total": 0.4, "train/lr": 5e-4}]
    write_run(tmp_path / "ok", good)
    log = tmp_path / "ddp.log"
    log.write_text("distributed_backend=nccl\nAll distributed processes registered.\n")
    numbers, problems = gpu_check.check_run(tmp_path / "ok", log, "nccl")
    assert problems == []
    assert numbers["logged steps"] == 2 and numbers["g_total last"] == 3.0 and numbers["non-finite"] == 0
    assert numbers["samples"] == 1 and numbers["backend"] == "nccl"
    log.write_text("distributed_backend=gloo\n")
    assert gpu_check.check_run(tmp_path / "ok", log, "nccl")[1] == ["distributed backend gloo, expected nccl"]

    write_run(tmp_path / "bad", [{"train/g_total": "inf", "train/d_total": "nan", "train/lr": 1}], ckpt=False,
              samples=False)
    numbers, problems = gpu_check.check_run(tmp_path / "bad")
    assert len(problems) == 3 and "non-finite losses logged: train/d_total, train/g_total" in problems
    assert any("checkpoint" in p for p in problems) and any("sample" in p for p in problems)
    assert gpu_check.check_run(tmp_path / "none")[1] == [f"no run directory {tmp_path / 'none' / 'latest'}"]

    # as the step runs it: exit status 1 and the problem on stderr, numbers as a marker line
    done = script("check-run", str(tmp_path / "bad"))
    assert done.returncode == 1 and "gpu-check: FAIL: non-finite" in done.stderr
    assert gpu_check.markers(done.stdout)["non-finite"] == 2


def test_compare_metrics():
    cuda = {"metrics": {"psnr": 17.90, "ssim": 0.5390, "fvd": None, "false_bright": 0.001}}
    cpu = {"metrics": {"psnr": 17.91, "ssim": 0.5391, "fvd": None, "false_bright": 0.0}}
    numbers, problems = gpu_check.compare_metrics(cuda, cpu, 2e-2)
    assert problems == [] and numbers["metrics"] == 3 and numbers["worst"] == "false_bright"
    assert numbers["max rel diff"] == pytest.approx(0.01)  # 0.001 / the floor of 0.1
    numbers, problems = gpu_check.compare_metrics({"metrics": {"psnr": 20.0, "ssim": 0.5}}, cpu, 2e-2)
    assert any("different metrics" in p for p in problems) and any(p.startswith("psnr:") for p in problems)


def test_parse_the_benchmarks_json(tmp_path):
    speed = {"results": [
        {"switch": "baseline", "status": "ok", "seconds": 0.4, "peak_memory_gb": 20.5, "host_syncs_per_window": 3,
         "speedup_vs_baseline": 1.0},
        {"switch": "channels_last", "status": "ok", "seconds": 0.2, "peak_memory_gb": 19.0,
         "host_syncs_per_window": 3, "speedup_vs_baseline": 2.0},
        {"switch": "compile", "status": "timeout", "error": "over its limit of 60 s"}]}
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    step = Step("speed-switches", "", 1, [Cmd(["x"], stdout=tmp_path / "speed.json")])
    numbers, rows = gpu_check.parse_speed(step)
    assert numbers == {"switches ok": "2/3", "baseline s/window": 0.4, "baseline peak GiB": 20.5,
                       "baseline syncs": 3, "fastest": "channels_last x2.00", "not ok": "compile"}
    assert [r["switch"] for r in rows] == ["baseline", "channels_last", "compile"]
    assert rows[2]["error"] == "over its limit of 60 s"

    window = {"results": [{"size": 128, "precision": "fp32", "measured": True, "ours": {"seconds": 0.05},
                           "release": {"seconds": 0.06}, "ratio_release_over_ours": 1.2,
                           "aten_ops_per_window": {"ours": 4087, "release": 4703}}]}
    (tmp_path / "window.json").write_text(json.dumps(window))
    numbers, rows = gpu_check.parse_train_window(Step("w", "", 1, [Cmd(["x"], stdout=tmp_path / "window.json")]))
    assert numbers == {"128 fp32 s/window": 0.05, "128 fp32 release/ours": 1.2}
    assert rows[0]["ATen ops ours / release"] == "4087 / 4703"


def test_unreadable_benchmark_output_fails_the_step(tmp_path):
    step = Step("speed-switches", "", 30, [Cmd([sys.executable, "-c", "print('not json')"],
                                               stdout=tmp_path / "s.json")], parse=gpu_check.parse_speed)
    (result,) = gpu_check.run_steps([step], tmp_path)
    assert result.status_text() == "failed (output unreadable)" and "JSONDecodeError" in result.note


@pytest.mark.slow
def test_two_ranks_sharing_one_device_on_the_cpu(tmp_path):
    """The ddp-two-ranks helper as the GPU step runs it, with the ranks on the CPU: both reductions train,
    the ranks end identical, and the summary numbers say so."""
    done = script("ddp-two-ranks", str(tmp_path / "out"), "--accelerator", "cpu", "--limit", "240", timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    numbers = gpu_check.markers(done.stdout)
    assert numbers["per_network: max |rank0 - rank1|"] == numbers["all: max |rank0 - rank1|"] == 0
    assert numbers["per_network: world size"] == numbers["all: world size"] == 2
    assert numbers["max |per_network - all|"] <= gpu_check.DDP_TOL
    for reduce in ("per_network", "all"):
        assert sorted(p.name for p in (tmp_path / "out" / reduce).glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]
