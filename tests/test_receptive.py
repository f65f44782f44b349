import numpy as np
import pytest

from engine.graph.normalize import normalize
from engine.graph.receptive import Field, box, receptive_fields
from engine.graph.taps import add_taps
from tests.onnx_build import Builder, run
from tests.test_normalize import tf2onnx_model


def _conv(b, x, k, stride=1, pad=None, dilation=1, channels=1, **attrs):
    pad = (k // 2) * dilation if pad is None else pad
    return b.op("Conv", [x, b.weight(channels, channels, k, k)], strides=[stride] * 2,
                pads=[pad] * 4, dilations=[dilation] * 2, **attrs)


def _pool(b, x, k, stride, pad=0, op="MaxPool"):
    return b.op(op, [x], kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4)


def _model(b, size, out, channels=1, opset=17):
    return b.model([("x", ["N", channels, size, size])], [(out, None)], opset)


def _field(fields, name):
    f = fields[name]
    assert not f.whole_image and f.size[0] == f.size[1] and f.stride[0] == f.stride[1]
    return f.size[0], f.stride[0], f.offset[0]


def test_alexnet_published_fields():
    """Krizhevsky et al. 2012 layer geometry; published fields 11/19/51/67/99/131/163/195.
    Offsets by hand from window centres: conv1 centre 5, pool1 9, pool2 17, pool5 33."""
    b = Builder()
    names = {}
    h = names["conv1"] = _conv(b, "x", 11, stride=4, pad=0)
    h = names["pool1"] = _pool(b, b.op("Relu", [h]), 3, 2)
    h = names["conv2"] = _conv(b, h, 5)
    h = names["pool2"] = _pool(b, b.op("Relu", [h]), 3, 2)
    for layer in ("conv3", "conv4", "conv5"):
        h = names[layer] = _conv(b, b.op("Relu", [h]) if layer != "conv3" else h, 3)
    h = names["pool5"] = _pool(b, h, 3, 2)
    fields = receptive_fields(_model(b, 227, h))
    expected = {"conv1": (11, 4, 0), "pool1": (19, 8, 0), "conv2": (51, 8, -16),
                "pool2": (67, 16, -16), "conv3": (99, 16, -32), "conv4": (131, 16, -48),
                "conv5": (163, 16, -64), "pool5": (195, 32, 33 - 97)}
    assert {k: _field(fields, v) for k, v in names.items()} == expected


def test_vgg16_published_fields():
    """Simonyan & Zisserman 2014: conv3_3 40, conv4_3 92, conv5_3 196, pool5 212. 3x3/pad 1
    convs keep window centres; a 2x2/2 pool moves the centre by half the incoming stride."""
    b = Builder()
    names, h = {}, "x"
    for stage, convs in enumerate((2, 2, 3, 3, 3), start=1):
        for i in range(1, convs + 1):
            h = names[f"conv{stage}_{i}"] = b.op("Relu", [_conv(b, h, 3)])
        h = names[f"pool{stage}"] = _pool(b, h, 2, 2)
    fields = receptive_fields(_model(b, 224, h))
    got = {k: _field(fields, names[k]) for k in ("conv1_2", "pool1", "conv3_3", "conv4_3",
                                                 "conv5_3", "pool5")}
    assert got == {"conv1_2": (5, 1, -2), "pool1": (6, 2, 0.5 - 2.5),
                   "conv3_3": (40, 4, 1.5 - 19.5), "conv4_3": (92, 8, 3.5 - 45.5),
                   "conv5_3": (196, 16, 7.5 - 97.5), "pool5": (212, 32, 15.5 - 105.5)}


def _basic_block(b, x, stride):
    h = b.op("Relu", [_conv(b, x, 3, stride=stride)])
    h = _conv(b, h, 3)
    shortcut = _conv(b, x, 1, stride=stride, pad=0) if stride > 1 else x
    return b.op("Relu", [b.op("Add", [h, shortcut])])


def test_resnet_stride2_block_and_resnet18():
    """Stem 7x7/2 + 3x3/2 pool: (11, 4, -5). Stride-2 block: main 3x3/2 -> (19, 8, -9), 3x3 ->
    (35, 8, -17); shortcut 1x1/2 -> (11, 8, -5) lies inside, so the Add is (35, 8, -17).
    ResNet-18 (He et al. 2016) ends at the published 435 with stride 32, centred on 0."""
    b = Builder()
    stem = _pool(b, b.op("Relu", [_conv(b, "x", 7, stride=2)]), 3, 2, pad=1)
    first = _basic_block(b, stem, 2)
    h = _basic_block(b, stem, 1)
    h = _basic_block(b, h, 1)
    for _ in range(3):  # layer2..layer4
        h = _basic_block(b, _basic_block(b, h, 2), 1)
    pooled = b.op("GlobalAveragePool", [h])
    fields = receptive_fields(_model(b, 224, pooled))
    assert _field(fields, stem) == (11, 4, -5)
    assert _field(fields, first) == (35, 8, -17)
    assert _field(fields, h) == (435, 32, -217)
    assert fields[pooled] == Field((224, 224), (32, 32), (0, 0), True)


def test_dilated_context_module():
    """Yu & Koltun 2016: 3x3 convs with dilation 1, 2, 4 give 3x3, 7x7, 15x15 fields."""
    b = Builder()
    outs = [h := _conv(b, "x", 3, dilation=1)]
    outs.append(h := _conv(b, h, 3, dilation=2))
    outs.append(_conv(b, h, 3, dilation=4))
    fields = receptive_fields(_model(b, 32, outs[-1]))
    assert [_field(fields, o) for o in outs] == [(3, 1, -1), (7, 1, -3), (15, 1, -7)]


@pytest.mark.parametrize("size, auto_pad, begin", [(8, "SAME_UPPER", 0), (8, "SAME_LOWER", 1),
                                                    (7, "SAME_UPPER", 1), (8, "VALID", 0)])
def test_auto_pad(size, auto_pad, begin):
    """3x3/2: total padding (ceil(n/2)-1)*2 + 3 - n, the odd pixel at the end for UPPER."""
    b = Builder()
    h = b.op("Conv", ["x", b.weight(1, 1, 3, 3)], strides=[2, 2], auto_pad=auto_pad)
    assert _field(receptive_fields(_model(b, size, h)), h) == (3, 2, -begin)


def test_nhwc_fields_follow_the_transposes():
    model = normalize(tf2onnx_model((15, 15)), input_size=(15, 15))
    fields = receptive_fields(model)
    by_op = {n.op_type + str(i): n.output[0] for i, n in enumerate(model.graph.node)}
    # conv 3x3/2 SAME_UPPER on 15: pad 1 before -> (3, 2, -1); conv 2x2/1 on 8: pad 0 before
    assert _field(fields, by_op["Conv1"]) == (3, 2, -1)
    assert _field(fields, by_op["Conv3"]) == (5, 2, -1)
    assert fields[by_op["Transpose4"]] == fields[by_op["Conv3"]]  # NHWC again, same field


def test_concat_takes_the_union_and_channel_ops_keep_fields():
    """Inception-like: 1x1 and 5x5 branches concatenated -> the 5x5 field; LRN, Softmax over
    channels, a squeeze-excitation gate and MatMul over channels keep it."""
    b = Builder()
    a = _conv(b, "x", 1, channels=2)
    c = _conv(b, "x", 5, channels=2)
    cat = b.op("Concat", [a, c], axis=1)
    lrn = b.op("LRN", [cat], size=3)
    gate = b.op("Sigmoid", [b.op("GlobalAveragePool", [lrn])])
    se = b.op("Mul", [lrn, gate])
    soft = b.op("Softmax", [se], axis=1)
    nhwc = b.op("Transpose", [soft], perm=[0, 2, 3, 1])
    linear = b.op("MatMul", [nhwc, b.weight(4, 4)])
    back = b.op("Transpose", [linear], perm=[0, 3, 1, 2])
    fields = receptive_fields(_model(b, 16, back, channels=2))
    assert _field(fields, a) == (1, 1, 0)
    for name in (cat, lrn, se, soft, nhwc, linear, back):
        assert _field(fields, name) == (5, 1, -2), name
    assert fields[gate].whole_image


@pytest.mark.parametrize("op", ["GlobalMaxPool", "Resize", "MatMulW", "InstanceNormalization",
                                "ReduceMeanHW", "Softmax3"])
def test_global_ops_make_the_whole_image(op):
    b = Builder()
    h = _conv(b, "x", 3)
    if op == "Resize":
        out = b.op("Resize", [h, "", b.const(np.array([1, 1, 2, 2], np.float32))])
    elif op == "MatMulW":
        out = b.op("MatMul", [h, b.weight(12, 12)])
    elif op == "InstanceNormalization":
        out = b.op(op, [h, b.weight(1), b.weight(1)])
    elif op == "ReduceMeanHW":
        out = b.op("ReduceMean", [h, b.const(np.array([2, 3]))], keepdims=1)
    elif op == "Softmax3":
        out = b.op("Softmax", [h], axis=3)
    else:
        out = b.op(op, [h])
    fields = receptive_fields(_model(b, 12, out))
    assert fields[out].whole_image and fields[out].size == (12, 12)
    assert not fields[h].whole_image
    if op == "Resize":
        assert fields[out].stride == (0.5, 0.5)


def test_box_is_centred_on_the_position_and_unclipped():
    field = Field((35, 35), (8, 8), (-17, -17))
    y0, x0, y1, x1 = box(field, 3, 0, (64, 64))
    assert (y0, x0, y1, x1) == (7, -17, 42, 18)
    assert ((y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2) == (3 * 8, 0)  # centre over the position
    assert box(Field((64, 64), (32, 32), (0, 0), True), 1, 1, (64, 48)) == (0, 0, 64, 48)


def _impulse_net(size):
    """Linear graph (no bias, no ReLU) mixing every rule, so an input pixel influences an
    output position exactly when it lies in the position's field."""
    b = Builder(5)
    a = b.op("Conv", ["x", b.weight(2, 1, 3, 3, scale=1.0)], pads=[1] * 4)
    s = b.op("Conv", [a, b.weight(2, 2, 3, 3, scale=1.0)], strides=[2, 2], auto_pad="SAME_UPPER")
    d = b.op("Conv", [s, b.weight(2, 2, 3, 3, scale=1.0)], dilations=[2, 2], pads=[2] * 4)
    p = b.op("AveragePool", [d], kernel_shape=[3, 3], pads=[1] * 4, count_include_pad=1)
    shortcut = b.op("Conv", [a, b.weight(2, 2, 1, 1, scale=1.0)], strides=[2, 2])
    f = b.op("Add", [p, shortcut])
    g = b.op("Concat", [f, b.op("Conv", [f, b.weight(2, 2, 3, 3, scale=1.0)], pads=[1] * 4)],
             axis=1)
    h = b.op("Pad", [g, b.const(np.array([0, 0, 2, 1, 0, 0, 0, 0]))])
    i = b.op("Slice", [h, b.const(np.array([1])), b.const(np.array([99])),
                       b.const(np.array([3])), b.const(np.array([2]))])
    model = b.model([("x", ["N", 1, size, size])], [(i, None)], 17)
    return model, [a, s, d, p, shortcut, f, g, h, i]


def test_fields_bound_the_exact_pixel_influence():
    """Independent check through ORT: push one impulse per pixel through the linear graph. The
    pixels that influence a position lie in box(); where the box lies inside the image they span
    it exactly (at borders, parts of the field are reached only through zero padding)."""
    size = 40
    model, names = _impulse_net(size)
    fields = receptive_fields(normalize(model))
    impulses = np.eye(size * size, dtype=np.float32).reshape(-1, 1, size, size)
    outputs = run(add_taps(model, names[:-1]), impulses)
    inside = 0
    for name, response in zip([names[-1], *names[:-1]], outputs):
        support = np.abs(response).sum(axis=1).reshape(size, size, *response.shape[2:]) > 0
        for y, x in np.ndindex(*response.shape[2:]):
            pixels = np.argwhere(support[:, :, y, x])
            if not len(pixels):
                continue  # a padded position sees nothing
            y0, x0, y1, x1 = box(fields[name], y, x, (size, size))
            lo, hi = pixels.min(0), pixels.max(0) + 1
            assert y0 <= lo[0] and x0 <= lo[1] and hi[0] <= y1 and hi[1] <= x1, (name, y, x)
            if y0 >= 0 and x0 >= 0 and y1 <= size and x1 <= size:
                assert (*lo, *hi) == (y0, x0, y1, x1), (name, y, x)
                inside += 1
    assert inside > 300


def test_transpose_after_a_rank_change_sees_the_whole_image():
    """CRNN heads: Squeeze the height (rank 4 → 3), then Transpose to T×N×C; the sequence axis
    mixes what the field tracked, so the field is the whole image (no crash on the old axes)."""
    b = Builder()
    h = _conv(b, "x", 3)
    pooled = b.op("MaxPool", [h], kernel_shape=[12, 1], strides=[12, 1])  # N×1×1×W
    squeezed = b.op("Squeeze", [pooled, b.const(np.array([2]))])  # N×1×W
    sequence = b.op("Transpose", [squeezed], perm=[2, 0, 1])  # W×N×1
    back = b.op("Unsqueeze", [b.op("Transpose", [sequence], perm=[1, 2, 0]), b.const(np.array([2]))])
    fields = receptive_fields(_model(b, 12, back))
    assert not fields[pooled].whole_image
    assert fields[back].whole_image
