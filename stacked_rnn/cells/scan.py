"""The recurrence that minGRU and minLSTM share, h_t = (1 - z_t) * h_{t-1} + z_t * g(h~_t), and its two scans.

Every gate reads x_t only, so z_t and h~_t come from one linear map of the whole input sequence up front: `pre`
(B, T, blocks*H) holds them side by side, [z_pre | h~_pre] for minGRU (blocks=2) and [f_pre | i_pre | h~_pre]
for minLSTM (blocks=3, z_pre = log i - log f = softplus(-f_pre) - softplus(-i_pre), so f' = 1 - z and i' = z).
Then h_t = a_t * h_{t-1} + b_t with a_t = 1 - z_t in [0, 1] and b_t = z_t * g(h~_t) > 0 is a linear scan:

- "chunked": exact, in linear space (ChunkedScan; ChunkedLinearScan fuses the input map in). Time goes in chunks
  of c ~ sqrt(T): a loop over the c positions runs all chunks at once, a loop over the T/c chunk ends carries the
  state, one vectorised fix-up finishes. Every multiplier lies in [0, 1], so nothing can overflow (products only
  underflow towards 0, their limit). The backward is analytic (the same scan run the other way), not autograd
  through the loops; on the CPU it keeps its temporaries in reused work buffers (see `scratch`).
- "log": Heinsen's log-space scan (2023) as Feng et al. (2024) train: log h = a* + logcumsumexp(log b - a*) with
  a* = cumsum(log a), autograd through torch ops. In float32 it loses precision at long T (a* grows like -T).

reference_scan is the plain step-by-step loop both are tested against. `mask` (B, T, 1) of 1.0 (real step) and
0.0 (padding) makes a padded step keep the state as it is (z = 0): what a backward direction needs to start at
each sequence's real last step.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

SCANS = ("chunked", "log")


def g(x: torch.Tensor) -> torch.Tensor:
    """The candidate activation, x + 0.5 for x >= 0 and sigmoid(x) below: positive, so log-space works."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def split_pre(pre: torch.Tensor, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_pre, h~_pre), each (B, T, H), from the linear map's output (B, T, blocks*H); autograd-friendly."""
    parts = pre.chunk(blocks, dim=-1)
    if blocks == 2:
        return parts
    f_pre, i_pre, h_pre = parts  # minLSTM: z = i / (f + i) = sigmoid(log i - log f)
    return F.softplus(-f_pre) - F.softplus(-i_pre), h_pre


def check_blocks(pre: torch.Tensor, blocks: int) -> int:
    if blocks not in (2, 3) or pre.shape[-1] % blocks:
        raise ValueError(f"pre has {pre.shape[-1]} features: expected blocks * hidden_size with blocks 2 "
                         f"(minGRU) or 3 (minLSTM), got blocks={blocks}")
    return pre.shape[-1] // blocks


# ----------------------------------------------------------------------------------------------
# Reference: one step at a time


def reference_scan(pre, h0=None, mask=None, reverse=False, blocks=2):
    """h (B, T, H) by a Python loop over t, straight from the definition; slow, for tests."""
    z_pre, h_pre = split_pre(pre, blocks)
    z, cand = torch.sigmoid(z_pre), g(h_pre)  # (B, T, H)
    if mask is not None:
        z = z * mask
    h = torch.zeros_like(z[:, 0]) if h0 is None else h0  # (B, H)
    out = [None] * z.shape[1]
    for t in (reversed(range(z.shape[1])) if reverse else range(z.shape[1])):
        h = (1 - z[:, t]) * h + z[:, t] * cand[:, t]
        out[t] = h
    return torch.stack(out, 1)  # (B, T, H)


# ----------------------------------------------------------------------------------------------
# Log-space scan (Heinsen 2023)


def log_scan(pre, h0=None, mask=None, reverse=False, blocks=2):
    """h (B, T, H) as exp(a* + logcumsumexp(log b - a*)), a* = cumsum(log a), plus exp(a*) * h0 for an initial
    state of any sign. A padded step has log a = 0 and log b = -1e30 (b = 0 without -inf, whose gradient is NaN)."""
    check_blocks(pre, blocks)
    if reverse:  # the same scan on the time-reversed sequence
        pre, mask = pre.flip(1), None if mask is None else mask.flip(1)
    z_pre, h_pre = split_pre(pre, blocks)
    log_a = -F.softplus(z_pre)  # log(1 - z)
    log_b = -F.softplus(-z_pre) + torch.where(h_pre >= 0, torch.log(F.relu(h_pre) + 0.5), -F.softplus(-h_pre))
    if mask is not None:
        log_a = log_a * mask
        log_b = torch.where(mask > 0, log_b, -1e30)
    a_star = torch.cumsum(log_a, dim=1)  # (B, T, H), log of the product of a up to t
    h = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=1))
    if h0 is not None:
        h = h + torch.exp(a_star) * h0[:, None]
    return h.flip(1) if reverse else h


