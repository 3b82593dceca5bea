"""The ShapesBench scene model: what is in a clip, how it moves, and the labels and events that follow.

A scene is plain data (frozen dataclasses of numbers and names), so it can be stored as json, sent
to worker processes, rendered and reversed. Every object state is a function of normalised time
u in [0, 1] (u = k / (num_frames - 1) at frame k), which makes time reversal exact: the reversed
scene at u shows what the original shows at 1 - u, so its rendered frames are the original frames
in reverse order and its motion label is the opposite class.
"""

from __future__ import annotations

import colorsys
import functools
import itertools
import math
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from vidlab.errors import VidlabError


class ShapesBenchError(VidlabError):
    """A ShapesBench dataset or scene cannot be made or read as asked."""


SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")

# Rotational symmetry in degrees; a rotation must stay below half of it between any two frames a
# model may sample, or clockwise and counter-clockwise look alike. The circle has none to see.
SYMMETRY_DEG: dict[str, float] = {"square": 90.0, "triangle": 120.0, "star": 72.0, "cross": 90.0, "heart": 360.0}

# Saturated object colours, far apart in hue; backgrounds are kept muted so objects always stand out.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 190, 60),
    "cyan": (30, 210, 220),
    "blue": (40, 80, 235),
    "purple": (150, 60, 220),
    "pink": (245, 110, 190),
}

# Circumscribed diameter of the primary object at the middle frame, as a fraction of the frame side.
OBJECT_SIZES: dict[str, float] = {"small": 0.22, "medium": 0.29, "large": 0.36}
SECONDARY_SIZE = (0.13, 0.16)  # always smaller than any primary at the middle frame

# The `motion` label: the primary object's directional motion. Reversal maps each class to its pair.
MOTION_CLASSES: tuple[str, ...] = ("left", "right", "up", "down", "clockwise", "counterclockwise", "grow", "shrink")
OPPOSITE: dict[str, str] = {
    "left": "right", "right": "left", "up": "down", "down": "up",
    "clockwise": "counterclockwise", "counterclockwise": "clockwise", "grow": "shrink", "shrink": "grow",
}
# The `appearance` label: the colour of the primary (largest at the middle frame) object, for clips
# where it keeps one colour. The `shape` label: its shape, for every clip. Both show in any frame.
APPEARANCE_CLASSES: tuple[str, ...] = tuple(COLORS)
LABEL_TASKS: dict[str, tuple[str, ...]] = {"motion": MOTION_CLASSES, "appearance": APPEARANCE_CLASSES, "shape": SHAPES}

# A program is what the primary object does: one of the 8 directional motions, bouncing off the
# walls, or changing colour in place. The generator balances programs across the dataset.
PROGRAMS: tuple[str, ...] = MOTION_CLASSES + ("bounce", "color")

BACKGROUND_KINDS: tuple[str, ...] = ("flat", "gradient", "noise")

MIN_FRAMES = 16
BOUNCE_MIN_STEP = 0.012  # fraction of the frame side per frame, along each axis a bouncer hits a wall on
MIDDLE_BOX = 0.12  # the middle-frame centre of every non-bouncing primary lies within +-12% of the frame centre
TRANSLATION = (0.28, 0.36)  # translation distance, fraction of the frame side
SCALE_CHANGE = (0.25, 0.35)  # grow/shrink: size goes from mid*(1-k) to mid*(1+k) or back
# Total rotation as a fraction of the symmetry angle, capped at 180 degrees (the heart, mirror
# symmetric, would otherwise turn so far that small hearts look turned either way).
ROTATION_OF_SYMMETRY = (0.2, 0.35)
MAX_ROTATION_PERIOD_DEG = 180.0


@dataclass(frozen=True)
class Background:
    """A static backdrop: flat colour, linear gradient between two colours, or smooth value noise."""

    kind: str
    colors: tuple[tuple[int, int, int], ...]
    angle_deg: float = 0.0
    noise_seed: int = 0


