"""Write golden fixtures for the yolo-rs detection pipeline (decode, NMS,
box correction, image preprocessing).

Usage (from the repository root):

    .venv-golden/bin/python tools/reference/make_golden_pipeline.py --out tests/fixtures

Writes tests/fixtures/pipeline/*. Formats: tools/reference/README.md.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detweights import hash_signed  # noqa: E402
from fixture_io import save_safetensors as save_file  # noqa: E402
from pipeline_ref import ANCHORS, ANCHORS_MASK, DecodeBox, preprocess  # noqa: E402

NUM_CLASSES = 20
ATTRS = 5 + NUM_CLASSES
CONF = 0.5
NMS_IOU = 0.3
IMAGE_SIZES_WH = [(500, 375), (375, 500), (1, 1), (2000, 50)]


# ------------------------------------------------------------ raw heads

def base_heads(case, input_shape, batch, obj_base=-6.0):
    """Background logits from the hash with names "{case}/head{l}"."""
    ih, iw = input_shape
    heads = []
    for l, s in enumerate([32, 16, 8]):
        gh, gw = ih // s, iw // s
        x = hash_signed(f"{case}/head{l}", (batch, 3 * ATTRS, gh, gw))
        v = np.empty_like(x)
        a = np.arange(3 * ATTRS) % ATTRS
        for c in range(3 * ATTRS):
            if a[c] in (0, 1):
                v[:, c] = 2.0 * x[:, c]
            elif a[c] in (2, 3):
                v[:, c] = 0.5 * x[:, c]
            elif a[c] == 4:
                v[:, c] = obj_base + x[:, c]
            else:
                v[:, c] = 2.0 * x[:, c]
        heads.append(v)
    return heads


def plant(heads, b, l, anchor, gy, gx, t=(0.0, 0.0, 0.0, 0.0), obj=4.0, cls=None):
    """Overwrite one anchor/cell: box logits t=(tx,ty,tw,th), objectness
    logit obj, every class logit -4 except those given in cls {class: logit}."""
    base = anchor * ATTRS
    h = heads[l]
    for j in range(4):
        h[b, base + j, gy, gx] = t[j]
    h[b, base + 4, gy, gx] = obj
    h[b, base + 5:base + 5 + NUM_CLASSES, gy, gx] = -4.0
    for c, v in (cls or {}).items():
        h[b, base + 5 + c, gy, gx] = v


def case_main():
    """input 128x128, batch 2; image 1 has nothing above threshold."""
    input_shape = (128, 128)
    heads = base_heads("main", input_shape, 2)
    P = []  # (description, b, l, anchor, gy, gx, t, obj, cls)
    P.append(("A: big box class 3", 0, 0, 0, 1, 1, (0, 0, 0, 0), 3.0, {3: 3.0}))
    P.append(("B: overlaps A (IoU>0.3), class 3, lower score -> suppressed", 0, 1, 2, 3, 3, (0, 0, 0, 0), 2.5, {3: 2.5}))
    P.append(("C: overlaps A, class tie 5==9 -> class 5, kept", 0, 2, 2, 7, 7, (0, 0, 0, 0), 2.0, {5: 2.0, 9: 2.0}))
    P.append(("D1: equal score to D2, disjoint, class 7", 0, 2, 0, 1, 14, (0, 0, 0, 0), 2.0, {7: 2.0}))
    P.append(("D2: equal score to D1, disjoint, class 7", 0, 2, 0, 14, 1, (0, 0, 0, 0), 2.0, {7: 2.0}))
    P.append(("E1: equal score to E2, overlapping, class 11 -> kept (lower index)", 0, 2, 0, 10, 10, (2.0, 0, 0, 0), 2.2, {11: 2.2}))
    P.append(("E2: equal score to E1, overlapping, class 11 -> suppressed", 0, 2, 0, 10, 11, (-2.0, 0, 0, 0), 2.2, {11: 2.2}))
    P.append(("F: huge box beyond every border, class 0", 0, 0, 2, 0, 0, (-3.0, -3.0, 0, 0), 1.5, {0: 1.5}))
    P.append(("G: box beyond right/bottom border, class 19", 0, 1, 0, 7, 7, (3.0, 3.0, 0.5, 0), 2.0, {19: 2.0}))
    P.append(("H1: just above threshold (0.546), class 12", 0, 2, 1, 3, 12, (0, 0, 0, 0), 0.2, {12: 5.0}))
    P.append(("H2: just below threshold (0.497), class 12", 0, 2, 1, 12, 3, (0, 0, 0, 0), 0.0, {12: 5.0}))
    P.append(("I: top-left cell of the finest grid, tiny box, class 2", 0, 2, 0, 0, 0, (-4.0, -4.0, -1.0, -1.0), 3.0, {2: 3.0}))
    for p in P:
        plant(heads, p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8])
    return "main", input_shape, heads, P


def case_single_class():
    """input (h=96, w=160), batch 1: every anchor of every cell has high
    objectness and class 4 -> heavy NMS on a non-square grid. Box offsets are
    fixed (tx=ty=0, tw=0.15, th=-0.05: each box is its anchor scaled by (e^0.15, e^-0.05) centred on its cell), so
    the IoUs are fixed by geometry; scores vary with the hash."""
    input_shape = (96, 160)
    heads = base_heads("single_class", input_shape, 1)
    P = []
    for l in range(3):
        h = heads[l]
        x = hash_signed(f"single_class/extra{l}", h.shape)
        for a in range(3):
            base = a * ATTRS
            h[:, base:base + 2] = 0.0
            h[:, base + 2] = 0.15
            h[:, base + 3] = -0.05
            h[:, base + 4] = 2.0 + 0.5 * x[:, base + 4]          # objectness 0.82..0.92
            h[:, base + 5 + 4] = 3.0 + 0.5 * x[:, base + 5 + 4]  # class 4 logit > any background class logit (< 2)
    P.append(("every anchor/cell: t=(0,0,0.15,-0.05), obj logit 2+0.5x, class-4 logit 3+0.5x, "
              "x = hash_signed('single_class/extra{l}', head shape) at the same index",))
    return "single_class", input_shape, heads, P


def case_empty():
    """input 128x128, batch 1: background only, nothing above threshold."""
    input_shape = (128, 128)
    heads = base_heads("empty", input_shape, 1)
    return "empty", input_shape, heads, []


def det_rows(arr):
    """(N, 7) float32 reference rows -> JSON objects (float32 values, exact in JSON as f64)."""
    if arr is None:
        return []
    rows = []
    for r in arr:
        r = np.asarray(r, dtype=np.float32)
        score = np.float32(r[4] * r[5])
        rows.append([float(r[0]), float(r[1]), float(r[2]), float(r[3]),
                     float(r[4]), float(r[5]), int(r[6]), float(score)])
    return rows


def norm_rows(arr):
    if arr is None:
        return []
    rows = []
    for r in arr:
        rows.append([float(r[0]), float(r[1]), float(r[2]), float(r[3]),
                     float(r[4]), float(r[5]), int(r[6]), float(np.float32(r[4] * r[5]))])
    return rows


def run_case(outdir, builder):
    name, input_shape, heads_np, plants = builder()
    heads_np = [h.astype(np.float32) for h in heads_np]
    batch = heads_np[0].shape[0]
    bbox = DecodeBox(ANCHORS, NUM_CLASSES, (input_shape[0], input_shape[1]), ANCHORS_MASK)
    with torch.no_grad():
        outs = bbox.decode_box([torch.from_numpy(h.copy()) for h in heads_np])
        decoded = torch.cat(outs, 1)
        decoded_np = decoded.numpy().copy()

    tensors = {f"head{l}": np.ascontiguousarray(h) for l, h in enumerate(heads_np)}
    tensors["decoded"] = np.ascontiguousarray(decoded_np)
    save_file(tensors, os.path.join(outdir, f"heads_{name}.safetensors"),
              metadata={"case": name, "input_shape_hw": f"{input_shape[0]},{input_shape[1]}",
                        "num_classes": str(NUM_CLASSES)})

    results = []
    normalized = None
    for (iw, ih) in IMAGE_SIZES_WH:
        for letterbox in (True, False):
            norm = []
            with torch.no_grad():
                res = bbox.non_max_suppression(torch.from_numpy(decoded_np.copy()), NUM_CLASSES, input_shape,
                                               np.array([ih, iw]), letterbox, conf_thres=CONF,
                                               nms_thres=NMS_IOU, keep_normalized=norm)
            nr = [norm_rows(n) for n in norm]
            if normalized is None:
                normalized = nr
            assert normalized == nr
            dets = [det_rows(r) for r in res]
            for d in dets:
                for row in d:
                    assert all(math.isfinite(v) for v in row[:4])
            results.append({"image_size_wh": [iw, ih], "letterbox": letterbox, "detections": dets})

    # robustness: no same-class pair of candidate boxes has IoU within 0.002 of the NMS threshold
    check_iou_margin(decoded_np)

    summary = [len(d) for d in results[0]["detections"]]
    print(f"  case {name}: input {input_shape}, detections per image {summary}")
    for bi, n in enumerate(normalized):
        for r in n:
            if len(n) <= 20:
                print(f"    b{bi} cls {r[6]:2d} score {r[7]:.4f} box ({r[0]:.3f},{r[1]:.3f},{r[2]:.3f},{r[3]:.3f})")
    return {
        "name": name,
        "heads_file": f"heads_{name}.safetensors",
        "input_shape_hw": list(input_shape),
        "batch": batch,
        "num_classes": NUM_CLASSES,
        "planted": [{"desc": p[0], "b": p[1], "head": p[2], "anchor": p[3], "gy": p[4], "gx": p[5],
                     "t": list(p[6]), "obj_logit": p[7], "class_logits": {str(k): v for k, v in p[8].items()}}
                    if len(p) > 1 else {"desc": p[0]} for p in plants],
        "nms_normalized": normalized,
        "results": results,
    }


def check_iou_margin(decoded):
    for b in range(decoded.shape[0]):
        p = decoded[b].astype(np.float64)
        cc = p[:, 5:].max(1)
        cp = p[:, 5:].argmax(1)
        m = p[:, 4] * cc >= CONF
        q, cls = p[m], cp[m]
        x1, y1 = q[:, 0] - q[:, 2] / 2, q[:, 1] - q[:, 3] / 2
        x2, y2 = q[:, 0] + q[:, 2] / 2, q[:, 1] + q[:, 3] / 2
        area = (x2 - x1) * (y2 - y1)
        for i in range(len(q)):
            for j in range(i + 1, len(q)):
                if cls[i] != cls[j]:
                    continue
                iw = max(0.0, min(x2[i], x2[j]) - max(x1[i], x1[j]))
                ih = max(0.0, min(y2[i], y2[j]) - max(y1[i], y1[j]))
                inter = iw * ih
                iou = inter / (area[i] + area[j] - inter)
                if abs(iou - NMS_IOU) < 0.002:
                    print(f"    WARNING: b{b} pair {i},{j} IoU {iou:.4f} close to threshold")


# --------------------------------------------------------------- images

def make_images():
    imgs = {}
    # RGB 64x48 (w x h): gradients + checkerboard + a filled rectangle with sharp edges
    w, h = 64, 48
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[..., 0] = (xx * 4) % 256
    a[..., 1] = (yy * 5) % 256
    a[..., 2] = np.where(((xx // 8) + (yy // 8)) % 2 == 0, 20, 220)
    a[10:30, 20:44] = (255, 0, 0)
    a[0, :] = (0, 0, 0)
    a[:, -1] = (255, 255, 255)
    imgs["rgb_64x48"] = Image.fromarray(a, "RGB")
    # grayscale 37x61 (w x h), mode L: exercises cvtColor (L -> RGB)
    w, h = 37, 61
    yy, xx = np.mgrid[0:h, 0:w]
    g = ((xx * 7 + yy * 3) % 256).astype(np.uint8)
    imgs["gray_37x61"] = Image.fromarray(g, "L")
    # RGB 300x200 (w x h), smooth pattern + disc: letterbox to 416 upsamples, to 320x480 keeps scale ~1.6
    # and plain resize to (h=320, w=480) upsamples; 160x96 downsample exercises the PIL antialias support
    w, h = 300, 200
    yy, xx = np.mgrid[0:h, 0:w]
    c = np.zeros((h, w, 3), dtype=np.uint8)
    c[..., 0] = (127.5 + 127.5 * np.sin(xx / 9.0)).astype(np.uint8)
    c[..., 1] = (127.5 + 127.5 * np.cos(yy / 7.0)).astype(np.uint8)
    c[..., 2] = ((xx + yy) % 256).astype(np.uint8)
    disc = (xx - 150) ** 2 + (yy - 100) ** 2 < 40 ** 2
    c[disc] = (250, 250, 10)
    imgs["rgb_300x200"] = Image.fromarray(c, "RGB")
    return imgs


def run_images(outdir):
    imgs = make_images()
    manifest = []
    tensors = {}
    for iname, img in imgs.items():
        path = os.path.join(outdir, f"img_{iname}.png")
        img.save(path)
        img = Image.open(path)  # read back, as the Rust side will
        img.load()
        for input_shape in [(416, 416), (320, 480), (96, 160)]:
            for letterbox in (True, False):
                image_shape, resized, data = preprocess(img, list(input_shape), letterbox)
                mode = "letterbox" if letterbox else "stretch"
                key = f"{iname}/{mode}_{input_shape[0]}x{input_shape[1]}"
                rgb = np.array(resized, dtype=np.uint8)
                stride = math.ceil(data.size / 4096)
                tensors[f"{key}.shape"] = np.array(data.shape, dtype=np.int64)
                tensors[f"{key}.sample"] = np.ascontiguousarray(data.reshape(-1)[::stride])
                tensors[f"{key}.chsum"] = data.astype(np.float64).sum(axis=(2, 3)).astype(np.float64)
                tensors[f"{key}.u8_chsum"] = rgb.astype(np.int64).sum(axis=(0, 1)).reshape(1, 3)
                tensors[f"{key}.u8_rows"] = rgb[::max(1, rgb.shape[0] // 8)].copy()
                png = None
                if input_shape == (416, 416) or input_shape == (96, 160):
                    png = f"img_{iname}_{mode}_{input_shape[0]}x{input_shape[1]}.png"
                    Image.fromarray(rgb, "RGB").save(os.path.join(outdir, png))
                manifest.append({
                    "image": f"img_{iname}.png", "mode": img.mode, "image_shape_hw": [int(v) for v in image_shape],
                    "input_shape_hw": list(input_shape), "letterbox": letterbox, "key": key,
                    "sample_stride": stride, "resized_png": png,
                })
    save_file(tensors, os.path.join(outdir, "preprocess.safetensors"))
    print(f"  images: {len(imgs)} images, {len(manifest)} preprocess cases")
    return manifest


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    torch.set_num_threads(2)
    outdir = os.path.join(args.out, "pipeline")
    os.makedirs(outdir, exist_ok=True)

    cases = [run_case(outdir, b) for b in (case_main, case_single_class, case_empty)]
    expected = {
        "detection_columns": ["top", "left", "bottom", "right", "obj_conf", "class_conf", "class", "score"],
        "nms_normalized_columns": ["x1", "y1", "x2", "y2", "obj_conf", "class_conf", "class", "score"],
        "anchors_wh": ANCHORS.tolist(),
        "anchors_mask": ANCHORS_MASK,
        "num_classes": NUM_CLASSES,
        "conf_thres": CONF,
        "nms_iou": NMS_IOU,
        "cases": cases,
    }
    with open(os.path.join(outdir, "expected_detections.json"), "w") as f:
        json.dump(expected, f, separators=(",", ":"))
        f.write("\n")

    manifest = run_images(outdir)
    with open(os.path.join(outdir, "preprocess.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
