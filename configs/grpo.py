"""GRPO-SIF + SAYO on the built-in spatial task with the tiny model: the default run.

    python -m sif_jax.train --config=configs/grpo.py [--config.grpo.steps=100 ...]
    python -m sif_jax.train --config=configs/grpo.py:phase=sft      # the SFT warm-up only
    python -m sif_jax.train --config=configs/grpo.py:runlocal       # small settings, a minute or two on a CPU

With no `init_checkpoint` the run first does a short SFT warm-up on built-in traces
(reverse-expansion-forward-inference), then GRPO with the combined SIFThinker + SAYO rewards,
and prints held-out accuracy and TAS before and after GRPO. On a 2-core CPU it takes minutes.
For a released model: --config.model=qwen2_5_vl_7b --config.init_checkpoint=/path/to/hf_dir
and a larger mesh (see README, "Cloud TPU"; configs/grpo_7b.py).

Variants (`get_config(arg)`, comma-separated; from Python `configs.grpo.get_config("runlocal")`):
  phase=grpo   SFT warm-up (unless init_checkpoint) then GRPO (the default)
  phase=sft    the warm-up only, saved in workdir/sft as a run directory GRPO can start from
  runlocal     the small settings of the tests and notebooks: 112 px scenes, 8 SFT steps,
               20 GRPO steps of 4 prompts x 4 samples, completions of up to 24 tokens
  small        the `small` preset (~20M parameters, same code path and tokenizer as `tiny`): 1200 SFT
               steps of 8 traces at lr 1e-3, 40 GRPO steps at lr 2e-5, 256 held-out examples (per-family
               accuracy resolves to about +-0.06); about 2 hours on a 2-core CPU, minutes on one accelerator.
               Not yet above chance: through SFT step 500 its predictions do not depend on the image
               (benchmarks/sft_probe.py --other_image; benchmarks/RESULTS.md, "a teacher-forced probe").
               The tiny model (0.3M) stops at an SFT loss of ~1.7 without completing a trace (format 0
               after 100 steps): 59% of the trace tokens are box digits, and the answer is 1.7% of them.
"""

import ml_collections

from configs import common

