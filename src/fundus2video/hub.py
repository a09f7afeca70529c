"""A trained generator as a Hugging Face Hub folder, and loading it back without Lightning.

The folder (`save_hub`, `fundus2video export --format hub`) holds
  model.safetensors  the generator's state dict (KBA attention heads included), float32
  config.json        what rebuilds and runs it: generator class and arguments, window K, input
                     channels, training size and frame count, value range, preprocessing
  README.md          a model card: front matter for the Hub, training data, metrics, intended use
safetensors is a plain tensor format: loading one runs no code (unlike a pickled .ckpt), and the
generator is rebuilt from a fixed table of this package's classes, never from a name in the file.

`load_generator` (and `fundus2video generate --ckpt`) accepts such a folder, a `.ckpt`, an
`http(s)://` URL of a `.ckpt` or of a folder's `model.safetensors` / `config.json` (downloaded
once into `torch.hub.get_dir()/fundus2video/<sha256 of the URL>/`), or `hf://REPO_ID[@REV]`
(through `huggingface_hub`, the optional extra `fundus2video[hub]`).

Only torch, safetensors and this package's network code are imported here: loading a folder and
rolling it out never imports Lightning. Callers of a `.ckpt` do (it is a Lightning checkpoint).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import torch

from fundus2video.download import download, json_file, safetensors_file, shown, zip_file
from fundus2video.errors import UserError
from fundus2video.io import atomic_path, first_line
from fundus2video.limits import (
    MAX_BLOCKS,
    MAX_CONFIG_BYTES,
    MAX_DOWNSAMPLE,
    MAX_FRAMES,
    MAX_SIZE,
    MAX_VIDEO_PIXELS,
    MAX_WIDTH,
    MAX_WINDOW,
)
from fundus2video.networks.generator import GlobalGenerator, LocalEnhancer
from fundus2video.rollout import rollout
from fundus2video.state_dicts import first_mismatch, not_finite

if TYPE_CHECKING:
    from fundus2video.module import Fundus2VideoModule

FORMAT_VERSION = 1  # of config.json; a newer one is refused (its meaning may have changed)
CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
FILES = (WEIGHTS, CONFIG, CARD)
HUB_MISSING = "the Hugging Face Hub needs huggingface_hub: pip install 'fundus2video[hub]'"
OFFLINE_VARS = ("FUNDUS2VIDEO_OFFLINE", "HF_HUB_OFFLINE")  # as for the pretrained weights
# netg -> the class and its constructor's arguments besides input_nc / output_nc, in order. A table,
# not an import of a name read from config.json: a folder from elsewhere picks among these only.
GENERATORS: dict[str, tuple[type[torch.nn.Module], tuple[str, ...]]] = {
    "global": (GlobalGenerator, ("ngf", "n_downsample", "n_blocks", "padding", "kba_stages")),
    "local": (LocalEnhancer, ("ngf", "n_downsample", "n_blocks", "n_blocks_local", "padding", "kba_stages")),
}
N_BLOCKS_LOCAL = 3  # GeneratorConfig's default, for the cfg view of a global generator (unused there)
TAGS = ("fundus2video", "pytorch", "medical-imaging", "ophthalmology", "fundus", "fluorescein-angiography",
        "video-generation", "image-to-video")
LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]*")  # Hub license identifiers: mit, apache-2.0, cc-by-nc-4.0, other
REPO_ID = re.compile(r"([\w.-]+/)?[\w.-]+")


# ---------------------------------------------------------------------------- the loaded generator
class LoadedGenerator(torch.nn.Module):
    """A generator rebuilt from a Hub folder, ready for inference (eval mode).

    `gen(cf, n_frames)`: CF photos (B, 3, H, W) in [-1, 1], prepared as `fundus2video.inference.
    prepare_photo` does, -> videos (B, T, 1, H, W) in [-1, 1] (T defaults to the training frame
    count). `cfg` is the part of an experiment config that `generate_videos` / `generate_video`
    and `export` read (data.size, data.n_frames, model.window, model.generator), so this object
    goes wherever a loaded Fundus2VideoModule does for inference.
    """

    def __init__(self, generator: torch.nn.Module, config: dict, source: str = ""):
        super().__init__()
        self.generator = generator.eval()
        self.config = config  # config.json as read
        self.source = source  # where it was loaded from
        self.window: int = config["window"]
        self.size: int = config["size"]
        self.n_frames: int = config["n_frames"]
        g = config["generator"]
        args = dict(g["args"], netg=g["netg"])
        args.setdefault("n_blocks_local", N_BLOCKS_LOCAL)
        self.cfg = SimpleNamespace(
            data=SimpleNamespace(size=self.size, n_frames=self.n_frames),
            model=SimpleNamespace(window=self.window, generator=SimpleNamespace(**args)))
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (the generator's downsamplings)."""
        return self.config["size_multiple"]

    def forward(self, cf: torch.Tensor, n_frames: int | None = None) -> torch.Tensor:
        if cf.ndim != 4 or cf.shape[1] != 3:
            raise ValueError(f"expected CF photos (B, 3, H, W), got {tuple(cf.shape)}")
        if cf.shape[-1] % self.size_multiple or cf.shape[-2] % self.size_multiple:
            raise ValueError(f"H and W must be multiples of {self.size_multiple}, got {tuple(cf.shape[-2:])}")
        return rollout(self.generator, cf, n_frames or self.n_frames, self.window)


