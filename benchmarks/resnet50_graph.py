"""ResNet-50 and ResNet-18 (torchvision v1.5 layout, random weights) built with onnx.helper, no torch.

Block outputs are named ``layer1`` … ``layer4``; input ``image`` [N, 3, 224, 224], output ``logits``.
Example: ``model = resnet50()``; ``model = resnet18()``.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def resnet18(size=224, classes=1000, seed=0):
    return resnet50(size, classes, seed, basic=True)


def resnet50(size=224, classes=1000, seed=0, basic=False):
    """ResNet-50 (bottleneck blocks 3-4-6-3), or ResNet-18 with ``basic`` (two 3×3 convs, 2-2-2-2)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv_bn(x, cin, cout, k, stride, name, relu=True):
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, name + ".w"))
        stats = [np.ones(cout), np.zeros(cout), rng.standard_normal(cout) * 0.01, np.ones(cout)]
        for suffix, v in zip(("s", "b", "m", "v"), stats):
            inits.append(numpy_helper.from_array(v.astype(np.float32), f"{name}.bn_{suffix}"))
        nodes.append(helper.make_node("Conv", [x, name + ".w"], [name + ".conv"], kernel_shape=[k, k],
                                      strides=[stride] * 2, pads=[k // 2] * 4))
        nodes.append(helper.make_node("BatchNormalization", [name + ".conv"] + [f"{name}.bn_{s}" for s in "sbmv"],
                                      [name + ".bn"]))
        if not relu:
            return name + ".bn"
        nodes.append(helper.make_node("Relu", [name + ".bn"], [name + ".relu"]))
        return name + ".relu"

    x = conv_bn("image", 3, 64, 7, 2, "stem")
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = "pool", 64
    expansion = 1 if basic else 4
    for stage, (blocks, width) in enumerate(zip((2, 2, 2, 2) if basic else (3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            name, stride = f"layer{stage}.{b}", (2 if b == 0 and stage > 1 else 1)
            if basic:
                y = conv_bn(x, cin, width, 3, stride, name + ".a")
                y = conv_bn(y, width, width, 3, 1, name + ".b", relu=False)
            else:
                y = conv_bn(x, cin, width, 1, 1, name + ".a")
                y = conv_bn(y, width, width, 3, stride, name + ".b")
                y = conv_bn(y, width, width * 4, 1, 1, name + ".c", relu=False)
            needs_down = b == 0 and (stride > 1 or cin != width * expansion)
            shortcut = conv_bn(x, cin, width * expansion, 1, stride, name + ".down", relu=False) if needs_down else x
            nodes.append(helper.make_node("Add", [y, shortcut], [name + ".sum"]))
            out = f"layer{stage}" if b == blocks - 1 else name + ".out"
            nodes.append(helper.make_node("Relu", [name + ".sum"], [out]))
            x, cin = out, width * expansion
    inits.append(numpy_helper.from_array((rng.standard_normal((classes, cin)) * 0.02).astype(np.float32), "fc.w"))
    inits.append(numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1)]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])
    graph = helper.make_graph(nodes, "resnet18" if basic else "resnet50", [image],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)
