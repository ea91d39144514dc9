"""Several configurations per trial: Optuna trials that differ only in ε and p, trained as one batch.

With ``budget.configs_per_trial: N``, each Ray Tune trial asks Optuna for N trials. The first is
sampled as usual; the other N - 1 are enqueued with the first one's values for every searched key
that changes the data or the model (``data.aug_ratio``, ``model.hidden``, ...), so TPE samples only
their ``adversarial.eps`` and ``adversarial.p``. The trial then trains all N x seeds models as one
batched model (:func:`abexrat.train.fit` with ``variants``): on a GPU, where one small MLP leaves
the device mostly idle, N configurations cost little more than one.

Tune sees one trial; everything a user reads has one row per configuration: each Optuna trial gets
its own value, ``trials.parquet`` one row per configuration (trial id ``<tune id>-c<j>``), W&B one
run per configuration (its times, ``train_s`` and ``trial_s``, are its share: the trial's over N).
A trial's results carry ``configs``, a list with one dict of scores per
configuration, beside the best configuration's scores at the top level (``config_best`` is its
index), so Tune's own bookkeeping picks the best configuration.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher

from abexrat.study.config import BATCHED

GROUP = "group"  # a grouped trial's Tune config: {"group": [params of configuration 0, 1, ...]}
# Result keys that belong to the trial, not to one configuration: each configuration's part gets them.
SHARED_KEYS = (
    "epoch",
    "training_iteration",
    "train_s",
    "trial_s",
    "seeds",
    "train_size",
    "selection",
    "time_total_s",
    "limit",
    "limit_detail",
    "peak_memory_gb",
)


def sub_id(trial_id: str, j: int) -> str:
    return f"{trial_id}-c{j}"


def configuration_ids(trial_id: str, config: dict[str, Any]) -> list[str]:
    """The row ids of a Tune trial's configurations: ``<tune id>-c<j>`` for a group, else its own id."""
    return [sub_id(trial_id, j) for j in range(len(config[GROUP]))] if GROUP in config else [trial_id]


def configurations(config: dict[str, Any]) -> list[dict[str, Any]]:
    """A Tune trial's configurations: the group's, or the trial's own config as the only one."""
    return list(config[GROUP]) if GROUP in config else [config]


def per_configuration(result: dict[str, Any] | None, n: int) -> list[dict[str, Any]]:
    """A grouped trial's result, split into one result per configuration (the shared keys, such as
    ``epoch`` and ``trial_s``, in each)."""
    result = dict(result or {})
    parts = result.pop("configs", None)
    if not isinstance(parts, list | tuple) or not parts:  # a one-configuration trial (NaN in a table)
        return [result] * n
    shared = {k: v for k, v in result.items() if k in SHARED_KEYS}
    return [{**shared, **part} for part in parts]


class GroupedSearch(Searcher):
    """A Tune searcher that asks ``inner`` (Ray's OptunaSearch) for ``size`` configurations per
    trial, sharing every searched key but :data:`BATCHED` with the first, and tells Optuna each
    configuration's own scores."""

    def __init__(self, inner: Any, size: int, total: int | None = None) -> None:
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner, self.size, self.total = inner, size, total
        self.asked = 0  # configurations handed out: the last trial holds fewer when size does not divide total

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        ok = self.inner.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.inner.metric, self.inner.mode
        return ok

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        group: list[dict[str, Any]] = []
        left = self.size if self.total is None else min(self.size, self.total - self.asked)
        if left <= 0:
            return Searcher.FINISHED
        for j in range(left):
            if group:  # the next Optuna trial keeps the first one's unbatched values; TPE samples ε, p
                shared = {k: v for k, v in group[0].items() if k not in BATCHED}
                self.inner._ot_study.enqueue_trial(shared)  # noqa: SLF001
            params = self.inner.suggest(sub_id(trial_id, j))
            if not isinstance(params, dict):
                return params
            group.append(params)
        self.asked += len(group)
        return {GROUP: group}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        for j, part in enumerate(per_configuration(result, self.size)):
            known = sub_id(trial_id, j) in self.inner._ot_trials  # noqa: SLF001  (a last trial may hold fewer)
            if known and isinstance(part.get(self.metric), int | float) and "training_iteration" in part:
                self.inner.on_trial_result(sub_id(trial_id, j), part)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        parts = per_configuration(result, self.size) if result else [None] * self.size
        for j, part in enumerate(parts):
            if sub_id(trial_id, j) in self.inner._ot_trials:  # noqa: SLF001
                self.inner.on_trial_complete(sub_id(trial_id, j), part, error)

    # Tune keeps one searcher-state file. Ray's OptunaSearch writes it (the Optuna study and its own
    # attributes); the grouping's counters ride along as one more of its attributes, so this
    # package loads no pickle of its own.
    def save(self, checkpoint_path: str) -> None:
        self.inner._abexrat_grouped = {"size": self.size, "total": self.total, "asked": self.asked}  # noqa: SLF001
        self.inner.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.inner.restore(checkpoint_path)
        state = getattr(self.inner, "_abexrat_grouped", None) or {}
        self.size, self.total, self.asked = (
            state.get("size", self.size),
            state.get("total", self.total),
            state.get("asked", 0),
        )