def generator_config(cfg: Any) -> dict:
    """config.json's description of the generator of an experiment config `cfg` (or a cfg view)."""
    g, window = cfg.model.generator, cfg.model.window
    cls, names = GENERATORS[g.netg]
    args = {name: list(getattr(g, name)) if name == "kba_stages" else getattr(g, name) for name in names}
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "netg": g.netg,
            "args": {"input_nc": 3 + window, "output_nc": window, **args}}


def build_config(cfg: Any) -> dict:
    """config.json: everything `load_generator` needs to rebuild and run the generator."""
    import fundus2video

    window, g, size = cfg.model.window, cfg.model.generator, cfg.data.size
    return {
        "format_version": FORMAT_VERSION,
        "library": "fundus2video",
        "fundus2video_version": fundus2video.__version__,
        "torch_version": torch.__version__,
        "weights": WEIGHTS,
        "dtype": "float32",
        "generator": generator_config(cfg),
        "window": window,
        "input_channels": 3 + window,
        "output_channels": window,
        "cf_channels": 3,
        "size": size,
        "size_multiple": 2 ** (g.n_downsample + (g.netg == "local")),  # the local enhancer halves first
        "n_frames": cfg.data.n_frames,
        "value_range": [-1.0, 1.0],
        "preprocessing": {
            "function": "fundus2video.inference.prepare_photo",
            "input": "a colour fundus photo, RGB, 8 bits per channel",
            "field_of_view": "from the CF's green channel: green > 11 (0..255), its largest connected component, "
                             "dilated with an 11 x 11 cross, holes filled (fundus2video.knowledge.fov_mask); "
                             "zero outside",
            "crop": "to the bounding box of the field of view (the ROI box)",
            "resize": f"to size x size = {size} x {size} (cv2 INTER_AREA when shrinking, INTER_LINEAR otherwise)",
            "scale": "x / 127.5 - 1: [0, 255] -> [-1, 1], channels first (3, size, size)",
        },
        "rollout": {
            "function": "fundus2video.rollout.rollout",
            "description": f"window n = 0 .. T-1 maps [CF, previous K = {window} frames] (3 + K channels) to frames "
                           f"n .. n+{window - 1} (clamped at T-1); the first window's previous frames are the CF "
                           "channels cycled; each frame is the mean of every window that predicted it, clamped "
                           "duplicates not counted",
            "output": "video (B, T, 1, size, size) in [-1, 1]; frame = (x + 1) * 127.5 as grey uint8",
        },
    }


def _fail(where: str | Path, why: str) -> UserError:
    return UserError(f"{where}: {why}")


# the experiment configuration's ceilings: a folder past them is not one fundus2video wrote
LIMITS = {"window": MAX_WINDOW, "size": MAX_SIZE, "n_frames": MAX_FRAMES, "size_multiple": 2 * MAX_SIZE,
          "ngf": MAX_WIDTH, "n_downsample": MAX_DOWNSAMPLE, "n_blocks": MAX_BLOCKS, "n_blocks_local": MAX_BLOCKS,
          "input_nc": 3 + MAX_WINDOW, "output_nc": MAX_WINDOW}


