"""Experiment configuration: one dataclass per component, merged with YAML and overrides.

The schema below is the single source of truth for every key an experiment may set.
`load_config` merges, in order: the dataclass defaults, the experiment YAML, then command-line
overrides (`key=value` or `--key=value`, the form a wandb agent passes). OmegaConf's structured
mode rejects unknown keys and wrong types; `ConfigError` turns that into one line that names
the key and, for a typo, the nearest valid key.

One file, though long: every key's default, range and comment sit in its dataclass, and the checks
that span sections (a window against the frames, a mask source against the losses) read several
of them; split, a key's meaning and the rules that use it would live apart.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fundus2video.errors import ConfigError
from fundus2video.limits import MAX_BLOCKS, MAX_DOWNSAMPLE, MAX_FPS, MAX_FRAMES, MAX_SIZE, MAX_WIDTH, MAX_WINDOW

__all__ = ["ConfigError", "ExperimentConfig", "from_plain", "load_config", "to_plain"]


def choice(default: str, *others: str) -> Any:
    """An enum-like key: `default` or one of `others`. The schema keeps the choices
    (`_check_choices` names them when a value is not one)."""
    return field(default=default, metadata={"choices": (default, *others)})


def bounded(default: float, low: float | None = None, high: float | None = None, within: bool = False,
            open_high: bool = False) -> Any:
    """A number and its range, declared beside it (`_check_ranges` checks every such field): at least
    `low`, at most `high` (below it with `open_high`); `within` words the message as one interval."""
    return field(default=default, metadata={"range": (low, high, within, open_high)})


def weight(default: float, paper: bool = True) -> Any:
    """The weight of a generator loss term, declared once: the term is registered under the same
    name (`@generator_term` in fundus2video/losses/); 0 switches it off; checked finite and >= 0.
    `paper`: one of the paper's terms (the benchmarks time those)."""
    return field(default=default, metadata={"loss_term": True, "paper": paper})


def loss_terms(paper_only: bool = False) -> tuple[str, ...]:
    """The `loss` keys that weight a generator term, in the order the terms are summed."""
    return tuple(f.name for f in fields(LossConfig) if f.metadata.get("loss_term")
                 and (f.metadata["paper"] or not paper_only))


# keys that were renamed: the old name stops with a one-line error naming the new one
RENAMED = {"loss.gan_km": "loss.kad"}


@dataclass
class PhantomConfig:
    n_train: int = bounded(48, low=1, high=100_000)  # number of training cases (two eyes per patient)
    n_val: int = bounded(4, low=1, high=100_000)  # validation cases
    n_test: int = bounded(4, low=0, high=100_000)  # test cases
    render_size: int = 0  # size the phantom is drawn at before ROI crop; 0 = data.size
    seed: int = bounded(0, low=0, high=2**32 - 1, within=True)  # base seed of the phantom's anatomy
    # aligned (frames and CF in register, first frame as the dye arrives: the knowledge mask is the
    # lesions) | realistic (every clinical nuisance below on); docs/PHANTOM.md
    preset: str = choice("aligned", "realistic")
    # each nuisance on or off whatever the preset ("preset": as the preset says)
    release_sampling: str = choice("preset", "on", "off")  # first frame from AV/V, per-patient arrival
    patient_kinetics: str = choice("preset", "on", "off")  # per-eye rate and strength of each kind
    exposure: str = choice("preset", "on", "off")  # per-frame camera gain and offset
    eye_motion: str = choice("preset", "on", "off")  # translation, rotation, scale between frames
    misregistration: str = choice("preset", "on", "off")  # CF from another camera
    cf_ambiguity: str = choice("preset", "on", "off")  # faint, confusable CF looks


@dataclass
class ManifestColumns:
    # names of the manifest CSV's columns (one row per FFA frame)
    patient: str = "patient_id"
    eye: str = "eye"
    cf: str = "cf_path"  # path of the colour fundus photo, relative to the CSV
    frame: str = "frame_path"  # path of the FFA frame, relative to the CSV
    phase: str = "phase"
    time: str = "time"  # time or order of the frame (sorts frames)


