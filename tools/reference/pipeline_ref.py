"""Reference detection pipeline, behaviour-identical to bubbliiiing/yolo3-pytorch
(commit 8fbb81d3377b7a404c8634ad26ff3f1193da2cad):

* ``cvtColor``, ``resize_image``, ``preprocess_input``: utils/utils.py
* ``preprocess``: the preprocessing lines of yolo.py ``YOLO.detect_image``
* ``DecodeBox.decode_box``, ``DecodeBox.yolo_correct_boxes``,
  ``DecodeBox.non_max_suppression``: utils/utils_bbox.py

Rewritten with the same tensor operations in the same order (hence the same
float32/float64 rounding); the legacy ``torch.FloatTensor(...)`` constructors
are replaced by ``torch.tensor(..., dtype=torch.float32)`` / ``torch.empty``,
which give identical values. NMS is ``torchvision.ops.nms`` as in the
reference.
"""

import numpy as np
import torch
from PIL import Image
from torchvision.ops import nms

ANCHORS = np.array([10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119, 116, 90, 156, 198, 373, 326],
                   dtype=np.float64).reshape(-1, 2)  # get_anchors(): float, shape (9, 2), (w, h)
ANCHORS_MASK = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]


# ----------------------------------------------------------------- utils.py

def cvtColor(image):
    """Convert any non-3-channel image to RGB (e.g. L, RGBA, P)."""
    if len(np.shape(image)) == 3 and np.shape(image)[2] == 3:
        return image
    else:
        image = image.convert('RGB')
        return image