def _check_config(config: Any, where: Path) -> tuple[type[torch.nn.Module], dict]:
    """The generator class and its constructor arguments, after checking every field they come from."""
    if not isinstance(config, dict):
        raise _fail(where, "not a fundus2video config (expected a JSON object)")
    version = config.get("format_version")
    if not isinstance(version, int):
        raise _fail(where, "not a fundus2video config (no integer format_version)")
    if version > FORMAT_VERSION:
        raise _fail(where, f"format_version {version} is newer than this fundus2video reads ({FORMAT_VERSION}): "
                           "upgrade fundus2video")
    for key in ("window", "size", "n_frames", "size_multiple"):
        if not isinstance(config.get(key), int) or isinstance(config.get(key), bool) or config[key] < 1:
            raise _fail(where, f"'{key}' must be a positive integer, got {config.get(key)!r}")
        if config[key] > LIMITS[key]:
            raise _fail(where, f"'{key}' {config[key]} is out of range (at most {LIMITS[key]})")
    g = config.get("generator")
    if not isinstance(g, dict) or g.get("netg") not in GENERATORS or not isinstance(g.get("args"), dict):
        raise _fail(where, f"'generator' must give netg (one of {', '.join(GENERATORS)}) and args")
    cls, names = GENERATORS[g["netg"]]
    if g.get("class", f"{cls.__module__}.{cls.__qualname__}") != f"{cls.__module__}.{cls.__qualname__}":
        raise _fail(where, f"generator class {g['class']!r} does not match netg '{g['netg']}' ({cls.__qualname__})")
    expected = ("input_nc", "output_nc", *names)
    args = g["args"]
    if sorted(args) != sorted(expected):
        extra, missing = sorted(set(args) - set(expected)), sorted(set(expected) - set(args))
        raise _fail(where, f"generator args: {'missing ' + missing[0] if missing else 'unexpected ' + extra[0]}")
    for name in expected:
        value = args[name]
        ok = (isinstance(value, list) and all(isinstance(s, str) for s in value) if name == "kba_stages"
              else isinstance(value, str) if name == "padding"
              else isinstance(value, int) and not isinstance(value, bool) and value >= (0 if "blocks" in name else 1))
        if not ok or (name in LIMITS and value > LIMITS[name]):  # the ceilings keep a bad file from a hang
            raise _fail(where, f"generator args: bad {name} {value!r}" + (
                f" (at most {LIMITS[name]})" if ok else ""))
    multiple = 2 ** (args["n_downsample"] + (g["netg"] == "local"))  # the local enhancer halves once more
    if config["size_multiple"] != multiple:
        raise _fail(where, f"'size_multiple' {config['size_multiple']} does not match the generator ({multiple}: "
                           f"2 ** n_downsample{' + 1' if g['netg'] == 'local' else ''})")
    if config["size"] % multiple:
        raise _fail(where, f"'size' {config['size']} is not a multiple of 'size_multiple' {multiple}")
    if config["n_frames"] * config["size"] ** 2 > MAX_VIDEO_PIXELS:
        raise _fail(where, f"'n_frames' {config['n_frames']} at 'size' {config['size']} makes a video of "
                           f"{config['n_frames'] * config['size'] ** 2:.3g} pixels (at most {MAX_VIDEO_PIXELS:.3g})")
    window = config["window"]
    if args["input_nc"] != 3 + window or args["output_nc"] != window:
        raise _fail(where, f"generator args: input_nc {args['input_nc']} / output_nc {args['output_nc']} do not "
                           f"match window {window} (expected {3 + window} / {window})")
    return cls, {name: args[name] for name in expected}


