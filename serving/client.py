"""Client for a PSPNet served by TF Serving (REST on 8501, gRPC on 8500).

    python serving/client.py photo.jpg --model-name pspnet                       # REST, encoded bytes
    python serving/client.py photo.jpg --model-name pspnet --pixels              # REST, uint8 pixel arrays
    python serving/client.py photo.jpg --model-name pspnet --protocol grpc       # gRPC (tensorflow-serving-api)

Writes <stem>_label.png (class indices) next to --out. REST needs only numpy and Pillow; gRPC needs
`pip install --no-deps tensorflow-serving-api` beside TensorFlow. The request bodies are built by
`rest_body` and `grpc_request`, which tests feed to the exported signatures.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import urllib.request

import numpy as np


def read_pixels(path: str) -> np.ndarray:
    """Upright RGB uint8 [height, width, 3] pixels of an image file, as the server's `encoded` signature decodes
    it: a JPEG's EXIF orientation applied (the serving_default signature takes upright pixels, as viewers show the
    photo), grey repeated, alpha dropped, 16-bit values cut to their high byte."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        if image.format == "JPEG":  # as the server: the EXIF orientation of JPEGs (what cameras write)
            image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: Pillow's convert("RGB") would clip it
            high = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
            return np.repeat(high[..., None], 3, axis=-1)
        return np.asarray(image.convert("RGB"))


def rest_body(*, pixels=None, encoded=None, columnar: bool = False) -> dict:
    """The JSON body of a REST :predict call.

    pixels: uint8 arrays [height, width, 3] of one size -> signature "serving_default", input "images".
    encoded: JPEG/PNG bytes -> signature "encoded", input "image_bytes", each value {"b64": ...}.
    columnar: the "inputs" form instead of the row ("instances") form.
    """
    if (pixels is None) == (encoded is None):
        raise ValueError("give either pixels or encoded images")
    if pixels is not None:
        signature, values = "serving_default", [np.asarray(p, np.uint8).tolist() for p in pixels]
    else:
        signature, values = "encoded", [{"b64": base64.b64encode(e).decode("ascii")} for e in encoded]
    return {"signature_name": signature, ("inputs" if columnar else "instances"): values}


def rest_predict(body: dict, server: str = "localhost", port: int = 8501, model_name: str = "pspnet",
                 timeout: float = 60.0) -> list[np.ndarray]:
    """POSTs `body` to /v1/models/<model_name>:predict and returns the class maps."""
    request = urllib.request.Request(f"http://{server}:{port}/v1/models/{model_name}:predict",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.load(response)
    if "predictions" in answer:  # row form: one dict (several outputs) or one value per image
        return [np.asarray(p["class_map"] if isinstance(p, dict) else p) for p in answer["predictions"]]
    outputs = answer["outputs"]
    return list(np.asarray(outputs["class_map"] if isinstance(outputs, dict) else outputs))


def grpc_request(*, pixels=None, encoded=None, model_name: str = "pspnet"):
    """A tensorflow_serving PredictRequest for the same signatures as `rest_body`."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    if pixels is not None:
        request.model_spec.signature_name = "serving_default"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.stack(pixels).astype(np.uint8)))
    else:
        request.model_spec.signature_name = "encoded"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(list(encoded), dtype=tf.string))
    return request


def grpc_predict(request, server: str = "localhost", port: int = 8500, timeout: float = 60.0) -> list[np.ndarray]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(f"{server}:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout)
    return list(tf.make_ndarray(response.outputs["class_map"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+")
    parser.add_argument("--model-name", default="pspnet")
    parser.add_argument("--server", default="localhost")
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--rest-port", type=int, default=8501)
    parser.add_argument("--grpc-port", type=int, default=8500)
    parser.add_argument("--pixels", action="store_true", help="send uint8 pixel arrays instead of encoded bytes")
    parser.add_argument("--out", default=".", help="folder for the <stem>_label.png files")
    args = parser.parse_args()
    from PIL import Image

    for path in args.images:  # one request per image: images in one request must share a size
        if args.pixels:
            request = {"pixels": [read_pixels(path)]}
        else:
            with open(path, "rb") as f:
                request = {"encoded": [f.read()]}
        if args.protocol == "rest":
            class_map = rest_predict(rest_body(**request), args.server, args.rest_port, args.model_name)[0]
        else:
            grpc_body = grpc_request(**request, model_name=args.model_name)
            class_map = grpc_predict(grpc_body, args.server, args.grpc_port)[0]
        out = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0] + "_label.png")
        Image.fromarray(np.asarray(class_map, np.uint8)).save(out)
        print(f"{path} -> {out} (classes {sorted(np.unique(class_map).tolist())})")


if __name__ == "__main__":
    main()
