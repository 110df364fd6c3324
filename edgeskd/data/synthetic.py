"""Synthetic endoscopy frames: the embedded default data set (numpy only, vectorised, seeded).

The default set is frames of synthetic clips (``edgeskd.data.clips``: the camera of the synthetic
video, 1 frame per polyp, ~30 % bare-wall frames of the ``no_polyp`` class with three kinds of wall,
split by clip); ``make_synthetic_images`` keeps the earlier still images (one centred polyp each).

The generative story (what the labels mean)
-------------------------------------------
Each polyp frame shows one polyp of a *true* class (``hyperplastic`` or ``adenoma``). Each class is a
union of four distinct-looking *subtypes* (colour, size, height, outline, surface pit pattern,
surface vessels, mucus). The subtypes come in four look-alike pairs, one subtype of each class
per pair; the two members of a pair share most of their look and differ in one cue, and the cue
is a different one in every pair (as real lesions are told apart by different signs):

    pair  hyperplastic        adenoma              what tells them apart
    pale  hp_flat_pale        ad_flat_tubular      pit shape: round dots vs elongated tubes
    pink  hp_nodular          ad_tubular           surface vessel network: none vs dense
    mucus hp_mucus_capped     ad_mucus_lobulated   size and a cloud-like lobulated outline
    red   hp_inflamed         ad_villous           surface: coarse dots vs gyrus-like ridges

Every lesion has a latent *ambiguity* m ∈ [0, AMBIGUITY_MAX), drawn from the same distribution
in every subtype (most lesions are typical, m near 0; a tail is borderline). m does two things,
which is what makes annotator agreement informative (MHIST's mechanism):

* the picture: the lesion's look is blended towards its pair partner by BLEND·m (a borderline
  lesion really looks in between);
* the votes: each of 7 simulated annotators calls it the other class with probability m.

The labels a user gets are the annotators' (as in MHIST):

* ``votes`` = how many of the 7 annotators called it ``adenoma`` (0–7); agreement grades the look
  within every subtype, not only in one hard pair;
* ``labels`` = majority vote (votes ≥ 4 ⇔ adenoma) — it differs from the true class when the
  ambiguity flips the majority (label noise, ~9 %);
* ``subclasses`` = the visual subtype; a lesion whose majority flipped takes its pair partner (the
  subtype of the labelled class it looks like), so the subclass always lies in the label's class.

Written in the MHIST format the subclasses become vote bins (MHIST's own definition; the default
bins 0|1,2|3|4|5,6|7), so the MHIST round trip keeps labels and votes, not the visual subtypes.

Nothing here favours one training method: class, subtype and agreement come from one generative
story, and every cue is in the pixels.

Subclasses (block order: the hyperplastic block, then the adenoma block)::

    hyperplastic: hp_flat_pale (0)       flat, pale, fine round pits, no vessels
                  hp_nodular (1)         small pink dome, lobed outline, round/short pits
                  hp_mucus_capped (2)    flat, elongated, yellowish mucus cap, mixed pits
                  hp_inflamed (3)        large red dome, coarse irregular round pits
    adenoma:      ad_flat_tubular (4)    flat, pale, elongated (tubular) pits
                  ad_tubular (5)         pink dome, dense brown vessel network
                  ad_mucus_lobulated (6) larger, cloud-like lobulated outline, mucus cap
                  ad_villous (7)         large dark red, gyrus-like ridges

Reusable pieces (the synthetic video renders with the same functions)::

    sample_labels(n, seed, visual=None) -> dict: visual, ambiguity, true_labels, votes, labels, subclasses
    sample_seed(seed, i) -> int                      per-sample texture seed
    sample_polyp_params(rng, subclasses, ambiguity) -> dict of per-sample arrays
        (cx, cy, radius, angle, elong, lobes, height, color (B,3), pit pattern weights, ...)
    render_mucosa(seeds, size, *, offset=None, zoom=1.0) -> (rgb float32 (B,S,S,3), height (B,S,S))
    render_polyp(rgb, height, params, seeds) -> (rgb, height, mask)        (composites, in place)
    sample_look(rng, n) -> EndoLook                  camera look per sample (FOV, blur, gain, ...)
    apply_endoscope_look(rgb, height, seeds, *, look=None, text=True) -> uint8 (B,S,S,3)
    render_frames(subclasses, ambiguity, size, seed, *, start=0) -> uint8 frames

All per-sample randomness of the three renderers comes from per-sample integer ``seeds``, and
textures live in the polyp's / mucosa's own coordinates, so a video can move and scale a polyp
across frames (change ``cx``, ``cy``, ``radius`` or the mucosa ``offset``/``zoom``) without its
texture flickering.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np

from edgeskd.data.base import LabeledSet
from edgeskd.data.splits import stratified_split
from edgeskd.errors import UsageError

GENERATOR_VERSION = 3   # seeds the label model and per-sample textures
RENDER_REVISION = 10    # bump whenever rendered bytes or splits change (it keys the on-disk cache)
POLYP_CLASS_NAMES = ("hyperplastic", "adenoma")
CLASS_NAMES = POLYP_CLASS_NAMES + ("no_polyp",)   # the last class: no polyp in view (bare wall)
BACKGROUND_CLASS = 2
# Kinds of bare wall (the no_polyp block): plain wall, a view down the lumen, a blurred wall.
BACKGROUND_SUBCLASSES = ("mucosa_plain", "mucosa_lumen", "mucosa_blurred")
POSITIVE_CLASS = 1
N_ANNOTATORS = 7
CHUNK = 64  # images rendered per vectorised batch (fixed: results must not depend on it)
MHIST_BINS = ((0,), (1, 2), (3,), (4,), (5, 6), (7,))   # the default vote bins of the MHIST format
# Latent ambiguity m = AMBIGUITY_MAX · u ** AMBIGUITY_POWER, u ~ U(0, 1), the same in every subtype.
AMBIGUITY_MAX = 0.6
AMBIGUITY_POWER = 3.0
TEST_SHARE = 1 / 2      # make_synthetic_images' split: half test (rendering is cheap; n = 5,200 → 2,600 test) ...
VAL_SHARE = 1 / 4       # ... a quarter val (epoch selection, temperature, threshold), a quarter train


@dataclass(frozen=True)
class SubclassStyle:
    """The look of one visual subtype (a prototype; each sample jitters and blends it)."""

    name: str
    cls: int
    prior: float                    # share of lesions
    color: tuple[float, float, float]
    size: float                     # radius, in half-image units
    height: float                   # dome height (shading, specular highlights)
    elong: float                    # axis ratio
    lobes: float                    # outline lobulation amplitude
    dots: float                     # pit pattern weights (normalised per sample)
    tubes: float
    gyri: float
    pit_contrast: float
    pit_period: float               # pit spacing in pixels at 128 px
    warp: float                     # irregularity of the pit pattern
    vessels: float                  # brown surface vessel network
    mucus: float                    # yellowish mucus cap


SUBCLASS_STYLES: tuple[SubclassStyle, ...] = (
    #             name                  cls prior  colour               size  height elong lobes
    #             dots tubes gyri pit_contrast pit_period warp vessels mucus
    SubclassStyle("hp_flat_pale", 0, 0.14, (0.95, 0.72, 0.64), 0.38, 0.40, 1.15, 0.04,
                  1.0, 0.0, 0.0, 0.60, 8.0, 0.10, 0.00, 0.05),
    SubclassStyle("hp_nodular", 0, 0.13, (0.90, 0.52, 0.48), 0.34, 0.85, 1.05, 0.14,
                  0.7, 0.3, 0.0, 0.40, 8.0, 0.25, 0.00, 0.05),
    SubclassStyle("hp_mucus_capped", 0, 0.12, (0.88, 0.62, 0.46), 0.30, 0.40, 1.35, 0.04,
                  0.6, 0.4, 0.0, 0.45, 9.0, 0.30, 0.10, 0.60),
    SubclassStyle("hp_inflamed", 0, 0.11, (0.68, 0.25, 0.21), 0.46, 0.90, 1.10, 0.16,
                  1.0, 0.0, 0.0, 0.60, 11.0, 0.55, 0.20, 0.05),
    SubclassStyle("ad_flat_tubular", 1, 0.14, (0.90, 0.62, 0.54), 0.40, 0.45, 1.20, 0.05,
                  0.0, 1.0, 0.0, 0.85, 9.0, 0.30, 0.25, 0.05),
    SubclassStyle("ad_tubular", 1, 0.13, (0.84, 0.45, 0.40), 0.36, 0.85, 1.10, 0.14,
                  0.6, 0.4, 0.0, 0.45, 8.0, 0.30, 1.00, 0.05),
    SubclassStyle("ad_mucus_lobulated", 1, 0.12, (0.86, 0.60, 0.44), 0.50, 0.40, 1.35, 0.36,
                  0.6, 0.4, 0.0, 0.45, 9.0, 0.30, 0.15, 0.60),
    SubclassStyle("ad_villous", 1, 0.11, (0.58, 0.20, 0.18), 0.48, 1.10, 1.10, 0.22,
                  0.0, 0.0, 1.0, 0.90, 11.0, 0.60, 0.40, 0.05),
)
N_POLYP_SUBCLASSES = len(SUBCLASS_STYLES)
POLYP_SUBCLASS_NAMES = tuple(s.name for s in SUBCLASS_STYLES)
POLYP_SUBCLASS_TO_CLASS = tuple(s.cls for s in SUBCLASS_STYLES)
SUBCLASS_NAMES = POLYP_SUBCLASS_NAMES + BACKGROUND_SUBCLASSES
SUBCLASS_TO_CLASS = POLYP_SUBCLASS_TO_CLASS + (BACKGROUND_CLASS,) * len(BACKGROUND_SUBCLASSES)
COUNTERPART = (4, 5, 6, 7, 0, 1, 2, 3)  # pair partner in the other class (the blend target)
BLEND = 0.9                             # look blend = BLEND * ambiguity
_NUMERIC = [f.name for f in fields(SubclassStyle)
            if f.name not in ("name", "cls", "prior", "color")]

# Text overlay: a 3x5 bitmap font (deterministic on every machine, unlike system fonts).
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", ":": "000010000010000", "-": "000000111000000",
    "/": "001001010100100", ".": "000000000000010", " ": "000000000000000", "A": "010101111101101",
    "D": "110101101101110", "E": "111100110100111", "G": "111100101101111", "I": "111010010010111",
    "K": "101101110101101", "M": "101111111101101", "N": "110101101101101", "O": "111101101101111",
    "P": "111101111100100", "S": "111100111001111", "W": "101101111111101", "X": "101101010101101",
    "B": "110101110101110", "R": "110101110101101", "L": "100100100100111", "T": "111010010010010",
}


def vote_bin_of(votes: np.ndarray) -> np.ndarray:
    """Vote count (0–7) → index of its MHIST default vote bin (``MHIST_BINS``): the subclass the
    MHIST format gives a lesion."""
    table = np.empty(N_ANNOTATORS + 1, np.int64)
    for i, b in enumerate(MHIST_BINS):
        table[list(b)] = i
    return table[np.asarray(votes, np.int64)]


# ----------------------------------------------------------------------------------------------
# Smooth random fields in continuous coordinates (separable Gaussian basis, exact unit variance)
# ----------------------------------------------------------------------------------------------
def _basis(coords: np.ndarray, g: int, extent: float) -> np.ndarray:
    """(B, S) coordinates → (B, S, g) Gaussian bumps on a g-point grid over [-extent, extent],
    scaled so that a field with i.i.d. N(0,1) weights has unit variance everywhere."""
    centres = np.linspace(-extent, extent, g, dtype=np.float32)
    sigma = 2 * extent / (g - 1) * 0.75
    phi = np.exp(-0.5 * ((coords[..., None] - centres) / sigma) ** 2).astype(np.float32)
    phi /= np.sqrt((phi ** 2).sum(-1, keepdims=True)) + 1e-12
    return phi


def _field(noise: np.ndarray, by: np.ndarray, bx: np.ndarray) -> np.ndarray:
    """noise (B, g, g) with bases by (B, S, g), bx (B, S, g) → (B, S, S) unit-variance field."""
    return np.matmul(np.matmul(by, noise), bx.transpose(0, 2, 1))


def _noise(rngs: list[np.random.Generator], g: int) -> np.ndarray:
    return np.stack([r.standard_normal((g, g), dtype=np.float32) for r in rngs])


def _smoothstep(e0, e1, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at ``e0`` to 1 at ``e1`` (either order); few temporaries."""
    t = np.subtract(x, e0, dtype=np.float32)
    t *= np.float32(1.0) / (np.asarray(e1, np.float32) - np.asarray(e0, np.float32))
    np.clip(t, 0.0, 1.0, out=t)
    r = t * t
    t *= -2.0
    t += 3.0
    r *= t
    return r