# ----------------------------------------------------------------------------------------------
# Chunked scan: exact, in linear space


_scratch_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A work buffer kept between calls (per thread) on the CPU, where a fresh large tensor costs a page fault per
    4 kB on first touch, about as much as the arithmetic on it. Garbage contents; never handed to autograd."""
    if like.device.type != "cpu":  # CUDA's caching allocator already reuses memory
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    buffers = _scratch_local.__dict__.setdefault("buffers", {})
    numel = math.prod(shape)
    key = (name, torch.is_inference_mode_enabled())  # an inference tensor cannot be written outside inference mode
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel or buf.dtype != like.dtype:
        buf = buffers[key] = torch.empty(numel, dtype=like.dtype)
    return buf[:numel].view(shape)


def clear_scratch() -> None:
    """Free this thread's work buffers (kept between calls, sized for the largest batch x length seen)."""
    _scratch_local.__dict__.pop("buffers", None)


def chunk_length(T: int) -> int:
    """c ~ sqrt(T): the loop over positions (2c ops over T/c chunks) and the loop over chunk ends (T/c tiny ops)
    cost about the same there."""
    return max(1, math.isqrt(T))


def one_minus(w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """1 - w into out, in one pass."""
    return torch.sub(w.new_ones(()), w, out=out)


def scan_(h, x, w, carry, reverse: bool, lerp: bool, prod=None):
    """The recurrence along dim 1 of (B, T, H) tensors, written into h, chunk by chunk.

    lerp=True:  h_t = (1 - w_t) * h_{t-1} + w_t * x_t   (the forward pass: w = z, x = g)
    lerp=False: h_t = w_t * h_{t-1} + x_t               (the backward pass: w = the next step's a, x = dL/dh)
    h_{-1} = carry (B, H); reverse runs t from T-1 down to 0 (h_{t+1} in place of h_{t-1}). The running products
    of the multipliers go to `prod` (a work buffer; default: over w). Returns the last state (a view of h).
    """
    B, T, H = h.shape
    prod = w if prod is None else prod
    c = chunk_length(T)
    m, r = divmod(T, c)  # m whole chunks; r steps left over, run one at a time after them (in scan order)
    if m:
        lo = r if reverse else 0
        h4, x4, w4, p4 = (v[:, lo:lo + m * c].unflatten(1, (m, c)) for v in (h, x, w, prod))  # (B, m, c, H)
        hs, xs, ws, ps = h4.unbind(2), x4.unbind(2), w4.unbind(2), p4.unbind(2)  # position j of all chunks: (B, m, H)
        order = range(c - 1, -1, -1) if reverse else range(c)
        # 1. every chunk from a zero state; ps[j] = product of the multipliers since the chunk began
        j = order[0]
        if lerp:
            torch.mul(xs[j], ws[j], out=hs[j])
            one_minus(ws[j], out=ps[j])
        else:
            hs[j].copy_(xs[j])
            if prod is not w:
                ps[j].copy_(ws[j])
        for prev, j in zip(order, order[1:]):
            if lerp:
                torch.lerp(hs[prev], xs[j], ws[j], out=hs[j])
                torch.addcmul(ps[prev], ps[prev], ws[j], value=-1, out=ps[j])  # p_prev * (1 - w_j)
            else:
                torch.addcmul(xs[j], ws[j], hs[prev], out=hs[j])
                torch.mul(ws[j], ps[prev], out=ps[j])
        end = order[-1]
        # 2. the state entering each chunk, along the chunk ends
        carries = scratch("carries", (B, m, 1, H), h)
        ks = range(m - 1, -1, -1) if reverse else range(m)
        carries[:, ks[0], 0] = carry
        for prev, k in zip(ks, ks[1:]):
            torch.addcmul(hs[end][:, prev], ps[end][:, prev], carries[:, prev, 0], out=carries[:, k, 0])
        # 3. every position: + (product of the multipliers since its chunk began) * (state entering the chunk)
        h4.addcmul_(p4, carries)
        carry = hs[end][:, ks[-1]]
    for t in (range(r - 1, -1, -1) if reverse else range(m * c, T)):
        if lerp:
            torch.lerp(carry, x[:, t], w[:, t], out=h[:, t])
        else:
            torch.addcmul(x[:, t], w[:, t], carry, out=h[:, t])
        carry = h[:, t]
    return carry


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, blocks: int) -> list[torch.Tensor]:
    """The gate pre-activations x W^T + b, one contiguous (B, T, H) tensor per weight block (contiguous: elementwise
    ops on a (B, T, H) slice of a (B, T, blocks*H) tensor run 2-3x slower at H = 64). All fresh: they are saved."""
    B, T, F_in = x.shape
    H = weight.shape[0] // blocks
    x2 = x.reshape(B * T, F_in)
    P = []
    for k in range(blocks):
        rows = slice(k * H, (k + 1) * H)
        if bias is None:  # zeros first: a GEMM that first-touches fresh pages runs up to 2x slower
            out = x2.new_zeros(B * T, H).addmm_(x2, weight[rows].t())
        else:
            out = torch.addmm(bias[rows], x2, weight[rows].t())
        P.append(out.view(B, T, H))
    return P


