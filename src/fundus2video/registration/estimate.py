"""Estimating how FFA frames and the colour photo sit on the angiogram's first frame.

Everything here works on numpy arrays; `registration.folders` reads and writes case folders.

Features. Colour photo (CF) and angiogram (FFA) share little but their vessels, and not even their
polarity (dark on orange-red in the CF, bright on grey early in the FFA, dark on grey late), while
lesions appear and fade. Both are therefore turned into a *line map*: per scale, the Hessian's larger
eigenvalue magnitude minus the smaller one (elongated structure, either polarity) minus the gradient
magnitude (what remains of a step edge: a lesion's or the disc's border), the maximum over two scales,
divided by its local RMS (faint late vessels count as much as bright early ones) and cut off inside a
margin of the field of view (the camera's circular border is fixed to the camera, not to the eye).

Estimator. An ECC-style Gauss-Newton (Evangelidis and Psarakis 2008: the correlation coefficient of the
two line maps is maximised, so a change of gain and offset costs nothing: each step solves for them
with the motion) on an image pyramid, coarse to fine, with the motion about the image centre. OpenCV's
`findTransformECC` does the same for translation, rigid and affine motions but not for a similarity
(rotation, scale, shift), and rotates about the image's corner, which couples rotation with shift:
started from the true transform it drifted off by several pixels on the phantom's late frames and
colour photos (docs/REGISTRATION.md). Starts: for frames the best at the coarsest level of no motion,
the shift phase correlation finds and the previous frame's estimate; for the CF a search over scale and
rotation, the shift of each by phase correlation, the three best refined. The CF is registered onto the
mean line map of the registered series (`composite`), not onto frame 0 alone: a first frame from the
arterial or early venous phase lacks veins or draws them as two walls.

One file although past 400 lines: the line map, the Gauss-Newton, the starts and the quality checks
are one estimator whose parts share their conventions and constants; split, each would need the others.

Conventions: a 2 x 3 matrix M maps the moving image's pixels onto the reference's, as
`cv2.warpAffine(moving, M, (w, h))` takes it (the phantom's `frame_to_ref`, `cf_to_ref`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

MODELS = ("rigid", "similarity", "affine")
NPARAMS = {"rigid": 3, "similarity": 4, "affine": 6}

WORK_SIDE = 512  # larger images are registered at this size (the pyramid's finest level)
MIN_SIDE = 48  # the pyramid's coarsest level has its shorter side between MIN_SIDE and 2 MIN_SIDE
SEARCH_SIDE = 128  # the CF's scale and rotation search runs at the level nearest this size
FRAME_MIN, CF_GREEN_MIN = 2, 11  # inside the field of view (as knowledge.py's thresholds)

# the CF search: its scale (after matching heights with the angiogram) and rotation against frame 0
CF_SCALES = tuple(float(s) for s in np.exp(np.linspace(math.log(0.8), math.log(1.25), 9)))
CF_ANGLES = tuple(float(a) for a in np.arange(-12.0, 12.1, 2.0))
CF_CANDIDATES = 3  # the best search results refined with the full pyramid

# What is trusted. A registration outside these limits is flagged, never written as registered.
MIN_NCC = {"frame": 0.20, "cf": 0.15}  # correlation of the line maps after registration
NCC_LOSS = 0.02  # after may not be worse than before by more than this (no motion left to find)
MAX_SHIFT = {"frame": 0.20, "cf": 0.25}  # of the image side, the image centre's displacement
MAX_ROTATION = {"frame": 15.0, "cf": 20.0}  # degrees
SCALE_RANGE = {"frame": (0.87, 1.15), "cf": (0.7, 1.4)}


# ------------------------------------------------------------------ geometry
def _h(m: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(m, np.float64), [0.0, 0.0, 1.0]])


def compose(*ms: np.ndarray) -> np.ndarray:
    """The 2 x 3 matrix of applying the last first: compose(a, b) is x -> a(b(x))."""
    out = np.eye(3)
    for m in ms:
        out = out @ _h(m)
    return out[:2]


def invert(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(m, np.float64))


def resize_matrix(src_wh: tuple[int, int], dst_wh: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates of an image of size src_wh in the same image resized to dst_wh (cv2.resize's
    pixel-centre convention)."""
    sx, sy = dst_wh[0] / src_wh[0], dst_wh[1] / src_wh[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def grid_points(w: int, h: int, n: int = 9) -> np.ndarray:
    xs, ys = np.meshgrid(np.linspace(0, w - 1, n), np.linspace(0, h - 1, n))
    return np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])


