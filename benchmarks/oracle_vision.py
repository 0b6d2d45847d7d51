"""Is the vision tower or the language model the bottleneck? SFT with oracle visual tokens.

    python benchmarks/oracle_vision.py --features=oracle --steps=600             # tiny, ~15 min on 2 cores
    python benchmarks/oracle_vision.py --features=oracle --position --steps=600  # + each cell's row and column
    python benchmarks/oracle_vision.py --features=tower --steps=600              # the same loop, the real tower
    python benchmarks/oracle_vision.py --features=oracle --position --targets=cell --steps=3000  # one-hop lookups
    python benchmarks/oracle_vision.py --features=oracle --position --lookup_fraction=0.25  # traces + lookups
    python benchmarks/oracle_vision.py --features=text --steps=600   # the scene written into the prompt

Trains a fresh model with the SFT loss on the built-in task's traces (`BuiltinSource(seed, "train")`,
AdamW, linear warm-up then cosine decay to 0 over `--steps`, the default recipe's learning rate and
batch; `--region_weight` adds the region-attention loss of `sft.region_attention_weight`), as the
SFT phase does, except
that with `--features=oracle` the language model's visual tokens are not the vision tower's output
but a perfect reading of the scene: each merged visual token (one 28 x 28 pixel cell, raster order,
as the tower's features) is replaced by a learned embedding of what the cell shows,

    e(cell) = E_object[1 + colour * 4 + shape  (0: background)] + E_depth[depth bucket of that object]

(the object covering most of the cell if it covers >= 20% of it, as `vision_cells.py` labels it;
its normalised depth in 9 buckets, 1-9, and 0 for background). Position reaches the language model the same way
in both modes: the visual tokens' M-RoPE positions, which move attention scores but not the values
read; `--position` also adds E_row[r] + E_col[c] of the cell, so that a value read says where it is.
The embeddings are trained with the model. `--features=text` keeps the tower's visual tokens and
also writes the scene into the prompt before the question (`scene_text`: every object's name, box
and depth, the numbers a trace writes), so the same probe tells whether this language model learns to
find what a trace needs in its context when it is text, which separates retrieval from visual tokens
from retrieval in general.

`--targets=answer` keeps the questions but trains on `<answer>...</answer>` alone, so every
target token needs the image or the question; `--targets=cell` asks instead the simplest read there
is, "What is at row three column five?" (`cell_question`), whose answer is the object's name.
`--targets=locate` asks the inverse, "Where is the red cube?" -> "row three column five"
(`locate_question`): the name is matched against the tokens' contents and the position read out.
`--lookup_fraction=f` keeps the traces (or answers) and makes the first round(f * batch) examples of
every batch such lookups (`--lookup=cell` or `locate`) about their own scenes, so both are learnt at
once; the lookups are then probed too (rows `lookup` in the output).

Every `--every` steps it runs `sft_probe.py`'s teacher-forced probe on held-out traces
(`BuiltinSource(seed, "test")`) with each example's own visual tokens and with the next example's.
If the oracle model's box/conclusion/answer accuracies drop with the other scene's tokens and its
answers beat the tower model's, the language model can learn to read visual tokens within this budget
and the tower's features are what is missing; if not, the recipe or the language model is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python benchmarks/oracle_vision.py` from the repository root
    sys.path.insert(0, ROOT)

from benchmarks.vision_cells import cell_objects, object_class  # noqa: E402

DEPTH_BUCKETS = 10
NUM_OBJECT_CLASSES = 1 + 8 * 4


def cell_features(scene: Any, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 [R * C] object class (0 background, else 1 + colour * 4 + shape) and int32 [R * C] depth
    bucket (0 background, else 1 + floor(object depth * (DEPTH_BUCKETS - 1))) of `scene`'s cells."""
    objects = cell_objects(scene, cell)
    label, depth = np.zeros(len(objects), np.int32), np.zeros(len(objects), np.int32)
    for k, i in enumerate(objects):
        if i >= 0:
            o = scene.objects[i]
            label[k] = object_class(o)
            depth[k] = 1 + min(int(o.depth * (DEPTH_BUCKETS - 1)), DEPTH_BUCKETS - 2)
    return label, depth


NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def largest_object(scene: Any) -> int:
    """Index into `scene.objects` of the object with the most visible pixels."""
    return int(np.argmax([(scene.id_mask == j).sum() for j in range(len(scene.objects))]))


def cell_question(example: dict[str, Any], scene: Any, cell: int) -> dict[str, Any]:
    """`example` (a `BuiltinSource` example of `scene`) asked a one-hop lookup instead: "What is at row
    R column C?" for a cell drawn (seeded by the scene) among those `cell_objects` gives an object (if
    none, the cell of the largest object's centre); the answer is its "colour shape" name, the target
    `<answer>name</answer>`, the family "cell". ValueError if the grid is wider than NUMBER_WORDS."""
    objects = cell_objects(scene, cell)
    grid = scene.id_mask.shape[1] // cell
    if grid > len(NUMBER_WORDS):
        raise ValueError(f"cell_question: {grid} columns, the words go up to {len(NUMBER_WORDS)}")
    shown = np.flatnonzero(objects >= 0)
    if len(shown):
        k = int(np.random.default_rng([scene.seed, 7]).choice(shown))
        name = scene.objects[objects[k]].name
    else:  # every object covers under MIN_COVER of each cell: ask for the cell of the largest one's centre
        i = largest_object(scene)
        ys, xs = np.nonzero(scene.id_mask == i)
        k = int(ys.mean()) // cell * grid + int(xs.mean()) // cell
        name = scene.objects[i].name
    return {**example, "problem": f"What is at row {NUMBER_WORDS[k // grid]} column {NUMBER_WORDS[k % grid]}?",
            "answer": name, "choices": [], "family": "cell", "trace": f"<answer>{name}</answer>"}


