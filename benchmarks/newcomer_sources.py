"""Small files in each real upstream format, for trying every `data.source` by hand
(docs/sources_walkthrough.md runs the commands on them).

    python benchmarks/newcomer_sources.py DIR [--n=12]

Writes under DIR (images are built-in scenes, 112 x 112 px, with their exact boxes and answers):
  sif/SIF-50K.json + data/viscot/*.jpg, *_d.png   SIF-50K as SIFThinker's produce.py writes it (`../data/`
                                                   paths relative to sif/, Spectral_r depth PNGs, the trace
                                                   as the assistant message)
  gqa/questions.json, scene_graphs.json, images/  GQA balanced questions + scene graphs (pixel x, y, w, h)
  sayo/sayo.parquet, sayo.json                     SAYO records (PNG bytes / base64, focus_area token
                                                   ranges on the 28 px grid: 4 x 4 for 112 px)
  sayo/sayo448.parquet                             the same at SAYO's 448 x 448 px (16 x 16 grid)
  vsr/vsr.jsonl, images/                           VSR lines {image, caption, label, relation}
  vsr/vsr_with_bad_lines.jsonl                     3 good lines, then no caption, label "maybe", a missing image
  whatsup/controlled_images_dataset.json           WhatsUp Controlled-A/B {image_path, caption_options}
  whatsup/coco_qa_one_obj.json, val2017/           COCO-spatial [image_id, true, false]
  whatsup/vg_qa_one_obj.json, vg_images/           VG-spatial [image_id, true, false]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os

import matplotlib
import numpy as np
from PIL import Image

from sif_jax.data.pipeline import BuiltinSource
from sif_jax.data.scenes import SceneConfig

SIZE = 112  # 4 x 4 tokens of 28 px
CELL = 28


def spectral_depth(depth: np.ndarray) -> np.ndarray:
    """Depth in [0, 1] (0 = near) -> SIF-50K's Spectral_r pseudo-colour [h, w, 3] uint8 (index = 255 (1 - d))."""
    palette = (matplotlib.colormaps["Spectral_r"](np.arange(256))[:, :3] * 255).astype(np.uint8)
    return palette[np.round(255 * (1 - np.clip(depth, 0, 1))).astype(int)]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _focus(box) -> list[list[int]]:
    """A normalised box -> SAYO's inclusive token-index ranges, one per grid row it covers."""
    cols = SIZE // CELL
    x1, y1, x2, y2 = (int(np.clip(v * cols, 0, cols - 1e-6)) for v in box)
    return [[r * cols + x1, r * cols + x2] for r in range(y1, y2 + 1)]