@dataclass
class ManifestConfig:
    columns: ManifestColumns = field(default_factory=ManifestColumns)
    drop_phases: list[str] = field(default_factory=lambda: ["A", "C"])  # phases left out (release)
    merge_phases: dict[str, str] = field(default_factory=lambda: {"AV": "V"})  # renamed phases
    per_phase: int = bounded(4, low=1)  # frames drawn per phase (with replacement at train time)


@dataclass
class SplitConfig:
    fractions: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])  # train, val, test
    seed: int = bounded(7, low=0, high=2**32 - 1, within=True)  # shuffles patients (the release uses 7)
    file: str = ""  # a split.csv (case_id, patient_id, split) to reuse instead


@dataclass
class AugmentConfig:
    # geometric: one draw per case, applied alike to the CF, every frame and every mask
    crop: bool = True  # the release's random crop (1/3 .. all of the ROI box per side), then resize
    hflip: float = bounded(0.5, low=0.0, high=1.0, within=True)  # probability of a horizontal flip
    vflip: float = bounded(0.0, low=0.0, high=1.0, within=True)  # probability of a vertical flip
    rotate: float = bounded(10.0, low=0.0, high=180.0, within=True)  # max degrees of the random rotation
    # max relative zoom of the affine (1 +- scale)
    scale: float = bounded(0.05, low=0.0, high=1.0, within=True, open_high=True)
    translate: float = bounded(0.02, low=0.0, high=1.0, within=True)  # max shift, fraction of the size
    affine_p: float = bounded(0.5, low=0.0, high=1.0, within=True)  # probability of the affine
    # photometric: the CF only
    brightness: float = bounded(0.1, low=0.0, high=1.0, within=True)  # +- relative brightness
    contrast: float = bounded(0.1, low=0.0, high=1.0, within=True)  # +- relative contrast
    saturation: float = bounded(0.1, low=0.0, high=1.0, within=True)  # +- relative saturation
    hue: float = bounded(0.02, low=0.0, high=0.5, within=True)  # +- hue shift (fraction of the colour circle)
    gamma: float = bounded(0.1, low=0.0, high=1.0, within=True, open_high=True)  # gamma in [1 - gamma, 1 + gamma]
    blur: float = bounded(0.1, low=0.0, high=1.0, within=True)  # probability of a light gaussian blur
    photometric_p: float = bounded(0.8, low=0.0, high=1.0, within=True)  # probability of the photometric transforms


@dataclass
class DataConfig:
    source: str = choice("phantom", "folders", "manifest")  # phantom (procedural, in memory) | folders | manifest
    root: str = ""  # folders: the folder of case folders; manifest: the CSV file
    size: int = 512  # S: every image is cropped to its field of view and resized to S x S
    # frames per video (phantom; folders: evenly spaced, first and last kept)
    n_frames: int = bounded(12, high=MAX_FRAMES)
    km_threshold: float = 45.0 / 255.0  # knowledge mask: |early - late| > threshold (0..1 scale)
    augment_train: bool = True  # augment training cases (never val/test)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = bounded(1, low=1)  # videos per batch (the paper uses 1)
    num_workers: int = bounded(0, low=0, high=256)  # DataLoader worker processes
    pin_memory: bool = True  # page-locked batches, for asynchronous copies to a GPU (no effect without one)
    check: bool = True  # read every case before training and stop on bad ones
    # refuse a CF photo that is not orange-red inside its field of view (noise, grey pictures);
    # false for pseudo-colour cameras (e.g. Optos), whose photos are green-dominant
    fundus_check: bool = True
    skip_bad_cases: bool = False  # instead of stopping, leave bad cases out (listed in the log)
    # register each case as it is read: every frame onto frame 0, the CF onto the frames (docs/REGISTRATION.md;
    # `fundus2video data register` writes the same into folders once), with this motion model
    register: bool = False
    register_model: str = choice("similarity", "rigid", "affine")
    manifest: ManifestConfig = field(default_factory=ManifestConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)


@dataclass
class GeneratorConfig:
    # global (pix2pixHD global generator) | local (plus a local enhancer, 2x resolution)
    netg: str = choice("global", "local")
    # filters of the first conv layer (local: of the local branch; the global one has 2x)
    ngf: int = bounded(64, low=1, high=MAX_WIDTH)
    n_downsample: int = bounded(4, low=1)  # stride-2 convolutions (and transposed convolutions)
    n_blocks: int = bounded(9, low=0, high=MAX_BLOCKS)  # residual blocks at the bottleneck
    n_blocks_local: int = bounded(3, low=0, high=MAX_BLOCKS)  # residual blocks of the local enhancer (netg=local)
    padding: str = choice("reflect", "replicate", "zero")  # padding of the residual blocks: reflect | replicate | zero
    # knowledge-boosted attention: stages among bottleneck, up1..up{n_downsample}; [] = off
    kba_stages: list[str] = field(default_factory=lambda: ["bottleneck"])


