"""Several configurations per trial: the searcher that groups Optuna trials, on real Optuna."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from abexrat.study.grouped import GROUP, GroupedSearch, configurations, per_configuration, sub_id
from abexrat.study.space import SearchSpace

SPACE = {
    "adversarial.eps": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
    "adversarial.p": {"type": "float", "low": 0.0, "high": 1.0},
    "data.aug_ratio": {"type": "float", "low": 0.0, "high": 1.0},
}


def _searcher(size: int, total: int) -> GroupedSearch:
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    inner = OptunaSearch(
        space=SearchSpace(SPACE), metric="val_macro_f1", mode="max", sampler=optuna.samplers.TPESampler(seed=0)
    )
    return GroupedSearch(inner, size, total)


def test_a_group_shares_the_unbatched_keys_and_optuna_gets_each_configurations_value(tmp_path: Path) -> None:
    s = _searcher(3, 7)
    groups = [s.suggest(f"t{i}") for i in range(3)]
    sizes = [len(configurations(g)) for g in groups]
    assert sizes == [3, 3, 1] and s.suggest("t3") == "FINISHED"  # 7 configurations, then none
    for g in groups:
        group = g[GROUP]
        assert len({c["data.aug_ratio"] for c in group}) == 1  # shared
        assert len({c["adversarial.eps"] for c in group}) == len(group)  # sampled apart
    # each configuration's own result reaches its own Optuna trial
    values = [0.5, 0.7, 0.6]
    parts = [{"val_macro_f1": v} for v in values]
    s.on_trial_complete("t0", {"val_macro_f1": 0.7, "configs": parts, "training_iteration": 4})
    study = s.inner._ot_study  # noqa: SLF001
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.value for t in done] == values
    assert [t.params["adversarial.eps"] for t in done] == [c["adversarial.eps"] for c in groups[0][GROUP]]

    # save, then restore into a fresh searcher: Optuna's trials and the count of configurations asked
    s.save(str(tmp_path / "state.pkl"))
    back = _searcher(3, 7)
    back.restore(str(tmp_path / "state.pkl"))
    assert back.asked == 7 and back.suggest("t9") == "FINISHED"
    assert len(back.inner._ot_study.trials) == 7  # noqa: SLF001
    back.on_trial_complete("t2", {"val_macro_f1": 0.9})  # a one-configuration trial
    assert back.inner._ot_study.best_value == pytest.approx(0.9)  # noqa: SLF001


def test_per_configuration_splits_a_result_and_keeps_the_shared_keys() -> None:
    result = {
        "epoch": 3,
        "trial_s": 2.0,
        "val_macro_f1": 0.8,
        "configs": [{"val_macro_f1": 0.8}, {"val_macro_f1": 0.4}],
    }
    assert per_configuration(result, 2) == [
        {"epoch": 3, "trial_s": 2.0, "val_macro_f1": 0.8},
        {"epoch": 3, "trial_s": 2.0, "val_macro_f1": 0.4},
    ]
    assert per_configuration({"val_macro_f1": float("nan"), "limit": "time"}, 2)[1]["limit"] == "time"
    assert sub_id("abc_00001", 2) == "abc_00001-c2"
    assert configurations({"adversarial.eps": 0.1}) == [{"adversarial.eps": 0.1}]
