"""PyTorch eager and ONNX Runtime peers for `cargo xtask bench`.

Usage (from the repository root, one configuration per process so that the peak
RSS belongs to it):

    python tools/bench/bench_py.py export --backbone mobilenetv2 --num-classes 20 \
        --size 416 --onnx target/bench/yolo_mobilenetv2_20_416.onnx
    python tools/bench/bench_py.py torch --backbone mobilenetv2 --num-classes 20 \
        --size 416 --batch 1 --threads 2 --iters 20 --warmup 3
    python tools/bench/bench_py.py weights --backbone darknet53 --num-classes 80 \
        --out target/bench/darknet53_80.safetensors
    python tools/bench/bench_py.py ort --onnx target/bench/yolo_mobilenetv2_20_416.onnx \
        --backbone mobilenetv2 --num-classes 20 --size 416 --batch 1 --threads 2
    python tools/bench/bench_py.py video --onnx target/bench/yolo_darknet53_80_416.onnx \
        --video target/bench/clip.mp4 --size 416 --threads 2
    python tools/bench/bench_py.py calib --images target/bench/calib_set/images \
        --size 416 --out target/bench/calib_416.f32
    python tools/bench/bench_py.py quantize --onnx target/bench/yolo_darknet53_80_416.onnx \
        --calib target/bench/calib_416.f32 --size 416 \
        --out target/bench/yolo_darknet53_80_416_int8.onnx
    python tools/bench/bench_py.py ort --precision int8 \
        --onnx target/bench/yolo_darknet53_80_416_int8.onnx --backbone darknet53 ...

The models are the reference ones (tools/reference/models.py) with the same
deterministic weights as the Rust side (tools/reference/detweights.py). `torch` and
`ort` print one JSON object on stdout (median/min/max ms per batch, ms per image,
images per second, peak RSS from VmHWM). `video` is the peer of `yolo-cli run clip.mp4`:
OpenCV's `VideoCapture` decodes the clip frame by frame, each frame is letterboxed to
the input size (OpenCV bicubic resize, grey padding, RGB, /255) and run through ONNX
Runtime; it prints frames, ms per frame for decoding, preprocessing and inference, and
frames per second over the whole loop.

`calib` and `quantize` prepare the int8 peer of `cargo xtask bench --precision`. `calib`
writes the calibration inputs both sides use: the image files of `--images` (sorted by
name, already `--size` x `--size`: our letterbox then leaves them as they are) as RGB,
/255, CHW, raw little-endian f32, (N, 3, S, S), no header. `quantize` runs
`onnxruntime.quantization.quant_pre_process` and `quantize_static` on `--onnx` with those
inputs one image at a time: QDQ, per-channel weights, u8 activations and s8 weights
(U8S8, ORT's choice for x86 with VNNI), MinMax calibration. `ort --precision int8` times
the result (impl "onnxruntime-int8").
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))

ANCHORS_MASK = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]


def build(backbone, num_classes):
    # torch is imported only where needed: the ONNX Runtime run's RSS stays its own.
    import torch
    from detweights import det_param
    from models import YoloBody

    model = YoloBody(ANCHORS_MASK, num_classes, backbone)
    sd = {k: torch.from_numpy(det_param(k, tuple(v.shape))) for k, v in model.state_dict().items()}
    model.load_state_dict(sd, strict=True)
    return model.eval()


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def timed(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times


def report(impl, args, times, extra):
    n = len(times)
    median = times[n // 2] if n % 2 else (times[n // 2 - 1] + times[n // 2]) / 2
    per_image = median / args.batch
    out = {
        "impl": impl,
        "precision": args.precision,
        "backbone": args.backbone,
        "num_classes": args.num_classes,
        "size": args.size,
        "batch": args.batch,
        "threads": args.threads,
        "iters": args.iters,
        "warmup": args.warmup,
        "median_ms": round(median, 3),
        "min_ms": round(times[0], 3),
        "max_ms": round(times[-1], 3),
        "ms_per_image": round(per_image, 3),
        "images_per_s": round(1e3 / per_image, 3),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "times_ms": [round(t, 3) for t in times],
    }
    out.update(extra)
    print(json.dumps(out), flush=True)


def read_calib(path, size):
    """The (N, 3, size, size) f32 inputs of a file written by `calib`."""
    raw = np.fromfile(path, dtype="<f4")
    per_image = 3 * size * size
    if raw.size == 0 or raw.size % per_image:
        raise SystemExit(f"{path}: {raw.size} floats is not a whole number of (3, {size}, {size}) images")
    return raw.reshape(-1, 3, size, size)


def replace_atomically(tmp, dst):
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    os.replace(tmp, dst)


def calib(args):
    import cv2

    names = sorted(n for n in os.listdir(args.images)
                   if n.lower().endswith((".png", ".jpg", ".jpeg", ".bmp")))
    if not names:
        raise SystemExit(f"no images in {args.images}")
    out = []
    for n in names:
        bgr = cv2.imread(os.path.join(args.images, n), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"cannot read {n}")
        if bgr.shape[:2] != (args.size, args.size):
            raise SystemExit(f"{n} is {bgr.shape[1]}x{bgr.shape[0]}, not {args.size}x{args.size}")
        out.append(bgr[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0)
    x = np.ascontiguousarray(np.stack(out), dtype="<f4")
    tmp = args.out + ".tmp"
    x.tofile(tmp)
    replace_atomically(tmp, args.out)
    print(json.dumps({"calib": args.out, "images": len(names), "shape": list(x.shape)}))


def quantize(args):
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quant_pre_process, quantize_static)

    x = read_calib(args.calib, args.size)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(x[i:i + 1] for i in range(len(x)))

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {"images": batch}

    start = time.perf_counter()
    src, out = os.path.abspath(args.onnx), os.path.abspath(args.out)
    # The quantisation tools leave files in the working directory (external tensor data,
    # "sym_shape_infer_temp.onnx") when they fail: work in a temporary one.
    with tempfile.TemporaryDirectory(dir=os.path.dirname(out)) as work:
        os.chdir(work)
        pre = os.path.join(work, "pre.onnx")
        # Without auto_merge, ORT's symbolic shape inference stops on these graphs with
        # "Incomplete symbolic shape inference".
        quant_pre_process(src, pre, auto_merge=True)
        tmp = os.path.join(work, "int8.onnx")
        quantize_static(
            pre,
            tmp,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        replace_atomically(tmp, out)
        os.chdir(HERE)
    print(json.dumps({
        "quantized": args.out,
        "calibration_images": len(x),
        "format": "QDQ",
        "per_channel": True,
        "activations": "QUInt8",
        "weights": "QInt8",
        "calibration": "MinMax",
        "bytes": os.path.getsize(args.out),
        "seconds": round(time.perf_counter() - start, 1),
        "onnxruntime": ort.__version__,
    }))


def video(args):
    import cv2
    import onnxruntime as ort

    cv2.setNumThreads(args.threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(args.onnx, so, providers=["CPUExecutionProvider"])
    size = args.size
    decode = pre = infer = 0.0
    frames = 0
    start = time.perf_counter()
    cap = cv2.VideoCapture(args.video)
    if not cap.isOpened():
        raise SystemExit(f"OpenCV cannot open {args.video}")
    while True:
        t = time.perf_counter()
        ok, bgr = cap.read()
        t1 = time.perf_counter()
        if not ok:
            break
        decode += t1 - t
        h, w = bgr.shape[:2]
        scale = min(size / w, size / h)
        nw, nh = int(w * scale), int(h * scale)
        canvas = np.full((size, size, 3), 128, dtype=np.uint8)
        top, left = (size - nh) // 2, (size - nw) // 2
        canvas[top:top + nh, left:left + nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_CUBIC)
        x = np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        t2 = time.perf_counter()
        pre += t2 - t1
        sess.run(None, {"images": x})
        infer += time.perf_counter() - t2
        frames += 1
    wall = time.perf_counter() - start
    ms = lambda s: round(s * 1e3 / max(frames, 1), 3)
    print(json.dumps({
        "impl": "opencv+onnxruntime",
        "frames": frames,
        "decode_ms_per_frame": ms(decode),
        "preprocess_ms_per_frame": ms(pre),
        "inference_ms_per_frame": ms(infer),
        "wall_s": round(wall, 3),
        "fps": round(frames / wall, 3),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "opencv": cv2.__version__,
        "onnxruntime": ort.__version__,
    }), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["export", "weights", "torch", "ort", "video", "calib", "quantize"])
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--onnx", default=None)
    p.add_argument("--out", default=None, help="weights, calib, quantize: the file to write")
    p.add_argument("--video", default=None, help="video: the clip to read")
    p.add_argument("--precision", default="f32", choices=["f32", "int8"],
                   help="ort: what --onnx holds (int8: a file of `quantize`), for the record")
    p.add_argument("--images", default=None, help="calib: the folder of images")
    p.add_argument("--calib", default=None, help="quantize: the raw f32 file of `calib`")
    args = p.parse_args()
    if args.mode in ("calib", "quantize") and not args.out:
        p.error(f"{args.mode} needs --out")

    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 3, args.size, args.size), dtype=np.float32)

    if args.mode == "video":
        video(args)
    elif args.mode == "calib":
        calib(args)
    elif args.mode == "quantize":
        quantize(args)
    elif args.mode == "weights":
        from safetensors.torch import save_file

        model = build(args.backbone, args.num_classes)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        save_file(sd, args.out)
        print(json.dumps({"weights": args.out, "bytes": os.path.getsize(args.out)}))
    elif args.mode == "export":
        import torch

        model = build(args.backbone, args.num_classes)
        dummy = torch.from_numpy(x)
        os.makedirs(os.path.dirname(os.path.abspath(args.onnx)), exist_ok=True)
        kwargs = dict(
            input_names=["images"],
            output_names=["out0", "out1", "out2"],
            dynamic_axes={"images": {0: "batch"}, "out0": {0: "batch"}, "out1": {0: "batch"},
                          "out2": {0: "batch"}},
            opset_version=17,
        )
        try:
            torch.onnx.export(model, (dummy,), args.onnx, dynamo=False, **kwargs)
        except TypeError:
            torch.onnx.export(model, (dummy,), args.onnx, **kwargs)
        print(json.dumps({"exported": args.onnx}))
    elif args.mode == "torch":
        import torch

        torch.set_num_threads(args.threads)
        model = build(args.backbone, args.num_classes)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            times = timed(lambda: model(xt), args.iters, args.warmup)
        report("pytorch-eager", args, times, {"version": torch.__version__})
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(args.onnx, so, providers=["CPUExecutionProvider"])
        times = timed(lambda: sess.run(None, {"images": x}), args.iters, args.warmup)
        impl = "onnxruntime" if args.precision == "f32" else "onnxruntime-" + args.precision
        report(impl, args, times, {"version": ort.__version__})


if __name__ == "__main__":
    main()
