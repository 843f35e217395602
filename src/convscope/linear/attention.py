"""Attention as one op: ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention``'s
functional path ``F.multi_head_attention_forward``.

``softmax(q k^T * scale + mask) v`` multiplies input-dependent tensors twice, so it is
not linear in the input; its reading (see docs/linear.md, "Attention"):

- freeze: the attention weights ``P0 = softmax(q0 k0^T * scale + mask)`` are a gate
  decided by ``x0``, like a squeeze-excitation gate: the probes get ``P0 v``, linear in
  the values (and a constant ``P0 v`` when the values do not depend on the input).
- taylor: the exact derivative at ``x0``, ``dP v0 + P0 dv`` with
  ``dP = P0 * (dz - sum(P0 * dz))`` and ``dz = (dq k0^T + q0 dk^T) * scale``, plus
  ``c(x0)`` so that row 0 gets the attention of ``x0``.

The mask is read inside the softmax (``-inf`` where a boolean mask forbids a position),
so it is never a bias source of its own and never meets a probe as ``0 * inf``.

``F.multi_head_attention_forward`` is taken apart into the ops it is made of (in- and
out-projections as ``F.linear``, so their biases are bias sources, reshapes that move
the samples, and the attention above), each through the interpreter's own rules.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from convscope.errors import ConvscopeError
from convscope.linear import batchdim as bd
from convscope.linear.context import PassContext, op_name

__all__ = ["ATTENTION", "call"]

T = torch.Tensor


# -- running an op through the interpreter's rules, from inside a rule ---------------------

_TABLE: dict[Callable[..., Any], Callable[..., Any]] = {}


def call(ctx: PassContext, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` as the interceptor would run it: through its built-in
    rule when an argument depends on the input (rules run with the interception off,
    so a rule made of other ops calls them through here)."""
    if not ctx.any_tracked(args, kwargs):
        return func(*args, **kwargs)
    if not _TABLE:
        from convscope.linear.affine import (
            FIRST_LINEAR,
            HANDLERS,
            JOINT_LINEAR,
            linear_first,
            linear_joint,
        )
        from convscope.linear.rules import RULES

        _TABLE.update(dict.fromkeys(JOINT_LINEAR, linear_joint))
        _TABLE.update(dict.fromkeys(FIRST_LINEAR, linear_first))
        _TABLE.update(HANDLERS)
        _TABLE.update(RULES)
    handler = _TABLE.get(func)
    if handler is None:
        raise ConvscopeError(f"internal: {op_name(func)} has no built-in rule")
    return handler(ctx, func, args, kwargs)


# -- scaled dot-product attention ------------------------------------------------------------


