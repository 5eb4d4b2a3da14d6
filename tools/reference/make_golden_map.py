"""Evaluation fixture: mAP numbers computed by the reference's own code.

Writes a small seeded detection problem (ground truth and detections of a few
images, in the files `get_map.py` reads: `map_out/ground-truth/*.txt` and
`map_out/detection-results/*.txt`), runs bubbliiiing/yolo3-pytorch's
`utils/utils_map.py` on it -- `get_map` (VOC all-point AP at IoU 0.5) and
`get_coco_map` (pycocotools, AP@[.5:.95] and AP@.5) -- and stores problem and
results in `tests/fixtures/map/get_map.json` for `yolo-train/tests/map_golden.rs`.

The reference code is imported from a checkout given with --reference-repo
(https://github.com/bubbliiiing/yolo3-pytorch, commit 8fbb81d was used); it
needs opencv-python-headless, matplotlib and pycocotools besides numpy.

    .venv-golden/bin/python tools/reference/make_golden_map.py \
        --reference-repo ../yolo3-pytorch --out tests/fixtures

Detections are written as the reference's `YOLO.get_map_txt` writes them:
score as `str(score)[:6]`, box corners truncated with `int()`.
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

CLASSES = ["cat", "dog", "potted plant", "kite"]
# "potted plant" has ground truth but no detection (AP 0); "kite" has detections but no
# ground truth (left out of the means, as both references do).
NO_DETECTIONS = 2
NO_GROUND_TRUTH = 3
N_IMAGES = 12


def make_problem(seed):
    rng = np.random.default_rng(seed)
    images = []
    for i in range(N_IMAGES):
        gts, dets = [], []
        for _ in range(rng.integers(0, 6)):
            c = int(rng.choice([0, 1, 2], p=[0.45, 0.4, 0.15]))
            w, h = (int(v) for v in rng.integers(8, 90, size=2))
            l, t = (int(v) for v in rng.integers(0, 300, size=2))
            gts.append([c, l, t, l + w, t + h])
            if c == NO_DETECTIONS:
                continue
            # a localised detection, sometimes a duplicate, sometimes missed
            for k in range(3):
                if rng.random() > (0.8 if k == 0 else 0.3):
                    break
                jit = rng.normal(0, 0.12 * min(w, h), size=4)
                box = [l + jit[0], t + jit[1], l + w + jit[2], t + h + jit[3]]
                dets.append([c, float(np.float32(rng.uniform(0.001, 1.0)))] + box)
        for _ in range(rng.integers(0, 4)):
            # false positives, some in the class without ground truth
            c = int(rng.choice([0, 1, NO_GROUND_TRUTH]))
            l, t = rng.uniform(0, 300, size=2)
            w, h = rng.uniform(8, 90, size=2)
            dets.append([c, float(np.float32(rng.uniform(0.001, 0.6))), l, t, l + w, t + h])
        images.append({"id": f"img_{i:02d}", "gt": gts, "dets": dets})
    # equal (truncated) scores across and within images, as truncation makes common
    all_dets = [d for im in images for d in im["dets"]]
    for d in all_dets[3:9]:
        d[1] = all_dets[2][1]
    return images


def reference_det_line(det):
    """What `YOLO.get_map_txt` writes for one detection, and the values it stands for."""
    c, score, l, t, r, b = det
    score_s = str(np.float32(score))[:6]
    corners = [int(v) for v in (l, t, r, b)]
    line = "%s %s %s %s %s %s\n" % (CLASSES[c], score_s, *[str(v) for v in corners])
    return line, [c, float(score_s)] + corners


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-repo", required=True, help="checkout of bubbliiiing/yolo3-pytorch")
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--seed", type=int, default=20261127)
    args = ap.parse_args()

    sys.path.insert(0, os.path.abspath(args.reference_repo))
    from utils import utils_map  # the reference's evaluation code

    images = make_problem(args.seed)
    with tempfile.TemporaryDirectory() as map_out:
        gt_dir = os.path.join(map_out, "ground-truth")
        dr_dir = os.path.join(map_out, "detection-results")
        os.makedirs(gt_dir)
        os.makedirs(dr_dir)
        fixture_images = []
        for im in images:
            with open(os.path.join(gt_dir, im["id"] + ".txt"), "w") as f:
                for c, l, t, r, b in im["gt"]:
                    f.write("%s %d %d %d %d\n" % (CLASSES[c], l, t, r, b))
            written = []
            with open(os.path.join(dr_dir, im["id"] + ".txt"), "w") as f:
                for d in im["dets"]:
                    line, values = reference_det_line(d)
                    f.write(line)
                    written.append(values)
            fixture_images.append({"id": im["id"], "gt": im["gt"], "dets": written})

        # per-class APs as get_map computes them (it prints and plots them, returning
        # only the mean): record each voc_ap result, called once per class in sorted
        # class-name order
        per_class = []
        voc_ap = utils_map.voc_ap

        def recording_voc_ap(rec, prec):
            out = voc_ap(rec, prec)
            per_class.append(out[0])
            return out

        utils_map.voc_ap = recording_voc_ap
        cwd = os.getcwd()
        os.chdir(map_out)  # get_map writes a few side files next to its inputs
        try:
            map50 = utils_map.get_map(0.5, False, score_threhold=0.5, path=map_out)
            stats = utils_map.get_coco_map(class_names=CLASSES, path=map_out)
        finally:
            os.chdir(cwd)
        gt_classes = sorted({CLASSES[g[0]] for im in images for g in im["gt"]})
        assert len(per_class) == len(gt_classes)

    fixture = {
        "source": "bubbliiiing/yolo3-pytorch utils/utils_map.py get_map(0.5) and get_coco_map "
        "(pycocotools), via tools/reference/make_golden_map.py",
        "seed": args.seed,
        "classes": CLASSES,
        "images": fixture_images,
        "reference": {
            "map50": float(map50),
            "ap50": {name: float(v) for name, v in zip(gt_classes, per_class)},
            "coco_map50_95": float(stats[0]),
            "coco_map50": float(stats[1]),
        },
    }
    out_dir = os.path.join(args.out, "map")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "get_map.json")
    with open(path, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    print(f"wrote {path}: mAP@0.5 {map50:.6f}, COCO mAP@[.5:.95] {stats[0]:.6f}")


if __name__ == "__main__":
    main()