PHASES = ("grpo", "sft")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, phase="grpo", runlocal=False, small=False)
    if arg.phase not in PHASES:
        raise ValueError(f"config argument phase={arg.phase!r}: expected one of {PHASES}")
    c = ml_collections.ConfigDict()
    c.model = "tiny"  # preset: tiny | qwen2_5_vl_3b | qwen2_5_vl_7b
    c.init_checkpoint = ""  # HF directory (config.json + safetensors) or a sif_jax run directory
    c.tokenizer = ""  # local tokenizer.json for real checkpoints; "" = the built-in tokenizer
    c.attention_backend = ""  # "" = by platform; reference | xla | pallas_tpu | pallas_gpu
    c.scan_layers = False  # nn.scan over decoder layers / vision blocks (fast compile at 3B/7B)
    c.remat_policy = "none"  # none | full | dots | save_attention (nn.remat per layer/block)
    c.workdir = "workdir/grpo"
    c.seed = 0
    c.freeze_vision = True
    c.vision_init = ""  # .npz of vision tower params to start from (benchmarks/vision_cells.py --save)

    c.data = ml_collections.ConfigDict()
    # builtin | tfds:<dir>[:<name>] | sif_json:<file>[:<image_root>] | gqa:<questions>:<scene_graphs>:<image_dir>
    # | sayo:<file.parquet|.json> | vsr:<file.jsonl>:<image_dir> | whatsup:<file.json>:<image_dir>
    # (sif_jax/data/sources.py); files: data.eval_examples records are held out for evaluation
    c.data.source = "builtin"
    c.data.eval_source = ""  # "" = held out from data.source (tfds: its test split); or another source
    c.data.strict_records = False  # files: False skips (and counts) invalid records; True fails on any
    # builtin | sifthinker (RGB + depth images) | sifthinker_sft | sifthinker_grpo | sayo (sif_jax/data/prompts.py)
    c.data.prompt = "builtin"
    # Resized image area bounds in pixels; None = the model family's processor defaults
    # (Qwen2.5-VL 56*56 .. 28*28*1280, Qwen3-VL 65536 .. 16777216; family.pixel_bounds).
    c.data.min_pixels = ml_collections.config_dict.placeholder(int)
    c.data.max_pixels = ml_collections.config_dict.placeholder(int)
    c.data.image_size = 224
    c.data.eval_examples = 64
    c.data.length_buckets = (192, 512, 640)  # prompts ~165 tokens; prompt + trace (SFT) ~280-520
    c.data.patch_buckets = (256,)

    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 300  # warm-up steps when init_checkpoint is empty (0 = none)
    c.sft.batch_size = 16
    c.sft.learning_rate = 3e-3  # from scratch; the released models use 1e-4 (METHODS §1.4)
    c.sft.warmup_fraction = 0.1
    c.sft.answer_weight = 1.0  # loss weight of the <answer>...</answer> tokens and eos (the rest of the trace: 1)
    c.sft.caption_fraction = 0.0  # built-in task: share of SFT examples that are grounding captions (data/captions.py)
    c.sft.region_attention_weight = 0.0  # λ of the SFT region-attention loss (sif_jax/region_supervision.py)
    c.sft.region_attention_layers = (-1,)  # decoder layers it supervises, heads averaged (-1 = the last)
    c.sft.freeze_vision = False  # keep the vision tower fixed during SFT (e.g. after model.vision_init)

    c.grpo = ml_collections.ConfigDict()
    c.grpo.steps = 30
    c.grpo.prompts_per_step = 8
    c.grpo.micro_batch_prompts = 8
    c.grpo.group_size = 4  # G=8 in GRPO-SIF, 16 in SAYO; 4 keeps the CPU run short
    c.grpo.mu = 1
    c.grpo.learning_rate = 1e-4  # tiny model; 1e-5 (GRPO-SIF) / 5e-6 (SAYO) for released models
    c.grpo.beta = 0.04
    c.grpo.eps_low = 0.2
    c.grpo.eps_high = 0.2
    c.grpo.reduction = "sequence_mean"
    c.grpo.max_new_tokens = 320  # built-in traces are 117-310 tokens
    c.grpo.temperature = 0.7  # 1.0 in both papers; the tiny model's traces break at 1.0
    c.grpo.top_p = 0.9  # SAYO
    c.grpo.top_k = 0
    # top-k / top-p on the 256 largest logits (exact when the kept set fits; else a full sort); 0 = always sort
    c.grpo.sampling_candidates = 256
    c.grpo.mass_layers = (-1,)  # SAYO: the last decoder layer, heads averaged
    c.grpo.vocab_chunk = 4096  # LM-head columns per step of the scoring pass ([rows, tokens, chunk] logits live)
    # Completions that reach max_new_tokens without EOS get no loss (TRL / DAPO overlong filtering).
    # False, as TRL: a cut-off trace still earns its (low) format/accuracy reward, and training on it
    # teaches the policy to finish within the budget; the truncated share is logged as
    # truncated_fraction. Turn it on when max_new_tokens cuts off traces that would have been right.
    c.grpo.mask_truncated_completions = False
    # The G rows of a prompt share its vision tower, prefill and scoring activations (infer/groups.py).
    c.grpo.share_prompts = True

    # LoRA (sif_jax.lora): rank 0 = full fine-tuning. With rank r the SFT and GRPO phases train
    # adapters W + (alpha / r) A @ B over a frozen base (the KL reference is the base with the
    # adapters off); each phase's result is merged before the next. SIFThinker: SFT r=8, GRPO
    # r=64 alpha=128 dropout=0.05; SAYO: r=16 alpha=32.
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0
    c.lora.alpha = 16.0
    c.lora.dropout = 0.0
    # Regexes over param paths ('text/layers_0/q_proj/kernel'); default: every linear layer of the
    # language model (q/k/v/o, gate/up/down), not the vision tower, embeddings or LM head.
    c.lora.targets = (r"^text/layers(_\d+)?/(q_proj|k_proj|v_proj|o_proj|mlp/(gate_proj|up_proj|down_proj))/kernel$",)
    c.lora.init_adapter = ""  # a PEFT adapter directory to start from (same r and alpha)
    # Storage of the frozen base's adapted kernels (QLoRA-style): "" = the params' dtype, "int8" or
    # "float8_e4m3fn" with one absmax scale per output channel, dequantised inside each program.
    c.lora.base_dtype = ""

    c.rewards = ml_collections.ConfigDict()
    c.rewards.format = 1.0
    c.rewards.accuracy = 1.0
    c.rewards.iou = 1.0
    c.rewards.depth = 1.0
    c.rewards.region_attention = 1.0
    c.rewards.sayo_format = 0.0
    c.rewards.top_fraction = 0.3

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = all remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    # Multi-process (jax.distributed). On Cloud TPU leave these empty: they are discovered.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""  # host:port of process 0
    c.distributed.num_processes = 0  # 0 = not set
    c.distributed.process_id = -1

    c.checkpoint_every = 20
    c.max_checkpoints = 2
    c.log_every = 5

    if arg.runlocal:
        c.data.image_size = 112  # 4x4 visual tokens
        c.data.length_buckets = (160, 448)  # prompts ~125 tokens; SFT prompt + trace <= 448
        c.data.patch_buckets = (64,)
        c.data.eval_examples = 8
        c.sft.steps = 8
        c.sft.batch_size = 8
        c.grpo.steps = 20
        c.grpo.prompts_per_step = 4
        c.grpo.micro_batch_prompts = 4
        c.grpo.group_size = 4
        c.grpo.max_new_tokens = 24
        c.checkpoint_every = 1000  # only the final checkpoint of each phase
    if arg.small:
        c.model = "small"
        c.workdir = "workdir/grpo_small"
        c.data.eval_examples = 256
        c.sft.steps = 1200
        c.sft.batch_size = 8
        c.sft.learning_rate = 1e-3
        c.sft.warmup_fraction = 0.05
        c.grpo.steps = 40
        c.grpo.learning_rate = 2e-5
        c.grpo.max_new_tokens = 384  # 0.6% of built-in traces are longer than 320 tokens, 0.13% than 352
        c.checkpoint_every = 100
    if arg.phase == "sft":
        c.workdir = "workdir/sft_small" if arg.small else "workdir/sft"
        c.grpo.steps = 0
        if not arg.runlocal and not arg.small:
            c.sft.steps = 600
    return c