@dataclass(frozen=True)
class ShapeObject:
    """One object and its trajectory over normalised time u in [0, 1].

    Position moves linearly from `start` to `end`, unless `velocity` is set: then it starts at
    `start`, moves by `velocity` * u and reflects off the walls of the box `bounds`
    (x_lo, y_lo, x_hi, y_hi) that its centre may occupy. Angle and size change linearly. Colour is
    `colors[i]`, where i counts the `color_changes` times that u has reached.
    """

    shape: str
    colors: tuple[str, ...]
    size_class: str
    start: tuple[float, float]
    end: tuple[float, float]
    angle: tuple[float, float]
    size: tuple[float, float]
    color_changes: tuple[float, ...] = ()
    velocity: tuple[float, float] | None = None
    bounds: tuple[float, float, float, float] | None = None

    def position(self, u: float | Fraction) -> tuple[float, float]:
        if self.velocity is None:
            return (_lerp(self.start[0], self.end[0], u), _lerp(self.start[1], self.end[1], u))
        assert self.bounds is not None
        x_lo, y_lo, x_hi, y_hi = self.bounds
        return (
            _fold(self.start[0] + self.velocity[0] * u, x_lo, x_hi),
            _fold(self.start[1] + self.velocity[1] * u, y_lo, y_hi),
        )

    def angle_at(self, u: float | Fraction) -> float:
        return _lerp(self.angle[0], self.angle[1], u)

    def size_at(self, u: float | Fraction) -> float:
        return _lerp(self.size[0], self.size[1], u)

    def color_at(self, u: float | Fraction) -> str:
        return self.colors[sum(u >= c for c in self.color_changes)]

    def reversed(self) -> ShapeObject:
        """The object played backwards: state at u becomes state at 1 - u."""
        if self.velocity is None:
            start, end, velocity = self.end, self.start, None
        else:
            assert self.bounds is not None
            x_lo, y_lo, x_hi, y_hi = self.bounds
            start = end = self.position(1.0)
            # Leave the end point against the velocity it arrived with: each reflection flips an axis.
            velocity = (
                -self.velocity[0] * _fold_sign(self.start[0] + self.velocity[0], x_lo, x_hi),
                -self.velocity[1] * _fold_sign(self.start[1] + self.velocity[1], y_lo, y_hi),
            )
        return replace(
            self,
            colors=self.colors[::-1],
            start=start,
            end=end,
            angle=self.angle[::-1],
            size=self.size[::-1],
            color_changes=tuple(1.0 - c for c in reversed(self.color_changes)),
            velocity=velocity,
        )

    def wall_contacts(self) -> list[tuple[float, str]]:
        """(u, wall) of each bounce, in time order; walls are 'left', 'right', 'top', 'bottom'."""
        if self.velocity is None:
            return []
        assert self.bounds is not None
        x_lo, y_lo, x_hi, y_hi = self.bounds
        contacts = _axis_contacts(self.start[0] - x_lo, self.velocity[0], x_hi - x_lo, ("left", "right"))
        contacts += _axis_contacts(self.start[1] - y_lo, self.velocity[1], y_hi - y_lo, ("top", "bottom"))
        return sorted(contacts)


@dataclass(frozen=True)
class Scene:
    """Everything needed to render, sonify and annotate one clip (or one still image: num_frames == 1)."""

    width: int
    height: int
    fps: int
    num_frames: int
    program: str
    background: Background
    objects: tuple[ShapeObject, ...]  # objects[0] is the primary, drawn last (on top)
    gop_size: int = 12
    max_b_frames: int = 0
    audio_codec: str = "pcm_s16le"
    audio_seed: int = 0

    @property
    def primary(self) -> ShapeObject:
        return self.objects[0]

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    def frame_u(self, k: int) -> Fraction:
        """Normalised time of frame k, exact (see `_lerp`); a still image shows its middle."""
        return Fraction(k, self.num_frames - 1) if self.num_frames > 1 else Fraction(1, 2)

    def u_to_seconds(self, u: float) -> float:
        """Presentation time of normalised time u (frame k is shown at k / fps)."""
        return u * (self.num_frames - 1) / self.fps

    def reversed(self) -> Scene:
        """The same clip played backwards (frames in reverse order, events mirrored in time)."""
        program = OPPOSITE.get(self.program, self.program)
        return replace(self, program=program, objects=tuple(o.reversed() for o in self.objects))

    def events(self) -> list[dict]:
        """Audible events in time order: wall contacts (a click) and colour changes (a blip)."""
        found: list[dict] = []
        for obj_index, obj in enumerate(self.objects):
            for u, wall in obj.wall_contacts():
                found.append({"u": u, "kind": "bounce", "wall": wall, "object": obj_index})
            for i, u in enumerate(obj.color_changes):
                found.append({"u": u, "kind": "color", "color": obj.colors[i + 1], "object": obj_index})
        for e in found:
            e["time_s"] = self.u_to_seconds(e["u"])
        return sorted(found, key=lambda e: e["u"])


