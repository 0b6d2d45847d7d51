"""`python -m sif_jax.export`: a trained checkpoint's params for inference elsewhere.

    python -m sif_jax.export --checkpoint=workdir/grpo --format=hf --out=exported/hf
    python -m sif_jax.export --checkpoint=workdir/grpo --format=orbax --out=exported/params
    python -m sif_jax.export --checkpoint=workdir/grpo --format=peft --out=exported/adapter   # LoRA runs

--format=hf     config.json + model.safetensors (sharded with an index above 5 GB) in the
                released Qwen2.5-VL layout (`convert.hf.save_hf_checkpoint`), which
                `Qwen2_5_VLForConditionalGeneration.from_pretrained` and `load_hf_checkpoint` read,
                and the processor files (`convert.hf_processor`): preprocessor_config.json and, with a
                Hugging Face tokenizer, tokenizer.json, tokenizer_config.json and chat_template.jinja,
                so `transformers.AutoProcessor.from_pretrained(out)` loads the processor.
--format=orbax  `params/` (an orbax StandardCheckpointer pytree: params only, no optimizer or
                reference copy) for JAX inference.
--format=peft   a LoRA run's adapters as a PEFT directory (`adapter_config.json` +
                `adapter_model.safetensors`, `sif_jax.lora_peft`) that
                `peft.PeftModel.from_pretrained(<HF base>, out)` loads and `--config.lora.init_adapter`
                continues training from. (hf and orbax export a LoRA run merged: W + alpha/r A @ B.)
All three also write `sif_jax.json` (model config, dtype, tokenizer, source checkpoint and step) and,
when the model uses a Hugging Face tokenizer, a copy of its `tokenizer.json`; a model trained with
the built-in tokenizer is marked `"tokenizer": "builtin"`. Every sif_jax command line takes the
exported directory as `--checkpoint` and finds the tokenizer there.

`--dtype` casts the params (e.g. bfloat16 for a float32 run); the default keeps the saved dtype.
An existing, non-empty `--out` is an error unless `--overwrite` (which only replaces a previous
export, i.e. a directory holding `sif_jax.json`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any


def _parser():
    from sif_jax.cli import ArgumentParser

    p = ArgumentParser(prog="python -m sif_jax.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run directory, HF directory or sif_jax.export directory")
    p.add_argument("--format", required=True, choices=("hf", "orbax", "peft"))
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dtype", default="", help="float32 | bfloat16 | float16 (default: as saved)")
    p.add_argument("--model", default="", help="preset the checkpoint must be (tiny, qwen2_5_vl_3b, qwen2_5_vl_7b)")
    p.add_argument("--tokenizer", default="", help="'builtin' or tokenizer.json; default: the checkpoint's")
    p.add_argument("--max_shard_gb", type=float, default=5.0, help="HF safetensors shard size")
    p.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    p.add_argument("--verbose", action="store_true", help="tracebacks and library logs")
    return p


def _prepare_out(out: str, overwrite: bool, checkpoint: str) -> None:
    from sif_jax.checkpoint_loading import EXPORT_META
    from sif_jax.errors import InputError

    if os.path.abspath(out) == os.path.abspath(checkpoint):
        raise InputError(f"--out={out!r} is the checkpoint itself")
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise InputError(f"--out={out!r} exists and is not a directory")
    if not os.listdir(out):
        return
    if not overwrite:
        raise InputError(f"--out={out!r} exists and is not empty (add --overwrite to replace a previous export)")
    if not os.path.exists(os.path.join(out, EXPORT_META)):
        raise InputError(f"--out={out!r} is not a previous sif_jax export (no {EXPORT_META}); refusing to overwrite it")
    shutil.rmtree(out)


def export(checkpoint: str, fmt: str, out: str, *, dtype: str = "", model: str = "", tokenizer: str = "",
           overwrite: bool = False, max_shard_bytes: int = 5 * 2**30) -> dict[str, Any]:
    """Writes the export and returns its `sif_jax.json` content."""
    from sif_jax.checkpoint_loading import (
        EXPORT_META,
        PARAMS_DIR,
        check_requested_model,
        load_params,
        load_tokenizer,
        read_checkpoint_info,
    )
    from sif_jax.data.tokenizer import BuiltinTokenizer, check_tokenizer
    from sif_jax.errors import InputError
    from sif_jax.model.layers import DTYPES

    if fmt not in ("hf", "orbax", "peft"):
        raise InputError(f"--format={fmt!r}: expected hf, orbax or peft")
    if dtype and dtype not in DTYPES:
        raise InputError(f"--dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    info = read_checkpoint_info(checkpoint, dtype=dtype)
    check_requested_model(info.config, model, checkpoint)
    tok = load_tokenizer(tokenizer, info)
    check_tokenizer(tok, info.config)
    if fmt == "peft" and (info.kind != "run" or "lora" not in info.meta):
        raise InputError(f"--format=peft: {checkpoint!r} is not a LoRA training run (no adapters to export)")
    _prepare_out(out, overwrite, checkpoint)
    params = None if fmt == "peft" else load_params(info)
    config = info.config
    meta: dict[str, Any] = {
        "format": fmt, "model": config.to_hf_config(), "dtype": config.param_dtype,
        "source": {"checkpoint": os.path.abspath(checkpoint), "kind": info.kind, "location": info.location,
                   "step": info.step},
    }
    tmp = out.rstrip("/") + ".partial"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        if isinstance(tok, BuiltinTokenizer):
            meta["tokenizer"] = "builtin"
        else:
            shutil.copyfile(tok.path, os.path.join(tmp, "tokenizer.json"))
            meta["tokenizer"] = "tokenizer.json"
        if fmt == "hf":
            from sif_jax.convert.hf import save_hf_checkpoint
            from sif_jax.convert.hf_processor import write_processor_files

            save_hf_checkpoint(config, params, tmp, max_shard_bytes=max_shard_bytes)
            meta["processor_files"] = write_processor_files(
                config, tmp, None if isinstance(tok, BuiltinTokenizer) else tok.path)
        elif fmt == "peft":
            from sif_jax.checkpoint import load_run_adapters
            from sif_jax.lora import LoraConfig
            from sif_jax.lora_peft import save_peft_adapter

            _, adapters, run_meta = load_run_adapters(checkpoint)
            lo = run_meta["lora"]
            lora = LoraConfig(rank=int(lo["rank"]), alpha=float(lo["alpha"]), dropout=float(lo["dropout"]),
                              targets=tuple(lo["targets"]))
            save_peft_adapter(adapters, lora, tmp, base_model=str(lo.get("base", "")), config=config)
            meta["lora"] = lo
        else:
            import orbax.checkpoint as ocp

            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(os.path.abspath(os.path.join(tmp, PARAMS_DIR)), params)
                ckptr.wait_until_finished()
        with open(os.path.join(tmp, EXPORT_META), "w") as f:
            json.dump(meta, f, indent=2)
        if os.path.exists(out):  # an empty directory
            os.rmdir(out)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return meta


def listing(directory: str) -> list[str]:
    """'size  relative/path' of every file under `directory` (sorted)."""
    rows = []
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            rows.append((os.path.relpath(path, directory), os.path.getsize(path)))
    return [f"{size:>12,d}  {rel}" for rel, size in sorted(rows)]


def main(argv: Sequence[str] | None = None) -> None:
    from sif_jax.checkpoint_loading import describe_config
    from sif_jax.cli import quiet_logging, run_cli

    args = _parser().parse_args(argv)
    quiet_logging(args.verbose)

    def work() -> None:
        meta = export(args.checkpoint, args.format, args.out, dtype=args.dtype, model=args.model,
                      tokenizer=args.tokenizer, overwrite=args.overwrite,
                      max_shard_bytes=int(args.max_shard_gb * 2**30))
        from sif_jax.model.family import family_for_hf_config

        config = family_for_hf_config(meta["model"]).from_hf_config(meta["model"])
        src = meta["source"]
        step = f", step {src['step']}" if src["step"] is not None else ""
        print(f"exported {describe_config(config)} [{meta['dtype']}] from {args.checkpoint} ({src['kind']}{step}) "
              f"as {args.format} to {args.out}:")
        for line in listing(args.out):
            print(f"  {line}")
        print(f"tokenizer: {meta['tokenizer']}; use it with e.g. python -m sif_jax.generate --checkpoint={args.out} "
              "--image=... --question=...")

    run_cli(work, args.verbose)


if __name__ == "__main__":
    main(sys.argv[1:])