def forward_(P, h0, mask, reverse):
    """h (B, T, H) and what backward_ needs, from the gate pre-activations P (`blocks` fresh (B, T, H) tensors,
    consumed). Saved: z (masked), h~_pre, g(h~_pre) and for minLSTM sigmoid(-f_pre), sigmoid(-i_pre): backward
    then needs no second x W^T, no softplus and no sigmoid."""
    h_pre = P[-1]
    B, T, H = h_pre.shape
    if len(P) == 3:  # minLSTM: z_pre = softplus(-f_pre) - softplus(-i_pre)
        neg_f, neg_i = P[0].neg_(), P[1].neg_()
        sig_f, sig_i = torch.sigmoid(neg_f), torch.sigmoid(neg_i)  # d z_pre / d f_pre = -sigmoid(-f_pre), ...
        torch.ops.aten.softplus.out(neg_f, 1, 20, out=neg_f)
        torch.ops.aten.softplus.out(neg_i, 1, 20, out=neg_i)
        z = neg_f.sub_(neg_i).sigmoid_()
        saved = [sig_f, sig_i]
    else:
        z, saved = P[0].sigmoid_(), []
    if mask is not None:
        z.mul_(mask)
    # g = max(x + 0.5, sigmoid(x)): the same function as its two branches (they cross only at 0)
    cand = torch.sigmoid(h_pre)
    torch.maximum(cand, torch.add(h_pre, 0.5, out=scratch("t", (B, T, H), h_pre)), out=cand)
    h = torch.empty(B, T, H, dtype=h_pre.dtype, device=h_pre.device)
    carry = h0 if h0 is not None else h.new_zeros(B, H)
    scan_(h, cand, z, carry, reverse, lerp=True, prod=scratch("prod", (B, T, H), h_pre))
    return h, [z, h_pre, cand, *saved]


def backward_(saved, h, h0, reverse, grad_h):
    """(dL/d pre-activations as `blocks` work buffers (B, T, H), dL/dh0) from dL/dh.

    G_t = dL/dh_t along all paths = grad_h_t + a_{t+1} G_{t+1} is the same scan run the other way; then
    dL/dh~_pre = G z g'(h~_pre) and dL/dz_pre = G z (1 - z) (g - h_{t-1}). (With a mask, z = 0 at padded steps,
    where both vanish as they should.) minLSTM: dL/df_pre = -sigmoid(-f_pre) dL/dz_pre and
    dL/di_pre = sigmoid(-i_pre) dL/dz_pre.
    """
    z, h_pre, cand, *lstm = saved
    B, T, H = h.shape
    buf = lambda name: scratch(name, (B, T, H), h)
    a_next = buf("an")  # the multiplier of G_{t+1} (reverse: G_{t-1}) in G_t
    if reverse:
        a_next[:, 0] = 0
        one_minus(z[:, :-1], out=a_next[:, 1:])
    else:
        a_next[:, -1] = 0
        one_minus(z[:, 1:], out=a_next[:, :-1])
    G = buf("G")
    G_first = scan_(G, grad_h, a_next, h.new_zeros(B, H), not reverse, lerp=False)  # G at the first step
    grad_h0 = (1 - z[:, -1 if reverse else 0]) * G_first if h0 is not None else None
    q = G.mul_(z)  # dL/dg
    # g'(x) = 1 for x >= 0; sigmoid'(x) = g (1 - g) below, where g = sigmoid(x)
    grad_hp = torch.addcmul(cand, cand, cand, value=-1, out=buf("dh"))
    torch.maximum(grad_hp, torch.ge(h_pre, 0, out=a_next), out=grad_hp).mul_(q)
    diff = buf("t")  # g - h_prev
    first, rest, prev = (-1, slice(None, -1), slice(1, None)) if reverse else (0, slice(1, None), slice(None, -1))
    torch.sub(cand[:, rest], h[:, prev], out=diff[:, rest])
    if h0 is not None:
        torch.sub(cand[:, first], h0, out=diff[:, first])
    else:
        diff[:, first] = cand[:, first]
    grad_zp = diff.mul_(q.addcmul_(q, z, value=-1))  # q (1 - z) (g - h_prev)
    if not lstm:
        return [grad_zp, grad_hp], grad_h0
    sig_f, sig_i = lstm
    return [torch.mul(grad_zp, sig_f, out=buf("df")).neg_(), torch.mul(grad_zp, sig_i, out=buf("di")), grad_hp], grad_h0


