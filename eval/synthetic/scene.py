"""Scenes of the synthetic streaming benchmark: a scripted object timeline, its per-frame
ground-truth state, and the rendered frames (NumPy only).

Everything is a pure function of the random generators handed in: positions are integer pixels,
the background uses only elementwise float arithmetic (no BLAS, no transcendental functions) and
objects are drawn by `synthetic_raster` with exact arithmetic, so the same seed gives bit-identical
frames on any machine and with any OpenCV release (NumPy does not promise identical Generator
streams across its releases; a golden hash in the tests notices a change).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from stc.eval.synthetic import raster

COLOURS: dict[str, tuple[int, int, int]] = {  # RGB, far apart and far from the grey background
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 255),
    "yellow": (240, 220, 30),
    "white": (250, 250, 250),
    "purple": (175, 45, 205),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring")
# Capital letters and digits that stay legible at 10 px and cannot be confused with an option
# letter (A-D), with the cross (X), the circle (O, 0) or with each other (I/1, S/5, 6/9).
GLYPHS = ("E", "F", "H", "K", "L", "M", "N", "P", "R", "T", "2", "3", "4", "5", "7", "8")
GLYPH = "glyph"  # ObjectState.shape of a character object
RESERVED_SHAPES = 3  # shapes no object of an episode takes, left for absent objects in options

_REFERENCE_SIZE = 96  # object sizes and speed are given for a frame of this size
_GAP = 3  # px kept free between objects
# How far shape edges reach past the outermost pixel centre, in px. Fitted (to 0.25 px) to the
# OpenCV 4 anti-aliased renderer of earlier releases, whose frames the shipped testbed model was
# trained on, so that it sees objects of the sizes it knows: filled polygons spill a quarter
# pixel, the star's thin points a whole pixel more, and thick circle outlines one pixel per side.
_EDGE = 0.25
_STAR_EDGE = 1.0
_RING_EDGE = 1.0
# Background: grey with smooth low-contrast blotches and a fine grain that pans one px per frame
# sideways (and a little up or down) while its brightness ramps slowly, so nearly every pixel
# changes a little from frame to frame. Its values stay within 105 +- 44, never near 0 or 255.
_BACKGROUND_GREY = 105.0
_BACKGROUND_CONTRAST = 22.0
_BACKGROUND_TINT = 6.0
_BACKGROUND_GRAIN = 3.0
_BACKGROUND_RAMP = 8.0  # grey levels gained or lost over the video
_BACKGROUND_CELLS = 8
_BACKGROUND_VERTICAL_DRIFT = 0.5  # px per frame, at most
V3_LONGEST_STAY = 16  # v3: the most frames an object stays, and how long before the video its timeline starts


GENERATORS = (2, 3)  # the question generators SceneConfig.version selects


@dataclass(frozen=True)
class SceneConfig:
    """Size and pacing of one synthetic episode.

    frames:         video length in frames; frame i is shown at i / fps seconds.
    size:           frames are size x size RGB.
    fps:            frames per second of the video file.
    max_objects:    most objects visible at once.
    objects:        inclusive range of the number of objects scripted per episode.
    min_lifetime:   fewest frames an object stays.
    small_size:     inclusive px range of small objects at 96 px (scaled with size).
    medium_size:    inclusive px range of medium objects at 96 px (scaled with size).
    small_share:    probability that an object is small.
    glyph_share:    probability that an object is a character rather than a shape.
    change_share:   probability that an object changes colour or shape once while visible.
    max_speed:      px per frame at 96 px, at most, along each axis.
    queries:        inclusive range of the number of questions per episode.
    version:        the generator: 2 (the shipped benchmark, v1 and v2 models) or 3 (a scene
                    already under way when the video opens and the same at every time, with
                    stays of at most V3_LONGEST_STAY frames; questions whose time does not give
                    their answer away, `questions_v3`).
    """

    frames: int = 32
    size: int = 96
    fps: float = 1.0
    max_objects: int = 4
    objects: tuple[int, int] = (5, 8)
    min_lifetime: int = 5
    small_size: tuple[int, int] = (10, 14)
    medium_size: tuple[int, int] = (20, 28)
    small_share: float = 0.5
    glyph_share: float = 0.4
    change_share: float = 0.75
    max_speed: float = 1.0
    queries: tuple[int, int] = (8, 12)
    version: int = 2

    def __post_init__(self) -> None:
        if self.version not in GENERATORS:
            raise ValueError(f"SceneConfig.version must be 2 or 3, got {self.version!r}")
        if self.frames < 2 * self.min_lifetime:
            raise ValueError(f"SceneConfig.frames must be >= 2 * min_lifetime, got {self.frames}")
        if self.size < 48:
            raise ValueError(f"SceneConfig.size must be >= 48, got {self.size}")
        if self.fps <= 0:
            raise ValueError(f"SceneConfig.fps must be > 0, got {self.fps}")
        if not 1 <= self.max_objects <= len(COLOURS) - 1:  # room for a colour change on a full screen
            raise ValueError(f"SceneConfig.max_objects must be in [1, {len(COLOURS) - 1}], got {self.max_objects}")
        if self.min_lifetime < 3:
            raise ValueError(f"SceneConfig.min_lifetime must be >= 3, got {self.min_lifetime}")
        for name in ("objects", "small_size", "medium_size", "queries"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"SceneConfig.{name} must be an inclusive range 1 <= low <= high, got {(low, high)}")
        if self.objects[1] > len(GLYPHS):
            raise ValueError(f"SceneConfig.objects allows at most {len(GLYPHS)} objects, got {self.objects}")
        for name in ("small_share", "glyph_share", "change_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SceneConfig.{name} must be in [0, 1], got {getattr(self, name)}")

    def size_range(self, small: bool) -> tuple[int, int]:
        """Inclusive px range of object sizes at this frame size."""
        low, high = self.small_size if small else self.medium_size
        scale = self.size / _REFERENCE_SIZE
        return max(4, round(low * scale)), max(4, round(high * scale))


@dataclass(frozen=True)
class ObjectState:
    """One object in one frame. shape is a SHAPES name or GLYPH (then glyph holds the character);
    size is the side of its bounding box and (x, y) its centre in px (meaningless while not
    visible: before it enters, after it leaves, or when no free spot was found for it)."""

    id: int
    shape: str
    glyph: str
    colour: str
    size: int
    x: int
    y: int
    visible: bool

    @property
    def noun(self) -> str:
        return noun(self.shape, self.glyph)


def noun(shape: str, glyph: str = "") -> str:
    """How questions name an object: "circle", "letter K", "digit 7"."""
    if shape != GLYPH:
        return shape
    return f"{'digit' if glyph.isdigit() else 'letter'} {glyph}"


SceneStates = tuple[tuple[ObjectState, ...], ...]  # [frame][object id]; every object in every frame


@dataclass(frozen=True)
class _Script:
    """An object's scripted life: frames [enter, exit), with at most one change at change_frame."""

    id: int
    shape: str
    glyph: str
    colour: str
    size: int
    enter: int
    exit: int
    change_frame: int = -1
    new_colour: str = ""
    new_shape: str = ""

    def at(self, frame: int, x: int, y: int, visible: bool) -> ObjectState:
        changed = 0 <= self.change_frame <= frame
        return ObjectState(
            id=self.id,
            shape=self.new_shape if changed and self.new_shape else self.shape,
            glyph=self.glyph,
            colour=self.new_colour if changed and self.new_colour else self.colour,
            size=self.size,
            x=x,
            y=y,
            visible=visible,
        )


