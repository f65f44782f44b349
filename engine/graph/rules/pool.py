"""Rules for pooling and reductions."""
import numpy as np
from onnx import TensorProto

from engine.errors import UnsupportedOpError
from engine.graph.rules import attrs, rule
from engine.graph.rules.context import BLOCK_ALIGNMENT, NCHWC_BLOCK
from engine.graph.rules.windows import interleave, window


@rule("MaxPool", since=16)
def max_pool(ctx, node, dy):
    """Scatter-add the gradient to the arg-max positions (flat over the whole tensor, so
    overlapping windows, pads and ceil_mode all work; from opset 16: ScatterElements with
    reduction); float32 windows that do not overlap use MaxUnpool with the same indices. The
    indices come from :func:`_separable_indices` where that is cheaper, else from the node's own
    Indices output; a ResNet stem's pool needs none (:func:`_first_max_by_taps`), nor do large
    pools whose windows tile the input (:func:`_first_max_by_tiles` for 2×2 windows in ORT's NCHWc
    layout, :func:`_first_max_in_blocks`, and for k×1 windows :func:`_first_max_down_columns`)."""
    if attrs(node).get("storage_order", 0):
        raise UnsupportedOpError(f"MaxPool {node.name!r} with storage_order=1 has no gradient rule; pick a layer after it")
    relu = pools_a_relu(ctx, node)  # the taps and the Indices apply its mask to dy, the others fold it in
    dx = _first_max_by_taps(ctx, node, dy) if relu else None
    if dx is None:
        dx = _first_max_by_tiles(ctx, node, dy, relu)
    if dx is None:
        dx = _first_max_in_blocks(ctx, node, dy, relu)
    if dx is None:
        dx = _first_max_down_columns(ctx, node, dy, relu)
    if dx is not None:
        return dx
    if relu:
        dy = ctx.where_positive(node.output[0], dy)
    x = node.input[0]
    a = attrs(node)
    kernel = a["kernel_shape"]
    strides, dilations = a.get("strides") or [1] * len(kernel), a.get("dilations") or [1] * len(kernel)
    indices = _separable_indices(ctx, node) or ctx.extra_output(node, 1)
    unpool_pads = _unpool_pads(ctx, node, kernel, strides)
    if (ctx.elem_type(x) == TensorProto.FLOAT and unpool_pads is not None
            and all(s >= (k - 1) * d + 1 for k, s, d in zip(kernel, strides, dilations))):
        # Windows that do not overlap send each input at most one gradient: MaxUnpool puts them
        # in place in one op (a third of the ScatterElements path's time on ORT CPU).
        return ctx.op("MaxUnpool", dy, indices, ctx.shape_of(x), kernel_shape=kernel, strides=strides,
                      pads=unpool_pads)
    flat = ctx.ints([-1])
    zeros = ctx.op("Reshape", ctx.zeros_like(x), flat)
    dx = ctx.op("ScatterElements", zeros, ctx.op("Reshape", indices, flat), ctx.op("Reshape", dy, flat),
                axis=0, reduction="add")
    return ctx.reshape_like(dx, x)


BELOW = np.float32(1 - 2.0 ** -24)  # y · BELOW: the float32 just below y > 0 (from 2⁻¹⁰² on), 0 for y = 0


def _at_maximum(ctx, taps, pooled, relu):
    """E = [t = y] for window taps ``taps`` and the pool's output ``pooled`` (y, broadcast against
    them): a HardSigmoid step of 2¹²⁶·(t − y) + 1, exact unless t < y differ by a subnormal amount.
    With ``relu`` (x ≥ 0, its Relu's mask still to apply) E = [t = y > 0] instead, the mask folded
    in: a step of 2¹²⁶·(t − y⁻) with y⁻ = y · BELOW the float just below y (0 for y = 0), exact
    from y ≥ 2⁻¹⁰² on; one Mul at the pooled size instead of the mask's step and Mul."""
    if relu:
        return ctx.op("HardSigmoid", ctx.op("Sub", taps, ctx.op("Mul", pooled, ctx.scalar(BELOW, like=pooled))),
                      alpha=2.0 ** 126, beta=0.0)
    return ctx.op("HardSigmoid", ctx.op("Sub", taps, pooled), alpha=2.0 ** 126, beta=1.0)