@dataclass
class DiscriminatorConfig:
    ndf: int = bounded(64, low=1, high=MAX_WIDTH)  # filters of the first conv layer
    n_layers: int = bounded(3, low=1, high=8)  # stride-2 layers of each PatchGAN
    num_d: int = bounded(2, low=1, high=8)  # scales of the multi-scale discriminator


@dataclass
class ModelConfig:
    window: int = bounded(3, high=MAX_WINDOW)  # K: frames predicted per autoregressive step (frames as channels)
    # the mask guiding KBA, the knowledge-aware D and PatchNCE: knowledge (|early - late| > t),
    # lesion (masks given with the data), none (all ones)
    mask_source: str = choice("knowledge", "lesion", "none")
    # unsigned (the paper) | signed: the knowledge-aware D judges where the real video brightens and
    # where it darkens as two separate masked views (KBA and PatchNCE keep the unsigned mask)
    km_sign: str = choice("unsigned", "signed")
    # weight initialisation of G and D: normal (pix2pixHD: conv weights ~ N(0, 0.02)) | pytorch
    # (PyTorch's defaults; converges faster for the narrow networks of CPU demos)
    init: str = choice("normal", "pytorch")
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    # G and D in channels-last memory layout: faster convolutions on GPUs with tensor cores (NHWC kernels)
    channels_last: bool = False
    # torch.compile G and D for training (the first windows wait for the compilation; on a GPU the fused
    # kernels then save launches; on a CPU it costs minutes and gains little)
    compile: bool = False


@dataclass
class LossConfig:
    # weights of the generator's terms (docs/METHOD.md, "Losses"); 0 switches a term off
    gan: float = weight(2.0)  # LSGAN adversarial term G_GAN
    feat: float = weight(10.0)  # discriminator feature matching
    vgg: float = weight(10.0)  # VGG19 perceptual loss (needs vgg_weights)
    gv: float = weight(5.0)  # gradient variance (Sobel gradients, gv_patch x gv_patch patches)
    nce: float = weight(1.0)  # mask-enhanced PatchNCE
    nce_masked: bool = True  # PatchNCE's inputs multiplied by the mask (false: CUT's plain PatchNCE)
    kad: float = weight(1.0)  # knowledge-aware discriminator: G_GAN_km; > 0 also adds D_real_km, D_fake_km to D
    att: float = weight(1.0)  # KBA auxiliary loss: BCE(attention, mask resized)
    l1: float = weight(0.0, paper=False)  # plain L1 to the real frames (not in the paper; for quick CPU demos)
    # torchvision-format VGG19 ImageNet weights (vgg19-dcbb9e9d.pth): a path, or auto ("" too): the
    # cached copy, downloaded and verified first if missing (fundus2video.pretrained); unused when vgg=0
    vgg_weights: str = "auto"
    gv_patch: int = 12
    nce_layers: list[int] = field(default_factory=lambda: [0, 4, 8, 12, 16])  # generator layers compared
    nce_patches: int = bounded(256, low=0)  # patches sampled per layer
    nce_temperature: float = 0.07
    nce_dim: int = bounded(256, low=1, high=MAX_WIDTH)  # width of the projector MLP
    nce_identity: bool = True  # CUT mode: also the identity term NCE(real, fake), averaged with NCE(CF, fake)
    # how D judges the fake: separate (D judges the detached fake again for its own loss, as the release
    # does) | shared (one pass serves G's adversarial terms and D's loss, each backward restricted to its
    # own network: one D forward fewer; one process only, DDP cannot follow restricted backward passes).
    # The same gradients
    d_pass: str = choice("separate", "shared")


@dataclass
class RolloutConfig:
    # scheduled sampling: for the first `ss_steps` training videos the previous frames are
    # real or generated at random, the generated share growing every `ss_interval` videos
    ss_steps: int = bounded(1000, low=0)
    ss_interval: int = 100


