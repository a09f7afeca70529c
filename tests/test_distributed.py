"""DDP on CPU: two processes (gloo) run `train()` on the full method (KBA, knowledge-aware D,
mask-enhanced PatchNCE with its projector) through Lightning's DDP; G, D and the projector end identical on both
ranks although each rank saw different videos, and the validation metrics are synchronised."""

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_train.py")
FULL = ["model.generator.kba_stages=[bottleneck]", "loss.att=1", "loss.kad=1", "loss.nce=1",
        "loss.gv=5", "loss.vgg=0", "loss.nce_layers=[0,4,8,12,16]"]


def _ddp_train(out: Path, *overrides: str, timeout: int = 600) -> list[dict]:
    out.mkdir()
    # a new session: the hard time limit ends Lightning's second rank too, not only the launcher
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), *FULL, *overrides], cwd=out,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"DDP training did not end within {timeout} s (a hang between the ranks)")
    assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in (0, 1)]


@pytest.fixture(scope="module")
def per_network(tmp_path_factory):
    """The two ranks' results of a DDP training with the default per-network reduction."""
    return _ddp_train(tmp_path_factory.mktemp("ddp") / "per_network")


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_identical_parameters(per_network):
    ranks = per_network
    assert ranks[0]["world_size"] == 2
    assert ranks[0]["video_step"] == ranks[1]["video_step"] == 2  # 4 cases shared by 2 ranks
    params = [r["params"] for r in ranks]
    assert any(k.startswith("projector.") for k in params[0]) and any(".attention." in k for k in params[0])
    for name, value in params[0].items():
        assert torch.equal(value, params[1][name]), name
    # the ranks trained on different videos: their losses differ, their synchronised metrics do not
    m0, m1 = ranks[0]["metrics"], ranks[1]["metrics"]
    assert m0["train/g_total"] != m1["train/g_total"]
    assert m0["val/psnr"] == m1["val/psnr"] and m0["val/ssim"] == m1["val/ssim"]


@pytest.mark.slow
def test_ddp_ranks_share_rank_zeros_run_directory(per_network):
    """Every rank runs `train()`; only rank 0 makes the run directory and moves `latest`, the other
    rank uses the same directory (no second directory, no `latest` pointing at one without checkpoints)."""
    used = {r["run_dir"] for r in per_network}
    runs = Path(per_network[0]["run_dir"]).parent
    made = sorted(p.name for p in runs.iterdir() if not p.is_symlink() and not p.name.startswith("."))
    assert len(used) == 1 and len(made) == 1, (used, made)
    assert (runs / "latest").resolve() == Path(used.pop()).resolve() == (runs / made[0]).resolve()
    for name in ("checkpoints/last.ckpt", "config.yaml", "run.json", "metrics.csv"):
        assert (runs / made[0] / name).is_file(), name


def test_strategy_resolution_gives_every_ddp_run_find_unused_parameters(tiny, monkeypatch):
    from lightning.pytorch.strategies import DDPStrategy

    from fundus2video.config import ConfigError
    from fundus2video.training import check_resources, strategy

    t = tiny("trainer.devices=2").trainer  # auto on 2 devices: Lightning alone would pick plain DDP
    for name, start in (("auto", "popen"), ("ddp", "popen"), ("ddp_spawn", "spawn"),
                        ("ddp_fork_find_unused_parameters_true", "fork")):
        chosen = strategy(name, t)
        assert isinstance(chosen, DDPStrategy) and chosen._ddp_kwargs["find_unused_parameters"] is True, name
        assert chosen._start_method == start
    assert strategy("auto", tiny().trainer) == "auto"  # one device: nothing to reduce
    assert strategy("ddp", t)._process_group_backend is None  # auto: Lightning's choice for the device
    assert strategy("ddp", tiny("trainer.devices=2", "trainer.ddp_backend=gloo").trainer)._process_group_backend \
        == "gloo"
    with pytest.raises(ConfigError, match="trainer.ddp_backend=nccl: NCCL runs on CUDA GPUs only"):
        check_resources(tiny("trainer.devices=2", "trainer.accelerator=cpu", "trainer.ddp_backend=nccl"))
    with pytest.raises(ConfigError, match="loss.d_pass=shared runs in one process only"):
        check_resources(tiny("trainer.devices=2", "loss.d_pass=shared"))
    check_resources(tiny("loss.d_pass=shared"))  # one device: fine
    with pytest.raises(ConfigError, match="trainer.strategy=bogus: not a Lightning strategy .*auto, ddp, "):
        check_resources(tiny("trainer.strategy=bogus"))
    with pytest.raises(ConfigError, match="ddp_find_unused_parameters_false: this GAN"):
        check_resources(tiny("trainer.strategy=ddp_find_unused_parameters_false"))
    if not torch.cuda.is_available():  # a GPU asked for where there is none: one line, before Lightning's error
        with pytest.raises(ConfigError, match="trainer.accelerator=gpu: torch .* sees no CUDA GPU here"):
            check_resources(tiny("trainer.accelerator=gpu"))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    with pytest.raises(ConfigError, match="trainer.devices=4: only 2 CUDA GPU"):
        check_resources(tiny("trainer.accelerator=gpu", "trainer.devices=4"))
    check_resources(tiny("trainer.accelerator=gpu", "trainer.devices=2"))
    with pytest.raises(ConfigError, match="deterministic=warn"):
        check_resources(tiny("trainer.accelerator=auto", "trainer.deterministic=true"))
    check_resources(tiny("trainer.accelerator=auto", "trainer.deterministic=warn"))
    # the stem and head pad by reflection whatever the blocks do: zero padding is no way out
    with pytest.raises(ConfigError, match="its 7x7 stem and head"):
        check_resources(tiny("trainer.accelerator=auto", "trainer.deterministic=true", "model.generator.padding=zero"))


