"""Procedural phantom of paired colour fundus photos (CF) and fluorescein angiography videos (FFA).

One file on purpose, though long: the anatomy, the lesion kinds, their kinetics, the camera and the
nuisances share one set of draws and one coordinate model, and every simplification they make is
read here together with docs/PHANTOM.md; split, the assumptions would no longer be seen side by side.

No real CF/FFA pairs are public, so this module is the project's demo and test dataset.  It is
seeded (the same arguments give identical arrays), fast (vectorised numpy + cv2 drawing) and its
CF -> FFA mapping is learnable: every lesion has a CF signature that predicts its FFA behaviour.

Model
-----
1. Anatomy is sampled in resolution-independent units: origin at the centre of the camera's
   circular field of view (FOV), FOV radius = 1, x to the right, y down, drawn as a right eye
   (OD, optic disc on the right = nasal side).  A left eye (OS) is the same model mirrored.
   * optic disc ~0.75 (~2.5 disc diameters) nasal of the fovea, slightly above it;
   * macula: darker zone around the fovea, with a capillary-free foveal avascular zone (FAZ);
   * vessels: arteries (thin, light red) and veins (wide, dark red) leave the disc in four
     arcades; the temporal arcades circle the macula, branches taper and stop at the FAZ;
   * choroid / capillary bed: smooth multi-octave noise textures;
   * 1-4 lesions, each one of LESION_KINDS with its own CF look and FFA kinetics.
2. The anatomy is rasterised once per case into float32 layers (vessel coverage, disc, macula,
   lesion maps...).
3. Each FFA frame is a cheap linear combination of the layers, weighted by scalar kinetics of the
   dye at time t (`_kinetics`): choroidal flush ~10 s, arteries ~12 s, laminar venous filling
   ~15-19 s, venous phase with bright capillaries, late phase (>= 60 s) where vessels fade to
   grey.  Dynamic lesions follow their own time courses:
     leakage        bright spot growing in radius and brightness, edges blurring;
     staining       brightens over time, fixed shape;
     pooling        a sharp round space that fills slowly;
     window_defect  bright with the choroidal flush, fading late;
     blocked        dark throughout (haemorrhage masks everything below it);
     nonperfusion   dark throughout (no capillary filling).
4. The CF is the same anatomy painted in colour with a per-patient cast, vignetting, blur, noise.

Presets (`make_case(..., nuisances=Nuisances.preset(name))`, config `data.phantom.preset`):
  aligned    the first frame at 10-11 s (dye just arriving), the last one late, one time course per
             lesion kind, pixel-aligned frames and CF, a CF look that names the kind. Background
             and vessels are tuned to end within ~30 grey levels of where they started, so the
             knowledge mask |first - last| > 45 is the dynamic lesions: it hands a KM-guided
             method its answer. Kept for the tests and the earlier study.
  realistic  every nuisance of `Nuisances` on: frames selected as the authors' release selects
             them (first frame from the AV / venous phase, per-patient arm-retina time), per-eye
             lesion rates and strengths, per-frame camera gain and offset, eye motion between
             frames, a CF from another camera (scale, rotation, offset, its own field of view),
             faint and confusable CF looks. The knowledge mask then also covers vessels, disc
             and moving edges. Each nuisance's range and its clinical basis: docs/PHANTOM.md.
The transforms of the motion and the misregistration are kept as ground truth in the case.

Value ranges (0..255): FFA inside the FOV 3..255, outside 0.  Roughly: background 20-70 at
10-11 s, ~115 venous, ~50 late; vessels ~230 at their peak, ~40 late; dynamic lesions 150-220 late.
CF: green >= 13 inside the FOV, all channels 0 outside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

PHASES = ("early", "arterial", "venous", "late")
DYNAMIC_KINDS = ("leakage", "staining", "pooling", "window_defect")
STATIC_KINDS = ("blocked", "nonperfusion")
LESION_KINDS = DYNAMIC_KINDS + STATIC_KINDS
PRESETS = ("aligned", "realistic")


@dataclass(frozen=True)
class Nuisances:
    """The clinical nuisances a case carries; each is one switch (docs/PHANTOM.md: ranges, sources)."""

    release_sampling: bool = False  # first frame from AV/V, per-patient arm-retina time
    patient_kinetics: bool = False  # per-eye rate and strength of each lesion kind's time course
    exposure: bool = False  # per-frame camera gain and offset
    eye_motion: bool = False  # translation, rotation, scale between FFA frames
    misregistration: bool = False  # the CF from another camera: scale, rotation, offset, own FOV
    cf_ambiguity: bool = False  # faint CF looks; some lesions painted with a confusable kind's look

    @staticmethod
    def preset(name: str) -> Nuisances:
        if name not in PRESETS:
            raise ValueError(f"phantom preset '{name}' is not one of {list(PRESETS)}")
        on = name == "realistic"
        return Nuisances(**{f: on for f in NUISANCES})

    @staticmethod
    def from_config(cfg) -> Nuisances:
        """From `data.phantom` (a mapping): the preset, then each nuisance's "on" / "off"."""
        base = Nuisances.preset(cfg.get("preset", "aligned"))
        forced = {f: cfg[f] == "on" for f in NUISANCES if cfg.get(f, "preset") != "preset"}
        return replace(base, **forced)

    def any(self) -> bool:
        return any(getattr(self, f) for f in NUISANCES)


NUISANCES = ("release_sampling", "patient_kinetics", "exposure", "eye_motion", "misregistration",
             "cf_ambiguity")

# Ranges of the nuisances (docs/PHANTOM.md gives the clinical basis of each).
ARM_RETINA_S = (8.0, 15.0)  # dye reaches the retina this long after injection (per patient)
ALIGNED_ARRIVAL_S = 10.0  # the arrival the aligned kinetics are written for
FIRST_AFTER_ARRIVAL_S = (5.0, 12.0)  # the release's first frame: AV / early venous phase
RATE_RANGE = (0.5, 2.0)  # per-eye multiplier of a lesion kind's speed (log-uniform)
STRENGTH_RANGE = (0.5, 1.2)  # per-eye multiplier of a lesion kind's peak fluorescence
AUTO_GAIN_TARGET = (70.0, 110.0)  # the field's mean grey level the camera's gain steers towards
AUTO_GAIN_STRENGTH = (0.5, 0.9)  # share of a brightness change the gain undoes (per case)
GAIN_JITTER = (0.9, 1.1)  # per-frame gain beyond the auto-gain (log-uniform)
OFFSET_STD = 4.0  # per-frame camera offset, grey levels
MOTION_SHIFT_STD = 0.015  # eye motion between frames: translation std per axis, image sides
MOTION_ROT_STD_DEG = 1.5
MOTION_SCALE_STD = 0.01
CF_SCALE_RANGE = (0.88, 1.12)  # the CF camera's magnification relative to the angiograph's
CF_ROT_MAX_DEG = 6.0
CF_SHIFT_MAX = 0.04  # image sides
CF_FOV_RADIUS = (0.45, 0.5)  # the CF camera's own circular field (image sides)
FAINT_RANGE = (0.25, 1.0)  # opacity of a lesion's CF look
LOOK_SWAP_P = 0.35  # chance that a lesion wears a confusable kind's CF look
LOOK_CONFUSIONS = {"leakage": ("staining", "window_defect"), "staining": ("leakage", "window_defect"),
                   "window_defect": ("staining", "leakage"), "pooling": ("nonperfusion",),
                   "nonperfusion": ("pooling",), "blocked": ()}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