@dataclass
class OptimConfig:
    lr: float = 2e-4  # Adam learning rate of G and D
    beta1: float = bounded(0.5, low=0.0, high=1.0, within=True, open_high=True)
    beta2: float = bounded(0.999, low=0.0, high=1.0, within=True, open_high=True)
    epochs_constant: int = 10  # epochs at the initial learning rate
    epochs_decay: int = 40  # epochs of linear decay to 0 (counted in generator steps)
    # under DDP every rank steps on its own video and the gradients are averaged: N GPUs train with an
    # effective batch of N x data.batch_size and 1/N of the generator steps per epoch. none keeps optim.lr;
    # linear multiplies it by the world size, sqrt by its square root (the usual large-batch rules)
    lr_scaling: str = choice("none", "linear", "sqrt")
    # Adam's fused kernel (one kernel per step for all parameters): auto = on CUDA, true | false
    fused: Any = "auto"


@dataclass
class TrainerConfig:
    accelerator: str = choice("auto", "cpu", "gpu", "cuda", "mps")
    devices: Any = "auto"  # number of devices or "auto"
    num_nodes: int = bounded(1, low=1, high=1024)
    strategy: str = "auto"  # auto | ddp | ...
    # under DDP, which gradients each backward all-reduces: per_network = only the network whose loss is
    # back-propagated (G's in G's backward, D's in D's; the same training, about half the traffic) | all
    ddp_reduce: str = choice("per_network", "all")
    # torch.distributed's backend under DDP: auto = Lightning's (nccl on CUDA GPUs, gloo on CPUs) | gloo (also
    # on GPUs: several ranks may share one GPU, which NCCL refuses) | nccl (CUDA GPUs only)
    ddp_backend: str = choice("auto", "gloo", "nccl")
    precision: str = choice("32", "bf16-mixed", "16-mixed")
    max_epochs: int = -1  # -1: epochs_constant + epochs_decay
    # Lightning's meaning: a float is a fraction of the batches, an int a number of batches
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    check_val_every_n_epoch: int = bounded(1, low=1)
    log_every_n_steps: int = bounded(10, low=1)
    fast_dev_run: Any = False  # true: one batch of training and validation, nothing written; N: N batches
    enable_progress_bar: bool = True
    # true: deterministic algorithms (torch.use_deterministic_algorithms; on GPU also needs
    # CUBLAS_WORKSPACE_CONFIG=:4096:8, which train sets); "warn": only warn on nondeterministic ops
    deterministic: Any = False
    # also write checkpoints/last.ckpt every N training videos (batches); 0 = at epoch ends only
    checkpoint_every_n_batches: int = bounded(0, low=0)
    # cudnn.benchmark: cuDNN times its convolution algorithms on the first window and keeps the fastest
    # (the input size never changes in training); not deterministic
    benchmark: bool = False
    # float32 matrix products and convolutions: highest (true fp32) | high (TF32 on Ampere and later:
    # faster, about 3 significant digits fewer) | medium (bf16 internally)
    matmul_precision: str = choice("highest", "high", "medium")


@dataclass
class LoggingConfig:
    root: str = "runs"  # run directories go to <root>/<name>/<timestamp>
    project: str = "fundus2video"  # wandb project
    group: str = ""  # wandb group ("" = none)
    # auto (WANDB_MODE, else online with credentials, else offline) | online | offline | disabled
    wandb: str = choice("auto", "online", "offline", "disabled")
    n_samples: int = bounded(2, low=0)  # validation cases shown in sample videos and mask images
    fps: int = bounded(4, low=1, high=MAX_FPS)  # frame rate of the sample videos