def mean_distance(a: np.ndarray, b: np.ndarray, w: int, h: int) -> float:
    """Mean distance in pixels between where a and b send the points of a 9 x 9 grid over a w x h image:
    the registration error against a known transform, or (b = identity) how far a moves the image."""
    pts = grid_points(w, h)
    return float(np.linalg.norm(np.asarray(a) @ pts - np.asarray(b) @ pts, axis=0).mean())


IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@dataclass
class TransformSize:
    shift_px: float  # how far the image centre moves
    rotation_deg: float
    scale: float  # sqrt of the determinant (an affine's mean scale)
    motion_px: float  # mean displacement over the image (9 x 9 grid)


def transform_size(m: np.ndarray, w: int, h: int) -> TransformSize:
    m = np.asarray(m, np.float64)
    c = np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
    a = m[:, :2]
    return TransformSize(shift_px=float(np.linalg.norm(m @ c - c[:2])),
                         rotation_deg=math.degrees(math.atan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])),
                         scale=math.sqrt(abs(float(np.linalg.det(a)))),
                         motion_px=mean_distance(m, IDENTITY, w, h))


# ------------------------------------------------------------------ features
def field_of_view(gray: np.ndarray, threshold: float) -> np.ndarray:
    """The camera's field: pixels above `threshold`, largest connected part, holes filled (bool)."""
    mask = (gray > threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return np.zeros(gray.shape, bool)
    mask = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    flood = np.pad(mask, 1)
    cv2.floodFill(flood, None, (0, 0), 1)
    return mask.astype(bool) | (flood[1:-1, 1:-1] == 0)


def _fill_outside(img: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """`img` with the pixels outside `mask` replaced by a smooth continuation of the inside, so the
    filters see no step at the field's border."""
    m = mask.astype(np.float32)
    den = cv2.GaussianBlur(m, (0, 0), sigma)
    smooth = cv2.GaussianBlur(img * m, (0, 0), sigma) / np.maximum(den, 1e-3)
    fallback = float(img[mask].mean()) if mask.any() else 0.0
    return np.where(mask, img, np.where(den > 1e-3, smooth, fallback)).astype(np.float32)


def _line_strength(img: np.ndarray, sigma: float) -> np.ndarray:
    g = cv2.GaussianBlur(img, (0, 0), sigma)
    dxx = cv2.Sobel(g, cv2.CV_32F, 2, 0, ksize=3) / 4
    dyy = cv2.Sobel(g, cv2.CV_32F, 0, 2, ksize=3) / 4
    dxy = cv2.Sobel(g, cv2.CV_32F, 1, 1, ksize=3) / 4
    root = np.sqrt((dxx - dyy) ** 2 + 4 * dxy ** 2)
    l1, l2 = np.abs(dxx + dyy + root) / 2, np.abs(dxx + dyy - root) / 2
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8
    # a line: one large curvature across, none along, no slope at its centre; a blob has two large
    # curvatures, a step edge a slope beside each curvature
    return np.maximum(sigma ** 2 * np.abs(l1 - l2) - sigma * np.sqrt(gx * gx + gy * gy), 0.0)


def line_map(gray: np.ndarray, fov: np.ndarray, sigma: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The vessel (line) map of an image (float32, about 0..3) and where it is valid (bool): the field of
    view less a margin the filters reach across its border. `sigma`: the finer of the two scales
    (default: 1 pixel per 256 of the image's longer side, at least 1)."""
    h, w = gray.shape
    sigma = sigma or max(1.0, max(h, w) / 256)
    img = _fill_outside(gray.astype(np.float32), fov, 8 * sigma)
    lines = np.maximum(_line_strength(img, sigma), _line_strength(img, 2 * sigma))
    margin = int(math.ceil(6 * sigma)) + 1
    valid = cv2.erode(fov.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1,) * 2)) > 0
    lines *= valid
    # divided by the local RMS: vessels a tenth as bright weigh as much (the floor keeps empty areas at 0)
    s = 0.06 * max(h, w)
    rms = np.sqrt(cv2.GaussianBlur(lines * lines, (0, 0), s)
                  / np.maximum(cv2.GaussianBlur(valid.astype(np.float32), (0, 0), s), 1e-3))
    floor = 1e-3 * float(np.median(rms[valid])) if valid.any() else 1.0
    out = np.minimum(lines / (np.maximum(rms, floor) + 1e-6), 3.0) * valid
    return out.astype(np.float32), valid


# ------------------------------------------------------------------ the estimator
def _params(w: np.ndarray, model: str, c: np.ndarray) -> np.ndarray:
    """Motion parameters about the centre c of the 2 x 3 matrix w (reference -> moving coordinates)."""
    a = w[:, :2]
    t = w[:, 2] + a @ c - c
    if model == "rigid":
        return np.array([math.atan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1]), *t])
    if model == "similarity":
        return np.array([(a[0, 0] + a[1, 1]) / 2 - 1, (a[1, 0] - a[0, 1]) / 2, *t])
    return np.array([a[0, 0] - 1, a[0, 1], a[1, 0], a[1, 1] - 1, *t])


