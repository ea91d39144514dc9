"""Hostile input, generated (hypothesis): configs, study files, datasets and pools.

Every input ends in success (a valid config / valid rows) or a :class:`UserError` whose message
is one short line naming the file: never another exception, never a traceback, in bounded time.
``FUZZED`` counts the inputs; the last test prints the totals.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abexrat.core.errors import UserError

FUZZED: Counter[str] = Counter()
MAX_MESSAGE = 300
SLOW_INPUT_S = 5.0
FUZZ = settings(
    max_examples=int(os.environ.get("ABEXRAT_FUZZ_EXAMPLES", "400")),  # per property; raise it to hunt
    deadline=timedelta(seconds=SLOW_INPUT_S),
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
_serial = iter(range(10**9))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def write(folder: Path, suffix: str, data: bytes | str) -> Path:
    path = folder / f"in{next(_serial)}{suffix}"
    path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return path


def clean(kind: str, path: Path, fn: Any) -> Any:
    """Run ``fn``; a UserError must be one short line naming ``path`` (or the folder of a file it names)."""
    FUZZED[kind] += 1
    t0 = time.perf_counter()
    try:
        return fn()
    except UserError as e:
        msg = str(e)
        assert "\n" not in msg and "\r" not in msg, msg
        assert len(msg) < MAX_MESSAGE, f"{len(msg)} characters: {msg[:400]}"
        assert str(path) in msg or str(path.parent) in msg, msg
        return None
    finally:
        assert time.perf_counter() - t0 < SLOW_INPUT_S


# ---------------------------------------------------------------- YAML: configs and study files

KEYS = [
    "name",
    "seed",
    "seeds",
    "data",
    "dataset",
    "aug_ratio",
    "encoder",
    "options",
    "tfidf_dim",
    "model",
    "hidden",
    "dropout",
    "loss",
    "alpha",
    "train",
    "epochs",
    "lr",
    "adversarial",
    "eps",
    "p",
    "method",
    "kind",
    "space",
    "adversarial.eps",
    "train.epochs",
    "model.hidden",
    "type",
    "low",
    "high",
    "log",
    "choices",
    "budget",
    "num_samples",
    "time_budget_s",
    "ablation",
    "factors",
    "full",
    "baselines",
    "tracking",
    "mode",
    "final",
    "limits",
    "trial_time_s",
    "trial_memory_gb",
    "base",
    "early_stopping",
    "resources",
    "cpu",
    "max_failures",
    "objective",
    "metric",
    "<<",
]
SCALARS = [
    "0",
    "-1",
    "1.5",
    "1e999",
    "-1e999",
    ".inf",
    "-.inf",
    ".nan",
    "NaN",
    "0x1F",
    "0o17",
    "1_000",
    "99999999999999999999999999999999999999",
    "9" * 5000,
    "true",
    "no",
    "on",
    "off",
    "~",
    "null",
    "''",
    '"\\x00\\ud800"',
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "rat",
    "focal",
    "osha",
    "search",
    "ablation",
    "categorical",
    "float",
    "../../etc/passwd",
    "/abs/path",
    "x" * 500,
]
TAGS = [
    "!!python/object/apply:os.system ['touch /tmp/abexrat-fuzz-pwned']",
    "!!python/object:builtins.dict {}",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!binary 'AAEC/w=='",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "!!timestamp 2001-12-14",
    "!!float 'x'",
    "!!int '1_0'",
    "!custom x",
    "!<tag:yaml.org,2002:python/tuple> [1]",
    "!!str",
    "!!map {}",
]
PUNCT = [
    "\n",
    "\n  ",
    "\n    ",
    ": ",
    ", ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "*missing",
    "? ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n",
    "#",
    "|\n  ",
    ">\n  ",
    "'",
    '"',
    "\t",
    "\r\n",
    "\ufeff",
    "\x00",
    "\x85",
    "\u2028",
]

fragment = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(SCALARS),
    st.sampled_from(TAGS),
    st.sampled_from(PUNCT),
    st.text(max_size=12),
)
yaml_soup = st.lists(fragment, max_size=60).map("".join)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(SCALARS),
)
plain = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=25,
)


def _config_like() -> st.SearchStrategy[dict[str, Any]]:
    """Valid-looking sections whose values are swapped for anything: wrong types, huge numbers, nesting."""
    return st.fixed_dictionaries(
        {},
        optional={
            "name": plain,
            "seed": st.one_of(st.integers(min_value=-5, max_value=10**40), plain),
            "seeds": st.one_of(st.integers(min_value=-5, max_value=10**6), plain),
            "data": st.one_of(st.fixed_dictionaries({}, optional={"aug_ratio": plain, "dataset": plain}), plain),
            "encoder": st.one_of(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["hybrid", "tfidf-svd", "wordllama", "hf:x", "vllm:y", "z"])},
                    optional={
                        "options": st.dictionaries(
                            st.sampled_from(["tfidf_dim", "weights", "dim", "tfidf_min_df", "pooling", "model", "q"]),
                            plain,
                        )
                    },
                ),
                plain,
            ),
            "model": st.one_of(st.fixed_dictionaries({}, optional={"hidden": plain, "dropout": plain}), plain),
            "train": st.one_of(st.fixed_dictionaries({}, optional={"epochs": plain, "lr": plain}), plain),
            "adversarial": st.one_of(
                st.fixed_dictionaries({}, optional={"eps": plain, "p": plain, "method": plain}), plain
            ),
            "loss": st.one_of(st.fixed_dictionaries({}, optional={"alpha": plain, "gamma": plain}), plain),
        },
    )


def _study_like() -> st.SearchStrategy[dict[str, Any]]:
    param = st.one_of(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["float", "int", "categorical", "bogus"])},
            optional={"low": plain, "high": plain, "log": plain, "step": plain, "choices": plain},
        ),
        plain,
    )
    key = st.sampled_from(
        [
            "adversarial.eps",
            "adversarial.p",
            "train.epochs",
            "model.hidden",
            "name.x",
            "data",
            "",
            "a..b",
            "adversarial.eps.x",
        ]
    )
    return st.fixed_dictionaries(
        {"name": st.one_of(st.just("s"), st.sampled_from(["../../x", "/abs", "a\n", ".hidden", "x" * 65]), plain)},
        optional={
            "kind": st.one_of(st.sampled_from(["search", "ablation"]), plain),
            "trainer": st.one_of(_config_like(), plain),
            "space": st.one_of(st.dictionaries(key, param, max_size=3), plain),
            "ablation": st.one_of(
                st.fixed_dictionaries(
                    {
                        "factors": st.dictionaries(
                            st.sampled_from(["abex", "rat", "../x", "a b"]),
                            st.dictionaries(
                                st.one_of(st.booleans(), st.sampled_from(["on", "off", "x/y"])),
                                st.dictionaries(key, plain, max_size=2),
                                max_size=3,
                            ),
                            max_size=3,
                        )
                    }
                ),
                plain,
            ),
            "budget": st.one_of(st.fixed_dictionaries({}, optional={"num_samples": plain}), plain),
            "baselines": st.one_of(
                st.dictionaries(st.sampled_from(["best", "b", "../b"]), st.dictionaries(key, plain, max_size=2)), plain
            ),
            "limits": st.one_of(
                st.fixed_dictionaries({}, optional={"trial_time_s": plain, "trial_memory_gb": plain}), plain
            ),
            "seed": plain,
            "early_stopping": plain,
            "base": st.one_of(st.sampled_from(["nope.yaml", "", "/dev/null", "."]), plain),
        },
    )


def _load(kind: str, path: Path) -> Any:
    from abexrat.config import TrainConfig, load_train_config
    from abexrat.study.config import Study, load_study

    if kind == "config":
        cfg = clean(kind, path, lambda: load_train_config(path))
        assert cfg is None or isinstance(cfg, TrainConfig)
        if cfg is not None:
            json.dumps(cfg.model_dump(mode="json"), allow_nan=True)  # what metrics.json will hold
    else:
        study = clean(kind, path, lambda: load_study(path))
        assert study is None or isinstance(study, Study)
        if study is not None:
            json.dumps(study.model_dump(mode="json"))  # what study.json will hold
            assert "/" not in study.name and study.name not in (".", "..")
    return None


@FUZZ
@given(text=yaml_soup, kind=st.sampled_from(["config", "study"]))
def test_fuzz_yaml_soup(scratch: Path, text: str, kind: str) -> None:
    _load(kind, write(scratch, ".yaml", text))


@FUZZ
@given(data=st.binary(max_size=400), kind=st.sampled_from(["config", "study"]))
def test_fuzz_yaml_random_bytes(scratch: Path, data: bytes, kind: str) -> None:
    _load(kind, write(scratch, ".yaml", data))


def _yaml_dump(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, allow_unicode=True, sort_keys=False)


@FUZZ
@given(obj=_config_like())
def test_fuzz_config_values(scratch: Path, obj: dict[str, Any]) -> None:
    _load("config", write(scratch, ".yaml", _yaml_dump(obj)))


@FUZZ
@given(obj=_study_like())
def test_fuzz_study_values(scratch: Path, obj: dict[str, Any]) -> None:
    _load("study", write(scratch, ".yaml", _yaml_dump(obj)))


@FUZZ
@given(
    depth=st.integers(1, 20000),
    opener=st.sampled_from(["[", "{a: ", "- ", "{? ", "[&x "]),
    kind=st.sampled_from(["config", "study"]),
)
def test_fuzz_deep_nesting(scratch: Path, depth: int, opener: str, kind: str) -> None:
    closer = {"[": "]", "{a: ": "}", "- ": "", "{? ": "}", "[&x ": "]"}[opener]
    body = opener * depth + "1" + closer * depth if opener != "- " else "\n  " + "- " * depth + "1\n"
    _load(kind, write(scratch, ".yaml", ("trainer: " if kind == "study" else "name: ") + body))


@FUZZ
@given(width=st.integers(2, 12), levels=st.integers(1, 12), recursive=st.booleans())
def test_fuzz_alias_bombs(scratch: Path, width: int, levels: int, recursive: bool) -> None:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    lines.append(f"model: {{hidden: *l{levels}}}")
    if recursive:
        lines.append("encoder: {options: &r {a: *r}}" if width % 2 else "name: &q [*q]")
    _load("config", write(scratch, ".yaml", "\n".join(lines) + "\n"))


VALID_STUDY = """
name: fuzz-valid
seed: 1
trainer:
  data: {dataset: osha, aug_pool: published}
  encoder: {name: hybrid, options: {tfidf_dim: 32, tfidf_min_df: 1}}
  model: {hidden: [32], dropout: 0.1}
  train: {epochs: 4, batch_size: 32, lr: 0.003}
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
  model.hidden: {type: categorical, choices: [[16], [32]]}