def _rows(focus: list[list[int]]) -> list[tuple[int, int, int]]:
    """Inclusive one-row token ranges on the 4 x 4 grid -> (row, first column, last column)."""
    cols = SIZE // CELL
    return [(a // cols, a % cols, b % cols) for a, b in focus]


def write_all(out: str, n: int) -> dict[str, str]:
    examples = [BuiltinSource(seed=0, size=n, split="test", scene_config=SceneConfig(SIZE, SIZE))[i] for i in range(n)]
    paths = {}
    # SIF-50K
    viscot = os.path.join(out, "data", "viscot")
    os.makedirs(viscot, exist_ok=True)
    os.makedirs(os.path.join(out, "sif"), exist_ok=True)
    rows = []
    for i, ex in enumerate(examples):
        Image.fromarray(ex["image"]).save(os.path.join(viscot, f"scene{i}.jpg"), quality=95)
        Image.fromarray(spectral_depth(ex["depth"])).save(os.path.join(viscot, f"scene{i}_d.png"))
        image, depth = f"../data/viscot/scene{i}.jpg", f"../data/viscot/scene{i}_d.png"
        rows.append({"dataset": "scenes", "image": image, "depth_image": depth, "problem": ex["problem"],
                     "normalized_solution_round": {"bbox_3d": np.round(ex["boxes"], 3).tolist(),
                                                   "illegal_content": False},
                     "response": ex["answer"],
                     "messages": [{"role": "user", "content": f"Original image: <image>\nDepth image: <image>\n"
                                                              f"{ex['problem']}"},
                                  {"role": "assistant", "content": ex["trace"]}],
                     "images": [image, depth]})
    paths["sif"] = os.path.join(out, "sif", "SIF-50K.json")
    with open(paths["sif"], "w") as f:
        json.dump(rows, f, indent=4)
    # GQA: one verify question per scene about its first target object
    gqa_images = os.path.join(out, "gqa", "images")
    os.makedirs(gqa_images, exist_ok=True)
    questions, graphs = {}, {}
    for i, ex in enumerate(examples):
        image_id = str(2354000 + i)
        Image.fromarray(ex["image"]).save(os.path.join(gqa_images, f"{image_id}.jpg"), quality=95)
        objects = {}
        for j, (x1, y1, x2, y2) in enumerate(ex["boxes"] * SIZE):
            objects[f"{image_id}_{j}"] = {"name": f"object{j}", "x": int(x1), "y": int(y1),
                                          "w": max(1, int(x2 - x1)), "h": max(1, int(y2 - y1))}
        graphs[image_id] = {"width": SIZE, "height": SIZE, "objects": objects}
        questions[f"{i:08d}"] = {"imageId": image_id, "question": ex["problem"], "answer": ex["answer"],
                                 "fullAnswer": ex["answer"], "types": {"structural": "query", "semantic": "rel"},
                                 "annotations": {"question": {"2": f"{image_id}_0"}, "answer": {},
                                                 "fullAnswer": {}}}
    for name, data in (("questions.json", questions), ("scene_graphs.json", graphs)):
        with open(os.path.join(out, "gqa", name), "w") as f:
            json.dump(data, f)
    paths.update(gqa_questions=os.path.join(out, "gqa", "questions.json"),
                 gqa_graphs=os.path.join(out, "gqa", "scene_graphs.json"), gqa_images=gqa_images)
    # SAYO: parquet with PNG bytes and JSON with base64 images
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.join(out, "sayo"), exist_ok=True)
    sayo = [{"id": f"sayo-{i}", "type": ex["family"], "question": ex["problem"],
             "answer": f"The answer is {ex['answer']}.", "short_answer": ex["answer"], "image": _png(ex["image"]),
             "focus_area": _focus(ex["boxes"][0])} for i, ex in enumerate(examples)]
    paths["sayo_parquet"] = os.path.join(out, "sayo", "sayo.parquet")
    pq.write_table(pa.Table.from_pylist(sayo), paths["sayo_parquet"])
    # SAYO's own size: 448 x 448 px, focus_area on its 16 x 16 grid of 28 px tokens
    sayo448 = [{**r, "image": _png(np.asarray(Image.fromarray(ex["image"]).resize((448, 448)))),
                "focus_area": [[(4 * row + k) * 16 + 4 * a, (4 * row + k) * 16 + 4 * b + 3]
                               for row, a, b in _rows(r["focus_area"]) for k in range(4)]}
               for r, ex in zip(sayo, examples, strict=True)]
    paths["sayo448"] = os.path.join(out, "sayo", "sayo448.parquet")
    pq.write_table(pa.Table.from_pylist(sayo448), paths["sayo448"])
    paths["sayo_json"] = os.path.join(out, "sayo", "sayo.json")
    with open(paths["sayo_json"], "w") as f:
        json.dump([{**r, "image": base64.b64encode(r["image"]).decode()} for r in sayo], f)
    # VSR
    vsr_images = os.path.join(out, "vsr", "images")
    os.makedirs(vsr_images, exist_ok=True)
    lines = []
    for i, ex in enumerate(examples):
        name = f"{i:012d}.jpg"
        Image.fromarray(ex["image"]).save(os.path.join(vsr_images, name), quality=95)
        lines.append({"image": name, "caption": "The cube is left of the sphere." if i % 2 else
                      "The sphere is behind the cone.", "label": i % 2, "relation": "left of" if i % 2 else "behind"})
    paths["vsr"] = os.path.join(out, "vsr", "vsr.jsonl")
    with open(paths["vsr"], "w") as f:
        f.write("\n".join(json.dumps(x) for x in lines) + "\n")
    bad = [{"image": lines[0]["image"], "label": 1, "relation": "left of"},  # no caption
           {**lines[1], "label": "maybe"}, {**lines[2], "image": "missing.jpg"}]
    paths["vsr_bad"] = os.path.join(out, "vsr", "vsr_with_bad_lines.jsonl")
    with open(paths["vsr_bad"], "w") as f:
        f.write("\n".join(json.dumps(x) for x in lines[:3] + bad) + "\n")
    # WhatsUp: Controlled-A/B, COCO-spatial, VG-spatial
    wu = os.path.join(out, "whatsup")
    for sub in ("data/controlled_images", "val2017", "vg_images"):
        os.makedirs(os.path.join(wu, sub), exist_ok=True)
    controlled, coco, vg = [], [], []
    for i, ex in enumerate(examples):
        Image.fromarray(ex["image"]).save(os.path.join(wu, "data", "controlled_images", f"cube_on_table{i}.jpeg"))
        Image.fromarray(ex["image"]).save(os.path.join(wu, "val2017", f"{397133 + i:012d}.jpg"))
        Image.fromarray(ex["image"]).save(os.path.join(wu, "vg_images", f"{2400000 + i}.jpg"))
        controlled.append({"image_path": f"data/controlled_images/cube_on_table{i}.jpeg",
                           "caption_options": ["A cube on a table", "A cube under a table",
                                               "A cube to the left of a table", "A cube to the right of a table"]})
        coco.append([397133 + i, "A cube to the left of a sphere", "A cube to the right of a sphere"])
        vg.append([2400000 + i, "A cone above a cube", "A cone below a cube"])
    for name, data in (("controlled_images_dataset.json", controlled), ("coco_qa_one_obj.json", coco),
                       ("vg_qa_one_obj.json", vg)):
        paths[name.split("_")[0]] = os.path.join(wu, name)
        with open(paths[name.split("_")[0]], "w") as f:
            json.dump(data, f)
    paths["whatsup_root"] = wu
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--n", type=int, default=12, help="records per file")
    args = parser.parse_args()
    for name, path in write_all(args.out, args.n).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