@dataclass
class ExperimentConfig:
    base: str = ""  # an experiment this one overrides (name in the same folder, or a path)
    name: str = "fundus2video"  # experiment name: run directory and wandb run name
    seed: int = bounded(7, low=0, high=2**32 - 1, within=True)  # seeds python, numpy and torch (every rank)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def _section_keys(schema: type, prefix: str = "") -> list[str]:
    """The dotted keys of every section (a dataclass field) of the schema, outermost first."""
    keys = []
    for f in fields(schema):
        if f.default_factory is not MISSING and is_dataclass(f.default_factory):
            keys += [f"{prefix}{f.name}", *_section_keys(f.default_factory, f"{prefix}{f.name}.")]
    return keys


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema, e.g. `model.generator.ngf`."""
    keys = []
    for name, value in node.items():
        key = f"{prefix}{name}"
        keys += _leaf_keys(value, key + ".") if isinstance(value, DictConfig) else [key]
    return keys


def nearest_key(key: str) -> str | None:
    """The valid key a mistyped `key` most likely meant (same section preferred)."""
    leaves = _leaf_keys(OmegaConf.structured(ExperimentConfig))
    # a misspelt name, possibly in the wrong section: match the last name, same section first
    last, section = key.split(".")[-1], key.split(".")[0]
    by_last: dict[str, list[str]] = {}
    for leaf in leaves:
        by_last.setdefault(leaf.split(".")[-1], []).append(leaf)
    names = difflib.get_close_matches(last, list(by_last), n=3, cutoff=0.75)
    found = [leaf for name in names for leaf in by_last[name]]
    found.sort(key=lambda leaf: leaf.split(".")[0] != section)
    if found:
        return found[0]
    close = difflib.get_close_matches(key, leaves, n=1, cutoff=0.6)
    return close[0] if close else None


def _short(value: Any) -> str:
    """A found value as a message shows it: its repr, cut short (a file's content has no place there)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


KEY_SHAPE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+){0,6}")  # what a configuration key looks like

# OmegaConf's own errors, and the TypeError it raises for a list given where a mapping belongs
MERGE_ERRORS = (OmegaConfBaseException, TypeError)


def _explain(err: Exception, source: str, item: str = "") -> ConfigError:
    key = getattr(err, "full_key", None) or item.split("=", 1)[0]
    msg = (getattr(err, "msg", None) or str(err) or type(err).__name__).splitlines()[0]
    if "not in struct" in msg or ("Key '" in msg and "not" in msg):
        if key in RENAMED:
            return ConfigError(f"{source}: '{key}' was renamed to '{RENAMED[key]}' (same meaning): write "
                               f"{RENAMED[key]}")
        if not KEY_SHAPE.fullmatch(key):
            # not a key at all: a file that is no experiment (its text is not echoed: it may be private)
            return ConfigError(f"{source}: not an experiment file (its keys are not configuration keys; expected "
                               "sections such as data:, model:, loss:)")
        close = nearest_key(key)
        hint = f"; did you mean '{close}'?" if close else ""
        return ConfigError(f"{source}: unknown key '{key}'{hint}")
    return ConfigError(f"{source}: bad value for '{key}': {msg[:300]}")


