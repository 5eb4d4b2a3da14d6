"""Write golden fixtures for the yolo-rs network tests.

Usage (from the repository root):

    .venv-golden/bin/python tools/reference/make_golden.py --out tests/fixtures

Writes tests/fixtures/golden/*. Formats: tools/reference/README.md.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detweights import det_input, det_param  # noqa: E402
from fixture_io import save_safetensors as save_file  # noqa: E402
from models import DarkNet, MobileNetV2, MobileNetV2Backbone, YoloBody  # noqa: E402

ANCHORS_MASK = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
SIZES = [(416, 416), (320, 480)]  # (H, W)
BATCH = 2
SAMPLE_TARGET = 4096

REF_KEYS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "..", "..", "..", "shared", "reference", "keys_yolov3_darknet53_coco80.txt")


def build(name):
    if name == "mobilenetv2_classifier":
        return MobileNetV2(num_classes=1000), ["logits"]
    if name == "mobilenetv2_backbone":
        return MobileNetV2Backbone(pretrained=False), ["out3", "out4", "out5"]
    if name == "darknet53_backbone":
        return DarkNet([1, 2, 8, 8, 4]), ["out3", "out4", "out5"]
    if name == "yolo_mobilenetv2_voc20":
        return YoloBody(ANCHORS_MASK, 20, "mobilenetv2"), ["out0", "out1", "out2"]
    if name == "yolo_darknet53_coco80":
        return YoloBody(ANCHORS_MASK, 80, "darknet53"), ["out0", "out1", "out2"]
    raise KeyError(name)


MODELS = [
    "mobilenetv2_classifier",
    "mobilenetv2_backbone",
    "darknet53_backbone",
    "yolo_mobilenetv2_voc20",
    "yolo_darknet53_coco80",
]


def load_det_weights(model):
    sd = model.state_dict()
    new = {}
    for k, v in sd.items():
        arr = det_param(k, tuple(v.shape))
        t = torch.from_numpy(arr)
        assert t.dtype == v.dtype, (k, t.dtype, v.dtype)
        new[k] = t
    model.load_state_dict(new, strict=True)
    # verify a few values were really loaded
    for k, v in model.state_dict().items():
        assert torch.equal(v, new[k]), k


def key_list(model):
    pnames = {n for n, _ in model.named_parameters()}
    return [{"name": k, "shape": list(v.shape), "kind": "param" if k in pnames else "buffer"}
            for k, v in model.state_dict().items()]


def check_ref_keys(keys):
    """The darknet53 COCO YoloBody must reproduce the reference key list exactly."""
    with open(REF_KEYS, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    ref = []
    for ln in lines:
        name, rest = ln.split(" ", 1)
        shape_s, kind = rest.rsplit(" ", 1)
        shape = json.loads(shape_s)
        ref.append({"name": name, "shape": shape, "kind": kind})
    assert len(ref) == len(keys), (len(ref), len(keys))
    for a, b in zip(ref, keys):
        assert a == b, (a, b)
    print(f"  reference key list matches ({len(ref)} entries)")


def as_tuple(out):
    return out if isinstance(out, (tuple, list)) else (out,)


def summarize(name_out, t):
    t = t.detach().contiguous()
    a = t.numpy().astype(np.float32)
    numel = a.size
    stride = math.ceil(numel / SAMPLE_TARGET)
    flat = a.reshape(-1)
    if a.ndim > 2:
        ch = t.sum(dim=tuple(range(2, t.dim()))).numpy().astype(np.float32)
    else:
        ch = a.copy()
    assert np.isfinite(a).all(), name_out
    absmax = float(np.abs(a).max())
    assert absmax > 0, name_out
    return {
        f"{name_out}.shape": np.array(a.shape, dtype=np.int64),
        f"{name_out}.sample": np.ascontiguousarray(flat[::stride]),
        f"{name_out}.absmax": np.array([absmax], dtype=np.float32),
        f"{name_out}.chsum": np.ascontiguousarray(ch),
    }, absmax, stride


def count_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_used_params(model):
    """Trainable params whose .grad is non-None after backward(sum of outputs)."""
    model.zero_grad(set_to_none=True)
    x = torch.from_numpy(det_input((1, 3, 64, 64)))
    with torch.enable_grad():
        outs = as_tuple(model(x))
        sum(o.sum() for o in outs).backward()
    used = sum(p.numel() for p in model.parameters() if p.requires_grad and p.grad is not None)
    model.zero_grad(set_to_none=True)
    return used


def count_macs(model, h=416, w=416):
    """Multiply-adds the way torchsummaryX counts them, batch 1.

    For every leaf module that ran: for its parameter named "weight",
    Conv*: weight.numel() * prod(output.shape[2:]); other modules (Linear,
    BatchNorm): weight.numel(). Returns (conv+linear only, torchsummaryX total
    incl. BatchNorm). torchsummaryX adds weight.numel() for BatchNorm too,
    which is why its total is slightly larger than conv+linear.
    """
    conv_lin = [0]
    bn = [0]
    hooks = []

    def hook(mod, inp, out):
        w_ = getattr(mod, "weight", None)
        if w_ is None:
            return
        if isinstance(mod, torch.nn.Conv2d):
            conv_lin[0] += int(w_.numel() * int(np.prod(out.shape[2:])))
        elif isinstance(mod, torch.nn.Linear):
            conv_lin[0] += int(w_.numel())
        else:
            bn[0] += int(w_.numel())

    for m in model.modules():
        if len(m._modules) == 0:
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.from_numpy(det_input((1, 3, h, w))))
    for hk in hooks:
        hk.remove()
    return conv_lin[0], conv_lin[0] + bn[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    outdir = os.path.join(args.out, "golden")
    os.makedirs(outdir, exist_ok=True)

    counts_path = os.path.join(outdir, "param_counts.json")
    counts = {}
    if os.path.exists(counts_path):
        with open(counts_path) as f:
            counts = json.load(f)

    for mname in args.models.split(","):
        print(f"== {mname}")
        model, out_names = build(mname)
        model = model.float()
        load_det_weights(model)
        model.eval()

        keys = key_list(model)
        if mname == "yolo_darknet53_coco80":
            check_ref_keys(keys)
        with open(os.path.join(outdir, f"keys_{mname}.json"), "w") as f:
            json.dump(keys, f, indent=0)
            f.write("\n")

        total = count_params(model)
        used = count_used_params(model)
        macs, macs_tsx = count_macs(model)
        counts[mname] = {
            "params_total": total,
            "params_used": used,
            # torchsummaryX-compatible (conv + linear + BatchNorm weight numel)
            "macs_416": macs_tsx,
            # conv + linear only
            "macs_416_conv_linear": macs,
            "state_dict_entries": len(keys),
            "param_tensors": sum(1 for k in keys if k["kind"] == "param"),
        }
        print(f"  params total {total:,} used {used:,} macs@416 {macs:,} (tsx incl. BN {macs_tsx:,})")

        for (h, w) in SIZES:
            x = torch.from_numpy(det_input((BATCH, 3, h, w)))
            with torch.no_grad():
                outs = as_tuple(model(x))
            tensors = {}
            for on, o in zip(out_names, outs):
                d, absmax, stride = summarize(on, o)
                tensors.update(d)
                print(f"  {h}x{w} {on} shape {tuple(o.shape)} absmax {absmax:.6g} "
                      f"mean {o.mean().item():.4g} std {o.std().item():.4g} stride {stride}")
            save_file(tensors, os.path.join(outdir, f"{mname}_{h}x{w}.safetensors"),
                      metadata={"model": mname, "input": f"det_input(({BATCH},3,{h},{w}))",
                                "outputs": ",".join(out_names)})
        del model

    with open(counts_path, "w") as f:
        json.dump(counts, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
