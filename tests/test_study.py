"""Studies on real Ray Tune + Optuna + offline W&B: search, ablation, bad files, interrupt and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.test_card import check_card
from tests.wandb_files import read_runs


def study_file(tmp: Path, tiny_dir: Path, name: str, body: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"""
name: {name}
trainer:
  data: {{dataset: "{tiny_dir}", aug_pool: published}}
  encoder: {{name: hybrid, options: {{tfidf_dim: 32, tfidf_min_df: 1}}}}
  model: {{hidden: [32], dropout: 0.1}}
  train: {{epochs: 4, batch_size: 32, lr: 0.003}}
tracking: {{mode: offline}}
{body}
""")
    return path


@pytest.fixture(scope="module")
def local_ray():  # noqa: ANN201
    """One embedded Ray for this module's in-process studies (ray.init costs ~4 s)."""
    import ray

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ.pop("RAY_ADDRESS", None)  # a stale address from an earlier test's cluster
    if not ray.is_initialized():
        # "local": a new Ray even where one was `ray start`-ed on this machine (a bare init joins it)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def search(local_ray, tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> tuple[Path, dict]:  # noqa: ANN001
    from abexrat.study.config import load_study
    from abexrat.study.runner import run_study

    tmp = tmp_path_factory.mktemp("search")
    path = study_file(
        tmp,
        tiny_dir,
        "tiny-search",
        """
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
  adversarial.p: {type: float, low: 0.0, high: 1.0}
  data.aug_ratio: {type: float, low: 0.0, high: 1.0}
  model.hidden: {type: categorical, choices: [[16], [32]]}
budget: {num_samples: 6}
seeds_per_trial: 2
final: {seeds: 3, overrides: {model.ensemble: 2, train.epochs: 3}, cpu: 0.5}
baselines:
  no_adversarial: {adversarial.method: none}
""",
    )
    out = tmp / "out"
    summary = run_study(load_study(path), out)
    return out, summary


def test_search_summary_has_the_contracted_keys(search: tuple[Path, dict]) -> None:
    out, s = search
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["best_config"] == s["best_config"]
    for key in ("eps", "p", "aug_ratio"):
        assert key in s["best_config"]
    assert s["trials"] == 6 and s["trials_failed"] == 0 and s["wall_s"] > 0
    for key in ("macro_f1", "weighted_f1", "accuracy"):
        assert set(s["test"][key]) >= {"mean", "std", "per_seed"} and len(s["test"][key]["per_seed"]) == 3
    assert set(s["baselines"]) == {"no_adversarial"}
    assert len(s["baselines"]["no_adversarial"]["test"]["macro_f1"]["per_seed"]) == 3
    # final.cpu: the final round's arms take half a CPU each, so 4 fit where 2 search trials do
    assert s["resources"]["cpu_per_trial"] == 1.0 and s["resources"]["cpu_per_final_arm"] == 0.5


def test_final_cpu_packs_more_final_arms_at_once(local_ray) -> None:  # noqa: ANN001
    from abexrat.study.config import Study
    from abexrat.study.stages import max_concurrent

    space = {"adversarial.p": {"type": "float", "low": 0.0, "high": 1.0}}
    study = Study.model_validate({"name": "x", "space": space, "final": {"cpu": 0.5}})
    assert max_concurrent(study) == 2 and max_concurrent(study, study.final.cpu) == 4
    capped = study.model_copy(update={"budget": study.budget.model_copy(update={"max_concurrent": 3})})
    assert max_concurrent(capped, 0.5) == 3


def test_trial_table_matches_the_summary(search: tuple[Path, dict]) -> None:
    out, s = search
    table = pd.read_parquet(out / "trials.parquet")
    csv = pd.read_csv(out / "trials.csv")
    assert len(table) == len(csv) == 6 + 2  # six search trials, then best + one baseline
    searched = table[table["stage"] == "search"]
    assert len(set(searched["trial_id"])) == 6
    assert s["best_val_macro_f1"] == pytest.approx(searched["val_macro_f1"].max())
    # search trials never see test; the final round scores it once per arm
    assert searched["test_macro_f1"].isna().all()
    final = table[table["stage"] == "final"].set_index("param:arm")
    assert final.loc["best", "test_macro_f1"] == pytest.approx(s["test"]["macro_f1"]["mean"])
    best_row = searched.loc[searched["val_macro_f1"].idxmax()]
    assert best_row["param:adversarial.eps"] == pytest.approx(s["best_config"]["eps"])
    assert best_row["param:data.aug_ratio"] == pytest.approx(s["best_config"]["aug_ratio"])
    # the categorical list choice travels through Optuna and back into the config
    assert s["best_config"]["train_config"]["model"]["hidden"] in ([16], [32])
    # final.overrides reach the final round only: search trials train 4 epochs, final ones 3
    assert set(searched["epoch"]) == {4} and set(final["epoch"]) == {3}
    assert s["best_config"]["train_config"]["model"]["ensemble"] == 2
    assert s["best_config"]["train_config"]["train"]["epochs"] == 3


def test_the_best_model_lands_as_a_run_folder_that_evaluate_and_predict_read(
    search: tuple[Path, dict],
    tiny_dir: Path,
    cli,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    import yaml

    out, s = search
    assert s["best_run"] == "best" and not (out / ".best.partial").exists()
    # best.yaml is the final round's config of the best: `abexrat train` takes it as it is
    assert yaml.safe_load((out / "best.yaml").read_text()) == s["best_config"]["train_config"]
    m = json.loads((out / "best" / "metrics.json").read_text())
    assert m["seeds"] == s["seeds"] == [0, 1, 2] and m["study"] == "tiny-search"
    for split in ("val", "test"):
        assert m[split]["macro_f1"]["per_seed"] == pytest.approx(s[split]["macro_f1"]["per_seed"])
    # the saved models score the test file exactly as the final round did: same seeds, same members
    r = cli("evaluate", out / "best", tiny_dir / "test.json", "--json", tmp_path / "eval.json")
    assert r.code == 0, r.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["macro_f1"] == pytest.approx(s["test"]["macro_f1"]["mean"])
    # its model card: huggingface_hub reads it, its scores are metrics.json's, and it says how it was chosen
    card, _ = check_card(out / "best")
    assert "Study `tiny-search`" in card.text and "the best of 6 configurations" in card.text
    rows = json.loads((tiny_dir / "test.json").read_text())[:3]
    (tmp_path / "in.json").write_text(json.dumps(rows))
    r = cli("predict", out / "best", tmp_path / "in.json", "--jsonl")
    assert r.code == 0, r.stderr
    assert len(r.stdout.splitlines()) == 3


def test_the_optuna_study_is_in_a_journal_that_optuna_reads_back(search: tuple[Path, dict]) -> None:
    """The search's Optuna study lives in DIR/optuna.journal: optuna.load_study returns every trial
    with trials.parquet's values and parameters, and user attributes that point back at it."""
    import optuna

    out, s = search
    assert s["optuna"] == {"storage": str((out / "optuna.journal").resolve()), "study_name": "tiny-search"}
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(s["optuna"]["storage"]))
    ot = optuna.load_study(study_name="tiny-search", storage=storage)
    trials = ot.get_trials()
    assert len(trials) == 6 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    rows = pd.read_parquet(out / "trials.parquet").query("stage == 'search'").set_index("trial_id")
    assert sorted(t.user_attrs["trial_id"] for t in trials) == sorted(rows.index)
    for t in trials:
        row = rows.loc[t.user_attrs["trial_id"]]
        assert t.value == pytest.approx(row["val_macro_f1"])
        assert t.params["adversarial.eps"] == pytest.approx(row["param:adversarial.eps"])
        assert t.params["model.hidden"] == row["param:model.hidden"]
        assert t.user_attrs["seeds"] == [0, 1]
        assert t.user_attrs["wandb_run"] == f"tiny-search-search-{t.user_attrs['trial_id']}"
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]  # one report per epoch
    assert ot.best_value == pytest.approx(s["best_val_macro_f1"])
    # the W&B run each trial names exists, with that trial's score
    runs = {r.name: r for r in read_runs(out / "wandb") if r.job_type == "search"}
    for t in trials:
        assert runs[t.user_attrs["wandb_run"]].summary["val_macro_f1"] == pytest.approx(t.value)


def test_the_python_api_reads_a_finished_study(search: tuple[Path, dict], tmp_path: Path) -> None:
    import abexrat

    out, s = search
    result = abexrat.load_study_result(out)
    assert result.summary == json.loads((out / "summary.json").read_text()) and result.name == "tiny-search"
    pd.testing.assert_frame_equal(result.trials, pd.read_parquet(out / "trials.parquet"))
    assert result.best.metrics == json.loads((out / "best" / "metrics.json").read_text())
    assert result.best.predict(["dog bite assault attacked robbery"])[0] in result.best.classes
    ot = result.optuna_study
    assert len(ot.trials) == 6 and ot.best_value == pytest.approx(s["best_val_macro_f1"])
    index = result.report(tmp_path / "report")
    assert index == tmp_path / "report" / "index.html" and index.is_file()


def test_wandb_offline_runs_equal_the_results(search: tuple[Path, dict]) -> None:
    out, s = search
    runs = read_runs(out / "wandb")
    by_job: dict[str, list] = {}
    for r in runs:
        assert r.group == "tiny-search"
        by_job.setdefault(r.job_type, []).append(r)
    assert len(by_job["search"]) == 6 and len(by_job["final"]) == 2 and len(by_job["summary"]) == 1
    table = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    for r in by_job["search"]:
        row = table.loc[r.config["trial_id"]]
        assert r.summary["val_macro_f1"] == pytest.approx(row["val_macro_f1"])
        assert r.config["adversarial.eps"] == pytest.approx(row["param:adversarial.eps"])
        assert [h["epoch"] for h in r.history] == [1, 2, 3, 4]  # per-epoch metrics
        assert r.history[-1]["val_macro_f1"] == pytest.approx(row["val_macro_f1"])
    best = next(r for r in by_job["final"] if r.config["arm"] == "best")
    assert best.summary["test_macro_f1"] == pytest.approx(s["test"]["macro_f1"]["mean"])
    # every run's config holds the full train config it trained: the final round's overrides included
    assert best.config["train_config"] == s["best_config"]["train_config"]
    for r in by_job["search"]:
        trained = r.config["train_config"]
        assert trained["adversarial"]["eps"] == pytest.approx(r.config["adversarial.eps"])
        assert trained["model"]["ensemble"] == 1 and trained["train"]["epochs"] == 4
    assert s["tracking"]["runs"] == 8 and s["tracking"]["mode"] == "offline"
    # The package list is recorded once per stage and in the summary run, not in every trial's run.
    with_packages = {job: sum("requirements.txt" in r.files for r in rs) for job, rs in by_job.items()}
    assert with_packages == {"search": 1, "final": 1, "summary": 1}
    listed = next(r for r in by_job["search"] if "requirements.txt" in r.files)
    assert "torch==" in (listed.folder / "files" / "requirements.txt").read_text()
    # the summary run logs the best model's run folder as a W&B model artifact, file for file
    model = by_job["summary"][0].artifacts["tiny-search-best"]
    assert model["type"] == "model" and "best" in model["aliases"]
    on_disk = sorted(str(p.relative_to(out / "best")) for p in (out / "best").rglob("*") if p.is_file())
    assert model["paths"] == on_disk and "models/seed-2/model.safetensors" in on_disk
    assert model["metadata"]["eps"] == pytest.approx(s["best_config"]["eps"])
    assert model["metadata"]["test_macro_f1"] == pytest.approx(s["test"]["macro_f1"]["mean"])
    assert by_job["summary"][0].artifacts["tiny-search-report"]["type"] == "report"


