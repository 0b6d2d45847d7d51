"""Procedural spatial scenes with exact boxes and depth (NumPy + Pillow, deterministic per seed).

A scene is 2-6 objects standing on a ground plane, seen by a pinhole camera:

* world axes: X to the right, Y up, Z forward (away from the camera); the ground is Y = 0;
* the camera sits at (0, camera_height, 0) and looks along +Z with no roll or yaw; its principal
  point is shifted up (`horizon_frac`) so that the ground fills most of the frame — a plain
  pinhole with an off-centre sensor, so a point projects to
  `u = cx + f X / Z`, `v = cy + f (camera_height - Y) / Z`;
* an object of half-extent `s` stands on the ground at (X, s, Z); it is drawn as a flat sprite
  (circle, square, triangle, narrow rounded box) of side `2 f s / Z` facing the camera, so
  farther objects are smaller and higher in the image;
* sprites are painted far -> near, so nearer objects occlude farther ones.

Depth is the camera-space Z, clipped at `far` (sky and the far ground are `far`) and normalised
per image as SIFThinker's depth maps are (min-max of a relative depth map): 0 = the nearest pixel
of the image, 1 = `far`. Each object is at one depth (a sprite), its centre Z.

Boxes are the *visible* pixels' tight box, normalised by the image size:
`[c_min / W, r_min / H, (c_max + 1) / W, (r_max + 1) / H]` — pixel edges, so a box never
collapses to zero width. An object's `depth` is the mean of the normalised depth map over the
pixels inside its box (ground and occluders included), which is what SIFThinker's traces carry.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("sphere", "cube", "cone", "cylinder")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 210),
    "yellow": (230, 200, 40),
    "purple": (130, 60, 170),
    "orange": (240, 130, 30),
    "cyan": (40, 190, 200),
    "gray": (120, 120, 120),
}
# Half-extent in world units of each size class.
SIZES: dict[str, float] = {"small": 0.25, "medium": 0.4, "large": 0.6}


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Every field is a plain value so configs hash and print."""

    height: int = 224
    width: int = 224
    min_objects: int = 2
    max_objects: int = 6
    focal_frac: float = 1.0  # focal length in units of the image width (~53 deg horizontal FOV)
    horizon_frac: float = 0.3  # principal point row / height: the horizon's row
    camera_height: float = 1.5
    z_range: tuple[float, float] = (3.0, 10.0)
    far: float = 14.0
    min_visible_pixels: int = 40  # an object with fewer visible pixels is redrawn
    min_visible_fraction: float = 0.2  # ... or with less of its silhouette visible
    min_box_side: int = 4  # pixels
    min_gap: float = 0.15  # world distance kept between objects on the ground (no overlap in 3-D)
    max_attempts: int = 400

    def __post_init__(self) -> None:
        if self.height < 32 or self.width < 32:
            raise ValueError(f"SceneConfig: height={self.height}, width={self.width}: need >= 32")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"SceneConfig: min_objects={self.min_objects}, max_objects={self.max_objects}: "
                "need 1 <= min_objects <= max_objects"
            )
        if not 0 < self.z_range[0] < self.z_range[1] < self.far:
            raise ValueError(f"SceneConfig: z_range={self.z_range}, far={self.far}: need 0<a<b<far")

    @property
    def focal(self) -> float:
        return self.focal_frac * self.width

    @property
    def principal_point(self) -> tuple[float, float]:
        return self.width / 2.0, self.horizon_frac * self.height


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    box: visible box, normalised [x1, y1, x2, y2] in [0, 1] (pixel edges).
    depth: mean normalised depth inside `box` (0 = nearest, 1 = farthest).
    position: world (X, Y, Z) of the object's centre; Z is its camera depth.
    object_depth: the object's own normalised depth (its pixels' value in the depth map).
    visible_pixels / total_pixels: pixel counts after / before occlusion.
    """

    index: int
    shape: str
    color: str
    size: str
    position: tuple[float, float, float]
    box: tuple[float, float, float, float]
    depth: float
    object_depth: float
    visible_pixels: int
    total_pixels: int

    @property
    def name(self) -> str:
        """`"<color> <shape>"` — what questions and traces call the object."""
        return f"{self.color} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        """Centre (x, y) of the visible box, normalised."""
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2.0, (y1 + y2) / 2.0


@dataclasses.dataclass(frozen=True)
class Scene:
    """A rendered scene.

    image: uint8 [H, W, 3]. depth: float32 [H, W] in [0, 1]. id_mask: int16 [H, W], the index of
    the object seen at each pixel, -1 for ground/sky. silhouettes: bool [N, H, W], each object's
    full (amodal, before occlusion) silhouette — tests use it to check occlusion order.
    """

    seed: int
    config: SceneConfig
    image: np.ndarray
    depth: np.ndarray
    id_mask: np.ndarray
    silhouettes: np.ndarray
    objects: tuple[SceneObject, ...]

    @property
    def hw(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


@dataclasses.dataclass(frozen=True)
class _Spec:
    shape: str
    color: str
    size: str
    x: float
    z: float

    @property
    def half(self) -> float:
        return SIZES[self.size]


def mean_depth_in_box(depth: np.ndarray, box: Sequence[float]) -> float:
    """Mean of a normalised depth map float [H, W] over the pixels a normalised box covers.

    A pixel (r, c) is inside when its centre lies inside the box, i.e. the rows
    floor(y1*H + 0.5) .. ceil(y2*H - 0.5) - 1 (at least one pixel).
    """
    h, w = depth.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    c0 = min(max(int(np.floor(x1 * w + 0.5)), 0), w - 1)
    r0 = min(max(int(np.floor(y1 * h + 0.5)), 0), h - 1)
    c1 = max(min(int(np.ceil(x2 * w - 0.5)), w), c0 + 1)
    r1 = max(min(int(np.ceil(y2 * h - 0.5)), h), r0 + 1)
    return float(depth[r0:r1, c0:c1].mean())


def _silhouette(spec: _Spec, config: SceneConfig) -> np.ndarray:
    """bool [H, W]: the sprite's full silhouette (drawn with PIL, clipped by the frame)."""
    f = config.focal
    cx, cy = config.principal_point
    s = spec.half
    r = f * s / spec.z
    u = cx + f * spec.x / spec.z
    v = cy + f * (config.camera_height - s) / spec.z
    canvas = Image.new("L", (config.width, config.height), 0)
    draw = ImageDraw.Draw(canvas)
    if spec.shape == "sphere":
        draw.ellipse([u - r, v - r, u + r, v + r], fill=255)
    elif spec.shape == "cube":
        draw.rectangle([u - r, v - r, u + r, v + r], fill=255)
    elif spec.shape == "cone":
        draw.polygon([(u, v - r), (u - r, v + r), (u + r, v + r)], fill=255)
    elif spec.shape == "cylinder":
        draw.rounded_rectangle(
            [u - 0.65 * r, v - r, u + 0.65 * r, v + r], radius=max(0.3 * r, 1), fill=255
        )
    else:  # pragma: no cover - specs come from SHAPES
        raise ValueError(f"shape={spec.shape!r}: expected one of {SHAPES}")
    return np.asarray(canvas) > 127


