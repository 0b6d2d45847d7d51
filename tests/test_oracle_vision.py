"""benchmarks/oracle_vision.py: the oracle's cell labels, its token placement, that it replaces the
tower's features (and only them), and a smoke run of every option at 112 px."""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cell_features_match_the_tower_labels_and_depth_order():
    from sif_jax.data.scenes import generate_scene

    oracle, cells = _script("oracle_vision"), _script("vision_cells")
    for seed in range(3):
        scene = generate_scene(seed)
        label, depth = oracle.cell_features(scene, 28)
        np.testing.assert_array_equal(label, cells.cell_labels(scene, 28))
        assert label.shape == (64,) and ((label == 0) == (depth == 0)).all()
        assert depth.max() < oracle.DEPTH_BUCKETS
        # cells of a nearer object never get a larger bucket than cells of a farther one
        by_object = {}
        for k in np.flatnonzero(label):
            ids = scene.id_mask[(k // 8) * 28:(k // 8 + 1) * 28, (k % 8) * 28:(k % 8 + 1) * 28]
            values, counts = np.unique(ids[ids >= 0], return_counts=True)
            by_object[int(values[counts.argmax()])] = int(depth[k])
        order = sorted(by_object, key=lambda i: scene.objects[i].depth)
        assert [by_object[i] for i in order] == sorted(by_object[i] for i in order)


def test_token_cells_places_cells_in_order_and_checks_counts():
    oracle = _script("oracle_vision")
    ids = np.array([[5, 9, 9, 9, 7], [9, 9, 9, 1, 2]])
    cells = [(np.array([1, 2, 3]), np.array([4, 5, 6])), (np.array([7, 8, 9]), np.array([1, 1, 1]))]
    label, depth = oracle.token_cells(ids, 9, cells)
    np.testing.assert_array_equal(label, [[0, 1, 2, 3, 0], [7, 8, 9, 0, 0]])
    np.testing.assert_array_equal(depth, [[0, 4, 5, 6, 0], [1, 1, 1, 0, 0]])
    with pytest.raises(ValueError, match="row 1: 3 image tokens but 2 cells"):
        oracle.token_cells(ids, 9, [cells[0], (np.array([1, 2]), np.array([1, 2]))])


def test_oracle_replaces_the_towers_features_and_only_them():
    import flax.linen as nn

    from sif_jax.data.batching import collate_sft
    from sif_jax.data.pipeline import BuiltinSource, PreprocessConfig, Preprocessor
    from sif_jax.data.prompts import get_prompt
    from sif_jax.data.scenes import generate_scene
    from sif_jax.data.tokenizer import BuiltinTokenizer
    from sif_jax.model.family import family_of, get_preset

    oracle = _script("oracle_vision")
    config = get_preset("tiny")
    family = family_of(config)
    module = family.module(config)
    pre = Preprocessor(BuiltinTokenizer(), config, PreprocessConfig.from_prompt(get_prompt("builtin")))
    source = BuiltinSource(seed=0, size=2, split="test")
    processed = [pre(source[i]) for i in range(2)]
    keys = ("pixel_values", "image_grid_thw", "image_patches")
    swapped = [{**processed[i], **{k: processed[1 - i][k] for k in keys}} for i in range(2)]
    own, other = (collate_sft(p, config, length_buckets=(512,), patch_buckets=(256,)) for p in (processed, swapped))
    cells = [oracle.cell_features(generate_scene(source.scene_seed(i)), 28) for i in range(2)]
    label, depth = oracle.token_cells(np.asarray(own.inputs.input_ids), config.image_token_id, cells)
    params = family.init_params(config, jax.random.key(0))
    keys4 = jax.random.split(jax.random.key(1), 4)
    table = {"object": jax.random.normal(keys4[0], (oracle.NUM_OBJECT_CLASSES, 64)),
             "depth": jax.random.normal(keys4[1], (oracle.DEPTH_BUCKETS, 64)),
             "row": jax.random.normal(keys4[2], (8, 64)), "col": jax.random.normal(keys4[3], (8, 64))}

    def hidden(batch, lab, dep, position=False, use_oracle=True):
        def run():
            return module.apply({"params": params}, **family.model_inputs(batch.inputs.arrays()),
                                return_hidden=True)[1]["hidden"]
        if not use_oracle:
            return np.asarray(run())
        with nn.intercept_methods(oracle.oracle_interceptor(type(module), config.image_token_id, table, lab, dep,
                                                            8, position)):
            return np.asarray(run())

    base = hidden(own, label, depth)
    # another image's pixels change nothing: the tower's output is not used
    np.testing.assert_array_equal(hidden(other, label, depth), base)
    # the other scene's cells, their position, and no oracle at all each change the last hidden state
    other_label, other_depth = oracle.token_cells(np.asarray(own.inputs.input_ids), config.image_token_id, cells[::-1])
    assert np.abs(hidden(own, other_label, other_depth) - base)[:, -1].max() > 1e-3
    assert np.abs(hidden(own, label, depth, position=True) - base)[:, -1].max() > 1e-3
    assert np.abs(hidden(own, label, depth, use_oracle=False) - base)[:, -1].max() > 1e-3


def test_oracle_smoke_every_option():
    out = _script("oracle_vision").main(["--steps=2", "--every=2", "--examples=8", "--batch_size=2",
                                         "--image_size=112", "--position", "--region_weight=1",
                                         "--lookup_fraction=0.5", "--lookup=locate"])
    assert out["position"] and out["steps"].keys() == {2} and out["lookup_fraction"] == 0.5
    assert out["steps"][2].keys() == {"own", "other", "lookup_own", "lookup_other"}
    for name in ("own", "other"):
        row = out["steps"][2][name]["all"]
        assert row["examples"] == 8 and 0.0 <= row["answer_exact"] <= 1.0 and 0.0 <= row["acc_box"] <= 1.0
        lookup = out["steps"][2][f"lookup_{name}"]
        assert lookup.keys() == {"all", "locate"} and "acc_box" not in lookup["all"]  # lookups: answers only


def test_tower_smoke_on_captions():
    out = _script("oracle_vision").main(["--features=tower", "--captions", "--steps=1", "--every=1", "--examples=8",
                                         "--batch_size=2", "--image_size=112"])
    assert out["captions"] and out["features"] == "tower"
    row = out["steps"][1]["own"]["all"]
    assert row["examples"] == 8 and "acc_text" in row and "acc_conclusion" not in row  # captions have no conclusion


def test_oracle_gradient_reaches_the_table_not_the_tower():
    import flax.linen as nn
    import jax.numpy as jnp

    from sif_jax.data.batching import collate_sft
    from sif_jax.data.pipeline import BuiltinSource, PreprocessConfig, Preprocessor
    from sif_jax.data.prompts import get_prompt
    from sif_jax.data.scenes import SceneConfig, generate_scene
    from sif_jax.data.tokenizer import BuiltinTokenizer
    from sif_jax.model.family import family_of, get_preset
    from sif_jax.sft import sft_loss_terms

    oracle = _script("oracle_vision")
    config = get_preset("tiny")
    family = family_of(config)
    scenes = SceneConfig(height=112, width=112)
    pre = Preprocessor(BuiltinTokenizer(), config, PreprocessConfig.from_prompt(get_prompt("builtin")))
    source = BuiltinSource(seed=0, size=2, split="train", scene_config=scenes)
    batch = collate_sft([pre(source[i]) for i in range(2)], config, length_buckets=(512,), patch_buckets=(64,))
    cells = [oracle.cell_features(generate_scene(source.scene_seed(i), scenes), 28) for i in range(2)]
    label, depth = oracle.token_cells(np.asarray(batch.inputs.input_ids), config.image_token_id, cells)
    params = family.init_params(config, jax.random.key(0))
    table = {"object": jnp.ones((oracle.NUM_OBJECT_CLASSES, 64)), "depth": jnp.ones((oracle.DEPTH_BUCKETS, 64)),
             "row": jnp.ones((4, 64)), "col": jnp.ones((4, 64))}

    def loss(p, t):
        with nn.intercept_methods(oracle.oracle_interceptor(type(family.module(config)), config.image_token_id, t,
                                                            label, depth, 4, True)):
            num, den = sft_loss_terms(p, batch.inputs.arrays(), batch.loss_mask, config=config)
        return num / den

    g_params, g_table = jax.grad(loss, argnums=(0, 1))(params, table)
    tower = jax.tree_util.tree_leaves(g_params["visual"])
    assert all(float(jnp.abs(x).max()) == 0.0 for x in tower)
    used = np.unique(label[label > 0])
    rows = np.abs(np.asarray(g_table["object"])).sum(-1)
    assert (rows[used] > 0).all() and (np.delete(rows, np.append(used, 0)) == 0).all()
    assert float(jnp.abs(g_table["row"]).sum()) > 0


def test_cell_question_names_the_object_under_the_asked_cell():
    from sif_jax.data.pipeline import BuiltinSource
    from sif_jax.data.scenes import generate_scene

    oracle, cells = _script("oracle_vision"), _script("vision_cells")
    source = BuiltinSource(seed=0, size=40, split="train")
    words = {w: i for i, w in enumerate(oracle.NUMBER_WORDS)}
    for i in range(40):
        example = source[i]
        scene = generate_scene(example["scene_seed"], source.scene_config)
        q = oracle.cell_question(example, scene, 28)
        assert q == oracle.cell_question(example, scene, 28)  # the cell is fixed per scene
        _, _, _, _, row, _, col = q["problem"].rstrip("?").split()
        k = words[row] * 8 + words[col]
        ids = scene.id_mask[(k // 8) * 28:(k // 8 + 1) * 28, (k % 8) * 28:(k % 8 + 1) * 28]
        shown = [scene.objects[j].name for j in np.unique(ids[ids >= 0])]
        assert q["answer"] in shown, (i, q["problem"], q["answer"], shown)
        assert q["trace"] == f"<answer>{q['answer']}</answer>" and q["family"] == "cell"
        assert q["image"] is example["image"]
        owner = cells.cell_objects(scene, 28)[k]
        if owner >= 0:  # a cell the tower's labels give an object: that object
            assert q["answer"] == scene.objects[owner].name


def test_locate_question_answers_a_cell_that_shows_the_named_object():
    from sif_jax.data.pipeline import BuiltinSource
    from sif_jax.data.scenes import generate_scene

    oracle, cells = _script("oracle_vision"), _script("vision_cells")
    source = BuiltinSource(seed=0, size=40, split="train")
    words = {w: i for i, w in enumerate(oracle.NUMBER_WORDS)}
    fallbacks = 0
    for i in range(40):
        example = source[i]
        scene = generate_scene(example["scene_seed"], source.scene_config)
        q = oracle.locate_question(example, scene, 28)
        assert q == oracle.locate_question(example, scene, 28)  # the object is fixed per scene
        name = q["problem"].removeprefix("Where is the ").removesuffix("?")
        names = [o.name for o in scene.objects]
        shown = cells.cell_objects(scene, 28)
        if not any(names.count(n) == 1 and (shown == j).any() for j, n in enumerate(names)):
            fallbacks += 1  # no object is both unique and shown: the largest one is asked for
            assert name == names[int(np.argmax([(scene.id_mask == j).sum() for j in range(len(names))]))]
            continue
        named = [j for j, n in enumerate(names) if n == name]
        assert len(named) == 1, (i, q["problem"])  # a colour and shape no other object has
        _, row, _, col = q["answer"].split()
        k = words[row] * 8 + words[col]
        assert shown[k] == named[0], (i, q["problem"], q["answer"])  # the oracle shows it there
        # of the cells that show it, the one nearest its centroid
        ys, xs = np.nonzero(scene.id_mask == named[0])
        dist = [np.hypot((c // 8 + 0.5) * 28 - ys.mean() - 0.5, (c % 8 + 0.5) * 28 - xs.mean() - 0.5)
                for c in np.flatnonzero(shown == named[0])]
        assert np.hypot((k // 8 + 0.5) * 28 - ys.mean() - 0.5, (k % 8 + 0.5) * 28 - xs.mean() - 0.5) == min(dist)
        assert q["trace"] == f"<answer>{q['answer']}</answer>" and q["family"] == "locate"
    assert fallbacks <= 2  # ~2% of scenes


def test_scene_text_writes_every_object_with_the_numbers_its_trace_writes():
    import json
    import re

    from sif_jax.data.pipeline import BuiltinSource
    from sif_jax.data.scenes import generate_scene

    scene_text = _script("oracle_vision").scene_text
    source = BuiltinSource(seed=0, size=20, split="train")
    for i in range(20):
        scene, ex = generate_scene(source.scene_seed(i), source.scene_config), source[i]
        text = scene_text(scene)
        entries = text.removeprefix("Scene: ").removesuffix(".").split("; ")
        assert len(entries) == len(scene.objects), text
        boxes = [[float(v) for v in re.search(r"\[(.*?)\]", e).group(1).split(",")] for e in entries]
        centres = [b[0] + b[2] for b in boxes]
        assert centres == sorted(centres), text  # left to right
        # the trace's last area (its target objects): each box and depth is written for one object
        last_area = re.findall(r"<area>(.*?)</area>", ex["trace"])[-1]
        for item in json.loads(last_area):
            coords = ",".join(str(v) for v in item["bbox_2d"])
            assert sum(f"[{coords}] depth {item['depth']}" in e for e in entries) == 1, (i, coords, text)


@pytest.mark.parametrize("text", [True, False])
def test_probe_inputs_swap_the_image_and_the_written_scene_and_keep_the_trace(text):
    from sif_jax.data.pipeline import BuiltinSource, PreprocessConfig, Preprocessor
    from sif_jax.data.prompts import get_prompt
    from sif_jax.data.scenes import generate_scene
    from sif_jax.data.tokenizer import BuiltinTokenizer
    from sif_jax.model.family import get_preset

    oracle = _script("oracle_vision")
    tokenizer = BuiltinTokenizer()
    pre = Preprocessor(tokenizer, get_preset("tiny"), PreprocessConfig.from_prompt(get_prompt("builtin")))
    source = BuiltinSource(seed=0, size=3, split="test")
    examples = [source[i] for i in range(3)]
    scenes = [generate_scene(source.scene_seed(i), source.scene_config) for i in range(3)]
    processed, swapped = oracle.probe_inputs(examples, scenes, pre, text=text)
    for i in range(3):
        nxt = (i + 1) % 3
        own_prompt = tokenizer.decode(list(processed[i]["prompt_tokens"]), skip_special_tokens=False)
        other_prompt = tokenizer.decode(list(swapped[i]["prompt_tokens"]), skip_special_tokens=False)
        assert (oracle.scene_text(scenes[i]) in own_prompt) == text
        assert (oracle.scene_text(scenes[nxt]) in other_prompt) == text
        assert examples[i]["problem"] in own_prompt and examples[i]["problem"] in other_prompt
        np.testing.assert_array_equal(swapped[i]["target_tokens"], processed[i]["target_tokens"])
        np.testing.assert_array_equal(swapped[i]["pixel_values"], processed[nxt]["pixel_values"])
        assert not np.array_equal(swapped[i]["pixel_values"], processed[i]["pixel_values"])


def test_answer_targets_smoke_with_the_scene_in_text():
    out = _script("oracle_vision").main(["--features=text", "--targets=answer", "--steps=1", "--every=1",
                                         "--examples=8", "--batch_size=2", "--image_size=112"])
    row = out["steps"][1]["own"]
    assert out["features"] == "text" and out["targets"] == "answer" and row["all"]["examples"] == 8
    assert "acc_box" not in row["all"] and "acc_answer" in row["all"]  # only the answer is a target
    assert len(row) > 2 and "cell" not in row  # the question families


@pytest.mark.parametrize("args", [["--targets=answer", "--captions"], ["--targets=cell", "--lookup_fraction=0.25"],
                                  ["--targets=locate", "--lookup_fraction=0.25"], ["--lookup=locate"],
                                  ["--lookup_fraction=1.5"]])
def test_conflicting_targets_are_refused(args, capsys):
    with pytest.raises(SystemExit):
        _script("oracle_vision").main([*args, "--steps=1"])
    assert args[-1].split("=")[0] in capsys.readouterr().err  # the error names the refused option


def test_save_then_init_continues_from_the_saved_model(tmp_path):
    main = _script("oracle_vision").main
    common = ["--targets=cell", "--position", "--examples=8", "--batch_size=2", "--image_size=112"]
    run = main([*common, "--steps=3", "--every=1", f"--save={tmp_path / 'm.msgpack'}"])["steps"]
    saved = run[3]
    # one step at a near-zero learning rate: the loaded model probes as the saved one, which training moved
    again = main([*common, "--steps=1", "--every=1", f"--init={tmp_path / 'm.msgpack'}", "--learning_rate=1e-12"])
    assert set(saved["own"]) == {"all", "cell"} and "acc_box" not in saved["own"]["all"]
    nll = saved["own"]["all"]["nll_answer"]
    assert again["init"] and again["steps"][1]["own"]["all"]["nll_answer"] == pytest.approx(nll, abs=1e-5)
    assert abs(run[1]["own"]["all"]["nll_answer"] - nll) > 1e-4
