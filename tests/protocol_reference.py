"""The two references' test code, transcribed loop for loop onto a `net(images NHWC 0-255) -> logits` callable.

semseg_predict: hszhao/semseg tool/test.py (test, scale_process, net_process), cv2.resize -> PyTorch bilinear.
mmseg_predict: mmsegmentation 0.x MultiScaleFlipAug + Resize(keep_ratio) + EncoderDecoder.inference /
slide_inference / aug_test (what produced the published numbers), mmcv.imrescale -> PyTorch bilinear.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _nchw(array):
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).permute(0, 3, 1, 2)


def _resize(image, height, width, align_corners=False):
    """cv2.resize(INTER_LINEAR) and mmseg's resize on an [H, W, C] array."""
    out = F.interpolate(_nchw(image[None]), (height, width), mode="bilinear", align_corners=align_corners)
    return out.permute(0, 2, 3, 1)[0].numpy()


def net_process(net, image, flip=True):
    output = torch.from_numpy(np.asarray(net(image[None].astype(np.float32)), np.float64)).permute(0, 3, 1, 2)
    if flip:
        mirrored = torch.from_numpy(np.asarray(net(image[None, :, ::-1].astype(np.float32)), np.float64))
        output = torch.cat([output, mirrored.permute(0, 3, 1, 2)], 0)
    output = F.softmax(output, dim=1)
    output = (output[0] + output[1].flip(2)) / 2 if flip else output[0]
    return output.numpy().transpose(1, 2, 0)


def scale_process(net, image, classes, crop_h, crop_w, h, w, mean, stride_rate=2 / 3, flip=True):
    ori_h, ori_w, _ = image.shape
    pad_h = max(crop_h - ori_h, 0)
    pad_w = max(crop_w - ori_w, 0)
    pad_h_half = int(pad_h / 2)
    pad_w_half = int(pad_w / 2)
    if pad_h > 0 or pad_w > 0:  # cv2.copyMakeBorder(..., BORDER_CONSTANT, value=mean)
        padded = np.empty((ori_h + pad_h, ori_w + pad_w, 3))
        padded[...] = mean
        padded[pad_h_half : pad_h_half + ori_h, pad_w_half : pad_w_half + ori_w] = image
        image = padded
    new_h, new_w, _ = image.shape
    stride_h = int(np.ceil(crop_h * stride_rate))
    stride_w = int(np.ceil(crop_w * stride_rate))
    grid_h = int(np.ceil(float(new_h - crop_h) / stride_h) + 1)
    grid_w = int(np.ceil(float(new_w - crop_w) / stride_w) + 1)
    prediction_crop = np.zeros((new_h, new_w, classes), dtype=float)
    count_crop = np.zeros((new_h, new_w), dtype=float)
    for index_h in range(0, grid_h):
        for index_w in range(0, grid_w):
            s_h = index_h * stride_h
            e_h = min(s_h + crop_h, new_h)
            s_h = e_h - crop_h
            s_w = index_w * stride_w
            e_w = min(s_w + crop_w, new_w)
            s_w = e_w - crop_w
            image_crop = image[s_h:e_h, s_w:e_w].copy()
            count_crop[s_h:e_h, s_w:e_w] += 1
            prediction_crop[s_h:e_h, s_w:e_w, :] += net_process(net, image_crop, flip)
    prediction_crop /= np.expand_dims(count_crop, 2)
    prediction_crop = prediction_crop[pad_h_half : pad_h_half + ori_h, pad_w_half : pad_w_half + ori_w]
    return _resize(prediction_crop, h, w)


def semseg_predict(net, image, classes, base_size, crop, scales, mean):
    h, w, _ = image.shape
    prediction = np.zeros((h, w, classes), dtype=float)
    for scale in scales:
        long_size = round(scale * base_size)
        new_h = long_size
        new_w = long_size
        if h > w:
            new_w = round(long_size / float(h) * w)
        else:
            new_h = round(long_size / float(w) * h)
        image_scale = _resize(image, new_h, new_w)
        prediction += scale_process(net, image_scale, classes, crop[0], crop[1], h, w, mean)
    return prediction / len(scales)


def rescale_size(old_size, scale):
    """mmcv.rescale_size with a (long, short) scale tuple: (w, h) in, (w, h) out."""
    w, h = old_size
    max_long_edge, max_short_edge = max(scale), min(scale)
    scale_factor = min(max_long_edge / max(h, w), max_short_edge / min(h, w))
    return int(w * float(scale_factor) + 0.5), int(h * float(scale_factor) + 0.5)


def slide_inference(net, inputs, crop, stride, classes):
    h_stride, w_stride = stride
    h_crop, w_crop = crop
    batch_size, _, h_img, w_img = inputs.size()
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = inputs.new_zeros((batch_size, classes, h_img, w_img))
    count_mat = inputs.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_img = inputs[:, :, y1:y2, x1:x2]
            crop_seg_logit = _nchw(net(crop_img.permute(0, 2, 3, 1).numpy().astype(np.float32)))
            preds += F.pad(crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


def mmseg_predict(net, image, classes, img_scale, img_ratios=(1.0,), flip=False, crop=None, stride=None,
                  align_corners=False):
    h, w, _ = image.shape
    outputs = []
    for ratio in img_ratios:
        target = (int(img_scale[0] * ratio), int(img_scale[1] * ratio))
        new_w, new_h = rescale_size((w, h), target)
        resized = np.clip(np.round(_resize(image, new_h, new_w)), 0, 255)  # cv2 on the uint8 image
        for flipped in (False, True) if flip else (False,):
            img = _nchw((resized[:, ::-1] if flipped else resized)[None])
            if crop:
                seg_logit = slide_inference(net, img, crop, stride, classes)
            else:
                seg_logit = _nchw(net(img.permute(0, 2, 3, 1).numpy().astype(np.float32)))
            seg_logit = F.interpolate(seg_logit, (h, w), mode="bilinear", align_corners=align_corners)
            output = F.softmax(seg_logit, dim=1)
            outputs.append(output.flip(dims=(3,)) if flipped else output)
    return (sum(outputs) / len(outputs))[0].permute(1, 2, 0).numpy()
