#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/<target>/ (and copies small fixtures of the
repository): small valid inputs of each format, and a few near misses. Run from the
repository root; existing files of the same name are overwritten, others are kept
(the fuzzer's additions, minimised with `cargo fuzz cmin`)."""

import json
import shutil
import struct
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def copy(target, rel):
    src = ROOT / rel
    put(target, "fixture_" + src.name, src.read_bytes())


def safetensors(tensors, metadata=None):
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def bmp(w, h):
    row = (w * 3 + 3) // 4 * 4
    pixels = bytes(row * h)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(pixels), 0, 0, 54) + info + pixels


def png(w, h):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    raw = b"".join(b"\x00" + bytes(range(w * 3)) for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main():
    # image
    copy("image", "tests/fixtures/pipeline/img_gray_37x61.png")
    copy("image", "tests/fixtures/pipeline/img_rgb_64x48.png")
    put("image", "rgb_4x3.png", png(4, 3))
    put("image", "rgb_3x2.bmp", bmp(3, 2))
    put("image", "rgb_2x2.ppm", b"P6\n2 2\n255\n" + bytes(range(12)))
    put("image", "gray_2x2.pgm", b"P5 2 2 255\n\x00\x40\x80\xff")
    put("image", "pixel.gif", bytes.fromhex(
        "474946383961010001008000000000ffffff21f90401000000002c00000000010001000002024401003b"))
    put("image", "qoi_1x1.qoi", b"qoif" + struct.pack(">II", 1, 1) + b"\x03\x00"
        + b"\xfe\x10\x20\x30" + b"\x00" * 7 + b"\x01")
    put("image", "tga_1x1.tga", bytes([0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 24, 0, 1, 2, 3]))
    put("image", "huge_claim.png", png(4, 3).replace(struct.pack(">II", 4, 3), struct.pack(">II", 100000, 100000), 1))

    # safetensors
    copy("safetensors", "tests/fixtures/weights/mobilenetv2_w010_logits.safetensors")
    f32 = struct.pack("<4f", 1, 2, 3, 4)
    put("safetensors", "two.safetensors", safetensors(
        {"a": ("F32", [2, 2], f32), "b": ("U8", [2], b"\x01\x02")}, {"k": "v"}))
    put("safetensors", "yolo_meta.safetensors", safetensors(
        {"x": ("F32", [1], f32[:4])},
        {"model": "yolov3", "backbone": "mobilenetv2", "num_classes": "20", "bn_eps": "0.00001"}))
    put("safetensors", "classifier_meta.safetensors", safetensors(
        {"x": ("F16", [2], b"\x00\x3c\x00\x40")},
        {"model": "mobilenetv2-classifier", "num_classes": "10", "width_mult": "0.1"}))
    put("safetensors", "empty.safetensors", safetensors({}))
    elems = 1 << 40
    h = json.dumps({"huge": {"dtype": "F32", "shape": [elems], "data_offsets": [0, elems * 4]}}).encode()
    put("safetensors", "huge_claim.safetensors", struct.pack("<Q", len(h)) + h + bytes(16))

    # pth
    for f in ["legacy.pth", "wrapped_model.pth", "wrapped_module.pth"]:
        copy("pth", "tests/fixtures/weights/" + f)

    # darknet
    for major, minor in [(0, 2), (0, 1), (1, 0)]:
        head = struct.pack("<iii", major, minor, 0)
        head += struct.pack("<q", 12345) if major * 10 + minor >= 2 else struct.pack("<i", 12345)
        put("darknet", f"v{major}.{minor}.weights", head + struct.pack("<8f", *range(8)))
    put("darknet", "unknown_version.weights", struct.pack("<iiiq", 7, 7, 0, 0))

    # convert: the first byte picks the extension (0 .weights, 1 .pth, 2 .safetensors, 3 .bin)
    for target, pick in [("darknet", 0), ("pth", 1), ("safetensors", 2), ("safetensors", 3), ("pth", 3)]:
        for f in sorted((CORPUS / target).iterdir()):
            put("convert", f"{pick}_{f.name}", bytes([pick]) + f.read_bytes())

    # annotations (every image is 640x480 in the target; `missing` in a name: absent)
    put("annotations", "good.txt",
        "VOCdevkit/VOC2007/JPEGImages/000001.jpg 10,20,300,400,0 1,1,639,479,19\n"
        "img/b.jpg\n\n  img/c.jpg 5,5,6,6,3  \n")
    put("annotations", "bad.txt",
        "img/missing.jpg 1,2,3,4,0\nimg/a.jpg 1,2,3\nimg/a.jpg 5,5,4,4,0\n"
        "img/a.jpg 0,0,641,10,0\nimg/a.jpg 0,0,10,10,20\nimg/a.jpg 0,0,10,10,-1\n"
        "img/a.jpg x,0,10,10,1\nimg/a.jpg 0,0,9223372036854775807,10,1\n")

    # voc
    put("voc", "two_objects.xml",
        "<annotation><size><width>100</width><height>80</height><depth>3</depth></size>"
        "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2.9</ymin>"
        "<xmax>30.5</xmax><ymax>40</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>5</xmin><ymin>6</ymin>"
        "<xmax>7</xmax><ymax>8</ymax></bndbox><part><name>head</name><bndbox><xmin>5</xmin>"
        "<ymin>6</ymin><xmax>6</xmax><ymax>7</ymax></bndbox></part></object></annotation>\n")
    put("voc", "bad_coordinate.xml",
        "<?xml version=\"1.0\"?>\n<annotation><object><name>x</name><bndbox><xmin>1e400</xmin>"
        "<ymin>NaN</ymin><xmax>-3</xmax><ymax>4</ymax></bndbox></object></annotation>")

    # anchors, classes
    copy("anchors", "model_data/yolo_anchors.txt")
    put("anchors", "lines.txt", "# comment\n10,13, 16,30, 33,23\n30,61, 62,45, 59,119 # x\n"
        "116,90, 156,198, 373,326,\n")
    put("anchors", "bad.txt", "10,13, 16,-30, inf,1e39, 0x10\n1,\n")
    copy("classes", "model_data/voc_classes.txt")
    copy("classes", "model_data/coco_classes.txt")
    put("classes", "blank.txt", "\n  \n\t\n")

    # state_json
    rec = {"epoch": 1, "loss": 3.5, "loc": 1.0, "conf": 2.0, "cls": 0.5, "val_loss": 3.0,
           "val_loc": 1.0, "val_conf": 1.5, "val_cls": 0.5, "map50": 0.25, "map50_95": 0.1,
           "lr": 0.001, "frozen": True, "seconds": 12.5}
    state = {"epoch": 2, "best_val": 2.5, "history": [rec, dict(rec, epoch=2, loss=2.5, map50=None)],
             "backbone": "mobilenetv2", "num_classes": 20,
             "anchors": [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119],
                         [116, 90], [156, 198], [373, 326]]}
    put("state_json", "two_epochs.json", json.dumps(state, indent=2))
    put("state_json", "fresh.json", json.dumps(
        {"epoch": 0, "best_val": None, "history": [], "backbone": "darknet53", "num_classes": 80}))

    # http_body: "Content-Type line\nquery line\nbody", as fuzz_targets::http_body splits it
    img = png(4, 3)
    put("http_body", "raw_png.txt", b"image/png\n\n" + img)
    put("http_body", "no_type.txt", b"\nconf=0.25&nms_iou=0.5\n" + img)
    form = (b"--XX\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + img + b"\r\n--XX\r\n"
            b"Content-Disposition: form-data; name=\"image\"\r\n\r\n" + bmp(3, 2) + b"\r\n--XX--\r\n")
    put("http_body", "multipart_two.txt", b"multipart/form-data; boundary=XX\nconf=0.1\n" + form)
    put("http_body", "multipart_other_part.txt",
        b"multipart/form-data; boundary=XX\n\n" + form.replace(b'name="image"; filename', b'name="file"; filename'))
    put("http_body", "bad_query.txt", b"image/png\nconf=2&x=1\n" + img)
    put("http_body", "json.txt", b"application/json\n\n{}")
    put("http_body", "huge_claim.txt", b"image/png\n\n" + png(4, 3).replace(
        struct.pack(">II", 4, 3), struct.pack(">II", 100000, 100000), 1))

    # mp4: the small video fixtures (H.264 High and Baseline, HEVC, audio only) and a
    # truncated clip
    copy("mp4", "tests/fixtures/video/clip_baseline.mp4")
    copy("mp4", "tests/fixtures/video/clip_high.mp4")
    copy("mp4", "tests/fixtures/video/clip_hevc.mp4")
    copy("mp4", "tests/fixtures/video/audio_only.mp4")
    put("mp4", "truncated_high.mp4", (ROOT / "tests/fixtures/video/clip_high.mp4").read_bytes()[:6000])

if __name__ == "__main__":
    main()