def locate_question(example: dict[str, Any], scene: Any, cell: int) -> dict[str, Any]:
    """`example` (a `BuiltinSource` example of `scene`) asked the inverse lookup instead: "Where is the
    red cube?" for an object (seeded by the scene) whose colour and shape no other object of the scene
    has and that `cell_objects` shows in at least one cell; the answer is "row R column C" for the shown
    cell nearest its pixel centroid (the words of `cell_question`), the target `<answer>...</answer>`,
    the family "locate". If no such object, the largest object and the cell of its centroid.
    ValueError if the grid is wider than NUMBER_WORDS."""
    objects = cell_objects(scene, cell)
    grid = scene.id_mask.shape[1] // cell
    if grid > len(NUMBER_WORDS):
        raise ValueError(f"locate_question: {grid} columns, the words go up to {len(NUMBER_WORDS)}")
    classes = [object_class(o) for o in scene.objects]
    shown = [i for i in range(len(scene.objects)) if classes.count(classes[i]) == 1 and (objects == i).any()]
    if shown:
        i = int(np.random.default_rng([scene.seed, 8]).choice(shown))
        cells = np.flatnonzero(objects == i)
    else:
        i = largest_object(scene)
        cells = np.arange(len(objects))
    ys, xs = np.nonzero(scene.id_mask == i)
    centre = ((ys.mean() + 0.5) / cell - 0.5, (xs.mean() + 0.5) / cell - 0.5)  # in cell units
    k = int(cells[np.argmin([(c // grid - centre[0]) ** 2 + (c % grid - centre[1]) ** 2 for c in cells])])
    name, where = scene.objects[i].name, f"row {NUMBER_WORDS[k // grid]} column {NUMBER_WORDS[k % grid]}"
    return {**example, "problem": f"Where is the {name}?", "answer": where, "choices": [], "family": "locate",
            "trace": f"<answer>{where}</answer>"}


def scene_text(scene: Any) -> str:
    """The scene written out (`--features=text`): "Scene: the purple cone at [0.013,0.602,0.175,0.759]
    depth 0.137; ...; the cyan cylinder at [...] depth 0.588." Objects left to right by box centre, each by
    its referring name, its box rounded outward and its mean depth, the very numbers a trace writes for
    it (`sif_jax.data.captions.caption_trace`), so a trace's target step can be copied from here once the
    named object is found."""
    from sif_jax.data.captions import caption_trace
    from sif_jax.data.format import fmt_number

    parts = []
    for step in caption_trace(scene).steps:
        name = step.text[len("The "):-1]
        coords = ",".join(fmt_number(v) for v in step.boxes[0])
        parts.append(f"the {name} at [{coords}] depth {fmt_number(step.depths[0])}")
    return "Scene: " + "; ".join(parts) + "."


IMAGE_KEYS = ("pixel_values", "image_grid_thw", "image_patches")


def with_scene(example: dict[str, Any], scene: Any) -> dict[str, Any]:
    """`example` with `scene_text(scene)` written before its question ("problem")."""
    return {**example, "problem": f"{scene_text(scene)} {example['problem']}"}


def probe_inputs(examples: Sequence[dict[str, Any]], scenes: Sequence[Any], pre: Any, text: bool
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The probe's preprocessed examples (`pre`: a `Preprocessor`), and the same examples seen with the
    next example's scene: its image (`IMAGE_KEYS`) and, with `text`, its `scene_text` in place of the own
    one. The trace, hence the target tokens, stays the example's own."""
    def seen(ex: dict[str, Any], scene: Any) -> dict[str, Any]:
        return pre(with_scene(ex, scene) if text else ex)

    processed = [seen(ex, scene) for ex, scene in zip(examples, scenes, strict=True)]
    n = len(processed)
    swapped = [{**(seen(ex, scenes[(i + 1) % n]) if text else p), **{k: processed[(i + 1) % n][k] for k in IMAGE_KEYS}}
               for i, (ex, p) in enumerate(zip(examples, processed, strict=True))]
    return processed, swapped


def token_cells(input_ids: np.ndarray, image_token_id: int, cells: Sequence[tuple[np.ndarray, np.ndarray]]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-position (object class, depth bucket) int32 [B, L]: the k-th image token of row b gets
    cell k of `cells[b]`; other positions 0."""
    label, depth = np.zeros(input_ids.shape, np.int32), np.zeros(input_ids.shape, np.int32)
    for b, (lab, dep) in enumerate(cells):
        cols = np.flatnonzero(input_ids[b] == image_token_id)
        if len(cols) != len(lab):
            raise ValueError(f"row {b}: {len(cols)} image tokens but {len(lab)} cells")
        label[b, cols], depth[b, cols] = lab, dep
    return label, depth


def oracle_interceptor(module_type: type, image_token_id: int, table: Any, label: Any, depth: Any, grid: int,
                       position: bool) -> Any:
    """A `flax.linen.intercept_methods` interceptor: the VLM's `embed` output (float [B, L, hidden]) at
    image-token positions becomes `table["object"][label] + table["depth"][depth]` (label, depth:
    int [B, L] from `token_cells`), plus `table["row"][k // grid] + table["col"][k % grid]` for the
    row's k-th image token when `position`. Everything else, the vision tower included, runs as is."""
    import jax.numpy as jnp

    def interceptor(next_fun, fargs, fkwargs, context):
        out = next_fun(*fargs, **fkwargs)
        if context.method_name != "embed" or not isinstance(context.module, module_type):
            return out
        input_ids = fargs[0] if fargs else fkwargs["input_ids"]
        is_image = input_ids == image_token_id
        e = table["object"][label] + table["depth"][depth]
        if position:  # the k-th image token of a row is cell k, raster order
            k = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, None)
            e = e + table["row"][k // grid] + table["col"][k % grid]
        return jnp.where(is_image[..., None], e.astype(out.dtype), out)

    return interceptor


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", choices=("oracle", "tower", "text"), default="oracle",
                    help="the visual tokens: perfect ones (oracle), the tower's (tower), or the tower's with the "
                         "scene also written into the prompt (text: `scene_text`)")
    ap.add_argument("--position", action="store_true",
                    help="oracle tokens also carry their cell's row and column (E_row[r] + E_col[c])")
    ap.add_argument("--region_weight", type=float, default=0.0,
                    help="λ of the SFT region-attention loss (sif_jax/region_supervision.py); 0: off")
    ap.add_argument("--region_layers", default="-2,-1", help="decoder layers it supervises")
    ap.add_argument("--captions", action="store_true",
                    help="train and probe on grounding captions of the scenes (sif_jax/data/captions.py) instead "
                         "of their questions' traces: `text` is then the objects' names")
    ap.add_argument("--targets", choices=("trace", "answer", "cell", "locate"), default="trace",
                    help="what the model is trained and probed on: the question and its SIF trace; the question "
                         "and only `<answer>...</answer>`; `cell`, a one-hop lookup: \"What is at row three "
                         "column five?\" -> `<answer>red cube</answer>` for a random cell that shows an object; or "
                         "`locate`, the inverse: \"Where is the red cube?\" -> "
                         "`<answer>row three column five</answer>`")
    ap.add_argument("--lookup_fraction", type=float, default=0.0,
                    help="the first round(f * batch_size) examples of each batch are --lookup questions about their "
                         "scenes (with --targets=trace or answer); the lookups are probed too")
    ap.add_argument("--lookup", choices=("cell", "locate"), default="cell",
                    help="the kind of question --lookup_fraction mixes in (see --targets)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--learning_rate", type=float, default=3e-3)
    ap.add_argument("--warmup_fraction", type=float, default=0.1)
    ap.add_argument("--every", type=int, default=200, help="steps between probes")
    ap.add_argument("--examples", type=int, default=64, help="held-out examples per probe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image_size", type=int, default=224, help="scene height and width in pixels")
    ap.add_argument("--out", default="", help="write every probe here (JSON)")
    ap.add_argument("--save", default="", help="write the trained model and oracle table here (msgpack)")
    ap.add_argument("--init", default="",
                    help="start from a --save file of the same preset and --image_size (a curriculum: e.g. "
                         "--targets=cell first, then the questions); the optimizer starts afresh")
    args = ap.parse_args(argv)
    if args.captions and args.targets != "trace":
        ap.error(f"--captions and --targets={args.targets}: captions have their own targets; pick one")
    lookup_only = args.targets in ("cell", "locate") or args.captions
    if not 0 <= args.lookup_fraction <= 1 or (args.lookup_fraction and lookup_only):
        ap.error(f"--lookup_fraction={args.lookup_fraction}: a fraction in [0, 1] of a batch of traces or answers "
                 "(not with --targets=cell, locate or --captions)")
    if args.lookup != "cell" and not args.lookup_fraction:
        ap.error(f"--lookup={args.lookup} chooses what --lookup_fraction mixes in; give --lookup_fraction too")
    if args.steps < 1 or args.every < 1:
        ap.error(f"--steps={args.steps} --every={args.every}: both must be at least 1")

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax
    from flax import serialization

    from benchmarks.sft_probe import SEGMENTS, probe, probe_examples, trace_labels
    from sif_jax import region_supervision
    from sif_jax.data.batching import collate_sft
    from sif_jax.data.captions import caption_example
    from sif_jax.data.pipeline import BuiltinSource, PreprocessConfig, Preprocessor
    from sif_jax.data.prompts import get_prompt
    from sif_jax.data.scenes import SceneConfig, generate_scene
    from sif_jax.data.tokenizer import BuiltinTokenizer
    from sif_jax.model.family import family_of, get_preset
    from sif_jax.optim import make_optimizer
    from sif_jax.sft import sft_loss_and_region_terms
    from sif_jax.train import sft_schedule

    config = get_preset(args.preset)
    family = family_of(config)
    module = family.module(config)
    cell = config.vision.patch_size * config.vision.spatial_merge_size
    grid = args.image_size // cell
    scenes = SceneConfig(height=args.image_size, width=args.image_size)
    tokenizer = BuiltinTokenizer()
    pre = Preprocessor(tokenizer, config, PreprocessConfig.from_prompt(get_prompt("builtin")))
    train = BuiltinSource(seed=args.seed, size=10**7, split="train", scene_config=scenes)
    test = BuiltinSource(seed=args.seed, size=args.examples, split="test", scene_config=scenes)
    oracle = args.features == "oracle"
    hidden = config.text.hidden_size

    def targets(ex: dict[str, Any], scene: Any, lookup: bool = False) -> dict[str, Any]:
        """`ex` (an example of `scene`) with this run's targets; `lookup`: a --lookup question instead."""
        if args.targets == "locate" or (lookup and args.lookup == "locate"):
            return locate_question(ex, scene, cell)
        if lookup or args.targets == "cell":
            return cell_question(ex, scene, cell)
        if args.targets == "answer":
            return {**ex, "trace": f"<answer>{ex['answer']}</answer>"}
        return ex

    def with_visual_tokens(fn: Any, table: Any, label: Any, depth: Any) -> Any:
        if not oracle:
            return fn()
        with nn.intercept_methods(oracle_interceptor(type(module), config.image_token_id, table, label, depth,
                                                     grid, args.position)):
            return fn()

    key = jax.random.key(args.seed)
    params = family.init_params(config, key)
    k1, k2 = jax.random.split(jax.random.fold_in(key, 1))
    k3, k4 = jax.random.split(jax.random.fold_in(key, 2))
    table = {"object": 0.5 * jax.random.normal(k1, (NUM_OBJECT_CLASSES, hidden)),
             "depth": 0.5 * jax.random.normal(k2, (DEPTH_BUCKETS, hidden)),
             "row": 0.5 * jax.random.normal(k3, (grid, hidden)),
             "col": 0.5 * jax.random.normal(k4, (grid, hidden))}
    optimizer = make_optimizer(sft_schedule(args.steps, args.learning_rate, args.warmup_fraction))
    state = (params, table)
    if args.init:
        with open(args.init, "rb") as f:
            state = serialization.from_bytes(state, f.read())
    opt_state = optimizer.init(state)

    region_layers = region_supervision.layer_indices(tuple(int(x) for x in args.region_layers.split(",")),
                                                     config.text.num_layers) if args.region_weight > 0 else ()

    @jax.jit
    def step(state, opt_state, inputs, mask, region_mask, label, depth):
        def loss_fn(s):
            p, t = s
            num, den, region_sum, region_rows = with_visual_tokens(
                lambda: sft_loss_and_region_terms(p, inputs, mask, region_mask if region_layers else None,
                                                  config=config, region_layers=region_layers), t, label, depth)
            return num / den + args.region_weight * region_sum / jnp.maximum(region_rows, 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(state)
        updates, opt_state = optimizer.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    # The held-out probe: sft_probe.probe collates batches of 8 in order; `Forward` feeds each its cells.
    test_scenes = [generate_scene(test.scene_seed(i), scenes) for i in range(args.examples)]
    test_cells = [cell_features(scene, cell) for scene in test_scenes]

    @jax.jit
    def _forward(s, inputs, label, depth):
        p, t = s

        def run():
            _, aux = module.apply({"params": p}, **family.model_inputs(inputs), return_hidden=True)
            return aux["hidden"].astype(jnp.float32) @ family.lm_head_kernel(p, config).astype(jnp.float32)

        logits = with_visual_tokens(run, t, label, depth)
        return jnp.argmax(logits, -1), jax.nn.log_softmax(logits, -1)

    class Forward:
        def __init__(self, cells: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
            self.cells, self.start = cells, 0

        def __call__(self, s: Any, inputs: Any) -> Any:
            ids = np.asarray(inputs["input_ids"])
            chunk = self.cells[self.start:self.start + ids.shape[0]]
            self.start += ids.shape[0]
            return _forward(s, inputs, *token_cells(ids, config.image_token_id, chunk))

    swapped_cells = test_cells[1:] + test_cells[:1]
    probe_sets = {}  # name -> (examples, processed, labels, processed with the next example's image)
    for name, lookup in [("", False)] + ([("lookup", True)] if args.lookup_fraction else []):
        examples = [targets(ex, scene, lookup) for ex, scene in
                    zip(probe_examples(test, args.examples, captions=args.captions), test_scenes, strict=True)]
        processed, swapped = probe_inputs(examples, test_scenes, pre, text=args.features == "text")
        probe_sets[name] = (examples, processed, trace_labels(examples, processed, tokenizer, captions=args.captions),
                            swapped)

    results: dict[str, Any] = {"features": args.features, "position": args.position,
                               "region_weight": args.region_weight, "region_layers": args.region_layers,
                               "captions": args.captions, "targets": args.targets,
                               "lookup_fraction": args.lookup_fraction, "lookup": args.lookup, "preset": args.preset,
                               "seed": args.seed, "examples": args.examples, "init": args.init, "steps": {}}
    lookups = round(args.lookup_fraction * args.batch_size)
    start, cursor = time.time(), 0
    for s in range(1, args.steps + 1):
        idx = range(cursor, cursor + args.batch_size)
        cursor += args.batch_size
        batch_scenes = [generate_scene(train.scene_seed(i), scenes) for i in idx]
        raw = [caption_example(scene, i) if args.captions else targets(train[i], scene, j < lookups)
               for j, (i, scene) in enumerate(zip(idx, batch_scenes, strict=True))]
        batch_ex = [pre(with_scene(ex, scene) if args.features == "text" else ex)
                    for ex, scene in zip(raw, batch_scenes, strict=True)]
        batch = collate_sft(batch_ex, config, length_buckets=(128, 192, 256, 320, 384, 512, 640, 768),
                            patch_buckets=(256,))
        ids = np.asarray(batch.inputs.input_ids)
        label, depth = token_cells(ids, config.image_token_id, [cell_features(scene, cell) for scene in batch_scenes])
        state, opt_state, loss = step(state, opt_state, batch.inputs.arrays(), batch.loss_mask, batch.region_mask,
                                      label, depth)
        if s % 50 == 0:
            print(f"step {s}: loss {float(loss):.3f} ({time.time() - start:.0f} s)", flush=True)
        if s % args.every == 0 or s == args.steps:
            row = {}
            for set_name, (examples, processed, labels, swapped) in probe_sets.items():
                for scene_name, cells, inputs in (("own", test_cells, processed), ("other", swapped_cells, swapped)):
                    key = f"{set_name}_{scene_name}" if set_name else scene_name
                    row[key] = probe(Forward(cells), state, config, examples, inputs, labels)
            results["steps"][s] = row
            for name, r_all in row.items():
                r = r_all["all"]
                print(f"step {s} ({'lookups, ' if name.startswith('lookup') else ''}"
                      f"{name.rsplit('_', 1)[-1]} scene's visual tokens): "
                      + "  ".join(f"{g} {r.get('acc_' + g, float('nan')):.3f}" for g in SEGMENTS)
                      + f"  answer_exact {r['answer_exact']:.3f}", flush=True)
                if name.startswith("lookup"):
                    continue
                for fam, rf in sorted(r_all.items()):
                    if fam != "all":
                        print(f"    {fam:9s} answer_exact {rf['answer_exact']:.3f} box {rf.get('acc_box', 0):.3f} "
                              f"conclusion {rf.get('acc_conclusion', 0):.3f}", flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)
    if args.save:
        with open(args.save, "wb") as f:
            f.write(serialization.to_bytes(state))
    return results


if __name__ == "__main__":
    main()