def pools_a_relu(ctx, node):
    """Whether the MaxPool ``node`` pools the output of a Relu that only it reads, in standard
    mode. That Relu's mask is then applied here, as [y > 0] on the pooled output y before the
    scatter (a quarter of the elements for a stride-2 pool; the blocks and columns fold it into
    their step, :func:`_at_maximum`), and the Relu rule passes its
    gradient through: every input that gets a gradient is the maximum of its window, so it is
    positive exactly when that window's y is."""
    return ctx.private_relus(node.input[:1])


TAPS_MIN_OUTPUTS = 3072  # outputs per image from which the taps beat the Indices on images that change (see below)


def _first_max_by_taps(ctx, node, dy):
    """dx of a 3×3 stride-2 MaxPool with pads 0 or 1 (ceil_mode too) over a Relu's output
    (:func:`pools_a_relu`: x ≥ 0; dy gets the Relu's mask, 0 where the window's maximum y is 0), with no
    Indices output: ORT CPU computes those at 30–40 ns per output, 2.5–5× the time of all this at
    ResNet stems. All of it stays in ORT's NCHWc layout; None for other pools, channels not a
    multiple of 8 (:meth:`~engine.graph.rules.context.Context.blocked_layout`, 8 channels
    included), symbolic sizes, or fewer than ``TAPS_MIN_OUTPUTS`` outputs per image
    (the ~40 ops cost more than the Indices there). The Indices' cost depends on the image: their
    branches, learnt when one image is fed again and again, mispredict on images that change. On
    16 images in turn the taps took 0.89× the Indices path's time at 3,600 outputs (SqueezeNet's
    stem), 0.80× at 4,096, 0.69× at 8,192, 1.03× at 2,304 and 1.5× at 1,024 (with one image
    repeated: 1.4× at 4,096, 0.6–0.8× from 8,192 on); at 24 channels (ShuffleNet's stem, which
    ORT pads to 32) 0.86× at 24×16×16 and 0.78× at 24×32×32.

    x's four phases (rows and columns even or odd) hold the nine taps t_k of every window, some
    shifted by one; E_k = [t_k = y] is a Conv picking t_k with −y added and a HardSigmoid step
    fused (2¹²⁶·(t_k − y) + 1 clipped to [0, 1]: exact unless t_k < y < 2⁻¹⁰⁰, a subnormal
    difference). In row-major order the first tap with E_k = 1 takes what is left of dy
    (:func:`_taken_in_order`). Each share goes back to its phase, shifted back,
    and :func:`~engine.graph.rules.windows.interleave` puts the phases together. A tap in the
    padding or past the input is 0, never the maximum of a window whose y > 0."""
    x, y = node.input[0], node.output[0]
    a = attrs(node)
    shape = ctx.shape(x)
    if not (ctx.blocked_layout(x, smallest=BLOCK_ALIGNMENT) and all(isinstance(d, int) for d in shape[2:])
            and a.get("auto_pad", "NOTSET") == "NOTSET"):
        return None
    win = window(ctx, node, a["kernel_shape"])
    if (win.kernel, win.strides, win.dilations) != ([3, 3], [2, 2], [1, 1]) or not set(win.begin) <= {0, 1} \
            or shape[1] * np.prod(win.outputs) < TAPS_MIN_OUTPUTS:
        return None
    dy = ctx.where_positive(y, dy)
    channels, lengths = shape[1], [-(-i // 2) for i in win.inputs]  # a phase's length, the longer

    def shifted(source, inputs, by, sizes, strides=(1, 1)):  # out[o] = source[s·o + by] per axis, zero outside
        begin = [max(0, -d) for d in by]
        at = [d + b for d, b in zip(by, begin)]
        kernel = [t + 1 for t in at]
        end = [(o - 1) * s + k - n - b for o, s, k, n, b in zip(sizes, strides, kernel, inputs, begin)]
        kernel = [k + max(0, -e - s + 1) for k, e, s in zip(kernel, end, strides)]  # cut short by more zero taps
        weight = np.zeros((channels, 1, *kernel), np.float32)
        weight[(slice(None), 0, *at)] = 1
        return ctx.op("Conv", source, ctx.const(weight, "tap"), group=channels, kernel_shape=kernel,
                      strides=list(strides), pads=begin + [max(e, 0) for e in end])

    phases = {(r, c): shifted(x, win.inputs, (r, c), lengths, (2, 2)) for r in (0, 1) for c in (0, 1)}
    placed = []  # row-major: tap (i, j) reads x[2·o + (i, j) − begin], phase (i, j) − begin mod 2, shifted by
    for k in range(9):
        offsets = [t - b for t, b in zip(divmod(k, 3), win.begin)]
        placed.append((tuple(o % 2 for o in offsets), [o // 2 for o in offsets]))
    taps = (shifted(phases[phase], lengths, by, win.outputs) for phase, by in placed)
    below = ctx.scale(y, -1.0, like=y, multiple=BLOCK_ALIGNMENT)
    sums = {}  # the shares summed by phase
    for (phase, by), share in zip(placed, _taken_in_order(ctx, dy, taps, 9, below, 1.0, y, BLOCK_ALIGNMENT)):
        if any(by) or win.outputs != lengths:  # back to the phase: output o's share belongs at o + by
            share = shifted(share, win.outputs, [-d for d in by], lengths)
        sums[phase] = ctx.op("Add", share, sums[phase]) if phase in sums else share
    return interleave(ctx, list(sums.values()), list(sums), channels, [2, 2], win.inputs, np.float32)


def _taken_in_order(ctx, dy, taps, count, below, beta, like, multiple):
    """The shares of ``dy`` that ``count`` window taps take, yielded in turn (``taps``: their
    tensors in row-major order, made as they are asked for). E_k = a HardSigmoid step of
    2¹²⁶·(t_k + below) + ``beta``, the Add and the step fused into the Conv that makes t_k in
    ORT's NCHWc layout; the first tap with E_k = 1 takes what is left of dy: c_k = G·E_k, then
    G −= c_k (G starts as dy), as a depthwise −1 (a blocked layout from ``multiple`` channels of
    ``like``) and an Add that ORT fuses (a Sub would leave the NCHWc layout)."""
    left = dy
    for k, tap in enumerate(taps):
        first = ctx.op("HardSigmoid", ctx.op("Add", tap, below), alpha=2.0 ** 126, beta=beta)
        share = ctx.op("Mul", left, first)
        if k < count - 1:
            left = ctx.op("Add", ctx.scale(share, -1.0, like=like, multiple=multiple), left)
        yield share


TILES_MIN_OUTPUTS = 1536  # outputs per image, and
TILES_MIN_POSITIONS = 36  # output positions per channel, from which the tiles beat the Indices (see below)


def _first_max_by_tiles(ctx, node, dy, relu):
    """dx of a float32 2×2 stride-2 MaxPool without pads (rows and columns past the last window
    get 0) over a tensor in ORT's NCHWc layout with whole blocks of channels
    (:meth:`~engine.graph.rules.context.Context.blocked_layout`), with no Indices output. Each of
    the four taps t_k of every window is a depthwise stride-2 Conv with one weight 1, and
    E_k = [t_k = y] its step (:func:`_at_maximum`'s, the Add of −y and the HardSigmoid fused into
    the Conv; with a Relu's mask folded in where the pool reads one, ``relu``). In row-major order
    the first tap with E_k = 1 takes what is left of dy (:func:`_taken_in_order`); the four
    shares are the phases of dx (:func:`~engine.graph.rules.windows.interleave`). All
    of it but the interleave stays in the NCHWc layout. None for other pools, symbolic sizes,
    fewer than ``TILES_MIN_OUTPUTS`` outputs per image or ``TILES_MIN_POSITIONS`` per channel.
    Measured on varied images (ORT 1.32, 1 thread, a Conv → Relu → pool → Conv graph's whole
    input gradient), against :func:`_first_max_in_blocks`: 0.81–0.90× its time from 16×8×16 to
    64×28×28 outputs, 0.95–0.97× at 128×28×28 and 256×14×14; against the Indices path
    (MaxPool with Indices and MaxUnpool): 0.85–0.97× at 32×6×6, 48×6×6, 64×6×6 and 16×8×8, but
    1.07–1.1× at 4×4 outputs per channel and 1.11× at 16×6×6; channels padded to whole blocks
    (24) measured no faster than the blocks. A CRNN's 16×8×24 pool: the whole input gradient
    0.98–0.99× the time (crnn_lstm_tnc, crnn_lstm_ntc, crnn_gru)."""
    x, y = node.input[0], node.output[0]
    found = _float_image_window(ctx, node)
    if found is None or not ctx.blocked_layout(x, multiple=NCHWC_BLOCK):
        return None
    win, channels = found
    h, w = win.outputs
    if (win.kernel != [2, 2] or win.strides != [2, 2] or set(win.dilations) != {1} or any(win.begin + win.end)
            or 2 * h > win.inputs[0] or 2 * w > win.inputs[1]
            or channels * h * w < TILES_MIN_OUTPUTS or h * w < TILES_MIN_POSITIONS):
        return None

    def tap(k):  # t_k: a depthwise stride-2 Conv picking tap k of every window
        weight = np.zeros((channels, 1, 2, 2), np.float32)
        weight[:, 0, k // 2, k % 2] = 1
        return ctx.op("Conv", x, ctx.const(weight, "tap"), group=channels, kernel_shape=[2, 2], strides=[2, 2])

    below = ctx.scale(y, -float(BELOW) if relu else -1.0, like=y)  # −y⁻ over a Relu, else −y
    taps = (tap(k) for k in range(4))
    shares = list(_taken_in_order(ctx, dy, taps, 4, below, 0.0 if relu else 1.0, y, NCHWC_BLOCK))
    covered = [2 * h, 2 * w]
    dx = interleave(ctx, shares, [(0, 0), (0, 1), (1, 0), (1, 1)], channels, [2, 2], covered, np.float32)
    rest = [i - c for i, c in zip(win.inputs, covered)]
    return ctx.op("Pad", dx, ctx.ints([0, 0, 0, 0, 0, 0, *rest])) if any(rest) else dx


BLOCKS_MIN_OUTPUTS = 3072  # outputs per image, and
BLOCKS_MIN_POSITIONS = 192  # output positions per channel, from which the blocks beat the Indices (see below)


def _first_max_in_blocks(ctx, node, dy, relu):
    """dx of a float32 2-D MaxPool whose windows tile the input (kernel = stride, no pads, no
    dilation; rows and columns past the last window get 0), with no Indices output. ORT CPU
    computes those one window at a time with data-dependent branches: 12–18 ns per output on
    images that change from call to call (2–3× what the same image again and again measures,
    its branches learnt). None for other pools (k×1 windows: :func:`_first_max_down_columns`),
    symbolic sizes, or fewer than ``BLOCKS_MIN_OUTPUTS`` outputs per image or
    ``BLOCKS_MIN_POSITIONS`` per channel (the grouped Convs cost per channel: 200 channels of
    2×12 outputs took 1.8× the Indices' time).

    A one-hot Conv (one group per channel, K = kernel taps outputs each) lays every window's
    taps t_q side by side; E_q = [t_q = y] (:func:`_at_maximum`, with a Relu's mask folded in where
    the pool reads one, ``relu``); F_q = relu(E_q − Σ_{p<q} E_p), one grouped 1×1
    Conv with the Relu fused, keeps the first maximum in row-major order (ties as torch breaks
    them); F·dy goes back to the window's positions by the same one-hot ConvTranspose. Measured on
    varied images (ORT 1.32, 1 thread): 8×32×96 2×2 pools in 0.59×, 16×16×48 in 0.77×,
    64×56×56 in 0.56× the Indices path's time (MaxPool with Indices and MaxUnpool). Square
    windows outside ORT's NCHWc layout lay their taps side by side by SpaceToDepth instead
    (:func:`_shares_side_by_side`)."""
    x, y = node.input[0], node.output[0]
    found = _float_image_window(ctx, node)
    if found is None:
        return None
    win, channels = found
    h, w = win.outputs
    if (win.kernel != win.strides or win.kernel[1] == 1 or set(win.dilations) != {1} or any(win.begin + win.end)
            or any(o * k > i for o, k, i in zip(win.outputs, win.kernel, win.inputs))
            or channels * h * w < BLOCKS_MIN_OUTPUTS or h * w < BLOCKS_MIN_POSITIONS):
        return None
    taps = int(np.prod(win.kernel))
    onehot = _one_hot_windows(channels, win.kernel)
    taps_weight = ctx.const(onehot, "window_taps")
    flat = ctx.ints([0, channels * taps, h, w])
    rest = [i - o * k for i, o, k in zip(win.inputs, win.outputs, win.kernel)]
    if win.kernel[0] == win.kernel[1] and not ctx.blocked_layout(x):
        shares = _shares_side_by_side(ctx, node, dy, relu, win, channels, rest)  # tap-major
        source = ctx.op("Reshape", shares, flat)
        by_channel = ctx.op("Reshape", ctx.op("Transpose", shares, perm=[0, 2, 1, 3, 4]), flat)
        windows = onehot.reshape(channels, taps, *onehot.shape[1:]).swapaxes(0, 1).reshape(onehot.shape)
        channel_of = np.tile(np.arange(channels), taps)
    else:
        first = np.tril(-np.ones((taps, taps), np.float32), -1) + np.eye(taps, dtype=np.float32)  # E_q − Σ_{p<q} E_p
        first = ctx.const(np.tile(first, (channels, 1)).reshape(channels * taps, taps, 1, 1), "first_tap")
        ranked = ctx.ints([0, channels, taps, h, w])
        tapped = ctx.op("Conv", x, taps_weight, group=channels, kernel_shape=win.kernel, strides=win.strides)
        equal = ctx.op("Reshape", _at_maximum(ctx, ctx.op("Reshape", tapped, ranked), ctx.unsqueeze(y, [2]), relu), flat)
        chosen = ctx.op("Relu", ctx.op("Conv", equal, first, group=channels, kernel_shape=[1, 1]))
        shares = ctx.op("Mul", ctx.op("Reshape", chosen, ranked), ctx.unsqueeze(dy, [2]))
        source = by_channel = ctx.op("Reshape", shares, flat)
        windows, channel_of = onehot, np.repeat(np.arange(channels), taps)
    dx = ctx.op("ConvTranspose", by_channel, taps_weight, group=channels, kernel_shape=win.kernel, strides=win.strides,
                output_padding=rest)
    ctx.scatters[dx] = (source, windows, channel_of, win.kernel, rest)
    return dx


def _shares_side_by_side(ctx, node, dy, relu, win, channels, rest):
    """The shares of dy (N×K×C×h×w, tap-major) for :func:`_first_max_in_blocks`'s k×k windows
    over an input outside ORT's NCHWc layout (a CRNN's 8 channels; ``rest``: the rows and columns
    past the last window): SpaceToDepth lays the taps side by side in one copy, where the one-hot
    grouped Conv ran one small GEMM per channel; the first maximum along the taps
    (:func:`_first_along`), times dy. The caller scatters them back by a Transpose to
    channel-major order and the one-hot grouped ConvTranspose (DepthToSpace took 3–7× as long);
    a grey first Conv's ConvTranspose takes them in tap-major without the Transpose
    (:func:`~engine.graph.rules.linear._through_scatter`). Measured (in-process, alternating
    sessions, the whole input gradient): the three CRNNs 0.97× (crnn_lstm_tnc 0.972×,
    crnn_lstm_ntc 0.974×, crnn_gru 0.972×); a 3 → 8 channel Conv → Relu → 2×2 pool graph 0.93×
    at 32×96 and 64×64, 0.95× at 128×128, 3 → 12 channels 0.97× at 112×112, 3 → 4 channels
    0.96× at 60×60. Over inputs in that layout it lost to the tiles (1.06–1.19×, 16 to 64
    channels)."""
    x, y = node.input[0], node.output[0]
    k, (h, w) = win.kernel[0], win.outputs
    if any(rest):
        x = ctx.op("Slice", x, ctx.ints([0, 0]), ctx.ints([h * k, w * k]), ctx.ints([2, 3]))
    tapped = ctx.op("Reshape", ctx.op("SpaceToDepth", x, blocksize=k), ctx.ints([0, k * k, channels, h, w]))
    equal = _at_maximum(ctx, tapped, ctx.unsqueeze(y, [1]), relu)
    return ctx.op("Mul", _first_along(ctx, equal, 1), ctx.unsqueeze(dy, [1]))


def _one_hot_windows(channels, kernel):
    """(C·K, 1, *kernel): per channel, the K windows with a single 1 at tap 0, 1, …, K − 1 in
    row-major order (a grouped Conv's weight that lays a window's K taps side by side)."""
    taps = int(np.prod(kernel))
    onehot = np.zeros((channels, taps, taps), np.float32)
    onehot[:, np.arange(taps), np.arange(taps)] = 1
    return onehot.reshape(channels * taps, 1, *kernel)


def _first_along(ctx, equal, axis):
    """F = relu(E − Σ_{p<q} E_p) along ``axis`` of the 0/1 steps ``equal``: 1 at the first tap
    equal to its window's maximum only (ties as torch breaks them)."""
    earlier = ctx.op("CumSum", equal, ctx.const(np.array(axis, np.int64), "axis"), exclusive=1)
    return ctx.op("Relu", ctx.op("Sub", equal, earlier))


COLUMNS_MIN_OUTPUTS = 2048  # outputs per image from which the columns beat the Indices (see below),
COLUMNS_MIN_OUTPUTS_OVER_RELU = 512  # and over a Relu, whose mask the Indices path applies apart


def _first_max_down_columns(ctx, node, dy, relu):
    """dx of a float32 2-D MaxPool with k×1 windows that tile each column (stride k×1, no pads,
    no dilation; rows past the last window get 0): the CRNN pools that halve the height and keep
    the width. No Indices output, and no Conv: the taps of each window lie k rows apart, so a
    Reshape to N×C×H'×k×W lays them along their own axis. E = [t = y] (:func:`_at_maximum`, with
    a Relu's mask folded in where the pool reads one, ``relu``); E minus its exclusive
    CumSum, through a Relu, keeps the first maximum (ties as torch breaks them); times dy, and
    back by the inverse Reshape. None for other pools, symbolic sizes, or fewer than
    ``COLUMNS_MIN_OUTPUTS`` outputs per image, where the Indices cost less than its ~10 nodes
    (768 outputs: 1.1–1.2× their time); over a Relu, whose mask the step folds in while the
    Indices path applies it apart, from ``COLUMNS_MIN_OUTPUTS_OVER_RELU`` (a CRNN's last 4×1
    pool, 32×1×24 outputs: crnn_lstm_tnc 0.987× and 0.994×, crnn_lstm_ntc 0.997× and 1.004×,
    crnn_gru 0.983× and 0.990× the whole input gradient's time in alternating processes).

    Measured on varied images (ORT 1.32, 1 thread, a Conv → Relu → pool graph's whole gradient):
    24×4×24 outputs of a 2×1 pool in 0.98× the Indices path's time, 64×4×24 in 0.67×,
    16×16×100 in 0.47×, 128×1×25 of a 4×1 pool in 0.81×; 0.60–0.91× the time of
    :func:`_first_max_in_blocks` on the same pools."""
    x, y = node.input[0], node.output[0]
    found = _float_image_window(ctx, node)
    if found is None:
        return None
    win, channels = found
    (rows, width), k = win.outputs, win.kernel[0]
    if (win.kernel[1] != 1 or win.strides != [k, 1] or set(win.dilations) != {1} or any(win.begin + win.end)
            or channels * rows * width < (COLUMNS_MIN_OUTPUTS_OVER_RELU if relu else COLUMNS_MIN_OUTPUTS)):
        return None
    pooled, left = rows * k, win.inputs[0] - rows * k  # the rows the windows cover, the rows after them
    if left:
        x = ctx.op("Slice", x, ctx.ints([0]), ctx.ints([pooled]), ctx.ints([2]))
    taps = ctx.op("Reshape", x, ctx.ints([0, 0, rows, k, width]))
    equal = _at_maximum(ctx, taps, ctx.unsqueeze(y, [3]), relu)
    dx = ctx.op("Reshape", ctx.op("Mul", _first_along(ctx, equal, 3), ctx.unsqueeze(dy, [3])),
                ctx.ints([0, 0, pooled, width]))
    return ctx.op("Pad", dx, ctx.ints([0, 0, 0, 0, 0, 0, left, 0])) if left else dx


def _unpool_pads(ctx, node, kernel, strides):
    """End pads for MaxUnpool so that the size it infers, (Y − 1)·s + k − pads, is not more than
    the input's (ORT refuses a smaller output_shape: pads or ceil_mode windows reach past the
    input); zeros for symbolic sizes when no window can reach past the input, else None."""
    sizes = _static_sizes(ctx, node)
    if sizes is None:
        a = attrs(node)
        inside = not any(a.get("pads") or []) and not a.get("ceil_mode", 0) and a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
        return [0] * 2 * len(kernel) if inside else None
    ends = [max(0, (y - 1) * s + k - x) for k, s, x, y in zip(kernel, strides, *sizes)]
    return [0] * len(ends) + ends


def _float_image_window(ctx, node):
    """(window, channels) of a 2-D float32 pool with static sizes and channel count, else None."""
    x = node.input[0]
    channels = ctx.shape(x)[1]
    sizes = _static_sizes(ctx, node)
    if sizes is None or len(sizes[0]) != 2 or not isinstance(channels, int) or ctx.elem_type(x) != TensorProto.FLOAT:
        return None
    return window(ctx, node, attrs(node)["kernel_shape"]), channels


def _static_sizes(ctx, node):
    """(input, output) spatial sizes of a pooling ``node``, or None when one is symbolic."""
    shape, out = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if shape is None or out is None or not all(isinstance(d, int) for d in [*shape[2:], *out[2:]]):
        return None
    return list(shape[2:]), list(out[2:])


def _separable_indices(ctx, node):
    """MaxPool ``node``'s flat arg-max indices from one 1-D MaxPool with Indices per spatial axis,
    last axis first, composed by Gather; None where that is not cheaper than the node's own
    Indices output (or the spatial dims are symbolic).

    The first axis pools last, so it picks the first row whose maximum is the window's and the
    stage before it the first column in that row: the first maximum in row-major order, ties
    included, as the whole-window pool (and torch) pick. ORT CPU's MaxPool with Indices costs
    about 15 + 1.35·taps ns per output, a 1-D one 8 + 2.5·k (measured, ORT 1.32): the stages
    pay from 5×5 stride 1 on (the 5/9/13 pools of an SPP block: 2–2.6× faster), not at 3×3
    stride 2. The forward MaxPool then keeps its fast kernel (no Indices output).

    Example: for a 13×13 stride-1 pool, two MaxPools (kernels [1, 13] then [13, 1]) and a Gather.
    """
    x = node.input[0]
    sizes = _static_sizes(ctx, node)
    if sizes is None or len(sizes[0]) < 2:
        return None
    a = attrs(node)
    win = window(ctx, node, a["kernel_shape"])
    sizes = list(win.inputs)
    stage_costs = []
    for axis in reversed(range(len(sizes))):
        sizes[axis] = win.outputs[axis]
        stage_costs.append(np.prod(sizes) * (8 + 2.5 * win.kernel[axis]))
    if sum(stage_costs) >= np.prod(win.outputs) * (15 + 1.35 * np.prod(win.kernel)):
        return None
    ceil_mode = a.get("ceil_mode", 0) if a.get("auto_pad", "NOTSET") == "NOTSET" else 0
    pooled, flat = x, None
    for axis in reversed(range(len(sizes))):
        pooled, indices = ctx.op("MaxPool", pooled, outputs=2, kernel_shape=_on_axis(win.kernel, axis, 1),
                                 strides=_on_axis(win.strides, axis, 1), dilations=_on_axis(win.dilations, axis, 1),
                                 pads=_on_axis(win.begin, axis, 0) + _on_axis(win.end, axis, 0), ceil_mode=ceil_mode)
        flat = indices if flat is None else ctx.op("Gather", ctx.op("Reshape", flat, ctx.ints([-1])), indices)
    return flat


def _on_axis(values, axis, rest):
    """``values[axis]`` at ``axis``, ``rest`` at the other positions: ``_on_axis([3, 5], 1, 1) == [1, 5]``."""
    return [v if i == axis else rest for i, v in enumerate(values)]


def _divisors(win, include_pad):
    """Per axis, how many elements each output position averages over."""
    out = []
    for k, s, d, b, e, x, y in zip(win.kernel, win.strides, win.dilations, win.begin, win.end,
                                   win.inputs, win.outputs):
        low, high = (-b, x + e) if include_pad else (0, x)
        taps = np.arange(y)[:, None] * s - b + np.arange(k)[None, :] * d
        out.append(((taps >= low) & (taps < high)).sum(axis=1))
    return out


@rule("AveragePool")
def average_pool(ctx, node, dy):
    """Divide by each window's count, then spread with a depthwise ConvTranspose of ones; with one
    count for every window (no pads, or count_include_pad) its weights hold 1/count instead
    (one pass over dy fewer: 15–25 % of this backward on ORT CPU for 2×2 stride 2)."""
    x = node.input[0]
    a = attrs(node)
    win = window(ctx, node, a["kernel_shape"])
    channels = ctx.shape(x)[1]
    counts = _divisors(win, a.get("count_include_pad", 0))
    scale = np.ones((), dtype=np.float64)
    for c in counts:
        scale = np.multiply.outer(scale, 1.0 / c)
    weight = np.ones((channels, 1, *win.kernel), dtype=ctx.dtype(x))
    if np.all(scale == scale.flat[0]):
        weight *= scale.flat[0].astype(weight.dtype)
    else:
        dy = ctx.op("Mul", dy, ctx.const(scale.astype(ctx.dtype(x)), "pool_divisor"))
    weight = ctx.const(weight, "pool_weight")
    pads, output_padding = win.transpose_pads()
    return ctx.op("ConvTranspose", dy, weight, kernel_shape=win.kernel, strides=win.strides,
                  dilations=win.dilations, group=channels, pads=pads, output_padding=output_padding)


@rule("GlobalAveragePool")
def global_average_pool(ctx, node, dy):
    """Spread dy / (number of positions) over every position; the count is computed at run
    time when the spatial dims are symbolic. In ORT CPU's NCHWc layout, over small images (the
    squeeze-excitations of small models), one padded depthwise Conv
    (:meth:`~engine.graph.rules.context.Context.spread`): an Expand left that layout, with reorders
    around it (mobilenetv3 and lcnet 3–6 % faster, with the gate's sum over the image in the Mul
    rule)."""
    x = node.input[0]
    spatial = ctx.shape(x)[2:]
    if all(isinstance(d, int) for d in spatial):
        factor, shape = 1.0 / np.prod(spatial), ctx.ints([1, 1, *spatial])
        spread = ctx.spread(dy, x, factor)
        if spread is not None:
            return spread
        if ctx.blocked_layout(x, NCHWC_BLOCK):  # the depthwise Conv that moves it into NCHWc scales it too
            return ctx.scale(ctx.op("Expand", dy, shape), factor, like=x)
        return ctx.op("Expand", ctx.op("Mul", dy, ctx.scalar(factor, like=x)), shape)
    positions = ctx.op("Slice", ctx.shape_of(x), ctx.ints([2]), ctx.ints([len(spatial) + 2]))
    count = ctx.op("Cast", ctx.op("ReduceProd", positions, keepdims=0), to=ctx.elem_type(x))
    return ctx.op("Expand", ctx.op("Div", dy, count), ctx.shape_of(x))


@rule("GlobalMaxPool")
def global_max_pool(ctx, node, dy):
    x = node.input[0]
    return ctx.mask(dy, ctx.op("Equal", x, node.output[0]), like=x)


def reduced_axes(ctx, node):
    """Reduced axes (non-negative, sorted), or None for a no-op reduction."""
    rank = ctx.rank(node.input[0])
    a = attrs(node)
    if len(node.input) > 1 and node.input[1]:
        axes = ctx.value(node.input[1])
        if axes is None:
            raise UnsupportedOpError(f"{node.op_type} {node.name!r} has computed axes: fold constants first")
        axes = axes.tolist()
    else:
        axes = a.get("axes", [])
    if not axes:
        return None if a.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(ax) % rank for ax in axes)


@rule("ReduceSum", "ReduceMean", "ReduceMax")
def reduce(ctx, node, dy):
    """dy spread back over the reduced axes: all of them (a sum), divided by their count (a
    mean; over every axis after N and C, GlobalAveragePool's rule, whose NCHWc Conv carries the
    1/count: mobilenetv3_n1c's squeeze-excitations −2 %), or to each position holding the maximum
    (ReduceMax)."""
    x, y = node.input[0], node.output[0]
    axes = reduced_axes(ctx, node)
    if axes is None:
        return dy
    keep = attrs(node).get("keepdims", 1)
    dyk = dy if keep else ctx.unsqueeze(dy, axes)
    if node.op_type == "ReduceMax":
        yk = y if keep else ctx.unsqueeze(y, axes)
        return ctx.mask(dyk, ctx.op("Equal", x, yk), like=x)
    if node.op_type == "ReduceMean" and axes == list(range(2, ctx.rank(x))) and ctx.rank(x) > 2:
        return global_average_pool(ctx, node, dyk)
    if node.op_type == "ReduceMean":
        dims = [ctx.shape(x)[ax] for ax in axes]
        if all(isinstance(d, int) for d in dims):
            count = ctx.scalar(float(np.prod(dims)), like=dy)
        else:
            count = ctx.op("Cast", ctx.op("ReduceProd", ctx.op("Gather", ctx.shape_of(x), ctx.ints(axes)),
                                          keepdims=0), to=ctx.elem_type(x))
        dyk = ctx.op("Div", dyk, count)
    return ctx.expand_like(dyk, x, axes)
