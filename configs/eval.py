"""Evaluation of a trained checkpoint: accuracy, TAS, final-area IoU and format validity.

    python -m sif_jax.evaluate --config=configs/eval.py --config.checkpoint=workdir/grpo
    python -m sif_jax.evaluate --config=configs/eval.py --config.checkpoint=workdir/grpo \
        --config.decoding=adaptvis --config.data.source=vsr:/data/vsr/test.jsonl:/data/coco/images

`checkpoint`: a training run directory (its newest GRPO, else SFT, step), an HF directory
(config.json + *.safetensors; give `tokenizer` unless the directory holds tokenizer.json) or a
`python -m sif_jax.export --format=orbax` directory.

`data.source`:
  builtin                                         the built-in spatial task, "test" split (held-out
                                                  scene seeds), `data.num_examples` of them
  sif_json:<file.json|.jsonl>                     SIF-50K style records (image paths relative to the file)
  gqa:<questions.json>:<scene_graphs.json>:<image_dir>
  vsr:<file.jsonl>:<image_dir>
  whatsup:<file.json>:<image_dir>                  Controlled-A/B, COCO-spatial or VG-spatial
  sayo:<file.parquet|.json|.jsonl>                SAYO records (focus_area -> region masks)
  tfds:<data_dir>[:<name>]                        a built sif_spatial/* or sif_local, its test split
(sif_jax/data/sources.py lists every source; sif_json takes an optional :<image_root>)
For files, `data.num_examples` > 0 keeps the first N records (0 = all); a record with a problem (a
box that clips to zero area, a missing image, ...) is skipped and counted in the report
(`skipped_records`), or is an error with `data.strict_records=True`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.checkpoint = ""  # required: run directory, HF directory or sif_jax.export directory
    c.tokenizer = ""  # "" = the checkpoint's; "builtin"; or path/to/tokenizer.json
    c.model = ""  # optional preset the checkpoint must be (tiny | qwen2_5_vl_3b | qwen2_5_vl_7b)
    c.dtype = ""  # "" = as saved; float32 | bfloat16 | float16
    c.attention_backend = ""  # "" = by platform; reference | xla | pallas_tpu | pallas_gpu
    c.output = "eval_report.json"  # JSON report (summary + per-example rows); "" = none

    c.decoding = "greedy"  # greedy | adaptvis (METHODS §3)
    c.alpha_low = 0.5  # AdaptVis alpha_1: smooth visual attention when unsure
    c.alpha_high = 1.5  # AdaptVis alpha_2: sharpen it when confident
    c.threshold = 0.4  # AdaptVis beta: first-token confidence threshold
    c.max_new_tokens = 320  # built-in traces are 117-310 tokens
    c.batch_size = 8
    c.mass_layers = (-1,)  # TAS layers (SAYO: the last decoder layer, heads averaged)
    c.top_fraction = 0.3  # TAS queries: the 30% highest-entropy completion tokens

    c.data = ml_collections.ConfigDict()
    c.data.source = "builtin"  # see the module doc
    c.data.num_examples = 64  # builtin: how many test examples; files: first N records (0 = all)
    c.data.seed = 0  # builtin: the run's seed (test scenes never coincide with training scenes)
    c.data.image_size = 224  # builtin scenes, pixels (the training run's data.image_size)
    c.data.whatsup_seed = 0  # shuffles WhatsUp's caption options
    c.data.strict_records = False  # files: False skips (and counts) invalid records; True fails on any
    c.data.instruction = "sif"  # appended to each question: sif (SIFThinker grammar) | none | <text>
    # builtin (system turn + data.instruction) | sifthinker (RGB + depth images) | sifthinker_sft | sifthinker_grpo
    # | sayo (data/prompts.py)
    c.data.prompt = "builtin"
    c.data.length_buckets = (192, 256, 512, 1024, 2048)  # prompt lengths; a longer prompt is an error
    c.data.patch_buckets = ()  # patches per image; () = next power of two
    # Resized image area bounds in pixels; None = the model family's processor defaults
    # (Qwen2.5-VL 56*56 .. 28*28*1280, Qwen3-VL 65536 .. 16777216; family.pixel_bounds).
    c.data.min_pixels = ml_collections.config_dict.placeholder(int)
    c.data.max_pixels = ml_collections.config_dict.placeholder(int)
    return c