def parse_overrides(args: list[str]) -> list[str]:
    """Accept `key=value` and `--key=value` (wandb agents pass the latter)."""
    out = []
    for arg in args:
        item = arg[2:] if arg.startswith("--") else arg
        if "=" not in item:
            raise ConfigError(f"override '{arg}' is not of the form key=value")
        out.append(item)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults <- experiment YAML <- overrides, validated against `ExperimentConfig`."""
    cfg = OmegaConf.structured(ExperimentConfig)
    for layer_path in _experiment_chain(Path(path)) if path is not None else []:
        try:
            cfg = OmegaConf.merge(cfg, _read_yaml(layer_path))
        except MERGE_ERRORS as err:
            raise _explain(err, str(layer_path)) from None
    if overrides:
        items = parse_overrides(overrides)
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(items))
        except MERGE_ERRORS as err:
            for item in items:  # name the override that does not fit
                try:
                    OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
                except MERGE_ERRORS as one:
                    raise _explain(one, "override", item) from None
            raise _explain(err, "override") from None
    try:
        OmegaConf.resolve(cfg)  # ${...} interpolations: a broken one is named here, not at first use
    except OmegaConfBaseException as err:
        raise _explain(err, str(path) if path is not None else "override") from None
    _check(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"experiment file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml syntax errors come in many types
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: an experiment is a mapping of sections (data:, model:, ...); found a "
                          f"{'list' if isinstance(loaded, ListConfig) else type(loaded).__name__}")
    for section in _section_keys(ExperimentConfig):  # every nested section, e.g. model.generator
        value = OmegaConf.select(loaded, section, default=None)
        if value is not None and not isinstance(value, DictConfig):
            raise ConfigError(f"{path}: '{section}' must be a mapping of keys (e.g. {section.split('.')[-1]}: "
                              f"{{key: value}}); found {_short(value)}")
    return loaded


def _experiment_chain(path: Path) -> list[Path]:
    """`path` and the experiments it is based on (`base:`), most basic first."""
    chain: list[Path] = []
    while True:
        if path in chain:
            raise ConfigError(f"{path}: 'base' chain loops ({' -> '.join(map(str, chain))})")
        chain.insert(0, path)
        base = _read_yaml(path).get("base")
        if not base:
            return chain
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base: {base!r} is not an experiment name (expected a name or a path, "
                              "e.g. base: fundus2video)")
        candidates = [path.parent / f"{base}.yaml", path.parent.parent / f"{base}.yaml", Path(base)]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"{path}: base experiment '{base}' not found (looked for "
                              f"{', '.join(map(str, candidates))})")
        path = found


def _check(cfg: DictConfig) -> None:
    """Constraints between keys that types alone cannot express."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    _check_choices(cfg, ExperimentConfig, "", need)
    # the run directory is <logging.root>/<name>/...: a name that is a path would put it elsewhere
    need(bool(cfg.name) and cfg.name not in (".", "..") and not any(c in cfg.name for c in "/\\\0"),
         f"name: {cfg.name!r} is not a plain name (expected letters, digits, - or _; it names the folder under "
         "logging.root)")
    if cfg.data.source == "phantom":
        default = SplitConfig()
        need(not cfg.data.split.file and list(cfg.data.split.fractions) == default.fractions,
             "data.split: the phantom's splits are data.phantom.n_train, n_val and n_test; data.split.file and "
             "data.split.fractions apply to data.source=folders or manifest")
    need(cfg.data.source == "phantom" or bool(cfg.data.root),
         f"data.root: required for data.source={cfg.data.source} (the "
         + ("folder of case folders)" if cfg.data.source == "folders" else "manifest CSV)"))
    fr = list(cfg.data.split.fractions)
    need(len(fr) == 3 and min(fr) >= 0 and abs(sum(fr) - 1) < 1e-6,
         f"data.split.fractions: expected three non-negative numbers summing to 1, got {fr}")
    need(16 <= cfg.data.size <= MAX_SIZE, f"data.size: {cfg.data.size} is out of range (expected 16 to {MAX_SIZE})")
    # before 2 ** n_downsample below
    need(1 <= cfg.model.generator.n_downsample <= MAX_DOWNSAMPLE, f"model.generator.n_downsample: "
         f"{cfg.model.generator.n_downsample} is out of range (expected 1 to {MAX_DOWNSAMPLE})")
    div = 2 ** (cfg.model.generator.n_downsample + (cfg.model.generator.netg == "local"))
    need(cfg.data.size % div == 0,
         f"data.size: {cfg.data.size} must be divisible by {div} (2**n_downsample, x2 for netg=local)")
    need(cfg.data.n_frames >= 2, "data.n_frames: need at least 2 frames (one to condition, one to predict)")
    need(cfg.model.window >= 1, "model.window: K must be >= 1")
    need(0.0 < cfg.data.km_threshold < 1.0, "data.km_threshold: expected a value in (0, 1)")
    need(cfg.model.km_sign == "unsigned" or (cfg.model.mask_source != "none" and cfg.loss.kad > 0),
         f"model.km_sign=signed splits the knowledge-aware D's masked view by the sign of the change; it needs "
         f"a mask (model.mask_source is {cfg.model.mask_source}) and loss.kad > 0 (it is {cfg.loss.kad})")
    for key in ("limit_train_batches", "limit_val_batches"):
        value = cfg.trainer[key]
        need(isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
             and (isinstance(value, int) or value <= 1.0),
             f"trainer.{key}: expected a number >= 0 (int: batches, float: a fraction up to 1.0), got {value!r}")
    need(cfg.loss.gv == 0 or cfg.model.window == 3,
         f"loss.gv: the release's gradient variance blends the window's three frames like RGB; it needs "
         f"model.window=3 (got {cfg.model.window}) or loss.gv=0")
    stages = ["bottleneck"] + [f"up{i}" for i in range(1, cfg.model.generator.n_downsample + 1)]
    bad = [s for s in cfg.model.generator.kba_stages if s not in stages]
    need(not bad, f"model.generator.kba_stages: unknown stage(s) {bad} (expected some of {stages})")
    kba = list(cfg.model.generator.kba_stages)
    need(len(set(kba)) == len(kba), f"model.generator.kba_stages: {kba} names a stage twice")
    layers = list(cfg.loss.nce_layers)
    need(cfg.loss.nce == 0 or (layers and min(layers) >= 0 and len(set(layers)) == len(layers)),
         f"loss.nce_layers: {layers} (expected distinct generator layer indices >= 0, at least one while "
         f"loss.nce={cfg.loss.nce} > 0)")
    need(cfg.rollout.ss_interval > 0, "rollout.ss_interval: must be > 0")
    need(cfg.optim.epochs_constant >= 0 and cfg.optim.epochs_decay >= 0,
         "optim.epochs_constant/epochs_decay: must be >= 0")
    _check_ranges(cfg, need)


