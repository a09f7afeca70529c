"""Estimating how FFA frames and the colour photo sit on the angiogram's first frame.

One estimator, one file, though long: the line maps, the pyramid, the solver, the search and the two
passes feed each other's internals (working sizes, prepared maps), which would otherwise become public.

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
colour photos (docs/REGISTRATION.md). Starts, at the pyramid level nearest 128 px: for frames a search
over rotation, the shift of each by phase correlation, its two best and the previous frame's estimate;
for the CF a search over scale and rotation, the three best. Frames are registered twice: onto frame 0,
then onto the mean line map of the other frames registered (`register_frames`); the CF onto the mean line
map of the registered series (`composite`), not onto frame 0 alone: a first frame from the arterial or
early venous phase lacks veins or draws them as two walls.

Cost (a series of 20 frames at 512 px in about a second on one core): frame 0's pyramid and what the
solver reads of it are made once for the series, and each frame's line map once for both passes and the
mean; the line map's wide blurs run at a lower resolution; the solver samples the moving map at the
reference's valid pixels alone (cv2.remap), on a checkerboard at 512 px; the correlations judged are
measured at 256 px.

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
SEARCH_SIDE = 128  # the searches over scale and rotation run at the level nearest this size
FRAME_MIN, CF_GREEN_MIN = 2, 11  # inside the field of view (as knowledge.py's thresholds)

# the CF search: its scale (after matching heights with the angiogram) and rotation against frame 0
CF_SCALES = tuple(float(s) for s in np.exp(np.linspace(math.log(0.8), math.log(1.25), 9)))
CF_ANGLES = tuple(float(a) for a in np.arange(-12.0, 12.1, 2.0))
CF_CANDIDATES = 3  # the best search results refined with the full pyramid

# What is trusted. A registration outside these limits is flagged, never written as registered.
MIN_NCC = {"frame": 0.20, "cf": 0.15}  # correlation of the line maps after registration (at JUDGE_SIDE)
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


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """cv2.GaussianBlur; a wide one (sigma of 6 px or more) at a resolution sigma / 3 times lower, resized
    back: its result has no detail at the pixel scale, and the full-resolution kernel of the local RMS
    (sigma 31 px at 512 px) cost as much as the rest of the line map."""
    f = int(sigma // 3)
    if f < 2:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    h, w = img.shape
    small_wh = (max(1, round(w / f)), max(1, round(h / f)))
    small = cv2.resize(img, small_wh, interpolation=cv2.INTER_AREA)
    fx = w / small_wh[0]
    # the box of the area resize and the linear interpolation back add about (f / 2)^2 of variance
    s = math.sqrt(max(sigma * sigma - fx * fx / 4, 1.0)) / fx
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), s), (w, h), interpolation=cv2.INTER_LINEAR)


def _fill_outside(img: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """`img` with the pixels outside `mask` replaced by a smooth continuation of the inside, so the
    filters see no step at the field's border."""
    m = mask.astype(np.float32)
    den = _blur(m, sigma)
    smooth = _blur(img * m, sigma) / np.maximum(den, 1e-3)
    fallback = float(img[mask].mean()) if mask.any() else 0.0
    return np.where(mask, img, np.where(den > 1e-3, smooth, fallback)).astype(np.float32)


def _line_strength(img: np.ndarray, sigma: float) -> np.ndarray:
    g = cv2.GaussianBlur(img, (0, 0), sigma)
    dxx = cv2.Sobel(g, cv2.CV_32F, 2, 0, ksize=3, scale=0.25)
    dyy = cv2.Sobel(g, cv2.CV_32F, 0, 2, ksize=3, scale=0.25)
    dxy = cv2.Sobel(g, cv2.CV_32F, 1, 1, ksize=3, scale=0.25)
    # the larger eigenvalue magnitude less the smaller, of the eigenvalues (trace +- root) / 2: root when the
    # two have the same sign (|trace| >= root), |trace| when not
    trace, root = np.abs(dxx + dyy), cv2.magnitude(dxx - dyy, 2 * dxy)
    slope = cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3, scale=0.125),
                          cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3, scale=0.125))
    # a line: one large curvature across, none along, no slope at its centre; a blob has two large
    # curvatures, a step edge a slope beside each curvature
    return np.maximum(sigma ** 2 * np.minimum(root, trace) - sigma * slope, 0.0)


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
    # divided by the local RMS: vessels a tenth as bright weigh as much (the floor keeps empty areas at 0,
    # and a uniform image's rounding noise with them: a vessel one grey level deep scores hundreds of times it)
    s = 0.06 * max(h, w)
    rms = np.sqrt(np.maximum(_blur(lines * lines, s), 0.0) / np.maximum(_blur(valid.astype(np.float32), s), 1e-3))
    floor = max(1e-3 * float(np.median(rms[valid])), 1e-3) if valid.any() else 1.0
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