def motion_label(scene: Scene) -> str | None:
    """The primary object's directional motion class, read off its trajectory; None for bounce/colour/static."""
    obj = scene.primary
    if obj.velocity is not None:
        return None
    dx, dy = obj.end[0] - obj.start[0], obj.end[1] - obj.start[1]
    if abs(dx) > 1e-6 or abs(dy) > 1e-6:
        if abs(dx) >= abs(dy):
            return "right" if dx > 0 else "left"
        return "down" if dy > 0 else "up"  # image rows grow downwards
    if obj.angle[1] != obj.angle[0]:
        return "clockwise" if obj.angle[1] > obj.angle[0] else "counterclockwise"
    if obj.size[1] != obj.size[0]:
        return "grow" if obj.size[1] > obj.size[0] else "shrink"
    return None


def appearance_label(scene: Scene) -> str | None:
    """The primary object's colour, visible in any single frame; None when it changes colour."""
    colors = scene.primary.colors
    return colors[0] if len(colors) == 1 else None


def scene_labels(scene: Scene) -> dict[str, str | None]:
    """Every label task's class name for the scene (None where the task does not apply)."""
    return {"motion": motion_label(scene), "appearance": appearance_label(scene), "shape": scene.primary.shape}


# ----------------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class SceneSpec:
    """The ranges a preset draws scenes from."""

    width: int
    height: int
    fps_choices: tuple[int, ...]
    duration_s: tuple[float, float]
    secondary_probability: float = 0.35
    gop_choices: tuple[str, ...] = ("half", "one", "two", "single")
    b_frame_choices: tuple[int, ...] = (0, 2)
    aac_probability: float = 0.25  # the rest get 16-bit PCM: both audio decoders see use, AAC's cost stays low

    def __post_init__(self) -> None:
        # Colour changes and bounces need room: 16 frames leave 3 frames on each side of the middle.
        if min(self.fps_choices) * self.duration_s[0] < MIN_FRAMES:
            raise ShapesBenchError(f"clips need at least {MIN_FRAMES} frames; fps {min(self.fps_choices)} "
                                   f"x {self.duration_s[0]} s is fewer")
        if min(self.width, self.height) < 32 or self.width % 2 or self.height % 2:
            raise ShapesBenchError(f"frame size must be even and at least 32, got {self.width}x{self.height}")