def load_folder(folder: str | Path, device: str | torch.device = "cpu") -> LoadedGenerator:
    """A Hub folder -> LoadedGenerator, failing in one line (UserError) on anything inconsistent."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise _fail(folder, f"not a fundus2video Hub folder (no {name})")
    if (folder / CONFIG).stat().st_size > MAX_CONFIG_BYTES:
        raise _fail(folder / CONFIG, f"{(folder / CONFIG).stat().st_size} bytes (a fundus2video config is a few kB; "
                                     f"at most {MAX_CONFIG_BYTES} are read)")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # ValueError: JSON, and integers of 4300+ digits
        raise _fail(folder / CONFIG, f"not valid JSON ({first_line(err)})") from None
    cls, args = _check_config(config, folder / CONFIG)
    try:
        with torch.device("meta"):  # shapes only: a config asking for a huge network allocates nothing
            skeleton = cls(**args)
    except (ValueError, TypeError, RuntimeError) as err:  # e.g. an unknown KBA stage
        raise _fail(folder / CONFIG, f"cannot build the generator: {err}") from None
    try:
        state = load_file(str(folder / WEIGHTS))  # tensors only: no code runs
    except (SafetensorError, OSError) as err:
        raise _fail(folder / WEIGHTS, f"not a readable safetensors file ({err})") from None
    mismatch = first_mismatch(skeleton.state_dict(), state)
    if mismatch:
        raise _fail(folder, f"{CONFIG} and {WEIGHTS} disagree: {mismatch}")
    if (bad := not_finite(state)) is not None:
        raise _fail(folder / WEIGHTS, bad)
    generator = cls(**args)
    generator.load_state_dict(state, strict=True)  # float32 whatever the file's float type
    return LoadedGenerator(generator, config, str(folder)).to(device)


# ---------------------------------------------------------------------------- writing a folder
def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _run_data(module: Any, run_dir: Path | None) -> dict | None:
    """The training data section: the run's config.yaml where there is one, else the module's config."""
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        from omegaconf import OmegaConf

        try:
            data = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True).get("data")
        except Exception:  # noqa: BLE001  (a card is written from whatever the run recorded; never fails on it)
            data = None
        if isinstance(data, dict):
            return data
    data = getattr(getattr(module, "cfg", None), "data", None)
    if data is not None and hasattr(data, "source"):  # a full experiment config, not a LoadedGenerator's view
        from omegaconf import OmegaConf

        return OmegaConf.to_container(data, resolve=True) if OmegaConf.is_config(data) else None
    return None


def _split_counts(run_dir: Path | None) -> dict[str, tuple[int, int]]:
    """split.csv (data on disk): split -> (cases, patients)."""
    path = run_dir / "split.csv" if run_dir is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    cases = Counter(r.get("split", "?") for r in rows)
    patients = {s: len({r.get("patient_id") for r in rows if r.get("split", "?") == s}) for s in cases}
    return {s: (cases[s], patients[s]) for s in sorted(cases)}


def _evaluations(run_dir: Path | None) -> list[dict]:
    """Every `<run dir>/eval/*/metrics.json` (and `eval/metrics.json`) that `evaluate` wrote."""
    if run_dir is None:
        return []
    paths = sorted((run_dir / "eval").glob("*/metrics.json")) + sorted((run_dir / "eval").glob("metrics.json"))
    return [report | {"_where": p.parent.relative_to(run_dir).as_posix()}
            for p in paths if (report := _read_json(p)) is not None and isinstance(report.get("metrics"), dict)]


def _md(value: Any) -> str:
    """A value as inline markdown code (backticks and newlines cannot break the card)."""
    return "`" + str(value).replace("`", "'").replace("\n", " ") + "`"


def build_card(config: dict, data: dict | None, run: dict | None, splits: dict, evaluations: list[dict],
               license: str, repo_id: str | None) -> str:
    """README.md: the model card. Local paths and host names are left out: the card is for publishing."""
    g = config["generator"]
    front = ["---", "library_name: fundus2video", f"license: {license}", "pipeline_tag: image-to-video", "tags:",
             *[f"- {t}" for t in TAGS], "---", ""]
    lines = [
        "# Fundus2Video generator", "",
        "Generates a fluorescein angiography (FFA) video from a colour fundus photo (CF): the Fundus2Video method "
        "(MICCAI 2024), an autoregressive pix2pixHD-style GAN guided by an unsupervised knowledge mask, trained "
        f"with fundus2video {config['fundus2video_version']}.", "",
        "## Model", "",
        "| | |", "|---|---|",
        f"| generator | {_md(g['class'].rsplit('.', 1)[-1])} (netg {_md(g['netg'])}), "
        + ", ".join(f"{k} {_md(v)}" for k, v in g["args"].items()) + " |",
        f"| knowledge-boosted attention | {', '.join(map(_md, g['args']['kba_stages'])) or 'none'} |",
        f"| window K | {config['window']} frames per step, input 3 + K = {config['input_channels']} channels |",
        f"| size | {config['size']} x {config['size']} (any multiple of {config['size_multiple']} runs) |",
        f"| frames | {config['n_frames']} by default (any number: the rollout is autoregressive) |",
        "| values | [-1, 1] in and out |",
        f"| weights | {_md(WEIGHTS)} (safetensors, float32); {_md(CONFIG)} describes the rest |", "",
        "Preprocessing (as in training, `fundus2video.inference.prepare_photo`): the field of view from the CF's "
        "green channel (zero outside), crop to its bounding box, resize to size x size, scale to [-1, 1].", "",
        "## Training data", "",
    ]
    if data is None:
        lines += ["Not recorded with this export.", ""]
    else:
        source = data.get("source", "?")
        lines.append(f"- source: {_md(source)}" + (" (the procedural phantom: synthetic eyes and videos, no patient "
                                                  "data)" if source == "phantom" else ""))
        if data.get("root"):
            lines.append(f"- data: {_md(Path(str(data['root'])).name)} (the folder or manifest's name)")
        lines.append(f"- images {data.get('size', '?')} x {data.get('size', '?')}, {data.get('n_frames', '?')} "
                     "frames per video")
        if source == "phantom" and isinstance(data.get("phantom"), dict):
            p = data["phantom"]
            lines.append(f"- phantom cases: {p.get('n_train')} train, {p.get('n_val')} val, {p.get('n_test')} test "
                         f"(anatomy seed {p.get('seed')})")
        split = data.get("split") if isinstance(data.get("split"), dict) else {}
        if splits:
            lines.append("- split by patient: " + ", ".join(f"{s} {n} cases ({p} patients)"
                                                           for s, (n, p) in splits.items()))
        elif split.get("fractions") and source != "phantom":
            lines.append(f"- split by patient, fractions {split['fractions']} (seed {split.get('seed')})")
        lines.append("")
    if run:
        commit = run.get("git_commit")
        lines += [f"Run: fundus2video {run.get('fundus2video', '?')}, torch {run.get('torch', '?')}, lightning "
                  f"{run.get('lightning', '?')}, seed {run.get('seed', '?')}"
                  + (f", code at git commit {_md(commit)}" + (" with uncommitted changes" if run.get("git_dirty")
                                                              else "") if commit else "") + ".", ""]
    lines += ["## Evaluation", ""]
    if not evaluations:
        lines += ["No evaluation was found with the run (`fundus2video evaluate` writes `<run>/eval/*/metrics.json`).",
                  ""]
    for report in evaluations:
        lines += [f"`fundus2video evaluate` ({report['_where']}): split {_md(report.get('split', '?'))}, "
                  f"{report.get('n_cases', '?')} cases, data {_md(report.get('data', '?'))}, size "
                  f"{report.get('size', '?')}.", "", "| metric | value |", "|---|---|",
                  *[f"| {k} | {v} |" for k, v in report["metrics"].items()], ""]
        skipped = report.get("skipped")
        if isinstance(skipped, dict) and skipped:
            lines += ["Not measured: " + ", ".join(map(str, skipped)) + ".", ""]
    load = f"hf://{repo_id}" if repo_id else "path/to/this/folder"
    lines += [
        "## Intended use", "",
        "Research on FFA synthesis from fundus photos: method development, comparison, teaching. **Not for "
        "diagnosis** or any clinical decision: a generated angiogram is a plausible picture, not a measurement of "
        "this patient's circulation, and must never replace a real angiography.", "",
        "## Limitations", "",
        "- Trained only on the data above: other cameras, fields of view, populations and diseases are out of its "
        "distribution, and it says nothing when a photo is.",
        "- It can miss or invent lesions (leakage, non-perfusion) and gets timing and contrast only approximately; "
        "the knowledge mask that guided training comes from the training videos, not from clinical labels.",
        f"- Other sizes (multiples of {config['size_multiple']}) run, but it was trained at {config['size']} x "
        f"{config['size']} only.",
        "- Synthetic (phantom) training data says nothing about real photos." if data and data.get("source") ==
        "phantom" else "- Check the terms of the training data before sharing outputs or weights.", "",
        "## How to use", "",
        "With fundus2video installed (the version in config.json or newer):", "",
        "```bash",
        f"fundus2video generate --ckpt {load} --cf photo.jpg --out video.mp4", "```", "",
        "```python", "from fundus2video import load_generator",
        f"gen = load_generator(\"{load}\")  # no Lightning needed; safetensors loading runs no code",
        "video = gen(cf, n_frames=gen.n_frames)  # cf (B, 3, H, W) in [-1, 1] -> (B, T, 1, H, W)", "```", "",
    ]
    return "\n".join(front + lines)


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def save_hub(module: Any, out: str | Path, run_dir: str | Path | None = None, *, overwrite: bool = False,
             license: str = "mit", repo_id: str | None = None, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Write the Hub folder of `module` (a Fundus2VideoModule or a LoadedGenerator) to `out`.

    `run_dir`: the training run (config.yaml, run.json, split.csv, eval/*/metrics.json) the model
    card describes. An existing non-empty `out` is refused unless `overwrite`; whatever the flag,
    nothing in `inputs` (the checkpoint, its folder) is written over. Each file is written
    atomically, the weights first and config.json last, and the folder is read back and compared
    with the generator before returning. `repo_id` only goes into the card's usage lines.
    """
    from safetensors.torch import save_file


    out = Path(out)
    if not LICENSE.fullmatch(license):
        raise UserError(f"--license {license!r}: expected a Hub license identifier such as mit, apache-2.0, other")
    for source in map(Path, inputs):
        if _same(out, source) or any(_same(out / name, source) for name in FILES):
            raise UserError(f"--out {out}: would write over the input {source}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out}: the folder exists and is not empty (--overwrite replaces its "
                        f"{', '.join(FILES)})")
    run_dir = Path(run_dir) if run_dir is not None else None
    config = build_config(module.cfg)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.generator.state_dict().items()}
    card = build_card(config, _run_data(module, run_dir), _read_json(run_dir / "run.json") if run_dir else None,
                      _split_counts(run_dir), _evaluations(run_dir), license, repo_id)
    created = not out.exists()
    try:
        with atomic_path(out / WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "fundus2video_format_version": str(FORMAT_VERSION)})
        with atomic_path(out / CARD) as tmp:
            tmp.write_text(card)
        with atomic_path(out / CONFIG) as tmp:
            tmp.write_text(json.dumps(config, indent=2) + "\n")
        reloaded = load_folder(out)
        for key, value in reloaded.generator.state_dict().items():
            if not torch.equal(value, state[key]):
                raise RuntimeError(f"hub export check failed: '{key}' differs after reloading {out / WEIGHTS}")
    except BaseException:
        if created:  # leave no half-written folder behind (only this export's files are in it)
            for name in FILES:
                (out / name).unlink(missing_ok=True)
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise
    return out