@dataclass
class PhantomCase:
    case_id: str  # f"phantom{index:04d}"
    patient_id: str  # f"P{index // 2:04d}": two eyes per patient
    eye: str  # "OD" (even index) or "OS" (odd index, mirrored anatomy)
    cf: np.ndarray  # (H, W, 3) uint8 RGB colour fundus photo
    frames: np.ndarray  # (T, H, W) uint8 FFA frames, sorted by time
    times: np.ndarray  # (T,) float32 seconds after dye injection
    phases: list[str]  # (T,) phase_of(times)
    fov: np.ndarray  # (H, W) bool camera field of view
    lesion: np.ndarray  # (H, W) bool union of the dynamic lesions
    lesion_kinds: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> (H, W) bool
    vessels: np.ndarray | None = None  # (H, W) bool: the larger vessels (coverage > 1/2)
    # Ground truth of the nuisances (None when off). Masks are in FFA frame 0's pixel coordinates.
    frame_to_ref: np.ndarray | None = None  # (T, 2, 3): cv2.warpAffine(frames[k], M[k]) ~ frame 0
    cf_to_ref: np.ndarray | None = None  # (2, 3): cv2.warpAffine(cf, M) ~ aligned with frame 0
    exposure: np.ndarray | None = None  # (T, 2): camera gain and offset of each frame
    arrival: float = ALIGNED_ARRIVAL_S  # seconds from injection until the dye reaches the retina
    looks: dict[str, str] = field(default_factory=dict)  # lesion kind -> the kind its CF look shows


def phase_of(t: float) -> str:
    """Angiographic phase at t seconds: early < 10 <= arterial (incl. AV) < 20 <= venous < 60."""
    if t < 10.0:
        return "early"
    if t < 20.0:
        return "arterial"
    if t < 60.0:
        return "venous"
    return "late"


