"""A PSPNet of ours as an ONNX graph, written layer by layer from its Keras functional graph.

Deliberately not tf2onnx (what `keras.Model.export(format="onnx")` runs on TensorFlow): ONNX Runtime rejects what
it makes of our model (INVALID_GRAPH in a pyramid convolution), it needs an older protobuf than TensorFlow 2.21, and
a generic converter keeps TensorFlow's NHWC layout, wrapping every convolution in transposes. Our models are built
from a dozen layer types; each becomes the ONNX operations of PyTorch's PSPNet, in ONNX's own NCHW layout, and
only the input and output change layout. Adaptive pooling and the resizes take their sizes from the input at run
time: one file serves every image size and batch.

Every format of `keras_pspnet.export` writes the model `keras_pspnet.export.deployable` gives (no auxiliary
head, float32, batch norms folded); a layer type not handled here is refused by name, never skipped.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_pspnet.layers import AdaptiveAveragePooling2D, ClassLogits, ConcatConv2D, ResizeLike

OPSET = 17  # ONNX Runtime >= 1.13, OpenVINO >= 2022.3 and TensorRT >= 8.6 read it
INPUT, OUTPUT = "images", "logits"
METADATA_KEY = "keras_pspnet"  # ONNX metadata_props and OpenVINO rt_info: the metadata JSON of `export.metadata`
# The operations these graphs hold: a file from elsewhere with any other is refused before a runtime reads it.
OPERATIONS = frozenset("""Add And BatchNormalization Cast Clip Concat Conv Div GlobalAveragePool GreaterOrEqual Identity
    Less MatMul MaxPool Mul Pad Range ReduceSum Relu Resize Round Shape Squeeze Sub Transpose Unsqueeze""".split())


class _Graph:
    """The nodes and initializers of the graph being written, with unique names."""

    def __init__(self):
        import onnx

        self.onnx, self.nodes, self.initializers, self.count = onnx, [], [], 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}:{self.count}"

    def constant(self, value, hint: str, dtype=np.float32) -> str:
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attributes) -> str:
        output = self.name(hint)
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output], name=output, **attributes))
        return output


def _conv(graph: _Graph, layer, x: str) -> str:
    """Conv2D / DepthwiseConv2D (linear activation) as an ONNX Conv: kernel (kh, kw, in, out) -> (out, in, kh, kw)."""
    if layer.get_config().get("activation", "linear") != "linear":
        raise ValueError(f"layer {layer.name}: activations inside a convolution are not exported")
    kernel = np.asarray(layer.kernel, np.float32)
    height, width = kernel.shape[:2]
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # output channel c * multiplier + m reads channel c
        channels, multiplier = kernel.shape[2:]
        weights, group = kernel.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, height, width), channels
    else:
        weights, group = kernel.transpose(3, 2, 0, 1), int(getattr(layer, "groups", 1))
    strides, dilations = list(layer.strides), list(layer.dilation_rate)
    padding = {}
    if layer.padding == "same" and max(strides) > 1:  # TensorFlow's "same": the odd pixel at the bottom and right
        padding = {"auto_pad": "SAME_UPPER"}
    elif layer.padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilations, (height, width))]
        padding = {"pads": [t // 2 for t in totals] + [t - t // 2 for t in totals]}
    inputs = [x, graph.constant(weights, f"{layer.name}/kernel")]
    if layer.use_bias:
        inputs.append(graph.constant(layer.bias, f"{layer.name}/bias"))
    return graph.op("Conv", inputs, layer.name, kernel_shape=[height, width], strides=strides, dilations=dilations,
                    group=group, **padding)


def _adaptive_pool_matrix(graph: _Graph, x: str, axis: int, bins: int, hint: str) -> str:
    """The (bins, length) averaging matrix of `keras_pspnet.layers.pooling.adaptive_pool_matrix`, for the run-time
    length of `x`'s `axis`: row i averages [floor(i * L / b), ceil((i + 1) * L / b))."""
    shape = graph.op("Shape", [x], f"{hint}/shape", start=axis, end=axis + 1)  # [L]
    index = np.arange(bins, dtype=np.int64)[:, None]
    count, axis0 = graph.constant(bins, f"{hint}/bins", np.int64), graph.constant([0], f"{hint}/axis0", np.int64)
    start = graph.op("Div", [graph.op("Mul", [graph.constant(index, f"{hint}/index", np.int64), shape], f"{hint}/iL"),
                             count], f"{hint}/start")
    end_sum = graph.op("Add", [graph.op("Mul", [graph.constant(index + 1, f"{hint}/next", np.int64), shape],
                                        f"{hint}/nL"), graph.constant(bins - 1, f"{hint}/round", np.int64)],
                       f"{hint}/nL_up")
    end = graph.op("Div", [end_sum, count], f"{hint}/end")
    zero, one = graph.constant(0, f"{hint}/zero", np.int64), graph.constant(1, f"{hint}/one", np.int64)
    length = graph.op("Squeeze", [shape, axis0], f"{hint}/L")  # a scalar
    position = graph.op("Unsqueeze", [graph.op("Range", [zero, length, one], f"{hint}/range"), axis0],
                        f"{hint}/position")  # [1, L]
    inside = graph.op("And", [graph.op("GreaterOrEqual", [position, start], f"{hint}/ge"),
                              graph.op("Less", [position, end], f"{hint}/lt")], f"{hint}/inside")
    weights = graph.op("Cast", [inside], f"{hint}/weights", to=1)  # float32
    return graph.op("Div", [weights, graph.op("ReduceSum", [weights, graph.constant([1], f"{hint}/axis1", np.int64)],
                                              f"{hint}/count", keepdims=1)], f"{hint}/matrix")