def sample_scene(spec: SceneSpec, program: str, rng: np.random.Generator) -> Scene:
    """Draw one clip whose primary object runs `program`.

    Why the shared middle-frame distribution: the centre, size, angle and colours of the primary at
    the middle frame are drawn the same way for every directional program, and a class and its
    opposite are mirror images in time, so no single frame tells the motion class apart.
    """
    if program not in PROGRAMS:
        raise ShapesBenchError(f"unknown program {program!r}; expected one of {PROGRAMS}")
    fps = int(rng.choice(spec.fps_choices))
    num_frames = max(MIN_FRAMES, round(fps * rng.uniform(*spec.duration_s)))
    side = float(min(spec.width, spec.height))
    background = sample_background(rng)
    if program == "bounce":
        primary = _sample_bouncer(rng, spec, num_frames, side)
    else:
        primary = _sample_primary(rng, spec, program, num_frames, side)
    objects: tuple[ShapeObject, ...] = (primary,)
    if program != "bounce" and rng.random() < spec.secondary_probability:
        secondary = _sample_secondary(rng, spec, primary, side)
        if secondary is not None:
            objects = (primary, secondary)
    gop_kind = str(rng.choice(spec.gop_choices))
    gop_size = {"half": max(2, fps // 2), "one": fps, "two": 2 * fps, "single": 10 * num_frames}[gop_kind]
    return Scene(
        width=spec.width,
        height=spec.height,
        fps=fps,
        num_frames=num_frames,
        program=program,
        background=background,
        objects=objects,
        gop_size=gop_size,
        max_b_frames=int(rng.choice(spec.b_frame_choices)),
        audio_codec="aac" if rng.random() < spec.aac_probability else "pcm_s16le",
        audio_seed=int(rng.integers(2**31)),
    )


def sample_still(spec: SceneSpec, rng: np.random.Generator) -> Scene:
    """A one-frame scene for image-text data: the same objects and backgrounds, nothing moving."""
    side = float(min(spec.width, spec.height))
    background = sample_background(rng)
    primary = _static_primary(rng, spec, side)
    objects: tuple[ShapeObject, ...] = (primary,)
    if rng.random() < spec.secondary_probability:
        secondary = _sample_secondary(rng, spec, primary, side)
        if secondary is not None:
            objects = (primary, secondary)
    return Scene(width=spec.width, height=spec.height, fps=1, num_frames=1, program="still",
                 background=background, objects=objects)


def sample_background(rng: np.random.Generator) -> Background:
    kind = str(rng.choice(BACKGROUND_KINDS))
    n_colors = 1 if kind == "flat" else 2
    return Background(
        kind=kind,
        colors=tuple(_muted_color(rng) for _ in range(n_colors)),
        angle_deg=float(rng.uniform(0, 360)),
        noise_seed=int(rng.integers(2**31)),
    )


def _muted_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A dark, desaturated colour, so every palette colour contrasts with it."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.35), rng.uniform(0.12, 0.45))
    return (int(rgb[0] * 255), int(rgb[1] * 255), int(rgb[2] * 255))


def _middle_state(
    rng: np.random.Generator, spec: SceneSpec, side: float
) -> tuple[str, float, tuple[float, float], float]:
    """Size class, diameter, centre and angle of a primary at its middle frame (shared by all programs)."""
    size_class = str(rng.choice(list(OBJECT_SIZES)))
    diameter = OBJECT_SIZES[size_class] * side * rng.uniform(0.95, 1.05)
    box = MIDDLE_BOX * side
    centre = (spec.width / 2 + rng.uniform(-box, box), spec.height / 2 + rng.uniform(-box, box))
    return size_class, diameter, centre, float(rng.uniform(0, 360))


def _static_primary(rng: np.random.Generator, spec: SceneSpec, side: float) -> ShapeObject:
    size_class, diameter, centre, angle = _middle_state(rng, spec, side)
    return ShapeObject(
        shape=str(rng.choice(SHAPES)), colors=(str(rng.choice(list(COLORS))),), size_class=size_class,
        start=centre, end=centre, angle=(angle, angle), size=(diameter, diameter),
    )


def _sample_primary(
    rng: np.random.Generator, spec: SceneSpec, program: str, num_frames: int, side: float
) -> ShapeObject:
    shapes = [s for s in SHAPES if s in SYMMETRY_DEG] if program in ("clockwise", "counterclockwise") else list(SHAPES)
    shape = str(rng.choice(shapes))
    size_class, diameter, centre, angle = _middle_state(rng, spec, side)
    start = end = centre
    angles = (angle, angle)
    sizes = (diameter, diameter)
    colors = (str(rng.choice(list(COLORS))),)
    changes: tuple[float, ...] = ()
    if program in ("left", "right", "up", "down"):
        half = 0.5 * rng.uniform(*TRANSLATION) * side
        dx, dy = {"left": (-half, 0), "right": (half, 0), "up": (0, -half), "down": (0, half)}[program]
        start, end = (centre[0] - dx, centre[1] - dy), (centre[0] + dx, centre[1] + dy)
    elif program in ("clockwise", "counterclockwise"):
        half = 0.5 * rng.uniform(*ROTATION_OF_SYMMETRY) * min(SYMMETRY_DEG[shape], MAX_ROTATION_PERIOD_DEG)
        sign = 1.0 if program == "clockwise" else -1.0
        angles = (angle - sign * half, angle + sign * half)
    elif program in ("grow", "shrink"):
        k = rng.uniform(*SCALE_CHANGE)
        small, large = diameter * (1 - k), diameter * (1 + k)
        sizes = (small, large) if program == "grow" else (large, small)
    elif program == "color":
        colors, changes = _color_sequence(rng, num_frames)
    return ShapeObject(shape=shape, colors=colors, size_class=size_class, start=start, end=end,
                       angle=angles, size=sizes, color_changes=changes)


def _color_sequence(rng: np.random.Generator, num_frames: int) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """2-3 distinct colours; changes fall half-way between frames (so no frame sits on one and
    reversal maps frames exactly), inside the middle 60% of the clip, at least 3 frames apart.

    Why the placement: the middle frame must not tell which colour comes first. One change falls
    before or after the middle frame alike; two changes fall both before it, around it or both
    after it with equal odds, so the middle frame shows each of the three colours equally often.
    """
    n_changes = int(rng.integers(1, 3))
    colors = tuple(str(c) for c in rng.choice(list(COLORS), size=n_changes + 1, replace=False))
    last = num_frames - 1
    middle = last // 2
    candidates = [k for k in range(last) if 0.2 <= (k + 0.5) / last <= 0.8]
    before = [k for k in candidates if k < middle]
    after = [k for k in candidates if k >= middle]
    if n_changes == 2:
        placement = int(rng.integers(3))
        for _ in range(100):
            if placement == 1:
                picks = [int(rng.choice(before)), int(rng.choice(after))]
            else:
                picks = sorted(int(k) for k in rng.choice(before if placement == 0 else after, size=2, replace=False))
            if picks[1] - picks[0] >= 3:
                return colors, tuple((k + 0.5) / last for k in picks)
        colors = colors[:2]
    return colors, ((int(rng.choice(before if rng.random() < 0.5 else after)) + 0.5) / last,)


def _sample_bouncer(rng: np.random.Generator, spec: SceneSpec, num_frames: int, side: float) -> ShapeObject:
    """A rigid object that moves straight and reflects off the walls 1-3 times.

    Bounces are kept at least 2.5 frames from either end and 3 frames apart, and the object crosses
    at least BOUNCE_MIN_STEP of the frame side per frame along each axis it bounces on, so every
    click has clearly visible motion on both sides of it and clicks never blur together.
    """
    shape = str(rng.choice(SHAPES))
    size_class = str(rng.choice(list(OBJECT_SIZES)))
    diameter = OBJECT_SIZES[size_class] * side * rng.uniform(0.95, 1.05)
    angle = float(rng.uniform(0, 360))
    vertices = unit_polygon(shape, angle) * (diameter / 2)
    x_lo, y_lo = -vertices.min(axis=0)
    x_hi, y_hi = spec.width - vertices.max(axis=0)[0], spec.height - vertices.max(axis=0)[1]
    bounds = (float(x_lo), float(y_lo), float(x_hi), float(y_hi))
    last = num_frames - 1
    for _ in range(200):
        start = (float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi)))
        heading = rng.uniform(0, 2 * math.pi)
        # Distance in units of the free span, so the bounce count says nothing about the object's size.
        distance = rng.uniform(0.8, 2.2) * 0.5 * ((x_hi - x_lo) + (y_hi - y_lo))
        velocity = (distance * math.cos(heading), distance * math.sin(heading))
        candidate = ShapeObject(shape=shape, colors=(str(rng.choice(list(COLORS))),), size_class=size_class,
                                start=start, end=start, angle=(angle, angle), size=(diameter, diameter),
                                velocity=velocity, bounds=bounds)
        contacts = candidate.wall_contacts()
        frames = [u * last for u, _ in contacts]
        axis_steps = [abs(velocity[0 if wall in ("left", "right") else 1]) / last for _, wall in contacts]
        if (1 <= len(frames) <= 3 and frames[0] >= 2.5 and frames[-1] <= last - 2.5
                and all(b - a >= 3 for a, b in itertools.pairwise(frames))
                and min(axis_steps) >= BOUNCE_MIN_STEP * side):
            return candidate
    raise ShapesBenchError(f"no bouncing path fits {num_frames} frames of {spec.width}x{spec.height}")