def _matrix(p: np.ndarray, model: str, c: np.ndarray) -> np.ndarray:
    if model == "rigid":
        cos, sin = math.cos(p[0]), math.sin(p[0])
        a, t = np.array([[cos, -sin], [sin, cos]]), p[1:3]
    elif model == "similarity":
        a, t = np.array([[1 + p[0], -p[1]], [p[1], 1 + p[0]]]), p[2:4]
    else:
        a, t = np.array([[1 + p[0], p[1]], [p[2], 1 + p[3]]]), p[4:6]
    return np.hstack([a, (c + t - a @ c)[:, None]])


def _jacobian(model: str, p: np.ndarray, x: np.ndarray, y: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """d I(W(x; p)) / dp at centred reference coordinates (x, y); gx, gy: the moving image's gradient
    sampled at W(x)."""
    if model == "rigid":
        cos, sin = math.cos(p[0]), math.sin(p[0])
        return np.stack([gx * (-sin * x - cos * y) + gy * (cos * x - sin * y), gx, gy], 1)
    if model == "similarity":
        return np.stack([gx * x + gy * y, gy * x - gx * y, gx, gy], 1)
    return np.stack([gx * x, gx * y, gy * x, gy * y, gx, gy], 1)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    d = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / d if d > 0 else 0.0


@dataclass
class _Level:
    ref: np.ndarray
    ref_valid: np.ndarray
    mov: np.ndarray
    mov_valid: np.ndarray


def _pyramid(ref: np.ndarray, ref_valid: np.ndarray, mov: np.ndarray, mov_valid: np.ndarray) -> list[_Level]:
    levels = [_Level(ref, ref_valid, mov, mov_valid)]
    while min(levels[-1].ref.shape) >= 2 * MIN_SIDE and min(levels[-1].mov.shape) >= 2 * MIN_SIDE:
        last = levels[-1]
        half = [(max(1, a.shape[1] // 2), max(1, a.shape[0] // 2)) for a in (last.ref, last.mov)]
        levels.append(_Level(
            cv2.resize(last.ref, half[0], interpolation=cv2.INTER_AREA),
            cv2.resize(last.ref_valid.astype(np.float32), half[0], interpolation=cv2.INTER_AREA) > 0.99,
            cv2.resize(last.mov, half[1], interpolation=cv2.INTER_AREA),
            cv2.resize(last.mov_valid.astype(np.float32), half[1], interpolation=cv2.INTER_AREA) > 0.99))
    return levels


def _between(w: np.ndarray, src: _Level, dst: _Level) -> np.ndarray:
    """A reference -> moving matrix of pyramid level `src` expressed at level `dst`."""
    to_ref = resize_matrix(src.ref.shape[::-1], dst.ref.shape[::-1])
    to_mov = resize_matrix(src.mov.shape[::-1], dst.mov.shape[::-1])
    return compose(to_mov, w, invert(to_ref))


BLUR_COARSE, BLUR_FINE = 1.0, 0.5  # smoothing of the maps per level: wide basins coarse, precision fine


class _Solver:
    """The Gauss-Newton iterations at one pyramid level (reference and moving map, their valid masks)."""

    def __init__(self, level: _Level, model: str, fine: bool):
        blur = BLUR_FINE if fine else BLUR_COARSE
        self.ref = cv2.GaussianBlur(level.ref, (0, 0), blur)
        mov = cv2.GaussianBlur(level.mov, (0, 0), blur)
        gx = cv2.Sobel(mov, cv2.CV_32F, 1, 0, ksize=3) / 8
        gy = cv2.Sobel(mov, cv2.CV_32F, 0, 1, ksize=3) / 8
        self.stack = np.dstack([mov, gx, gy, level.mov_valid.astype(np.float32)])
        self.ys, self.xs = np.nonzero(level.ref_valid)
        h, w = level.ref.shape
        self.c = np.array([(w - 1) / 2, (h - 1) / 2])
        self.x = (self.xs - self.c[0]).astype(np.float32)
        self.y = (self.ys - self.c[1]).astype(np.float32)
        self.t = self.ref[self.ys, self.xs]
        self.model, self.size = model, (w, h)
        corners = np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1], [1, 1, 1, 1]], np.float64)
        self.corners = corners

    def sample(self, w: np.ndarray):
        warped = cv2.warpAffine(self.stack, w, self.size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        values = warped[self.ys, self.xs]
        ok = values[:, 3] > 0.999
        return values[ok], ok

    def correlation(self, w: np.ndarray) -> float:
        values, ok = self.sample(w)
        return _ncc(values[:, 0], self.t[ok]) if ok.sum() > 10 else 0.0

    def run(self, w: np.ndarray, iterations: int, tol: float) -> tuple[np.ndarray, float, str, int]:
        """Returns the refined matrix, the correlation it reaches, a problem ('' when none) and the
        iterations used."""
        p = _params(w, self.model, self.c)
        side = max(self.size)
        for it in range(1, iterations + 1):
            w = _matrix(p, self.model, self.c)
            values, ok = self.sample(w)
            if ok.sum() < 0.1 * len(self.t) or ok.sum() < 50:
                return w, 0.0, "the images no longer overlap", it
            iv, gx, gy = values[:, 0], values[:, 1], values[:, 2]
            a = np.column_stack([_jacobian(self.model, p, self.x[ok], self.y[ok], gx, gy), iv, np.ones_like(iv)])
            hess = a.T @ a
            try:
                sol = np.linalg.solve(hess + 1e-9 * np.trace(hess) * np.eye(len(hess)), a.T @ self.t[ok])
            except np.linalg.LinAlgError:
                return w, 0.0, "no structure to register (singular system)", it
            gain = sol[-2]
            if gain <= 1e-6:  # the maps are anti-correlated or unrelated: no step improves them
                return w, _ncc(iv, self.t[ok]), "no correlation between the vessel maps", it
            p = p + sol[:-2] / gain
            new = _matrix(p, self.model, self.c)
            step = float(np.abs((new - w) @ self.corners).max())
            if not np.all(np.isfinite(new)) or abs(new[:, 2]).max() > 4 * side or \
                    not 0.25 < math.sqrt(abs(np.linalg.det(new[:, :2]))) < 4:
                return w, 0.0, "diverged", it
            if step < tol:
                return new, self.correlation(new), "", it
        return new, self.correlation(new), "", iterations


ITERATIONS_COARSE, ITERATIONS_FINE = 40, 25
TOLERANCE_PX = 0.01  # a step moving no corner further than this (at the level's resolution) ends a level


def refine(levels: list[_Level], w: np.ndarray, model: str, start: int | None = None
           ) -> tuple[np.ndarray, float, str, int]:
    """Gauss-Newton from level `start` (default the coarsest) down to the finest; `w` is given at the
    finest level. Returns the finest-level matrix, its correlation, a problem ('' when none) and the
    iterations used."""
    start = len(levels) - 1 if start is None else start
    w = _between(w, levels[0], levels[start])
    used = 0
    for k in range(start, -1, -1):
        fine = k == 0
        w, rho, problem, it = _Solver(levels[k], model, fine).run(
            w, ITERATIONS_FINE if fine else ITERATIONS_COARSE, TOLERANCE_PX)
        used += it
        if problem:
            return _between(w, levels[k], levels[0]), rho, problem, used
        if k:
            w = _between(w, levels[k], levels[k - 1])
    return w, rho, "", used


def _coarse_best(levels: list[_Level], starts: list[np.ndarray], model: str) -> np.ndarray:
    """Of the starting matrices (finest-level coordinates), the one the coarsest level refines to the
    highest correlation, refined there."""
    top = len(levels) - 1
    best, best_rho = starts[0], -2.0
    for w in starts:
        solver = _Solver(levels[top], model, fine=top == 0)
        w_top, rho, problem, _ = solver.run(_between(w, levels[0], levels[top]), ITERATIONS_COARSE, TOLERANCE_PX)
        if not problem and rho > best_rho:
            best, best_rho = _between(w_top, levels[top], levels[0]), rho
    return best


def _phase_shift(ref: np.ndarray, mov: np.ndarray) -> np.ndarray:
    """The shift that phase correlation finds between two equally sized maps, as a reference -> moving
    matrix."""
    window = cv2.createHanningWindow(ref.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(ref, mov, window)
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


# ------------------------------------------------------------------ results
@dataclass
class PairResult:
    """One image registered onto the reference."""

    matrix: np.ndarray  # (2, 3) moving pixels -> reference pixels (full resolution)
    size: tuple[int, int]  # (w, h) of the reference
    ncc_before: float  # correlation of the line maps without registration (as the loader pairs them)
    ncc_after: float  # ... after
    problem: str = ""  # why the estimate is not trusted ('' when it is)
    iterations: int = 0

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def extent(self) -> TransformSize:
        return transform_size(self.matrix, *self.size)

    def as_dict(self) -> dict:
        e = self.extent
        return {"matrix": np.round(self.matrix, 6).tolist(), "shift_px": round(e.shift_px, 3),
                "rotation_deg": round(e.rotation_deg, 4), "scale": round(e.scale, 5),
                "motion_px": round(e.motion_px, 3), "ncc_before": round(self.ncc_before, 4),
                "ncc_after": round(self.ncc_after, 4), "status": "ok" if self.ok else "failed",
                "problem": self.problem}


def judge(result: PairResult, kind: str) -> PairResult:
    """Flag an estimate that is not to be trusted (`kind`: "frame" or "cf"): the estimator stopped
    without converging (its problem is kept), the vessel maps correlate too little after, registration
    made them worse, or the transform is larger than the eye moves or a camera differs."""
    if result.problem:
        return result
    e, (w, h) = result.extent, result.size
    lo, hi = SCALE_RANGE[kind]
    if result.ncc_after < MIN_NCC[kind]:
        result.problem = (f"vessel maps correlate {result.ncc_after:.2f} after registration "
                          f"(expected at least {MIN_NCC[kind]:.2f})")
    elif result.ncc_after < result.ncc_before - NCC_LOSS:
        result.problem = f"correlation fell from {result.ncc_before:.2f} to {result.ncc_after:.2f}"
    elif e.shift_px > MAX_SHIFT[kind] * max(w, h):
        result.problem = (f"implausible shift {e.shift_px:.0f} px (expected at most {MAX_SHIFT[kind]:.0%} of "
                          f"the image, {MAX_SHIFT[kind] * max(w, h):.0f} px)")
    elif abs(e.rotation_deg) > MAX_ROTATION[kind]:
        result.problem = f"implausible rotation {e.rotation_deg:.1f} deg (expected at most {MAX_ROTATION[kind]:.0f})"
    elif not lo <= e.scale <= hi:
        result.problem = f"implausible scale {e.scale:.3f} (expected {lo}..{hi})"
    return result


# ------------------------------------------------------------------ images to maps
@dataclass
class _Prepared:
    lines: np.ndarray  # the line map at working resolution
    valid: np.ndarray
    to_work: np.ndarray  # (2, 3) full-resolution pixels -> working pixels


def _working_size(w: int, h: int, work_side: int) -> tuple[int, int]:
    f = min(1.0, work_side / max(w, h))
    return max(1, round(w * f)), max(1, round(h * f))


def prepare_frame(frame: np.ndarray, work_side: int = WORK_SIDE, fov: np.ndarray | None = None) -> _Prepared:
    """An FFA frame (H, W) uint8 as a line map at working resolution."""
    h, w = frame.shape
    ww, wh = _working_size(w, h, work_side)
    small = cv2.resize(frame, (ww, wh), interpolation=cv2.INTER_AREA) if (ww, wh) != (w, h) else frame
    if fov is None:
        fov = field_of_view(small, FRAME_MIN)
    lines, valid = line_map(small.astype(np.float32), fov)
    return _Prepared(lines, valid, resize_matrix((w, h), (ww, wh)))


def prepare_cf(cf: np.ndarray, frame_hw: tuple[int, int], work_side: int = WORK_SIDE) -> _Prepared:
    """A CF (H, W, 3) uint8 RGB as a line map of its green channel, scaled as the frames are once its
    height is the frames' height (the two cameras' images roughly matched before the search)."""
    fh, fw = frame_hw
    ww, wh = _working_size(fw, fh, work_side)
    h, w = cf.shape[:2]
    f = wh / h
    cw, ch = max(1, round(w * f)), max(1, round(h * f))
    green = cv2.resize(cf[..., 1], (cw, ch), interpolation=cv2.INTER_AREA)
    lines, valid = line_map(green.astype(np.float32), field_of_view(green, CF_GREEN_MIN))
    return _Prepared(lines, valid, resize_matrix((w, h), (cw, ch)))


def _centred(ref_wh: tuple[int, int], mov_wh: tuple[int, int]) -> np.ndarray:
    """Reference -> moving matrix that puts the two images' centres on each other."""
    return np.array([[1.0, 0.0, (mov_wh[0] - ref_wh[0]) / 2], [0.0, 1.0, (mov_wh[1] - ref_wh[1]) / 2]])


def _result(ref: _Prepared, mov: _Prepared, w_work: np.ndarray, before_work: np.ndarray, rho: float,
            problem: str, iterations: int, size: tuple[int, int], levels: list[_Level]) -> PairResult:
    """Working-resolution reference -> moving matrix to the full-resolution moving -> reference one."""
    full = compose(invert(ref.to_work), invert(w_work), mov.to_work)
    fine = _Solver(levels[0], "affine", fine=True)
    before = fine.correlation(before_work)
    after = fine.correlation(w_work) if not problem else rho
    return PairResult(full, size, before, after, problem, iterations)


# ------------------------------------------------------------------ public entry points
def register_frames(frames: np.ndarray, model: str = "similarity", work_side: int = WORK_SIDE,
                    progress=None) -> list[PairResult]:
    """Every frame of a series (T, H, W) uint8 onto frame 0; result k's matrix maps frame k onto frame 0.
    Frame 0's result is the identity. `progress`: called once per frame registered."""
    if model not in MODELS:
        raise ValueError(f"model '{model}' is not one of {MODELS}")
    h, w = frames.shape[1:]
    ref = prepare_frame(frames[0], work_side)
    results = [PairResult(IDENTITY.copy(), (w, h), 1.0, 1.0)]
    previous = IDENTITY.copy()
    for k in range(1, len(frames)):
        mov = prepare_frame(frames[k], work_side)
        levels = _pyramid(ref.lines, ref.valid, mov.lines, mov.valid)
        starts = [IDENTITY.copy(), _phase_shift(ref.lines, mov.lines), previous]
        w0 = _coarse_best(levels, starts, model)
        w_work, rho, problem, used = refine(levels, w0, model)
        result = judge(_result(ref, mov, w_work, IDENTITY, rho, problem, used, (w, h), levels), "frame")
        if result.ok:  # the eye drifts: the next frame starts where this one was found
            previous = w_work
        results.append(result)
        if progress is not None:
            progress()
    return results


def composite(frames: np.ndarray, results: list[PairResult], work_side: int = WORK_SIDE) -> _Prepared:
    """The line maps of the frames registered without a flag, moved onto frame 0 and averaged (where at least
    half of them see the fundus). A first frame from the arterial phase shows the arteries alone, and the
    early venous phase draws veins as two walls (laminar flow); the series' mean shows every vessel whole,
    as the colour photo does."""
    h, w = frames.shape[1:]
    ref = prepare_frame(frames[0], work_side)
    total = np.zeros_like(ref.lines)
    count = np.zeros_like(ref.lines)
    used = [k for k, r in enumerate(results) if r.ok]
    for k in used:
        p = ref if k == 0 else prepare_frame(frames[k], work_side)
        m = compose(ref.to_work, results[k].matrix, invert(p.to_work))  # working pixels of k -> of frame 0
        size = ref.lines.shape[::-1]
        total += cv2.warpAffine(p.lines * p.valid, m, size, flags=cv2.INTER_LINEAR)
        count += cv2.warpAffine(p.valid.astype(np.float32), m, size, flags=cv2.INTER_LINEAR)
    valid = (count >= max(1.0, 0.5 * len(used)) - 1e-3) & ref.valid
    return _Prepared(np.where(valid, total / np.maximum(count, 1e-3), 0.0).astype(np.float32), valid, ref.to_work)


def register_cf(cf: np.ndarray, reference: np.ndarray | _Prepared, model: str = "similarity",
                work_side: int = WORK_SIDE) -> PairResult:
    """The CF (H', W', 3) uint8 RGB onto the FFA frame `reference` (H, W) uint8, or onto a `composite` of the
    registered series (in frame 0's coordinates; better); the matrix maps CF pixels onto frame 0's."""
    if model not in MODELS:
        raise ValueError(f"model '{model}' is not one of {MODELS}")
    ref = reference if isinstance(reference, _Prepared) else prepare_frame(reference, work_side)
    lines_wh = ref.lines.shape[::-1]
    w, h = (round(v) for v in invert(ref.to_work) @ np.array([lines_wh[0] - 0.5, lines_wh[1] - 0.5, 1.0]) + 0.5)
    mov = prepare_cf(cf, (h, w), work_side)
    levels = _pyramid(ref.lines, ref.valid, mov.lines, mov.valid)
    centred = _centred(ref.lines.shape[::-1], mov.lines.shape[::-1])
    # the search level: the one whose reference is nearest SEARCH_SIDE
    k = int(np.argmin([abs(max(lv.ref.shape) - SEARCH_SIDE) for lv in levels]))
    lv = levels[k]
    rh, rw = lv.ref.shape
    c = np.array([(rw - 1) / 2, (rh - 1) / 2])
    base = _between(centred, levels[0], lv)
    window = cv2.createHanningWindow((rw, rh), cv2.CV_32F)
    scorer = _Solver(lv, model, fine=False)
    scored = []
    for scale in (CF_SCALES if model != "rigid" else (1.0,)):
        for angle in CF_ANGLES:
            cand = compose(base, _matrix(_sim_params(scale, angle), "similarity", c))
            warped = cv2.warpAffine(lv.mov, cand, (rw, rh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            (dx, dy), _ = cv2.phaseCorrelate(lv.ref, warped, window)
            cand = compose(cand, np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]))
            scored.append((scorer.correlation(cand), cand))
    scored.sort(key=lambda s: -s[0])
    best = None
    # each start refined from the search level down, and at the finest level alone: a coarse level can
    # prefer a wrong neighbour that the finest level would not
    for _, cand in scored[:CF_CANDIDATES]:
        for start in sorted({k, 0}):
            w_work, rho, problem, used = refine(levels, _between(cand, lv, levels[0]), model, start=start)
            key = (not problem, rho)
            if best is None or key > best[0]:
                best = (key, w_work, rho, problem, used)
    _, w_work, rho, problem, used = best
    return judge(_result(ref, mov, w_work, centred, rho, problem, used, (w, h), levels), "cf")


def _sim_params(scale: float, angle_deg: float) -> np.ndarray:
    """Similarity parameters (a, b, 0, 0) of a reference -> moving map that scales by `scale` and turns by
    `angle_deg` about the centre."""
    t = math.radians(angle_deg)
    return np.array([scale * math.cos(t) - 1, scale * math.sin(t), 0.0, 0.0])


@dataclass
class CaseRegistration:
    frames: list[PairResult]
    cf: PairResult
    model: str
    notes: list[str] = field(default_factory=list)


def register_case(cf: np.ndarray, frames: np.ndarray, model: str = "similarity", work_side: int = WORK_SIDE,
                  progress=None) -> CaseRegistration:
    """Frames onto frame 0, then the CF onto the registered series (`composite`), in frame 0's coordinates."""
    results = register_frames(frames, model, work_side, progress)
    return CaseRegistration(results, register_cf(cf, composite(frames, results, work_side), model, work_side), model)


def warp_to_reference(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` (H', W'[, 3]) moved onto the reference's pixel grid (w, h); outside its own field: 0.
    A much larger image is first shrunk with area averaging (warpAffine alone would alias)."""
    h, w = image.shape[:2]
    f = size[1] / h
    if f < 0.75:
        small_wh = (max(1, round(w * f)), max(1, round(h * f)))
        image = cv2.resize(image, small_wh, interpolation=cv2.INTER_AREA)
        matrix = compose(matrix, invert(resize_matrix((w, h), small_wh)))
    return cv2.warpAffine(image, np.asarray(matrix, np.float64), size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