def _float_mask(mask: T | None, dtype: torch.dtype, allowed: bool) -> T | None:
    """An additive mask: ``-inf`` where a boolean mask forbids (``allowed``: True means
    "attend", as in SDPA; else True means "masked", as in nn.MultiheadAttention)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        forbid = ~mask if allowed else mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            forbid, float("-inf")
        )
    return mask.to(dtype)


def attention(
    ctx: PassContext,
    func: Callable[..., Any],
    q: Any,
    k: Any,
    v: Any,
    mask: T | None,
    scale: float,
    weights: bool = False,
) -> tuple[T, T | None]:
    """``softmax(q k^T * scale + mask) v`` on the pass's rows, and the attention weights
    when ``weights``.

    Args:
        q, k, v: ``(..., L, E)``, ``(..., S, E)``, ``(..., S, Ev)``; at least one tracked,
            the samples of every tracked one in the same leading dimension.
        mask: an additive float mask (``-inf`` for forbidden positions) broadcasting
            against ``(..., L, S)``, a constant.

    Returns:
        ``(out, P)``: ``(..., L, Ev)`` and ``(..., L, S)`` (``None`` unless ``weights``),
        both tracked.
    """
    rows = ctx.rows
    operands = [q, k, v]
    nd = max(t.ndim for t in operands)
    layout: bd.Layout | None = None
    for t in operands:
        if not ctx.is_tracked(t):
            continue
        lt = bd.layout_of(ctx, t)
        if lt.dim >= t.ndim - 2:
            raise bd.refuse(ctx, func, "attends across the batch dimension")
        lt = lt.moved(lt.dim + nd - t.ndim)
        if layout is not None and lt != layout:
            raise bd.refuse(
                ctx, func, "attends between tensors whose samples are in different places"
            )
        layout = lt
    assert layout is not None
    if mask is not None and ctx.is_tracked(mask):
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()}: the attention mask depends on the input, "
            "which the linear interpreter does not support"
        )

    def prep(t: T) -> T:
        """An operand in the canonical view, ``nd`` dims (a constant: sample 0's part)."""
        tracked = ctx.is_tracked(t)
        t = t.reshape((1,) * (nd - t.ndim) + tuple(t.shape))
        if tracked:
            return bd.canon(t, layout, rows)
        bd.check_invariant(ctx, func, t, layout, nd, "attends with")
        return bd.canon_const(t, layout, nd, rows)

    qc, kc, vc = (prep(t) for t in operands)
    tq, tk, tv = (ctx.is_tracked(t) for t in operands)
    m0 = None
    if mask is not None:
        m = mask.reshape((1,) * (nd - mask.ndim) + tuple(mask.shape)) if mask.ndim < nd else mask
        bd.check_invariant(ctx, func, m, layout, nd, "masks with")
        m0 = bd.canon_const(m, layout, nd, rows)

    def at_x0() -> tuple[T | None, T | None, T | None, T, T]:
        """``(q0, k0, v0, p0, y0)``: the operands' ``x0`` rows (taylor mode only) and the
        attention weights and output at ``x0``."""
        q0, k0, v0 = (c[:1].detach() if tr else c for c, tr in ((qc, tq), (kc, tk), (vc, tv)))
        z0 = (q0 @ k0.transpose(-2, -1)) * scale
        if m0 is not None:
            z0 = z0 + m0
        p0 = torch.softmax(z0, -1)
        y0 = p0 @ v0
        if ctx.mode == "freeze":
            return None, None, None, p0, y0
        return q0, k0, v0, p0, y0

    q0, k0, v0, p0, y0 = ctx.frozen(at_x0)
    name = op_name(func).rsplit(".", 1)[-1]
    p_out: T | None = None
    if ctx.mode == "freeze":
        if tv:
            out = p0 @ vc
        else:
            zeros = torch.zeros((rows, *y0.shape[1:]), dtype=y0.dtype, device=y0.device)
            out = ctx.add_constant(zeros, y0, f"{name} c(x0)")
        if weights:
            zeros = torch.zeros((rows, *p0.shape[1:]), dtype=p0.dtype, device=p0.device)
            p_out = ctx.add_constant(zeros, p0, f"{name} weights gate")
    else:
        dz: T | None = None
        assert q0 is not None and k0 is not None and v0 is not None
        if tq:
            dz = qc @ k0.transpose(-2, -1)
        if tk:
            term = q0 @ kc.transpose(-2, -1)
            dz = term if dz is None else dz + term
        lin: T | None = None
        dp: T | None = None
        if dz is not None:
            dz = dz * scale
            dp = p0 * (dz - (p0 * dz).sum(-1, keepdim=True))
            lin = dp @ v0
        if tv:
            term = p0 @ vc
            lin = term if lin is None else lin + term
        assert lin is not None
        out = ctx.add_constant(lin, ctx.frozen(lambda: y0 - lin[:1].detach()), f"{name} c(x0)")
        if weights:
            if dp is None:
                dp = torch.zeros((rows, *p0.shape[1:]), dtype=p0.dtype, device=p0.device)
            dp_ = dp
            p_out = ctx.add_constant(
                dp, ctx.frozen(lambda: p0 - dp_[:1].detach()), f"{name} weights c(x0)"
            )
    lead = torch.broadcast_shapes(*(t.shape[:-2] for t in operands))
    out_shape = (*lead, q.shape[-2], v.shape[-1])
    out = bd.track(ctx, bd.uncanon(out, layout, out_shape, rows), func, layout)
    if p_out is not None:
        p_shape = (*lead, q.shape[-2], k.shape[-2])
        p_out = bd.uncanon(p_out, layout, p_shape, rows)
        bd.track(ctx, p_out, func, layout)
        ctx.mark_gate(p_out)
    return out, p_out


def _sdpa(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``F.scaled_dot_product_attention`` (see the module docstring)."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    a: dict[str, Any] = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None}
    a.update(zip(names, args, strict=False))
    a.update(kwargs)
    q, k, v = a["query"], a["key"], a["value"]
    if a["dropout_p"]:
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()} drops attention weights at random "
            f"(dropout_p={a['dropout_p']}); run the model in eval mode"
        )
    if a.get("enable_gqa") and q.shape[-3] != k.shape[-3]:
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()}: grouped-query attention (enable_gqa) is not "
            "supported"
        )
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
    dtype = (q if q.is_floating_point() else v).dtype
    mask = _float_mask(a["attn_mask"], dtype, allowed=True)
    if a["is_causal"]:
        n_q, n_k = q.shape[-2], k.shape[-2]
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        causal_f = torch.zeros(causal.shape, dtype=dtype, device=q.device)
        causal_f = causal_f.masked_fill(~causal, float("-inf"))
        mask = causal_f if mask is None else mask + causal_f
    out, _ = attention(ctx, func, q, k, v, mask, scale)
    return out


# -- nn.MultiheadAttention's functional path -------------------------------------------------

_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)