def _sample_secondary(
    rng: np.random.Generator, spec: SceneSpec, primary: ShapeObject, side: float
) -> ShapeObject | None:
    """A small static object clear of every position the primary ever takes, or None if none fits."""
    shape = str(rng.choice([s for s in SHAPES if s != primary.shape]))
    color = str(rng.choice([c for c in COLORS if c not in primary.colors]))
    diameter = rng.uniform(*SECONDARY_SIZE) * side
    reach = max(primary.size) / 2 + diameter / 2 + 0.03 * side
    r = diameter / 2
    for _ in range(30):
        centre = (float(rng.uniform(r, spec.width - r)), float(rng.uniform(r, spec.height - r)))
        if _segment_distance(centre, primary.start, primary.end) >= reach:
            angle = float(rng.uniform(0, 360))
            return ShapeObject(shape=shape, colors=(color,), size_class="small", start=centre, end=centre,
                               angle=(angle, angle), size=(diameter, diameter))
    return None


# ------------------------------------------------------------------------------------------ geometry


def unit_polygon(shape: str, angle_deg: float = 0.0) -> np.ndarray:
    """Vertices (n, 2) of a shape with circumradius 1 centred at the origin, rotated clockwise on screen."""
    theta = np.deg2rad(angle_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    # Row vectors: (x, y) -> (x cos - y sin, x sin + y cos), clockwise with y pointing down.
    return _upright_polygon(shape) @ np.array([[cos, sin], [-sin, cos]])


@functools.cache
def _upright_polygon(shape: str) -> np.ndarray:
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        points = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif shape == "square":
        t = np.deg2rad(45 + 90 * np.arange(4))
        points = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif shape == "triangle":
        t = np.deg2rad(-90 + 120 * np.arange(3))
        points = np.stack([np.cos(t), np.sin(t)], axis=1)
    elif shape == "star":
        t = np.deg2rad(-90 + 36 * np.arange(10))
        radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        points = np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    elif shape == "cross":
        a, b = 0.3, 0.95
        points = np.array([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b),
                           (-a, a), (-b, a), (-b, -a), (-a, -a)])
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        points = np.stack([x, y + 2.5], axis=1) / 17.0
    else:
        raise ShapesBenchError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    points.setflags(write=False)
    return points


