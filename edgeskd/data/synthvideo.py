"""Synthetic endoscopy video with per-frame ground truth (`edgeskd synth-video`).

A camera moves over a colon wall: it rests on bare mucosa (frames with no polyp), glides to a
polyp, dwells on it with a hand-held tremor, and glides on to bare wall and the next polyp. It
reuses the renderers of ``edgeskd.data.synthetic`` so the polyps look like the training images of
the embedded default data set:

* the bare wall (mucosa texture, folds, vessels) is rendered once as a large canvas covering the
  whole wall (``render_mucosa`` with a zoomed-out camera); each frame samples the camera's view
  from it (bilinear, sub-pixel);
* the polyp of the current visit is rendered into each frame's view (``render_polyp``, placed and
  scaled by the camera), with its look, subclass and label drawn like the data set's
  (``sample_labels``, ``sample_polyp_params``); at a polyp the view is about as wide as a training
  image, so the polyp has the size the model was trained on. One polyp is on the wall at a time:
  it appears and goes while the camera rests on bare wall out of its reach, so a long video can
  reuse places without polyps overlapping;
* then the endoscope look (lighting, specular highlights, blur, vignetting, circular field of
  view: ``apply_endoscope_look``, one fixed camera look for the whole video, the glints of the
  wet film lying on the wall and moving with it, sensor noise drawn anew each frame) at ``render_size``
  px; the field is scaled up to the frame height and put on a black frame with overlay text in
  the border (patient id, date, running clock) — as endoscopy monitors show it. The classes of
  successive polyps alternate, so even a short clip shows both.

Ground truth (``OUT.labels.csv``): ``frame,class,subclass,has_polyp,visible,polyp_id``. A frame is
labelled with a polyp's class and subclass when at least ``min_visible`` of the polyp's area is
inside the field of view; otherwise ``has_polyp`` = 0 and the frame is labelled ``no_polyp`` with its
kind of bare wall (``mucosa_plain``, ``mucosa_lumen`` when a lumen is in view, ``mucosa_blurred``
when the camera moves fast: ``background_kind``, the rule the data set uses). ``visible`` is the
polyp's fraction in view (a frame with 0 < visible < 0.5 is a no-polyp frame with a polyp at the edge;
``polyp_id`` is empty on every no-polyp frame, so one polyp id always has one class).

The camera's speed blurs frames (``motion_blur``), and some bare-wall stops look down the lumen
(a dark hole ringed by folds, ``render_lumen``). The embedded data set draws its frames from clips
made by this planner (``edgeskd.data.clips``), with seeds of its own, so a video's polyps are
never among the data set's.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgeskd.data import synthetic
from edgeskd.errors import UsageError

_FRAME_NOISE_OFFSET = 70_000_000   # sample_seed(seed, _FRAME_NOISE_OFFSET + i): frame i's sensor noise
WALL_EXTENT = 3.0          # the synthetic wall spans [-3, 3]^2 wall units (a 128-px training image = [-1, 1]^2)


@dataclass
class PolypOnWall:
    x: float
    y: float
    visual: int
    label: int
    subclass: int
    ambiguity: float


@dataclass
class VideoPlan:
    polyps: list[PolypOnWall]
    cam: np.ndarray        # (F, 3): x, y, half-width of the view in wall units
    fps: float
    active: np.ndarray     # (F,): the polyp on the wall in each frame (one at a time)
    lumens: np.ndarray | None = None   # (n_polyps + 1, 3): x, y, radius of a lumen at each bare-wall stop (radius 0: none)
    segment: np.ndarray | None = None  # (F,): camera segment (2k: stop k → polyp k, 2k+1: polyp k → stop k+1)


def _ease(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)


def _balanced_subclasses(n: int, rng: np.random.Generator) -> np.ndarray:
    """Visual subclasses of ``n`` polyps: the classes alternate (from a random first one) and each
    class cycles through its subclasses in a seeded order, so a short clip already shows both classes
    and frame-level F1 is defined (drawing from the priors gave 8-s clips with one class only)."""
    owners = np.asarray(synthetic.POLYP_SUBCLASS_TO_CLASS)
    n_cls = int(owners.max()) + 1
    cycles = [rng.permutation(np.flatnonzero(owners == c)) for c in range(n_cls)]
    first = int(rng.integers(n_cls))
    cls = (first + np.arange(n)) % n_cls
    return np.array([cycles[c][(i // n_cls) % len(cycles[c])] for i, c in enumerate(cls)], np.int64)


LUMEN_STOPS = 0.4   # share of bare-wall stops that look down the lumen
SEPARATION = 1.75   # wall units between consecutive stops: a polyp is outside the field of view
                    # (radius ~0.95 x half-width ~1.05) while the camera rests on the bare wall beside it


def plan_video(n_frames: int, fps: float, seed: int, *, seconds_per_polyp: float = 2.5) -> tuple[VideoPlan, dict]:
    """Where the polyps sit, where the camera looks in every frame and which polyp is on the wall
    then (deterministic in ``seed``).

    The camera alternates between bare wall and polyps: stop e0, polyp 0, e1, polyp 1, ..., each stop
    at least SEPARATION from the one before. Polyp k exists from stop e_k to stop e_(k+1) — while
    the camera rests on bare wall between two polyps neither is in view, so the wall can hold a
    new polyp for each visit (a long video reuses places without two polyps ever overlapping)."""
    rng = np.random.default_rng([int(seed), 6061])
    n_polyps = max(1, int(round(n_frames / fps / seconds_per_polyp)))
    lab = synthetic.sample_labels(n_polyps, seed + 1009, visual=_balanced_subclasses(n_polyps, rng))
    spots: list[tuple[float, float]] = [tuple(rng.uniform(-1.9, 1.9, 2))]  # type: ignore[list-item]
    while len(spots) < 2 * n_polyps + 1:
        p = tuple(rng.uniform(-1.9, 1.9, 2))
        if np.hypot(p[0] - spots[-1][0], p[1] - spots[-1][1]) >= SEPARATION:
            spots.append(p)  # type: ignore[arg-type]
    polyp_spots, empty_spots = spots[1::2], spots[0::2]
    polyps = [PolypOnWall(float(x), float(y), int(lab["visual"][i]), int(lab["labels"][i]),
                          int(lab["subclasses"][i]), float(lab["ambiguity"][i]))
              for i, (x, y) in enumerate(polyp_spots)]
    # camera keyframes: empty, polyp, empty, polyp, ..., empty; dwell at polyps, glide between.
    # At a polyp the view is about as wide as a training image (half-width 1): the polyp has the
    # size the model was trained on.
    keys = []
    for i in range(n_polyps):
        keys.append((*empty_spots[i], rng.uniform(0.95, 1.1), 0.15))
        keys.append((polyps[i].x, polyps[i].y, rng.uniform(0.8, 1.15), 0.45))
    keys.append((*empty_spots[n_polyps], 1.0, 0.15))
    weights = np.array([k[3] for k in keys[:-1]], np.float64) + 0.4   # dwell + glide per segment
    bounds = np.concatenate([[0.0], np.cumsum(weights / weights.sum())]) * (n_frames - 1)
    bounds[-1] = n_frames - 1   # exact: a rounded-down last bound left the last frame with a zero-width view
    cam = np.zeros((n_frames, 3))
    f = np.arange(n_frames, dtype=np.float64)
    active = np.full(n_frames, -1, np.int64)
    segment = np.zeros(n_frames, np.int64)
    for s in range(len(keys) - 1):
        a, b = keys[s], keys[s + 1]
        sel = (f >= bounds[s]) & (f <= bounds[s + 1])
        active[sel] = s // 2   # segments 2k (e_k → polyp k) and 2k+1 (polyp k → e_k+1)
        segment[sel] = s
        span = max(bounds[s + 1] - bounds[s], 1e-9)
        u = (f[sel] - bounds[s]) / span
        dwell = a[3] / (a[3] + 0.4)                          # hold on key a, then glide to b
        t = _ease(np.clip((u - dwell) / max(1 - dwell, 1e-6), 0, 1))
        for j in range(3):
            cam[sel, j] = a[j] + (b[j] - a[j]) * t
    # hand-held tremor and breathing
    ph = rng.uniform(0, 2 * np.pi, 4)
    tsec = f / fps
    cam[:, 0] += 0.025 * np.sin(2 * np.pi * 0.9 * tsec + ph[0]) + 0.01 * np.sin(2 * np.pi * 3.1 * tsec + ph[1])
    cam[:, 1] += 0.025 * np.sin(2 * np.pi * 0.7 * tsec + ph[2]) + 0.01 * np.sin(2 * np.pi * 2.3 * tsec + ph[3])
    cam[:, 2] *= 1 + 0.03 * np.sin(2 * np.pi * 0.25 * tsec)
    lim = WALL_EXTENT - cam[:, 2] - 0.05
    cam[:, 0] = np.clip(cam[:, 0], -lim, lim)
    cam[:, 1] = np.clip(cam[:, 1], -lim, lim)
    # some bare-wall stops look down the lumen (drawn last: the draws above stay as they were)
    has = rng.uniform(size=n_polyps + 1) < LUMEN_STOPS
    jit = rng.uniform(-0.3, 0.3, (n_polyps + 1, 2))
    rad = rng.uniform(0.25, 0.4, n_polyps + 1)
    lumens = np.array([[x + jx, y + jy, r if h else 0.0]
                       for (x, y), (jx, jy), r, h in zip(empty_spots, jit, rad, has)], np.float64)
    return VideoPlan(polyps, cam, fps, active, lumens, segment), lab


MOTION_BLUR = 0.15 * 64   # blur sigma (px at 128 px) per view half-width moved per frame (exposure ~15 % of it)
MAX_MOTION_BLUR = 2.4
BLURRED_WALL = 1.2        # a polyp-free frame with at least this much motion blur is a "mucosa_blurred" frame
LUMEN_VISIBLE = 0.3       # ... and one showing at least this share of a lumen a "mucosa_lumen" frame


def motion_blur(cam: np.ndarray) -> np.ndarray:
    """(F, 3) camera path → (F,) extra blur sigma (px at 128 px) from the camera's speed in view
    half-widths per frame (the frame's own move, taken as the move to the next frame)."""
    step = np.hypot(*np.diff(cam[:, :2], axis=0).T) / cam[:-1, 2]
    speed = np.concatenate([step, step[-1:]]) if len(step) else np.zeros(len(cam))
    return np.minimum(speed * MOTION_BLUR, MAX_MOTION_BLUR)


def circle_visible(d: np.ndarray, r: np.ndarray, big: np.ndarray | float) -> np.ndarray:
    """Share of a disc of radius ``r`` whose centre lies ``d`` from the centre of a disc of radius
    ``big`` that lies inside it (the polyp's share inside the circular field of view)."""
    d, r = np.asarray(d, np.float64), np.asarray(r, np.float64)
    R = np.broadcast_to(np.asarray(big, np.float64), d.shape)
    out = np.zeros(d.shape)
    inside = d + r <= R
    out[inside] = 1.0
    part = ~inside & (d < r + R)
    if part.any():
        dd, rr, RR = d[part], r[part], R[part]
        a = np.clip((dd ** 2 + rr ** 2 - RR ** 2) / (2 * dd * rr + 1e-12), -1, 1)
        b = np.clip((dd ** 2 + RR ** 2 - rr ** 2) / (2 * dd * RR + 1e-12), -1, 1)
        k = np.clip((-dd + rr + RR) * (dd + rr - RR) * (dd - rr + RR) * (dd + rr + RR), 0, None)
        area = rr ** 2 * np.arccos(a) + RR ** 2 * np.arccos(b) - 0.5 * np.sqrt(k)
        out[part] = np.minimum(area / (np.pi * rr ** 2), np.minimum(1.0, (RR / rr) ** 2))
    return out


def background_kind(lumen_visible: float, blur: float) -> int:
    """Index in ``synthetic.BACKGROUND_SUBCLASSES`` of a polyp-free frame (the data set and the
    video label bare wall with this one rule): lumen in view, else blurred, else plain."""
    if lumen_visible >= LUMEN_VISIBLE:
        return 1
    if blur >= BLURRED_WALL:
        return 2
    return 0


def _sample_view(canvas: np.ndarray, cx: float, cy: float, half: float, size: int) -> np.ndarray:
    """Bilinear view of ``canvas`` (C, C, K) at wall centre (cx, cy), half-width ``half`` → (size, size, K)."""
    C = canvas.shape[0]
    px_per_unit = C / (2 * WALL_EXTENT)
    t = (np.arange(size) + 0.5) / size * 2 - 1

    def axis(c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = ((c + t * half) + WALL_EXTENT) * px_per_unit - 0.5
        s = np.clip(s, 0, C - 1)
        i0 = np.floor(s).astype(np.intp)
        i1 = np.minimum(i0 + 1, C - 1)
        return i0, i1, (s - i0).astype(np.float32)

    y0, y1, wy = axis(cy)
    x0, x1, wx = axis(cx)
    top, bot = canvas[y0], canvas[y1]
    rows = top + (bot - top) * wy[:, None, None]
    left, right = rows[:, x0], rows[:, x1]
    return left + (right - left) * wx[None, :, None]


def _overlay_text(img: np.ndarray, lines: list[tuple[int, int, str]], size: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    pil = Image.fromarray(img)
    d = ImageDraw.Draw(pil)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:
        font = ImageFont.load_default()
    for x, y, s in lines:
        d.text((x, y), s, font=font, fill=(225, 225, 225))
    return np.asarray(pil)


class SynthVideo:
    """Frame generator + ground truth for ``n_frames`` of ``width`` x ``height`` at ``fps``."""

    def __init__(self, width: int = 1280, height: int = 720, fps: float = 30.0, seconds: float = 10.0,
                 seed: int = 0, *, render_size: int = 192, min_visible: float = 0.5) -> None:
        if width < 64 or height < 64 or width > 7680 or height > 4320:
            raise UsageError(f"--size {width}x{height}: width and height must be between 64 and 7680x4320")
        if not 1 <= fps <= 240:
            raise UsageError(f"--fps {fps} must be between 1 and 240")
        if not 0 < seconds <= 3600:
            raise UsageError(f"--seconds {seconds} must be in (0, 3600]")
        self.width, self.height, self.fps, self.seed = int(width), int(height), float(fps), int(seed)
        self.n_frames = max(1, int(round(seconds * fps)))
        self.render_size = int(render_size)
        self.min_visible = float(min_visible)
        self.plan, _ = plan_video(self.n_frames, self.fps, seed)
        # the bare wall: canvas of C x C px over [-3, 3]^2, i.e. render_size px per view of half-width 1
        C = int(round(self.render_size * WALL_EXTENT))
        wall_seed = np.array([synthetic._sample_seed(seed, 10_000_019)], np.int64)
        rgb, hgt = synthetic.render_mucosa(wall_seed, C, zoom=WALL_EXTENT)
        self.canvas = np.concatenate([rgb[0], hgt[0][..., None]], axis=-1).astype(np.float32)
        # each polyp: its look (as a training image's, drawn from its subclass and ambiguity) and its
        # area when seen as in a training image (view half-width 1), for the visible fraction
        self.polyp_params: list[dict[str, np.ndarray]] = []
        self.polyp_seeds: list[np.ndarray] = []
        self.polyp_area: list[float] = []
        R = self.render_size
        for k, p in enumerate(self.plan.polyps):
            pseed = np.array([synthetic._sample_seed(seed, 20_000_000 + k)], np.int64)
            params = synthetic.sample_polyp_params(np.random.default_rng([int(pseed[0]), 0]),
                                            np.array([p.visual]), np.array([p.ambiguity], np.float32))
            self.polyp_params.append(params)
            self.polyp_seeds.append(pseed)
            flat = np.zeros((1, R, R, 3), np.float32), np.zeros((1, R, R), np.float32)
            centred = dict(params, cx=np.zeros(1, np.float32), cy=np.zeros(1, np.float32))
            self.polyp_area.append(float(synthetic.render_polyp(*flat, centred, pseed)[2].sum()))
        look_rng = np.random.default_rng([seed, 4242])
        self.look = synthetic.sample_look(look_rng, 1)
        self.look.fov_cx[:] = 0.0
        self.look.fov_cy[:] = 0.0
        self.look_seed = np.array([synthetic._sample_seed(seed, 30_000_001)], np.int64)
        self.blur = motion_blur(self.plan.cam)   # extra blur per frame from the camera's speed
        tt = (np.arange(R) + 0.5) / R * 2 - 1
        self.fov = (tt[None, :] ** 2 + tt[:, None] ** 2) <= float(self.look.fov_radius[0]) ** 2
        # layout: the square field, height-sized, right of centre; text in the left border
        self.side = min(self.width, self.height)
        self.fx = min(self.width - self.side, (self.width - self.side) // 2 + (self.width - self.side) // 4)
        self.fy = (self.height - self.side) // 2
        rng = np.random.default_rng([seed, 77])
        self.patient = f"ID {rng.integers(10000, 99999)}"
        self.date = f"2026-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
        self.t0 = int(rng.integers(8 * 3600, 17 * 3600))

    def _polyp_in_view(self, k: int, i: int) -> dict[str, np.ndarray]:
        """Polyp ``k``'s parameters in frame ``i``'s view (half-image units of the view)."""
        cx, cy, half = self.plan.cam[i]
        p, params = self.plan.polyps[k], self.polyp_params[k]
        return dict(params, cx=np.array([(p.x - cx) / half], np.float32), cy=np.array([(p.y - cy) / half], np.float32),
                    radius=params["radius"] / np.float32(half), pit_period=params["pit_period"] / np.float32(half))

    def _lumen_in_view(self, i: int) -> np.ndarray | None:
        """(cx, cy, radius) in frame ``i``'s view units of the lumen at the stop the camera is at or
        moves from/to (segments 2k-1 and 2k belong to stop k), or None."""
        seg = int(self.plan.segment[i])   # type: ignore[index]
        stop = (seg + 1) // 2
        x, y, r = self.plan.lumens[stop]   # type: ignore[index]
        if r <= 0:
            return None
        cx, cy, half = self.plan.cam[i]
        return np.array([(x - cx) / half, (y - cy) / half, r / half], np.float32)

    def background_subclass(self, i: int) -> int:
        """Index in ``synthetic.SUBCLASS_NAMES`` of frame ``i`` when it counts as polyp-free."""
        lum = self._lumen_in_view(i)
        vis = 0.0 if lum is None else float(circle_visible(np.hypot(lum[0], lum[1]), lum[2],
                                                           float(self.look.fov_radius[0])))
        return synthetic.N_POLYP_SUBCLASSES + background_kind(vis, float(self.blur[i]))

    def _render(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
        """(rgb, height, polyp mask or None, polyp index or -1) of frame ``i``'s view, before the look."""
        cx, cy, half = self.plan.cam[i]
        view = _sample_view(self.canvas, cx, cy, half, self.render_size)
        rgb, hgt = view[None, ..., :3].copy(), view[None, ..., 3].copy()
        lum = self._lumen_in_view(i)
        if lum is not None and np.hypot(lum[0], lum[1]) < 1.5 + 3.2 * lum[2]:
            rgb, hgt = synthetic.render_lumen(rgb, hgt, lum[None])
        k = int(self.plan.active[i])
        if k < 0:
            return rgb, hgt, None, k
        rgb, hgt, mask = synthetic.render_polyp(rgb, hgt, self._polyp_in_view(k, i), self.polyp_seeds[k])
        return rgb, hgt, mask[0], k

    def truth(self, i: int) -> tuple[int | None, float]:
        """(index of the polyp on the wall or None, the fraction of it inside the field of view) for frame ``i``."""
        k = int(self.plan.active[i])
        if k < 0:
            return None, 0.0
        R = self.render_size
        flat = np.zeros((1, R, R, 3), np.float32), np.zeros((1, R, R), np.float32)
        mask = synthetic.render_polyp(*flat, self._polyp_in_view(k, i), self.polyp_seeds[k])[2][0]
        half = float(self.plan.cam[i][2])
        vis = float((mask * self.fov).sum()) / max(self.polyp_area[k] / half ** 2, 1e-9)
        return k, min(1.0, vis)

    def frame_seed(self, i: int) -> np.ndarray:
        """Seed of frame ``i``'s sensor noise: a new draw every frame, as a sensor's."""
        return np.array([synthetic._sample_seed(self.seed, _FRAME_NOISE_OFFSET + i)], np.int64)

    def frame(self, i: int) -> np.ndarray:
        from PIL import Image

        from dataclasses import replace

        rgb, hgt, _, _ = self._render(i)
        look = replace(self.look, blur=self.look.blur + np.float32(self.blur[i]))
        cx, cy, half = self.plan.cam[i]
        sq = synthetic.apply_endoscope_look(rgb, hgt, self.frame_seed(i), look=look, text=False,
                                            surface=(int(self.look_seed[0]), np.array([cx, cy]), np.array([half]))
                                            )[0]
        if self.side != self.render_size:   # the optics: PIL's filter is fine here (not the model's resize)
            sq = np.asarray(Image.fromarray(sq).resize((self.side, self.side), Image.BILINEAR))
        out = np.full((self.height, self.width, 3), 3, np.uint8)
        out[self.fy:self.fy + self.side, self.fx:self.fx + self.side] = sq
        t = self.t0 + int(i / self.fps)
        fs = max(10, self.height // 36)
        lines = [(fs // 2, fs // 2, self.patient), (fs // 2, fs // 2 + int(fs * 1.4), self.date),
                 (fs // 2, self.height - 2 * fs, f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}"),
                 (fs // 2, self.height - int(3.4 * fs), "WLI  X1.0")]
        return _overlay_text(out, lines, fs)

    def frames(self, workers: int | None = None) -> Iterator[np.ndarray]:
        """All frames in order; rendered by a small thread pool (numpy releases the GIL), the
        bytes do not depend on the number of workers."""
        import os
        from concurrent.futures import ThreadPoolExecutor

        workers = workers or min(4, os.cpu_count() or 1)
        if workers <= 1:
            for i in range(self.n_frames):
                yield self.frame(i)
            return
        with ThreadPoolExecutor(workers) as ex:
            ahead = 2 * workers
            futs = [ex.submit(self.frame, i) for i in range(min(ahead, self.n_frames))]
            for i in range(self.n_frames):
                if i + ahead < self.n_frames:
                    futs.append(ex.submit(self.frame, i + ahead))
                yield futs[i].result()
                futs[i] = None  # type: ignore[call-overload]

    def labels_csv(self) -> str:
        names = synthetic.CLASS_NAMES
        subs = synthetic.SUBCLASS_NAMES
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["frame", "class", "subclass", "has_polyp", "visible", "polyp_id"])
        for i in range(self.n_frames):
            k, vis = self.truth(i)
            if k is not None and vis >= self.min_visible:
                p = self.plan.polyps[k]
                w.writerow([i, names[p.label], subs[p.subclass], 1, f"{vis:.3f}", k])
            else:
                bg = self.background_subclass(i)
                w.writerow([i, names[synthetic.BACKGROUND_CLASS], subs[bg], 0, f"{vis:.3f}", ""])
        return buf.getvalue()


def labels_path_for(video: str | Path) -> Path:
    """OUT.mp4 → OUT.labels.csv"""
    p = Path(video)
    return p.with_name(p.stem + ".labels.csv")


def write_synth_video(out: str | Path, *, seconds: float = 10.0, fps: float = 30.0, size: tuple[int, int] = (1280, 720),
                      seed: int = 0, render_size: int = 192, progress=None) -> dict:
    """Render, encode (H.264 via PyAV) and write ``out`` + ``OUT.labels.csv`` atomically."""
    from edgeskd.data.video_writer import check_video_path, encode_video
    from edgeskd.utils.io import atomic_path, write_text_atomic

    out = check_video_path(out)
    video = SynthVideo(size[0], size[1], fps, seconds, seed, render_size=render_size)
    labels = video.labels_csv()

    def frames() -> Iterator[np.ndarray]:
        for i, f in enumerate(video.frames()):
            if progress is not None:
                progress(i, video.n_frames)
            yield f

    pix_fmt = "yuv420p" if size[0] % 2 == 0 and size[1] % 2 == 0 else "yuv444p"
    with atomic_path(out) as tmp:
        n = encode_video(tmp, frames(), fps=fps, pix_fmt=pix_fmt)
    labels_file = write_text_atomic(labels_path_for(out), labels)
    rows = list(csv.DictReader(io.StringIO(labels)))
    with_polyp = sum(r["has_polyp"] == "1" for r in rows)
    return {"video": str(out), "labels": str(labels_file), "frames": n, "fps": fps, "size": list(size),
            "polyps": len(video.plan.polyps), "frames_with_polyp": with_polyp,
            "frames_without_polyp": n - with_polyp, "pix_fmt": pix_fmt}
