"""Language for ShapesBench: captions from templates and paraphrases, questions, and 5-way multiple choice.

Everything is derived from the scene, so text and pixels cannot disagree. Each caption and question
carries a `temporal` flag: True when checking it needs more than one frame (which way something
moves, what happens first, how often it bounces), False when any single frame answers it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vidlab.data.shapesbench.scene import (
    COLORS,
    MOTION_CLASSES,
    OPPOSITE,
    SHAPES,
    Scene,
    ShapeObject,
    motion_label,
)

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "dot", "disc", "ball"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "heart": ("heart",),
}
COLOR_WORDS: dict[str, tuple[str, ...]] = {c: (c,) for c in COLORS} | {
    "purple": ("purple", "violet"), "cyan": ("cyan", "turquoise")}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little"), "medium": ("medium-sized", "mid-sized"), "large": ("large", "big")}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "flat": ("plain", "flat", "solid"), "gradient": ("gradient", "shaded"), "noise": ("textured", "noisy", "mottled")}

# (present tense, gerund) paraphrases per motion class; the first pair is the canonical wording
# that multiple-choice options use, so options differ only in the attribute that was changed.
MOTION_PHRASES: dict[str, tuple[tuple[str, str], ...]] = {
    "left": (("slides to the left", "sliding to the left"), ("moves left", "moving left"),
             ("travels leftward", "travelling leftward"), ("drifts to the left", "drifting to the left")),
    "right": (("slides to the right", "sliding to the right"), ("moves right", "moving right"),
              ("travels rightward", "travelling rightward"), ("drifts to the right", "drifting to the right")),
    "up": (("moves up", "moving up"), ("rises", "rising"), ("floats upward", "floating upward"),
           ("travels upward", "travelling upward")),
    "down": (("moves down", "moving down"), ("sinks", "sinking"), ("falls", "falling"),
             ("travels downward", "travelling downward")),
    "clockwise": (("rotates clockwise", "rotating clockwise"), ("spins clockwise", "spinning clockwise"),
                  ("turns clockwise", "turning clockwise")),
    "counterclockwise": (("rotates counterclockwise", "rotating counterclockwise"),
                         ("spins anticlockwise", "spinning anticlockwise"),
                         ("turns counterclockwise", "turning counterclockwise")),
    "grow": (("grows", "growing"), ("gets bigger", "getting bigger"), ("expands", "expanding")),
    "shrink": (("shrinks", "shrinking"), ("gets smaller", "getting smaller"), ("contracts", "contracting")),
}
TIMES_WORDS = {1: "once", 2: "twice", 3: "three times"}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
ACTION_WORDS = {"translate": "moves", "rotate": "spins", "scale": "changes size", "bounce": "bounces",
                "color": "changes color"}


@dataclass(frozen=True)
class Description:
    """What the canonical caption of a clip states: the primary object and its action.

    `action` is a motion class, ("bounce", walls in contact order) or ("color", colours it turns).
    `size` is None when the size changes during the clip.
    """

    shape: str
    color: str
    size: str | None
    action: tuple[str, ...]


def describe(scene: Scene) -> Description:
    """The facts every action caption, question and option of the clip is worded from."""
    obj = scene.primary
    label = motion_label(scene)
    if label is not None:
        action: tuple[str, ...] = (label,)
    elif obj.velocity is not None:
        action = ("bounce",) + tuple(wall for _, wall in obj.wall_contacts())
    else:
        action = ("color",) + obj.colors[1:]
    size = None if label in ("grow", "shrink") else obj.size_class
    return Description(shape=obj.shape, color=obj.colors[0], size=size, action=action)


def canonical_caption(d: Description) -> str:
    """The one fixed wording of a description (multiple-choice options use it)."""
    size = f"{d.size} " if d.size else ""
    return f"{_indefinite(size + d.color)} {d.shape} {_action_phrase(d.action, 0, 0)}"


def _action_phrase(action: tuple[str, ...], variant: int, form: int) -> str:
    """Wording `variant` of an action in `form` 0 (present) or 1 (gerund)."""
    kind = action[0]
    if kind in MOTION_PHRASES:
        options = MOTION_PHRASES[kind]
        return options[variant % len(options)][form]
    if kind == "bounce":
        walls = action[1:]
        verb = ("bounces", "bouncing")[form]
        if variant % 2 == 0:
            return f"{verb} off the {walls[0]} wall" + "".join(f", then the {w} wall" for w in walls[1:])
        return f"{verb} off the walls {TIMES_WORDS[len(walls)]}"
    colors = action[1:]
    verb = ("turns", "turning")[form]
    if variant % 2 == 0:
        return f"{verb} {colors[0]}" + "".join(f", then {c}" for c in colors[1:])
    return f"{verb} " + " and then ".join(colors)


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _indefinite(phrase: str) -> str:
    """`phrase` with 'a' or 'an' in front."""
    return ("an " if phrase[:1] and phrase[0] in "aeiou" else "a ") + phrase


def _noun_phrase(obj: ShapeObject, rng: np.random.Generator, size: bool, color: bool) -> str:
    words = []
    if size:
        words.append(_pick(rng, SIZE_WORDS[obj.size_class]))
    if color:
        words.append(_pick(rng, COLOR_WORDS[obj.colors[0]]))
    words.append(_pick(rng, SHAPE_WORDS[obj.shape]))
    return _indefinite(" ".join(words))


def _background_phrase(scene: Scene, rng: np.random.Generator) -> str:
    return f"on a {_pick(rng, BACKGROUND_WORDS[scene.background.kind])} background"


def _secondary_phrase(scene: Scene, rng: np.random.Generator, temporal: bool) -> str:
    if len(scene.objects) < 2:
        return ""
    other = scene.objects[1]
    np_other = _noun_phrase(other, rng, size=False, color=True)
    options = [f"next to {np_other}", f"beside {np_other}"]
    if temporal:
        options.append(f"while {np_other} stays still")
    return " " + _pick(rng, options)


def video_captions(scene: Scene, rng: np.random.Generator, num_temporal: int = 3) -> list[tuple[str, bool]]:
    """`num_temporal` captions that state the action, then one that states only what any frame shows."""
    d = describe(scene)
    obj = scene.primary
    with_size = d.size is not None
    changes_color = d.action[0] == "color"
    n_variants = len(MOTION_PHRASES[d.action[0]]) if d.action[0] in MOTION_PHRASES else 2

    def action(form: int) -> str:
        return _action_phrase(d.action, int(rng.integers(n_variants)), form)

    templates = [
        lambda: f"{_noun_phrase(obj, rng, with_size, True)} {action(0)}",
        lambda: f"the {_pick(rng, COLOR_WORDS[d.color])} {_pick(rng, SHAPE_WORDS[d.shape])} {action(0)}",
        lambda: f"{_noun_phrase(obj, rng, False, True)} {action(1)} {_background_phrase(scene, rng)}",
        lambda: f"{_noun_phrase(obj, rng, with_size, True)} {action(0)}{_secondary_phrase(scene, rng, True)}",
        lambda: f"a video of {_noun_phrase(obj, rng, with_size, True)} {action(1)}",
    ]
    captions: list[tuple[str, bool]] = []
    for index in rng.permutation(len(templates)):
        text = templates[index]()
        if text not in (c for c, _ in captions):
            captions.append((text, True))
        if len(captions) == num_temporal:
            break
    # The static caption leaves out whatever changes over the clip (size while scaling, colour while recolouring).
    static = f"{_noun_phrase(obj, rng, with_size, not changes_color)} {_background_phrase(scene, rng)}"
    captions.append((static + _secondary_phrase(scene, rng, False), False))
    return captions


def image_captions(scene: Scene, rng: np.random.Generator, count: int = 3) -> list[str]:
    """Appearance-only captions of a still image."""
    obj = scene.primary
    templates = [
        lambda: f"{_noun_phrase(obj, rng, True, True)} {_background_phrase(scene, rng)}",
        lambda: f"{_noun_phrase(obj, rng, False, True)}{_secondary_phrase(scene, rng, False)}",
        lambda: f"a picture of {_noun_phrase(obj, rng, True, True)}{_secondary_phrase(scene, rng, False)}",
        lambda: f"the {_pick(rng, SHAPE_WORDS[obj.shape])} is {_pick(rng, COLOR_WORDS[obj.colors[0]])}",
    ]
    captions: list[str] = []
    for index in rng.permutation(len(templates)):
        text = templates[index]()
        if text not in captions:
            captions.append(text)
        if len(captions) == count:
            break
    return captions


def video_questions(scene: Scene, rng: np.random.Generator) -> list[dict]:
    """Every question that applies to the clip: {question, answer, qtype, temporal}."""
    d = describe(scene)
    obj = scene.primary
    label = motion_label(scene)
    questions: list[dict] = []

    def ask(qtype: str, temporal: bool, answer: str, *phrasings: str) -> None:
        questions.append({"question": _pick(rng, phrasings), "answer": answer, "qtype": qtype, "temporal": temporal})

    it = f"the {d.shape}"
    if len(scene.objects) == 1:
        ask("shape", False, d.shape, "what shape is shown?", "what shape is in the video?")
    elif d.action[0] != "color":
        ask("shape", False, d.shape, f"what shape is the {d.color} object?", f"which shape is {d.color}?")
    if d.action[0] != "color":
        ask("color", False, d.color, f"what color is {it}?", f"which color does {it} have?")
    elif len(scene.objects) > 1:
        other = scene.objects[1]
        ask("color", False, other.colors[0], f"what color is the {other.shape}?")
    count = COUNT_WORDS[len(scene.objects)]
    ask("count", False, count, "how many shapes are there?", "how many objects are in the video?")
    if d.size is not None:
        ask("size", False, d.size, f"what size is {it}?", f"is {it} small, medium or large?")
    if label in ("left", "right", "up", "down"):
        ask("direction", True, label, f"which way does {it} move?", f"in which direction does {it} go?")
    elif label in ("clockwise", "counterclockwise"):
        ask("direction", True, label, f"which way does {it} rotate?", f"in which direction does {it} spin?")
    elif label in ("grow", "shrink"):
        ask("direction", True, label, f"does {it} grow or shrink?", f"does {it} get bigger or smaller?")
    elif d.action[0] == "bounce":
        walls = d.action[1:]
        ask("bounce_count", True, COUNT_WORDS[len(walls)], f"how many times does {it} bounce?",
            f"how many times does {it} hit a wall?")
        ask("first_wall", True, walls[0], f"which wall does {it} hit first?", f"what wall does {it} bounce off first?")
    else:
        # Both options are colours the clip shows, so a single frame does not tell which comes first.
        colors = obj.colors
        ask("change_count", True, COUNT_WORDS[len(colors) - 1], f"how many times does {it} change color?")
        if len(colors) == 2:
            a, b = colors if rng.random() < 0.5 else colors[::-1]
            ask("order", True, colors[1], f"what color does {it} turn into: {a} or {b}?",
                f"which color comes last: {a} or {b}?")
        else:
            a, b = colors[1:] if rng.random() < 0.5 else colors[:0:-1]
            ask("order", True, colors[1], f"what happens first: {it} turns {a} or {it} turns {b}?",
                f"which change comes first: {it} turning {a} or turning {b}?")
    family = _family(d.action[0])
    ask("action", True, ACTION_WORDS[family], f"what does {it} do?", f"what happens to {it}?")
    return questions


def _family(action_kind: str) -> str:
    if action_kind in ("left", "right", "up", "down"):
        return "translate"
    if action_kind in ("clockwise", "counterclockwise"):
        return "rotate"
    if action_kind in ("grow", "shrink"):
        return "scale"
    return action_kind


def multiple_choice(scene: Scene, rng: np.random.Generator) -> tuple[list[str], int]:
    """Five canonical captions, the true one and four that each change one attribute of it:
    the action played in reverse, the colour, the shape, and the action itself. Returns (options, answer)."""
    d = describe(scene)
    reversed_d = describe(scene.reversed())
    if reversed_d == d:  # a single bounce, or a palindrome of walls, reads the same backwards
        walls = ("left", "right", "top", "bottom")
        first = _pick(rng, [w for w in walls if w != d.action[1]])
        reversed_d = replace(d, action=(d.action[0], first) + d.action[2:])
    used_colors = set(scene.primary.colors)
    other_color = replace(d, color=_pick(rng, [c for c in COLORS if c not in used_colors]))
    other_shape = replace(d, shape=_pick(rng, [s for s in SHAPES if s != d.shape]))
    same_pair = {d.action[0], OPPOSITE.get(d.action[0], d.action[0])}
    other_action_kind = _pick(rng, [c for c in MOTION_CLASSES if c not in same_pair])
    other_action = replace(d, action=(other_action_kind,),
                           size=None if other_action_kind in ("grow", "shrink") else d.size)
    options = [canonical_caption(x) for x in (d, reversed_d, other_color, other_shape, other_action)]
    order = [int(i) for i in rng.permutation(5)]
    return [options[i] for i in order], order.index(0)