def _adaptive_pool(graph: _Graph, layer: AdaptiveAveragePooling2D, x: str) -> str:
    """PyTorch's AdaptiveAvgPool2d on NCHW `x`: rows (bins, H) @ x @ cols (bins, W)^T, as the Keras layer computes
    it. ONNX has no adaptive pooling, and AveragePool needs its window at export time."""
    if layer.bins == 1:
        return graph.op("GlobalAveragePool", [x], layer.name)
    rows = _adaptive_pool_matrix(graph, x, 2, layer.bins, f"{layer.name}/rows")
    cols = _adaptive_pool_matrix(graph, x, 3, layer.bins, f"{layer.name}/cols")
    pooled = graph.op("MatMul", [rows, x], f"{layer.name}/rows_pooled")  # [N, C, bins, W]
    return graph.op("MatMul", [pooled, graph.op("Transpose", [cols], f"{layer.name}/cols_t", perm=[1, 0])], layer.name)


def _resize(graph: _Graph, layer: ResizeLike, x: str, reference: str) -> str:
    """Bilinear resize of NCHW `x` to `reference`'s height and width (TensorFlow's and PyTorch's half-pixel
    centres, or aligned corners)."""
    sizes = graph.op("Concat", [graph.op("Shape", [x], f"{layer.name}/nc", start=0, end=2),
                                graph.op("Shape", [reference], f"{layer.name}/hw", start=2, end=4)],
                     f"{layer.name}/sizes", axis=0)
    mode = "align_corners" if layer.align_corners else "half_pixel"
    return graph.op("Resize", [x, "", "", sizes], layer.name, mode="linear", coordinate_transformation_mode=mode)


def _relu(graph: _Graph, layer, x: str) -> str:
    config = layer.get_config()
    if config.get("negative_slope") or config.get("threshold"):
        raise ValueError(f"layer {layer.name}: a leaky or thresholded ReLU is not exported")
    if config.get("max_value") is None:
        return graph.op("Relu", [x], layer.name)
    return graph.op("Clip", [x, graph.constant(0.0, f"{layer.name}/min"),
                             graph.constant(config["max_value"], f"{layer.name}/max")], layer.name)