@pytest.mark.slow
def test_per_network_reduction_trains_as_plain_ddp_with_half_the_traffic(per_network, tmp_path):
    """Each backward all-reduces only its own network's buckets: the parameters end exactly where
    reducing everything in both backward passes leaves them, with half the gradient traffic."""
    everything = _ddp_train(tmp_path / "all", "trainer.ddp_reduce=all")
    assert everything[0]["reduction"] is None
    for name, value in per_network[0]["params"].items():
        assert torch.equal(value, everything[0]["params"][name]), name
    n_params = sum(v.numel() for v in per_network[0]["params"].values())
    stats = per_network[0]["reduction"]
    assert stats == per_network[1]["reduction"]
    # every window: G's backward reduces G and the projector and skips D, D's the other way round;
    # every gradient element is reduced once per window instead of twice
    assert stats["reduced"] == stats["skipped"] == per_network[0]["g_step"] * n_params, stats


@pytest.mark.slow
def test_ranks_with_videos_of_different_lengths_agree_on_the_windows(tmp_path):
    """Folder cases of 5 and 8 frames: the ranks' videos differ in length at some steps. Each window is
    a G and a D all-reduce, so without agreeing on the windows per step the ranks pair different
    windows' collectives or wait for one the other never runs (a hang); with it, 3 epochs end, under a
    hard time limit, with identical parameters."""
    from fundus2video.data_modules.phantom_files import write_phantom

    root = write_phantom(tmp_path / "data", 8, size=64, n_frames=8, video="png", progress=False)
    short = ("phantom0001", "phantom0002", "phantom0005")
    for case in short:
        for t in range(5, 8):
            (root / case / "ffa" / f"{t:03d}.png").unlink()
    rows = (root / "cases.csv").read_text().splitlines()  # their times: the first 5
    (root / "cases.csv").write_text("\n".join(
        ",".join([*r.split(",")[:3], ";".join(r.split(",")[3].split(";")[:5])]) if r.split(",")[0] in short else r
        for r in rows) + "\n")
    ranks = _ddp_train(tmp_path / "out", "data.source=folders", f"data.root={root}", "data.n_frames=8",
                       "data.split.fractions=[0.5,0.25,0.25]", "trainer.max_epochs=3", timeout=420)
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
    assert ranks[0]["g_step"] == ranks[1]["g_step"]


def test_a_rank_without_a_validation_case_is_refused_before_training(tiny, tmp_path):
    from fundus2video.errors import ConfigError
    from fundus2video.training import train

    cfg = tiny("trainer.devices=2", "trainer.strategy=ddp", "data.phantom.n_val=1")
    with pytest.raises(ConfigError, match="1 validation case\\(s\\) for 2 DDP processes"):
        train(cfg)
    assert not (tmp_path / "runs").exists()  # stopped before a run directory was made


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(out: Path, commands: list[list[str]], envs: list[dict], what: str) -> str:
    """Start both ranks (each in a session of its own), wait for both under a hard limit, check they
    ended well, and return the run directory both used: one directory, one `latest`, one wandb run,
    and identical parameters on both ranks."""
    procs = [subprocess.Popen(cmd, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                              env=env) for cmd, env in zip(commands, envs)]
    try:
        outputs = [p.communicate(timeout=420)[0].decode(errors="replace") for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(f"{what} did not end within 420 s")
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    runs = out / "runs" / "smoke"
    made = sorted(p.name for p in runs.iterdir() if not p.is_symlink() and not p.name.startswith("."))
    assert len(made) == 1 and {r["run_dir"] for r in ranks} == {str(runs / made[0])}, made
    assert (runs / "latest").resolve() == (runs / made[0]).resolve()
    wandb_runs = list((runs / made[0]).rglob("offline-run-*"))
    assert len(wandb_runs) == 1, wandb_runs
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
    return made[0]


TWO_NODES = [*FULL, "trainer.devices=1", "trainer.num_nodes=2", "logging.wandb=offline"]


@pytest.mark.slow
def test_torchrun_two_nodes_make_one_run_directory_and_one_wandb_run(tmp_path):
    """torchrun --nnodes=2 on 127.0.0.1, one process per "node": every rank has RANK set and none shares
    a process with rank 0, so each could make a run directory (and a wandb run) of its own. Rank 0
    makes it and posts it in torchrun's store; the other node uses it; one `latest`, one wandb run."""
    out, port = tmp_path / "out", _free_port()
    out.mkdir()
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "WANDB_SILENT": "true", "WANDB_DIR": str(out)}
    _two_processes(out, [[str(torchrun), "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}",
                          "--master-addr=127.0.0.1", f"--master-port={port}", str(SCRIPT), str(out), *TWO_NODES]
                         for node in (0, 1)], [env, env], "torchrun")


