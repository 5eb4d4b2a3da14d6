"""The Python peer of `cargo xtask loadtest`: a FastAPI/uvicorn server around ONNX
Runtime, answering `POST /v1/detect` as `yolo-cli serve` does (image bytes in, JSON
detections out), with the reference's preprocessing (PIL, letterbox, bicubic) and its
decoding and per-class NMS written in numpy.

    YOLO_ONNX=model.onnx YOLO_CLASSES=20 YOLO_SIZE=416 ORT_THREADS=2 \
        uvicorn --app-dir tools/serve_py server:app --host 127.0.0.1 --port 9000

One uvicorn worker; the endpoint is a plain `def`, so FastAPI runs it in its thread
pool and ONNX Runtime (which releases the GIL) serves concurrent requests.
"""

import io
import os
import time

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

ANCHORS = np.array([10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119, 116, 90, 156, 198, 373, 326],
                   dtype=np.float32).reshape(-1, 2)
ANCHORS_MASK = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
NUM_CLASSES = int(os.environ.get("YOLO_CLASSES", "20"))
SIZE = int(os.environ.get("YOLO_SIZE", "416"))
CONF = float(os.environ.get("YOLO_CONF", "0.5"))
NMS_IOU = float(os.environ.get("YOLO_NMS_IOU", "0.3"))

opts = ort.SessionOptions()
opts.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "2"))
opts.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["YOLO_ONNX"], opts, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
app = FastAPI()


def letterbox(image):
    iw, ih = image.size
    scale = min(SIZE / iw, SIZE / ih)
    nw, nh = int(iw * scale), int(ih * scale)
    canvas = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    canvas.paste(image.resize((nw, nh), Image.BICUBIC), ((SIZE - nw) // 2, (SIZE - nh) // 2))
    x = np.asarray(canvas, dtype=np.float32) / 255.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def decode(heads):
    """Three heads (1, 3*(5+C), h, w) -> (N, 5+C): cx, cy, w, h in [0, 1], obj, classes."""
    out = []
    for i, head in enumerate(heads):
        _, _, h, w = head.shape
        p = head.reshape(3, 5 + NUM_CLASSES, h, w).transpose(0, 2, 3, 1)
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        anchors = ANCHORS[ANCHORS_MASK[i]] / np.array([SIZE / w, SIZE / h], dtype=np.float32)
        box = np.empty(p.shape[:3] + (4,), dtype=np.float32)
        box[..., 0] = (sigmoid(p[..., 0]) + gx) / w
        box[..., 1] = (sigmoid(p[..., 1]) + gy) / h
        box[..., 2] = np.exp(p[..., 2]) * anchors[:, 0, None, None] / w
        box[..., 3] = np.exp(p[..., 3]) * anchors[:, 1, None, None] / h
        out.append(np.concatenate([box, sigmoid(p[..., 4:])], -1).reshape(-1, 5 + NUM_CLASSES))
    return np.concatenate(out, 0)


def nms(boxes, scores, iou):
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
        ious = inter / (area(boxes[i]) + area(boxes[order[1:]]) - inter)
        order = order[1:][ious <= iou]
    return keep


def postprocess(pred, width, height):
    cls_conf = pred[:, 5:].max(1)
    cls_id = pred[:, 5:].argmax(1)
    score = pred[:, 4] * cls_conf
    mask = score >= CONF
    pred, score, cls_id = pred[mask], score[mask], cls_id[mask]
    # undo the letterbox: network [0, 1] -> image pixels
    scale = min(SIZE / width, SIZE / height)
    nw, nh = round(width * scale), round(height * scale)
    ox, oy = (SIZE - nw) / 2 / SIZE, (SIZE - nh) / 2 / SIZE
    cx = (pred[:, 0] - ox) * SIZE / nw
    cy = (pred[:, 1] - oy) * SIZE / nh
    bw, bh = pred[:, 2] * SIZE / nw, pred[:, 3] * SIZE / nh
    boxes = np.stack([(cx - bw / 2) * width, (cy - bh / 2) * height,
                      (cx + bw / 2) * width, (cy + bh / 2) * height], 1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    dets = []
    for c in np.unique(cls_id):
        idx = np.nonzero(cls_id == c)[0]
        for k in nms(boxes[idx], score[idx], NMS_IOU):
            j = idx[k]
            x1, y1, x2, y2 = (float(v) for v in boxes[j])
            dets.append({"x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": float(score[j]),
                         "class_id": int(c), "class_name": str(int(c))})
    return dets


@app.get("/healthz")
def healthz():
    return {"status": "ok"}


@app.post("/v1/detect")
async def detect(request: Request):
    body = await request.body()
    # decoding and inference in the thread pool, off the event loop
    return await run_in_threadpool(infer, body, time.perf_counter())


def infer(body, start):
    try:
        image = Image.open(io.BytesIO(body)).convert("RGB")
    except Exception as e:  # noqa: BLE001 - any decoder error is the client's
        raise HTTPException(status_code=400, detail=f"cannot decode the image: {e}")
    width, height = image.size
    heads = session.run(None, {input_name: letterbox(image)})
    dets = postprocess(decode([h[0:1] for h in heads]), width, height)
    return {"images": [{"width": width, "height": height, "detections": dets}],
            "timings_ms": {"total": (time.perf_counter() - start) * 1e3}}
