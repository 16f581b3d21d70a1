"""Single-query ("flash-decoding") attention over a KV cache: one Pallas-Triton kernel plus a tiny combine.

A batch-1 decode step attends one query per head to a cache `[B, K, S, D]` that XLA reads through a
split-K GEMM, reductions and a second GEMM (six kernels per layer). Here each program of the grid
(B, K, splits) reads one contiguous chunk of one KV head's cache once and keeps an online softmax
(running max m, sum lsum, unnormalised accumulator acc in float32) for the G query heads of that KV
head; a small combine merges the splits with the always-visible new token(s). The fused kernels
below also do the layer's norms, rotary and cache write (`fused_decode_attention`: the decode
layer, whose splits a second small Pallas kernel combines; `fused_prefill_qkv`: a prefill's
attention inputs and cache write, no attention; `fused_prefix_attention`: the action expert's flow
step, whose splits a token-blocked Pallas combine merges). On a non-GPU backend the kernels run in
Pallas interpret mode (CPU tests and runs).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Score of a masked slot: finite so a chunk without a valid slot keeps m finite and lsum = 0 (no NaN).
MASKED_SCORE = -1e30
# Query rows per program: Triton's dot needs every dimension >= 16; rows >= G are masked off.
QUERY_ROWS = 16
# Programs wanted per call: an H100 has 132 SMs; fewer programs leave SMs without cache to read.
TARGET_PROGRAMS = 128


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def default_chunk(batch: int, kv_heads: int, length: int, block_s: int) -> int:
    """Slots per program: the largest power of two dividing `length`, halved while the grid has fewer
    than TARGET_PROGRAMS programs and a chunk still holds more than one block of `block_s` slots."""
    chunk = length & -length  # largest power of two dividing length
    while chunk > block_s and batch * kv_heads * (length // chunk) < TARGET_PROGRAMS:
        chunk //= 2
    return chunk


# SMs of an H100: the most programs that run as one wave.
WAVE_PROGRAMS = 132


def one_wave_chunk(rows: int, length: int, block_s: int) -> int:
    """Slots per program for the flow's prefix kernel: the smallest multiple of `block_s` dividing
    `length` whose grid (`rows` x splits) fits one wave of WAVE_PROGRAMS programs (the whole cache if
    none does). Each program there attends 64 action tokens, so fewer, longer programs pay: ar1_2b
    (8 rows, 3,072 slots) gets 192 slots, 128 programs: 16.44 against 17.25 us per layer-step for
    `default_chunk`'s 128 slots and 192 programs on an H100 (docs/PERFORMANCE.md, session 13)."""
    for chunk in range(block_s, length + 1, block_s):
        if length % chunk == 0 and rows * (length // chunk) <= WAVE_PROGRAMS:
            return chunk
    return length


def _kernel(
    q_ref, k_ref, v_ref, mask_ref, acc_ref, m_ref, lsum_ref, *, groups: int, scale: float, block_s: int
):
    """One (batch, kv head, split): q `[16, D]` (rows >= groups out of bounds), k/v `[chunk, D]`,
    mask `[chunk]` int8 -> acc `[16, D]`, m and lsum `[16]` (only the first `groups` rows stored)."""
    rows = jnp.arange(QUERY_ROWS) < groups
    q = plgpu.load(q_ref, mask=rows[:, None], other=0)
    q = (q.astype(jnp.float32) * scale).astype(q_ref.dtype)

    def body(i, carry):
        acc, m, lsum = carry
        slots = pl.ds(pl.multiple_of(i * block_s, block_s), block_s)
        valid = (mask_ref[slots] != 0)[None, :]
        s = plgpu.dot(q, k_ref[slots, :].T)  # [16, block_s] float32
        s = jnp.where(valid, s, MASKED_SCORE)
        m_next = jnp.maximum(m, s.max(axis=1))
        p = jnp.where(valid, jnp.exp(s - m_next[:, None]), 0.0)
        alpha = jnp.exp(m - m_next)
        v = v_ref[slots, :]
        acc = alpha[:, None] * acc + plgpu.dot(p.astype(v.dtype), v)
        return acc, m_next, alpha * lsum + p.sum(axis=1)

    d = q_ref.shape[-1]
    init = (
        jnp.zeros((QUERY_ROWS, d), jnp.float32),
        jnp.full((QUERY_ROWS,), MASKED_SCORE, jnp.float32),
        jnp.zeros((QUERY_ROWS,), jnp.float32),
    )
    acc, m, lsum = jax.lax.fori_loop(0, k_ref.shape[0] // block_s, body, init)
    plgpu.store(acc_ref, acc, mask=rows[:, None])
    plgpu.store(m_ref, m, mask=rows)
    plgpu.store(lsum_ref, lsum, mask=rows)


def _check(q_bkgd: jax.Array, k_bksd: jax.Array, v_bksd: jax.Array, mask_bs: jax.Array, block_s: int) -> None:
    """Raises ValueError naming the argument whose shape or dtype the kernel cannot take."""
    if q_bkgd.ndim != 4 or k_bksd.ndim != 4:
        raise ValueError(f"q_bkgd {q_bkgd.shape} and k_bksd {k_bksd.shape} must be 4-D [B, K, G|S, D]")
    b, k, g, d = q_bkgd.shape
    length = k_bksd.shape[2]
    if k_bksd.shape != (b, k, length, d):
        raise ValueError(f"k_bksd {k_bksd.shape} must be [B, K, S, D] = [{b}, {k}, S, {d}] like q_bkgd")
    if v_bksd.shape != k_bksd.shape:
        raise ValueError(f"v_bksd {v_bksd.shape} must have the shape of k_bksd {k_bksd.shape}")
    if mask_bs.shape != (b, length):
        raise ValueError(f"mask_bs {mask_bs.shape} must be [B, S] = [{b}, {length}]")
    if not q_bkgd.dtype == k_bksd.dtype == v_bksd.dtype:
        raise ValueError(
            f"q_bkgd, k_bksd, v_bksd dtypes must match: {q_bkgd.dtype}, {k_bksd.dtype}, {v_bksd.dtype}"
        )
    if g > QUERY_ROWS:
        raise ValueError(f"q_bkgd has G = {g} query heads per kv head; the kernel takes at most {QUERY_ROWS}")
    if not _is_power_of_two(d) or d < 16:
        raise ValueError(f"q_bkgd head dim D = {d} must be a power of two >= 16 (Triton dot tiles)")
    if not _is_power_of_two(block_s) or block_s < 16:
        raise ValueError(f"block_s = {block_s} must be a power of two >= 16")
    if length % block_s:
        raise ValueError(f"k_bksd cache length S = {length} must be a multiple of block_s = {block_s}")


def _splits(rows: int, length: int, block_s: int, chunk: int | None) -> tuple[int, int]:
    """(chunk, splits) of a cache of `length` slots read by `rows` (batch x heads) program rows; raises
    ValueError for a chunk the kernels cannot take."""
    chunk = default_chunk(1, rows, length, block_s) if chunk is None else chunk
    if chunk % block_s or length % chunk:
        raise ValueError(
            f"chunk = {chunk} must be a multiple of block_s = {block_s} and divide the cache length {length}"
        )
    return chunk, length // chunk


def _interpret(interpret: bool | None) -> bool:
    return jax.default_backend() != "gpu" if interpret is None else interpret


def _int8(mask_bs: jax.Array) -> jax.Array:
    return mask_bs if mask_bs.dtype == jnp.int8 else mask_bs.astype(jnp.int8)


def _check_norm_scales(q_scale_d: jax.Array, k_scale_d: jax.Array, d: int) -> None:
    if q_scale_d.shape != (d,) or k_scale_d.shape != (d,):
        raise ValueError(f"q_scale_d {q_scale_d.shape} and k_scale_d {k_scale_d.shape} must be [{d}]")


def _check_token_operands(inv_rms_bl1, q_scale_d, k_scale_d, cos_bld, sin_bld, b: int, length: int, d: int):
    """The per-token operands of the multi-token kernels: the folded norm's 1/RMS `[B, L, 1]`, the q/k
    norm scales `[D]` and rotary cos/sin `[B, L, D]`."""
    if (
        inv_rms_bl1.shape != (b, length, 1)
        or cos_bld.shape != (b, length, d)
        or sin_bld.shape != (b, length, d)
    ):
        raise ValueError(
            f"inv_rms_bl1 {inv_rms_bl1.shape}, cos_bld {cos_bld.shape}, sin_bld {sin_bld.shape} must be "
            f"[{b}, {length}, 1], [{b}, {length}, {d}], [{b}, {length}, {d}]"
        )
    _check_norm_scales(q_scale_d, k_scale_d, d)


def _combine_kernel(acc_ref, m_ref, lsum_ref, out_ref, *, splits: int):
    """Merges one (batch, kv head)'s split partials: acc `[N', G, D]`, m and lsum `[N', G]` (blocks of
    N' = the next power of two >= N splits; rows >= N are out of bounds and masked) -> out `[G, D]`,
    each split rescaled to the largest split max; all splits are loaded at once (a loop over them
    waits on each load: 7.6 us instead of 2.1)."""
    padded = acc_ref.shape[0]
    present = (jnp.arange(padded) < splits)[:, None]
    m = plgpu.load(m_ref, mask=present, other=MASKED_SCORE)
    lsum = plgpu.load(lsum_ref, mask=present, other=0.0)
    acc = plgpu.load(acc_ref, mask=present[:, :, None], other=0.0)
    alpha = jnp.exp(m - m.max(axis=0)[None, :])  # 0 for the masked rows
    out = (alpha[:, :, None] * acc).sum(axis=0) / (alpha * lsum).sum(axis=0)[:, None]
    out_ref[...] = out.astype(out_ref.dtype)


def _combine_tiles(splits: int, rows: int, d: int) -> tuple[int, plgpu.CompilerParams]:
    """(the split axis padded to a power of two, the compiler parameters) of a `_combine_kernel` call
    whose programs merge `rows` rows of width `d`: 8 warps once a program holds more than 8,192 values."""
    padded = 1 << (splits - 1).bit_length()
    return padded, plgpu.CompilerParams(num_warps=4 if padded * rows * d <= 8192 else 8, num_stages=1)


def _combine_splits(acc: jax.Array, m: jax.Array, lsum: jax.Array, dtype, interpret: bool) -> jax.Array:
    """The normalised decode attention output `[B, K, G, D]` in `dtype` from the fused kernel's float32
    split partials (acc `[B, K, N, G, D]`, m and lsum `[B, K, N, G]`), in one small Pallas kernel with
    a program per (batch, kv head). XLA needs two kernels (the max over the splits, then the rescaled
    sums): 4.6 us per decode layer against 2.1 in the microbenchmark."""
    b, k, splits, g, d = acc.shape
    padded, params = _combine_tiles(splits, g, d)
    return pl.pallas_call(
        functools.partial(_combine_kernel, splits=splits),
        grid=(b, k),
        in_specs=[
            pl.BlockSpec((None, None, padded, g, d), lambda i, j: (i, j, 0, 0, 0)),
            pl.BlockSpec((None, None, padded, g), lambda i, j: (i, j, 0, 0)),
            pl.BlockSpec((None, None, padded, g), lambda i, j: (i, j, 0, 0)),
        ],
        out_specs=pl.BlockSpec((None, None, g, d), lambda i, j: (i, j, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((b, k, g, d), dtype),
        compiler_params=params,
        interpret=interpret,
        name="attention_split_combine",
    )(acc, m, lsum)


def _combine_token_splits(
    acc: jax.Array, m: jax.Array, lsum: jax.Array, dtype, block_l: int, interpret: bool
) -> jax.Array:
    """The expert's normalised attention output `[B, L, K * G, D]` in `dtype` from the prefix kernel's
    float32 split partials (acc `[B, K, G, N, L, D]`, m and lsum `[B, K, G, N, L]`): one program per
    (batch, kv head, group member, `block_l` tokens) merges all splits at once (`_combine_kernel` with
    the tokens as its row axis) and writes its rows straight into the output's token-major layout."""
    b, k, g, splits, length, d = acc.shape
    padded, params = _combine_tiles(splits, block_l, d)
    return pl.pallas_call(
        functools.partial(_combine_kernel, splits=splits),
        grid=(b, k, g, length // block_l),
        in_specs=[
            pl.BlockSpec((None, None, None, padded, block_l, d), lambda i, j, q, t: (i, j, q, 0, t, 0)),
            pl.BlockSpec((None, None, None, padded, block_l), lambda i, j, q, t: (i, j, q, 0, t)),
            pl.BlockSpec((None, None, None, padded, block_l), lambda i, j, q, t: (i, j, q, 0, t)),
        ],
        out_specs=pl.BlockSpec((None, block_l, None, d), lambda i, j, q, t: (i, t, j * g + q, 0)),
        out_shape=jax.ShapeDtypeStruct((b, length, k * g, d), dtype),
        compiler_params=params,
        interpret=interpret,
        name="expert_split_combine",
    )(acc, m, lsum)


def _combine_splits_xla(acc: jax.Array, m: jax.Array, lsum: jax.Array, axis: int) -> jax.Array:
    """The split combine as XLA computes it (a max over the splits `axis`, then the rescaled sums): the
    expert's alternative to `_combine_token_splits` (`fused_prefix_attention(combine_block_l=None)`)."""
    alpha = jnp.exp(m - m.max(axis=axis, keepdims=True))
    return (alpha[..., None] * acc).sum(axis=axis) / (alpha * lsum).sum(axis=axis)[..., None]


def _halves(spec_of_half) -> list:
    """The two BlockSpecs of an array's first and second half of the head dim (`spec_of_half(0 | 1)`)."""
    return [spec_of_half(0), spec_of_half(1)]


def _norm_rotary_operands(q_scale_d, k_scale_d, cos, sin, rotary_block: tuple, rotary_index) -> tuple:
    """(BlockSpecs, operands) of a fused kernel's eight norm / rotary inputs: the q and k RMSNorm scales
    `[D]` and rotary cos and sin, each as its two head-dim halves. `rotary_block`: cos/sin's block
    without the head dim; `rotary_index(*program ids)`: its block index without the head dim."""
    half = q_scale_d.shape[0] // 2

    def scale(h):
        return pl.BlockSpec((half,), lambda *_: (h,))

    def rotary(h):
        return pl.BlockSpec((*rotary_block, half), lambda *i: (*rotary_index(*i), h))

    specs = [*_halves(scale), *_halves(scale), *_halves(rotary), *_halves(rotary)]
    return specs, (q_scale_d, q_scale_d, k_scale_d, k_scale_d, cos, cos, sin, sin)


def default_impl(scan_layers: bool = False) -> str:
    """The decode attention a layout gets by default: the Pallas kernels on a GPU for the per-layer
    layout (`TextConfig` rejects them for scanned layers), XLA elsewhere."""
    return "pallas" if jax.default_backend() == "gpu" and not scan_layers else "xla"


def cache_attention(
    q_bkgd: jax.Array,
    k_bksd: jax.Array,
    v_bksd: jax.Array,
    mask_bs: jax.Array,
    *,
    chunk: int | None = None,
    block_s: int = 128,
    num_warps: int = 4,
    num_stages: int = 2,
    scale: float | None = None,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Split-wise softmax partials of one query per head `q [B, K, G, D]` over a cache `k, v [B, K, S, D]`.

    Query head g of kv head k scores `(q * scale) . k` (scale D**-0.5 by default, applied in float32
    and rounded to q's dtype) against the slots where `mask_bs [B, S]` is true. Split n covers slots
    `[n * chunk, (n + 1) * chunk)` (chunk: a multiple of `block_s` dividing S; default
    `default_chunk`). Returns float32 (acc `[B, K, N, G, D]` = sum_s exp(score - m) v_s,
    m `[B, K, N, G]` the split's max score (MASKED_SCORE if it has no valid slot), lsum `[B, K, N, G]` =
    sum_s exp(score - m), 0 without a valid slot). `interpret` None: interpret unless on a GPU.
    """
    _check(q_bkgd, k_bksd, v_bksd, mask_bs, block_s)
    b, k, g, d = q_bkgd.shape
    length = k_bksd.shape[2]
    chunk, splits = _splits(b * k, length, block_s, chunk)
    interpret = _interpret(interpret)
    kernel = functools.partial(_kernel, groups=g, scale=d**-0.5 if scale is None else scale, block_s=block_s)
    f32 = jnp.float32
    return pl.pallas_call(
        kernel,
        grid=(b, k, splits),
        in_specs=[
            pl.BlockSpec((None, None, QUERY_ROWS, d), lambda i, j, n: (i, j, 0, 0)),
            pl.BlockSpec((None, None, chunk, d), lambda i, j, n: (i, j, n, 0)),
            pl.BlockSpec((None, None, chunk, d), lambda i, j, n: (i, j, n, 0)),
            pl.BlockSpec((None, chunk), lambda i, j, n: (i, n)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, QUERY_ROWS, d), lambda i, j, n: (i, j, n, 0, 0)),
            pl.BlockSpec((None, None, None, QUERY_ROWS), lambda i, j, n: (i, j, n, 0)),
            pl.BlockSpec((None, None, None, QUERY_ROWS), lambda i, j, n: (i, j, n, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, k, splits, g, d), f32),
            jax.ShapeDtypeStruct((b, k, splits, g), f32),
            jax.ShapeDtypeStruct((b, k, splits, g), f32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="decode_cache_attention",
    )(q_bkgd, k_bksd, v_bksd, _int8(mask_bs))


def decode_two_part_attention(
    q_blhd: jax.Array,
    k1_bksd: jax.Array,
    v1_bksd: jax.Array,
    mask1_bs: jax.Array,
    k2_bktd: jax.Array,
    v2_bktd: jax.Array,
    *,
    chunk: int | None = None,
    block_s: int = 128,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: bool | None = None,
) -> jax.Array:
    """`layers.two_part_attention` for one query token (L == 1): the cache part (k1, v1, mask1) by
    `cache_attention`, then a float32 combine of its splits with the always-visible part 2 `[B, K, T, D]`.

    Returns `[B, 1, H, D]` in q's dtype; query head h uses kv head h // (H / K).
    """
    b, length, h, d = q_blhd.shape
    if length != 1:
        raise ValueError(f"q_blhd {q_blhd.shape}: decode attention takes one query token (L = 1)")
    k = k1_bksd.shape[1]
    if h % k:
        raise ValueError(f"q_blhd has {h} heads, not a multiple of the {k} kv heads of k1_bksd")
    if k2_bktd.shape[:2] != (b, k) or v2_bktd.shape != k2_bktd.shape:
        raise ValueError(
            f"k2_bktd {k2_bktd.shape} and v2_bktd {v2_bktd.shape} must be [B, K, T, D] = [{b}, {k}, T, {d}]"
        )
    q_bkgd = q_blhd.reshape(b, k, h // k, d)
    acc, m, lsum = cache_attention(
        q_bkgd,
        k1_bksd,
        v1_bksd,
        mask1_bs,
        chunk=chunk,
        block_s=block_s,
        num_warps=num_warps,
        num_stages=num_stages,
        interpret=interpret,
    )
    # The combine is multiplies and sums only (T is tiny): XLA fuses it, and no float32 dot runs in TF32.
    f32, dtype = jnp.float32, q_blhd.dtype
    q = (q_bkgd.astype(f32) * d**-0.5).astype(dtype).astype(f32)
    s2 = (q[:, :, :, None, :] * k2_bktd.astype(dtype).astype(f32)[:, :, None]).sum(axis=-1)  # [B, K, G, T]
    m_all = jnp.maximum(m.max(axis=2), s2.max(axis=-1))  # [B, K, G]
    alpha = jnp.exp(m - m_all[:, :, None])  # [B, K, N, G]
    p2 = jnp.exp(s2 - m_all[..., None])
    denom = (alpha * lsum).sum(axis=2) + p2.sum(axis=-1)
    out = (alpha[..., None] * acc).sum(axis=2)
    p2 = p2.astype(v2_bktd.dtype).astype(f32)  # rounded like the probabilities of the kernel's PV dot
    out += (p2[..., None] * v2_bktd.astype(f32)[:, :, None]).sum(axis=3)
    return (out / denom[..., None]).reshape(b, 1, h, d).astype(dtype)


# ------------------------------------------------------------------ one decode layer's attention, fused


def _norm_rotary(t1, t2, w1, w2, c1, c2, s1, s2, *, eps: float, dtype):
    """RMSNorm (scale halves w1, w2) then rotary (cos/sin halves) of rows given as their head-dim halves
    (rotate_half(x) = [-x2, x1]); float32 in and out, rounded to `dtype` where the unfused path rounds."""
    f32 = jnp.float32
    half = t1.shape[-1]
    squares = jnp.sum(t1 * t1, axis=-1, keepdims=True) + jnp.sum(t2 * t2, axis=-1, keepdims=True)
    norm = jax.lax.rsqrt(squares / (2 * half) + eps)
    n1 = (t1 * norm * w1).astype(dtype).astype(f32)
    n2 = (t2 * norm * w2).astype(dtype).astype(f32)
    r1 = (n1 * c1 - n2 * s1).astype(dtype).astype(f32)
    r2 = (n2 * c2 + n1 * s2).astype(dtype).astype(f32)
    return r1, r2


def _read_cache(q1, q2, k_ref, v_ref, mask_ref, init, block_s: int):
    """The online softmax of query rows (halves q1, q2) over this program's cache chunk, from `init`
    = (acc, m, lsum); masked slots never contribute."""
    half = q1.shape[-1]

    def body(i, carry):
        acc, m, lsum = carry
        slots = pl.ds(pl.multiple_of(i * block_s, block_s), block_s)
        valid = (mask_ref[slots] != 0)[None, :]
        s = plgpu.dot(q1, k_ref[slots, pl.ds(0, half)].T) + plgpu.dot(q2, k_ref[slots, pl.ds(half, half)].T)
        s = jnp.where(valid, s, MASKED_SCORE)
        m_next = jnp.maximum(m, s.max(axis=1))
        p = jnp.where(valid, jnp.exp(s - m_next[:, None]), 0.0)
        alpha = jnp.exp(m - m_next)
        v = v_ref[slots, :]
        acc = alpha[:, None] * acc + plgpu.dot(p.astype(v.dtype), v)
        return acc, m_next, alpha * lsum + p.sum(axis=1)

    return jax.lax.fori_loop(0, k_ref.shape[0] // block_s, body, init)


def _fused_kernel(
    qkv1_ref,
    qkv2_ref,
    v_row_ref,
    h_ref,
    q_scale1_ref,
    q_scale2_ref,
    k_scale1_ref,
    k_scale2_ref,
    cos1_ref,
    cos2_ref,
    sin1_ref,
    sin2_ref,
    index_ref,
    k_ref,
    v_ref,
    mask_ref,
    acc_ref,
    m_ref,
    lsum_ref,
    k_out_ref,
    v_out_ref,
    *,
    groups: int,
    eps: float,
    norm_eps: float,
    scale: float,
    block_s: int,
):
    """One (batch, kv head, split); every head-dim vector arrives as its two halves (x1, x2), which is
    how rotary pairs them (rotate_half(x) = [-x2, x1]) and how the score dot is split (q.k = q1.k1 +
    q2.k2). The prologue turns this kv head's raw fused-qkv rows (G query rows, then its key, then its
    value) into what the unfused layer computes: the folded input norm's 1/RMS (from the layer's
    input row h, which every program reads whole), the q/k RMSNorms, rotary, the query scale (rounded
    to the storage dtype at the same points). Split 0 writes the new key/value into the cache (aliased
    in place) and starts its online softmax with the new token; every split then reads its chunk of
    the cache (the new slot is masked there)."""
    dtype = qkv1_ref.dtype
    f32 = jnp.float32
    half = qkv1_ref.shape[-1]
    row = jnp.arange(QUERY_ROWS)[:, None]
    present = row < groups + 2
    h = h_ref[...].astype(f32)
    inv_rms = jax.lax.rsqrt(jnp.sum(h * h) / h.shape[0] + norm_eps)  # as `layers.pre_norm`
    t1 = (plgpu.load(qkv1_ref, mask=present, other=0).astype(f32) * inv_rms).astype(dtype).astype(f32)
    t2 = (plgpu.load(qkv2_ref, mask=present, other=0).astype(f32) * inv_rms).astype(dtype).astype(f32)
    is_q = row < groups
    w1 = jnp.where(is_q, q_scale1_ref[...].astype(f32)[None, :], k_scale1_ref[...].astype(f32)[None, :])
    w2 = jnp.where(is_q, q_scale2_ref[...].astype(f32)[None, :], k_scale2_ref[...].astype(f32)[None, :])
    c1, c2 = cos1_ref[...].astype(f32)[None, :], cos2_ref[...].astype(f32)[None, :]
    s1, s2 = sin1_ref[...].astype(f32)[None, :], sin2_ref[...].astype(f32)[None, :]
    r1, r2 = _norm_rotary(t1, t2, w1, w2, c1, c2, s1, s2, eps=eps, dtype=dtype)
    is_k = row == groups
    k_new1 = jnp.sum(jnp.where(is_k, r1, 0.0), axis=0)  # [D / 2]
    k_new2 = jnp.sum(jnp.where(is_k, r2, 0.0), axis=0)
    v_new = (v_row_ref[...].astype(f32) * inv_rms).astype(dtype)  # [D]: the value row, whole
    q1, q2 = (r1 * scale).astype(dtype), (r2 * scale).astype(dtype)  # rows >= groups are ignored below
    s_new = jnp.sum(q1.astype(f32) * k_new1[None, :], axis=1) + jnp.sum(
        q2.astype(f32) * k_new2[None, :], axis=1
    )

    split = pl.program_id(2)
    first = (1 - jnp.minimum(split, 1)).astype(f32)  # 1.0 on split 0 (arithmetic: no scalar select)
    index = index_ref[0]

    @pl.when(split == 0)
    def _write():
        new = pl.ds(index, 1)
        k_out_ref[new, pl.ds(0, half)] = k_new1.astype(dtype)[None, :]
        k_out_ref[new, pl.ds(half, half)] = k_new2.astype(dtype)[None, :]
        v_out_ref[new, :] = v_new[None, :]

    # Split 0 starts from the new token: score s_new, probability exp(0) = 1, value v_new.
    init = (
        first * v_new.astype(f32)[None, :] + jnp.zeros((QUERY_ROWS, v_ref.shape[-1]), f32),
        first * s_new + (1.0 - first) * MASKED_SCORE,
        first + jnp.zeros((QUERY_ROWS,), f32),
    )
    acc, m, lsum = _read_cache(q1, q2, k_ref, v_ref, mask_ref, init, block_s)
    rows = jnp.arange(QUERY_ROWS) < groups
    plgpu.store(acc_ref, acc, mask=rows[:, None])
    plgpu.store(m_ref, m, mask=rows)
    plgpu.store(lsum_ref, lsum, mask=rows)


def fused_decode_attention(
    qkv_bkxd: jax.Array,
    h_be: jax.Array,
    q_scale_d: jax.Array,
    k_scale_d: jax.Array,
    cos_bd: jax.Array,
    sin_bd: jax.Array,
    cache_k_bksd: jax.Array,
    cache_v_bksd: jax.Array,
    mask_bs: jax.Array,
    index: jax.Array,
    *,
    eps: float,
    norm_eps: float,
    chunk: int | None = None,
    block_s: int = 128,
    num_warps: int = 8,
    num_stages: int = 2,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A decode step's attention from the raw output of the fused output-major qkv kernel.

    qkv `[B, K, G + 2, D]` (per kv head: G query rows, key, value; before the folded input norm),
    `h_be [B, E]` the layer's input row (the kernel takes its 1/RMS with `norm_eps` for the folded
    norm, as `layers.pre_norm`; E a power of two), the q/k RMSNorm scales `[D]` (`eps`), rotary
    cos/sin `[B, D]` of the new position, per-layer cache k/v `[B, K, S, D]`, `mask_bs [B, S]` the
    cache slots to attend (slot `index` must be masked: the kernel attends the new token from its
    registers) and `index` the slot that receives the new key/value. Equals the unfused path (scale
    rows, q/k norm, rotary, attend to cache + new token, write k/v at `index`) in one kernel plus a
    float32 combine of its splits (a second small kernel). Returns (`[B, 1, K * G, D]`, cache k,
    cache v): the caches are updated in place (aliased). 8 warps: 13.8 us per ar1_2b layer with the
    combine against 14.6 with 4 (H100, session 9; session 6: 13.3 against 13.7).
    """
    b, k, rows, d = qkv_bkxd.shape
    g, half = rows - 2, d // 2
    _check(jax.ShapeDtypeStruct((b, k, g, d), qkv_bkxd.dtype), cache_k_bksd, cache_v_bksd, mask_bs, block_s)
    if h_be.ndim != 2 or h_be.shape[0] != b or not _is_power_of_two(h_be.shape[1]):
        raise ValueError(f"h_be {h_be.shape} must be [B, E] with B = {b} and E a power of two")
    if cos_bd.shape != (b, d) or sin_bd.shape != (b, d):
        raise ValueError(f"cos_bd {cos_bd.shape} and sin_bd {sin_bd.shape} must be [{b}, {d}]")
    _check_norm_scales(q_scale_d, k_scale_d, d)
    if rows > QUERY_ROWS:
        raise ValueError(f"qkv_bkxd has {rows} rows per kv head (G + 2); the kernel takes {QUERY_ROWS}")
    length = cache_k_bksd.shape[2]
    chunk, splits = _splits(b * k, length, block_s, chunk)
    interpret = _interpret(interpret)
    kernel = functools.partial(
        _fused_kernel, groups=g, eps=eps, norm_eps=norm_eps, scale=d**-0.5, block_s=block_s
    )
    f32 = jnp.float32

    whole_cache = pl.BlockSpec((None, None, length, d), lambda i, j, n: (i, j, 0, 0))
    norm_rotary_specs, norm_rotary_args = _norm_rotary_operands(
        q_scale_d, k_scale_d, cos_bd, sin_bd, (None,), lambda i, j, n: (i,)
    )
    acc, m, lsum, cache_k, cache_v = pl.pallas_call(
        kernel,
        grid=(b, k, splits),
        in_specs=[
            *_halves(lambda h: pl.BlockSpec((None, None, QUERY_ROWS, half), lambda i, j, n: (i, j, 0, h))),
            pl.BlockSpec((None, None, None, d), lambda i, j, n: (i, j, g + 1, 0)),
            pl.BlockSpec((None, h_be.shape[1]), lambda i, j, n: (i, 0)),
            *norm_rotary_specs,
            pl.BlockSpec((1,), lambda i, j, n: (0,)),
            pl.BlockSpec((None, None, chunk, d), lambda i, j, n: (i, j, n, 0)),
            pl.BlockSpec((None, None, chunk, d), lambda i, j, n: (i, j, n, 0)),
            pl.BlockSpec((None, chunk), lambda i, j, n: (i, n)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, QUERY_ROWS, d), lambda i, j, n: (i, j, n, 0, 0)),
            pl.BlockSpec((None, None, None, QUERY_ROWS), lambda i, j, n: (i, j, n, 0)),
            pl.BlockSpec((None, None, None, QUERY_ROWS), lambda i, j, n: (i, j, n, 0)),
            whole_cache,
            whole_cache,
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, k, splits, g, d), f32),
            jax.ShapeDtypeStruct((b, k, splits, g), f32),
            jax.ShapeDtypeStruct((b, k, splits, g), f32),
            jax.ShapeDtypeStruct(cache_k_bksd.shape, cache_k_bksd.dtype),
            jax.ShapeDtypeStruct(cache_v_bksd.shape, cache_v_bksd.dtype),
        ],
        input_output_aliases={13: 3, 14: 4},
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="decode_layer_attention",
    )(
        qkv_bkxd,
        qkv_bkxd,
        qkv_bkxd,
        h_be,
        *norm_rotary_args,
        jnp.reshape(index, (1,)).astype(jnp.int32),
        cache_k_bksd,
        cache_v_bksd,
        _int8(mask_bs),
    )
    out = _combine_splits(acc, m, lsum, qkv_bkxd.dtype, interpret)  # [B, K, G, D]
    return out.reshape(b, 1, k * g, d), cache_k, cache_v


# --------------------------------------------------- a prefill's attention prologue and cache write, fused

# Tokens per program of `fused_prefill_qkv` (tile sweep on an H100 at ar1_2b, session 9: 8 tokens and
# 4 warps 41.3 us per layer, 16 tokens 50.7 us, 32 tokens 55.6-107.6 us).
PREFILL_BLOCK = 8


def _prefill_kernel(
    qkv1_ref,
    qkv2_ref,
    inv_rms_ref,
    q_scale1_ref,
    q_scale2_ref,
    k_scale1_ref,
    k_scale2_ref,
    cos1_ref,
    cos2_ref,
    sin1_ref,
    sin2_ref,
    index_ref,
    cache_k_ref,
    cache_v_ref,
    q_ref,
    k_ref,
    v_ref,
    cache_k_out_ref,
    cache_v_out_ref,
    *,
    groups: int,
    length: int,
    eps: float,
):
    """One (batch, block of T tokens, kv head): the raw fused-qkv rows `[T, R, D/2]` as their two
    head-dim halves (R >= G + 2 rows: G queries, the key, the value; rows >= G + 2 and tokens past
    `length` out of bounds) -> the folded input norm, q/k RMSNorms and rotary as the unfused layer
    rounds them; writes q `[T, G, D]`, k and v `[T, D]` (the attention's inputs) and k, v into the
    cache at slots index + t that exist (aliased in place)."""
    dtype = qkv1_ref.dtype
    f32 = jnp.float32
    block, rows, half = qkv1_ref.shape
    first = pl.program_id(1) * block
    token = first + jnp.arange(block)
    in_bounds = token < length  # [T]
    row = jnp.arange(rows)[None, :, None]
    present = in_bounds[:, None, None] & (row < groups + 2)
    inv = plgpu.load(inv_rms_ref, mask=in_bounds, other=0.0).astype(f32)[:, None, None]  # [T, 1, 1]

    def rows_of(ref):  # the folded pre-norm, rounded as `layers.scale_rows` rounds
        return (plgpu.load(ref, mask=present, other=0).astype(f32) * inv).astype(dtype).astype(f32)

    t1, t2 = rows_of(qkv1_ref), rows_of(qkv2_ref)
    is_q = row < groups
    w1 = jnp.where(is_q, q_scale1_ref[...].astype(f32), k_scale1_ref[...].astype(f32))
    w2 = jnp.where(is_q, q_scale2_ref[...].astype(f32), k_scale2_ref[...].astype(f32))

    def rotary(ref):
        return plgpu.load(ref, mask=in_bounds[:, None], other=0.0).astype(f32)[:, None, :]  # [T, 1, D/2]

    r1, r2 = _norm_rotary(
        t1,
        t2,
        w1,
        w2,
        rotary(cos1_ref),
        rotary(cos2_ref),
        rotary(sin1_ref),
        rotary(sin2_ref),
        eps=eps,
        dtype=dtype,
    )
    q_mask = in_bounds[:, None, None] & is_q
    plgpu.store(q_ref.at[:, :, pl.ds(0, half)], r1.astype(dtype), mask=q_mask)
    plgpu.store(q_ref.at[:, :, pl.ds(half, half)], r2.astype(dtype), mask=q_mask)

    def pick(x, r):  # row r of x [T, R, D/2] -> [T, D/2]
        return jnp.sum(jnp.where(row == r, x, 0.0), axis=1).astype(dtype)

    start = index_ref[0] + first
    slots = pl.ds(start, block)
    token_mask = in_bounds[:, None]
    in_cache = token_mask & (start + jnp.arange(block) < cache_k_out_ref.shape[0])[:, None]
    for x1, x2, r, out_ref, cache_ref in (
        (r1, r2, groups, k_ref, cache_k_out_ref),
        (t1, t2, groups + 1, v_ref, cache_v_out_ref),  # the value: the folded norm only
    ):
        for h, x in ((0, x1), (half, x2)):
            value = pick(x, r)
            plgpu.store(out_ref.at[:, pl.ds(h, half)], value, mask=token_mask)
            plgpu.store(cache_ref.at[slots, pl.ds(h, half)], value, mask=in_cache)


def fused_prefill_qkv(
    qkv_blkxd: jax.Array,
    inv_rms_bl1: jax.Array,
    q_scale_d: jax.Array,
    k_scale_d: jax.Array,
    cos_bld: jax.Array,
    sin_bld: jax.Array,
    cache_k_bksd: jax.Array,
    cache_v_bksd: jax.Array,
    index: jax.Array,
    *,
    eps: float,
    block_l: int = PREFILL_BLOCK,
    num_warps: int | None = None,
    num_stages: int = 1,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """A prefill's attention inputs from the raw output of the fused output-major qkv kernel, in one kernel.

    qkv `[B, L, K, G + 2, D]` (per kv head: G query rows, key, value; before the folded input norm),
    `inv_rms_bl1 [B, L, 1]` that norm's 1/RMS, the q/k RMSNorm scales `[D]` (`eps`), rotary cos/sin
    `[B, L, D]`, the per-layer cache k/v `[B, K, S, D]` and `index`, the slot of token 0. Equals the
    unfused layer (scale rows, q/k norm, rotary, then the cache write of k and v at `index`), which XLA
    runs as seven kernels (docs/PERFORMANCE.md). Returns (q `[B, L, K * G, D]`, k and v `[B, L, K, D]`,
    cache k, cache v): the caches are updated in place (aliased); slots outside [index, index + L) keep
    their values, and tokens past the cache's last slot are not written (the caller sizes the cache).
    `num_warps` None: 4, or 8 for more than 64 rows per program (block_l x padded G + 2).
    """
    b, length, k, rows, d = qkv_blkxd.shape
    g, half = rows - 2, d // 2
    if cache_k_bksd.ndim != 4 or cache_k_bksd.shape[:2] != (b, k) or cache_k_bksd.shape[3] != d:
        raise ValueError(f"cache_k_bksd {cache_k_bksd.shape} must be [B, K, S, D] = [{b}, {k}, S, {d}]")
    if cache_v_bksd.shape != cache_k_bksd.shape:
        raise ValueError(f"cache_v_bksd {cache_v_bksd.shape} must have the shape of cache_k_bksd")
    if cache_k_bksd.dtype != qkv_blkxd.dtype or cache_v_bksd.dtype != qkv_blkxd.dtype:
        raise ValueError(
            f"the caches ({cache_k_bksd.dtype}, {cache_v_bksd.dtype}) must have qkv_blkxd's dtype "
            f"{qkv_blkxd.dtype}"
        )
    if cache_k_bksd.shape[2] < length:
        raise ValueError(
            f"cache_k_bksd holds {cache_k_bksd.shape[2]} slots, fewer than the L = {length} tokens"
        )
    _check_token_operands(inv_rms_bl1, q_scale_d, k_scale_d, cos_bld, sin_bld, b, length, d)
    if not _is_power_of_two(d) or not _is_power_of_two(block_l):
        raise ValueError(f"head dim D = {d} and block_l = {block_l} must be powers of two")
    padded_rows = 1 << (rows - 1).bit_length()  # Triton blocks: powers of two (extra rows masked)
    slots = cache_k_bksd.shape[2]
    kernel = functools.partial(_prefill_kernel, groups=g, length=length, eps=eps)
    norm_rotary_specs, norm_rotary_args = _norm_rotary_operands(
        q_scale_d, k_scale_d, cos_bld, sin_bld, (None, block_l), lambda i, n, j: (i, n)
    )
    whole_cache = pl.BlockSpec((None, None, slots, d), lambda i, n, j: (i, j, 0, 0))
    tokens = pl.BlockSpec((None, block_l, None, d), lambda i, n, j: (i, n, j, 0))
    q, k_out, v_out, cache_k, cache_v = pl.pallas_call(
        kernel,
        grid=(b, pl.cdiv(length, block_l), k),
        in_specs=[
            *_halves(
                lambda h: pl.BlockSpec(
                    (None, block_l, None, padded_rows, half), lambda i, n, j: (i, n, j, 0, h)
                )
            ),
            pl.BlockSpec((None, block_l), lambda i, n, j: (i, n)),
            *norm_rotary_specs,
            pl.BlockSpec((1,), lambda i, n, j: (0,)),
            whole_cache,
            whole_cache,
        ],
        out_specs=[
            pl.BlockSpec((None, block_l, None, padded_rows, d), lambda i, n, j: (i, n, j, 0, 0)),
            tokens,
            tokens,
            whole_cache,
            whole_cache,
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, length, k, g, d), qkv_blkxd.dtype),
            jax.ShapeDtypeStruct((b, length, k, d), qkv_blkxd.dtype),
            jax.ShapeDtypeStruct((b, length, k, d), qkv_blkxd.dtype),
            jax.ShapeDtypeStruct(cache_k_bksd.shape, cache_k_bksd.dtype),
            jax.ShapeDtypeStruct(cache_v_bksd.shape, cache_v_bksd.dtype),
        ],
        input_output_aliases={12: 3, 13: 4},
        compiler_params=plgpu.CompilerParams(
            num_warps=num_warps or (4 if padded_rows * block_l <= 64 else 8), num_stages=num_stages
        ),
        interpret=_interpret(interpret),
        name="prefill_attention_prologue",
    )(
        qkv_blkxd,
        qkv_blkxd,
        inv_rms_bl1[..., 0].astype(jnp.float32),
        *norm_rotary_args,
        jnp.reshape(index, (1,)).astype(jnp.int32),
        cache_k_bksd,
        cache_v_bksd,
    )
    return q.reshape(b, length, k * g, d), k_out, v_out, cache_k, cache_v


# ------------------------------------------------------------- the action expert's attention, fused


def _prefix_kernel(
    q1_ref,
    q2_ref,
    k1_ref,
    k2_ref,
    v_own_ref,
    inv_rms_ref,
    q_scale1_ref,
    q_scale2_ref,
    k_scale1_ref,
    k_scale2_ref,
    cos1_ref,
    cos2_ref,
    sin1_ref,
    sin2_ref,
    k_ref,
    v_ref,
    mask_ref,
    acc_ref,
    m_ref,
    lsum_ref,
    *,
    eps: float,
    scale: float,
    block_s: int,
):
    """One (batch, kv head, query head of the group, split) of the expert's L action tokens: the
    prologue applies the folded input norm, q/k norms and rotary to the L query and L own key rows;
    split 0 starts from the tokens' attention to each other (bidirectional), every split reads its
    chunk of the VLM prefix cache."""
    dtype = q1_ref.dtype
    f32 = jnp.float32
    inv = inv_rms_ref[...].astype(f32)[:, None]  # [L, 1]

    def rows(ref):  # the folded pre-norm, rounded as `layers.scale_rows` rounds
        return (ref[...].astype(f32) * inv).astype(dtype).astype(f32)

    c1, c2 = cos1_ref[...].astype(f32), cos2_ref[...].astype(f32)
    s1, s2 = sin1_ref[...].astype(f32), sin2_ref[...].astype(f32)
    qw1, qw2 = q_scale1_ref[...].astype(f32)[None, :], q_scale2_ref[...].astype(f32)[None, :]
    kw1, kw2 = k_scale1_ref[...].astype(f32)[None, :], k_scale2_ref[...].astype(f32)[None, :]
    rq1, rq2 = _norm_rotary(rows(q1_ref), rows(q2_ref), qw1, qw2, c1, c2, s1, s2, eps=eps, dtype=dtype)
    rk1, rk2 = _norm_rotary(rows(k1_ref), rows(k2_ref), kw1, kw2, c1, c2, s1, s2, eps=eps, dtype=dtype)
    q1, q2 = (rq1 * scale).astype(dtype), (rq2 * scale).astype(dtype)
    v_own = rows(v_own_ref).astype(dtype)
    s_own = plgpu.dot(q1, rk1.astype(dtype).T) + plgpu.dot(q2, rk2.astype(dtype).T)  # [L, L]
    m_own = s_own.max(axis=1)
    p_own = jnp.exp(s_own - m_own[:, None])
    acc_own = plgpu.dot(p_own.astype(dtype), v_own)

    first = (1 - jnp.minimum(pl.program_id(3), 1)).astype(f32)  # 1.0 on split 0
    init = (first * acc_own, first * m_own + (1.0 - first) * MASKED_SCORE, first * p_own.sum(axis=1))
    acc, m, lsum = _read_cache(q1, q2, k_ref, v_ref, mask_ref, init, block_s)
    acc_ref[...] = acc
    m_ref[...] = m
    lsum_ref[...] = lsum


def fused_prefix_attention(
    qkv_blkxd: jax.Array,
    inv_rms_bl1: jax.Array,
    q_scale_d: jax.Array,
    k_scale_d: jax.Array,
    cos_bld: jax.Array,
    sin_bld: jax.Array,
    cache_k_bksd: jax.Array,
    cache_v_bksd: jax.Array,
    mask_bs: jax.Array,
    *,
    eps: float,
    chunk: int | None = None,
    block_s: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
    combine_block_l: int | None = 2,
    interpret: bool | None = None,
) -> jax.Array:
    """The action expert's attention (a flow step) from the raw output of its fused qkv kernel.

    qkv `[B, L, K, G + 2, D]` (L action tokens; per kv head: G query heads, key, value; before the
    folded input norm), `inv_rms_bl1 [B, L, 1]` that norm's 1/RMS, q/k RMSNorm scales `[D]`, rotary
    cos/sin `[B, L, D]`, the VLM's per-layer prefix cache k/v `[B, K, S, D]` and the prefix slots the
    tokens may see `mask_bs [B, S]`. Equals the unfused path (scale rows, q/k norm, rotary,
    `layers.two_part_attention` over the prefix + the L tokens) in one kernel and a float32 combine:
    with `combine_block_l` a Pallas kernel with that many tokens per program (a power of two dividing
    L), or for None XLA's two reductions and a transposing convert (ar1_2b flow step on an H100: 1.471
    ms of device time with 2 tokens per program, 1.554 with XLA's; docs/PERFORMANCE.md, session 11).
    `chunk`: cache slots per program (default `one_wave_chunk`). Returns `[B, L, K * G, D]` in qkv's
    dtype.
    """
    b, length, k, rows, d = qkv_blkxd.shape
    g, half = rows - 2, d // 2
    if combine_block_l is not None and (not _is_power_of_two(combine_block_l) or length % combine_block_l):
        raise ValueError(f"combine_block_l = {combine_block_l} must be a power of two dividing L = {length}")
    _check(jax.ShapeDtypeStruct((b, k, g, d), qkv_blkxd.dtype), cache_k_bksd, cache_v_bksd, mask_bs, block_s)
    _check_token_operands(inv_rms_bl1, q_scale_d, k_scale_d, cos_bld, sin_bld, b, length, d)
    if not _is_power_of_two(length) or length < 16:
        raise ValueError(f"qkv_blkxd has L = {length} tokens; the kernel takes a power of two >= 16")
    slots = cache_k_bksd.shape[2]
    chunk = one_wave_chunk(b * k * g, slots, block_s) if chunk is None else chunk
    chunk, splits = _splits(b * k * g, slots, block_s, chunk)
    interpret = _interpret(interpret)
    kernel = functools.partial(_prefix_kernel, eps=eps, scale=d**-0.5, block_s=block_s)
    f32 = jnp.float32

    def tokens(row, width, h):  # rows of one (kv head, group member) of qkv: [L, width]
        return pl.BlockSpec((None, length, None, None, width), lambda i, j, q, n: (i, 0, j, row(q), h))

    norm_rotary_specs, norm_rotary_args = _norm_rotary_operands(
        q_scale_d, k_scale_d, cos_bld, sin_bld, (None, length), lambda i, j, q, n: (i, 0)
    )
    acc, m, lsum = pl.pallas_call(
        kernel,
        grid=(b, k, g, splits),
        in_specs=[
            *_halves(lambda h: tokens(lambda q: q, half, h)),
            *_halves(lambda h: tokens(lambda q: g, half, h)),
            tokens(lambda q: g + 1, d, 0),
            pl.BlockSpec((None, length), lambda i, j, q, n: (i, 0)),
            *norm_rotary_specs,
            pl.BlockSpec((None, None, chunk, d), lambda i, j, q, n: (i, j, n, 0)),
            pl.BlockSpec((None, None, chunk, d), lambda i, j, q, n: (i, j, n, 0)),
            pl.BlockSpec((None, chunk), lambda i, j, q, n: (i, n)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, None, length, d), lambda i, j, q, n: (i, j, q, n, 0, 0)),
            pl.BlockSpec((None, None, None, None, length), lambda i, j, q, n: (i, j, q, n, 0)),
            pl.BlockSpec((None, None, None, None, length), lambda i, j, q, n: (i, j, q, n, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, k, g, splits, length, d), f32),
            jax.ShapeDtypeStruct((b, k, g, splits, length), f32),
            jax.ShapeDtypeStruct((b, k, g, splits, length), f32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="expert_prefix_attention",
    )(
        *(qkv_blkxd,) * 5,
        inv_rms_bl1[..., 0],
        *norm_rotary_args,
        cache_k_bksd,
        cache_v_bksd,
        _int8(mask_bs),
    )
    if combine_block_l:
        return _combine_token_splits(acc, m, lsum, qkv_blkxd.dtype, combine_block_l, interpret)
    out = _combine_splits_xla(acc, m, lsum, axis=3)  # [B, K, G, L, D]
    return jnp.moveaxis(out, 3, 1).reshape(b, length, k * g, d).astype(qkv_blkxd.dtype)
