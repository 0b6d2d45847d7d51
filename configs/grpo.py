"""GRPO-SIF + SAYO on the built-in spatial task with the tiny model: the default run.

    python -m sif_jax.train --config=configs/grpo.py [--config.grpo.steps=100 ...]

With no `init_checkpoint` the run first does a short SFT warm-up on built-in traces
(reverse-expansion-forward-inference), then GRPO with the combined SIFThinker + SAYO rewards,
and prints held-out accuracy and TAS before and after GRPO. On a 2-core CPU it takes minutes.
For a released model: --config.model=qwen2_5_vl_7b --config.init_checkpoint=/path/to/hf_dir
and a larger mesh (see README, "Cloud TPU").
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
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

    c.data = ml_collections.ConfigDict()
    c.data.source = "builtin"  # builtin | tfds:<dir> | sif_json:<file>
    c.data.image_size = 224
    c.data.eval_examples = 64
    c.data.eval_seed = 10_000_000  # held-out scenes: seeds never used for training
    c.data.length_buckets = (192, 512, 640)  # prompts ~165 tokens; prompt + trace (SFT) ~280-520
    c.data.patch_buckets = (256,)

    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 300  # warm-up steps when init_checkpoint is empty (0 = none)
    c.sft.batch_size = 16
    c.sft.learning_rate = 3e-3  # from scratch; the released models use 1e-4 (METHODS §1)
    c.sft.warmup_fraction = 0.1

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
    c.grpo.mass_layers = (-1,)  # SAYO: the last decoder layer, heads averaged
    # Completions that reach max_new_tokens without EOS get no loss (TRL / DAPO overlong filtering).
    # False, as TRL: a cut-off trace still earns its (low) format/accuracy reward, and training on it
    # teaches the policy to finish within the budget; the truncated share is logged as
    # truncated_fraction. Turn it on when max_new_tokens cuts off traces that would have been right.
    c.grpo.mask_truncated_completions = False

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
    return c
