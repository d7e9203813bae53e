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