def _check_declared_ranges(cfg: DictConfig, schema: type, prefix: str, need) -> None:
    """Every `bounded` field of the schema within its range, in the schema's order."""
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        if f.metadata.get("range"):
            low, high, within, open_high = f.metadata["range"]
            value = cfg[f.name]
            if within:
                ok = low <= value < high if open_high else low <= value <= high
                below = "<" if open_high else "<="
                need(ok, f"{key}: {value} is out of range (expected {low} <= value {below} {high})")
            else:
                need(low is None or value >= low, f"{key}: {value} is out of range (expected >= {low})")
                need(high is None or value <= high, f"{key}: {value} is out of range (expected at most {high})")
        elif is_dataclass(f.default_factory if f.default_factory is not MISSING else None):
            _check_declared_ranges(cfg[f.name], f.default_factory, f"{key}.", need)


def _check_choices(cfg: DictConfig, schema: type, prefix: str, need) -> None:
    """Every enum-like key (`choice`) of the schema holds one of its values."""
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        if "choices" in f.metadata:
            value = cfg[f.name]
            need(value in f.metadata["choices"],
                 f"{key}: '{value}' is not one of {', '.join(f.metadata['choices'])}")
        elif is_dataclass(f.default_factory if f.default_factory is not MISSING else None):
            _check_choices(cfg[f.name], f.default_factory, f"{key}.", need)


def _check_ranges(cfg: DictConfig, need) -> None:
    """Values that have the right type but no meaning: caught before any data is read or any run
    directory is made, so nothing fails after an epoch of training."""
    def at_least(key: str, low: int | float, why: str = "") -> None:
        value = OmegaConf.select(cfg, key)
        need(value >= low, f"{key}: {value} is out of range (expected >= {low}{why})")

    _check_declared_ranges(cfg, ExperimentConfig, "", need)
    need(0 < cfg.optim.lr < math.inf, f"optim.lr: {cfg.optim.lr} is out of range (expected a finite learning "
         "rate > 0)")
    need(cfg.optim.fused in ("auto", True, False), f"optim.fused: {cfg.optim.fused!r} is not one of auto, true, false")
    for key in ("loss.gv_patch", "data.phantom.render_size"):
        at_least(key, 1 if key == "loss.gv_patch" else 0)
    need(cfg.trainer.max_epochs >= -1, f"trainer.max_epochs: {cfg.trainer.max_epochs} is out of range "
         "(expected -1, the schedule's epochs, or >= 0)")
    need(cfg.data.n_frames >= cfg.model.window + 1,
         f"data.n_frames: {cfg.data.n_frames} frames cannot fill a window of model.window={cfg.model.window} "
         f"after the first (expected >= {cfg.model.window + 1})")
    for key in loss_terms():
        value = cfg.loss[key]
        need(0 <= value < math.inf, f"loss.{key}: {value} is out of range (expected a finite weight >= 0; 0 "
             "switches the term off)")
    need(0 < cfg.loss.nce_temperature < math.inf, f"loss.nce_temperature: {cfg.loss.nce_temperature} is out of "
         "range (expected a finite temperature > 0)")
    need(cfg.loss.gv_patch <= cfg.data.size, f"loss.gv_patch: {cfg.loss.gv_patch} is out of range (expected at most "
         f"{cfg.data.size})")
    render = cfg.data.phantom.render_size
    need(render == 0 or 32 <= render <= MAX_SIZE, f"data.phantom.render_size: {render} is out of range (expected 0, "
         f"which draws at data.size, or 32 to {MAX_SIZE})")
    limit = cfg.trainer.limit_train_batches
    need(limit > 0, f"trainer.limit_train_batches: {limit} trains nothing (expected > 0: a number of batches, or "
         "a fraction of them)")
    dev_run = cfg.trainer.fast_dev_run
    need(isinstance(dev_run, bool) or (isinstance(dev_run, int) and dev_run >= 0),
         f"trainer.fast_dev_run: {dev_run!r} is out of range (expected true, false or a number of batches >= 0)")
    need(cfg.trainer.deterministic in (True, False, "warn"),
         f"trainer.deterministic: {cfg.trainer.deterministic!r} is not one of true, false, warn")
    devices = cfg.trainer.devices
    count = isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1)
    text = devices.replace(" ", "") if isinstance(devices, str) else ""
    listed = isinstance(devices, ListConfig) or text == "-1" or text.replace(",", "").isdigit()
    need(devices == "auto" or count or listed,
         f"trainer.devices: {devices!r} is out of range (expected auto, -1 (all), a count >= 1 or a list "
         "like '0,1')")
    if isinstance(devices, ListConfig) or "," in text:
        ids = list(devices) if isinstance(devices, ListConfig) else text.rstrip(",").split(",")  # "1,": index 1
        need(all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids) if
             isinstance(devices, ListConfig) else all(i.isdigit() for i in ids),
             f"trainer.devices: {devices!r} is out of range (expected device indices >= 0, like [0, 1])")
        need(bool(ids), f"trainer.devices: {devices!r} names no device (expected indices like [0, 1])")
        need(len({int(i) for i in ids}) == len(ids), f"trainer.devices: {devices!r} names a device twice "
             "(expected each index once, like [0, 1])")


