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

The models are the reference ones (tools/reference/models.py) with the same
deterministic weights as the Rust side (tools/reference/detweights.py). `torch` and
`ort` print one JSON object on stdout (median/min/max ms per batch, ms per image,
images per second, peak RSS from VmHWM). `video` is the peer of `yolo-cli run clip.mp4`:
OpenCV's `VideoCapture` decodes the clip frame by frame, each frame is letterboxed to
the input size (OpenCV bicubic resize, grey padding, RGB, /255) and run through ONNX
Runtime; it prints frames, ms per frame for decoding, preprocessing and inference, and
frames per second over the whole loop.
"""

import argparse
import json
import os
import sys
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
    p.add_argument("mode", choices=["export", "weights", "torch", "ort", "video"])
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--onnx", default=None)
    p.add_argument("--out", default=None, help="weights: the .safetensors to write")
    p.add_argument("--video", default=None, help="video: the clip to read")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 3, args.size, args.size), dtype=np.float32)

    if args.mode == "video":
        video(args)
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
        report("onnxruntime", args, times, {"version": ort.__version__})


if __name__ == "__main__":
    main()
