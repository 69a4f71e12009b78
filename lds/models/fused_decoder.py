"""A fast CPU path for the spatial broadcast decoders: the whole conv trunk as one autograd op.

The decoders of MONet, IODINE, MulMON and GENESIS share one shape: a broadcast latent (one
vector per slot image, tiled over space) plus coordinate features, ReLU, L unpadded 3x3 convs
with ReLU, and a 1x1 head. Run layer by layer over the whole batch (MulMON: 8 scenes x 7 slots
per decoder call), every activation is a 20-40 MB tensor: oneDNN's 3x3 conv backward on such a
batch ran at ~70% of the fp32 matmul rate here against ~86% on 8 slot images
(benchmarks/bench_decoder_trunk.py), and each ReLU backward streamed two full-size tensors
from memory (17% of a MulMON step).

:func:`broadcast_decoder_trunk` computes the same function in chunks of
:data:`CHUNK_SLOT_IMAGES` slot images per CPU thread: forward with the ReLU fused into the conv (oneDNN post-op,
``mkldnn._convolution_pointwise``), backward chunk by chunk through all layers, so the gradient a
conv backward has just written is masked by the ReLU while it is still in cache, and no
full-size gradient is ever allocated. It saves exactly the activations the layer-by-layer
graph saves (the ReLU outputs), through ``save_for_backward`` so that gradient checkpointing
can drop and recompute them.

Weight gradients are computed only when the running backward pass will use them: MulMON's
and IODINE's refinement gradients (``autograd.grad`` with respect to the posterior) walk the
decoder graph for input gradients alone, as aten's own conv backward does.

Only float32 CPU tensors with oneDNN take this path; CUDA, other dtypes and autocast use the
plain layers (:func:`fused_trunk_supported`). Same parameters, same values up to float
summation order (tests/test_fused_decoder.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable

# Slot images per chunk and CPU thread (oneDNN splits a conv's batch over the threads, so each
# thread keeps about this many slot images' activations in its own core's cache). 2-28 per
# thread measured within the machine's noise of each other at 1 and 2 threads
# (benchmarks/bench_decoder_trunk.py --chunks); small chunks multiply the threads'
# synchronisation points, which costs most where cores are shared.
CHUNK_SLOT_IMAGES = 8


def chunk_size() -> int:
    """Slot images per chunk for the current torch thread count."""
    return CHUNK_SLOT_IMAGES * max(1, torch.get_num_threads())


_conv_relu = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


def _register_flop_formula() -> None:
    """Let torch.utils.flop_counter.FlopCounterMode count the fused conv+ReLU like a conv, so
    FLOP counts (benchmarks/) of the fused and the plain decoder are the same model FLOPs."""
    from torch.utils import flop_counter

    if _conv_relu is None or _conv_relu in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(_conv_relu)
    def _conv_pointwise_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


_register_flop_formula()


def fused_trunk_supported(x: torch.Tensor) -> bool:
    """Whether :func:`broadcast_decoder_trunk` can run on ``x``'s device and dtype."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and _conv_relu is not None
            and torch.backends.mkldnn.is_available()
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())          # inductor fuses the plain layers itself


def _grad_node(t: torch.Tensor):
    """The autograd node a gradient for ``t`` flows into (its AccumulateGrad for a leaf)."""
    if not t.requires_grad:
        return None
    if t.grad_fn is not None:
        return t.grad_fn
    with torch.enable_grad():                       # forward runs with grad mode off
        return t.view_as(t).grad_fn.next_functions[0][0]


def _will_run(node) -> bool:
    """Will the backward pass now running deliver a gradient into ``node``?"""
    if node is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):          # private API moved: compute, to be safe
        return True