def simulate_scene(rng: np.random.Generator, config: SceneConfig) -> SceneStates:
    """Script a random timeline and play it: the state of every object in every frame."""
    scripts = _script_timeline(rng, config)
    return _play(rng, scripts, config)


def render_frames(rng: np.random.Generator, states: SceneStates, config: SceneConfig) -> np.ndarray:
    """[F, size, size, 3] uint8 RGB: the drifting background with the visible objects drawn on it."""
    frames = _background(rng, config)
    for frame, objects in zip(frames, states):
        for obj in objects:
            if obj.visible:
                draw_object(frame, obj)
    return frames


def render_still(rng: np.random.Generator, config: SceneConfig) -> tuple[np.ndarray, tuple[ObjectState, ...]]:
    """One frame of 1..max_objects random objects (sizes, kinds and palette as in episodes, no
    timeline; distinct colours and nouns, so that every question about it has one answer) on a
    fresh background, and their states. Training data for the testbed: every still is a new
    scene, where an episode's 32 frames show the same few objects."""
    image = _smooth_field(rng, config.size).astype(np.uint8)
    colours = [str(c) for c in rng.permutation(list(COLOURS))]
    shapes, glyphs = [str(s) for s in rng.permutation(SHAPES)], [str(g) for g in rng.permutation(GLYPHS)]
    placed: list[tuple[np.ndarray, int]] = []
    objects = []
    for index in range(int(rng.integers(1, config.max_objects + 1))):
        low, high = config.size_range(rng.random() < config.small_share)
        size = int(rng.integers(low, high + 1))
        spot = _free_spot(rng, size, placed, config.size)
        if spot is None:
            continue
        placed.append((spot, size))
        if rng.random() < config.glyph_share or not shapes:
            shape, glyph = GLYPH, glyphs.pop()
        else:
            shape, glyph = shapes.pop(), ""
        obj = ObjectState(index, shape, glyph, colours[index], size, *_pixel(spot), visible=True)
        draw_object(image, obj)
        objects.append(obj)
    return image, tuple(objects)


