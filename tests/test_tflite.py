import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from keras_pspnet import build_pspnet
from tests.conftest import randomize_batchnorm, relative_error


def test_pspnet_converts_to_builtin_tflite_ops_with_dynamic_size(rng):
    model = build_pspnet(4, "mobilenet_v2", alpha=0.35, head_channels=8)
    randomize_batchnorm(model)
    # Not from_concrete_functions(..., trackable_obj=model): with TF 2.21 that freezes conv biases as NaN.
    converter = tf.lite.TFLiteConverter.from_keras_model(model)  # input (None, None, None, 3)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # fails on any Flex op
    interpreter = Interpreter(model_content=converter.convert())
    for size in [(64, 64), (97, 129)]:  # 97x129: pyramid bins overlap
        pixels = rng.uniform(0, 255, (1, *size, 3)).astype("float32")
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [1, *size, 3])
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
        interpreter.invoke()
        logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        assert relative_error(logits, model.predict(pixels, verbose=0)) < 1e-4


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs")  # int8 in: its range comes from calibration
@pytest.mark.parametrize("align_corners", [False, True])
def test_requantizing_before_the_upsampling_gives_the_same_values_with_one_full_resolution_map(rng, align_corners):
    """`quantize_before_upsampling` on an int8 model ending in RESIZE_BILINEAR -> QUANTIZE (int8 -> uint8), with 8
    channels upsampled 8x (the case TFLite's uint8 resize has its own kernel for)."""
    import numpy as np
    from ai_edge_litert.interpreter import OpResolverType

    from keras_pspnet.tflite import model_tree, packed, quantize_before_upsampling

    size, channels = 48, 8

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, channels], tf.float32)])
    def scores(images):
        low = tf.nn.avg_pool2d(images, 8, 8, "VALID") * tf.linspace(-2.0, 2.0, channels) + 3.0
        return tf.raw_ops.ResizeBilinear(images=tf.nn.log_softmax(low), size=[size, size],
                                         align_corners=align_corners, half_pixel_centers=not align_corners)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([scores.get_concrete_function()], scores)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.uniform(0, 5, (1, size, size, channels)).astype("float32")]
                                                for _ in range(16))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type, converter.inference_output_type = tf.int8, tf.uint8
    original = converter.convert()
    tree = model_tree(original)
    quantize_before_upsampling(tree)
    rewritten = packed(tree)
    assert rewritten != original
    for resolver, tolerance in [(OpResolverType.AUTO, 0), (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, 1)]:
        interpreters = [Interpreter(model_content=content, experimental_op_resolver_type=resolver)
                        for content in (original, rewritten)]
        full = []
        for interpreter in interpreters:
            interpreter.allocate_tensors()
            full.append(sum(list(t["shape"]) == [1, size, size, channels] for t in interpreter.get_tensor_details()))
        assert full == [3, 2]  # input, resize, quantize; then input, output
        for _ in range(5):  # XNNPACK (LiteRT's default): the same bytes; reference kernels: ties round apart
            pixels = rng.integers(-128, 128, (1, size, size, channels), dtype=np.int8)
            results = []
            for interpreter in interpreters:
                interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
                interpreter.invoke()
                results.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).astype(int))
            assert results[0].std() > 0
            assert np.abs(results[1] - results[0]).max() <= tolerance
    with pytest.raises(ValueError, match="does not end in RESIZE_BILINEAR .int8. -> QUANTIZE"):
        quantize_before_upsampling(model_tree(rewritten))  # (it ends in QUANTIZE -> RESIZE_BILINEAR now)
