"""The published OSHA data: the three files of the ABEX-RAT paper at a pinned commit, where they
are found on disk, how they are fetched and checked, and how they load as a :class:`Dataset`."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Any

from abexrat.core.errors import UserError
from abexrat.core.io import cache_dir, clip, sha256_file, write_bytes
from abexrat.data import AUG_ID, Dataset, assemble_dataset, parse_rows

OSHA_COMMIT = "ac3a80cc4ba2b0c7a327c86f7d97d9fd1dd62200"


OSHA_URL = f"https://raw.githubusercontent.com/nxcc-lab/ABEX-RAT/{OSHA_COMMIT}/data"


OSHA_FILES: dict[str, str] = {
    "train_aug.json": "a8512aaed17f857245d3bbd1a8b13d64a42ae091759109489ecc3ee9d11662b0",
    "val.json": "c4d4ff54b819193adaf7a84a64f3d9f4ac083d929ca153a34cbb6fb618c0336f",
    "test.json": "f8032b6f87aea091e1cfff14da187ad27226da5f674a0a6d157d8e91d471871e",
}


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``--data-dir``, then ``$ABEXRAT_DATA_DIR``, then the user cache."""
    if data_dir:
        return Path(data_dir)
    if env := os.environ.get("ABEXRAT_DATA_DIR"):
        return Path(env)
    return cache_dir() / "data" / "osha"


def load_osha(data_dir: str | Path | None = None) -> Dataset:
    """The paper's splits: originals (int id) and synthetic rows (``"<src>-aug-<k>"``) of train_aug.json."""
    d = resolve_data_dir(data_dir)
    missing = [f for f in OSHA_FILES if not (d / f).is_file()]
    if missing:
        raise UserError(f"{d / missing[0]}: file not found (run `abexrat data fetch osha` or pass --data-dir)")
    train_rows = parse_rows(d / "train_aug.json")
    orig = [i for i, rid in enumerate(train_rows.ids) if not AUG_ID.match(rid)]
    synth = [i for i, rid in enumerate(train_rows.ids) if AUG_ID.match(rid)]
    val_rows, test_rows = parse_rows(d / "val.json"), parse_rows(d / "test.json")
    return assemble_dataset("osha", train_rows, orig, synth, val_rows, test_rows)


def fetch_osha(dest: str | Path | None = None, base_url: str | None = None, progress: Any = None) -> list[Path]:
    """Download the three OSHA files from the pinned commit and verify their sha256.

    ``base_url`` (or ``$ABEXRAT_OSHA_URL``) replaces the GitHub address, e.g. for a mirror.
    A file already present with the right digest is not downloaded again.
    """
    dest = resolve_data_dir(dest)
    base = (base_url or os.environ.get("ABEXRAT_OSHA_URL") or OSHA_URL).rstrip("/")
    out = []
    for name, digest in OSHA_FILES.items():
        target = dest / name
        if target.is_file() and sha256_file(target) == digest:
            out.append(target)
            continue
        url = f"{base}/{name}"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                data = resp.read()
        except Exception as e:
            raise UserError(f"{url}: download failed ({clip(str(e), 160)})") from None
        import hashlib

        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise UserError(f"{url}: sha256 mismatch (expected {digest[:12]}..., got {got[:12]}...); nothing written")
        write_bytes(target, data)
        if progress:
            progress(name, len(data))
        out.append(target)
    return out