def _background(config: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    """Ground + sky: (rgb float32 [H, W, 3], camera Z float32 [H, W] clipped at `far`)."""
    h, w = config.height, config.width
    f = config.focal
    cx, cy = config.principal_point
    rows = np.arange(h, dtype=np.float64)[:, None] + 0.5
    cols = np.arange(w, dtype=np.float64)[None, :] + 0.5
    below = rows - cy
    with np.errstate(divide="ignore"):
        z = np.where(below > 0, f * config.camera_height / np.maximum(below, 1e-9), np.inf)
    z = np.broadcast_to(np.minimum(z, config.far), (h, w))
    x = (cols - cx) * z / f
    # A faint checkerboard on the ground gives a perspective cue; it fades with distance.
    checker = ((np.floor(x) + np.floor(z)) % 2).astype(np.float64)
    fade = np.clip(1.0 - z / config.far, 0.0, 1.0)
    ground = np.array([150.0, 135.0, 110.0]) * (0.75 + 0.25 * fade[..., None])
    ground = ground + (checker * fade * 18.0)[..., None]
    sky_t = np.clip(rows / max(cy, 1.0), 0.0, 1.0)
    sky = np.array([120.0, 170.0, 230.0]) * (1 - sky_t[..., None]) + np.array(
        [200.0, 220.0, 240.0]
    ) * sky_t[..., None]
    sky = np.broadcast_to(sky, (h, w, 3))
    is_ground = np.broadcast_to(below > 0, (h, w))
    # Beyond `far` the ground blends into haze so the horizon reads as distance.
    haze = np.array([190.0, 200.0, 210.0])
    ground = np.where((z >= config.far)[..., None], haze, ground)
    rgb = np.where(is_ground[..., None], ground, sky)
    return rgb.astype(np.float32), z.astype(np.float32)


def _shade(spec: _Spec, mask: np.ndarray, config: SceneConfig) -> np.ndarray:
    """float32 [H, W, 3] colour of the sprite (top-lit gradient) — only read inside `mask`."""
    base = np.array(COLORS[spec.color], np.float32)
    rows = np.nonzero(mask.any(axis=1))[0]
    h = config.height
    t = np.zeros((h, 1), np.float32)
    if rows.size:
        span = max(rows[-1] - rows[0], 1)
        t[:, 0] = np.clip((np.arange(h) - rows[0]) / span, 0, 1)
    light = 1.15 - 0.35 * t  # lighter on top: light comes from above
    col = np.clip(base[None, None, :] * light[..., None], 0, 255)
    return np.broadcast_to(col, (h, config.width, 3))


def _compose(specs: Sequence[_Spec], config: SceneConfig, silhouettes: Sequence[np.ndarray]):
    """Paints specs far -> near; returns rgb uint8, normalised depth, id mask."""
    rgb, z = _background(config)
    rgb = rgb.copy()
    z = z.copy()
    ids = np.full((config.height, config.width), -1, np.int16)
    for i in sorted(range(len(specs)), key=lambda k: -specs[k].z):
        m = silhouettes[i]
        rgb[m] = _shade(specs[i], m, config)[m]
        z[m] = specs[i].z
        ids[m] = i
    z_min = float(z.min())
    depth = (z - z_min) / max(config.far - z_min, 1e-6)
    return np.clip(rgb, 0, 255).astype(np.uint8), depth.astype(np.float32), ids, z_min


def _id_mask(specs: Sequence[_Spec], silhouettes: Sequence[np.ndarray]) -> np.ndarray:
    """int16 [H, W] object index seen at each pixel (-1 none): painter's order, far -> near."""
    ids = np.full(silhouettes[0].shape, -1, np.int16)
    for i in sorted(range(len(specs)), key=lambda k: -specs[k].z):
        ids[silhouettes[i]] = i
    return ids


def _visible_ok(i: int, ids: np.ndarray, sil: np.ndarray, config: SceneConfig) -> bool:
    vis = ids == i
    n = int(vis.sum())
    if n < config.min_visible_pixels or n < config.min_visible_fraction * max(int(sil.sum()), 1):
        return False
    rows = np.nonzero(vis.any(axis=1))[0]
    cols = np.nonzero(vis.any(axis=0))[0]
    return (rows[-1] - rows[0] + 1) >= config.min_box_side and (
        cols[-1] - cols[0] + 1
    ) >= config.min_box_side


def _sample_spec(rng: np.random.Generator, config: SceneConfig) -> _Spec:
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = list(COLORS)[rng.integers(len(COLORS))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    z = float(rng.uniform(*config.z_range))
    # Keep the centre inside the frame: |u - cx| <= 0.42 W.
    x_max = 0.42 * config.width * z / config.focal
    x = float(rng.uniform(-x_max, x_max))
    return _Spec(shape, color, size, x, z)


def generate_scene(seed: int, config: SceneConfig | None = None) -> Scene:
    """Draws one scene; the same (seed, config) always gives the same scene, bit for bit.

    Objects are added one at a time; a candidate that overlaps another in 3-D, repeats an
    existing (shape, colour, size), or leaves any object (itself included) too occluded or too
    small is dropped and another is drawn.
    """
    config = config or SceneConfig()
    rng = np.random.default_rng(seed)
    n_target = int(rng.integers(config.min_objects, config.max_objects + 1))
    specs: list[_Spec] = []
    sils: list[np.ndarray] = []
    for _ in range(config.max_attempts):
        if len(specs) == n_target:
            break
        cand = _sample_spec(rng, config)
        if any((c.shape, c.color, c.size) == (cand.shape, cand.color, cand.size) for c in specs):
            continue
        if any(
            np.hypot(c.x - cand.x, c.z - cand.z) < c.half + cand.half + config.min_gap
            for c in specs
        ):
            continue
        sil = _silhouette(cand, config)
        trial_specs, trial_sils = specs + [cand], sils + [sil]
        ids = _id_mask(trial_specs, trial_sils)
        if all(_visible_ok(i, ids, trial_sils[i], config) for i in range(len(trial_specs))):
            specs, sils = trial_specs, trial_sils
    if len(specs) < config.min_objects:
        raise RuntimeError(
            f"generate_scene(seed={seed}): placed {len(specs)} objects in "
            f"{config.max_attempts} attempts, need min_objects={config.min_objects}"
        )
    image, depth, ids, z_min = _compose(specs, config, sils)
    h, w = config.height, config.width
    objects = []
    for i, sp in enumerate(specs):
        vis = ids == i
        rows = np.nonzero(vis.any(axis=1))[0]
        cols = np.nonzero(vis.any(axis=0))[0]
        box = (cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h)
        box = tuple(float(v) for v in box)
        objects.append(
            SceneObject(
                index=i,
                shape=sp.shape,
                color=sp.color,
                size=sp.size,
                position=(sp.x, sp.half, sp.z),
                box=box,  # type: ignore[arg-type]
                depth=mean_depth_in_box(depth, box),
                object_depth=float((sp.z - z_min) / max(config.far - z_min, 1e-6)),
                visible_pixels=int(vis.sum()),
                total_pixels=int(sils[i].sum()),
            )
        )
    return Scene(
        seed=seed,
        config=config,
        image=image,
        depth=depth,
        id_mask=ids,
        silhouettes=np.stack(sils),
        objects=tuple(objects),
    )


def depth_to_uint8(depth: np.ndarray) -> np.ndarray:
    """float [H, W] in [0, 1] -> uint8 [H, W] (near = bright), for previews."""
    return (255 * (1.0 - np.clip(depth, 0, 1))).round().astype(np.uint8)


def draw_boxes(image: np.ndarray, objects: Sequence[SceneObject]) -> Image.Image:
    """RGB PIL image with each object's visible box (1-px outline, pixel edges) and label."""
    h, w = image.shape[:2]
    im = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(im)
    for o in objects:
        x1, y1, x2, y2 = o.box
        # Outline on the box's outermost pixels: columns c_min .. c_max.
        draw.rectangle([x1 * w, y1 * h, x2 * w - 1, y2 * h - 1], outline=(255, 255, 255))
        draw.text((x1 * w + 1, max(y1 * h - 10, 0)), f"{o.index}:{o.depth:.2f}", fill=(0, 0, 0))
    return im


def contact_sheet(scenes: Sequence[Scene], scale: int = 2) -> Image.Image:
    """One row per scene: image with boxes | depth (near = bright) | object-id mask."""
    h, w = scenes[0].hw
    sheet = Image.new("RGB", (3 * w * scale, len(scenes) * h * scale), (255, 255, 255))
    palette = np.array(
        [[0, 0, 0]] + [list(c) for c in COLORS.values()] * 2, np.uint8
    )
    for row, sc in enumerate(scenes):
        boxed = draw_boxes(sc.image, sc.objects)
        depth = Image.fromarray(depth_to_uint8(sc.depth)).convert("RGB")
        ids = Image.fromarray(palette[(sc.id_mask.astype(np.int64) + 1) % len(palette)])
        for col, panel in enumerate((boxed, depth, ids)):
            panel = panel.resize((w * scale, h * scale), Image.NEAREST)
            sheet.paste(panel, (col * w * scale, row * h * scale))
    return sheet


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Preview procedural scenes.")
    parser.add_argument("--preview", required=True, help="output PNG path")
    parser.add_argument("--num", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    config = SceneConfig(height=args.size, width=args.size)
    scenes = [generate_scene(args.seed + k, config) for k in range(args.num)]
    contact_sheet(scenes).save(args.preview)
    print(f"wrote {args.preview}: {args.num} scenes")


if __name__ == "__main__":
    main()
