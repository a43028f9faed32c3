"""`osplab estimate`: parameters, FLOPs per training step and activation memory of a DiT config,
before a run (users of the Open-Sora-Plan-style anchors hit out-of-memory on 24-48 GB GPUs).

Everything is counted from the shapes, the way the code in dit.py / attention.py runs:

FLOPs: 2 * m * n * k for every matmul (Linear, the patch Conv3d, attention's q k^T and p v),
nothing for elementwise ops, as torch.utils.flop_counter counts (a test checks the forward
against FlopCounterMode). Attention counts the keys the kernel really visits: all N for `full`
(and for every layout on the `eager` backend, which masks a dense score matrix), the frame for
`spatial`, the T' positions for `temporal`, the anchor frames plus the own frame for `sparse`
(the CPU split-KV kernel also runs the own-frame product of anchor frames when S <= 128, and
that executed work is counted). A training step is forward + backward = 3x the forward.
FlopCounterMode misses two ops this code runs on CPU (the CPU flash-attention op and the in-place
baddbmm_ of the sparse kernel); the test counts them with torch's own formulas.

Activation memory: the bytes of the tensors that autograd saves for backward (what a training
step holds at the end of the forward), per op as the sdpa path saves them (flash attention: no
N x N matrix; the `eager` reference backend keeps its N x N probabilities and masks, counted too). Per token and block, in units of the width W: block input, LayerNorm outputs,
adaLN-modulated inputs, q/k/v, attention outputs and the gated branch outputs (24 W for
`full` with an MLP ratio of 4), plus LayerNorm statistics and log-sum-exps; the layouts that copy
(temporal, factorized, sparse) add theirs. A test checks the total against the saved tensors of a
real forward. bf16 = autocast: activations in 2 bytes, statistics in fp32; the bf16 copies of
the weights that autocast keeps for backward are reported apart (`autocast_weight_bytes`).
`sparse` is counted as the CPU split-KV kernel saves it (with S <= 128 it keeps the own-frame
probabilities, S x heads per token, in float32); on GPUs the gather path saves the gathered keys
and values instead, so treat the sparse numbers there as an upper bound. Gradient checkpointing keeps each block's input
and recomputes one block at a time in backward: depth x input + one block's activations.
Not included: parameters/gradients/optimizer state (reported separately: fp32 AdamW = 16 bytes
per parameter), framework workspaces, allocator fragmentation: leave headroom.
"""

from __future__ import annotations

from osplab.models.attention_sparse import ALL_FRAMES_MAX_S, anchor_frames, other_frames
from osplab.models.dit import DiTConfig

__all__ = ["activation_bytes", "autocast_weight_bytes", "estimate", "forward_flops", "param_count", "report",
           "train_flops"]

ADAMW_BYTES_PER_PARAM = 16  # fp32 weight + gradient + two AdamW moments, 4 bytes each


def _mlp_hidden(cfg: DiTConfig) -> int:
    return int(cfg.width * cfg.mlp_ratio)  # as blocks.DiTBlock builds its Mlp


def _attention_ops(cfg: DiTConfig) -> list[str]:
    return ["spatial", "temporal"] if cfg.layout == "factorized" else [cfg.layout]


def _keys_visited(layout: str, backend: str, grid: tuple[int, int, int], sparse_k: int) -> float:
    """Mean number of keys whose scores (and values) one query's attention computes."""
    T, H, W = grid
    S, N = H * W, T * H * W
    if backend == "eager" or layout == "full":
        return N
    if layout == "spatial":
        return S
    if layout == "temporal":
        return T
    n_a, others = len(anchor_frames(T, sparse_k)), other_frames(T, sparse_k)
    if not others:  # every frame is an anchor: the kernel runs full attention
        return N
    own = S if S <= ALL_FRAMES_MAX_S else S * len(others) / T  # own-frame product on all frames, or the others
    return n_a * S + own