def _mha(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``F.multi_head_attention_forward``: in-projection, attention per head,
    out-projection, each step through the interpreter's rules.

    Inputs are sequence first, ``(L, N, E)``: the samples must be in dimension 1 (the
    batch of the attention), possibly merged with other factors.
    """
    a = _MHA_SIGNATURE.bind(*args, **kwargs)
    a.apply_defaults()
    p = dict(a.arguments)
    query, key, value = p["query"], p["key"], p["value"]
    for t in (query, key, value):
        if ctx.is_tracked(t) and (t.ndim != 3 or bd.layout_of(ctx, t).dim != 1):
            raise bd.refuse(
                ctx,
                func,
                "attends across the batch dimension (nn.MultiheadAttention takes "
                "(L, N, E) inputs with the samples in dimension 1, or batch_first=True)",
            )
    for name in ("static_k", "static_v"):
        if p[name] is not None:
            raise ConvscopeError(
                f"{op_name(func)} in {ctx.where()}: {name} is not supported by the linear "
                "interpreter"
            )
    if p["training"] and p["dropout_p"] > 0:
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()} drops attention weights at random in training "
            "mode; put the model in eval mode"
        )
    heads: int = p["num_heads"]
    n_q, bsz, embed = query.shape
    head_dim = embed // heads
    w, b = p["in_proj_weight"], p["in_proj_bias"]
    linear = F.linear
    if not p["use_separate_proj_weight"]:
        if key is value and query is key:
            qkv = call(ctx, linear, query, w, b)
            q, k, v = call(ctx, torch.Tensor.chunk, qkv, 3, -1)
        else:
            wq, wk, wv = w.chunk(3)
            bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
            q = call(ctx, linear, query, wq, bq)
            k = call(ctx, linear, key, wk, bk)
            v = call(ctx, linear, value, wv, bv)
    else:
        bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
        q = call(ctx, linear, query, p["q_proj_weight"], bq)
        k = call(ctx, linear, key, p["k_proj_weight"], bk)
        v = call(ctx, linear, value, p["v_proj_weight"], bv)
    dtype = (q if isinstance(q, T) else query).dtype
    attn_mask = _float_mask(p["attn_mask"], dtype, allowed=False)
    kpm = _float_mask(p["key_padding_mask"], dtype, allowed=False)
    if p["is_causal"] and attn_mask is None:
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()}: is_causal needs attn_mask (as in PyTorch)"
        )
    if p["bias_k"] is not None and p["bias_v"] is not None:
        k = call(ctx, torch.cat, [k, p["bias_k"].repeat(1, bsz, 1)])
        v = call(ctx, torch.cat, [v, p["bias_v"].repeat(1, bsz, 1)])
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        kpm = None if kpm is None else F.pad(kpm, (0, 1))
    n_k = k.shape[0]
    # (L, N, E) -> (N, heads, L, head_dim): the samples first again
    q = call(
        ctx,
        torch.Tensor.permute,
        call(ctx, torch.Tensor.view, q, n_q, bsz, heads, head_dim),
        1,
        2,
        0,
        3,
    )
    k = call(
        ctx,
        torch.Tensor.permute,
        call(ctx, torch.Tensor.view, k, n_k, bsz, heads, head_dim),
        1,
        2,
        0,
        3,
    )
    v = call(
        ctx,
        torch.Tensor.permute,
        call(ctx, torch.Tensor.view, v, n_k, bsz, heads, head_dim),
        1,
        2,
        0,
        3,
    )
    if p["add_zero_attn"]:
        zeros = torch.zeros((bsz, heads, 1, head_dim), dtype=dtype, device=query.device)
        k = call(ctx, torch.cat, [k, zeros], dim=2)
        v = call(ctx, torch.cat, [v, zeros], dim=2)
        attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
        kpm = None if kpm is None else F.pad(kpm, (0, 1))
        n_k += 1
    mask: T | None = None
    if attn_mask is not None:  # (L, S) or (N * heads, L, S)
        mask = attn_mask if attn_mask.ndim == 2 else attn_mask.view(bsz, heads, n_q, n_k)
    if kpm is not None:  # (N, S)
        kpm4 = kpm.view(bsz, 1, 1, n_k)
        mask = kpm4 if mask is None else mask + kpm4
    out, weights = attention(
        ctx, func, q, k, v, mask, 1.0 / math.sqrt(head_dim), weights=p["need_weights"]
    )
    # (N, heads, L, head_dim) -> (L, N, E) -> out-projection
    out = call(
        ctx, torch.Tensor.reshape, call(ctx, torch.Tensor.permute, out, 2, 0, 1, 3), n_q, bsz, embed
    )
    out = call(ctx, linear, out, p["out_proj_weight"], p["out_proj_bias"])
    if weights is not None and p["average_attn_weights"]:
        weights = call(ctx, torch.Tensor.mean, weights, 1)
    return out, weights


ATTENTION: dict[Callable[..., Any], Callable[..., Any]] = {
    F.scaled_dot_product_attention: _sdpa,
    F.multi_head_attention_forward: _mha,
}
"""Rules for the attention ops (merged into :data:`convscope.linear.rules.RULES`)."""
