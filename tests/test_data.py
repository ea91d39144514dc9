"""Datasets: the OSHA splits, user tables, bad input, splits and folds, ratio selection, fetch."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from abexrat.core.errors import UserError
from abexrat.data import OSHA_CLASSES, load_table, select_synthetic, stratified_folds
from abexrat.osha import OSHA_FILES, load_osha, resolve_data_dir
from abexrat.rows import Columns
from abexrat.text import compose_text, split_title


def test_osha_splits_load_with_published_counts(osha_dir: Path) -> None:
    ds = load_osha(osha_dir)
    assert ds.classes == list(OSHA_CLASSES)
    assert (len(ds.train), len(ds.synthetic), len(ds.val), len(ds.test)) == (3576, 2785, 447, 447)
    counts = ds.class_counts()
    assert list(counts["train"].values()) == [1252, 1164, 744, 191, 178, 37, 10]
    assert list(counts["test"].values()) == [156, 146, 93, 24, 23, 4, 1]
    # Synthetic rows: 5 per source for TRANSPORTATION and FIRES, 20 for OVEREXERTION and VIOLENCE.
    assert list(counts["synthetic"].values()) == [0, 0, 0, 955, 890, 740, 200]
    assert set(ds.synthetic.source_ids) <= set(ds.train.ids)
    assert ds.synthetic.ids[0].split("-aug-")[0] == ds.synthetic.source_ids[0]
    # text = title + summary with whitespace collapsed
    assert "  " not in ds.test.texts[0] and ds.test.texts[0].startswith("Employee Receives Multiple Fractures")


def test_compose_text() -> None:
    assert compose_text("  A  Title ", " the   summary\n") == "A Title\nthe summary"
    assert compose_text(None, "only  summary\nline two") == "only summary line two"
    assert compose_text("A title", None) == "A title"
    assert compose_text("", "") == ""
    assert split_title("A Title\nthe summary") == ("A Title", "the summary")
    assert split_title("only summary") == ("", "only summary")


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABEXRAT_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("ABEXRAT_DATA_DIR")
    monkeypatch.setenv("ABEXRAT_CACHE_DIR", str(tmp_path / "cache"))
    assert resolve_data_dir() == tmp_path / "cache" / "data" / "osha"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_user_table_gets_stratified_splits(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    rows = [
        {"report": f"text {i} {' '.join(rng.choice(list('xyzw'), 5))}", "event": lab} for i, lab in enumerate(labels)
    ]
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        path.write_text("report,event\n" + "\n".join(f"{r['report']},{r['event']}" for r in rows))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    ds = load_table(path, Columns(text="report", label="event"), val_fraction=0.1, test_fraction=0.2, seed=1)
    assert ds.classes == ["a", "b", "c"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (70, 10, 20)
    assert np.bincount(ds.test.labels).tolist() == [12, 6, 2]
    assert np.bincount(ds.val.labels).tolist() == [6, 3, 1]
    assert not set(ds.train.ids) & set(ds.test.ids)


def test_stratified_folds_cover_every_row_once() -> None:
    y = np.array([0] * 50 + [1] * 20 + [2] * 5)
    folds = stratified_folds(y, 5, seed=0)
    held = np.concatenate([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(75))
    for train, held_out in folds:
        assert np.bincount(y[held_out]).tolist() == [10, 4, 1]
        assert not set(train) & set(held_out)


def test_select_synthetic_takes_a_seeded_prefix_per_class(osha_dir: Path) -> None:
    pool = load_osha(osha_dir).synthetic
    assert len(select_synthetic(pool, 7, 0.0, 0)) == 0
    assert len(select_synthetic(pool, 7, 1.0, 0)) == 2785
    half = select_synthetic(pool, 7, 0.5, 0)
    per_class = np.bincount(pool.labels[half], minlength=7).tolist()
    assert per_class == [0, 0, 0, 478, 445, 370, 100]  # ceil(0.5 n) of 955, 890, 740, 200
    # The order is fixed by the seed: a smaller ratio takes a prefix of a larger one's rows.
    assert set(select_synthetic(pool, 7, 0.2, 0)) < set(half)
    assert set(select_synthetic(pool, 7, 0.5, 1)) != set(half)
    with pytest.raises(UserError, match="aug_ratio"):
        select_synthetic(pool, 7, 1.5, 0)


# ---------------------------------------------------------------- bad input: exit 2, file and row named


def _folder(tmp_path: Path, tiny_dir: Path) -> Path:
    d = tmp_path / "ds"
    shutil.copytree(tiny_dir, d)
    return d


def _config(tmp_path: Path, dataset: Path) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(f'data: {{dataset: "{dataset}"}}\n')
    return p


def _edit(path: Path, fn) -> None:  # noqa: ANN001
    rows = json.loads(path.read_text())
    fn(rows)
    path.write_text(json.dumps(rows))


BAD_INPUTS = {
    "missing file": (lambda d: (d / "val.json").unlink(), "has a train file but no val and test files"),
    "malformed json": (
        lambda d: (d / "test.json").write_text('[{"idx": 1, "gold": '),
        "test.json: not valid JSON (line 1",
    ),
    "missing label column": (
        lambda d: _edit(d / "val.json", lambda r: r[3].pop("gold")),
        "val.json: row 3: missing column 'gold'",
    ),
    "missing text columns": (
        lambda d: _edit(d / "train.json", lambda r: [r[5].pop("title"), r[5].pop("summary")]),
        "train.json: row 5: missing column 'title' and 'summary'",
    ),
    "empty text": (
        lambda d: _edit(d / "test.json", lambda r: r[2].update(title="  ", summary="")),
        "test.json: row 2: empty or null text",
    ),
    "null text": (
        lambda d: _edit(d / "test.json", lambda r: r[4].update(title=None, summary=None)),
        "test.json: row 4: empty or null text",
    ),
    "unseen label": (
        lambda d: _edit(d / "val.json", lambda r: r[7].update(gold="ELECTRICAL")),
        "val.json: row 7: label 'ELECTRICAL' never appears in training",
    ),
    "duplicate id": (
        lambda d: _edit(d / "train.json", lambda r: r[9].update(id=r[8]["id"])),
        "train.json: row 9: duplicate id",
    ),
    "same report in train and test": (
        lambda d: _edit(
            d / "test.json",
            lambda r: r[1].update(
                title=json.loads((d / "train.json").read_text())[0]["title"],
                summary=json.loads((d / "train.json").read_text())[0]["summary"],
            ),
        ),
        "test.json: row 1: the same report as",
    ),
    "wrong type": (
        lambda d: _edit(d / "train.json", lambda r: r[0].update(summary=42)),
        "train.json: row 0: column 'summary' must be text",
    ),
    "not a list": (lambda d: (d / "val.json").write_text('{"rows": []}'), "val.json: expected a JSON list of rows"),
    "orphan synthetic row": (
        lambda d: _edit(
            d / "train.json",
            lambda r: r.append({"id": "99999-aug-0", "title": "x y z", "summary": "", "gold": r[0]["gold"]}),
        ),
        "names source '99999'",
    ),
    "non-utf8": (
        lambda d: (d / "val.json").write_bytes(b'[{"idx": 1, "summary": "\xff\xfe", "gold": "x"}]'),
        "val.json: not UTF-8",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_short_error_with_exit_2(case: str, tmp_path: Path, tiny_dir: Path, cli) -> None:  # noqa: ANN001
    d = _folder(tmp_path, tiny_dir)
    damage, message = BAD_INPUTS[case]
    damage(d)
    r = cli("data", "check", _config(tmp_path, d))
    assert r.code == 2, r.stdout + r.stderr
    assert message in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3


def test_osha_folder_missing_file_names_it(tmp_path: Path, osha_dir: Path, cli) -> None:  # noqa: ANN001
    shutil.copy(osha_dir / "val.json", tmp_path / "val.json")
    r = cli("data", "check", "--data-dir", tmp_path)
    assert r.code == 2
    assert f"{tmp_path / 'train_aug.json'}: file not found" in " ".join(r.stderr.split())


def test_data_check_prints_counts(osha_dir: Path, cli) -> None:  # noqa: ANN001
    r = cli("data", "check", "--data-dir", osha_dir)
    assert r.code == 0, r.stderr
    flat = " ".join(r.stdout.split())
    assert "VIOLENCE AND OTHER INJURIES BY PERSONS OR ANIMALS │ 10 │ 200 │ 1 │ 1" in flat
    assert "total │ 3576 │ 2785 │ 447 │ 447" in flat
    assert "no problems found" in flat


# ---------------------------------------------------------------- fetch from a local HTTP server


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()


def test_fetch_downloads_and_verifies(http_root: tuple[str, Path], osha_dir: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    url, root = http_root
    for name in OSHA_FILES:
        shutil.copy(osha_dir / name, root / name)
    dest = tmp_path / "dest"
    r = cli("data", "fetch", "osha", "--data-dir", dest, "--url", url)
    assert r.code == 0, r.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(OSHA_FILES)
    assert (dest / "test.json").read_bytes() == (osha_dir / "test.json").read_bytes()
    assert len(load_osha(dest).test) == 447


def test_fetch_rejects_a_tampered_file(http_root: tuple[str, Path], osha_dir: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    url, root = http_root
    for name in OSHA_FILES:
        shutil.copy(osha_dir / name, root / name)
    (root / "val.json").write_bytes((osha_dir / "val.json").read_bytes().replace(b"FIRES", b"FIRED", 1))
    dest = tmp_path / "dest"
    r = cli("data", "fetch", "osha", "--data-dir", dest, "--url", url)
    assert r.code == 2
    assert "val.json: sha256 mismatch" in r.stderr
    assert not (dest / "val.json").exists()  # nothing half-written or unverified


def test_fetch_reports_an_unreachable_server(tmp_path: Path, cli) -> None:  # noqa: ANN001
    r = cli("data", "fetch", "osha", "--data-dir", tmp_path, "--url", "http://127.0.0.1:9")
    assert r.code == 2 and "download failed" in r.stderr