@pytest.mark.slow
def test_a_slurm_job_of_two_tasks_makes_one_run_directory_and_one_wandb_run(tmp_path):
    """Two tasks as `srun --ntasks=2 --ntasks-per-node=1` starts them on two nodes: the same command,
    SLURM's variables set per task and no RANK. Lightning's SLURM environment wires the ranks; every task
    names the run directory after the job, rank 0 alone points `latest` and starts the wandb run."""
    out, port = tmp_path / "out", _free_port()
    out.mkdir()
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("SLURM_") and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    job = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "fundus2video", "SLURM_NTASKS": "2",
           "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_NODELIST": "127.0.0.1", "SLURM_LOCALID": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WANDB_SILENT": "true", "WANDB_DIR": str(out)}
    made = _two_processes(out, [[sys.executable, str(SCRIPT), str(out), *TWO_NODES]] * 2,
                          [{**base, **job, "SLURM_PROCID": str(task), "SLURM_NODEID": str(task)} for task in (0, 1)],
                          "the SLURM-like job")
    assert made == "slurm-4242"  # named after the job, the same on every task


def test_the_global_rank_and_a_slurm_jobs_run_name(monkeypatch):
    from fundus2video.training import rundir as train_mod

    for key in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK", "SLURM_JOB_ID", "SLURM_STEP_ID",
                "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)
    assert train_mod.global_rank() == 0 and train_mod._slurm_run_name() is None
    monkeypatch.setenv("NODE_RANK", "1")  # Lightning's launcher started by hand on a second node
    assert train_mod.global_rank() > 0
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert train_mod.global_rank() == 3 and train_mod._slurm_run_name() == "slurm-4242"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert train_mod._slurm_run_name() == "slurm-4242-r2"


def _launch(out: Path, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    """The DDP training in a session of its own, its output in OUT/log.txt (a pipe would stay open
    while any rank lives, and a frozen rank lives on)."""
    out.mkdir()
    with open(out / "log.txt", "wb") as log:
        return subprocess.Popen([sys.executable, str(SCRIPT), str(out), *FULL, "trainer.max_epochs=500", *overrides],
                                cwd=out, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})


def _pids(out: Path, proc: subprocess.Popen) -> list[int]:
    import time

    deadline = time.monotonic() + 240
    while not all((out / f"pid{r}").is_file() for r in (0, 1)):
        assert proc.poll() is None, (out / "log.txt").read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "the ranks did not start training"
        time.sleep(0.5)
    time.sleep(3)  # a few videos in
    return [int((out / f"pid{r}").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_video(tmp_path):
    """A scheduler's SIGTERM may reach one process: the ranks decide to stop together at a video's end,
    write one checkpoint, and leave with 143 well within a grace period; the checkpoint resumes."""
    out = tmp_path / "out"
    proc = _launch(out)
    try:
        _, rank1 = _pids(out, proc)
        os.kill(rank1, signal.SIGTERM)
        proc.wait(timeout=120)
        output = (out / "log.txt").read_text(errors="replace")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, output[-3000:]
    stops = [torch.load(out / f"stopped{r}.pt") for r in (0, 1)]
    assert stops[0]["video_step"] == stops[1]["video_step"] and stops[0]["checkpoint"] == stops[1]["checkpoint"]
    saved = torch.load(stops[0]["checkpoint"], weights_only=True)
    assert saved["fundus2video"]["video_step"] == stops[0]["video_step"]


@pytest.mark.slow
def test_a_hung_collective_does_not_keep_a_stopped_job_alive(tmp_path):
    """Rank 1 frozen (SIGSTOP) leaves rank 0 waiting in a collective that never returns: after SIGTERM
    the watchdog ends rank 0 with 143 and one line within the grace, saving nothing new."""
    import time

    out = tmp_path / "out"
    proc = _launch(out, env={"FUNDUS2VIDEO_STOP_GRACE_S": "8"})
    try:
        rank0, rank1 = _pids(out, proc)
        os.kill(rank1, signal.SIGSTOP)
        time.sleep(2)
        start = time.monotonic()
        os.kill(rank0, signal.SIGTERM)
        proc.wait(timeout=60)
        assert time.monotonic() - start < 40
        output = (out / "log.txt").read_text(errors="replace")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, output[-3000:]
    assert "no video boundary reached within 8 s" in output, output[-3000:]
