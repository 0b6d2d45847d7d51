"""Region-attention benchmark: prints markdown tables for benchmarks/RESULTS.md.

    python benchmarks/attention.py                 # whatever backend jax finds
    python benchmarks/attention.py --time-sizes 512 1024 --memory-sizes 2048 8192 32768

Tables:
  1. the Pallas kernel with masses vs the same kernel without them (time ratio);
  2. compiled peak memory (temp + output bytes from `memory_analysis()`) of the reward pass
     (kernel forward with masses, no gradient) vs the reference, which materialises the
     [B, H, N, N] attention matrix; compile only, nothing runs at these sizes;
  3. the reference vs `jax.nn.dot_product_attention` (XLA), and the kernel, wall time;
  4. on a GPU: forward + backward (the loss's gradient w.r.t. q, k, v) of the kernel vs
     `jax.nn.dot_product_attention` with XLA and with cuDNN (`implementation="cudnn"`).

On CPU the Pallas kernel can only run in an interpreter: its timings are printed but are NOT
performance numbers, and its memory figures describe the generic interpreter's XLA lowering
(inputs/outputs plus per-block temporaries), a proxy for the kernel's HBM footprint.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from sif_jax.kernels.region_attention.reference import attention_reference


def kernel_fn(backend: str, block: int):
    """(fn, label, interpreted) for the platform's Pallas kernel."""
    if backend == "gpu":
        from sif_jax.kernels.region_attention.gpu import region_attention_gpu

        return functools.partial(region_attention_gpu, block_q=min(block, 128),
                                 block_k=min(block, 128), interpret=False), "pallas_gpu", False
    from sif_jax.kernels.region_attention.tpu import region_attention_tpu

    if backend == "tpu":
        return functools.partial(region_attention_tpu, block_q=block, block_k=block), \
            "pallas_tpu", False
    # Off-accelerator: the generic Pallas interpreter (lowers to XLA loops, faster than the
    # TPU interpreter and good enough for a memory analysis).
    return functools.partial(region_attention_tpu, block_q=block, block_k=block,
                             interpret=True), "pallas_tpu (interpret=True)", True


def make_inputs(batch, n, heads, kv_heads, head_dim, dtype, seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (batch, n, heads, head_dim), dtype)
    k = jax.random.normal(ks[1], (batch, n, kv_heads, head_dim), dtype)
    v = jax.random.normal(ks[2], (batch, n, kv_heads, head_dim), dtype)
    visual = jax.random.bernoulli(ks[3], 0.5, (batch, n))
    region = visual & jax.random.bernoulli(ks[4], 0.3, (batch, n))
    return q, k, v, visual, region


def abstract_inputs(batch, n, heads, kv_heads, head_dim, dtype):
    s = jax.ShapeDtypeStruct
    return (s((batch, n, heads, head_dim), dtype), s((batch, n, kv_heads, head_dim), dtype),
            s((batch, n, kv_heads, head_dim), dtype), s((batch, n), jnp.bool_),
            s((batch, n), jnp.bool_))