def to_plain(cfg: DictConfig) -> dict:
    """Plain-data dict (for checkpoints: loadable with `weights_only`)."""
    return OmegaConf.to_container(cfg, resolve=True)


def from_plain(data: dict) -> DictConfig:
    """Rebuild a validated config from `to_plain` output (e.g. a checkpoint's hparams): types, and the
    same constraints as an experiment file's (a checkpoint written by hand or by other code may hold
    what no experiment could, e.g. data.size=-64)."""
    data = _migrated(data)
    cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.create(data))
    _check(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _migrated(data: dict) -> dict:
    """A checkpoint's config saved under old key names, with the current ones (checkpoints
    cannot be edited, unlike experiment files, which are told the new name)."""
    data = dict(data)
    for old, new in RENAMED.items():
        (o_section, o_key), n_key = old.split("."), new.split(".")[1]
        section = data.get(o_section)
        if isinstance(section, dict) and o_key in section:
            section = dict(section)
            value = section.pop(o_key)
            section.setdefault(n_key, value)
            data[o_section] = section
    return data


def resolve_experiment(name: str) -> Path:
    """A YAML path, or a name looked up as experiments/NAME.yaml."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        if path.is_dir():
            raise ConfigError(f"experiment {path}: a folder, not a YAML file")
        candidates = [path]
    else:
        candidates = [experiments_dir() / f"{name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    folder = candidates[0].parent
    known = sorted(p.stem for p in folder.glob("*.yaml") if p.is_file()) if folder.is_dir() else []
    hint = f" (available in {folder}/: {', '.join(known)})" if known else ""
    raise ConfigError(f"experiment not found: {candidates[0]}{hint}")


def experiments_dir() -> Path:
    """Where experiment names are looked up: `experiments/` of the working directory (a checkout),
    else the checkout this package is installed from in editable mode, else the copy shipped inside
    the installed package (setup.py)."""
    local = Path("experiments")
    if local.is_dir():
        return local
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "experiments", here / "experiments"):
        if candidate.is_dir():
            return candidate
    return local


def resolve_sweep(name: str) -> Path:
    """A sweep YAML path, or a name looked up as experiments/sweeps/NAME.yaml."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = experiments_dir() / "sweeps" / f"{name}.yaml"
    if path.is_file():
        return path
    known = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
    hint = f" (available in {path.parent}/: {', '.join(known)})" if known else ""
    raise ConfigError(f"sweep not found: {path}{hint}")