def _layer(graph: _Graph, layer, inputs: list[str]) -> str:
    """The ONNX output of one Keras layer of a PSPNet on NCHW tensors."""
    if isinstance(layer, ConcatConv2D):
        x = inputs[0] if len(inputs) == 1 else graph.op("Concat", inputs, f"{layer.name}/concat", axis=1)
        return _conv(graph, layer, x)
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
        return _conv(graph, layer, inputs[0])
    if isinstance(layer, keras.layers.BatchNormalization):  # one no convolution feeds: not folded
        gamma = layer.gamma if layer.scale else np.ones(layer.moving_mean.shape)
        beta = layer.beta if layer.center else np.zeros(layer.moving_mean.shape)
        values = [graph.constant(v, f"{layer.name}/{n}") for n, v in
                  zip(("gamma", "beta", "mean", "variance"), (gamma, beta, layer.moving_mean, layer.moving_variance))]
        return graph.op("BatchNormalization", [inputs[0], *values], layer.name, epsilon=float(layer.epsilon))
    if isinstance(layer, keras.layers.Normalization):  # Keras: (x - mean) / max(sqrt(variance), epsilon)
        if layer.invert:
            raise ValueError(f"layer {layer.name}: an inverting Normalization is not exported")
        mean = np.asarray(layer.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.maximum(np.sqrt(np.asarray(layer.variance, np.float32)), keras.backend.epsilon()).reshape(1, -1, 1, 1)
        centred = graph.op("Sub", [inputs[0], graph.constant(mean, f"{layer.name}/mean")], f"{layer.name}/centred")
        return graph.op("Div", [centred, graph.constant(std, f"{layer.name}/std")], layer.name)
    if isinstance(layer, keras.layers.ReLU):
        return _relu(graph, layer, inputs[0])
    if isinstance(layer, keras.layers.Add):
        x = inputs[0]
        for other in inputs[1:]:
            x = graph.op("Add", [x, other], layer.name)
        return x
    if isinstance(layer, keras.layers.ZeroPadding2D):
        (top, bottom), (left, right) = layer.padding
        return graph.op("Pad", [inputs[0], graph.constant([0, 0, top, left, 0, 0, bottom, right], f"{layer.name}/pads",
                                                          np.int64)], layer.name)
    if isinstance(layer, keras.layers.MaxPooling2D):
        padding = {"auto_pad": "SAME_UPPER"} if layer.padding == "same" else {}
        return graph.op("MaxPool", inputs[:1], layer.name, kernel_shape=list(layer.pool_size),
                        strides=list(layer.strides), **padding)
    if isinstance(layer, AdaptiveAveragePooling2D):
        return _adaptive_pool(graph, layer, inputs[0])
    if isinstance(layer, ResizeLike):
        return _resize(graph, layer, *inputs)
    if isinstance(layer, (keras.layers.Dropout, keras.layers.SpatialDropout2D, ClassLogits)):
        return inputs[0]  # inference: dropout is the identity; the logits are float32 already
    raise ValueError(f"layer {layer.name} ({type(layer).__name__}) has no ONNX export")


def onnx_model(model: keras.Model, *, metadata: dict[str, str], input_size: tuple[int, int] | None = None,
               doc: str = "", producer_version: str = ""):
    """The ONNX ModelProto of `model`, a float32 single-output PSPNet as `keras_pspnet.export.deployable` gives.

    Input "images": float32 [batch, height, width, 3], RGB pixels 0-255 (normalised inside), as our SavedModel's
    "logits" signature; height and width are dynamic unless `input_size`. Output "logits": float32
    [batch, classes, height, width], the NCHW layout of ONNX and PyTorch (an argmax over axis 1 is the class map).
    `metadata` becomes the model's metadata_props (string keys and values).
    """
    import onnx
    from onnx import TensorProto, helper

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"{model.name}: {len(model.inputs)} inputs and {len(model.outputs)} outputs; ONNX export "
                         "takes one of each (keras_pspnet.export.deployable drops an auxiliary head)")
    graph, names = _Graph(), {}
    image = model.inputs[0]
    x = INPUT
    if image.dtype == "uint8":  # the Keras model's own uint8 input: pixels rounded and saturated (`model_input`)
        bounds = [graph.constant(0.0, "min"), graph.constant(255.0, "max")]
        x = graph.op("Clip", [graph.op("Round", [x], "round"), *bounds], "pixels")
    names[id(image)] = graph.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    pending = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    for layer in pending:  # what the writer assumes of every layer
        if len(layer._inbound_nodes) != 1:
            raise ValueError(f"layer {layer.name} is called {len(layer._inbound_nodes)} times; ONNX export takes "
                             "layers called once")
        if getattr(layer, "data_format", "channels_last") != "channels_last" or getattr(layer, "axis", -1) not in (
                -1, 3, [-1], [3], (-1,), (3,)):
            raise ValueError(f"layer {layer.name}: ONNX export takes channels-last layers")
    while pending:  # in dependency order: a layer once every input is written
        waiting = []
        for layer in pending:
            node = layer._inbound_nodes[0]
            if all(id(t) in names for t in node.input_tensors):
                names[id(node.output_tensors[0])] = _layer(graph, layer, [names[id(t)] for t in node.input_tensors])
            else:
                waiting.append(layer)
        if len(waiting) == len(pending):
            unreached = [layer.name for layer in waiting[:3]]
            raise ValueError(f"{model.name}: layers {unreached} are not reached from the input")
        pending = waiting
    logits = names[id(model.outputs[0])]
    graph.nodes.append(helper.make_node("Identity", [logits], [OUTPUT], name=OUTPUT))
    height, width = input_size or ("height", "width")
    classes = int(model.outputs[0].shape[-1])
    onnx_graph = helper.make_graph(
        graph.nodes, model.name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", height, width, 3])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", classes, height, width])],
        graph.initializers)
    proto = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="keras-pspnet",
                              producer_version=producer_version, doc_string=doc)
    proto.ir_version = 8  # what opset 17 needs; runtimes a year old read it
    helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto
