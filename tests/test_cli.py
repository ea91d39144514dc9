"""The CLI as a user runs it: train -> metrics.json and models, evaluate, predict, config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from tests.conftest import REPO


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_config: Path) -> Path:
    from abexrat.cli import main

    out = tmp_path_factory.mktemp("run")
    with pytest.raises(SystemExit) as e:
        main(["train", str(tiny_config), "--out", str(out), "--seeds", "3"])
    assert e.value.code == 0
    return out


def test_train_writes_metrics_with_the_contracted_layout(trained: Path) -> None:
    m = json.loads((trained / "metrics.json").read_text())
    assert m["seeds"] == [0, 1, 2]
    assert m["config"]["adversarial"] == {**m["config"]["adversarial"], "method": "rat", "eps": 0.3, "p": 0.5}
    for split in ("val", "test"):
        for key in ("macro_f1", "weighted_f1", "accuracy"):
            s = m[split][key]
            assert set(s) == {"mean", "std", "per_seed"} and len(s["per_seed"]) == 3
            assert s["mean"] == pytest.approx(sum(s["per_seed"]) / 3)
        assert set(m[split]["per_class"]) == set(m["classes"]) and len(m["classes"]) == 7
        conf = m[split]["confusion"]["total"]
        assert sum(map(sum, conf)) == 3 * 42  # 7 classes x 6 reports, 3 seeds
    # The tiny classes are learnable: the run is a real one, not a constant predictor.
    assert m["val"]["macro_f1"]["mean"] > 0.7
    # 133 originals + 3 synthetic per minority source (12+10+6+5 sources) at r = 1
    assert m["train_size"] == 133 + 3 * 33


def test_train_writes_one_safetensors_model_per_seed(trained: Path) -> None:
    for seed in (0, 1, 2):
        folder = trained / "models" / f"seed-{seed}"
        meta = json.loads((folder / "model.json").read_text())
        state = load_file(str(folder / "model.safetensors"))
        assert meta["seed"] == seed and meta["dims"] == [state["layers.0.weight"].shape[0], 64, 7]
        assert state["layers.1.weight"].shape == (64, 7)
    assert not list(trained.rglob("*.pt")) and not list(trained.rglob("*.pkl"))
    assert json.loads((trained / "encoder" / "encoder.json").read_text())["spec"] == "hybrid"


def test_evaluate_on_the_test_file_reproduces_train_metrics(trained: Path, tiny_dir: Path, cli, tmp_path: Path) -> None:  # noqa: ANN001
    m = json.loads((trained / "metrics.json").read_text())
    r = cli("evaluate", trained, tiny_dir / "test.json", "--json", tmp_path / "eval.json")
    assert r.code == 0, r.stderr
    e = json.loads((tmp_path / "eval.json").read_text())
    for key in ("macro_f1", "weighted_f1", "accuracy"):
        assert e[key] == pytest.approx(m["test"][key]["mean"], abs=1e-9)
    assert e["per_class"]["FIRES AND EXPLOSIONS"]["f1"] == pytest.approx(
        m["test"]["per_class"]["FIRES AND EXPLOSIONS"]["f1"]["mean"]
    )
    assert f"macro-F1 {100 * m['test']['macro_f1']['mean']:.2f}" in r.stdout


def test_an_ensemble_run_saves_its_mlps_per_seed_and_evaluates_as_trained(
    tiny_config: Path,
    tiny_dir: Path,
    cli,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    run = tmp_path / "ens"
    r = cli("train", tiny_config, "--set", "model.ensemble=3", "--set", "train.epochs=10", "--out", run)
    assert r.code == 0, r.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["seeds"] == [0, 1] and m["config"]["model"]["ensemble"] == 3
    assert len(m["test"]["macro_f1"]["per_seed"]) == 2
    assert sum(map(sum, m["test"]["confusion"]["total"])) == 2 * 42  # per seed, not per MLP
    for seed in (0, 1):
        folder = run / "models" / f"seed-{seed}"
        state = load_file(str(folder / "model.safetensors"))
        assert state["layers.1.weight"].shape == (3, 64, 7) and state["layers.1.bias"].shape == (3, 7)
        assert json.loads((folder / "model.json").read_text())["ensemble"] == 3
    e = cli("evaluate", run, tiny_dir / "test.json", "--json", tmp_path / "eval.json")
    assert e.code == 0, e.stderr
    scores = json.loads((tmp_path / "eval.json").read_text())
    for key in ("macro_f1", "weighted_f1", "accuracy"):
        assert scores[key] == pytest.approx(m["test"][key]["mean"], abs=1e-9)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_cuda_device_without_a_gpu_exits_2_naming_the_key(tiny_config: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    r = cli("train", tiny_config, "--set", "train.device=cuda", "--out", tmp_path / "run")
    assert r.code == 2 and "train.device: cuda asked for, but torch sees 0 CUDA GPU(s)" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_evaluate_accepts_jsonl_and_rejects_unknown_labels(trained: Path, tiny_dir: Path, cli, tmp_path: Path) -> None:  # noqa: ANN001
    rows = json.loads((tiny_dir / "test.json").read_text())
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert cli("evaluate", trained, tmp_path / "t.jsonl").code == 0
    rows[3]["gold"] = "ELECTRICAL"
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    r = cli("evaluate", trained, tmp_path / "bad.jsonl")
    assert r.code == 2 and "bad.jsonl: row 3: label column 'gold': 'ELECTRICAL' is not a class" in " ".join(
        r.stderr.split()
    )


def test_predict_prints_label_and_probabilities(trained: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    rows = [
        {"id": "a", "summary": "the worker fell from the ladder on the roof scaffold"},
        {"id": "b", "summary": "a truck and a forklift collision on the highway, the driver"},
    ]
    (tmp_path / "in.json").write_text(json.dumps(rows))
    r = cli("predict", trained, tmp_path / "in.json", "--jsonl")
    assert r.code == 0, r.stderr
    preds = [json.loads(line) for line in r.stdout.splitlines()]
    assert [p["id"] for p in preds] == ["a", "b"]
    assert [p["label"] for p in preds] == ["FALLS,SLIPS,TRIPS", "TRANSPORTATION INCIDENTS"]
    for p in preds:
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert max(p["probabilities"], key=p["probabilities"].get) == p["label"]


def test_predict_reads_standard_input_as_text_lines_or_json_lines(
    trained: Path,
    cli,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import io

    text = "the worker fell from the ladder on the roof scaffold"
    row = {"id": "b", "summary": "a truck and a forklift collision on the highway, the driver"}
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{text}\n\n{json.dumps(row)}\n"))
    r = cli("predict", trained, "-", "--jsonl")
    assert r.code == 0, r.stderr
    preds = [json.loads(line) for line in r.stdout.splitlines()]
    # a bare line is one report's text (its id its row number); a JSON line is a row with its id
    assert [p["id"] for p in preds] == ["0", "b"]
    assert [p["label"] for p in preds] == ["FALLS,SLIPS,TRIPS", "TRANSPORTATION INCIDENTS"]
    # the same reports from a file get the same probabilities
    (tmp_path / "in.jsonl").write_text(json.dumps({"summary": text}) + "\n" + json.dumps(row) + "\n")
    from_file = [
        json.loads(line) for line in cli("predict", trained, tmp_path / "in.jsonl", "--jsonl").stdout.splitlines()
    ]
    assert [p["probabilities"] for p in from_file] == [p["probabilities"] for p in preds]

    # without --jsonl: one tab-separated line per report, never wrapped however long the labels
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{text}\n{json.dumps(row)}\n"))
    lines = cli("predict", trained, "-").stdout.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["0", preds[0]["label"]], ["b", preds[1]["label"]]]

    monkeypatch.setattr("sys.stdin", io.StringIO('{"summary": "unclosed\n'))
    r = cli("predict", trained, "-")
    assert r.code == 2 and "<stdin>: line 1: not valid JSON" in r.stderr
    monkeypatch.setattr("sys.stdin", io.StringIO('{"a": ' * 100_000 + "\n"))  # nested past Python's recursion limit
    r = cli("predict", trained, "-")
    assert r.code == 2 and "<stdin>: cannot read" in r.stderr
    r = cli("predict", trained, "-", "--stream")
    assert r.code == 2 and "--stream reads a file" in r.stderr


def test_missing_run_folder_is_a_clean_error(tmp_path: Path, cli) -> None:  # noqa: ANN001
    r = cli("predict", tmp_path / "nope", tmp_path / "in.json")
    assert r.code == 2 and "not a finished run" in r.stderr


BAD_CONFIGS = {
    "not yaml": ("model: [unclosed\n", "not valid YAML (line"),
    "not a mapping": ("- 1\n- 2\n", "expected a mapping of keys at the top level"),
    # An empty file is a mistake (a wrong path, an unsaved editor), never "train the defaults".
    "empty": ("", "empty; expected a mapping of keys at the top level"),
    "only comments": ("# model:\n#   hidden: [64]\n", "empty; expected a mapping of keys at the top level"),
    "a scalar": ("42\n", "expected a mapping of keys at the top level, got int"),
    "unknown key": ("model:\n  hiden: [64]\n", "model.hiden: unknown key"),
    "unknown section": ("optimizer: {lr: 0.1}\n", "optimizer: unknown key"),
    "wrong type": ("train:\n  epochs: many\n", "train.epochs: Input should be a valid integer"),
    "p out of range": ("adversarial:\n  p: 1.5\n", "adversarial.p: Input should be less than or equal to 1 (got 1.5)"),
    "negative eps": ("adversarial:\n  eps: -0.1\n", "adversarial.eps: Input should be greater than or equal to 0"),
    "unknown method": ("adversarial:\n  method: magic\n", "adversarial.method: Value error, unknown method 'magic'"),
    "python tag": ("name: !!python/object/apply:os.system ['touch /tmp/abexrat-pwned']\n", "not valid YAML"),
    "huge hidden": ("model:\n  hidden: [100000000]\n", "model.hidden"),
    "alias bomb": (
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcde", "bcdef"))
        + "model: {hidden: *f}\n",
        "more than 100000 values once aliases are expanded",
    ),
    "non-utf8": ("name: \udcff\n", "not UTF-8"),
    "unknown device": ("train:\n  device: tpu\n", "train.device: String should match pattern"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_names_the_key_and_exits_2(case: str, tmp_path: Path, cli) -> None:  # noqa: ANN001
    text, message = BAD_CONFIGS[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(text.encode("utf-8", "surrogateescape"))
    r = cli("train", cfg, "--out", tmp_path / "out")
    assert r.code == 2, r.stdout + r.stderr
    assert message in " ".join(r.stderr.split())
    assert str(cfg) in " ".join(r.stderr.split())
    assert not (tmp_path / "out").exists()
    assert not Path("/tmp/abexrat-pwned").exists()


def test_set_overrides_are_validated(tiny_config: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    r = cli("train", tiny_config, "--set", "adversarial.p=2", "--out", tmp_path / "o")
    assert r.code == 2 and "adversarial.p: Input should be less than or equal to 1" in r.stderr
    r = cli("train", tiny_config, "--set", "noequals", "--out", tmp_path / "o")
    assert r.code == 2 and "expected key=value" in r.stderr


def test_the_installed_command_exits_2_without_a_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("adversarial: {p: 1.5}\n")
    exe = Path(sys.executable).parent / "abexrat"
    proc = subprocess.run(
        [str(exe), "train", str(cfg), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "adversarial.p" in proc.stderr and "Traceback" not in proc.stderr


def test_files_too_large_for_memory_stream_through_ray_data(
    trained: Path,
    tiny_dir: Path,
    cli,  # noqa: ANN001
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """evaluate/predict on a file that does not fit stream it (Ray Data) and give the same answers."""
    import ray

    import abexrat.data

    rows = json.loads((tiny_dir / "test.json").read_text())
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    whole = cli("evaluate", trained, tmp_path / "t.jsonl", "--json", tmp_path / "whole.json")
    lines = cli("predict", trained, tmp_path / "t.jsonl", "--jsonl")
    assert whole.code == 0 and lines.code == 0
    # Now pretend memory is short: the file no longer fits, and both commands stream it.
    monkeypatch.setattr(abexrat.data, "available_memory", lambda: 100)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        r = cli("evaluate", trained, tmp_path / "t.jsonl", "--json", tmp_path / "streamed.json")
        assert r.code == 0, r.stderr
        a, b = json.loads((tmp_path / "whole.json").read_text()), json.loads((tmp_path / "streamed.json").read_text())
        assert b["n"] == len(rows) == 42
        for key in ("macro_f1", "weighted_f1", "accuracy", "per_class", "std"):
            assert b[key] == pytest.approx(a[key], abs=1e-9) if not isinstance(a[key], dict) else b[key] == a[key]
        p = cli("predict", trained, tmp_path / "t.jsonl", "--jsonl")
        assert p.code == 0, p.stderr
        got = [json.loads(x) for x in p.stdout.splitlines()]
        want = [json.loads(x) for x in lines.stdout.splitlines()]
        assert [g["id"] for g in got] == [w["id"] for w in want] and [g["label"] for g in got] == [
            w["label"] for w in want
        ]
        for g, w in zip(got, want):
            assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-4)
        # A bad row deep in a streamed file: one line naming the file and the row, exit 2.
        rows[30]["gold"] = "ELECTRICAL"
        (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        r = cli("evaluate", trained, tmp_path / "bad.jsonl", "--stream")
        msg = " ".join(r.stderr.split())
        assert r.code == 2 and f"bad.jsonl: row id '{rows[30]['idx']}': label column 'gold': 'ELECTRICAL'" in msg
        assert "Traceback" not in r.stderr
        # A JSON list cannot be streamed: say how to convert it.
        r = cli("evaluate", trained, tiny_dir / "test.json")
        assert r.code == 2 and "convert a JSON list to JSON Lines" in " ".join(r.stderr.split())
    finally:
        ray.shutdown()