def _lerp(a: float, b: float, u: float | Fraction) -> float:
    """Linear interpolation that is symmetric in (a, u) <-> (b, 1 - u) bit for bit when u is a Fraction,
    so a reversed scene renders exactly the reversed frames."""
    return a * float(1 - u) + b * float(u)


def _fold(q: float, lo: float, hi: float) -> float:
    """Position after reflecting the unbounded coordinate q into [lo, hi]."""
    span = hi - lo
    r = (q - lo) % (2 * span)
    return lo + (r if r <= span else 2 * span - r)


def _fold_sign(q: float, lo: float, hi: float) -> float:
    """+1 where the reflected motion at unbounded coordinate q runs with the unbounded one, else -1."""
    span = hi - lo
    return 1.0 if (q - lo) % (2 * span) <= span else -1.0


def _axis_contacts(offset: float, speed: float, span: float, walls: tuple[str, str]) -> list[tuple[float, str]]:
    """Times u in (0, 1) at which a point at `offset` in [0, span] moving at `speed` hits a wall."""
    if speed == 0 or span <= 0:
        return []
    found = []
    end = offset + speed
    lo_m, hi_m = sorted((offset / span, end / span))
    for m in range(math.floor(lo_m) + 1, math.ceil(hi_m)):
        u = (m * span - offset) / speed
        if 0 < u < 1:
            found.append((u, walls[m % 2]))  # even multiples of span are the low wall
    return found


def _segment_distance(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    ax, ay, bx, by, px, py = a[0], a[1], b[0], b[1], p[0], p[1]
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else min(1.0, max(0.0, ((px - ax) * dx + (py - ay) * dy) / length2))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))