def _pixel_coords(size: int) -> np.ndarray:
    return ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0).astype(np.float32)


def _rngs(seeds: np.ndarray, stream: int) -> list[np.random.Generator]:
    """One generator per sample and purpose: textures depend only on (seed, stream)."""
    return [np.random.default_rng([int(s), stream]) for s in np.asarray(seeds).ravel()]


# ----------------------------------------------------------------------------------------------
# Renderers
# ----------------------------------------------------------------------------------------------
def render_mucosa(
    seeds: np.ndarray,
    size: int,
    *,
    offset: np.ndarray | None = None,
    zoom: np.ndarray | float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Colon wall: pink-red mucosa with granular texture, folds and two scales of vessels.

    ``seeds`` (B,) ints fix each sample's texture; ``offset`` (B, 2) (x, y) and ``zoom`` (B,) move
    the camera over the same wall (texture coordinates = pixel coords × zoom + offset; the wall
    is defined over about [-3, 3]²). Returns rgb float32 (B, S, S, 3) in [0, 1] and a height map
    (B, S, S) used for shading and highlights.
    """
    seeds = np.asarray(seeds, np.int64).ravel()
    B, S = len(seeds), int(size)
    off = np.zeros((B, 2), np.float32) if offset is None else \
        np.broadcast_to(np.asarray(offset, np.float32).reshape(-1, 2), (B, 2))
    zm = np.broadcast_to(np.asarray(zoom, np.float32).reshape(-1), (B,))
    t = _pixel_coords(S)
    xs = t[None, :] * zm[:, None] + off[:, 0:1]
    ys = t[None, :] * zm[:, None] + off[:, 1:2]
    rngs = _rngs(seeds, 1)
    ext = 3.0

    fold = _field(_noise(rngs, 9), _basis(ys, 9, ext), _basis(xs, 9, ext))
    by, bx = _basis(ys, 40, ext), _basis(xs, 40, ext)
    tex = _field(_noise(rngs, 40), by, bx)
    by2, bx2 = _basis(ys, 14, ext), _basis(xs, 14, ext)
    ves1 = _field(_noise(rngs, 14), by2, bx2)
    patch = _field(_noise(rngs, 14), by2, bx2)
    ves2 = _field(_noise(rngs, 26), _basis(ys, 26, ext), _basis(xs, 26, ext))

    tone_j = np.stack([r.uniform(-1, 1, 4).astype(np.float32) for r in rngs])
    tone = np.array([0.84, 0.44, 0.37], np.float32) + tone_j[:, :3] * np.array([0.05, 0.06, 0.05], np.float32)
    tfold = np.tanh(fold)
    base = (1.0 + 0.045 * tex) * (0.9 + 0.1 * tfold)
    v = (np.exp(-(ves1 / 0.06) ** 2) * 0.55 * _smoothstep(-0.6, 0.8, patch)
         + np.exp(-(ves2 / 0.05) ** 2) * 0.35 * _smoothstep(0.0, 1.2, -patch))
    v *= (0.6 + 0.3 * tone_j[:, 3])[:, None, None]
    vessel_rgb = (0.55, 0.12, 0.14)
    rgb = np.empty((B, S, S, 3), np.float32)
    for c in range(3):  # per channel: numpy is slow at broadcasting over a trailing axis of 3
        ch = base * tone[:, c, None, None]
        rgb[..., c] = ch + (vessel_rgb[c] - ch) * v
    height = 0.10 * tfold + 0.004 * tex
    return rgb, height.astype(np.float32)


def render_lumen(rgb: np.ndarray, height: np.ndarray, lumen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A view down the colon: a dark lumen at ``lumen`` (B, 3) = (cx, cy, radius) in view units,
    ringed by circular folds (height ripples the lighting turns into bright and dark rings)."""
    B, S = rgb.shape[0], rgb.shape[1]
    lum = np.asarray(lumen, np.float32).reshape(B, 3)
    t = _pixel_coords(S)
    dx = t[None, None, :] - lum[:, 0, None, None]
    dy = t[None, :, None] - lum[:, 1, None, None]
    d = np.sqrt(dx * dx + dy * dy) / lum[:, 2, None, None]
    dark = _smoothstep(1.1, 0.15, d)
    rings = np.cos(d * np.float32(2 * np.pi / 1.3)) * _smoothstep(3.2, 1.0, d) * _smoothstep(0.6, 1.1, d)
    rgb = rgb * (1.0 - 0.88 * dark)[..., None]
    height = height + 0.06 * rings - 0.15 * dark
    return rgb.astype(np.float32), height.astype(np.float32)


def sample_polyp_params(
    rng: np.random.Generator, subclasses: np.ndarray, ambiguity: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-sample polyp look: the subclass prototype blended towards its counterpart by
    ``BLEND * ambiguity``, jittered, plus a random placement (cx, cy, radius, angle)."""
    sub = np.asarray(subclasses, np.int64)
    m = np.asarray(ambiguity, np.float32) * BLEND
    B = len(sub)
    proto = np.array([[getattr(s, k) for k in _NUMERIC] for s in SUBCLASS_STYLES], np.float32)
    colors = np.array([s.color for s in SUBCLASS_STYLES], np.float32)
    cp = np.asarray(COUNTERPART)[sub]
    vals = proto[sub] * (1 - m[:, None]) + proto[cp] * m[:, None]
    col = colors[sub] * (1 - m[:, None]) + colors[cp] * m[:, None]
    p = {k: vals[:, i].copy() for i, k in enumerate(_NUMERIC)}
    jit = rng.uniform(-1, 1, (B, 8)).astype(np.float32)
    p["color"] = np.clip(col + jit[:, :3] * 0.035, 0, 1)
    p["size"] = p["size"] * (1 + 0.18 * jit[:, 3])
    p["height"] = p["height"] * (1 + 0.25 * jit[:, 4])
    p["pit_period"] = p["pit_period"] * (1 + 0.12 * jit[:, 5])
    p["pit_contrast"] = np.clip(p["pit_contrast"] * (1 + 0.25 * jit[:, 6]), 0, 1)
    p["lobes"] = p["lobes"] * (1 + 0.3 * jit[:, 7])
    w = np.stack([p["dots"], p["tubes"], p["gyri"]], 1)
    w /= w.sum(1, keepdims=True)
    p["dots"], p["tubes"], p["gyri"] = w[:, 0], w[:, 1], w[:, 2]
    place = rng.uniform(-1, 1, (B, 4)).astype(np.float32)
    p["radius"] = p.pop("size")
    lim = np.maximum(0.75 - p["radius"], 0.05)
    p["cx"], p["cy"] = place[:, 0] * lim, place[:, 1] * lim
    p["angle"] = place[:, 2] * np.float32(np.pi)
    p["pattern_angle"] = place[:, 3] * np.float32(np.pi)
    return p


def render_polyp(
    rgb: np.ndarray, height: np.ndarray, params: dict[str, np.ndarray], seeds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Composite one polyp per image onto ``rgb`` (B,S,S,3) / ``height`` (B,S,S), in place.

    ``params`` as from ``sample_polyp_params`` (cx, cy, radius in half-image units; any of them
    may be changed per frame). Textures live in the polyp's own frame and depend only on
    ``seeds``. Returns (rgb, height, mask) with mask (B,S,S) in [0, 1].
    """
    seeds = np.asarray(seeds, np.int64).ravel()
    B, S = rgb.shape[0], rgb.shape[1]
    P = {k: np.asarray(v, np.float32) for k, v in params.items()}
    rngs = _rngs(seeds, 2)
    lob_amp = np.stack([r_.uniform(0.4, 1.0, 4) for r_ in rngs]).astype(np.float32)
    lob_ph = np.stack([r_.uniform(0, 2 * np.pi, 4) for r_ in rngs]).astype(np.float32)

    # Work in a W×W window around each polyp (the same W for the batch): the outline never
    # leaves radius · max(e, 1/e) · (1 + lobes · Σamp / 2), so pixels outside stay mucosa.
    t = _pixel_coords(S)
    reach = P["radius"] * np.maximum(P["elong"], 1 / P["elong"]) * (1 + np.abs(P["lobes"]) * lob_amp.sum(1) / 2)
    W = int(min(S, 2 * np.ceil(float(reach.max()) * S / 2 + 4)))
    x0 = np.clip(np.floor((P["cx"] + 1) * S / 2 - W / 2), 0, S - W).astype(np.intp)
    y0 = np.clip(np.floor((P["cy"] + 1) * S / 2 - W / 2), 0, S - W).astype(np.intp)
    win = np.arange(W)
    R = P["radius"][:, None]
    px = (t[x0[:, None] + win] - P["cx"][:, None]) / R     # (B, W) polyp frame, 1 = radius
    py = (t[y0[:, None] + win] - P["cy"][:, None]) / R

    ca, sa = np.cos(P["angle"])[:, None, None], np.sin(P["angle"])[:, None, None]
    X, Y = px[:, None, :], py[:, :, None]
    e = P["elong"][:, None, None]
    u = (X * ca + Y * sa) / e
    v = (-X * sa + Y * ca) * e
    r = np.sqrt(u * u + v * v) + 1e-6
    c1, s1 = u / r, v / r                      # cos θ, sin θ of the outline angle
    harm = np.zeros_like(r)
    cj, sj = c1 * c1 - s1 * s1, 2 * c1 * s1     # cos 2θ, sin 2θ
    for j in range(4):  # harmonics 2..5: amp · cos(jθ − φ)
        cph, sph = np.cos(lob_ph[:, j])[:, None, None], np.sin(lob_ph[:, j])[:, None, None]
        harm += lob_amp[:, j, None, None] * (cj * cph + sj * sph)
        cj, sj = cj * c1 - sj * s1, sj * c1 + cj * s1
    rn = r / (1.0 + P["lobes"][:, None, None] * harm / 2.0)
    edge = 2.5 / (S * P["radius"][:, None, None] / 2)  # ~2.5 px soft edge
    mask = _smoothstep(1.0 + edge, 1.0 - edge, rn).astype(np.float32)
    dome = _smoothstep(1.0, 0.0, rn) * P["height"][:, None, None] * 0.3

    ext = 1.6
    by, bx = _basis(py, 8, ext), _basis(px, 8, ext)
    warp_a = _field(_noise(rngs, 8), by, bx)
    warp_b = _field(_noise(rngs, 8), by, bx)
    mucus_f = _field(_noise(rngs, 8), by, bx)
    vnet = _field(_noise(rngs, 18), _basis(py, 18, ext), _basis(px, 18, ext))

    # Pit pattern, in image-scale units so the pit size does not grow with the polyp.
    per = (P["pit_period"] * 2.0 / 128.0)[:, None, None]
    cb, sb = np.cos(P["pattern_angle"])[:, None, None], np.sin(P["pattern_angle"])[:, None, None]
    wamp = P["warp"][:, None, None] * 1.2
    a = (X * cb + Y * sb) * R[:, :, None] * (2 * np.pi) / per + wamp * warp_a * 3.0
    b = (-X * sb + Y * cb) * R[:, :, None] * (2 * np.pi) / per + wamp * warp_b * 3.0
    ca_, cb_ = np.cos(a), np.cos(b)
    dots = _smoothstep(0.30, 0.85, ca_ * cb_)
    tubes = _smoothstep(0.35, 0.85, ca_ * np.cos(b / 3.5))
    gyri = _smoothstep(0.15, 0.90, np.cos(a + 2.2 * np.sin(b * 0.45)))
    # Fade patterns finer than the pixel grid can carry (small renders), instead of aliasing them.
    fade = _smoothstep(1.6, 3.0, P["pit_period"] * S / 128.0)[:, None, None]
    pit = (P["dots"][:, None, None] * dots + P["tubes"][:, None, None] * tubes
           + P["gyri"][:, None, None] * gyri) * fade

    pit_k = pit * P["pit_contrast"][:, None, None] * 0.55
    ves = np.exp(-(vnet / 0.14) ** 2) * P["vessels"][:, None, None] * 0.8
    mu = _smoothstep(-0.2, 1.1, mucus_f) * P["mucus"][:, None, None] * 0.75
    col = np.empty((B, W, W, 3), np.float32)
    for c, (pit_c, ves_c, mu_c) in enumerate(zip((0.42, 0.16, 0.14), (0.40, 0.16, 0.10), (0.94, 0.84, 0.52))):
        ch = np.broadcast_to(P["color"][:, c, None, None], (B, W, W)).copy()
        ch += (pit_c - ch) * pit_k
        ch += (ves_c - ch) * ves
        ch += (mu_c - ch) * mu
        col[..., c] = ch * mask

    dh = (dome + 0.012 * pit * P["height"][:, None, None]) * mask
    keep = (1.0 - mask)[..., None]
    full_mask = np.zeros((B, S, S), np.float32)
    for i in range(B):
        ys, xs = slice(y0[i], y0[i] + W), slice(x0[i], x0[i] + W)
        rgb[i, ys, xs] = rgb[i, ys, xs] * keep[i] + col[i]
        height[i, ys, xs] += dh[i]
        full_mask[i, ys, xs] = mask[i]
    return rgb, height, full_mask


@dataclass
class EndoLook:
    """Per-sample camera look (arrays of length B); ``sample_look`` draws a random one."""

    fov_radius: np.ndarray   # circle radius in half-image units (> 1 cuts the circle at the edges)
    fov_cx: np.ndarray
    fov_cy: np.ndarray
    blur: np.ndarray         # Gaussian sigma in pixels at 128 px
    gain: np.ndarray
    white: np.ndarray        # (B, 3) white balance
    vignette: np.ndarray
    tilt: np.ndarray         # (B, 2) wall tilt (oblique view: decides where highlights sit)
    light: np.ndarray        # (B, 2) light offset
    noise: np.ndarray        # sensor noise std


def sample_look(rng: np.random.Generator, n: int) -> EndoLook:
    u = rng.uniform(-1, 1, (n, 14)).astype(np.float32)
    return EndoLook(
        fov_radius=0.98 + 0.08 * u[:, 0],
        fov_cx=0.03 * u[:, 1],
        fov_cy=0.03 * u[:, 2],
        blur=0.9 + 0.7 * u[:, 3],
        gain=1.0 + 0.12 * u[:, 4],
        white=1.0 + 0.04 * u[:, 5:8],
        vignette=0.45 + 0.2 * u[:, 8],
        tilt=np.stack([np.cos(u[:, 9] * np.pi), np.sin(u[:, 9] * np.pi)], 1) * (0.7 + 0.2 * u[:, 10:11]),
        light=0.3 * u[:, 11:13],
        noise=0.012 + 0.008 * u[:, 13],
    )


def _blur(img: np.ndarray, sigma_px: np.ndarray) -> np.ndarray:
    """Per-image separable Gaussian blur of (N, S, S) with sigma (N,) pixels (edge-clamped)."""
    rad = int(np.ceil(max(float(sigma_px.max()), 0.1) * 2.5))
    if rad < 1:
        return img
    k = np.arange(-rad, rad + 1, dtype=np.float32)
    w = np.exp(-0.5 * (k[None, :] / np.maximum(sigma_px[:, None], 1e-3)) ** 2).astype(np.float32)
    w /= w.sum(1, keepdims=True)
    N, H, Wd = img.shape
    tmp = np.empty_like(img)
    p = np.pad(img, ((0, 0), (rad, rad), (0, 0)), mode="edge")
    out = np.zeros_like(img)
    for i in range(2 * rad + 1):  # in place: no fresh 10 MB temporaries per tap
        np.multiply(w[:, i, None, None], p[:, i:i + H], out=tmp)
        out += tmp
    p = np.pad(out, ((0, 0), (0, 0), (rad, rad)), mode="edge")
    out.fill(0.0)
    for i in range(2 * rad + 1):
        np.multiply(w[:, i, None, None], p[:, :, i:i + Wd], out=tmp)
        out += tmp
    return out


@lru_cache(maxsize=64)
def _glyph(ch: str) -> np.ndarray:
    return np.array([int(c) for c in _FONT.get(ch, _FONT[" "])], bool).reshape(5, 3)


def _text_stamp(text: str, scale: int) -> np.ndarray:
    """Boolean (5·scale, width) mask of ``text`` in the built-in 3x5 font."""
    gap = np.zeros((5, 1), bool)
    m = np.concatenate([a for ch in text.upper() for a in (_glyph(ch), gap)][:-1], 1)
    return m.repeat(scale, 0).repeat(scale, 1) if scale > 1 else m


def _overlay_texts(rng: np.random.Generator) -> list[str]:
    d = rng.integers(0, 10, 12)
    return [
        f"ID {d[0]}{d[1]}{d[2]}{d[3]}{d[4]}",
        f"20{d[5] % 3 + 2}{d[6]}-0{d[7] % 9 + 1}-1{d[8]}",
        f"{d[9] % 2}{d[10]}:{d[11] % 6}{d[0]}",
        rng.choice(["WLI", "NBI", "X1.0", "X1.5", "SIM"]).item(),
    ]


def apply_endoscope_look(
    rgb: np.ndarray,
    height: np.ndarray,
    seeds: np.ndarray,
    *,
    look: EndoLook | None = None,
    text: bool | np.ndarray = True,
    surface: tuple[int, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Scene (B,S,S,3) float + height (B,S,S) → uint8 endoscope frames: oblique lighting and
    shading, specular highlights, lens blur, vignetting, white balance and gain, sensor noise,
    circular field of view with a black border, and overlay text (ID, date, time, mode) in the
    border corners. Per-sample randomness comes from ``seeds`` (and ``look`` if given).

    The glints of the wet mucus film are a random pattern; by default it is drawn per sample in
    view coordinates (an image of its own). ``surface`` = (wall seed, offset (B, 2), zoom (B,))
    lays it on the wall instead, drawn from the wall seed over the wall's [-3, 3]^2
    (``_WALL_FILM_EXTENT``, the video's wall) and seen through each sample's view (centre ``offset``, half-width
    ``zoom``), so in a video the glints move with the tissue as the textures do, rather than
    staying fixed on the screen over every polyp. ``text`` may be one flag per sample."""
    seeds = np.asarray(seeds, np.int64).ravel()
    B, S = rgb.shape[0], rgb.shape[1]
    rngs = _rngs(seeds, 3)
    if B == 0:
        return np.zeros((0, S, S, 3), np.uint8)
    if look is None:
        look = _stack_looks([sample_look(r, 1) for r in rngs])
    t = _pixel_coords(S)
    X, Y = t[None, None, :], t[None, :, None]

    h = height + look.tilt[:, 0, None, None] * X * 0.5 + look.tilt[:, 1, None, None] * Y * 0.5
    gy, gx = np.gradient(h * (S / 2.0), axis=(1, 2))   # slopes: height and coords in half-image units
    nx, ny = -gx, -gy
    inv = 1.0 / np.sqrt(nx * nx + ny * ny + 1.0)
    lx, ly = look.light[:, 0, None, None], look.light[:, 1, None, None]
    ln = 1.0 / np.sqrt(lx * lx + ly * ly + 1.0)
    lambert = np.clip((nx * lx + ny * ly + 1.0) * inv * ln, 0.0, 1.0)
    # Coaxial light: highlights where the normal points back to the camera (half vector ≈ view).
    hx, hy, hz = lx * ln, ly * ln, ln + 1.0
    hn = 1.0 / np.sqrt(hx * hx + hy * hy + hz * hz)
    ndoth = np.clip((nx * hx + ny * hy + hz) * hn * inv, 0.0, 1.0)
    spec = np.exp(400.0 * (ndoth - 1.0))     # ≈ ndoth ** 400 near 1, much cheaper
    wet_noise = _noise(rngs, 30)   # drawn either way: the sensor noise below keeps its draws
    if surface is None:
        wet = _field(wet_noise, _basis(np.broadcast_to(t, (B, S)), 30, 1.0),
                     _basis(np.broadcast_to(t, (B, S)), 30, 1.0))
    else:
        wall_seed, offset, zoom = surface
        g = 30 * _WALL_FILM_EXTENT   # the view's density of film bumps, over the whole wall
        film = np.random.default_rng([int(wall_seed), 3]).standard_normal((g, g), dtype=np.float32)
        offset = np.asarray(offset, np.float32).reshape(B, 2)
        zoom = np.asarray(zoom, np.float32).reshape(B, 1)
        ext = float(_WALL_FILM_EXTENT)
        wet = _field(np.broadcast_to(film, (B, g, g)), _basis(offset[:, 1:2] + t[None] * zoom, g, ext),
                     _basis(offset[:, 0:1] + t[None] * zoom, g, ext))
    spec = np.clip(spec * 1.4 + _smoothstep(2.3, 2.8, wet) * 1.2, 0.0, 1.0)

    # Planar (B, 3, S, S) from here on: fast broadcasting and contiguous blur passes.
    shade = 0.35 + 0.65 * lambert
    spec *= 0.95
    img = np.empty((B, 3, S, S), np.float32)
    for c in range(3):
        img[:, c] = rgb[..., c] * shade + spec
    img = _blur(img.reshape(B * 3, S, S), np.repeat(look.blur * S / 128.0, 3)).reshape(B, 3, S, S)
    r2 = (X - look.fov_cx[:, None, None]) ** 2 + (Y - look.fov_cy[:, None, None]) ** 2
    rad = look.fov_radius[:, None, None]
    fov = _smoothstep(rad + 1.2 / S, rad - 1.2 / S, np.sqrt(r2))
    light = (1.0 - look.vignette[:, None, None] * r2 / 2.0) * fov
    noise = np.stack([r.standard_normal((S, S), dtype=np.float32) for r in rngs]) \
        * (look.noise[:, None, None] * fov)                               # luminance noise
    wb = look.gain[:, None] * look.white                                  # (B, 3)
    img *= wb[:, :, None, None] * light[:, None]
    img += (noise + 0.015 * (1.0 - fov))[:, None]
    img *= 255.0
    img += 0.5
    np.clip(img, 0, 255, out=img)
    out = np.ascontiguousarray(img.astype(np.uint8).transpose(0, 2, 3, 1))
    stamp = np.broadcast_to(np.asarray(text, dtype=bool), (B,))
    if stamp.any() and S >= 48:
        scale = max(1, S // 160)
        for i in np.flatnonzero(stamp):   # the text is each sample's last draw: the others do not depend on it
            texts = _overlay_texts(rngs[i])
            spots = [(2, 2), (2, S - 2 - 5 * scale), (S - 2 - 5 * scale, S - 2), (S - 2 - 5 * scale, 2)]
            for j, (txt, (yy, xx)) in enumerate(zip(texts, spots)):
                st = _text_stamp(txt, scale)
                hh, ww = st.shape
                x0 = xx - ww if j == 2 else xx
                x0 = max(0, min(S - ww, x0))
                y0 = max(0, min(S - hh, yy))
                region = out[i, y0:y0 + hh, x0:x0 + ww]
                region[st] = np.uint8(215)
    return out


_WALL_FILM_EXTENT = 3   # ``surface`` films cover [-3, 3]^2 wall units (synthvideo.WALL_EXTENT; a view of half-width 1 = one image)


def _stack_looks(looks: list[EndoLook]) -> EndoLook:
    return EndoLook(**{f.name: np.concatenate([getattr(lk, f.name) for lk in looks])
                       for f in fields(EndoLook)})


def render_frames(
    subclasses: np.ndarray, ambiguity: np.ndarray, size: int, seed: int, *, start: int = 0
) -> np.ndarray:
    """uint8 (B, S, S, 3) frames for the given subclasses and ambiguities. Sample i's look
    depends only on (seed, start + i, subclass, ambiguity) — not on the batch it is rendered in."""
    sub = np.asarray(subclasses, np.int64)
    B = len(sub)
    seeds = np.array([sample_seed(seed, start + i) for i in range(B)], np.int64)
    params = _stack_params([sample_polyp_params(np.random.default_rng([int(s), 0]), sub[i:i + 1],
                                                np.asarray(ambiguity)[i:i + 1])
                            for i, s in enumerate(seeds)])
    rgb, height = render_mucosa(seeds, size)
    rgb, height, _ = render_polyp(rgb, height, params, seeds)
    return apply_endoscope_look(rgb, height, seeds)


def _stack_params(ps: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in ps]) for k in ps[0]}


def render_in_chunks(n: int, work) -> None:
    """``work(start)`` for every CHUNK of ``n`` frames, on up to two threads (numpy releases the GIL;
    the chunks are independent, so the bytes do not depend on the threads)."""
    starts = range(0, n, CHUNK)
    workers = min(2, os.cpu_count() or 1, len(starts))
    if workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(work, starts))
    else:
        for s0 in starts:
            work(s0)


def sample_seed(seed: int, i: int) -> int:
    """The per-sample texture seed of sample ``i`` of a set generated with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(i), GENERATOR_VERSION]).generate_state(1, np.uint32)[0])


_sample_seed = sample_seed  # older name, used by the synthetic video


# ----------------------------------------------------------------------------------------------
# Labels: subclass, ambiguity → 7 votes → majority label
# ----------------------------------------------------------------------------------------------
def sample_labels(n: int, seed: int, visual: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """True class, visual subtype, ambiguity, votes, majority label and labelled subclass.

    ``visual`` fixes the visual subtypes (n of them) instead of drawing them from the priors."""
    rng = np.random.default_rng([int(seed), GENERATOR_VERSION, 7])
    priors = np.array([s.prior for s in SUBCLASS_STYLES])
    drawn = rng.choice(len(SUBCLASS_STYLES), size=n, p=priors / priors.sum())
    visual = drawn if visual is None else np.asarray(visual, np.int64).reshape(n)
    amb = (AMBIGUITY_MAX * rng.uniform(0.0, 1.0, n) ** AMBIGUITY_POWER).astype(np.float32)
    true_cls = np.asarray(SUBCLASS_TO_CLASS)[visual]
    k_other = rng.binomial(N_ANNOTATORS, amb)                     # annotators calling the other class
    votes = np.where(true_cls == POSITIVE_CLASS, N_ANNOTATORS - k_other, k_other)
    labels = (votes * 2 > N_ANNOTATORS).astype(np.int64)
    flipped = labels != true_cls
    sub = np.where(flipped, np.asarray(COUNTERPART)[visual], visual)
    return dict(visual=visual.astype(np.int64), ambiguity=amb, true_labels=true_cls.astype(np.int64),
                votes=votes.astype(np.int64), labels=labels, subclasses=sub.astype(np.int64))


def _check_size(n: int, size: int) -> None:
    if n < 1:
        raise UsageError(f"--n must be ≥ 1, got {n}")
    if not 16 <= size <= 1024:
        raise UsageError(f"--size must be between 16 and 1024 px, got {size}")


def make_synthetic(n: int, size: int = 128, seed: int = 0) -> LabeledSet:
    """The synthetic endoscopy set: ``n`` frames of ``size``² px taken from synthetic clips
    (``edgeskd.data.clips``): about 70 % show a polyp (1 frame per polyp, taken anywhere in the
    camera's visit), about 30 % bare wall (class ``no_polyp``). Split by clip, stratified by subclass,
    1/2 train : 1/6 val : 1/3 test of the clips (a 7,800-frame set: 3,923 train frames, 1,820
    test polyp frames).

    Same (n, size, seed) ⇒ same bytes. ``groups`` holds each frame's clip and polyp id;
    ``info`` carries the hidden truth: ``true_labels``, ``visual_subclasses``, ``ambiguity``
    and the label-noise rate on polyp frames. Wall frames have votes -1 (unknown).
    """
    from edgeskd.data.clips import render_clip_set

    _check_size(n, size)
    r = render_clip_set(n, size, seed)
    polyp = r["labels"] != BACKGROUND_CLASS
    noise = float(np.mean(r["labels"][polyp] != r["true_labels"][polyp])) if polyp.any() else 0.0
    return LabeledSet(
        name=f"synthetic-n{n}-s{size}-seed{seed}",
        format="synthetic",
        class_names=list(CLASS_NAMES),
        subclass_names=list(SUBCLASS_NAMES),
        subclass_to_class=list(SUBCLASS_TO_CLASS),
        labels=r["labels"],
        subclasses=r["subclasses"],
        splits=r["splits"],
        images=r["images"],
        votes=r["votes"],
        n_annotators=N_ANNOTATORS,
        background_class=BACKGROUND_CLASS,
        groups=r["groups"],
        info={
            "warnings": [],
            "true_labels": r["true_labels"],
            "visual_subclasses": r["visual_subclasses"],
            "ambiguity": r["ambiguity"],
            "label_noise_rate": noise,
            "positive_class": CLASS_NAMES[POSITIVE_CLASS],
            "background_class": CLASS_NAMES[BACKGROUND_CLASS],
            "subclass_definition": "visual subtype (a lesion whose majority vote flipped takes its "
                                   "look-alike partner in the other class); no_polyp: kind of bare wall",
            "split_source": "by clip (no polyp in two splits), stratified by subclass",
            "generator": {"version": GENERATOR_VERSION, "n": n, "size": size, "seed": seed, "layout": "clips"},
        },
    )


def make_synthetic_images(n: int, size: int = 128, seed: int = 0) -> LabeledSet:
    """The earlier still-image layout (for comparison): ``n`` independent images, one polyp each,
    always in full view, no polyp-free frames, 2 classes, random split by subclass: ``n`` frames of ``size``² px, split train/val/test
    1/4 : 1/4 : 1/2 by subclass (``TEST_SHARE``, ``VAL_SHARE``: a 5,200-frame set trains on 1,300,
    selects and calibrates on 1,300 and tests on 2,600).

    Same (n, size, seed) ⇒ same bytes. ``info`` carries the hidden truth: ``true_labels``,
    ``visual_subclasses``, ``ambiguity`` and the resulting ``label_noise_rate``.
    """
    _check_size(n, size)
    lab = sample_labels(n, seed)
    images = np.empty((n, size, size, 3), np.uint8)

    def work(s0: int) -> None:
        s1 = min(n, s0 + CHUNK)
        images[s0:s1] = render_frames(lab["visual"][s0:s1], lab["ambiguity"][s0:s1], size, seed, start=s0)

    render_in_chunks(n, work)
    splits = stratified_split(lab["subclasses"], seed, test=TEST_SHARE, val=VAL_SHARE)
    noise = float(np.mean(lab["labels"] != lab["true_labels"]))
    return LabeledSet(
        name=f"synthetic-images-n{n}-s{size}-seed{seed}",
        format="synthetic",
        class_names=list(POLYP_CLASS_NAMES),
        subclass_names=list(POLYP_SUBCLASS_NAMES),
        subclass_to_class=list(POLYP_SUBCLASS_TO_CLASS),
        labels=lab["labels"],
        subclasses=lab["subclasses"],
        splits=splits,
        images=images,
        votes=lab["votes"],
        n_annotators=N_ANNOTATORS,
        info={
            "warnings": [],
            "true_labels": lab["true_labels"],
            "visual_subclasses": lab["visual"],
            "ambiguity": lab["ambiguity"],
            "label_noise_rate": noise,
            "positive_class": CLASS_NAMES[POSITIVE_CLASS],
            "subclass_definition": "visual subtype (a lesion whose majority vote flipped takes its "
                                   "look-alike partner in the other class)",
            "generator": {"version": GENERATOR_VERSION, "n": n, "size": size, "seed": seed, "layout": "images"},
        },
    )