class _BroadcastTrunk(torch.autograd.Function):
    @staticmethod
    def forward(ctx, per_item, shared, head_weight, head_bias, splits, keep, *conv_params):
        n, c1 = per_item.shape
        height, width = shared.shape[-2:]
        weights, biases = conv_params[0::2], conv_params[1::2]
        trim = 2 * len(weights)
        out_h, out_w = height - trim, width - trim
        outs = [torch.empty((n, out_h, out_w, c), dtype=shared.dtype) for c in splits]
        heads = torch.split(head_weight, list(splits)), torch.split(head_bias, list(splits))
        shared_nhwc = shared.contiguous(memory_format=torch.channels_last)
        saved: list[torch.Tensor] = []
        chunk = chunk_size()
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            x = torch.empty((stop - start, c1, height, width), dtype=shared.dtype,
                            memory_format=torch.channels_last)
            torch.add(shared_nhwc, per_item[start:stop, :, None, None], out=x)
            x.relu_()
            layers = [x]
            for weight, bias in zip(weights, biases):
                x = _conv_relu(x, weight, bias, [0, 0], [1, 1], [1, 1], 1, "relu", [], None)
                layers.append(x)
            if keep:                                # without a backward, free them chunk by chunk
                saved += layers
            rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])            # NHWC pixels: a view
            for out, w_part, b_part in zip(outs, *heads):
                torch.addmm(b_part, rows, w_part.t(), out=out[start:stop].view(-1, out.shape[-1]))
        ctx.splits = tuple(splits)
        ctx.num_layers = len(weights) + 1
        ctx.shared_shape = tuple(shared.shape)
        ctx.num_items = n
        ctx.nodes = [_grad_node(t) for t in (per_item, shared, head_weight, head_bias, *conv_params)]
        ctx.save_for_backward(head_weight, *conv_params, *saved)
        return tuple(out.permute(0, 3, 1, 2) for out in outs)                # (N, c, H, W) views

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outs):
        head_weight, *rest = ctx.saved_tensors
        num_conv = ctx.num_layers - 1
        conv_params, acts = rest[: 2 * num_conv], rest[2 * num_conv:]
        weights = conv_params[0::2]
        need = [ctx.needs_input_grad[i] and _will_run(node)
                for i, node in zip((0, 1, 2, 3, *range(6, 6 + 2 * num_conv)), ctx.nodes)]
        need_item, need_shared, need_params = need[0], need[1], any(need[2:])
        n = ctx.num_items
        c1 = acts[0].shape[1]
        height, width = ctx.shared_shape[-2:]
        out_h, out_w = height - 2 * num_conv, width - 2 * num_conv
        # Incoming gradients as NHWC rows; an unused output's gradient is zero.
        grad_rows = [g.permute(0, 2, 3, 1).reshape(n, out_h * out_w, c) if g is not None else None
                     for g, c in zip(grad_outs, ctx.splits)]
        head_splits = torch.split(head_weight, list(ctx.splits))

        grad_item = acts[0].new_empty((n, c1)) if need_item else None
        grad_shared = acts[0].new_zeros((height * width, c1)) if need_shared else None
        grad_head_w = torch.zeros_like(head_weight) if need_params else None
        grad_head_b = head_weight.new_zeros(head_weight.shape[0]) if need_params else None
        grad_conv = [torch.zeros_like(p) for p in conv_params] if need_params else None
        mask = (True, need_params, need_params)
        start = 0
        for chunk in range(len(acts) // ctx.num_layers):
            layers = acts[chunk * ctx.num_layers: (chunk + 1) * ctx.num_layers]
            size = layers[0].shape[0]
            stop = start + size
            last = layers[-1]
            rows = last.permute(0, 2, 3, 1).reshape(-1, last.shape[1])
            grad_pixels = None
            offset = 0
            for g, w_part, c in zip(grad_rows, head_splits, ctx.splits):
                if g is not None:
                    g_chunk = g[start:stop].reshape(-1, c)
                    grad_pixels = g_chunk @ w_part if grad_pixels is None else grad_pixels.addmm_(g_chunk, w_part)
                    if need_params:
                        grad_head_w[offset: offset + c].addmm_(g_chunk.t(), rows)
                        grad_head_b[offset: offset + c] += g_chunk.sum(0)
                offset += c
            if grad_pixels is None:
                grad_pixels = rows.new_zeros(rows.shape)
            g = grad_pixels.view(size, out_h, out_w, -1).permute(0, 3, 1, 2)
            torch.ops.aten.threshold_backward.grad_input(g, last, 0.0, grad_input=g)
            for layer in range(num_conv - 1, -1, -1):
                x_in = layers[layer]
                weight = weights[layer]
                g_in, g_w, g_b = torch.ops.aten.convolution_backward(
                    g, x_in, weight, [weight.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask)
                if need_params:
                    grad_conv[2 * layer] += g_w
                    grad_conv[2 * layer + 1] += g_b
                # ReLU backward on the gradient just written (still in cache), in place.
                torch.ops.aten.threshold_backward.grad_input(g_in, x_in, 0.0, grad_input=g_in)
                g = g_in
            g_rows = g.permute(0, 2, 3, 1).reshape(size, height * width, c1)   # NHWC: a view
            if need_item:
                torch.matmul(g_rows.new_ones(height * width), g_rows, out=grad_item[start:stop])
            if need_shared:
                grad_shared.view(1, -1).addmm_(g_rows.new_ones(1, size), g_rows.reshape(size, -1))
            start = stop
        if need_shared:
            grad_shared = grad_shared.view(1, height, width, c1).permute(0, 3, 1, 2)
        params = list(grad_conv) if need_params else [None] * (2 * num_conv)
        return (grad_item, grad_shared, grad_head_w, grad_head_b, None, None, *params)


def broadcast_decoder_trunk(per_item: torch.Tensor, shared: torch.Tensor,
                            convs: Sequence[nn.Conv2d], head: nn.Conv2d,
                            splits: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """relu(shared + per_item) -> [conv 3x3 -> relu] x L -> 1x1 ``head``, split by channels.

    per_item (N, C1): each slot image's constant first-layer pre-activation (the broadcast
    latent's part); shared (1, C1, H0, W0): the part common to all slot images (coordinates and
    bias). ``convs`` are unpadded, stride-1 3x3 convs; ``splits`` divides the head's output
    channels, e.g. (3, 1) for RGB means and a mask logit. Returns one (N, c, H, W) tensor per
    split (channels-last memory), H = H0 - 2L.
    """
    params: list[torch.Tensor] = []
    for conv in convs:
        params += [conv.weight, conv.bias]
    if sum(splits) != head.out_channels:
        raise ValueError(f"splits {tuple(splits)} must add up to the head's {head.out_channels} channels")
    inputs = (per_item, shared, *params, head.weight, head.bias)
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    return _BroadcastTrunk.apply(per_item, shared, head.weight.flatten(1), head.bias,
                                 tuple(splits), keep, *params)