class ChunkedScan(torch.autograd.Function):
    """h (B, T, H) from pre (B, T, blocks*H) by the exact chunked scan, with an analytic backward."""

    @staticmethod
    def forward(ctx, pre, h0, mask, reverse, blocks):
        H = check_blocks(pre, blocks)
        P = [part.clone(memory_format=torch.contiguous_format) for part in pre.split(H, dim=-1)]  # consumed
        h, saved = forward_(P, h0, mask, reverse)
        ctx.save_for_backward(h, h0, *saved)
        ctx.reverse = reverse
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):
        h, h0, *saved = ctx.saved_tensors
        grads, grad_h0 = backward_(saved, h, h0, ctx.reverse, grad_h)
        return torch.cat(grads, dim=-1), grad_h0, None, None, None


class ChunkedLinearScan(torch.autograd.Function):
    """h (B, T, H) from x (B, T, F): the input map x W^T + b fused with the chunked scan, so that each weight block
    gets its own contiguous pre-activation tensor and the gradients of the gates stay in work buffers: dL/dx,
    dL/dW and dL/db come from them straight (no (B, T, blocks*H) gradient tensor, no strided chunk + cat)."""

    @staticmethod
    def forward(ctx, x, weight, bias, h0, mask, reverse, blocks):
        h, saved = forward_(project(x, weight, bias, blocks), h0, mask, reverse)
        ctx.save_for_backward(x, weight, h, h0, *saved)
        ctx.reverse, ctx.blocks, ctx.has_bias = reverse, blocks, bias is not None
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):
        x, weight, h, h0, *saved = ctx.saved_tensors
        blocks = ctx.blocks
        B, T, F_in = x.shape
        H = h.shape[-1]
        grads, grad_h0 = backward_(saved, h, h0, ctx.reverse, grad_h)
        grads = [gp.view(B * T, H) for gp in grads]  # (B*T, H) per weight block
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # zeros first: a GEMM that first-touches fresh pages runs up to 2x slower
            grad_x = x.new_zeros(B * T, F_in)
            for k in range(blocks):
                grad_x.addmm_(grads[k], weight[k * H:(k + 1) * H])
            grad_x = grad_x.view(B, T, F_in)
        if ctx.needs_input_grad[1]:
            grad_w = weight.new_empty(weight.shape)
            x2 = x.reshape(B * T, F_in)
            for k in range(blocks):
                torch.mm(grads[k].t(), x2, out=grad_w[k * H:(k + 1) * H])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = weight.new_empty(blocks * H)
            for k in range(blocks):
                torch.sum(grads[k], dim=0, out=grad_b[k * H:(k + 1) * H])
        return grad_x, grad_w, grad_b, grad_h0, None, None, None


def chunked_scan(pre, h0=None, mask=None, reverse=False, blocks=2):
    """h (B, T, H) by the exact chunked scan (ChunkedScan)."""
    return ChunkedScan.apply(pre, h0, mask, reverse, blocks)


SCAN_FUNCTIONS = {"chunked": chunked_scan, "log": log_scan}  # h (B, T, H) from pre (B, T, blocks*H), by name


def linear_scan(x, weight, bias=None, h0=None, mask=None, reverse=False, blocks=2, method="chunked"):
    """One direction of one layer: h (B, T, H) from its input x (B, T, F) and the input map weight (blocks*H, F),
    bias (blocks*H,). The chunked scan fuses the map in (ChunkedLinearScan); the log scan runs F.linear first."""
    if method == "chunked":
        return ChunkedLinearScan.apply(x.contiguous(), weight, bias, h0, mask, reverse, blocks)
    if method == "log":
        return log_scan(F.linear(x, weight, bias), h0, mask, reverse, blocks)
    raise ValueError(f"scan={method!r}: expected one of {SCANS}")
