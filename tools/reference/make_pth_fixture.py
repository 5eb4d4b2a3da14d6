"""Write the tiny PyTorch checkpoints the yolo-weights tests read.

Usage (from the repository root):

    .venv-golden/bin/python tools/reference/make_pth_fixture.py --out tests/fixtures/weights

Writes:
- mobilenetv2_w010.pth: bare zip state dict of MobileNetV2(num_classes=8,
  width_mult=0.1) with the deterministic synthetic weights (detweights.det_param),
  stored as float16 to stay small (num_batches_tracked stays int64);
- mobilenetv2_w010_logits.safetensors: PyTorch's logits (float32) for
  det_input((2, 3, 64, 64)), computed with the float16 weights cast back to float32;
- wrapped_module.pth: {"state_dict": {"module.<name>": tensor}, "epoch": 3} with three
  small tensors (DataParallel prefix inside a training-checkpoint wrapper);
- wrapped_model.pth: {"model": {<name>: tensor}, "optimizer": None};
- legacy.pth: a small state dict saved in the legacy non-zip format.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detweights import det_input, det_param  # noqa: E402
from fixture_io import save_safetensors  # noqa: E402
from models import MobileNetV2  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/weights")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)

    model = MobileNetV2(num_classes=8, width_mult=0.1).eval()
    sd = {}
    for k, v in model.state_dict().items():
        t = torch.from_numpy(det_param(k, tuple(v.shape)))
        if t.dtype == torch.float32:
            t = t.to(torch.float16)
        sd[k] = t
    torch.save(sd, os.path.join(args.out, "mobilenetv2_w010.pth"))
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in sd.items()}, strict=True)
    x = torch.from_numpy(det_input((2, 3, 64, 64)))
    with torch.no_grad():
        logits = model(x)
    save_safetensors({"logits": logits.numpy()}, os.path.join(args.out, "mobilenetv2_w010_logits.safetensors"),
                     metadata={"input": "det_input((2, 3, 64, 64))", "width_mult": 0.1, "num_classes": 8})

    small = {
        "features.0.0.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2),
        "features.0.1.running_var": torch.tensor([1.5, 0.5]),
        "features.0.1.num_batches_tracked": torch.tensor(7),
    }
    torch.save({"state_dict": {"module." + k: v for k, v in small.items()}, "epoch": 3},
               os.path.join(args.out, "wrapped_module.pth"))
    torch.save({"model": small, "optimizer": None}, os.path.join(args.out, "wrapped_model.pth"))
    torch.save(small, os.path.join(args.out, "legacy.pth"), _use_new_zipfile_serialization=False)
    for f in sorted(os.listdir(args.out)):
        print(f, os.path.getsize(os.path.join(args.out, f)))


if __name__ == "__main__":
    main()
