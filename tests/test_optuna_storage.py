"""A search's Optuna study in an RDB storage the study file names: Optuna reads it back, a second
search of the same name does not add to it, and a storage that cannot be opened exits 2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.test_study import local_ray, study_file  # noqa: F401  (local_ray: one Ray for this module)

BODY = """
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
  adversarial.p: {type: float, low: 0.0, high: 1.0}
budget: {num_samples: 3}
seeds_per_trial: 1
final: {seeds: 1}
optuna: {storage: "%s"}
"""


def test_a_sqlite_storage_holds_the_search_and_a_second_start_of_it_exits_2(
    local_ray,  # noqa: ANN001, F811
    tmp_path: Path,
    tiny_dir: Path,
    cli,  # noqa: ANN001
) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    path = study_file(tmp_path, tiny_dir, "tiny-sqlite", BODY % url)
    r = cli("study", "run", path, "--out", tmp_path / "out", "--no-report")
    assert r.code == 0, r.stderr
    ot = optuna.load_study(study_name="tiny-sqlite", storage=url)
    table = pd.read_parquet(tmp_path / "out" / "trials.parquet").query("stage == 'search'")
    assert len(ot.trials) == 3 and not (tmp_path / "out" / "optuna.journal").exists()
    assert {t.user_attrs["trial_id"]: t.value for t in ot.trials} == pytest.approx(
        table.set_index("trial_id")["val_macro_f1"].to_dict()
    )
    # the same study started anew elsewhere would add its trials to this one: refused, nothing written
    r = cli("study", "run", path, "--out", tmp_path / "again", "--no-report")
    assert r.code == 2 and "optuna.storage" in r.stderr and "--resume" in r.stderr, r.stderr
    assert not (tmp_path / "again").exists()
    assert len(optuna.load_study(study_name="tiny-sqlite", storage=url).trials) == 3
    # under another name it is a new Optuna study in the same database
    r = cli("study", "run", path, "--out", tmp_path / "other", "--name", "tiny-sqlite-2", "--no-report")
    assert r.code == 0, r.stderr
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert names == {"tiny-sqlite", "tiny-sqlite-2"}


def test_a_storage_that_cannot_be_opened_exits_2_naming_the_key(
    tmp_path: Path,
    tiny_dir: Path,
    cli,  # noqa: ANN001
) -> None:
    path = study_file(tmp_path, tiny_dir, "tiny-badstore", BODY % "nosuchdb://host/db")
    r = cli("study", "run", path, "--out", tmp_path / "out")
    assert r.code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "optuna.storage: nosuchdb://host/db" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_database_password_is_never_recorded() -> None:
    from abexrat.study.storage import public_url

    assert public_url("postgresql://bob:s3cret@db.example/optuna") == "postgresql://bob:***@db.example/optuna"
    assert public_url("sqlite:////tmp/studies.db") == "sqlite:////tmp/studies.db"
    assert public_url("/runs/x/optuna.journal") == "/runs/x/optuna.journal"


def test_samplers_by_name_and_random_draws_depend_on_the_seed_alone() -> None:
    """``optuna.sampler``: each name builds its Optuna sampler; random draws are the same whether a
    search asks for a whole configuration (Tune's OptunaSearch) or suggests key by key (a plain
    Optuna objective), so two searches with one seed train the same configurations."""
    import optuna

    from abexrat.study.config import Study
    from abexrat.study.samplers import SAMPLERS, make_sampler

    kinds = {name: type(make_sampler(name, 0, 20)).__name__ for name in SAMPLERS}
    assert kinds == {"tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler"}
    space = {
        "adversarial.eps": optuna.distributions.FloatDistribution(0.01, 2.0, log=True),
        "adversarial.p": optuna.distributions.FloatDistribution(0.0, 1.0),
    }
    whole = optuna.create_study(sampler=make_sampler("random", 7, 5))
    asked = [whole.ask(fixed_distributions=space).params for _ in range(5)]
    by_key = optuna.create_study(sampler=make_sampler("random", 7, 5))
    suggested = []
    for _ in range(5):
        t = by_key.ask()
        suggested.append({k: t.suggest_float(k, d.low, d.high, log=d.log) for k, d in space.items()})
    assert asked == suggested and len({a["adversarial.p"] for a in asked}) == 5
    study = Study.model_validate({"name": "s", "space": {"adversarial.p": {"type": "float", "low": 0, "high": 1}}})
    assert study.optuna.sampler == "tpe"
    with pytest.raises(ValueError, match="sampler"):
        Study.model_validate({"name": "s", "space": {}, "optuna": {"sampler": "grid"}})