def resize_image(image, size, letterbox_image):
    """size = (w, h). Letterbox: BICUBIC resize keeping aspect, paste centred
    on a (128,128,128) canvas. Otherwise: plain BICUBIC resize to (w, h)."""
    iw, ih = image.size
    w, h = size
    if letterbox_image:
        scale = min(w / iw, h / ih)
        nw = int(iw * scale)
        nh = int(ih * scale)

        image = image.resize((nw, nh), Image.BICUBIC)
        new_image = Image.new('RGB', size, (128, 128, 128))
        new_image.paste(image, ((w - nw) // 2, (h - nh) // 2))
    else:
        new_image = image.resize((w, h), Image.BICUBIC)
    return new_image


def preprocess_input(image):
    image /= 255.0
    return image


def preprocess(image, input_shape, letterbox_image):
    """yolo.py detect_image up to the network input.

    input_shape = [h, w]. Returns (image_shape = np.array([h, w]) of the
    original image, the resized PIL image, the (1, 3, h, w) float32 array).
    """
    image_shape = np.array(np.shape(image)[0:2])
    image = cvtColor(image)
    image_data = resize_image(image, (input_shape[1], input_shape[0]), letterbox_image)
    resized = image_data
    image_data = np.expand_dims(np.transpose(preprocess_input(np.array(image_data, dtype='float32')), (2, 0, 1)), 0)
    return image_shape, resized, image_data


# ----------------------------------------------------------- utils_bbox.py

class DecodeBox():
    def __init__(self, anchors, num_classes, input_shape, anchors_mask=ANCHORS_MASK):
        self.anchors = anchors
        self.num_classes = num_classes
        self.bbox_attrs = 5 + num_classes
        self.input_shape = input_shape  # (h, w)
        self.anchors_mask = anchors_mask

    def decode_box(self, inputs):
        outputs = []
        for i, input in enumerate(inputs):
            batch_size = input.size(0)
            input_height = input.size(2)
            input_width = input.size(3)

            stride_h = self.input_shape[0] / input_height
            stride_w = self.input_shape[1] / input_width
            # anchors relative to the feature map (python floats)
            scaled_anchors = [(anchor_width / stride_w, anchor_height / stride_h)
                              for anchor_width, anchor_height in self.anchors[self.anchors_mask[i]]]

            # (B, A*(5+nc), H, W) -> (B, A, H, W, 5+nc)
            prediction = input.view(batch_size, len(self.anchors_mask[i]),
                                    self.bbox_attrs, input_height, input_width).permute(0, 1, 3, 4, 2).contiguous()

            x = torch.sigmoid(prediction[..., 0])
            y = torch.sigmoid(prediction[..., 1])
            w = prediction[..., 2]
            h = prediction[..., 3]
            conf = torch.sigmoid(prediction[..., 4])
            pred_cls = torch.sigmoid(prediction[..., 5:])

            grid_x = torch.linspace(0, input_width - 1, input_width).repeat(input_height, 1).repeat(
                batch_size * len(self.anchors_mask[i]), 1, 1).view(x.shape).type(torch.float32)
            grid_y = torch.linspace(0, input_height - 1, input_height).repeat(input_width, 1).t().repeat(
                batch_size * len(self.anchors_mask[i]), 1, 1).view(y.shape).type(torch.float32)

            sa = torch.tensor(scaled_anchors, dtype=torch.float32)  # == FloatTensor(scaled_anchors)
            anchor_w = sa.index_select(1, torch.tensor([0]))
            anchor_h = sa.index_select(1, torch.tensor([1]))
            anchor_w = anchor_w.repeat(batch_size, 1).repeat(1, 1, input_height * input_width).view(w.shape)
            anchor_h = anchor_h.repeat(batch_size, 1).repeat(1, 1, input_height * input_width).view(h.shape)

            pred_boxes = torch.empty(prediction[..., :4].shape, dtype=torch.float32)
            pred_boxes[..., 0] = x.data + grid_x
            pred_boxes[..., 1] = y.data + grid_y
            pred_boxes[..., 2] = torch.exp(w.data) * anchor_w
            pred_boxes[..., 3] = torch.exp(h.data) * anchor_h

            # normalise to [0, 1] of the network input
            _scale = torch.tensor([input_width, input_height, input_width, input_height], dtype=torch.float32)
            output = torch.cat((pred_boxes.view(batch_size, -1, 4) / _scale,
                                conf.view(batch_size, -1, 1), pred_cls.view(batch_size, -1, self.num_classes)), -1)
            outputs.append(output.data)
        return outputs

    def yolo_correct_boxes(self, box_xy, box_wh, input_shape, image_shape, letterbox_image):
        box_yx = box_xy[..., ::-1]
        box_hw = box_wh[..., ::-1]
        input_shape = np.array(input_shape)
        image_shape = np.array(image_shape)

        if letterbox_image:
            new_shape = np.round(image_shape * np.min(input_shape / image_shape))
            offset = (input_shape - new_shape) / 2. / input_shape
            scale = input_shape / new_shape

            box_yx = (box_yx - offset) * scale
            box_hw *= scale

        box_mins = box_yx - (box_hw / 2.)
        box_maxes = box_yx + (box_hw / 2.)
        boxes = np.concatenate([box_mins[..., 0:1], box_mins[..., 1:2], box_maxes[..., 0:1], box_maxes[..., 1:2]], axis=-1)
        boxes *= np.concatenate([image_shape, image_shape], axis=-1)
        return boxes

    def non_max_suppression(self, prediction, num_classes, input_shape, image_shape, letterbox_image,
                            conf_thres=0.5, nms_thres=0.4, keep_normalized=None):
        """As the reference. Note: modifies `prediction` in place (corners).

        If keep_normalized is a list, the per-image (N, 7) detections before
        yolo_correct_boxes (x1, y1, x2, y2 normalised) are appended to it
        (None for images without detections). Not part of the reference.
        """
        box_corner = prediction.new(prediction.shape)
        box_corner[:, :, 0] = prediction[:, :, 0] - prediction[:, :, 2] / 2
        box_corner[:, :, 1] = prediction[:, :, 1] - prediction[:, :, 3] / 2
        box_corner[:, :, 2] = prediction[:, :, 0] + prediction[:, :, 2] / 2
        box_corner[:, :, 3] = prediction[:, :, 1] + prediction[:, :, 3] / 2
        prediction[:, :, :4] = box_corner[:, :, :4]

        output = [None for _ in range(len(prediction))]
        for i, image_pred in enumerate(prediction):
            # max over classes; ties -> first (lowest) class index
            class_conf, class_pred = torch.max(image_pred[:, 5:5 + num_classes], 1, keepdim=True)

            conf_mask = (image_pred[:, 4] * class_conf[:, 0] >= conf_thres).squeeze()

            image_pred = image_pred[conf_mask]
            class_conf = class_conf[conf_mask]
            class_pred = class_pred[conf_mask]
            if not image_pred.size(0):
                if keep_normalized is not None:
                    keep_normalized.append(None)
                continue
            # x1, y1, x2, y2, obj_conf, class_conf, class_pred
            detections = torch.cat((image_pred[:, :5], class_conf.float(), class_pred.float()), 1)

            unique_labels = detections[:, -1].cpu().unique()  # sorted ascending

            for c in unique_labels:
                detections_class = detections[detections[:, -1] == c]
                keep = nms(
                    detections_class[:, :4],
                    detections_class[:, 4] * detections_class[:, 5],
                    nms_thres
                )
                max_detections = detections_class[keep]
                output[i] = max_detections if output[i] is None else torch.cat((output[i], max_detections))

            if output[i] is not None:
                output[i] = output[i].cpu().numpy()
                if keep_normalized is not None:
                    keep_normalized.append(output[i].copy())
                box_xy, box_wh = (output[i][:, 0:2] + output[i][:, 2:4]) / 2, output[i][:, 2:4] - output[i][:, 0:2]
                output[i][:, :4] = self.yolo_correct_boxes(box_xy, box_wh, input_shape, image_shape, letterbox_image)
        return output