def timeit(fn, *args, repeats: int) -> float:
    """Median wall time in ms of a jitted fn (after one warm-up call, which compiles)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_bytes(fn, *abstract_args) -> tuple[int, int]:
    """(temp + output, output) bytes of the compiled fn, from `memory_analysis()`."""
    stats = jax.jit(fn).lower(*abstract_args).compile().memory_analysis()
    out = int(stats.output_size_in_bytes)
    return int(stats.temp_size_in_bytes) + out, out


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--time-sizes", type=int, nargs="+", default=None,
                   help="sequence lengths for timings (default: 512 1024 2048 on CPU, "
                        "2048 8192 on accelerators)")
    p.add_argument("--kernel-time-sizes", type=int, nargs="+", default=None,
                   help="lengths for kernel timings (default: 256 on CPU, else --time-sizes)")
    p.add_argument("--memory-sizes", type=int, nargs="+", default=[2048, 8192, 32768])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    backend = jax.default_backend()
    on_cpu = backend not in ("tpu", "gpu")
    dtype = jnp.dtype(args.dtype)
    time_sizes = args.time_sizes or ([512, 1024, 2048] if on_cpu else [2048, 8192])
    kernel_sizes = args.kernel_time_sizes or ([256] if on_cpu else time_sizes)
    kernel, label, interpreted = kernel_fn(backend, args.block)
    geom = (args.batch, args.heads, args.kv_heads, args.head_dim)
    device = jax.devices()[0]
    print(f"# Region attention benchmark\n\nbackend `{backend}`, device `{device.device_kind}`, "
          f"host `{platform.processor() or platform.machine()}`, jax {jax.__version__}; "
          f"B={args.batch}, Hq={args.heads}, Hkv={args.kv_heads}, D={args.head_dim}, "
          f"{dtype.name}, causal, block {args.block}, median of {args.repeats}.\n")
    if interpreted:
        print("**Kernel timings below come from the Pallas interpreter on CPU: they are NOT "
              "performance numbers** (only the memory analysis and the reference-vs-XLA "
              "timings describe this machine).\n")

    def with_masses(q, k, v, visual, region):
        return kernel(q, k, v, causal=True, visual_mask=visual, region_mask=region)

    def without_masses(q, k, v, visual, region):
        return kernel(q, k, v, causal=True)[0]

    def reference(q, k, v, visual, region):
        return attention_reference(q, k, v, causal=True, visual_mask=visual, region_mask=region)

    def xla(q, k, v, visual, region):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True)

    # 1. masses overhead
    print(f"## 1. Kernel ({label}) with masses vs without\n")
    print("| N | with masses (ms) | without (ms) | ratio |\n|---|---|---|---|")
    for n in kernel_sizes:
        inputs = make_inputs(args.batch, n, *geom[1:], dtype)
        t_with = timeit(jax.jit(with_masses), *inputs, repeats=args.repeats)
        t_without = timeit(jax.jit(without_masses), *inputs, repeats=args.repeats)
        note = " (interpreter)" if interpreted else ""
        print(f"| {n} | {t_with:.1f}{note} | {t_without:.1f}{note} | "
              f"{t_with / t_without:.2f} |")

    # 2. memory of the reward pass
    print("\n## 2. Compiled peak memory (temp + output) of the reward pass\n")
    print("| N | kernel with masses | of which outputs (out + 2 masses) | "
          "reference (materialises N×N) | reference / kernel |\n|---|---|---|---|---|")
    for n in args.memory_sizes:
        abstract = abstract_inputs(args.batch, n, *geom[1:], dtype)
        (kb, k_out), (rb, _) = peak_bytes(with_masses, *abstract), peak_bytes(reference, *abstract)
        print(f"| {n} | {fmt_bytes(kb)} | {fmt_bytes(k_out)} | {fmt_bytes(rb)} | "
              f"{rb / kb:.0f}× |")

    # 3. against XLA's dot_product_attention
    print("\n## 3. Wall time: reference vs `jax.nn.dot_product_attention` vs kernel\n")
    print("| N | reference, with masses (ms) | jax.nn.dot_product_attention (ms) | "
          f"{label}, with masses (ms) |\n|---|---|---|---|")
    for n in sorted(set(time_sizes) | set(kernel_sizes)):
        inputs = make_inputs(args.batch, n, *geom[1:], dtype)
        t_ref = timeit(jax.jit(reference), *inputs, repeats=args.repeats)
        t_xla = timeit(jax.jit(xla), *inputs, repeats=args.repeats)
        if n in kernel_sizes:
            t_k = timeit(jax.jit(with_masses), *inputs, repeats=args.repeats)
            k_cell = f"{t_k:.1f}" + (" (interpreter, not a performance number)"
                                     if interpreted else "")
        else:
            k_cell = "not run" + (" (interpreter too slow)" if interpreted else "")
        print(f"| {n} | {t_ref:.1f} | {t_xla:.1f} | {k_cell} |")

    if backend == "gpu":
        _gpu_forward_backward(kernel, label, time_sizes, geom, dtype, args.repeats)


def _gpu_forward_backward(kernel, label, sizes, geom, dtype, repeats) -> None:
    """Table 4: forward + backward wall time of the kernel vs XLA and cuDNN attention."""

    def grad_of(attend):
        def loss(q, k, v):
            return jnp.sum(attend(q, k, v).astype(jnp.float32) ** 2)

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

    def ours(q, k, v):
        return kernel(q, k, v, causal=True)[0]

    def cudnn(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")

    def xla(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")

    print("\n## 4. Forward + backward wall time (gradient w.r.t. q, k, v)\n")
    print(f"| N | {label} (ms) | XLA (ms) | cuDNN (ms) | {label} / cuDNN |\n|---|---|---|---|---|")
    for n in sizes:
        q, k, v, _, _ = make_inputs(geom[0], n, *geom[1:], dtype)
        times = {}
        for name, fn in (("ours", ours), ("xla", xla), ("cudnn", cudnn)):
            try:
                times[name] = timeit(grad_of(fn), q, k, v, repeats=repeats)
            except Exception as e:  # noqa: BLE001 - cuDNN refuses some shapes/dtypes; say so
                times[name] = float("nan")
                print(f"<!-- {name} at N={n}: {type(e).__name__}: {str(e).splitlines()[0][:200]} -->")
        print(f"| {n} | {times['ours']:.2f} | {times['xla']:.2f} | {times['cudnn']:.2f} | "
              f"{times['ours'] / times['cudnn']:.2f} |")


if __name__ == "__main__":
    main()