def draw_object(image: np.ndarray, obj: ObjectState) -> None:
    """Draw a filled shape or a character, centred at (obj.x, obj.y), in place. A shape spans
    about 2 * (size // 2) + 1 px; edge widths follow the OpenCV 4 renderer that drew the frames
    the shipped testbed model was trained on (see _EDGE, _STAR_EDGE, _RING_EDGE)."""
    colour = COLOURS[obj.colour]
    cx, cy, half = obj.x, obj.y, obj.size // 2
    reach = half + 0.5 + _EDGE  # centre to outer edge
    box = (cx - reach - _RING_EDGE, cy - reach - _RING_EDGE, cx + reach + _RING_EDGE, cy + reach + _RING_EDGE)
    if obj.shape == "circle":
        inside = raster.disc(cx, cy, half + 0.5)
    elif obj.shape == "square":
        inside = raster.rectangle(cx - reach, cy - reach, cx + reach, cy + reach)
    elif obj.shape == "triangle":
        inside = raster.polygon(np.array([[0, -1], [1, 1], [-1, 1]]) * reach + (cx, cy))
    elif obj.shape == "star":
        inside = raster.polygon(raster.STAR * (reach + _STAR_EDGE) + (cx, cy))
    elif obj.shape == "diamond":
        inside = raster.polygon(np.array([[0, -1], [1, 0], [0, 1], [-1, 0]]) * reach + (cx, cy))
    elif obj.shape == "ring":
        thickness = max(2, obj.size // 5)
        middle = half - thickness // 2
        inside = raster.annulus(cx, cy, middle - thickness / 2 - _RING_EDGE, middle + thickness / 2 + _RING_EDGE)
    elif obj.shape == "cross":
        arm = max(1, obj.size // 6) + 0.5 + _EDGE
        bars = (raster.rectangle(cx - reach, cy - arm, cx + reach, cy + arm), raster.rectangle(cx - arm, cy - reach, cx + arm, cy + reach))
        inside = lambda x, y: bars[0](x, y) | bars[1](x, y)  # noqa: E731
    elif obj.shape == GLYPH:
        raster.draw_glyph(image, obj.glyph, cx, cy, obj.size, colour)
        return
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    raster.fill(image, colour, box, inside)


def _script_timeline(rng: np.random.Generator, config: SceneConfig) -> list[_Script]:
    """Objects with distinct entry frames, at most max_objects at once, nouns unique within the
    episode (a shape change takes a fresh shape, RESERVED_SHAPES are never used), kinds
    independent of entry order, and colours distinct among objects on screen together whenever
    the palette allows. v2: entries after frame 0 (which is empty) and stays up to the video's
    end. v3: the timeline starts V3_LONGEST_STAY frames before the video, entries are spread over
    all of it and stays are short, so what is on screen does not depend on the time (the video
    opens on a scene already under way; objects that entered before it count as appearing at 0)."""
    frames, min_life = config.frames, config.min_lifetime
    if config.version < 3:
        lead, latest_entry = 0, frames - min_life  # entries are frames 1..latest_entry
        count = min(int(rng.integers(config.objects[0], config.objects[1] + 1)), latest_entry)
        entries = np.sort(1 + rng.choice(latest_entry, size=count, replace=False))
    else:
        lead = V3_LONGEST_STAY
        per_video = int(rng.integers(config.objects[0], config.objects[1] + 1))
        count = min(round(per_video * (lead + frames) / frames), lead + frames, len(GLYPHS))  # nouns stay unique
        entries = np.sort(rng.choice(lead + frames, size=count, replace=False)) - lead
    shape_count = min(len(SHAPES) - RESERVED_SHAPES, int(np.sum(rng.random(count) >= config.glyph_share)))
    is_shape = rng.permutation(np.arange(count) < shape_count).tolist()
    free_shapes = [str(s) for s in rng.permutation(SHAPES)]
    free_glyphs = [str(g) for g in rng.permutation(GLYPHS)]
    occupancy = np.zeros(lead + frames, np.int64)  # index: frame + lead
    colours_at: list[list[str]] = [[] for _ in range(lead + frames)]
    scripts: list[_Script] = []
    for index, enter in enumerate(entries.tolist()):
        if occupancy[enter + lead] >= config.max_objects:
            continue
        if config.version < 3:
            exit_ = min(frames, enter + int(rng.integers(min_life, frames + 1)))
        else:
            exit_ = enter + int(rng.integers(min_life, V3_LONGEST_STAY + 1))
        shown_until = min(exit_, frames)
        full = np.flatnonzero(occupancy[enter + lead:shown_until + lead] >= config.max_objects)
        if full.size:
            exit_ = shown_until = enter + int(full[0])
        if exit_ - enter < min_life or shown_until <= 0:
            continue
        shape, glyph = (free_shapes.pop(), "") if is_shape[index] else (GLYPH, free_glyphs.pop())
        small = rng.random() < config.small_share
        low, high = config.size_range(small)
        size = int(rng.integers(low, high + 1))
        colour = _free_colour(rng, colours_at, enter + lead, shown_until + lead, avoid=())
        script = _Script(len(scripts), shape, glyph, colour, size, enter, exit_)
        if exit_ - enter >= 6 and rng.random() < config.change_share:
            change = int(rng.integers(enter + 2, exit_ - 2))
            spare_shapes = len(free_shapes) - sum(is_shape[index + 1 :]) - RESERVED_SHAPES
            if is_shape[index] and spare_shapes > 0 and rng.random() < 0.7:
                script = replace(script, change_frame=change, new_shape=free_shapes.pop())
            else:
                new_colour = _free_colour(rng, colours_at, min(change, frames - 1) + lead, shown_until + lead,
                                          avoid=(colour,))
                script = replace(script, change_frame=change, new_colour=new_colour)
        for frame in range(enter, shown_until):
            colours_at[frame + lead].append(script.at(frame, 0, 0, True).colour)
        occupancy[enter + lead:shown_until + lead] += 1
        scripts.append(script)
    return scripts


def _free_colour(rng, colours_at: list[list[str]], start: int, stop: int, avoid: tuple[str, ...]) -> str:
    """A colour no other object shows during [start, stop), else one not shown at start."""
    taken = {c for frame in range(start, stop) for c in colours_at[frame]}
    free = [c for c in COLOURS if c not in taken and c not in avoid]
    if not free:
        free = [c for c in COLOURS if c not in colours_at[start] and c not in avoid]
    return free[int(rng.integers(len(free)))]


def _play(rng: np.random.Generator, scripts: list[_Script], config: SceneConfig) -> SceneStates:
    """Place each object where it overlaps nothing when it enters (or drop it if no place is
    found), then move it a little each frame, bouncing off the borders and off other objects."""
    speed = config.max_speed * config.size / _REFERENCE_SIZE
    position: dict[int, np.ndarray] = {}
    velocity: dict[int, np.ndarray] = {}
    dropped: set[int] = set()
    states = []
    for frame in range(config.frames):
        for s in scripts:
            if max(s.enter, 0) == frame:  # v3: objects that entered before the video are placed at 0
                others = [(position[o.id], o.size) for o in scripts if o.id in position and _on(o, frame, dropped)]
                spot = _free_spot(rng, s.size, others, config.size)
                if spot is None:
                    dropped.add(s.id)
                    continue
                position[s.id] = spot
                still = rng.random() < 0.25
                velocity[s.id] = np.zeros(2) if still else rng.uniform(-speed, speed, 2)
        states.append(
            tuple(
                s.at(frame, *(_pixel(position[s.id]) if s.id in position else (0, 0)), _on(s, frame, dropped))
                for s in scripts
            )
        )
        moving = [s for s in scripts if _on(s, frame, dropped)]
        for s in moving:
            step = position[s.id] + velocity[s.id]
            low, high = _bounds(s.size, config.size)
            if np.any(step < low) or np.any(step > high):
                velocity[s.id] = np.where((step < low) | (step > high), -velocity[s.id], velocity[s.id])
                continue
            others = [(position[o.id], o.size) for o in moving if o.id != s.id]
            if _overlaps(step, s.size, others):
                velocity[s.id] = -velocity[s.id]
                continue
            position[s.id] = step
    return tuple(states)


def _on(script: _Script, frame: int, dropped: set[int]) -> bool:
    return script.enter <= frame < script.exit and script.id not in dropped


def _pixel(position: np.ndarray) -> tuple[int, int]:
    return round(float(position[0])), round(float(position[1]))


def _bounds(size: int, frame_size: int) -> tuple[float, float]:
    """Range of centre coordinates that keeps an object fully inside the frame."""
    half = size / 2 + 1
    return half, frame_size - 1 - half


def _overlaps(centre: np.ndarray, size: int, others: list[tuple[np.ndarray, int]]) -> bool:
    for other, other_size in others:
        reach = (size + other_size) / 2 + _GAP
        if abs(centre[0] - other[0]) < reach and abs(centre[1] - other[1]) < reach:
            return True
    return False


def _free_spot(rng, size: int, others: list[tuple[np.ndarray, int]], frame_size: int, tries: int = 30):
    low, high = _bounds(size, frame_size)
    for _ in range(tries):
        spot = np.round(rng.uniform(low, high, 2))
        if not _overlaps(spot, size, others):
            return spot
    return None


def _background(rng: np.random.Generator, config: SceneConfig) -> np.ndarray:
    frames, size = config.frames, config.size
    field = _smooth_field(rng, size + 2 * frames)
    pan = 1 if rng.random() < 0.5 else -1
    drift = float(rng.uniform(-_BACKGROUND_VERTICAL_DRIFT, _BACKGROUND_VERTICAL_DRIFT))
    ramp = float(rng.uniform(-_BACKGROUND_RAMP, _BACKGROUND_RAMP))
    background = np.empty((frames, size, size, 3), np.uint8)
    for f in range(frames):
        x, y = frames + pan * f, frames + round(drift * f)
        brightness = round(ramp * f / max(frames - 1, 1))
        background[f] = field[y : y + size, x : x + size] + brightness  # stays in 0..255 by construction
    return background


def _smooth_field(rng: np.random.Generator, side: int) -> np.ndarray:
    """[side, side, 3] int16: bilinearly upsampled random blotches plus a per-pixel grain."""
    cells = _BACKGROUND_CELLS
    luminance = rng.uniform(-_BACKGROUND_CONTRAST, _BACKGROUND_CONTRAST, (cells, cells, 1))
    tint = rng.uniform(-_BACKGROUND_TINT, _BACKGROUND_TINT, (cells, cells, 3))
    coarse = _BACKGROUND_GREY + luminance + tint
    grid = np.arange(side) * ((cells - 1) / (side - 1))
    index = np.minimum(np.floor(grid).astype(np.int64), cells - 2)
    weight = grid - index
    rows = coarse[index] * (1 - weight)[:, None, None] + coarse[index + 1] * weight[:, None, None]
    field = rows[:, index] * (1 - weight)[None, :, None] + rows[:, index + 1] * weight[None, :, None]
    grain = rng.uniform(-_BACKGROUND_GRAIN, _BACKGROUND_GRAIN, (side, side, 1))
    return np.rint(field + grain).astype(np.int16)