def param_count(cfg: DiTConfig) -> int:
    """Number of parameters of DiT(cfg), from the layer shapes."""
    W, Dt, M, C = cfg.width, cfg.text_dim, _mlp_hidden(cfg), cfg.in_channels
    P = cfg.patch[0] * cfg.patch[1] * cfg.patch[2]
    lin = lambda i, o: i * o + o  # noqa: E731  (weight + bias)
    qk_norm = 2 * (W // cfg.heads) if cfg.qk_norm else 0
    attn_op = lin(W, 3 * W) + lin(W, W) + qk_norm
    block = (lin(W, 6 * W) + len(_attention_ops(cfg)) * attn_op
             + lin(W, W) + lin(W, 2 * W) + lin(W, W) + qk_norm + 2 * W  # cross q, kv, proj, norms, LayerNorm
             + lin(W, M) + lin(M, W))
    embed = (lin(C * P, W) + lin(cfg.time_freq_dim, W) + lin(W, W)
             + Dt + 2 * (lin(Dt, W) + lin(W, W)))  # patch, timestep MLP, null caption, token + pooled MLPs
    final = lin(W, 2 * W) + lin(W, P * C)
    return embed + cfg.depth * block + final


def forward_flops(cfg: DiTConfig, latent_thw: tuple[int, int, int], text_len: int) -> dict[str, float]:
    """Forward FLOPs of one sample by part: latent (T, H, W), `text_len` text tokens."""
    grid = cfg.grid(latent_thw)
    T, H, W_ = grid
    N, W, L, Dt, M = T * H * W_, cfg.width, text_len, cfg.text_dim, _mlp_hidden(cfg)
    P, C = cfg.patch[0] * cfg.patch[1] * cfg.patch[2], cfg.in_channels
    self_attn = 0.0
    for layout in _attention_ops(cfg):
        keys = _keys_visited(layout, cfg.backend, grid, cfg.sparse_k)
        self_attn += 2 * N * W * 4 * W + 4 * N * keys * W  # qkv + proj, then q k^T and p v
    per_block = {
        "adaLN": 2 * W * 6 * W,
        "self_attention": self_attn,
        "cross_attention": 2 * N * W * 2 * W + 2 * L * W * 2 * W + 4 * N * L * W,  # q + proj, kv, q k^T + p v
        "mlp": 2 * 2 * N * W * M,
    }
    parts = {k: cfg.depth * v for k, v in per_block.items()}
    parts["embed"] = (2 * N * P * C * W + 2 * (cfg.time_freq_dim * W + W * W)
                      + 2 * (L + 1) * (Dt * W + W * W))  # patch, timestep, text tokens and pooled text
    parts["final"] = 2 * W * 2 * W + 2 * N * W * P * C
    return parts


def train_flops(cfg: DiTConfig, latent_thw: tuple[int, int, int], text_len: int) -> float:
    """Training FLOPs (forward + backward = 3x forward) of one sample."""
    return 3 * sum(forward_flops(cfg, latent_thw, text_len).values())


def _rope_saved(backend: str, layout: str) -> int:
    """Change, in units of W per token, of what one attention op saves when q and k are rotated
    (RoPE): the rotated q and k are new contiguous tensors, which changes the copies each kernel
    path makes. Measured per path with saved-tensor hooks (tests/test_estimate.py checks them):
    full / spatial: +2 (the rotated q and k, beside the qkv output that stays alive);
    temporal: 0 and eager: 0 (their q, k, v were copied anyway); sparse: -2 (the split-KV kernel
    no longer copies q and k)."""
    if backend == "eager" or layout == "temporal":
        return 0
    return -2 if layout == "sparse" else 2


def _attention_saved(cfg: DiTConfig, layout: str, grid, a: int) -> float:
    """Bytes per token saved by one self-attention op (q/k/v, output and the layout's copies)."""
    T, H, W_ = grid
    S, W, f32 = H * W_, cfg.width, 4
    rope = _rope_saved(cfg.backend, layout) * W * a if cfg.rope else 0
    if cfg.backend == "eager":  # q, k, v and output copies, and the dense softmax over all N keys
        return 4 * W * a + cfg.heads * T * S * a + rope
    saved = 4 * W * a + cfg.heads * f32 + rope  # q, k, v (views of the qkv output), output; log-sum-exp
    if layout == "temporal":
        saved += W * a  # the output is folded back to (B, T, S, W) for the projection: a copy
    if layout == "sparse" and cfg.backend != "eager" and other_frames(T, cfg.sparse_k):
        n_a = len(anchor_frames(T, cfg.sparse_k))
        share = 1.0 if S <= ALL_FRAMES_MAX_S else len(other_frames(T, cfg.sparse_k)) / T  # rows part 2 runs on
        saved += 2 * W * a * n_a / T + W * a  # anchor keys/values copies, output copy for the projection
        part2 = max(a, f32)  # split-KV part 2 runs in float32 at least
        saved += share * (3 * W * part2 + S * cfg.heads * part2)  # own-frame q, k, v and probabilities
        if a != part2:
            saved += share * W * part2  # its float32 output (the same storage as the output in fp32)
    return saved


def activation_bytes(cfg: DiTConfig, latent_thw, text_len: int, batch: int, bf16: bool,
                     checkpointing: bool) -> float:
    """Bytes of the activations autograd holds for backward (module docstring)."""
    grid = cfg.grid(latent_thw)
    N = grid[0] * grid[1] * grid[2]
    W, L, Dt, M, H = cfg.width, text_len, cfg.text_dim, _mlp_hidden(cfg), cfg.heads
    P, C, a, f32 = cfg.patch[0] * cfg.patch[1] * cfg.patch[2], cfg.in_channels, (2 if bf16 else 4), 4
    ops = _attention_ops(cfg)
    per_token = (4 * W * a  # self-attention branch: block input, LayerNorm output, modulated input, gated output
                 + sum(_attention_saved(cfg, lay, grid, a) for lay in ops)
                 + (len(ops) - 1) * W * a  # factorized: the first op's output is the second op's input
                 + 4 * W * a + H * f32  # cross: residual, LayerNorm output, q, output; log-sum-exp
                 + (4 * W + 2 * M) * a  # MLP: residual, LayerNorm output, modulated, fc1 and GELU outputs, output
                 + 3 * 2 * f32)  # mean and rstd of three LayerNorms
    per_sample_block = N * per_token + (6 * W + 2 * L * W) * a  # adaLN chunks, cross keys/values
    embed = N * P * C * a + L * (Dt + 3 * W) * a + (Dt + cfg.time_freq_dim + 6 * W) * a  # patch in, text, time
    final = N * 3 * W * a
    if checkpointing:  # each block keeps its input; backward recomputes one block at a time
        blocks = cfg.depth * N * W * a + per_sample_block
    else:
        blocks = cfg.depth * per_sample_block
    eager_masks = cfg.depth * len(ops) * N * N if cfg.backend == "eager" else 0  # one bool (N, N) per op
    return batch * (blocks + embed + final) + eager_masks


def autocast_weight_bytes(cfg: DiTConfig) -> int:
    """bf16 copies of the Linear/Conv weights that autocast makes and autograd keeps for backward
    (once per step, whatever the batch; not part of `activation_bytes`)."""
    return 2 * _matmul_weights(cfg)


def _matmul_weights(cfg: DiTConfig) -> int:
    """Parameters that autocast casts to bf16 (Linear and Conv weights): all but biases and norms."""
    W, Dt, M, C = cfg.width, cfg.text_dim, _mlp_hidden(cfg), cfg.in_channels
    P = cfg.patch[0] * cfg.patch[1] * cfg.patch[2]
    block = W * 6 * W + len(_attention_ops(cfg)) * 4 * W * W + 4 * W * W + 2 * W * M
    return (C * P * W + cfg.time_freq_dim * W + W * W + 2 * (Dt * W + W * W)
            + cfg.depth * block + W * 2 * W + W * P * C)


def estimate(cfg: DiTConfig, latent_thw: tuple[int, int, int], text_len: int, batch: int) -> dict:
    """Everything `osplab estimate` reports for one latent shape, text length and (micro-)batch."""
    fwd = forward_flops(cfg, latent_thw, text_len)
    grid = cfg.grid(latent_thw)
    n_params = param_count(cfg)
    acts = {f"{'bf16' if bf16 else 'fp32'}{'_checkpointed' if ckpt else ''}":
            activation_bytes(cfg, latent_thw, text_len, batch, bf16, ckpt)
            for bf16 in (False, True) for ckpt in (False, True)}
    return {"params": n_params, "latent_thw": list(latent_thw), "tokens": grid[0] * grid[1] * grid[2],
            "text_len": text_len, "batch": batch, "forward_flops_per_sample": fwd,
            "train_flops_per_step": batch * train_flops(cfg, latent_thw, text_len),
            "param_state_bytes": ADAMW_BYTES_PER_PARAM * n_params, "activation_bytes": acts,
            "autocast_weight_bytes": autocast_weight_bytes(cfg)}


def _latent_shape(frames: int, size: tuple[int, int], downsample) -> tuple[int, int, int]:
    """Clip (frames, height, width) in pixels -> latent (T, H, W) of the VQVAE, with a clear error."""
    out = []
    for axis, n, f in zip(("frames", "height", "width"), (frames, *size), downsample):
        if n < f or n % f:
            lo, hi = (n // f) * f, (n // f + 1) * f
            raise ValueError(f"clip {axis}={n} is not a multiple of the VQVAE factor {f} "
                             f"(vqvae.model.downsample={list(downsample)}); nearest valid: "
                             f"{f'{lo} or {hi}' if lo else hi}")
        out.append(n // f)
    return tuple(out)


def _largest_clip(cfg) -> tuple[int, tuple[int, int]]:
    """The largest clip shape of the composed data config (the worst case a run meets)."""
    if cfg.data.kind == "synthetic":
        res = max((tuple(r) for r in cfg.data.synthetic.resolutions), key=lambda r: r[0] * r[1])
        return max(cfg.data.synthetic.frames), res
    return cfg.data.video_folder.frames, tuple(cfg.data.video_folder.size)


def report(overrides=(), frames: int | None = None, size: tuple[int, int] | None = None,
           batch: int | None = None) -> tuple[dict, str]:
    """`osplab estimate`: compose conf/ with `overrides`, estimate for a clip of `frames` x `size`
    pixels (default: the data config's largest) and `batch` samples (default: train_dit.micro_batch
    if the config has it, else 1). Returns (numbers, a printable table)."""
    from osplab.config import compose

    cfg = compose(list(overrides))
    dit = DiTConfig.from_dict(cfg.dit)
    big_frames, big_size = _largest_clip(cfg)
    frames, size = frames or big_frames, tuple(size or big_size)
    if batch is None:
        batch = int(cfg.train_dit.micro_batch) if "train_dit" in cfg else 1
    thw = _latent_shape(frames, size, cfg.vqvae.model.downsample)
    est = estimate(dit, thw, int(cfg.text.max_length), batch)
    gib = lambda b: f"{b / 2**30:8.2f} GiB"  # noqa: E731
    lines = [f"DiT preset {cfg.dit.preset}: width {dit.width}, depth {dit.depth}, heads {dit.heads}, "
             f"patch {list(dit.patch)}, layout {dit.layout}, backend {dit.backend}",
             f"clip {frames}x{size[0]}x{size[1]} px -> latent {list(thw)} -> {est['tokens']} tokens, "
             f"{est['text_len']} text tokens, batch {batch}",
             f"parameters                {est['params'] / 1e6:10.2f} M",
             f"weights+grads+AdamW fp32  {gib(est['param_state_bytes'])}",
             f"bf16 weight copies        {gib(est['autocast_weight_bytes'])} (autocast, bf16 runs only)",
             f"training FLOPs per step   {est['train_flops_per_step'] / 1e12:10.3f} TFLOP (3x forward)"]
    lines += [f"activations {name:<18}{gib(b)}" for name, b in est["activation_bytes"].items()]
    return est, "\n".join(lines)
