"""Rules for the linear layers: Conv, ConvTranspose, Gemm, MatMul, BatchNormalization (inference)."""
import itertools
from dataclasses import replace

import numpy as np

from engine.errors import UnsupportedOpError
from engine.graph.nodes import split_pads
from engine.graph.rules import attrs, rule
from engine.graph.rules.windows import interleave, static_spatial, window


def flipped_transposed(weight, group):
    """Conv weight (M, C/g, *k) → the weight (C, M/g, *k) of the forward Conv computing its
    stride-1 input gradient: channels transposed within each group, kernel flipped.

    Example: ``flipped_transposed(np.zeros((8, 2, 3, 3)), group=2).shape == (4, 4, 3, 3)``.
    """
    m, cg, *k = weight.shape
    w = weight.reshape(group, m // group, cg, *k).swapaxes(1, 2).reshape(group * cg, m // group, *k)
    return np.ascontiguousarray(np.flip(w, axis=tuple(range(2, w.ndim))))


@rule("Conv")
def conv(ctx, node, dy):
    """Stride-1 with a constant weight: a forward Conv with the pre-flipped, transposed weight
    (faster than ConvTranspose on ORT CPU), unless a dense Conv has few input channels
    (:func:`_few_channels`). Strided with a constant weight: depthwise, a stride-1 Conv over dy
    with zeros inserted (:func:`_depthwise_backward`); dense, with an input in ORT's blocked
    layout, one stride-1 Conv per phase of the input where measured faster (:func:`_phase_backward`),
    or where a strided sibling's phases join them (:func:`join_phases`).
    Otherwise: ConvTranspose with the same weight, of a pool's phases or scatter where it reads
    them (:func:`_transpose_phases`, :func:`_through_scatter`). A constant per-channel scale on
    the incoming gradient (a following BatchNormalization) is folded into the constant weight."""
    w = node.input[1]
    group = attrs(node).get("group", 1)
    win = window(ctx, node, ctx.shape(w)[2:])
    weight = ctx.value(w)
    scale = None
    if weight is not None:
        dy, scale = ctx.channel_scale(dy, node.output[0])
        if scale is not None:
            weight = (weight * scale.reshape(-1, *[1] * (weight.ndim - 1))).astype(weight.dtype)
    full = [e - 1 for e in win.extent]
    if weight is not None and set(win.strides) == {1} and not _few_channels(weight, group) and all(
            b <= f and e <= f for b, e, f in zip(win.begin, win.end, full)):
        pads = [f - b for f, b in zip(full, win.begin)] + [f - e for f, e in zip(full, win.end)]
        return ctx.op("Conv", dy, ctx.const(flipped_transposed(weight, group), "flipped_weight"),
                      kernel_shape=win.kernel, dilations=win.dilations, group=group, pads=pads)
    dx = _depthwise_backward(ctx, dy, weight, win, group) if weight is not None else None
    if dx is not None:
        return dx
    blocked = weight is not None and ctx.blocked_layout(node.input[0])
    dx = _phase_backward(ctx, dy, weight, win, group, any_work=_phase_sibling(ctx, node, win)) if blocked else None
    if dx is None:
        w = w if scale is None else ctx.const(weight, "scaled_weight")
        dx = _transpose_phases(ctx, dy, w, weight, win, group)
    if dx is None:
        dx = _through_scatter(ctx, dy, weight, win, group)
    if dx is None:
        pads, output_padding = win.transpose_pads()
        dx = ctx.op("ConvTranspose", dy, w, kernel_shape=win.kernel, strides=win.strides,
                    dilations=win.dilations, group=group, pads=pads, output_padding=output_padding)
    # ORT CPU runs ConvTranspose in plain NCHW; an identity depthwise Conv brings the
    # gradient back into its NCHWc layout at once, so the Sum and ReLU masks downstream
    # stay blocked (otherwise the whole skip path of the stage is converted back and forth).
    out = ctx.scale(dx, 1.0, like=node.input[0])
    if dx in ctx.interleaved:  # phases that join_phases may sum with a sibling's
        ctx.phase_parts[out] = (*ctx.interleaved[dx], weight.shape[1], win.inputs, weight.dtype)
    return out


def _phase_sibling(ctx, node, win):
    """Whether another Conv reads ``node``'s input with the same strides and would take the phase
    form too (constant weight, one group, no dilation, windows that overlap or skip), so that the
    two input gradients join in one interleave (:func:`join_phases`): a ResNet block's strided
    3×3 Conv and its strided 1×1 shortcut."""
    if set(win.strides) == {1}:
        return False
    for other in ctx.readers(node.input[0]):
        if other is node or other.op_type != "Conv" or other.input[0] != node.input[0] or ctx.value(other.input[1]) is None:
            continue
        a = attrs(other)
        try:
            theirs = window(ctx, other, ctx.shape(other.input[1])[2:])
        except UnsupportedOpError:  # symbolic sizes
            continue
        if (a.get("group", 1) == 1 and theirs.strides == win.strides and set(theirs.dilations) == {1}
                and theirs.kernel != theirs.strides):
            return True
    return False


def join_phases(ctx, parts, like):
    """The parts of forward tensor ``like``'s gradient, those in phase form with the same strides
    (:func:`_phase_backward`: a strided Conv and its strided 1×1 shortcut) joined: their phases
    at each position added (ORT CPU fuses the Add into the second phase Conv in its NCHWc layout)
    and interleaved once, instead of two interleaves and a Sum over the whole input gradient.
    Measured (alternating processes, 1 thread): ResNet-18's input gradient 0.982× the time at
    batch 16, 0.994× at batch 1; shapes-resnet 0.995× at both."""
    groups = {}
    for part in parts:
        if part in ctx.phase_parts:
            _, _, strides, channels, sizes, dtype = ctx.phase_parts[part]
            groups.setdefault((tuple(strides), channels, tuple(sizes), dtype), []).append(part)
    for (strides, channels, sizes, dtype), group in groups.items():
        if len(group) < 2:
            continue
        by_position = {}
        for part in group:
            phases, positions = ctx.phase_parts[part][:2]
            for phase, position in zip(phases, positions):
                by_position.setdefault(position, []).append(phase)
        positions = sorted(by_position)
        phases = [ctx.op("Add" if len(by_position[p]) == 2 else "Sum", *by_position[p]) if len(by_position[p]) > 1
                  else by_position[p][0] for p in positions]
        joined = interleave(ctx, phases, positions, channels, list(strides), list(sizes), dtype)
        parts = [p for p in parts if p not in group] + [ctx.scale(joined, 1.0, like=like)]
    return parts


def _transpose_phases(ctx, dy, w, weight, win, group):
    """ConvTranspose of a dy that :func:`~engine.graph.rules.windows.interleave` put together
    from phases (a stem's MaxPool backward) as one ConvTranspose per phase, summed: the
    interleave's Concat and one-hot ConvTranspose go, and each phase's ConvTranspose takes the
    strides of both (dy[t·q + r] reaches x at s·(t·q + r) + k − begin, so phase r is a
    ConvTranspose with stride s·t and begin pad begin − s·r; where that is negative, as many
    zero taps go before the kernel). None for other dy, or where the kernel would need those
    zero taps without a constant weight or with dilation, and where the phases' outputs (each
    the size of x) hold at least as many values as the interleaved dy: a CRNN's 16 → 8 channel
    3×3 Conv after a 2×2 pool took 1.4× the time of the interleave and one ConvTranspose that
    way. On ResNet-18 it saved 1.3 % of the input gradient's time at batch 1 and 1.6 % at 16;
    for 3×3 stride-1 stems (3 → 32 and 64 channels) 11 %."""
    if dy not in ctx.interleaved:
        return None
    phases, positions, inner = ctx.interleaved[dy]
    shape = ctx.shape(w)
    if shape is None or not all(isinstance(d, int) for d in shape[:2]) or len(phases) * shape[1] * group >= shape[0]:
        return None
    strides = [s * t for s, t in zip(win.strides, inner)]
    lengths = [-(-y // t) for y, t in zip(win.outputs, inner)]
    parts = []
    for phase, position in zip(phases, positions):
        begin = [b - s * r for b, s, r in zip(win.begin, win.strides, position)]
        kernel, w_phase = win.kernel, w
        if min(begin) < 0:
            if weight is None or set(win.dilations) != {1}:
                return None
            zeros = [max(-b, 0) for b in begin]
            padded = np.pad(weight, [(0, 0), (0, 0)] + [(z, 0) for z in zeros])
            kernel, w_phase = list(padded.shape[2:]), ctx.const(padded, "phase_weight")
            begin = [max(b, 0) for b in begin]
        pads, output_padding = replace(win, kernel=kernel, strides=strides, begin=begin, outputs=lengths).transpose_pads()
        parts.append(ctx.op("ConvTranspose", phase, w_phase, kernel_shape=kernel, strides=strides,
                            dilations=win.dilations, group=group, pads=pads, output_padding=output_padding))
    return ctx.op("Sum", *parts) if len(parts) > 1 else parts[0]


SCATTER_MAX_CHANNELS = 1  # input channels (a grey image's) up to which a Conv's ConvTranspose takes in a scatter


def _through_scatter(ctx, dy, weight, win, group):
    """ConvTranspose of a dy that a tiling MaxPool's backward scattered by a one-hot ConvTranspose
    (:func:`~engine.graph.rules.pool._first_max_in_blocks`) as one ConvTranspose of what it
    scattered: the scatter's strides, and a kernel of s + k − 1 taps per axis composed of the
    two. The scatter and the full-size dy between them go; the GEMM grows by ((s + k − 1) / k)²,
    so only for a stride-1 dense Conv with a constant weight onto at most
    ``SCATTER_MAX_CHANNELS`` input channels (a grey image's). Measured (1 thread, the whole
    input gradient): a CRNN's first Conv (1 → 8 channels, 3×3, then a 2×2 pool) 0.98× in
    crnn_lstm_tnc and 0.94× alone; 3 → 8 channels 1.01×; 16 → 8 channels (a CRNN's second
    Conv) 1.00×."""
    if (dy not in ctx.scatters or weight is None or group != 1 or set(win.strides) != {1} or set(win.dilations) != {1}
            or weight.shape[1] > SCATTER_MAX_CHANNELS):
        return None
    source, windows, channel_of, strides, padding = ctx.scatters[dy]
    kernel = [s + k - 1 for s, k in zip(strides, win.kernel)]
    composed = np.zeros((windows.shape[0], weight.shape[1], *kernel), weight.dtype)
    for i, window in enumerate(windows[:, 0]):
        for at in zip(*np.nonzero(window)):
            composed[(i, slice(None)) + tuple(slice(a, a + k) for a, k in zip(at, win.kernel))] += (
                window[at] * weight[channel_of[i]])
    pads, output_padding = win.transpose_pads()
    rank = len(kernel)
    end = [e - p - o for e, p, o in zip(pads[rank:], padding, output_padding)]  # what the composed output crops
    return ctx.op("ConvTranspose", source, ctx.const(composed, "scatter_weight"), kernel_shape=kernel, strides=strides,
                  pads=pads[:rank] + [max(e, 0) for e in end], output_padding=[max(-e, 0) for e in end])


FEW_CHANNELS = 16  # ORT CPU's NCHWc block on AVX-512: a Conv with fewer output channels is padded up to it


def _few_channels(weight, group):
    """Whether a dense Conv's input has fewer than ``FEW_CHANNELS`` channels, so that the forward
    Conv computing its input gradient would have that few outputs: ORT CPU pads them to a whole
    NCHWc block, and ConvTranspose (one GEMM and a col2im in plain NCHW) ran 1.2–5× faster there
    (1–12 channels, 3×3 and 1×1 kernels, measured)."""
    return group == 1 and weight.shape[1] < FEW_CHANNELS


DENSE_SPREAD_MAX = 4096  # values of dy up to which the zeros go in by a dense identity ConvTranspose


def _depthwise_backward(ctx, dy, weight, win, group):
    """Input gradient of a strided depthwise Conv (one filter per channel, dilation 1) as dy with
    zeros inserted between its values (a 1×1 ConvTranspose of ones) correlated with the flipped
    filters by a stride-1 depthwise Conv: 1.2–2.9× faster than the grouped ConvTranspose in ORT
    CPU's NCHWc layout (3×3 and 5×5 stride 2, 16–256 channels), 1.2–3.3× outside it (24 and 40
    channels; measured). None for other Convs, pads wider than the kernel, or windows that do not
    overlap along a strided axis (2×2 stride 2: the ConvTranspose, a plain scatter there, ran
    1.7–3× faster). Up to ``DENSE_SPREAD_MAX`` values of dy (per image) the 1×1 ConvTranspose is
    dense with an identity weight: one GEMM instead of one per channel, 33 → 21 µs for 144×2×2
    and 18 → 13 µs for 48×4×4 (even at 24×16×16, slower from 96×14×14 on)."""
    channels = weight.shape[0]
    if group != channels or weight.shape[1] != 1 or set(win.dilations) != {1} or set(win.strides) == {1} or any(
            k <= s for k, s in zip(win.kernel, win.strides) if s > 1):
        return None
    pads, output_padding = win.transpose_pads()
    rank = len(win.kernel)
    begin = [k - 1 - b for k, b in zip(win.kernel, pads[:rank])]
    end = [k - 1 - e + o for k, e, o in zip(win.kernel, pads[rank:], output_padding)]
    if min(begin + end) < 0:
        return None
    if channels * int(np.prod(win.outputs)) <= DENSE_SPREAD_MAX:  # one GEMM instead of one per channel
        identity, groups = np.eye(channels, dtype=weight.dtype).reshape(channels, channels, *[1] * rank), 1
    else:
        identity, groups = np.ones((channels, 1, *[1] * rank), weight.dtype), channels
    spread = ctx.op("ConvTranspose", dy, ctx.const(identity, "zero_insert"), kernel_shape=[1] * rank,
                    strides=win.strides, group=groups)
    return ctx.op("Conv", spread, ctx.const(flipped_transposed(weight, group), "flipped_weight"),
                  kernel_shape=win.kernel, group=channels, pads=begin + end)


PHASE_MIN_WORK = 2 ** 23  # multiply-adds per image and phase Conv: below, no gain was measured in whole models


def _phase_backward(ctx, dy, weight, win, group, any_work=False):
    """Input gradient of a strided Conv as one stride-1 Conv of dy per phase of the input (index
    ≡ r mod stride along each axis; :meth:`Window.phases`) with the flipped taps that reach it,
    stacked and interleaved by a one-hot ConvTranspose (kernel = stride, one group per channel).
    The phase Convs stay in ORT CPU's NCHWc layout and skip the overlapping col2im: about 20 %
    less kernel time than one ConvTranspose for the 3×3 stride-2 Convs of ResNet-18/50 and the
    1×1 stride-2 ones of ResNet-50 (batch 1 and 16); over channel counts that ORT pads to whole
    blocks (shapes-resnet's 24 from its stem) 0.99× the whole input gradient's time (0.985–1.002×,
    seven runs in alternating sessions at batch 1 and 16). None where that was not measured faster:
    grouped or dilated Convs, windows that do not overlap (kernel = stride: ConvTranspose is one
    GEMM and a plain scatter there), less than ``PHASE_MIN_WORK`` per phase (ResNet-18's 1×1
    downsamples, the small detectors of the wild corpus) unless ``any_work`` (a sibling's phases
    will join these: :func:`join_phases`)."""
    if group != 1 or set(win.dilations) != {1} or win.kernel == win.strides:
        return None
    lengths = [-(-x // s) for x, s in zip(win.inputs, win.strides)]  # phase length, the longest
    kernels, pads, positions = [], [], []
    for position, axes in zip(itertools.product(*map(range, win.strides)), itertools.product(*win.phases())):
        if any(taps == 0 for _, taps, _ in axes):
            continue  # no tap reaches this phase: its gradient is 0
        kernel = weight[(slice(None), slice(None)) + tuple(slice(a[0], None, s) for a, s in zip(axes, win.strides))]
        # taps j (reading dy[q + shift − j]) from `low` to `high`, zero outside [0, taps): padding
        # wider than the kernel reaches would otherwise ask for negative pads
        low = [min(0, q + shift - y) for q, (_, _, shift), y in zip(lengths, axes, win.outputs)]
        high = [max(taps, shift + 1) for _, taps, shift in axes]
        widths = [(-lo, hi - taps) for lo, hi, (_, taps, _) in zip(low, high, axes)]
        kernels.append(np.pad(kernel, [(0, 0), (0, 0)] + widths))
        pads.append([hi - 1 - shift for hi, (_, _, shift) in zip(high, axes)] + [
            q + shift - lo - y for q, (_, _, shift), lo, y in zip(lengths, axes, low, win.outputs)])
        positions.append(position)
    if not any_work and weight.size * np.prod(win.outputs) < PHASE_MIN_WORK * len(kernels):
        return None
    phases = [ctx.op("Conv", dy, ctx.const(flipped_transposed(k, 1), "phase_weight"), kernel_shape=list(k.shape[2:]),
                     pads=p) for k, p in zip(kernels, pads)]
    return interleave(ctx, phases, positions, weight.shape[1], win.strides, win.inputs, weight.dtype)


@rule("ConvTranspose")
def conv_transpose(ctx, node, dy):
    """The input gradient of a ConvTranspose is a Conv with the same weight, strides and pads."""
    x, w = node.input[:2]
    a = attrs(node)
    kernel = list(ctx.shape(w)[2:])
    n = len(kernel)
    strides = a.get("strides") or [1] * n
    dilations = a.get("dilations") or [1] * n
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad == "VALID":
        pads = [0] * (2 * n)
    elif auto_pad != "NOTSET" or "output_shape" in a:
        # Pads implied by the output size (ONNX spec of ConvTranspose).
        xs = static_spatial(ctx, node, x)
        ys = static_spatial(ctx, node, node.output[0])
        extra = a.get("output_padding") or [0] * n
        totals = [s * (i - 1) + p + (k - 1) * d + 1 - o
                  for s, i, p, k, d, o in zip(strides, xs, extra, kernel, dilations, ys)]
        if min(totals) < 0:
            raise UnsupportedOpError(f"ConvTranspose {node.name!r}: output larger than its input covers; pick a layer after it")
        begin, end = split_pads(totals, auto_pad)
        pads = begin + end
    else:
        pads = a.get("pads") or [0] * (2 * n)
    return ctx.op("Conv", dy, w, kernel_shape=kernel, strides=strides, dilations=dilations,
                  group=a.get("group", 1), pads=pads)


def _gemm_attributes(node):
    """alpha, beta, transA, transB of a Gemm (ONNX defaults)."""
    a = attrs(node)
    return a.get("alpha", 1.0), a.get("beta", 1.0), a.get("transA", 0), a.get("transB", 0)


@rule("Gemm")
def gemm_a(ctx, node, dy):
    """Y = alpha·A'·B' + beta·C with A' = A or Aᵀ, B' = B or Bᵀ: dA = alpha·dY·B'ᵀ (transposed when A is)."""
    alpha, _, ta, tb = _gemm_attributes(node)
    b = node.input[1]
    if ta:
        return ctx.op("Gemm", b, dy, alpha=alpha, transA=tb, transB=1)
    return ctx.op("Gemm", dy, b, alpha=alpha, transB=1 - tb)


@rule("Gemm", wrt=1)
def gemm_b(ctx, node, dy):
    """dB = alpha·A'ᵀ·dY (transposed when B is)."""
    alpha, _, ta, tb = _gemm_attributes(node)
    a = node.input[0]
    if tb:
        return ctx.op("Gemm", dy, a, alpha=alpha, transA=1, transB=ta)
    return ctx.op("Gemm", a, dy, alpha=alpha, transA=1 - ta)


@rule("Gemm", wrt=2)
def gemm_c(ctx, node, dy):
    """dC = beta·dY, summed back to C's broadcast shape."""
    beta = _gemm_attributes(node)[1]
    return ctx.unbroadcast(ctx.op("Mul", dy, ctx.scalar(beta, like=dy)), node.input[2], node.output[0])


def _swap_last(ctx, name):
    value = ctx.value(name)
    if value is not None:
        return ctx.const(np.ascontiguousarray(value.swapaxes(-1, -2)), "transposed")
    rank = ctx.rank(name)
    return ctx.op("Transpose", name, perm=list(range(rank - 2)) + [rank - 1, rank - 2])


def _matmul_operands(ctx, node):
    """(A, B, Y's shape) of a MatMul with operands of rank >= 2."""
    a, b = node.input
    if ctx.rank(a) < 2 or ctx.rank(b) < 2:
        raise UnsupportedOpError(f"MatMul {node.name!r} with a 1-D operand: gradients need rank >= 2; pick a layer after it")
    return a, b, ctx.shape(node.output[0])


@rule("MatMul")
def matmul_a(ctx, node, dy):
    """dA = dY·Bᵀ, summed over broadcast batch dims."""
    a, b, y = _matmul_operands(ctx, node)
    return ctx.unbroadcast(ctx.op("MatMul", dy, _swap_last(ctx, b)), a, y[:-1] + ctx.shape(a)[-1:])


@rule("MatMul", wrt=1)
def matmul_b(ctx, node, dy):
    """dB = Aᵀ·dY, summed over broadcast batch dims."""
    a, b, y = _matmul_operands(ctx, node)
    return ctx.unbroadcast(ctx.op("MatMul", _swap_last(ctx, a), dy), b, y[:-2] + ctx.shape(b)[-2:])


@rule("BatchNormalization")
def batch_norm(ctx, node, dy):
    """Inference mode: dx = dy · scale / sqrt(var + eps), per channel (axis 1). A constant factor
    on dy (:meth:`~Context.channel_scale`) joins the constant per-channel one."""
    if attrs(node).get("training_mode", 0):
        raise UnsupportedOpError(f"BatchNormalization {node.name!r} in training mode: export in eval mode")
    x, scale, _, _, var = node.input
    eps = attrs(node).get("epsilon", 1e-5)
    trailing = ctx.rank(x) - 2
    s, v = ctx.value(scale), ctx.value(var)
    if s is not None and v is not None:
        dy, extra = ctx.channel_scale(dy, node.output[0])
        factor = (s / np.sqrt(v + eps) * (1 if extra is None else extra)).astype(ctx.dtype(x))
        factor = ctx.const(factor.reshape(-1, *[1] * trailing), "bn_factor")
    else:
        factor = ctx.op("Div", scale, ctx.op("Sqrt", ctx.op("Add", var, ctx.scalar(eps, like=var))))
        factor = ctx.unsqueeze(factor, list(range(1, 1 + trailing))) if trailing else factor
    return ctx.op("Mul", dy, factor)