# ---------------------------------------------------------------------------- where weights come from
def _hf():
    try:
        import huggingface_hub
    except ImportError:
        raise UserError(HUB_MISSING) from None
    return huggingface_hub


def _repo_id(repo_id: str) -> str:
    if not REPO_ID.fullmatch(repo_id):
        raise UserError(f"{repo_id!r}: not a Hugging Face repository id (expected NAME or OWNER/NAME)")
    return repo_id


def push(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a Hub folder to the model repository `repo_id` (created if missing); returns its URL."""
    hf = _hf()
    _repo_id(repo_id)
    import fundus2video

    api = hf.HfApi(library_name="fundus2video", library_version=fundus2video.__version__)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", allow_patterns=list(FILES),
                          commit_message=f"fundus2video {fundus2video.__version__}: upload the generator")
    except Exception as err:  # noqa: BLE001  (huggingface_hub and its HTTP client raise types of their own)
        raise UserError(f"push to {repo_id} failed: {str(err).strip().splitlines()[0] if str(err) else err!r}") \
            from None
    return f"https://huggingface.co/{repo_id}"


def pull(spec: str) -> Path:
    """`hf://REPO_ID[@REV]` -> the local folder of its files (huggingface_hub's cache)."""
    hf = _hf()
    repo_id, _, revision = spec.removeprefix("hf://").partition("@")
    _repo_id(repo_id)
    import fundus2video

    try:
        path = hf.snapshot_download(repo_id, revision=revision or None, allow_patterns=list(FILES),
                                    library_name="fundus2video", library_version=fundus2video.__version__)
    except Exception as err:  # noqa: BLE001  (huggingface_hub and its HTTP client raise types of their own)
        raise UserError(f"{spec}: download failed ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})") from None
    return Path(path)


def cache_dir(key: str) -> Path:
    """The download folder of URL `key`: torch.hub.get_dir()/fundus2video/<sha256 of the URL>."""
    return Path(torch.hub.get_dir()) / "fundus2video" / hashlib.sha256(key.encode()).hexdigest()


def _download(url: str, dst: Path) -> None:
    """`url` to `dst` unless it is there already (torch.hub writes a partial file, renamed at the end)."""
    if dst.is_file():
        return
    if any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on") for var in OFFLINE_VARS):
        raise UserError(f"{shown(url)}: not in the cache ({dst}) and offline ({' or '.join(OFFLINE_VARS)} is set)")
    check = {".ckpt": zip_file, ".safetensors": safetensors_file, ".json": json_file}.get(dst.suffix)
    download(url, dst, what=dst.name, check=check)


def fetch_url(url: str) -> Path:
    """An http(s) URL of a `.ckpt` -> its cached file; of a Hub folder's `model.safetensors` or
    `config.json` -> the cached folder, both files fetched (the cache key is then the folder's URL)."""
    parts = urlsplit(url)
    head, _, name = parts.path.rpartition("/")
    if name.endswith(".ckpt"):
        dst = cache_dir(url) / name
        _download(url, dst)
        return dst
    if name in (WEIGHTS, CONFIG):
        folder = cache_dir(urlunsplit(parts._replace(path=f"{head}/")))
        for sibling in (CONFIG, WEIGHTS):
            _download(urlunsplit(parts._replace(path=f"{head}/{sibling}")), folder / sibling)
        return folder
    raise UserError(f"{url}: expected the URL of a .ckpt, or of a Hub folder's {WEIGHTS} or {CONFIG}")


def resolve(spec: str | Path) -> Path:
    """A checkpoint argument -> a local path: URLs and hf:// are downloaded, paths are kept as they are."""
    text = str(spec)
    if text.startswith("hf://"):
        return pull(text)
    if text.startswith(("http://", "https://")):
        return fetch_url(text)
    return Path(spec)


def hub_folder(path: Path) -> Path | None:
    """The Hub folder that `path` names (the folder, or its config.json / .safetensors), else None."""
    if path.is_dir():
        return path
    if path.name == CONFIG or path.suffix == ".safetensors":
        return path.parent
    return None


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> LoadedGenerator:
    """A generator for inference from a Hub folder, a `.ckpt`, an http(s) URL of either, or
    `hf://REPO_ID[@REV]`. Folders load without Lightning; a `.ckpt` is read with `weights_only`."""
    local = resolve(path)
    folder = hub_folder(local)
    if folder is not None:
        return load_folder(folder, device)

    from fundus2video.module import load_checkpoint_module  # a Lightning checkpoint: needs Lightning

    module = load_checkpoint_module(local, device)
    config = build_config(module.cfg)
    return LoadedGenerator(module.generator, config, str(local)).to(device)


DEVICES = "cpu, cuda, cuda:N or mps"


def check_device(device: str | torch.device, flag: str = "device") -> torch.device:
    """`device` as a torch.device this machine has; otherwise a one-line UserError naming `flag` (a
    checkpoint must not be blamed for a device that does not exist)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"{flag} {device}: not a device (expected {DEVICES})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"{flag} {device}: this machine has no CUDA GPU (torch {torch.__version__}); use "
                            f"{flag} cpu")
        if dev.index is not None and dev.index >= count:
            raise UserError(f"{flag} {device}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"{flag} {device}: Apple's MPS is not available here; use {flag} cpu")
    elif dev.type != "cpu":
        raise UserError(f"{flag} {device}: not supported (expected {DEVICES})")
    return torch.device("cpu") if dev.type == "cpu" else dev  # cpu:0 is the CPU (map_location knows only cpu)


def load_module(ckpt: str | Path, device: str = "cpu") -> Fundus2VideoModule | LoadedGenerator:
    """A trained model in eval mode from any source: a fundus2video `.ckpt` (the LightningModule), a Hub
    folder (config.json + model.safetensors, `export --format hub`: a `LoadedGenerator`, inference
    only, with the same `cfg.data` / `device` / call as the module), an http(s) URL of either, or
    `hf://REPO_ID[@REV]`. A file that is not a checkpoint fails in one line naming it."""
    device = str(check_device(device))
    local = resolve(ckpt)  # URLs and hf:// downloaded into their caches; local paths as given
    if (folder := hub_folder(local)) is not None:
        return load_folder(folder, device)
    from fundus2video.module import load_checkpoint_module  # a Lightning checkpoint: needs Lightning

    return load_checkpoint_module(local, device)
