#!/usr/bin/env python3
"""Writes fuzz/regressions/pth/*.pth: zip checkpoints whose data.pkl made candle's `.pth`
reader (candle-core 0.11 `pickle`) panic or allocate what the record claims. Each must be
refused with an error (yolo-weights' pth tests and the fuzz-targets replay run them)."""

import io
import struct
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "pth"


def s(text):
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def cls(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def ints(*v):
    return b"(" + b"".join(b"J" + struct.pack("<i", x) for x in v) + b"t"


def tensor(storage_numel=4, offset=0, size=(2, 2), stride=(2, 1), nargs=6):
    storage = b"(" + s("storage") + cls("torch", "FloatStorage") + s("0") + s("cpu") \
        + b"J" + struct.pack("<i", storage_numel) + b"tQ"
    args = [storage, b"J" + struct.pack("<i", offset), ints(*size), ints(*stride), b"\x89",
            cls("collections", "OrderedDict") + b")R"]
    return cls("torch._utils", "_rebuild_tensor_v2") + b"(" + b"".join(args[:nargs]) + b"tR"


def pth(pickle, data=struct.pack("<4f", 1, 2, 3, 4)):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle)
        z.writestr("archive/data/0", data)
        z.writestr("archive/version", b"3\n")
    return buf.getvalue()


def state_dict(value):
    return b"\x80\x02}" + s("w") + value + b"s."


CASES = {
    # _rebuild_tensor_v2 with 3 arguments: candle's rebuild_args does args.remove(3).
    "short_rebuild_args.pth": state_dict(tensor(nargs=3)),
    # 2^40 elements claimed over a 16-byte storage: candle allocates them before reading.
    "huge_tensor_claim.pth": state_dict(tensor(size=(1 << 20, 1 << 20), stride=(1 << 20, 1))),
    # BINUNICODE of 4 GiB in a few bytes: candle allocates the string first.
    "huge_string.pth": b"\x80\x02}X\xff\xff\xff\xff" + b"w" * 8,
    # LONG1 of 255 bytes: candle shifts an i64 by up to 2032 bits (overflow panic).
    "long1_shift.pth": b"\x80\x02}" + s("w") + b"\x8a\xff" + b"\x01" * 255 + b"s.",
    # A list doubled through the memo 64 times: 2^64 objects for candle to clone.
    "memo_doubling.pth": b"\x80\x02]q\x00" + b"h\x00h\x00\x86q\x00" * 64 + b".",
    # A rebuild_from_type_v2 with a one-item tuple: candle removes items 0 and 1.
    "short_from_type.pth": state_dict(cls("torch._tensor", "_rebuild_from_type_v2") + b"(K\x01tR"),
}

# Valid records, for the corpus and the tests: a row-major and a column-major 2x2.
VALID = {
    "handmade_2x2.pth": state_dict(tensor()),
    "handmade_2x2_fortran.pth": state_dict(tensor(stride=(1, 2))),
}

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, pickle in CASES.items():
        (OUT / name).write_bytes(pth(pickle))
    corpus = OUT.parent.parent / "corpus" / "pth"
    corpus.mkdir(parents=True, exist_ok=True)
    for name, pickle in VALID.items():
        (corpus / name).write_bytes(pth(pickle))