def test_ablation_runs_the_factor_grid(local_ray, tmp_path: Path, tiny_dir: Path) -> None:  # noqa: ANN001
    from abexrat.study.config import load_study
    from abexrat.study.runner import run_study

    path = study_file(
        tmp_path,
        tiny_dir,
        "tiny-ablation",
        """
kind: ablation
ablation:
  factors:
    abex: {on: {data.aug_ratio: 1.0}, off: {data.aug_ratio: 0.0}}
    rat: {on: {adversarial.method: rat}, off: {adversarial.method: none}}
final: {seeds: 2}
""",
    )
    study = load_study(path)
    assert list(study.arms()) == ["full", "rat=off", "abex=off", "abex=off+rat=off"]
    s = run_study(study, tmp_path / "out")
    assert set(s["arms"]) == {"full", "abex=off", "rat=off", "abex=off+rat=off"}
    for arm in s["arms"].values():
        assert len(arm["test"]["macro_f1"]["per_seed"]) == 2 and len(arm["test_pred"]) == 2
    # the grid's train sizes follow the factor: ABEX off trains on the 133 originals only
    table = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert s["trials"] == 4 and (table["stage"] == "ablation").sum() == 4


BAD_STUDIES = {
    "unknown key": ("budget: {num_samples: 3, samples: 4}", "budget.samples: unknown key"),
    "no space": ("budget: {num_samples: 3}", "a search study needs a 'space'"),
    "bad range": ("space: {adversarial.eps: {type: float, low: 1.0, high: 0.1}}", "needs low < high"),
    "unknown trainer key in space": (
        "space: {adversarial.q: {type: float, low: 0, high: 1}}",
        "space.adversarial.q: adversarial.q: unknown key",
    ),
    "out of range choice": (
        "space: {adversarial.p: {type: categorical, choices: [0.5, 1.5]}}",
        "space.adversarial.p: adversarial.p: Input should be less than or equal to 1 (got 1.5)",
    ),
    "bad name": ("space: {adversarial.p: {type: float, low: 0, high: 1}}\nname: ../../etc", "name: Value error"),
    "grouped without eps or p": (
        "space: {data.aug_ratio: {type: float, low: 0, high: 1}}\nbudget: {configs_per_trial: 4}",
        "budget.configs_per_trial: the configurations of one trial differ only in adversarial.eps and adversarial.p",
    ),
    "grouped with early stopping": (
        "space: {adversarial.p: {type: float, low: 0, high: 1}}\nbudget: {configs_per_trial: 4}\n"
        "early_stopping: {enabled: true}",
        "budget.configs_per_trial: early stopping stops a trial with all its configurations",
    ),
    "encoder key in space": (
        "space: {encoder.title_weight: {type: float, low: 0, high: 2}}",
        "space.encoder.title_weight: every trial of a study trains on one shared featurization, so no trial "
        "can change encoder.title_weight; set it under trainer:",
    ),
    "featurizing data key in an ablation": (
        "kind: ablation\nablation: {factors: {pool: {ours: {data.aug_pool: published}, none: {}}}}",
        "ablation.factors.pool.ours.data.aug_pool: every trial of a study trains on one shared featurization",
    ),
    "bad final override": (
        "space: {adversarial.p: {type: float, low: 0, high: 1}}\nfinal: {overrides: {model.ensemble: 0}}",
        "final.overrides: model.ensemble: Input should be greater than or equal to 1",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STUDIES))
def test_bad_study_files_exit_2_naming_the_key(case: str, tmp_path: Path, tiny_dir: Path, cli) -> None:  # noqa: ANN001
    body, message = BAD_STUDIES[case]
    path = study_file(tmp_path, tiny_dir, "bad", body)
    if case == "bad name":
        path.write_text(path.read_text().replace("name: bad\n", ""))
    r = cli("study", "run", path, "--out", tmp_path / "out")
    assert r.code == 2, r.stderr
    assert message in " ".join(r.stderr.split())
    assert not (tmp_path / "out").exists()


def _finished_trials(search_dir: Path) -> list[str]:
    done = []
    for result in search_dir.glob("run_trial_*/result.json"):
        lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        if lines and "val_accuracy" in lines[-1]:
            done.append(lines[-1]["trial_id"])
    return done


