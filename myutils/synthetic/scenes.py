"""Synthetic tracking scenes: textured objects with identities moving over a textured background.

Objects of different shapes and textures enter from the image borders, cross each
other (a fixed depth order decides who hides whom) and leave again. Everything is
deterministic given the seed. With ``camera="moving"`` the camera pans and zooms over a larger
world (smooth sweeps plus a hand-held shake): every object then also moves by the camera's image
motion, which a constant-velocity motion model cannot predict and camera-motion compensation can. The ground truth follows MOTChallenge
(``frame, id, left, top, w, h, 1, 1, visibility, -1``), with boxes clipped to the image and
``visibility`` = the fraction of the object's in-image pixels not hidden by objects in front.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from myutils.cli import InputError
from myutils.data.image_io import write_image_rgb
from myutils.tracking.camera_motion import IDENTITY
from myutils.tracking.mot_io import write_mot

SHAPES = ("rectangle", "ellipse", "triangle", "diamond", "hexagon", "cross")
PATTERNS = ("stripes", "checker", "dots", "rings")
# speed multiplier, per-pixel noise std, relative size oscillation, global brightness flicker
DIFFICULTY = {
    "easy": {"speed": 0.6, "noise": 2.0, "scale_amplitude": 0.05, "flicker": 0.0},
    "medium": {"speed": 1.0, "noise": 5.0, "scale_amplitude": 0.15, "flicker": 0.04},
    "hard": {"speed": 1.6, "noise": 10.0, "scale_amplitude": 0.25, "flicker": 0.08},
}


@dataclass
class SceneObject:
    """One identity: its look (texture + shape mask at base size) and its path over time."""

    identity: int
    shape: str
    texture: np.ndarray  # [h, w, 3] uint8 at base size
    mask: np.ndarray  # [h, w] bool at base size
    depth: float  # larger = nearer the camera (drawn later)
    waypoints: np.ndarray  # [K, 2] centre positions in pixels, first and last outside the image
    start_frame: float  # frame at which the centre is at waypoints[0]
    duration: float  # frames to travel the whole path
    scale_phase: float
    scale_period: float

    def centre(self, frame: int) -> np.ndarray:
        """Centre position at ``frame``, moving at constant speed along the waypoint polyline."""
        progress = (frame - self.start_frame) / self.duration
        segments = np.linalg.norm(np.diff(self.waypoints, axis=0), axis=1)
        cumulative = np.concatenate([[0.0], np.cumsum(segments)])
        distance = np.clip(progress, 0.0, 1.0) * cumulative[-1]
        return np.array([np.interp(distance, cumulative, self.waypoints[:, axis]) for axis in range(2)])

    def is_moving(self, frame: int) -> bool:
        return 0.0 <= (frame - self.start_frame) / self.duration <= 1.0


@dataclass
class Placement:
    """An object drawn in one frame: its full (unclipped) box and resized texture and mask."""

    identity: int
    left: int
    top: int
    texture: np.ndarray
    mask: np.ndarray


CAMERAS = ("static", "moving")


@dataclass
class CameraPath:
    """Where the camera looks: world point ``p`` is seen at ``zoom · (p − centre) + image centre``.

    ``centres [F, 2]`` and ``zooms [F]`` are per frame (index 0 = frame 1); ``margin`` is how far the
    world background reaches beyond the static view on every side.
    """

    centres: np.ndarray
    zooms: np.ndarray
    margin: int

    def world_to_image(self, frame: int, width: int, height: int) -> np.ndarray:
        """The ``[2, 3]`` similarity from world to image coordinates at ``frame``."""
        zoom = self.zooms[frame - 1]
        shift = np.array([width / 2, height / 2]) - zoom * self.centres[frame - 1]
        return np.array([[zoom, 0.0, shift[0]], [0.0, zoom, shift[1]]])


@dataclass
class Scene:
    width: int
    height: int
    num_frames: int
    seed: int
    difficulty: str
    background: np.ndarray  # [height + 2 margin, width + 2 margin, 3] uint8 (margin 0: a static camera)
    objects: list[SceneObject]
    ground_truth: np.ndarray = field(default_factory=lambda: np.zeros((0, 10)))  # MOT rows [N, 10]
    camera: CameraPath | None = None  # None: a static camera


def _camera_path(num_frames: int, width: int, height: int, rng: np.random.Generator) -> CameraPath:
    """Two sinusoidal sweeps per axis (periods 60-160 frames, about 15 % of the view), a slow zoom
    of ±15 % and a hand-held shake of about 1.5 pixels per frame."""
    t = np.arange(1, num_frames + 1, dtype=np.float64)
    centres = np.tile([width / 2, height / 2], (num_frames, 1))
    for axis, size in enumerate((width, height)):
        for amplitude in (0.1 * size, 0.05 * size):
            period, phase = rng.uniform(60, 160), rng.uniform(0, 2 * np.pi)
            centres[:, axis] += amplitude * np.sin(2 * np.pi * t / period + phase)
    centres += np.cumsum(rng.normal(0, 0.5, size=centres.shape), axis=0).clip(-10, 10)
    centres += rng.normal(0, 1.5, size=centres.shape)
    zooms = 1.0 + 0.15 * np.sin(2 * np.pi * t / rng.uniform(150, 250) + rng.uniform(0, 2 * np.pi))
    # the widest view (least zoom) plus the farthest pan must stay on the world background
    reach = np.abs(centres - [width / 2, height / 2]).max() + max(width, height) * (1 / zooms.min() - 1) / 2
    return CameraPath(centres, zooms, margin=int(np.ceil(reach)) + 8)


def _hue_colour(hue: float, saturation: float, value: float) -> np.ndarray:
    hsv = np.uint8([[[int(hue * 179) % 180, int(saturation * 255), int(value * 255)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    w, h = width - 1, height - 1
    if shape == "rectangle":
        mask[:] = 1
    elif shape == "ellipse":
        cv2.ellipse(mask, (w // 2, h // 2), (w // 2, h // 2), 0, 0, 360, 1, -1)
    else:
        polygons = {
            "triangle": [(w // 2, 0), (w, h), (0, h)],
            "diamond": [(w // 2, 0), (w, h // 2), (w // 2, h), (0, h // 2)],
            "hexagon": [(w // 4, 0), (3 * w // 4, 0), (w, h // 2), (3 * w // 4, h), (w // 4, h), (0, h // 2)],
            "cross": [(w // 3, 0), (2 * w // 3, 0), (2 * w // 3, h // 3), (w, h // 3), (w, 2 * h // 3),
                      (2 * w // 3, 2 * h // 3), (2 * w // 3, h), (w // 3, h), (w // 3, 2 * h // 3),
                      (0, 2 * h // 3), (0, h // 3), (w // 3, h // 3)],
        }
        cv2.fillPoly(mask, [np.array(polygons[shape], np.int32)], 1)
    return mask.astype(bool)


def _texture(pattern: str, width: int, height: int, hue: float, rng: np.random.Generator) -> np.ndarray:
    """A two-colour pattern: the identity lives in hue, pattern and its frequency/orientation."""
    primary = _hue_colour(hue, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
    secondary = _hue_colour(hue + rng.uniform(0.25, 0.6), rng.uniform(0.3, 1.0), rng.uniform(0.2, 0.6))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(6.0, 16.0)
    if pattern == "stripes":
        angle = rng.uniform(0, np.pi)
        weight = (np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period) > 0).astype(np.float32)
    elif pattern == "checker":
        weight = ((xs // period + ys // period) % 2).astype(np.float32)
    elif pattern == "dots":
        weight = ((np.hypot(xs % period - period / 2, ys % period - period / 2)) < period / 3).astype(np.float32)
    else:  # rings around the centre
        weight = (np.sin(np.hypot(xs - width / 2, ys - height / 2) * 2 * np.pi / period) > 0).astype(np.float32)
    image = weight[..., None] * primary + (1 - weight[..., None]) * secondary
    return np.clip(image, 0, 255).astype(np.uint8)


def _background(width: int, height: int, rng: np.random.Generator, clutter: int = 6) -> np.ndarray:
    """Smooth muted colour noise, a faint tiled floor and ``clutter`` static clutter patches."""
    coarse = rng.uniform(60, 170, size=(6, 10, 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 6, size=image.shape).astype(np.float32)
    spacing = int(rng.integers(40, 70))
    image[::spacing, :, :] *= 0.8
    image[:, ::spacing, :] *= 0.8
    for _ in range(clutter):
        w, h = int(rng.integers(20, 80)), int(rng.integers(20, 80))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        image[y : y + h, x : x + w] = 0.6 * image[y : y + h, x : x + w] + 0.4 * rng.uniform(40, 200, size=3)
    return np.clip(image, 0, 255).astype(np.uint8)


def _outside_point(width: int, height: int, margin: float, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(4))
    if side == 0:
        return np.array([-margin, rng.uniform(0, height)])
    if side == 1:
        return np.array([width + margin, rng.uniform(0, height)])
    if side == 2:
        return np.array([rng.uniform(0, width), -margin])
    return np.array([rng.uniform(0, width), height + margin])


def _make_object(identity: int, index: int, count: int, width: int, height: int, num_frames: int,
                 params: dict, rng: np.random.Generator) -> SceneObject:
    scale = height / 384.0
    obj_w = int(rng.uniform(40, 100) * scale)
    obj_h = int(rng.uniform(40, 120) * scale)
    shape = SHAPES[index % len(SHAPES)]
    hue = (index * 0.618034 + rng.uniform(0, 0.1)) % 1.0  # golden-ratio spacing keeps hues apart
    texture = _texture(PATTERNS[int(rng.integers(len(PATTERNS)))], obj_w, obj_h, hue, rng)
    margin = max(obj_w, obj_h)
    # paths through the central region make objects cross and occlude each other
    interior = [np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height])
                for _ in range(int(rng.integers(1, 3)))]
    waypoints = np.stack([_outside_point(width, height, margin, rng), *interior,
                          _outside_point(width, height, margin, rng)])
    length = float(np.linalg.norm(np.diff(waypoints, axis=0), axis=1).sum())
    speed = rng.uniform(2.0, 5.0) * params["speed"] * width / 640.0
    duration = max(length / speed, 10.0)
    if index < (count + 1) // 2:  # already in view at the first frame
        start = 1.0 - rng.uniform(0.2, 0.6) * duration
    else:  # enters later
        start = rng.uniform(0.0, 0.6) * num_frames
    return SceneObject(identity, shape, texture, _shape_mask(shape, obj_w, obj_h), depth=float(rng.uniform()),
                       waypoints=waypoints, start_frame=start, duration=duration,
                       scale_phase=float(rng.uniform(0, 2 * np.pi)), scale_period=float(rng.uniform(40, 120)))


def generate_scene(num_frames: int = 150, num_objects: int = 6, width: int = 640, height: int = 384,
                   seed: int = 0, difficulty: str = "medium", camera: str = "static") -> Scene:
    """A deterministic scene of ``num_objects`` identities (ids 1..num_objects) over ``num_frames`` frames,
    seen by a ``static`` or a ``moving`` camera (the objects' paths are the same for both)."""
    if difficulty not in DIFFICULTY:
        raise InputError(f"difficulty must be one of {sorted(DIFFICULTY)}, got {difficulty!r}")
    if camera not in CAMERAS:
        raise InputError(f"camera must be one of {CAMERAS}, got {camera!r}")
    if num_frames < 1 or num_objects < 1:
        raise InputError(f"need num_frames >= 1 and num_objects >= 1, got {num_frames} and {num_objects}")
    if width < 64 or height < 64:
        raise InputError(f"scene must be at least 64x64 pixels, got {width}x{height}")
    rng = np.random.default_rng(seed)
    params = DIFFICULTY[difficulty]
    background = _background(width, height, rng)
    objects = [_make_object(i + 1, i, num_objects, width, height, num_frames, params, rng) for i in range(num_objects)]
    path = None
    if camera == "moving":  # its own generator: the objects do not change with the camera
        path = _camera_path(num_frames, width, height, np.random.default_rng([seed, 1]))
        world = (width + 2 * path.margin, height + 2 * path.margin)
        # a busier world (as outdoors): enough static structure for the camera motion to be measurable
        background = _background(*world, np.random.default_rng([seed, 2]), clutter=world[0] * world[1] // 2000)
    scene = Scene(width, height, num_frames, seed, difficulty, background, objects, camera=path)
    scene.ground_truth = _ground_truth(scene)
    return scene


def world_to_image(scene: Scene, frame: int) -> np.ndarray:
    """The ``[2, 3]`` similarity from world (static-view) coordinates to the image at ``frame``."""
    if scene.camera is None:
        return IDENTITY.copy()
    return scene.camera.world_to_image(frame, scene.width, scene.height)


def camera_motion(scene: Scene, frame: int) -> np.ndarray:
    """The true image-to-image similarity from ``frame - 1`` to ``frame`` (identity for frame 1)."""
    if frame <= 1:
        return IDENTITY.copy()
    now = np.vstack([world_to_image(scene, frame), [0.0, 0.0, 1.0]])
    before = np.vstack([world_to_image(scene, frame - 1), [0.0, 0.0, 1.0]])
    return (now @ np.linalg.inv(before))[:2]


def place_objects(scene: Scene, frame: int) -> list[Placement]:
    """Objects on screen at ``frame``, far to near, resized for the frame's scale oscillation."""
    amplitude = DIFFICULTY[scene.difficulty]["scale_amplitude"]
    view = world_to_image(scene, frame)
    placements = []
    for obj in sorted(scene.objects, key=lambda o: o.depth):
        if not obj.is_moving(frame):
            continue
        factor = 1.0 + amplitude * np.sin(2 * np.pi * frame / obj.scale_period + obj.scale_phase)
        factor *= view[0, 0]  # the camera's zoom
        h0, w0 = obj.mask.shape
        w, h = max(4, round(w0 * factor)), max(4, round(h0 * factor))
        cx, cy = view[:, :2] @ obj.centre(frame) + view[:, 2]
        left, top = round(cx - w / 2), round(cy - h / 2)
        if left >= scene.width or top >= scene.height or left + w <= 0 or top + h <= 0:
            continue
        texture = cv2.resize(obj.texture, (w, h), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(obj.mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        placements.append(Placement(obj.identity, left, top, texture, mask))
    return placements


def _clip(placement: Placement, width: int, height: int) -> tuple[slice, slice, slice, slice]:
    """Image slices and the matching slices of the placement's arrays."""
    h, w = placement.mask.shape
    x0, y0 = max(placement.left, 0), max(placement.top, 0)
    x1, y1 = min(placement.left + w, width), min(placement.top + h, height)
    return (slice(y0, y1), slice(x0, x1),
            slice(y0 - placement.top, y1 - placement.top), slice(x0 - placement.left, x1 - placement.left))


def _ground_truth(scene: Scene) -> np.ndarray:
    rows = []
    for frame in range(1, scene.num_frames + 1):
        owner = np.zeros((scene.height, scene.width), np.int32)  # id of the nearest object per pixel
        visible_boxes = []
        for placement in place_objects(scene, frame):
            ys, xs, pys, pxs = _clip(placement, scene.width, scene.height)
            mask = placement.mask[pys, pxs]
            if not mask.any():
                continue
            owner[ys, xs][mask] = placement.identity
            rows_any, cols_any = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
            left, top = xs.start + cols_any[0], ys.start + rows_any[0]
            right, bottom = xs.start + cols_any[-1] + 1, ys.start + rows_any[-1] + 1
            visible_boxes.append((placement.identity, left, top, right - left, bottom - top, int(mask.sum())))
        for identity, left, top, w, h, area in sorted(visible_boxes):
            visibility = float((owner == identity).sum()) / area
            rows.append([frame, identity, left, top, w, h, 1, 1, round(visibility, 4), -1])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 10)


def render_frame(scene: Scene, frame: int) -> np.ndarray:
    """The RGB uint8 image ``[height, width, 3]`` of ``frame`` (numbered from 1)."""
    if not 1 <= frame <= scene.num_frames:
        raise InputError(f"frame must be in [1, {scene.num_frames}], got {frame}")
    params = DIFFICULTY[scene.difficulty]
    if scene.camera is None:
        image = scene.background.astype(np.float32)
    else:  # the world background (offset by the margin) seen through the camera
        view = world_to_image(scene, frame)
        view[:, 2] -= view[:, :2] @ [scene.camera.margin, scene.camera.margin]
        image = cv2.warpAffine(scene.background, view, (scene.width, scene.height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    for placement in place_objects(scene, frame):
        ys, xs, pys, pxs = _clip(placement, scene.width, scene.height)
        mask = placement.mask[pys, pxs]
        image[ys, xs][mask] = placement.texture[pys, pxs][mask]
    rng = np.random.default_rng([scene.seed, frame])
    image *= 1.0 + params["flicker"] * np.sin(frame / 7.0)
    image += rng.normal(0, params["noise"], size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_mot_sequence(scene: Scene, out_dir: str | os.PathLike, name: str | None = None) -> Path:
    """``out_dir/img1/000001.jpg ...``, ``out_dir/gt/gt.txt`` and ``out_dir/seqinfo.ini`` (MOTChallenge layout)."""
    out_dir = Path(out_dir)
    for frame in range(1, scene.num_frames + 1):
        write_image_rgb(out_dir / "img1" / f"{frame:06d}.jpg", render_frame(scene, frame))
    write_mot(out_dir / "gt" / "gt.txt", scene.ground_truth)
    info = (
        "[Sequence]\n"
        f"name={name or out_dir.name}\nimDir=img1\nframeRate=30\nseqLength={scene.num_frames}\n"
        f"imWidth={scene.width}\nimHeight={scene.height}\nimExt=.jpg\n"
    )
    (out_dir / "seqinfo.ini").write_text(info, encoding="utf-8")
    return out_dir


def frame_annotations(scene: Scene, frame: int, min_visibility: float = 0.0) -> list[dict]:
    """The seed's label records of ``frame``: id, class 0 and the box normalised as ``cx, cy, w, h``."""
    rows = scene.ground_truth[scene.ground_truth[:, 0] == frame]
    annotations = []
    for _, identity, left, top, w, h, _, _, visibility, _ in rows:
        if visibility < min_visibility:
            continue
        bbox = {"cx": (left + w / 2) / scene.width, "cy": (top + h / 2) / scene.height,
                "w": w / scene.width, "h": h / scene.height}
        annotations.append({"id": int(identity), "class_id": 0, "bbox": bbox})
    return annotations


def write_validation_pairs(scene: Scene, out_dir: str | os.PathLike, num_pairs: int, frame_gap: int,
                           min_visibility: float = 0.3) -> Path:
    """Pairs of frames ``frame_gap`` apart in the seed's layout: ``{now,pre}/pic/<k>.jpg``, ``{now,pre}/lable/<k>.json``.

    Pair ``k`` uses frames spread evenly over the scene; boxes less than ``min_visibility``
    visible are left unlabelled (as an annotator would).
    """
    if not 1 <= frame_gap < scene.num_frames:
        raise InputError(f"frame_gap must be in [1, {scene.num_frames - 1}], got {frame_gap}")
    if num_pairs < 1:
        raise InputError(f"num_pairs must be >= 1, got {num_pairs}")
    out_dir = Path(out_dir)
    pre_frames = np.linspace(1, scene.num_frames - frame_gap, num_pairs).round().astype(int)
    for k, pre in enumerate(pre_frames):
        for role, frame in (("pre", int(pre)), ("now", int(pre) + frame_gap)):
            write_image_rgb(out_dir / role / "pic" / f"{k}.jpg", render_frame(scene, frame))
            label = {"frame": frame, "annotations": frame_annotations(scene, frame, min_visibility)}
            label_path = out_dir / role / "lable" / f"{k}.json"
            label_path.parent.mkdir(parents=True, exist_ok=True)
            label_path.write_text(json.dumps(label, indent=1), encoding="utf-8")
    return out_dir
