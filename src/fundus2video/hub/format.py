"""The Hub folder's format: config.json (what rebuilds and runs the generator) checked field by field,
and the folder loaded back as a `LoadedGenerator` without Lightning (model.safetensors: tensors only,
no code runs; the class comes from `networks.generator.GENERATORS`, never from a name in the file)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from fundus2video.errors import UserError
from fundus2video.io import first_line
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
from fundus2video.networks.generator import GENERATORS
from fundus2video.rollout import rollout
from fundus2video.state_dicts import first_mismatch, not_finite

if TYPE_CHECKING:
    pass

FORMAT_VERSION = 1  # of config.json; a newer one is refused (its meaning may have changed)
CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
FILES = (WEIGHTS, CONFIG, CARD)
HUB_MISSING = "the Hugging Face Hub needs huggingface_hub: pip install 'fundus2video[hub]'"
N_BLOCKS_LOCAL = 3  # GeneratorConfig's default, for the cfg view of a global generator (unused there)
TAGS = ("fundus2video", "pytorch", "medical-imaging", "ophthalmology", "fundus", "fluorescein-angiography",
        "video-generation", "image-to-video")
LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]*")  # Hub license identifiers: mit, apache-2.0, cc-by-nc-4.0, other
REPO_ID = re.compile(r"([\w.-]+/)?[\w.-]+")


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