def frame_times(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Default sampling: thirds in 10-20 s, 20-60 s and 300-600 s, stratified and jittered.

    The first frame is always at 10-11 s, as the dye arrives, so first-vs-last differences
    contrast the unfilled eye with the late phase whatever n_frames is.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    n_art = max(1, n_frames // 3)
    n_late = min(n_frames - n_art, max(1, n_frames // 3))
    n_ven = n_frames - n_art - n_late

    def stratified(lo: float, hi: float, k: int) -> np.ndarray:
        return lo + (hi - lo) * (np.arange(k) + rng.uniform(0.1, 0.9, k)) / max(k, 1)

    times = np.concatenate([[rng.uniform(10.0, 11.0)], stratified(11.5, 20.0, n_art - 1),
                            stratified(20.0, 60.0, n_ven), stratified(300.0, 600.0, n_late)])
    return np.sort(times).astype(np.float32)


def frame_times_release(n_frames: int, arrival: float, rng: np.random.Generator) -> np.ndarray:
    """The release's selection: phase A dropped, the first frame from the AV / early venous phase
    (`FIRST_AFTER_ARRIVAL_S` after the dye arrives), then venous frames up to 60 s and a late third
    (300-600 s), stratified and jittered."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    first = arrival + rng.uniform(*FIRST_AFTER_ARRIVAL_S)
    n_late = min(n_frames - 1, max(1, n_frames // 3))
    n_ven = n_frames - 1 - n_late

    def stratified(lo: float, hi: float, k: int) -> np.ndarray:
        return lo + (hi - lo) * (np.arange(k) + rng.uniform(0.1, 0.9, k)) / max(k, 1)

    times = np.concatenate([[first], stratified(first + 1.0, 60.0, n_ven), stratified(300.0, 600.0, n_late)])
    return np.sort(times).astype(np.float32)


def make_case(index: int, size: int = 256, n_frames: int = 12, seed: int = 0,
              times: np.ndarray | None = None, nuisances: Nuisances | None = None) -> PhantomCase:
    """Case `index` of the phantom with base `seed`; the same (index, size, n_frames, seed) gives
    identical arrays.  The same index at different sizes shows the same eye.  If `times` is
    given it replaces the default sampling (sorted; n_frames is then ignored).  `nuisances`
    (default: none, the aligned preset) draw from streams of their own, so switching one on leaves
    the anatomy and every other nuisance of the case as they were."""
    # Independent streams, so geometry never depends on size and noise never on geometry;
    # the patient stream is shared by both eyes.
    patient_rng = np.random.default_rng(np.random.SeedSequence([seed, index // 2]))
    geo_ss, time_ss, noise_ss = np.random.SeedSequence([seed, index, 1]).spawn(3)
    anatomy = _sample_anatomy(np.random.default_rng(geo_ss), patient_rng)
    nz = nuisances or Nuisances()
    draw = _draw_nuisances(nz, anatomy, index, seed, size)
    if times is None:
        times = (frame_times_release(n_frames, draw.arrival, np.random.default_rng(time_ss))
                 if nz.release_sampling else frame_times(n_frames, np.random.default_rng(time_ss)))
    times = np.sort(np.asarray(times, dtype=np.float32).ravel())

    grid = _Grid.make(size, anatomy)
    layers = _rasterise(anatomy, grid, *((draw.looks, draw.faint) if nz.cf_ambiguity else (None, None)))
    noise_rng = np.random.default_rng(noise_ss)
    if nz.any():
        cf, frames, camera = _render_realistic(anatomy, layers, grid, times, noise_rng, draw)
    else:  # the aligned preset: bit for bit what it always drew
        cf = _render_cf(anatomy, layers, grid, noise_rng)
        frames = _render_ffa(layers, times, noise_rng)
        camera = None

    eye = "OD" if index % 2 == 0 else "OS"
    masks = {k: layers.masks[k] for k in LESION_KINDS}
    lesion = np.logical_or.reduce([masks[k] for k in DYNAMIC_KINDS])
    fov = layers.fov
    vessels = np.maximum(layers.art, layers.vein) > 0.5
    frame_to_ref = None if camera is None or not nz.eye_motion else camera["frame_to_ref"]
    cf_to_ref = None if camera is None or not nz.misregistration else camera["cf_to_ref"]
    if eye == "OS":  # mirror image of a right eye: the disc moves to the left
        cf, frames, fov, lesion = cf[:, ::-1], frames[:, :, ::-1], fov[:, ::-1], lesion[:, ::-1]
        vessels = vessels[:, ::-1]
        masks = {k: m[:, ::-1] for k, m in masks.items()}
        frame_to_ref = None if frame_to_ref is None else np.stack([_mirrored(m, size) for m in frame_to_ref])
        cf_to_ref = None if cf_to_ref is None else _mirrored(cf_to_ref, size)
    contiguous = np.ascontiguousarray
    shift = draw.arrival - ALIGNED_ARRIVAL_S  # phases are named by the eye's own clock
    return PhantomCase(
        case_id=f"phantom{index:04d}", patient_id=f"P{index // 2:04d}", eye=eye,
        cf=contiguous(cf), frames=contiguous(frames), times=times,
        phases=[phase_of(float(t) - shift) for t in times], fov=contiguous(fov),
        lesion=contiguous(lesion), lesion_kinds={k: contiguous(m) for k, m in masks.items()},
        vessels=contiguous(vessels), frame_to_ref=frame_to_ref, cf_to_ref=cf_to_ref,
        exposure=None if camera is None or not nz.exposure else camera["exposure"],
        arrival=draw.arrival, looks=draw.looks if nz.cf_ambiguity else {})


@dataclass
class _Draw:
    """A case's nuisance parameters. Every one is drawn whatever the switches, each from a stream
    of its own, so a switch changes only what it switches."""

    arrival: float  # seconds from injection to the dye's arrival at the retina
    rates: dict[str, float] | None  # lesion kind -> speed multiplier of its time course
    strengths: dict[str, float] | None  # lesion kind -> peak fluorescence multiplier
    looks: dict[str, str]  # lesion kind -> the kind whose CF look it wears
    faint: dict[str, float]  # lesion kind -> opacity of its CF look
    nuisances: Nuisances
    exposure_ss: np.random.SeedSequence
    motion_ss: np.random.SeedSequence
    cf_ss: np.random.SeedSequence


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n=None):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def _draw_nuisances(nz: Nuisances, anatomy: _Anatomy, index: int, seed: int, size: int) -> _Draw:
    patient = np.random.default_rng(np.random.SeedSequence([seed, index // 2, 11]))
    kin, look_ss, exposure_ss, motion_ss, cf_ss = np.random.SeedSequence([seed, index, 12]).spawn(5)
    arrival = float(patient.uniform(*ARM_RETINA_S))
    kin_rng, look_rng = np.random.default_rng(kin), np.random.default_rng(look_ss)
    rates = {k: float(_log_uniform(kin_rng, *RATE_RANGE)) for k in LESION_KINDS}
    strengths = {k: float(kin_rng.uniform(*STRENGTH_RANGE)) for k in LESION_KINDS}
    looks, faint = {}, {}
    for k in LESION_KINDS:
        swap, pick, alpha = look_rng.random(), look_rng.random(), look_rng.uniform(*FAINT_RANGE)
        others = LOOK_CONFUSIONS[k]
        looks[k] = others[int(pick * len(others))] if others and swap < LOOK_SWAP_P else k
        faint[k] = float(alpha)
    return _Draw(arrival=arrival if nz.release_sampling else ALIGNED_ARRIVAL_S,
                 rates=rates if nz.patient_kinetics else None,
                 strengths=strengths if nz.patient_kinetics else None,
                 looks=looks, faint=faint, nuisances=nz,
                 exposure_ss=exposure_ss, motion_ss=motion_ss, cf_ss=cf_ss)


def _similarity(size: int, scale: float, angle_deg: float, shift) -> np.ndarray:
    """2 x 3 affine in pixel coordinates: scale and rotate about the image centre, then shift."""
    c = (size - 1) / 2.0
    m = cv2.getRotationMatrix2D((c, c), angle_deg, scale)
    m[:, 2] += np.asarray(shift, np.float64)
    return m


def _inverse(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(m)


def _mirrored(m: np.ndarray, size: int) -> np.ndarray:
    """The same transform seen in the horizontally mirrored image (F M F, F: x -> size-1-x)."""
    f = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return (f @ full @ f)[:2]


def _camera_draws(draw: _Draw, n_frames: int, size: int) -> dict[str, np.ndarray]:
    """Per-frame gain/offset, the eye's motion and the CF camera: the ground truth of a case."""
    nz = draw.nuisances
    exp_rng, mot_rng, cf_rng = (np.random.default_rng(ss) for ss in (draw.exposure_ss, draw.motion_ss, draw.cf_ss))
    # the gain itself depends on each frame's brightness: the renderer completes column 0
    target, strength = exp_rng.uniform(*AUTO_GAIN_TARGET), exp_rng.uniform(*AUTO_GAIN_STRENGTH)
    jitter = _log_uniform(exp_rng, *GAIN_JITTER, n_frames)
    offsets = exp_rng.normal(0.0, OFFSET_STD, n_frames)
    exposure = np.stack([jitter, offsets], 1) if nz.exposure else np.tile([1.0, 0.0], (n_frames, 1))
    ref_to_frame = [np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])]  # frame 0 is the reference
    for _ in range(1, n_frames):
        shift = mot_rng.normal(0.0, MOTION_SHIFT_STD * size, 2)
        angle, scale = mot_rng.normal(0.0, MOTION_ROT_STD_DEG), 1.0 + mot_rng.normal(0.0, MOTION_SCALE_STD)
        ref_to_frame.append(_similarity(size, scale, angle, shift) if nz.eye_motion else ref_to_frame[0].copy())
    scale = cf_rng.uniform(*CF_SCALE_RANGE)
    angle = cf_rng.uniform(-CF_ROT_MAX_DEG, CF_ROT_MAX_DEG)
    shift = cf_rng.uniform(-CF_SHIFT_MAX, CF_SHIFT_MAX, 2) * size
    fov_offset, fov_radius = cf_rng.uniform(-0.012, 0.012, 2), cf_rng.uniform(*CF_FOV_RADIUS)
    ref_to_cf = _similarity(size, scale, angle, shift) if nz.misregistration else ref_to_frame[0].copy()
    return {"exposure": exposure.astype(np.float32), "auto_gain": (target, strength),
            "ref_to_frame": np.stack(ref_to_frame),
            "frame_to_ref": np.stack([_inverse(m) for m in ref_to_frame]),
            "ref_to_cf": ref_to_cf, "cf_to_ref": _inverse(ref_to_cf),
            "cf_fov": (fov_offset, fov_radius)}


def _render_realistic(anatomy: _Anatomy, layers: _Layers, grid: _Grid, times: np.ndarray,
                      rng: np.random.Generator, draw: _Draw):
    camera = _camera_draws(draw, len(times), grid.size)
    nz = draw.nuisances
    cf = _render_cf(anatomy, layers, grid, rng, camera if nz.misregistration else None)
    frames = _render_ffa(layers, times, rng, shift=draw.arrival - ALIGNED_ARRIVAL_S, rates=draw.rates,
                         strengths=draw.strengths,
                         motion=camera["ref_to_frame"] if nz.eye_motion else None,
                         exposure=camera["exposure"] if nz.exposure else None,
                         auto_gain=camera["auto_gain"])
    return cf, frames, camera


# --------------------------------------------------------------------------------------------
# Anatomy in normalised units (FOV radius 1, OD orientation)
# --------------------------------------------------------------------------------------------
STEP = 0.01  # vessel polyline step
MIN_WIDTH = 0.004  # thinner branches are not drawn (~0.5 px at size 256)
FAZ_RADIUS = 0.07  # foveal avascular zone: vessels stop at its edge
MACULA_RADIUS = 0.28
LEAK_GROWTH = 2.2  # late leakage radius / onset radius


@dataclass
class _Vessel:
    points: np.ndarray  # (N, 2)
    widths: np.ndarray  # (N,) diameters
    artery: bool


@dataclass
class _Lesion:
    kind: str
    centre: np.ndarray  # (2,)
    radius: float  # base radius (leakage: at onset)
    harmonics: np.ndarray  # (3, 2) amplitude/phase of cos(k theta), k = 2..4: irregular outline
    extent: float  # radius of the disc that contains the lesion at its largest
    spots: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (n, 3) x, y, r
    paths: list[np.ndarray] = field(default_factory=list)  # ghost vessels (nonperfusion)
    variant: str = ""  # leakage CF look: "exudate" or "nv" (red dots)


@dataclass
class _Anatomy:
    fov_offset: np.ndarray  # FOV centre offset from the image centre, in image sizes
    fov_radius: float  # in image sizes
    fovea: np.ndarray
    disc: np.ndarray
    disc_radius: float
    cup_ratio: float
    vessels: list[_Vessel]
    lesions: list[_Lesion]
    grids: dict[str, list[np.ndarray]]  # noise grids, resized to the image at render time
    cast: np.ndarray  # (3,) base RGB of the fundus in 0..1 (per patient)
    light_dir: float  # uneven illumination: direction of the brighter side


def _sample_anatomy(rng: np.random.Generator, patient_rng: np.random.Generator) -> _Anatomy:
    # Same patient, same camera session: colour cast and illumination are shared by both eyes.
    yellow = patient_rng.uniform(0.0, 1.0)
    brightness = patient_rng.uniform(0.85, 1.05)
    cast = brightness * np.array([patient_rng.uniform(0.78, 0.9), 0.27 + 0.15 * yellow,
                                  0.09 + 0.08 * yellow])
    light_dir = patient_rng.uniform(-math.pi, math.pi)

    fovea = np.array([rng.uniform(-0.18, -0.08), rng.uniform(-0.03, 0.06)])
    disc = fovea + np.array([rng.uniform(0.68, 0.8), rng.uniform(-0.1, -0.03)])
    disc_radius = rng.uniform(0.12, 0.15)
    vessels = _sample_vessels(rng, fovea, disc)
    lesions = _sample_lesions(rng, fovea, disc, disc_radius)
    grids = {
        "choroid": [rng.random((g, g)) for g in (5, 10, 20, 40)],
        "flush": [rng.random((g, g)) for g in (6, 12, 24)],
        "capillary": [rng.random((g, g)) for g in (32, 64, 128)],
        "mottle": [rng.random((g, g)) for g in (40, 80)],
    }
    return _Anatomy(
        fov_offset=rng.uniform(-0.012, 0.012, 2), fov_radius=rng.uniform(0.46, 0.49),
        fovea=fovea, disc=disc, disc_radius=disc_radius, cup_ratio=rng.uniform(0.3, 0.5),
        vessels=vessels, lesions=lesions, grids=grids, cast=cast, light_dir=light_dir)


def _walk(rng: np.random.Generator, start: np.ndarray, angle: float, length: float,
          width0: float, width1: float, wobble: float = 0.03, target: float | None = None,
          relax: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """A vessel as a random walk whose heading drifts smoothly (Brownian curvature).

    With `target`, the heading relaxes from `angle` to `target` over ~`relax` units: branches
    leave their parent at a steep angle, then bend to run away from the disc / macula.
    """
    n = max(3, int(length / STEP) + 1)
    turns = rng.normal(0.0, wobble, n - 1)
    turns[0] = 0.0
    heading = np.cumsum(turns)
    if target is None:
        heading += angle
    else:
        # bend by at most ~60 degrees: a target behind the vessel must not make it U-turn
        turn = (target - angle + math.pi) % (2 * math.pi) - math.pi
        turn = min(max(turn, -1.0), 1.0)
        heading += angle + turn * (1.0 - np.exp(-STEP / relax * np.arange(n - 1)))
    points = np.empty((n, 2))
    points[0] = start
    points[1:, 0] = start[0] + STEP * np.cumsum(np.cos(heading))
    points[1:, 1] = start[1] + STEP * np.cumsum(np.sin(heading))
    return points, width0 + (width1 - width0) / (n - 1) * np.arange(n)


def _truncate(points: np.ndarray, widths: np.ndarray, fovea: np.ndarray):
    """Cut a path where it leaves the FOV or reaches the foveal avascular zone."""
    x, y = points[:, 0], points[:, 1]
    inside = ((x * x + y * y < 1.03 ** 2)
              & ((x - fovea[0]) ** 2 + (y - fovea[1]) ** 2 > (FAZ_RADIUS + 0.02) ** 2))
    inside[0] = True
    stop = len(points) if inside.all() else int(np.argmin(inside))
    return (points[:stop], widths[:stop]) if stop >= 3 else None


def _arcade(rng: np.random.Generator, fovea: np.ndarray, start: np.ndarray, side: float,
            width: float) -> tuple[np.ndarray, np.ndarray]:
    """Temporal arcade: a curve around the fovea, leaving the disc vertically (side -1 = up)."""
    rel = start - fovea
    r0, a0 = float(np.hypot(*rel)), math.atan2(rel[1], rel[0])
    r_min = rng.uniform(0.42, 0.56)
    swept = np.arange(0.0, 0.9 * math.pi, STEP / r_min)
    # past the top the arcade runs roughly straight (r ~ 1/sin) and fans out temporally
    radius = (r_min * np.sin(np.maximum(swept, math.pi / 2)) ** -0.8
              + 0.15 * np.maximum(swept - math.pi / 2, 0.0)
              + (r0 - r_min) * np.cos(np.minimum(swept, math.pi / 2)) ** 2
              + rng.uniform(0.01, 0.025) * np.sin(rng.uniform(3, 6) * swept + rng.uniform(0, 6.3))
              * np.sin(np.minimum(swept, 1.0) * math.pi / 2))  # no wiggle at the disc
    angle = a0 + side * swept
    points = fovea + radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    return points, np.linspace(width, 0.45 * width, len(points))


def _branches(rng: np.random.Generator, parent: _Vessel, fovea: np.ndarray, level: int,
              out: list[_Vessel]) -> None:
    """Side branches along `parent`, recursively; they prefer to point away from the macula."""
    points, widths = parent.points, parent.widths
    step = np.diff(points, axis=0)
    arc = np.concatenate([[0.0], np.cumsum(np.sqrt((step * step).sum(1)))])
    fx, fy = fovea.tolist()
    s = rng.uniform(0.06, 0.18)
    while s < arc[-1] - 0.05:
        i = min(int(np.searchsorted(arc, s)), len(points) - 2)
        (tx, ty), (px, py) = step[i].tolist(), points[i].tolist()
        heading = math.atan2(ty, tx)
        fovea_side = 1.0 if tx * (fy - py) - ty * (fx - px) > 0 else -1.0
        u = rng.random(5)  # one call per branch: scalar draws dominate the cost otherwise
        inward = u[0] < 0.25
        side = fovea_side if inward else -fovea_side
        # macular branches are thin twigs aimed at the fovea; the others fan out radially
        width = float(widths[i]) * ((0.35 if inward else 0.5) + 0.2 * u[1])
        length = (0.25 + 0.35 * u[2]) * 0.6 ** level * (0.6 if inward else 1.0)
        angle = heading + side * (0.6 + 0.5 * u[3])
        away = math.atan2(py - fy, px - fx)
        target = away + math.pi if inward else away
        s += (0.14 + 0.14 * u[4]) * 0.85 ** level
        if width < MIN_WIDTH:
            continue
        path = _truncate(*_walk(rng, points[i], angle, length, width, 0.5 * width,
                                target=target), fovea)
        if path is None:
            continue
        child = _Vessel(path[0], path[1], parent.artery)
        out.append(child)
        if level < 2:
            _branches(rng, child, fovea, level + 1, out)


def _sample_vessels(rng: np.random.Generator, fovea: np.ndarray, disc: np.ndarray) -> list:
    vein_w, art_w = rng.uniform(0.024, 0.03), rng.uniform(0.017, 0.021)
    trunks = []
    for artery, width in ((True, art_w), (False, vein_w)):
        # veins emerge near the cup centre, arteries slightly nasal of them
        start = disc + (np.array([0.015, 0.0]) if artery else np.array([-0.005, 0.0]))
        for side in (-1.0, 1.0):
            trunks.append(_Vessel(*_arcade(rng, fovea, start + [0.0, side * 0.01], side, width),
                                  artery))
            nasal_angle = side * rng.uniform(0.6, 1.2)
            trunks.append(_Vessel(*_walk(rng, start, nasal_angle, 0.8, 0.75 * width,
                                         0.4 * width), artery))
        # small papillomacular vessels head for the fovea and stop at the FAZ
        for _ in range(rng.integers(1, 3)):
            aim = fovea + rng.normal(0.0, 0.12, 2) - start
            trunks.append(_Vessel(*_walk(rng, start, math.atan2(aim[1], aim[0]), 0.7,
                                         0.3 * width, 0.15 * width), artery))
    vessels = []
    for trunk in trunks:
        path = _truncate(trunk.points, trunk.widths, fovea)
        if path is None:
            continue
        trunk = _Vessel(path[0], path[1], trunk.artery)
        vessels.append(trunk)
        _branches(rng, trunk, fovea, 1 if trunk.widths[0] < 0.5 * vein_w else 0, vessels)
    return vessels


# Lesion placement: kind -> (distance from the fovea range, base radius range)
_PLACEMENT = {
    "leakage": ((0.1, 0.6), (0.035, 0.06)),
    "staining": ((0.1, 0.65), (0.05, 0.1)),  # radius of the cluster of spots
    "pooling": ((0.0, 0.4), (0.07, 0.12)),
    "window_defect": ((0.1, 0.6), (0.045, 0.085)),
    "blocked": ((0.15, 0.7), (0.035, 0.075)),
    "nonperfusion": ((0.45, 0.8), (0.11, 0.17)),
}
_IRREGULARITY = {"leakage": 1.0, "staining": 0.0, "pooling": 0.3, "window_defect": 1.3,
                 "blocked": 1.0, "nonperfusion": 1.5}
_DYNAMIC_WEIGHTS = np.array([0.35, 0.25, 0.2, 0.2])
_ALL_WEIGHTS = np.array([0.24, 0.18, 0.1, 0.14, 0.2, 0.14])


def _sample_lesions(rng: np.random.Generator, fovea: np.ndarray, disc: np.ndarray,
                    disc_radius: float) -> list[_Lesion]:
    n = int(rng.integers(1, 5))
    # 90% of eyes get at least one dynamic lesion, so the knowledge mask is rarely empty.
    kinds = [str(rng.choice(DYNAMIC_KINDS, p=_DYNAMIC_WEIGHTS)) if rng.random() < 0.9
             else str(rng.choice(STATIC_KINDS))]
    kinds += [str(rng.choice(LESION_KINDS, p=_ALL_WEIGHTS)) for _ in range(n - 1)]
    lesions: list[_Lesion] = []
    for kind in kinds:
        for _ in range(40):  # rejection sampling: inside the FOV, off the disc, no overlaps
            lesion = _sample_lesion(rng, kind, fovea)
            c, e = lesion.centre, lesion.extent
            if (np.hypot(*c) + e < 0.9 and np.hypot(*(c - disc)) > disc_radius + e + 0.04
                    and all(np.hypot(*(c - o.centre)) > e + o.extent + 0.05 for o in lesions)):
                lesions.append(lesion)
                break
    return lesions


def _sample_lesion(rng: np.random.Generator, kind: str, fovea: np.ndarray) -> _Lesion:
    (d_lo, d_hi), (r_lo, r_hi) = _PLACEMENT[kind]
    angle, dist = rng.uniform(-math.pi, math.pi), rng.uniform(d_lo, d_hi)
    centre = fovea + dist * np.array([math.cos(angle), math.sin(angle)])
    radius = rng.uniform(r_lo, r_hi)
    # irregularity of the outline: higher harmonics weaker, so blobs never look like crosses
    amplitude = _IRREGULARITY[kind] * np.array([0.12, 0.06, 0.035])
    harmonics = np.stack([amplitude * rng.random(3), rng.uniform(0, 2 * math.pi, 3)], 1)
    lesion = _Lesion(kind, centre, radius, harmonics, extent=radius * 1.4)
    if kind == "leakage":
        lesion.extent = radius * (LEAK_GROWTH + 1.0) * 1.25  # incl. the blurred edge
        lesion.variant = "nv" if rng.random() < 0.4 else "exudate"
        if lesion.variant == "nv":
            lesion.spots = _spots(rng, centre, radius, int(rng.integers(5, 11)), 0.006, 0.011)
    elif kind == "staining":
        lesion.spots = _spots(rng, centre, radius, int(rng.integers(3, 9)), 0.012, 0.03)
        lesion.extent = radius + 0.035
    elif kind == "nonperfusion":
        lesion.paths = [_walk(rng, centre + rng.uniform(-0.6, 0.6, 2) * radius,
                              rng.uniform(-math.pi, math.pi), rng.uniform(0.6, 1.4) * radius,
                              0.0, 0.0, 0.08)[0] for _ in range(rng.integers(2, 5))]
    return lesion


def _spots(rng, centre, radius, n, r_lo, r_hi) -> np.ndarray:
    """n small discs scattered inside a disc of `radius` (drusen, microaneurysm dots)."""
    a, d = rng.uniform(-math.pi, math.pi, n), radius * np.sqrt(rng.uniform(0, 1, n))
    return np.stack([centre[0] + d * np.cos(a), centre[1] + d * np.sin(a),
                     rng.uniform(r_lo, r_hi, n)], 1)


# --------------------------------------------------------------------------------------------
# Rasterisation
# --------------------------------------------------------------------------------------------
SHIFT = 4  # cv2 sub-pixel bits for anti-aliased drawing


@dataclass
class _Grid:
    size: int
    cx: float  # FOV centre in cv2 pixel coordinates (pixel centres at integers)
    cy: float
    r: float  # FOV radius in pixels
    x: np.ndarray  # (1, W) normalised x of each column
    y: np.ndarray  # (H, 1) normalised y of each row

    @staticmethod
    def make(size: int, anatomy: _Anatomy) -> _Grid:
        cx, cy = (0.5 + anatomy.fov_offset) * size - 0.5
        r = anatomy.fov_radius * size
        px = np.arange(size, dtype=np.float32)
        return _Grid(size, cx, cy, r, ((px - cx) / r)[None, :], ((px - cy) / r)[:, None])

    def to_px(self, points: np.ndarray) -> np.ndarray:
        """Normalised points -> int32 cv2 coordinates with SHIFT sub-pixel bits."""
        px = np.stack([self.cx + self.r * points[:, 0], self.cy + self.r * points[:, 1]], 1)
        return np.rint(px * (1 << SHIFT)).astype(np.int32)

    def texture(self, grids: list[np.ndarray], std: float) -> np.ndarray:
        """Multi-octave smooth noise with mean 1 and standard deviation ~`std`; coarse octaves
        dominate (amplitude halves per octave).  Grids are fixed, so any size shows the same."""
        out = np.zeros((self.size, self.size), np.float32)
        weights = [0.5 ** i for i in range(len(grids))]
        for g, w in zip(grids, weights):
            up = cv2.resize(g.astype(np.float32), (self.size, self.size),
                            interpolation=cv2.INTER_CUBIC)
            out += w * (up - 0.5)
        uniform_std = math.sqrt(1.0 / 12.0)
        return 1.0 + out * (std / (uniform_std * math.sqrt(sum(w * w for w in weights))))

    def rho(self, centre: np.ndarray, radius: float, harmonics: np.ndarray | None = None,
            reach: float = 1.6) -> np.ndarray:
        """Distance from `centre` divided by the (irregular) outline radius: < 1 inside.

        Only computed within `reach` outline radii (inf beyond), as lesions are small.
        """
        out = np.full((self.size, self.size), np.inf, np.float32)
        half = reach * radius * 1.4 * self.r + 2.0  # 1.4 > largest outline / radius
        cx, cy = self.cx + self.r * centre[0], self.cy + self.r * centre[1]
        x0, x1 = max(int(cx - half), 0), min(int(cx + half) + 2, self.size)
        y0, y1 = max(int(cy - half), 0), min(int(cy + half) + 2, self.size)
        if x0 >= x1 or y0 >= y1:
            return out
        dx = self.x[:, x0:x1] - np.float32(centre[0])
        dy = self.y[y0:y1] - np.float32(centre[1])
        dist = np.sqrt(dx * dx + dy * dy)
        outline = np.full_like(dist, radius)
        if harmonics is not None:
            theta = np.arctan2(dy, dx)
            for k, (amp, phase) in enumerate(harmonics, start=2):
                outline += (radius * amp) * np.cos(k * theta + phase)
        out[y0:y1, x0:x1] = dist / outline
        return out

    def soft(self, rho: np.ndarray, radius: float, edge: float = 0.0) -> np.ndarray:
        """Soft disc 1 -> 0 around rho = 1; `edge` in normalised units, at least ~1 pixel."""
        width = max(edge, 0.8 / self.r) / radius
        return np.clip((1.0 - rho) / width + 0.5, 0.0, 1.0, dtype=np.float32)


@dataclass
class _Layers:
    fov: np.ndarray  # bool
    radius: np.ndarray  # distance from the FOV centre (FOV radius 1)
    art: np.ndarray  # vessel coverage 0..1
    vein: np.ndarray
    art_core: np.ndarray  # central third of the vessels (light reflex / axial venous stream)
    vein_core: np.ndarray
    disc: np.ndarray  # soft disc mask
    cup: np.ndarray
    macula: np.ndarray  # smooth macular weight, 1 at the fovea
    faz: np.ndarray  # capillary-free zone
    reflex: np.ndarray  # tiny foveal light reflex
    glow: np.ndarray  # brighter posterior pole around the disc (nerve fibre sheen)
    choroid: np.ndarray  # textures, mean ~1
    flush: np.ndarray
    capillary: np.ndarray
    mottle: np.ndarray
    leak_rho: np.ndarray  # min over leakage lesions of rho (onset radius = 1)
    maps: dict[str, np.ndarray]  # kind -> soft 0..1 map (CF look and FFA strength)
    masks: dict[str, np.ndarray]  # kind -> bool mask
    extras: dict[str, np.ndarray]  # CF-only details: nv dots, ghost vessels, pooling rim
    cf_maps: dict[str, np.ndarray]  # look -> soft map painted in the CF (`maps` unless looks are confused)


def _draw_vessels(vessels: list[_Vessel], grid: _Grid) -> np.ndarray:
    """Anti-aliased coverage (4, H, W) of arteries, veins, artery cores and vein cores.

    The core (central third) carries the arterial light reflex in CF and the late-filling axial
    stream of veins (laminar flow) in FFA.
    """
    strokes: dict[tuple[int, int, int], list[np.ndarray]] = {}
    for v in vessels:
        pts = grid.to_px(v.points)
        for core, frac in ((0, 1.0), (1, 0.35)):
            wpx = v.widths * (grid.r * frac)
            if core and wpx[0] < 0.7:
                break
            thickness = np.maximum(1, np.rint(wpx)).astype(np.int32)
            # sub-pixel vessels: a 1-px stroke whose intensity carries the width
            value = np.where(wpx < 1.0, np.ceil(np.clip(wpx, 0, 1) * 8) * 32 - 1, 255)
            key = thickness * 256 + value.astype(np.int32)
            cuts = (np.flatnonzero(np.diff(key)) + 1).tolist()
            for a, b in zip([0] + cuts, cuts + [len(pts) - 1]):
                layer = 2 * core + (0 if v.artery else 1)
                strokes.setdefault((layer, int(value[a]), int(thickness[a])), []).append(
                    pts[a:b + 1])
    canvas = np.zeros((4, grid.size, grid.size), np.uint8)
    # AA drawing blends into what is there: brightest/widest last so overlaps only increase
    for (layer, value, thickness) in sorted(strokes):
        cv2.polylines(canvas[layer], strokes[layer, value, thickness], False, value, thickness,
                      cv2.LINE_AA, SHIFT)
    # a little optical blur hides the integer steps of the stroke widths
    sigma = max(0.5, grid.size / 1024)
    return np.stack([cv2.GaussianBlur(c.astype(np.float32) / 255.0, (0, 0), sigma)
                     for c in canvas])


def _rasterise(anatomy: _Anatomy, grid: _Grid, looks: dict[str, str] | None = None,
               faint: dict[str, float] | None = None) -> _Layers:
    radius = np.sqrt(grid.x ** 2 + grid.y ** 2)
    fov = radius <= 1.0
    fx, fy = anatomy.fovea
    d_fovea = np.sqrt((grid.x - fx) ** 2 + (grid.y - fy) ** 2)
    disc_rho = np.sqrt((grid.x - anatomy.disc[0]) ** 2
                       + ((grid.y - anatomy.disc[1]) / 1.08) ** 2)  # slightly taller than wide
    dr = anatomy.disc_radius
    zero = np.zeros((grid.size, grid.size), np.float32)

    maps = {k: zero.copy() for k in LESION_KINDS}
    extras = {"nv": zero.copy(), "ghost": zero.copy(), "rim": zero.copy()}
    leak_rho = np.full_like(zero, np.inf)
    for les in anatomy.lesions:
        reach = 4.5 if les.kind == "leakage" else 1.6  # leakage grows to ~2.2 onset radii
        rho = grid.rho(les.centre, les.radius, les.harmonics, reach)
        if les.kind == "leakage":
            leak_rho = np.minimum(leak_rho, rho)
            # CF: a fuzzy spot a little larger than the onset of the FFA leak
            fuzzy = grid.soft(rho / 1.2, 1.2 * les.radius, 0.5 * les.radius)
            maps["leakage"] = np.maximum(maps["leakage"], fuzzy)
            for x, y, r in les.spots:
                cv2.circle(extras["nv"], tuple(grid.to_px(np.array([[x, y]]))[0]),
                           int(max(r * grid.r, 0.6) * (1 << SHIFT)), 1.0, -1, cv2.LINE_AA, SHIFT)
        elif les.kind == "staining":
            for x, y, r in les.spots:  # well-defined round spots
                spot = grid.soft(grid.rho(np.array([x, y]), r), r)
                maps["staining"] = np.maximum(maps["staining"], spot)
        elif les.kind == "pooling":
            maps["pooling"] = np.maximum(maps["pooling"], grid.soft(rho, les.radius))
            ring = np.clip(1.0 - np.abs(rho - 0.95) * les.radius / 0.015, 0.0, 1.0)
            extras["rim"] = np.maximum(extras["rim"], ring)
        else:
            edge = {"window_defect": 0.25, "blocked": 0.15, "nonperfusion": 0.35}[les.kind]
            maps[les.kind] = np.maximum(maps[les.kind],
                                        grid.soft(rho, les.radius, edge * les.radius))
            for path in les.paths:
                cv2.polylines(extras["ghost"], [grid.to_px(path)], False, 1.0, 1, cv2.LINE_AA,
                              SHIFT)

    # Masks at the lesion's full extent, thresholded where the knowledge mask turns on.
    masks = {k: (maps[k] > 0.35) & fov for k in LESION_KINDS}
    masks["leakage"] = (_leak_profile(leak_rho, _leak_state(600.0)) > 0.3) & fov
    art, vein, art_core, vein_core = _draw_vessels(anatomy.vessels, grid)
    cf_maps = maps
    if looks is not None:
        # each kind's CF look at its own opacity, painted as the kind it is confused with; the CF-only
        # details (new-vessel dots, the detachment's rim, ghost vessels) fade with it, or go with a swap
        cf_maps = {k: zero.copy() for k in LESION_KINDS}
        alpha = faint or {}
        for kind in LESION_KINDS:
            a = alpha.get(kind, 1.0)
            cf_maps[looks[kind]] = np.maximum(cf_maps[looks[kind]], a * maps[kind])
        for extra, kind in (("nv", "leakage"), ("rim", "pooling"), ("ghost", "nonperfusion")):
            extras[extra] = extras[extra] * (alpha.get(kind, 1.0) if looks[kind] == kind else 0.0)
    return _Layers(
        fov=fov, radius=radius, art=art, vein=vein, art_core=art_core, vein_core=vein_core,
        disc=grid.soft(disc_rho / dr, dr, 0.15 * dr),
        cup=grid.soft(disc_rho / (dr * anatomy.cup_ratio), dr * anatomy.cup_ratio, 0.3 * dr),
        macula=np.exp(-0.5 * (d_fovea / (MACULA_RADIUS / 2)) ** 2).astype(np.float32),
        faz=grid.soft(d_fovea / FAZ_RADIUS, FAZ_RADIUS, 0.03),
        reflex=np.exp(-0.5 * (d_fovea / 0.012) ** 2).astype(np.float32),
        glow=np.exp(-0.5 * (disc_rho / 0.3) ** 2).astype(np.float32),
        choroid=grid.texture(anatomy.grids["choroid"], 0.1),
        flush=np.clip(grid.texture(anatomy.grids["flush"], 0.35), 0.3, 1.7),
        capillary=grid.texture(anatomy.grids["capillary"], 0.12),
        mottle=grid.texture(anatomy.grids["mottle"], 0.25),
        leak_rho=leak_rho, maps=maps, masks=masks, extras=extras, cf_maps=cf_maps)


# --------------------------------------------------------------------------------------------
# FFA
# --------------------------------------------------------------------------------------------
# Peak contributions on the 0..255 scale.
BASE = 6.0  # autofluorescence / camera floor before the dye arrives
CHOROID_AMP = 48.0  # patchy choroidal flush seen through the pigment epithelium
CAPILLARY_AMP = 85.0  # retinal capillary bed (venous phase)
GREY_AMP = 12.0  # late diffuse extravascular dye: the background "greys out"
VESSEL_AMP = 200.0
DISC_AMP = 165.0
LEAK_AMP = 190.0
STAIN_AMP = 175.0
POOL_AMP = 175.0
WINDOW_AMP = 150.0
NOISE_STD = 2.5


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _kinetics(t: float, rates: dict[str, float] | None = None) -> dict[str, float]:
    """Relative dye signal (0..1) of each compartment at t seconds after injection (the dye arriving
    at ~10 s). `rates`: per lesion kind, a multiplier of its speed (1 = the aligned preset's)."""
    r = rates or {}
    r_leak, r_stain, r_pool, r_window = (r.get(k, 1.0) for k in DYNAMIC_KINDS)

    def after(t0: float) -> float:
        return max(t - t0, 0.0)

    vessel_decay = 0.13 + 0.87 * math.exp(-after(25.0) / 70.0)  # recirculation, then washout
    choroid_rise = _sig((t - 9.6) / 0.45)
    choroid = choroid_rise * (0.35 + 0.65 * math.exp(-after(12.0) / 60.0))
    patchy = math.exp(-after(10.5) / 4.0)  # lobules fill unevenly, then the flush evens out
    return {
        "choroid_patchy": choroid * patchy,
        "choroid_even": choroid * (1.0 - patchy),
        "capillary": _sig((t - 14.5) / 1.5) * (0.25 + 0.75 * math.exp(-after(20.0) / 80.0)),
        "grey": 1.0 - math.exp(-after(20.0) / 150.0),
        "artery": _sig((t - 11.9) / 0.55) * vessel_decay,
        "vein_wall": _sig((t - 16.0) / 0.8) * vessel_decay,  # laminar flow: walls fill first
        "vein_core": _sig((t - 18.5) / 1.1) * vessel_decay,
        "disc": _sig((t - 11.0) / 0.8) * (0.3 + 0.7 * math.exp(-after(25.0) / 70.0))
        + 0.12 * (1.0 - math.exp(-after(30.0) / 200.0)),  # mild late staining of the disc
        "leakage": 0.2 * _sig((t - 11.9) / 0.55) * vessel_decay
        + 0.85 * (1.0 - math.exp(-after(14.0) * r_leak / 110.0)),
        "staining": 1.0 - math.exp(-after(13.0) * r_stain / 90.0),
        "pooling": 1.0 - math.exp(-after(18.0) * r_pool / 220.0),
        "window_defect": choroid_rise * math.exp(-after(12.0) * r_window / 100.0),
    }


def _leak_state(t: float, rate: float = 1.0) -> tuple[float, float]:
    """Leakage radius (in onset radii) and edge softness at t: grows and blurs with time."""
    g = 1.0 - math.exp(-max(t - 14.0, 0.0) * rate / 150.0)
    return 1.0 + (LEAK_GROWTH - 1.0) * g, 0.08 + 0.3 * g


def _leak_profile(leak_rho: np.ndarray, state: tuple[float, float]) -> np.ndarray:
    radius, edge = state
    return 1.0 / (1.0 + np.exp(np.minimum((leak_rho - radius) / edge, 50.0)))


def _render_ffa(layers: _Layers, times: np.ndarray, rng: np.random.Generator, shift: float = 0.0,
                rates: dict[str, float] | None = None, strengths: dict[str, float] | None = None,
                motion: np.ndarray | None = None, exposure: np.ndarray | None = None,
                auto_gain: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """FFA frames at `times`. The nuisances (all off: the aligned preset): `shift` the dye's arrival
    later than 10 s; `rates` / `strengths` per lesion kind; `motion` (T, 2, 3) the eye's
    displacement of each frame from the reference; `exposure` (T, 2) a gain jitter and an offset per
    frame, on top of an auto-gain that undoes the share `auto_gain[1]` of the field's departure
    from the grey level `auto_gain[0]`. The gain applied is written back into `exposure[:, 0]`."""
    L = layers
    cover = np.maximum(L.art, L.vein)
    # Vessels hide part of the choroid behind them; the disc has no choroid or capillary bed.
    behind = (1.0 - 0.7 * cover) * (1.0 - L.disc)
    macula_mask = 1.0 - 0.7 * L.macula  # macular pigment absorbs the excitation light
    choroid = CHOROID_AMP * macula_mask * behind
    static = {
        "choroid_patchy": choroid * L.flush,
        "choroid_even": choroid,
        "capillary": CAPILLARY_AMP * L.capillary * (1.0 - L.faz) * (1.0 - 0.5 * L.macula)
        * (1.0 - L.maps["nonperfusion"]) * behind,
        "grey": GREY_AMP * macula_mask * behind,
        "disc": DISC_AMP * L.disc * (1.0 - 0.5 * cover) * (1.0 - 0.3 * L.cup),
        "staining": STAIN_AMP * L.maps["staining"],
        "pooling": POOL_AMP * L.maps["pooling"],
        "window_defect": WINDOW_AMP * L.maps["window_defect"] * np.clip(L.mottle, 0.6, 1.4),
    }
    if strengths is not None:
        for kind in ("staining", "pooling", "window_defect"):
            static[kind] = static[kind] * np.float32(strengths[kind])
    leak_amp = LEAK_AMP * (strengths["leakage"] if strengths is not None else 1.0)
    leak_rate = (rates or {}).get("leakage", 1.0)
    # Haemorrhage blocks everything beneath; non-perfused retina has no capillary bed and its
    # vessels are closed, leaving a dim choroidal glow.
    gain = ((1.0 - 0.85 * L.maps["blocked"]) * (1.0 - 0.5 * L.maps["nonperfusion"])
            * (1.0 - 0.25 * L.radius ** 3) * L.fov).astype(np.float32)
    has_leak = bool(np.isfinite(L.leak_rho).any())

    if motion is not None:
        # the eye moves behind a fixed camera: the tissue's own gain moves with it, the camera's
        # vignetting and field of view do not
        tissue = ((1.0 - 0.85 * L.maps["blocked"]) * (1.0 - 0.5 * L.maps["nonperfusion"])).astype(np.float32)
        lens = ((1.0 - 0.25 * L.radius ** 3) * L.fov).astype(np.float32)
    size = L.fov.shape[::-1]
    frames = np.empty((len(times),) + L.fov.shape, np.uint8)
    for i, t in enumerate(times):
        t = float(t) - shift
        k = _kinetics(t, rates)
        frame = np.full(L.fov.shape, BASE, np.float32)
        for name, layer in static.items():
            frame += k[name] * layer
        # veins: the walls carry the early laminar stream, the core fills later
        wall, core = k["vein_wall"], k["vein_core"]
        frame += VESSEL_AMP * np.maximum(k["artery"] * L.art,
                                         wall * L.vein - (wall - core) * L.vein_core)
        if has_leak:
            frame += leak_amp * k["leakage"] * _leak_profile(L.leak_rho, _leak_state(t, leak_rate))
        if motion is None:
            frame *= gain
        else:
            frame *= tissue
            frame = cv2.warpAffine(frame, motion[i], size, flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT_101) * lens
        if exposure is not None:
            target, strength = auto_gain
            level = max(float(frame[L.fov].mean()), 1.0)
            exposure[i, 0] *= (target / level) ** strength
            frame = frame * np.float32(exposure[i, 0]) + np.float32(exposure[i, 1]) * L.fov
        frame += rng.standard_normal(frame.shape, dtype=np.float32) * NOISE_STD
        # inside the FOV never below 3 (the FOV must stay detectable), 0 outside
        frames[i] = np.clip(frame, 3.0, 255.0) * L.fov
    return frames


# --------------------------------------------------------------------------------------------
# CF
# --------------------------------------------------------------------------------------------
DISC_RGB = np.array([0.98, 0.8, 0.52], np.float32)
CUP_RGB = np.array([1.0, 0.93, 0.75], np.float32)
EXUDATE_RGB = np.array([0.9, 0.78, 0.5], np.float32)
DRUSEN_RGB = np.array([0.96, 0.88, 0.52], np.float32)
HAEM_RGB = np.array([0.42, 0.07, 0.04], np.float32)
GHOST_RGB = np.array([0.92, 0.88, 0.82], np.float32)


def _mix(img: np.ndarray, colour, alpha: np.ndarray) -> None:
    """In place: img <- img + alpha * (colour - img), alpha (H, W), colour (3,) or (H, W, 3)."""
    img += alpha[..., None] * (colour - img)


def _render_cf(anatomy: _Anatomy, layers: _Layers, grid: _Grid,
               rng: np.random.Generator, camera: dict | None = None) -> np.ndarray:
    """The colour photo. With `camera` (misregistration) it is taken by another camera: the fundus
    seen through `camera["ref_to_cf"]`, with that camera's own circular field and vignetting."""
    L, cast = layers, anatomy.cast.astype(np.float32)
    img = np.empty((grid.size, grid.size, 3), np.float32)
    img[:] = cast
    img *= (L.choroid * (1.0 + 0.15 * L.glow))[..., None]
    # macula: darker and browner (luteal pigment absorbs green/blue), tiny foveal reflex
    img *= 1.0 - L.macula[..., None] * np.array([0.3, 0.45, 0.5], np.float32)
    _mix(img, cast * 1.5, 0.3 * L.reflex)
    _mix(img, DISC_RGB, L.disc)
    _mix(img, CUP_RGB, 0.8 * L.cup)
    _mix(img, cast * np.array([0.55, 0.32, 0.45], np.float32), 0.9 * L.vein)
    _mix(img, cast * np.array([0.85, 0.55, 0.6], np.float32), 0.85 * L.art)
    _mix(img, cast * np.array([1.1, 1.1, 1.2], np.float32), 0.35 * L.art_core)  # light reflex

    M, E = L.cf_maps, L.extras
    _mix(img, EXUDATE_RGB, 0.35 * M["leakage"] * (1.0 - E["nv"]))
    _mix(img, cast * np.array([0.6, 0.25, 0.3], np.float32), 0.85 * E["nv"])
    _mix(img, DRUSEN_RGB, 0.75 * M["staining"])
    _mix(img, cast * 0.75 + 0.12, 0.22 * M["pooling"])  # greyish, elevated
    _mix(img, cast * 1.3 + 0.1, 0.15 * E["rim"])  # reflex at the edge of the detachment
    _mix(img, cast * np.array([1.15, 1.5, 1.8], np.float32),
         0.5 * M["window_defect"] * np.clip(L.mottle, 0.5, 1.5))
    _mix(img, HAEM_RGB, 0.85 * M["blocked"])
    _mix(img, cast * 1.15, 0.12 * M["nonperfusion"])
    _mix(img, GHOST_RGB, 0.6 * E["ghost"])

    fov, radius, gx, gy = L.fov, L.radius, grid.x, grid.y
    if camera is not None:
        size = grid.size
        img = cv2.warpAffine(img, camera["ref_to_cf"], (size, size), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)
        offset, r = camera["cf_fov"]
        px = np.arange(size, dtype=np.float32)
        cx, cy = (0.5 + offset) * size - 0.5
        gx, gy = ((px - cx) / (r * size))[None, :], ((px - cy) / (r * size))[:, None]
        radius = np.sqrt(gx ** 2 + gy ** 2)
        fov = radius <= 1.0
    # vignetting plus a gentle illumination gradient across the field
    light = (np.cos(anatomy.light_dir) * gx + np.sin(anatomy.light_dir) * gy)
    img *= ((1.0 - 0.45 * radius ** 3) * (1.0 + 0.08 * light))[..., None]
    sigma = 0.0035 * grid.size
    img = cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0.3 else img
    img = img * 255.0 + rng.standard_normal(img.shape, dtype=np.float32) * 2.0
    img[..., 1] = np.maximum(img[..., 1], 13.0)  # the project's FOV detector: green > 11
    return (np.clip(img, 0.0, 255.0) * fov[..., None]).astype(np.uint8)