def _design(model: str, p: np.ndarray, x: np.ndarray, y: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The rows of the least-squares system, one column per pixel: d I(W(x; p)) / dp at centred reference
    coordinates (x, y), then the warped map and a constant (the gain and offset solved with the motion).
    `values`: the moving map and its gradient sampled at W(x) (zero outside the moving image's field)."""
    iv, gx, gy = values[:, 0], values[:, 1], values[:, 2]
    k = NPARAMS[model]
    a = np.empty((k + 2, len(iv)), np.float32)
    if model == "rigid":
        cos, sin = math.cos(p[0]), math.sin(p[0])
        a[0] = gx * (-sin * x - cos * y) + gy * (cos * x - sin * y)
        a[1], a[2] = gx, gy
    elif model == "similarity":
        a[0], a[1], a[2], a[3] = gx * x + gy * y, gy * x - gx * y, gx, gy
    else:
        a[0], a[1], a[2], a[3], a[4], a[5] = gx * x, gx * y, gy * x, gy * y, gx, gy
    a[k], a[k + 1] = iv, 1.0
    return a


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    d = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / d if d > 0 else 0.0


BLUR_COARSE, BLUR_FINE = 1.0, 0.5  # smoothing of the maps per level: wide basins coarse, precision fine


@dataclass
class _RefSide:
    """The reference at one level as the solver reads it: its valid pixels (in rows of ROW for cv2.remap,
    the last row padded with pixels outside every image), their coordinates about the centre c and its
    smoothed map there (0 at the padding)."""

    px: np.ndarray  # (rows, ROW) float32 pixel coordinates
    py: np.ndarray
    x: np.ndarray  # (rows * ROW,) float32, about c
    y: np.ndarray
    t: np.ndarray
    c: np.ndarray
    wh: tuple[int, int]
    n: int  # valid pixels without the padding


ROW = 256  # cv2.remap takes at most 32767 pixels a row
# A level with more valid pixels than this is sampled on a checkerboard: half the cost of the finest level at
# 512 px, and 80 000 pixels still hold thousands of vessel pixels (the estimate's scatter stays far below the
# phantom's 0.1 px bias between phases).
MAX_PIXELS = 100_000


class _Maps:
    """One image's line map and valid mask at every pyramid level (finest first), and what the solver reads
    of it as the reference or as the moving image, made once however many pairs use it (frame 0 serves
    every frame of its series)."""

    def __init__(self, lines: np.ndarray, valid: np.ndarray):
        self.lines, self.valid = [lines], [valid]
        while min(self.lines[-1].shape) >= 2 * MIN_SIDE:
            h, w = self.lines[-1].shape
            half = (max(1, w // 2), max(1, h // 2))
            self.lines.append(cv2.resize(self.lines[-1], half, interpolation=cv2.INTER_AREA))
            self.valid.append(cv2.resize(self.valid[-1].astype(np.float32), half, interpolation=cv2.INTER_AREA) > 0.99)
        self._ref: dict = {}
        self._mov: dict = {}

    def wh(self, k: int) -> tuple[int, int]:
        h, w = self.lines[k].shape
        return w, h

    def reference(self, k: int, fine: bool) -> _RefSide:
        if (k, fine) not in self._ref:
            smooth = cv2.GaussianBlur(self.lines[k], (0, 0), BLUR_FINE if fine else BLUR_COARSE)
            w, h = self.wh(k)
            valid = self.valid[k]
            if int(valid.sum()) > MAX_PIXELS:
                valid = valid & ((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2 == 0)
            idx = np.flatnonzero(valid)
            n = len(idx)
            pad = -n % ROW
            ys, xs = np.divmod(idx, w)
            xs = np.concatenate([xs.astype(np.float32), np.full(pad, -100.0, np.float32)])
            ys = np.concatenate([ys.astype(np.float32), np.full(pad, -100.0, np.float32)])
            c = np.array([(w - 1) / 2, (h - 1) / 2])
            t = np.concatenate([smooth.ravel()[idx], np.zeros(pad, np.float32)])
            self._ref[k, fine] = _RefSide(xs.reshape(-1, ROW), ys.reshape(-1, ROW), xs - np.float32(c[0]),
                                          ys - np.float32(c[1]), t, c, (w, h), n)
        return self._ref[k, fine]

    def moving(self, k: int, fine: bool) -> np.ndarray:
        """(h, w, 4) float32: the smoothed map and its x and y derivatives, each times the valid mask, and the
        mask (sampled with them, it weighs each pixel of the least squares: no pixel outside the moving
        image's field counts, and none needs to be picked out)."""
        if (k, fine) not in self._mov:
            smooth = cv2.GaussianBlur(self.lines[k], (0, 0), BLUR_FINE if fine else BLUR_COARSE)
            valid = self.valid[k].astype(np.float32)
            gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
            gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
            self._mov[k, fine] = cv2.merge([smooth * valid, gx * valid, gy * valid, valid])
        return self._mov[k, fine]


class _Solver:
    """The Gauss-Newton iterations at one pyramid level (reference and moving map, their valid masks)."""

    def __init__(self, ref: _RefSide, stack: np.ndarray, model: str):
        self.ref, self.stack, self.model = ref, stack, model
        w, h = ref.wh
        self.corners = np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1], [1, 1, 1, 1]], np.float64)

    def sample(self, w: np.ndarray) -> np.ndarray:
        """(n, 4): `_Maps.moving` at W(x) for every valid reference pixel x."""
        ref = self.ref
        mx = float(w[0, 0]) * ref.px + float(w[0, 1]) * ref.py + float(w[0, 2])
        my = float(w[1, 0]) * ref.px + float(w[1, 1]) * ref.py + float(w[1, 2])
        # at the valid pixels alone: warping the whole image and picking them out took twice as long
        return cv2.remap(self.stack, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0).reshape(-1, 4)

    def _correlation(self, values: np.ndarray) -> float:
        ok = values[:, 3] > 0.999  # the pixels inside both fields
        return _ncc(values[ok, 0], self.ref.t[ok]) if ok.sum() > 10 else 0.0

    def correlation(self, w: np.ndarray) -> float:
        return self._correlation(self.sample(w))

    def run(self, w: np.ndarray, iterations: int, tol: float) -> tuple[np.ndarray, float, str, int]:
        """Returns the refined matrix, the correlation it reaches, a problem ('' when none) and the
        iterations used."""
        ref = self.ref
        p = _params(w, self.model, ref.c)
        side = max(ref.wh)
        need = max(50.0, 0.1 * ref.n)
        k = NPARAMS[self.model]
        for it in range(1, iterations + 1):
            w = _matrix(p, self.model, ref.c)
            values = self.sample(w)
            if float(values[:, 3].sum()) < need:
                return w, 0.0, "the images no longer overlap", it
            a = _design(self.model, p, ref.x, ref.y, values)
            a[k + 1] = values[:, 3]  # the constant, where the moving image is
            hess = (a @ a.T).astype(np.float64)
            try:
                sol = np.linalg.solve(hess + 1e-9 * np.trace(hess) * np.eye(k + 2), (a @ ref.t).astype(np.float64))
            except np.linalg.LinAlgError:
                return w, 0.0, "no structure to register (singular system)", it
            gain = sol[-2]
            if not gain > 1e-6:  # the maps are anti-correlated or unrelated: no step improves them
                return w, self._correlation(values), "no correlation between the vessel maps", it
            p = p + sol[:-2] / gain
            new = _matrix(p, self.model, ref.c)
            if not np.all(np.isfinite(new)) or abs(new[:, 2]).max() > 4 * side or \
                    not 0.25 < math.sqrt(abs(np.linalg.det(new[:, :2]))) < 4:
                return w, 0.0, "diverged", it
            if float(np.abs((new - w) @ self.corners).max()) < tol:
                # the correlation of the step's start: the step moved no corner by more than tol
                return new, self._correlation(values), "", it
        return new, self.correlation(new), "", iterations


class _Pair:
    """A reference and a moving image's maps, registered on the levels both have."""

    def __init__(self, ref: _Maps, mov: _Maps, model: str):
        self.ref, self.mov, self.model = ref, mov, model
        self.levels = min(len(ref.lines), len(mov.lines))
        self._solvers: dict = {}

    def solver(self, k: int, fine: bool | None = None) -> _Solver:
        fine = k == 0 if fine is None else fine
        if (k, fine) not in self._solvers:
            self._solvers[k, fine] = _Solver(self.ref.reference(k, fine), self.mov.moving(k, fine), self.model)
        return self._solvers[k, fine]

    def between(self, w: np.ndarray, src: int, dst: int) -> np.ndarray:
        """A reference -> moving matrix of level `src` expressed at level `dst`."""
        if src == dst:
            return w
        to_ref = resize_matrix(self.ref.wh(src), self.ref.wh(dst))
        to_mov = resize_matrix(self.mov.wh(src), self.mov.wh(dst))
        return compose(to_mov, w, invert(to_ref))

    def level_near(self, side: int) -> int:
        """The level whose reference's longer side is nearest `side`."""
        return int(np.argmin([abs(max(self.ref.wh(k)) - side) for k in range(self.levels)]))


ITERATIONS_COARSE, ITERATIONS_FINE = 40, 25
# a step moving no corner further than this (pixels at the level's resolution) ends a level: the coarse
# levels only hand a start to the next, which corrects what is left
TOLERANCE_COARSE, TOLERANCE_FINE = 0.05, 0.01


def refine(pair: _Pair, w: np.ndarray, start: int, stop: int = 0, polish: bool = True
           ) -> tuple[np.ndarray, float, str, int]:
    """Gauss-Newton from level `start` down to level `stop`; `w` is given and returned at the finest level.
    `polish`: level `stop` is refined as the finest is (finer smoothing, to a smaller step). Returns the
    matrix, the correlation it reaches (at level `stop`), a problem ('' when none) and the iterations used."""
    w = pair.between(w, 0, start)
    used, rho = 0, 0.0
    for k in range(start, stop - 1, -1):
        # candidates compared at a coarser level are compared as the finest level would see them: with the
        # coarse smoothing, a first frame's veins drawn as two walls put every frame of a 512 px series 1 px
        # off at its 256 px level, and the finest level started there did not undo it
        fine = k == stop and polish
        w, rho, problem, it = pair.solver(k, fine).run(w, ITERATIONS_FINE if fine else ITERATIONS_COARSE,
                                                       TOLERANCE_FINE if fine else TOLERANCE_COARSE)
        used += it
        if problem:
            return pair.between(w, k, 0), rho, problem, used
        if k > stop:
            w = pair.between(w, k, k - 1)
    return pair.between(w, stop, 0), rho, "", used


def _search(pair: _Pair, level: int, base: np.ndarray, scales, angles) -> list[tuple[float, np.ndarray]]:
    """Scale and rotation candidates about `base` (finest-level reference -> moving matrix), the shift of
    each by phase correlation, at pyramid level `level`; (correlation, finest-level matrix), best first."""
    ref, mov = pair.ref.lines[level], pair.mov.lines[level]
    rw, rh = pair.ref.wh(level)
    c = np.array([(rw - 1) / 2, (rh - 1) / 2])
    base = pair.between(base, 0, level)
    window = cv2.createHanningWindow((rw, rh), cv2.CV_32F)
    scorer = pair.solver(level, fine=False)
    scored = []
    for scale in scales:
        for angle in angles:
            cand = compose(base, _matrix(_sim_params(scale, angle), "similarity", c))
            warped = cv2.warpAffine(mov, cand, (rw, rh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            (dx, dy), _ = cv2.phaseCorrelate(ref, warped, window)
            if math.isfinite(dx) and math.isfinite(dy):
                cand = compose(cand, np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]))
            scored.append((scorer.correlation(cand), pair.between(cand, level, 0)))
    scored.sort(key=lambda s: -s[0])
    return scored


def _best(pair: _Pair, starts: list[np.ndarray], start: int, stop: int) -> tuple[np.ndarray, float, str, int]:
    """Each start refined from level `start` to level `stop`: the highest correlation there (a start that
    converges before one that does not)."""
    best = None
    for w in starts:
        out = refine(pair, w, start, stop, polish=stop == 0)
        if best is None or (not out[2], out[1]) > (not best[2], best[1]):
            best = out
    return best


# the frames' search: rotation only (the eye turns by a few degrees; its scale changes by a few percent,
# which the Gauss-Newton finds from any of these)
FRAME_ANGLES = tuple(float(a) for a in np.arange(-8.0, 8.1, 2.0))
FRAME_CANDIDATES = 2  # the best search results refined, with the previous frame's estimate


def _register_pair(pair: _Pair, known: list[np.ndarray], search: bool = True) -> tuple[np.ndarray, float, str, int]:
    """A frame onto a reference: the starts `known` and (`search`) the search's best at the level nearest
    SEARCH_SIDE (the coarser ones lose a late frame's faint vessels: from the true transform they drifted
    away), the best refined down to the finest level."""
    level = pair.level_near(SEARCH_SIDE)
    found = [w for _, w in _search(pair, level, IDENTITY, (1.0,), FRAME_ANGLES)[:FRAME_CANDIDATES]] if search else []
    w, rho, problem, used = _best(pair, known + found, level, level)
    if problem or level == 0:
        return w, rho, problem, used
    w, rho, problem, more = refine(pair, w, level - 1)
    return w, rho, problem, used + more


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
    # the image's line map (register_frames keeps it for `composite`, which would otherwise make it again)
    maps: _Prepared | None = field(default=None, repr=False, compare=False)

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
    pyramid: _Maps | None = field(default=None, repr=False, compare=False)

    @property
    def maps(self) -> _Maps:
        if self.pyramid is None:
            self.pyramid = _Maps(self.lines, self.valid)
        return self.pyramid

    def nothing(self) -> str:
        """Why nothing in the image can be registered ('' when something can)."""
        if int(self.valid.sum()) < max(100, 0.02 * self.valid.size):
            return "no field of view (a blank or black image?)"
        if not float(self.lines[self.valid].max()) > 0.05:
            return "no vessels or other structure in the field of view"
        return ""


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


def _full(ref: _Prepared, mov: _Prepared, w_work: np.ndarray) -> np.ndarray:
    """Working-resolution reference -> moving matrix to the full-resolution moving -> reference one."""
    return compose(invert(ref.to_work), invert(w_work), mov.to_work)


def _work(ref: _Prepared, mov: _Prepared, full: np.ndarray) -> np.ndarray:
    """The inverse of `_full`."""
    return invert(compose(ref.to_work, full, invert(mov.to_work)))


# The correlations judged and reported are measured at the level nearest this size (with the finest level's
# smoothing): the limits mean the same whatever the working size, and a level of 256 px costs a quarter of
# one of 512.
JUDGE_SIDE = 256


def _result(pair: _Pair, ref: _Prepared, mov: _Prepared, w_work: np.ndarray, before_work: np.ndarray, rho: float,
            problem: str, iterations: int, size: tuple[int, int]) -> PairResult:
    """The result of a working-resolution estimate, with its correlations before and after."""
    level = pair.level_near(JUDGE_SIDE)
    scorer = pair.solver(level, fine=True)
    before = scorer.correlation(pair.between(before_work, 0, level))
    after = scorer.correlation(pair.between(w_work, 0, level)) if not problem else rho
    return PairResult(_full(ref, mov, w_work), size, before, after, problem, iterations)


# ------------------------------------------------------------------ public entry points
MAPS_KEPT = 64  # a longer series' line maps are made again when needed rather than all held (1.3 MB each)


def _frame_maps(frames: np.ndarray, results: list[PairResult], k: int, work_side: int) -> _Prepared:
    h, w = frames.shape[1:]
    kept = results[k].maps
    ww, wh = _working_size(w, h, work_side)
    return kept if kept is not None and kept.lines.shape == (wh, ww) else prepare_frame(frames[k], work_side)


def _contribution(ref: _Prepared, p: _Prepared, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A frame's line map and valid mask moved onto frame 0's working grid by its full-resolution matrix."""
    m = compose(ref.to_work, matrix, invert(p.to_work))  # working pixels of the frame -> of frame 0
    size = ref.lines.shape[::-1]
    return (cv2.warpAffine(p.lines * p.valid, m, size, flags=cv2.INTER_LINEAR),
            cv2.warpAffine(p.valid.astype(np.float32), m, size, flags=cv2.INTER_LINEAR))


def _mean_map(ref: _Prepared, total: np.ndarray, count: np.ndarray, n: int) -> _Prepared:
    """The mean of n moved line maps, where at least half of them see the fundus and frame 0 does."""
    valid = (count >= max(1.0, 0.5 * n) - 1e-3) & ref.valid
    return _Prepared(np.where(valid, total / np.maximum(count, 1e-3), 0.0).astype(np.float32), valid, ref.to_work)


def register_frames(frames: np.ndarray, model: str = "similarity", work_side: int = WORK_SIDE,
                    progress=None) -> list[PairResult]:
    """Every frame of a series (T, H, W) uint8 onto frame 0; result k's matrix maps frame k onto frame 0.
    Frame 0's result is the identity. `progress`: called once per frame registered.

    Two passes. First every frame onto frame 0; then every frame onto the mean line map of the others
    registered (in frame 0's coordinates: the same frame of reference), started from the first estimate.
    Frame 0 may come from the first seconds of the dye, with little of the vessels to register against, or
    show them as the other frames do not (dark, where an arterial frame draws an artery bright beside a
    dark vein): onto frame 0 alone such frames were found 3-5 px off at 256 px without a flag, onto the
    series' mean within 1-2 px."""
    if model not in MODELS:
        raise ValueError(f"model '{model}' is not one of {MODELS}")
    n, h, w = frames.shape
    size = (w, h)
    keep = n <= MAPS_KEPT
    ref = prepare_frame(frames[0], work_side)
    unusable = ref.nothing()
    # frame 0's result: the identity, flagged when frame 0 has nothing to register onto
    results = [PairResult(IDENTITY.copy(), size, 1.0, 1.0, unusable, maps=ref if keep else None)]
    previous = IDENTITY.copy()
    blank = set()  # frames with nothing to register
    for k in range(1, n):
        mov = prepare_frame(frames[k], work_side)
        problem = f"frame 0 (the reference): {unusable}" if unusable else mov.nothing()
        if problem:
            result = PairResult(IDENTITY.copy(), size, 0.0, 0.0, problem)
            blank.add(k)
        else:
            pair = _Pair(ref.maps, mov.maps, model)
            w_work, rho, problem, used = _register_pair(pair, [previous])
            result = judge(_result(pair, ref, mov, w_work, IDENTITY, rho, problem, used, size), "frame")
            if result.ok:  # the eye drifts: the next frame starts where this one was found
                previous = w_work
        mov.pyramid = None  # its solver's caches: 10 MB a frame at 512 px; the second pass makes them again
        result.maps = mov if keep else None
        results.append(result)
        if progress is not None:
            progress()
    if not unusable:
        _onto_series(frames, results, ref, model, work_side, blank)
    for result in results:
        if result.maps is not None:
            result.maps.pyramid = None
    return results


def _onto_series(frames: np.ndarray, results: list[PairResult], ref: _Prepared, model: str, work_side: int,
                 blank: set[int]) -> None:
    """The second pass of `register_frames`: each frame onto the mean of the others' line maps (leaving its
    own out, which would pull it towards its first estimate); replaces a result when it passes `judge`, or
    when the first did not."""
    used = [k for k, r in enumerate(results) if r.ok]
    if len(used) < 3:  # frame 0 and one other: the mean is frame 0 again
        return
    total, count = np.zeros_like(ref.lines), np.zeros_like(ref.lines)
    for k in used:
        lines, valid = _contribution(ref, _frame_maps(frames, results, k, work_side), results[k].matrix)
        total += lines
        count += valid
    size = results[0].size
    for k in range(1, len(results)):
        if k in blank:
            continue
        first = results[k]
        mov = _frame_maps(frames, results, k, work_side)
        if first.ok:
            lines, valid = _contribution(ref, mov, first.matrix)
            others = _mean_map(ref, total - lines, count - valid, len(used) - 1)
            known = [_work(ref, mov, first.matrix)]
        else:
            others, known = _mean_map(ref, total, count, len(used)), []
        pair = _Pair(others.maps, mov.maps, model)
        mov.pyramid = None  # held by `pair` for this frame only
        w_work, rho, problem, used_it = _register_pair(pair, known, search=not known)
        if problem:
            continue
        # judged against the reference it was registered onto: a frame 0 from the first seconds of the dye
        # correlates little with any frame, wherever that is put
        second = judge(_result(pair, ref, mov, w_work, IDENTITY, rho, "", first.iterations + used_it, size),
                       "frame")
        if second.ok or not first.ok:
            second.maps = first.maps
            results[k] = second


def composite(frames: np.ndarray, results: list[PairResult], work_side: int = WORK_SIDE) -> _Prepared:
    """The line maps of the frames registered without a flag, moved onto frame 0 and averaged (where at least
    half of them see the fundus). A first frame from the arterial phase shows the arteries alone, and the
    early venous phase draws veins as two walls (laminar flow); the series' mean shows every vessel whole,
    as the colour photo does."""
    ref = _frame_maps(frames, results, 0, work_side)
    total, count = np.zeros_like(ref.lines), np.zeros_like(ref.lines)
    used = [k for k, r in enumerate(results) if r.ok]
    for k in used:
        lines, valid = _contribution(ref, _frame_maps(frames, results, k, work_side), results[k].matrix)
        total += lines
        count += valid
    return _mean_map(ref, total, count, len(used))


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
    centred = _centred(ref.lines.shape[::-1], mov.lines.shape[::-1])
    unusable = ref.nothing()
    problem = f"nothing to register onto in the angiogram: {unusable}" if unusable else mov.nothing()
    if problem:
        return PairResult(_full(ref, mov, centred), (w, h), 0.0, 0.0, problem)
    pair = _Pair(ref.maps, mov.maps, model)
    level, mid = pair.level_near(SEARCH_SIDE), pair.level_near(JUDGE_SIDE)
    scored = _search(pair, level, centred, CF_SCALES if model != "rigid" else (1.0,), CF_ANGLES)
    best = None
    # each start refined from the search level, and from the level nearest JUDGE_SIDE alone: a coarse level
    # can prefer a wrong neighbour that a finer one would not; the winner alone goes on to the finest
    for _, cand in scored[:CF_CANDIDATES]:
        for start in sorted({level, mid}):
            out = refine(pair, cand, start, mid)
            if best is None or (not out[2], out[1]) > (not best[2], best[1]):
                best = out
    w_work, rho, problem, used = best
    if not problem and mid > 0:
        w_work, rho, problem, more = refine(pair, w_work, mid - 1)
        used += more
    return judge(_result(pair, ref, mov, w_work, centred, rho, problem, used, (w, h)), "cf")


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


def decide(results: list[PairResult], cf: PairResult, names: list[str]) -> tuple[str, list[int]]:
    """The reason not to use the case as registered ('' to use it) and the frames whose registration
    failed (to drop, or to use as read)."""
    failed = [k for k in range(1, len(results)) if not results[k].ok]
    if not results[0].ok:  # nothing else could register onto it, the CF included
        return f"frame 0 {names[0]}: {results[0].problem}", failed
    if not cf.ok:
        return f"CF: {cf.problem}", failed
    if failed and len(failed) == len(results) - 1:
        return (f"no frame registers onto frame 0 ({names[0]}; is it usable?): {names[-1]}: "
                f"{results[-1].problem}"), failed
    if not results[-1].ok:
        return f"last frame {names[-1]}: {results[-1].problem}", failed
    return "", failed


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