budget: {num_samples: 6}
baselines: {no_adv: {adversarial.method: none}}
limits: {trial_time_s: 30, trial_memory_gb: 2}
tracking: {mode: offline}
"""


@FUZZ
@given(
    cut=st.integers(0, 10**6),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
    which=st.sampled_from(["study", "config", "quickstart"]),
)
def test_fuzz_truncated_and_flipped_files(scratch: Path, tiny_config: Path, cut: int, flips: list, which: str) -> None:
    from tests.conftest import REPO

    source = {
        "study": VALID_STUDY.encode(),
        "config": tiny_config.read_bytes(),
        "quickstart": (REPO / "studies" / "quickstart.yaml").read_bytes(),
    }[which]
    data = bytearray(source[: cut % (len(source) + 1)])
    for at, byte in flips:
        if data:
            data[at % len(data)] = byte
    kind = "config" if which == "config" else "study"
    if which == "quickstart":
        data = bytearray(b"\n".join(line for line in bytes(data).split(b"\n") if not line.startswith(b"base:")))
    _load(kind, write(scratch, ".yaml", bytes(data)))


def test_the_valid_files_still_load(scratch: Path, tiny_config: Path) -> None:
    from abexrat.config import load_train_config
    from abexrat.study.config import load_study

    assert load_study(write(scratch, ".yaml", VALID_STUDY)).limits.trial_time_s == 30
    assert load_train_config(tiny_config).encoder.options == {"tfidf_dim": 32, "tfidf_min_df": 1}


# ---------------------------------------------------------------- datasets: JSON, JSONL, CSV, Parquet


def _check_rows(rows: Any) -> None:
    if rows is None:
        return
    assert len(rows.ids) == len(rows.texts) == len(rows.labels) > 0
    assert len(set(rows.ids)) == len(rows.ids)
    assert all(isinstance(t, str) and t for t in rows.texts)
    assert all(isinstance(label, str) and label for label in rows.labels)


def _parse(path: Path, text_column: str | None = None) -> None:
    from abexrat.data import parse_rows
    from abexrat.rows import Columns

    _check_rows(clean(f"rows{path.suffix}", path, lambda: parse_rows(path, Columns(text=text_column))))


cell = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(["FALLS,SLIPS,TRIPS", "", " ", "x" * 400]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
row = st.dictionaries(st.sampled_from(["id", "idx", "title", "summary", "gold", "text", "other", ""]), cell, max_size=6)
json_value = st.recursive(
    cell,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=20,
)


@FUZZ
@given(
    rows=st.one_of(st.lists(row, max_size=8), json_value),
    text_column=st.sampled_from([None, "text", "x" * 300]),
    suffix=st.sampled_from([".json", ".jsonl"]),
)
def test_fuzz_json_rows(scratch: Path, rows: Any, text_column: str | None, suffix: str) -> None:
    if suffix == ".json":
        data = json.dumps(rows, allow_nan=True)
    else:
        data = "\n".join(json.dumps(r, allow_nan=True) for r in (rows if isinstance(rows, list) else [rows]))
    _parse(write(scratch, suffix, data), text_column)


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass"))),
    suffix=st.sampled_from([".json", ".jsonl", ".csv", ".parquet"]),
)
def test_fuzz_data_random_bytes(scratch: Path, data: bytes, suffix: str) -> None:
    _parse(write(scratch, suffix, data))


@FUZZ
@given(depth=st.integers(1, 200000), suffix=st.sampled_from([".json", ".jsonl"]))
def test_fuzz_data_deep_json(scratch: Path, depth: int, suffix: str) -> None:
    _parse(write(scratch, suffix, '{"title": ' + "[" * depth + "]" * depth + ', "gold": "x"}'))


@FUZZ
@given(
    rows=st.lists(
        st.lists(
            st.one_of(st.text(max_size=20), st.sampled_from(['"', '""', ",", "\n", "\x00"])), min_size=1, max_size=5
        ),
        max_size=8,
    ),
    header=st.sampled_from(["title,summary,gold", "text,gold", "gold", "", "id,title,gold,id"]),
)
def test_fuzz_csv(scratch: Path, rows: list[list[str]], header: str) -> None:
    body = "\n".join(",".join(r) for r in rows)
    _parse(write(scratch, ".csv", header + "\n" + body))


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes | None:
    buf = io.BytesIO()
    try:
        pq.write_table(pa.Table.from_pylist(rows), buf)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None  # pyarrow cannot make or write a table of these: nothing to read back
    return buf.getvalue()


@FUZZ
@given(rows=st.lists(row, min_size=1, max_size=6), cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_fuzz_parquet(scratch: Path, rows: list[dict[str, Any]], cut: int | None) -> None:
    data = _parquet_bytes(rows)
    if data is None:
        return
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    _parse(write(scratch, ".parquet", data))


@FUZZ
@given(
    cut=st.integers(0, 10**7),
    suffix=st.sampled_from([".json", ".jsonl", ".csv", ".parquet"]),
    flip=st.one_of(st.none(), st.tuples(st.integers(0, 10**7), st.integers(0, 255))),
)
def test_fuzz_truncated_datasets(scratch: Path, tiny_dir: Path, cut: int, suffix: str, flip: Any) -> None:
    rows = json.loads((tiny_dir / "val.json").read_text())
    if suffix == ".json":
        data = json.dumps(rows).encode()
    elif suffix == ".jsonl":
        data = "\n".join(json.dumps(r) for r in rows).encode()
    elif suffix == ".csv":
        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(pa.Table.from_pylist(rows), buf)
        data = buf.getvalue()
    else:
        data = _parquet_bytes(rows) or b""
    data = bytearray(data[: cut % (len(data) + 1)])
    if flip and data:
        data[flip[0] % len(data)] = flip[1]
    _parse(write(scratch, suffix, bytes(data)))


# ---------------------------------------------------------------- synthetic pools (Parquet)


@pytest.fixture(scope="module")
def tiny_ds(tiny_dir: Path) -> Any:
    from abexrat.data import load_splits

    return load_splits(tiny_dir / "train.json", tiny_dir / "val.json", tiny_dir / "test.json")


pool_cell = st.one_of(cell, st.sampled_from(["0", "1", "FALLS,SLIPS,TRIPS", "TRANSPORTATION INCIDENTS"]))


@FUZZ
@given(
    rows=st.lists(
        st.dictionaries(st.sampled_from(["id", "source_id", "label", "text", "x"]), pool_cell, max_size=5),
        min_size=1,
        max_size=6,
    ),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_fuzz_pool(scratch: Path, tiny_ds: Any, rows: list[dict[str, Any]], cut: int | None) -> None:
    from abexrat.data import Split
    from abexrat.pool import read_pool

    data = _parquet_bytes(rows)
    if data is None:
        return
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    path = write(scratch, ".parquet", data)
    split = clean("pool", path, lambda: read_pool(path, tiny_ds))
    if split is not None:
        assert isinstance(split, Split) and len(split.ids) == len(split.texts) == len(split.labels)
        assert all(0 <= y < len(tiny_ds.classes) for y in split.labels)


# ---------------------------------------------------------------- the command line


NASTY = {
    "python tag": "name: !!python/object/apply:os.system ['touch /tmp/abexrat-fuzz-pwned']\n",
    "deep": "name: " + "[" * 50000 + "]" * 50000 + "\n",
    "recursive alias": "name: &a [*a]\n",
    "bomb": "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdefg", "bcdefgh")),
    "binary": "name: !!binary 'AAEC/w=='\n",
    "date": "encoder: {name: hybrid, options: {tfidf_dim: 2001-12-14}}\n",
    "wrong option type": "encoder: {name: hybrid, options: {tfidf_dim: many}}\n",
    "huge seed": "seed: 99999999999999999999999999\n",
    "truncated": "trainer:\n  model: {hidden: [32, ",
    "not utf-8": b"name: \xff\xfe\xfd\n",
    "name with a newline": 'name: "a\\n"\nspace: {adversarial.p: {type: float, low: 0, high: 1}}\n',
    "int range to infinity": "name: s\nspace: {train.epochs: {type: int, low: 1, high: .inf}}\n",
}


STUDY_ONLY = {"name with a newline", "int range to infinity"}


@pytest.mark.parametrize("case", list(NASTY))
@pytest.mark.parametrize("command", ["train", "study"])
def test_nasty_files_through_the_cli(case: str, command: str, tmp_path: Path, cli) -> None:  # noqa: ANN001
    data = NASTY[case]
    if command == "train" and case in STUDY_ONLY:
        pytest.skip("a study-file problem")
    path = tmp_path / "nasty.yaml"
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    out = tmp_path / "out"
    args = ("train", path, "--out", out) if command == "train" else ("study", "run", path, "--out", out)
    FUZZED[f"cli {command}"] += 1
    r = cli(*args)
    assert r.code == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert str(path) in " ".join(r.stderr.split())
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
    assert not Path("/tmp/abexrat-fuzz-pwned").exists()


def test_a_bad_dataset_behind_a_valid_study_leaves_no_output(tmp_path: Path, cli) -> None:  # noqa: ANN001
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "train.json").write_text('[{"title": "a", "gold": "x"}, {"title": ')
    for split in ("val", "test"):
        (bad / f"{split}.json").write_text("[]")
    study = tmp_path / "s.yaml"
    study.write_text(
        f'name: s\ntrainer: {{data: {{dataset: "{bad}"}}}}\n'
        "space: {adversarial.p: {type: float, low: 0, high: 1}}\ntracking: {mode: disabled}\n"
    )
    r = cli("study", "run", study, "--out", tmp_path / "out")
    assert r.code == 2 and "train.json: not valid JSON" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_zz_inputs_fuzzed() -> None:
    total = sum(FUZZED.values())
    print(f"\ninputs fuzzed: {total} ({', '.join(f'{k} {v}' for k, v in sorted(FUZZED.items()))})")
    if total:  # 0 when this test runs alone
        assert total >= 1000
