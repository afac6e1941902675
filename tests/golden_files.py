"""The SHA-256 of the weights every committed ``.mrc`` decodes to, and the table that pins them.

    python tests/golden_files.py    # rewrite tests/golden/decoded-weights.json

Rewrite the table only on purpose: a published file that decodes differently breaks every copy
of it in the world. A change to the layout, the generator or the format is a new version that
keeps decoding the old files as before.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

import miracle

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
TABLE = Path(__file__).resolve().parent / "golden" / "decoded-weights.json"


def committed_files() -> list[Path]:
    return sorted(RESULTS.rglob("*.mrc"))


def decoded_sha256(path: Path) -> str:
    """Over every tensor of the decoded state_dict: name, dtype, shape and raw bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(miracle.decompress(path).state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def key(path: Path) -> str:
    return path.relative_to(RESULTS).as_posix()


if __name__ == "__main__":
    torch.set_num_threads(1)
    table = {key(path): decoded_sha256(path) for path in committed_files()}
    TABLE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"{len(table)} files -> {TABLE.relative_to(ROOT)}")
