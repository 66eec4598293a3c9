"""Read (and, for tests, write) ``.safetensors`` files without the safetensors package.

The format is small and documented: an 8-byte little-endian header length, a
JSON header mapping tensor names to ``dtype``, ``shape`` and ``data_offsets``
(relative to the end of the header), then the raw little-endian bytes. Hugging
Face model folders hold ``model.safetensors``; reading it here avoids a new
dependency for one file format.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from espnet_allinone.errors import AllInOneError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(AllInOneError, ValueError):
    """A file that is not a readable safetensors file."""


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the file (copies, so the file is not kept open)."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise SafetensorsError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError):
        raise SafetensorsError(f"{path}: no safetensors JSON header") from None
    body = memoryview(data)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise SafetensorsError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')}")
        start, end = info["data_offsets"]
        flat = torch.frombuffer(bytearray(body[start:end]), dtype=dtype) if end > start else \
            torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(info["shape"])
    return out


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write ``tensors`` as a safetensors file (tests build tiny Hugging Face folders)."""
    header, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        raw = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))