def test_sigint_then_resume_finishes_without_rerunning(tmp_path: Path, tiny_dir: Path) -> None:
    path = study_file(
        tmp_path,
        tiny_dir,
        "tiny-resume",
        """
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
  adversarial.p: {type: float, low: 0.0, high: 1.0}
budget: {num_samples: 8}
seeds_per_trial: 1
final: {seeds: 1}
""",
    )
    # long enough trials (a few seconds each) that the search is still running when SIGINT lands
    path.write_text(path.read_text().replace("epochs: 4,", "epochs: 400,"))
    out = tmp_path / "out"
    exe = str(Path(sys.executable).parent / "abexrat")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AIR_NEW_OUTPUT": "0"}
    proc = subprocess.Popen(
        [exe, "study", "run", str(path), "--out", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 480  # generous: CI machines can be loaded
    while len(_finished_trials(out / "search")) < 2:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.time() < deadline, "no trial finished in time"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "--resume" in output
    before = _finished_trials(out / "search")
    assert 2 <= len(before) < 8 and not (out / "summary.json").exists()
    rows_before = {t: _rows(out / "search", t) for t in before}

    r = subprocess.run(
        [exe, "study", "run", str(path), "--out", str(out), "--resume"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["trials"] == 8
    after = _finished_trials(out / "search")
    assert len(after) == len(set(after)) == 8 and set(before) <= set(after)
    for t, rows in rows_before.items():  # a finished trial was not run again: its results did not grow
        assert _rows(out / "search", t) == rows == 400
    runs = [r for r in read_runs(out / "wandb") if r.job_type == "search"]
    assert sorted(r.config["trial_id"] for r in runs) == sorted(after)  # one W&B run per trial, none twice
    # the resumed search went on in the same Optuna study: each trial told once, none left running
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal")))
    ot = optuna.load_study(study_name="tiny-resume", storage=storage)
    done = [t for t in ot.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["trial_id"] for t in done) == sorted(after)
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in ot.get_trials())
    table = pd.read_parquet(out / "trials.parquet").query("stage == 'search'").set_index("trial_id")
    assert {t.user_attrs["trial_id"]: t.value for t in done} == pytest.approx(table["val_macro_f1"].to_dict())


def _rows(search_dir: Path, trial_id: str) -> int:
    (result,) = [p for p in search_dir.glob(f"run_trial_{trial_id}_*/result.json")]
    return sum(1 for x in result.read_text().splitlines() if x.strip())


def test_a_cv_study_selects_on_out_of_fold_scores(local_ray, tmp_path: Path, tiny_dir: Path) -> None:  # noqa: ANN001
    """cv: trials are scored on 3-fold CV over train+val (synthetic rows only from training folds);
    the search's val_* are the CV scores, recomputable by abexrat.cv; test stays out of selection."""
    from abexrat.cv import cv_datasets, cv_featurize, cv_train_and_score
    from abexrat.datasets import load_dataset
    from abexrat.embed import EmbeddingCache
    from abexrat.study.config import load_study
    from abexrat.study.runner import run_study

    path = study_file(
        tmp_path,
        tiny_dir,
        "tiny-cv",
        """
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
budget: {num_samples: 2}
seeds_per_trial: 2
final: {seeds: 2}
cv: {folds: 3, seed: 1}
""",
    )
    study = load_study(path)
    s = run_study(study, tmp_path / "out", report=False)
    table = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    searched = table[table["stage"] == "search"]
    assert len(searched) == 2 and (searched["selection"] == "3-fold cv over train+val").all()
    assert s["cv"]["folds"] == 3 and s["cv"]["splits"] == ["train", "val"]
    # The pool: 133 train + 42 val originals; every held-out report is predicted exactly once.
    ds = load_dataset(study.train_config())
    folds, y, held = cv_datasets(ds, 3, 1, ["train", "val"])
    assert len(y) == 175 and sorted(i for h in held for i in h) == list(range(175))
    for fold in folds:
        train_ids = {i.split(":", 1)[1] for i in fold.train.ids if i.startswith("train:")}
        assert set(fold.synthetic.source_ids) <= train_ids and len(fold.synthetic) == 3 * sum(
            1 for i in fold.train.ids if i.startswith("train:") and int(i.split(":")[1]) in SOURCE_IDS(ds)
        )
        assert not set(fold.val.ids) & set(fold.train.ids)
    # The best trial's val score is its CV score, recomputed here from scratch.
    best = searched.loc[searched["val_macro_f1"].idxmax()]
    cfg = study.train_config({"adversarial.eps": float(best["param:adversarial.eps"])})
    cvf = cv_featurize(ds, cfg, 3, 1, ["train", "val"], EmbeddingCache())
    _, scores = cv_train_and_score(cvf, cfg, [0, 1])
    assert scores["macro_f1"]["mean"] == pytest.approx(best["val_macro_f1"], abs=1e-9)
    assert s["best_val_macro_f1"] == pytest.approx(best["val_macro_f1"])
    # The final round scores the fixed split's test and the CV scores with the final seeds.
    assert len(s["test"]["macro_f1"]["per_seed"]) == 2 and len(s["cv"]["best"]["macro_f1"]["per_seed"]) == 2


def test_a_time_budget_ends_the_search_and_the_study_goes_on(local_ray, tmp_path: Path, tiny_dir: Path, cli) -> None:  # noqa: ANN001
    """budget.time_budget_s: Tune stops the search when it is spent; the trials it cut are marked
    BUDGET (never best), and the final round still runs: it is not an interruption."""
    path = study_file(
        tmp_path,
        tiny_dir,
        "tiny-budget",
        """
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
budget: {num_samples: 500, time_budget_s: 30}
seeds_per_trial: 2
final: {seeds: 2}
""",
    )
    # ~1.5 s trials: some finish, the ones in flight when the 30 s are spent are cut (the gaps between
    # trials are ~0.1 s, so both slots are almost never idle at that moment); 30 s, not less, so that
    # a loaded machine whose trials run 10x slower still finishes some
    path.write_text(path.read_text().replace("epochs: 4,", "epochs: 80,"))
    r = cli("study", "run", path, "--out", tmp_path / "out", "--no-report")
    assert r.code == 0, r.stderr
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    table = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    searched = table[table["stage"] == "search"]
    finished, cut = searched[searched["status"] == "TERMINATED"], searched[searched["status"] == "BUDGET"]
    assert set(searched["status"]) == {"TERMINATED", "BUDGET"}
    assert 1 <= len(finished) < 500 and len(finished) + len(cut) == len(searched) == s["trials"]
    assert s["trials_stopped"]["BUDGET"] == len(cut) and s["trials_failed"] == 0
    assert (finished["epoch"] == 80).all() and not (cut["epoch"] == 80).any()
    assert s["best_val_macro_f1"] == pytest.approx(finished["val_macro_f1"].max())
    assert len(s["test"]["macro_f1"]["per_seed"]) == 2
    assert f"tiny-budget: {len(searched)} trials ({len(cut)} cut by time_budget_s) in" in " ".join(r.stdout.split())


def SOURCE_IDS(ds) -> set[int]:  # noqa: ANN001, N802
    return {int(s) for s in ds.synthetic.source_ids}


def test_every_shipped_study_file_validates() -> None:
    """studies/*.yaml: each train config, study and augmentation config loads as its users run it."""
    from abexrat.augment.config import load_augment_config
    from abexrat.config import load_train_config
    from abexrat.study.config import load_study

    kinds = {}
    for path in sorted((REPO / "studies").glob("*.yaml")):
        if path.name.startswith("augment_"):
            load_augment_config(path)
            kinds[path.stem] = "augment"
        elif path.name == "baseline.yaml":
            cfg = load_train_config(path)
            parts = [e["name"] for e in cfg.encoder.options["encoders"]]
            assert cfg.encoder.name == "combined" and parts == [
                "hf:sentence-transformers/all-mpnet-base-v2",
                "hf:sentence-transformers/all-MiniLM-L6-v2",
                "tfidf-svd",
            ]
            assert cfg.adversarial.method == "rat" and cfg.data.aug_ratio == 1.0 and cfg.model.ensemble == 3
            kinds[path.stem] = "train"
        elif path.name == "baseline_offline.yaml":
            cfg = load_train_config(path)
            assert cfg.encoder.name == "hybrid" and cfg.adversarial.method == "rat" and cfg.data.aug_ratio == 1.0
            kinds[path.stem] = "train"
        else:
            study = load_study(path)
            study.train_config()  # the base and trainer section resolve
            kinds[path.stem] = study.kind
    assert kinds["quickstart"] == "search" and kinds["paper_ablation"] == "ablation"
    assert load_study(REPO / "studies" / "rat_search_cv.yaml").cv.splits == ["train", "val"]
    gpu = load_study(REPO / "studies" / "rat_search_gpu.yaml")
    assert (gpu.budget.configs_per_trial, gpu.resources.gpu) == (16, 0.25)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_gpu_per_trial_on_a_local_ray_without_gpus_exits_2(tmp_path: Path, tiny_dir: Path) -> None:
    """Trials that ask for a GPU the embedded Ray cannot grant would wait forever: a clear error instead."""
    path = study_file(
        tmp_path,
        tiny_dir,
        "tiny-gpu",
        """
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
budget: {num_samples: 2}
resources: {cpu: 1, gpu: 0.25}
""",
    )
    exe = str(Path(sys.executable).parent / "abexrat")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run(
        [exe, "study", "run", str(path), "--out", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert "resources.gpu: 0.25 GPU per trial, but this machine's Ray has 0" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout and not (tmp_path / "out").exists()


def test_short_copies_are_embedded_only_for_studies_whose_trials_may_train_on_them(
    tmp_path: Path, tiny_dir: Path
) -> None:
    from abexrat.study.config import load_study
    from abexrat.study.runner import _trains_short_copies

    space = "space: {adversarial.p: {type: float, low: 0, high: 1}}\n"
    bodies = {
        "plain": (space, False),
        "searched": ("space: {data.short_copies: {type: categorical, choices: [false, true]}}", True),
        "baseline": (space + "baselines: {short: {data.short_copies: true}}", True),
        "final": (space + "final: {overrides: {data.short_copies: true}}", True),
        "arm": ("kind: ablation\nablation: {factors: {short: {off: {}, on: {data.short_copies: true}}}}", True),
        "arms off": ("kind: ablation\nablation: {factors: {rat: {on: {}, off: {adversarial.method: none}}}}", False),
    }
    for name, (body, want) in bodies.items():
        study = load_study(study_file(tmp_path, tiny_dir, name.replace(" ", "-"), body))
        assert _trains_short_copies(study) is want, name


def test_several_configurations_per_trial_train_together_and_report_one_row_each(
    local_ray,  # noqa: ANN001
    tmp_path: Path,
    tiny_dir: Path,
    cli,  # noqa: ANN001
) -> None:
    from abexrat.study.config import load_study
    from abexrat.study.runner import run_study

    path = study_file(
        tmp_path,
        tiny_dir,
        "tiny-grouped",
        """
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
  adversarial.p: {type: float, low: 0.0, high: 1.0}
  data.aug_ratio: {type: float, low: 0.0, high: 1.0}
budget: {num_samples: 5, configs_per_trial: 2}
seeds_per_trial: 2
final: {seeds: 2}
""",
    )
    out = tmp_path / "out"
    s = run_study(load_study(path), out)
    table = pd.read_parquet(out / "trials.parquet")
    searched = table[table["stage"] == "search"]
    # five configurations in three Tune trials (2 + 2 + 1), one row each
    assert s["trials"] == 5 and s["trials_failed"] == 0 and len(searched) == 5
    tune_ids = searched["trial_id"].str.rsplit("-c", n=1).str[0]
    assert sorted(tune_ids.value_counts().tolist()) == [1, 2, 2]
    assert set(searched["status"]) == {"TERMINATED"} and set(searched["epoch"]) == {4}
    assert searched["val_macro_f1"].between(0, 1).all()
    # a trial's configurations share every searched key but ε and p, which TPE sampled apart
    for _, rows in searched.groupby(tune_ids):
        assert rows["param:data.aug_ratio"].nunique() == 1
        assert rows["param:adversarial.eps"].nunique() == len(rows)
        assert rows["train_size"].nunique() == 1
    assert searched["param:data.aug_ratio"].nunique() == 3
    # the best is one configuration, as the final round retrains it
    best_row = searched.loc[searched["val_macro_f1"].idxmax()]
    assert s["best_val_macro_f1"] == pytest.approx(best_row["val_macro_f1"])
    assert s["best_config"]["eps"] == pytest.approx(best_row["param:adversarial.eps"])
    assert s["best_config"]["p"] == pytest.approx(best_row["param:adversarial.p"])
    # W&B: one offline run per configuration, with that configuration's own per-epoch scores
    runs = [r for r in read_runs(out / "wandb") if r.job_type == "search"]
    assert sorted(r.config["trial_id"] for r in runs) == sorted(searched["trial_id"])
    rows = searched.set_index("trial_id")
    for r in runs:
        row = rows.loc[r.config["trial_id"]]
        assert r.config["adversarial.eps"] == pytest.approx(row["param:adversarial.eps"])
        assert r.config["train_config"]["adversarial"]["p"] == pytest.approx(row["param:adversarial.p"])
        assert [h["epoch"] for h in r.history] == [1, 2, 3, 4]
        assert r.history[-1]["val_macro_f1"] == pytest.approx(row["val_macro_f1"])
        assert r.summary["val_macro_f1"] == pytest.approx(row["val_macro_f1"])
    # Optuna has one trial per configuration, named by its trials.parquet row
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(s["optuna"]["storage"]))
    ot = optuna.load_study(study_name="tiny-grouped", storage=storage)
    values = {t.user_attrs["trial_id"]: t.value for t in ot.get_trials()}
    assert values == pytest.approx(searched.set_index("trial_id")["val_macro_f1"].to_dict())
    # the report reads the study as any other: one point per configuration
    r = cli("report", out, "--out", tmp_path / "report")
    assert r.code == 0, r.stderr
    assert "5 completed of 5 search trials." in (tmp_path / "report" / "report.md").read_text()
    # times are each configuration's share of its trial: the rows of a trial add up to Tune's own record
    for tid, rows in searched.groupby(tune_ids):
        (result,) = (out / "search").glob(f"run_trial_{tid}_*/result.json")
        tune_trial_s = json.loads(result.read_text().splitlines()[-1])["trial_s"]
        assert rows["trial_s"].sum() == pytest.approx(tune_trial_s) and rows["trial_s"].nunique() == 1


def test_a_trainer_naming_another_encoder_does_not_inherit_the_base_encoders_options(tmp_path: Path) -> None:
    """base: baseline.yaml (the combined encoder) with trainer: {encoder: {name: hybrid, ...}} is the
    hybrid with its own options; the base's title view and synthetic fit still apply. Naming the same
    encoder merges key by key, as every other section does."""
    from abexrat.study.config import load_study

    study = tmp_path / "s.yaml"
    study.write_text(
        f"name: s\nkind: search\nbase: {REPO / 'studies' / 'baseline.yaml'}\n"
        "trainer: {encoder: {name: hybrid, options: {tfidf_dim: 64}}}\n"
        "space: {adversarial.eps: {type: float, low: 0.01, high: 1.0}}\n"
    )
    cfg = load_study(study).train_config()
    assert cfg.encoder.name == "hybrid" and cfg.encoder.options == {"tfidf_dim": 64}
    assert cfg.encoder.title_weight == 1.0 and cfg.encoder.fit_synthetic is True
    same = tmp_path / "same.yaml"
    same.write_text(study.read_text().replace("name: hybrid, options: {tfidf_dim: 64}", "title_weight: 0.5"))
    cfg = load_study(same).train_config()
    assert cfg.encoder.name == "combined" and len(cfg.encoder.options["encoders"]) == 3
    assert cfg.encoder.title_weight == 0.5
