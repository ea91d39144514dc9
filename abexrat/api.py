"""The Python API: train a configuration, run a study, load a run and predict, from a notebook.

>>> import abexrat
>>> run = abexrat.train("studies/baseline.yaml", out="runs/baseline", seeds=3, adversarial__eps=0.1)
>>> run.metrics["test"]["macro_f1"]["mean"]
>>> run.predict(["Employee fell from a ladder while painting a wall"])
['FALLS,SLIPS,TRIPS']
>>> run.predict_proba(texts).shape            # (n_texts, n_classes)
>>> result = abexrat.study("studies/quickstart.yaml", out="runs/quickstart")
>>> result.trials.sort_values("val_macro_f1").tail()   # a pandas DataFrame, one row per trial
>>> result.best.evaluate("my_labeled_reports.jsonl")
>>> result.optuna_study.best_params              # the search's own Optuna study

The command line (:mod:`abexrat.cli`) is a thin layer over these functions: the same config, the
same folders, the same errors (:class:`abexrat.core.errors.UserError` with one line naming the file and
key or row). Nothing heavy is imported until a function runs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ConfigLike = Any  # a YAML path, a mapping of the train config's keys, or an abexrat.config.TrainConfig


def _override_args(overrides: dict[str, Any]) -> list[str]:
    """``adversarial__eps=0.3`` -> ``"adversarial.eps=0.3"`` (a YAML value, as ``--set`` takes it)."""
    import yaml

    sets = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
        sets.append(f"{key.replace('__', '.')}={text.removesuffix('...').strip()}")
    return sets


def train_config(config: ConfigLike = None, **overrides: Any) -> Any:
    """A validated :class:`~abexrat.config.TrainConfig` from a path, a mapping or a config, with
    ``overrides`` (``section__key=value``, e.g. ``adversarial__eps=0.3``; ``seeds=3``) on top."""
    from abexrat.config import TrainConfig, apply_overrides, load_train_config, validate

    if isinstance(config, TrainConfig) and not overrides:
        return config
    sets = _override_args(overrides)
    if config is None or isinstance(config, str | Path):
        return load_train_config(config, sets)
    # a copy: the overrides must not change the caller's dict
    raw = config.model_dump(mode="json") if isinstance(config, TrainConfig) else copy.deepcopy(dict(config))
    return validate(TrainConfig, apply_overrides(raw, sets), "config")


def train(
    config: ConfigLike = None,
    *,
    out: str | Path | None = None,
    stream: bool = False,
    progress: Any = None,
    **overrides: Any,
) -> Run:
    """Train one configuration with its seeds, score it on val and test, and save it as a run folder.

    Parameters
    ----------
    config : str, Path, mapping or TrainConfig, optional
        A train config YAML (e.g. ``"studies/baseline.yaml"``) or its keys; None: every default.
    out : str or Path, optional
        The run folder to write (``metrics.json``, ``README.md`` model card, ``config.yaml``,
        ``encoder/``, ``models/seed-*/``). Default: ``runs/<config name>``.
    stream : bool
        Read and encode ``data.dataset`` through Ray Data (automatic for a file too large for memory).
    progress : optional
        The CLI's progress bars (anything with ``task(name, total)`` returning a callable).
    **overrides
        Config keys to override, sections joined by ``__``: ``seeds=3``, ``adversarial__eps=0.3``,
        ``model__hidden=[1024, 256]``, ``data__data_dir="/data/osha"``.

    Returns
    -------
    Run
        The trained run; ``run.metrics`` is its ``metrics.json``.
    """
    from abexrat.experiment import run_config

    cfg = train_config(config, **overrides)
    folder = Path(out) if out is not None else Path("runs") / cfg.name
    run_config(cfg, folder, progress, stream=stream)
    return load_run(folder)


def load_run(path: str | Path) -> Run:
    """The run folder that ``abexrat.train``, ``abexrat train`` or a study's ``best/`` wrote, with
    its encoder and seed models loaded (a folder that is not a finished run is a UserError)."""
    run = Run(path)
    run.loaded  # noqa: B018  (read now: a bad folder fails here, not at the first prediction)
    return run


class Run:
    """A trained run: its seeds' models and fitted encoder, loaded on first use.

    Attributes
    ----------
    folder : Path
        The run folder.
    metrics : dict
        ``metrics.json``: ``config``, ``seeds``, ``classes``, and for ``val`` and ``test``:
        ``macro_f1``, ``weighted_f1``, ``accuracy`` as ``{"mean", "std", "per_seed"}``, ``per_class``
        and ``confusion``.
    classes : list of str
        The label of each probability column, in order.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._loaded: Any = None
        self._metrics: dict[str, Any] | None = None

    def __repr__(self) -> str:
        m = self.metrics.get("test", {}).get("macro_f1", {})
        score = f", test macro-F1 {100 * m['mean']:.2f}" if "mean" in m else ""
        return f"Run({str(self.folder)!r}, {len(self.seeds)} seed(s){score})"

    @property
    def loaded(self) -> Any:
        """The encoder and models (:class:`abexrat.run_folder.LoadedRun`), read once."""
        if self._loaded is None:
            from abexrat.run_folder import load_run as load

            self._loaded = load(self.folder)
        return self._loaded

    @property
    def metrics(self) -> dict[str, Any]:
        if self._metrics is None:
            import json

            self._metrics = json.loads((self.folder / "metrics.json").read_text())
        return self._metrics

    @property
    def classes(self) -> list[str]:
        return list(self.loaded.classes)

    @property
    def seeds(self) -> list[int]:
        return list(self.metrics.get("seeds") or [])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.metrics.get("config") or {})

    def predict_proba(self, texts: Sequence[str], progress: Any = None) -> Any:
        """Class probabilities, the mean over the run's seeds.

        Parameters
        ----------
        texts : sequence of str, length n
            Whole reports (title and narrative as one text, as training joined them).

        Returns
        -------
        numpy.ndarray of shape (n, n_classes), float32
            Row i sums to 1; column j is ``classes[j]``.
        """
        from abexrat.embed import embed_texts
        from abexrat.train import predict_proba

        texts = [texts] if isinstance(texts, str) else list(texts)
        X = embed_texts(self.loaded.encoder, texts, progress=progress)
        return predict_proba(self.loaded.model, X).mean(0)

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable class of each text: a list of n labels (see :meth:`predict_proba`)."""
        classes = self.classes
        return [classes[int(i)] for i in self.predict_proba(texts).argmax(-1)]

    def evaluate(
        self,
        data: str | Path | Sequence[dict[str, Any]],
        text_column: str | None = None,
        label_column: str = "gold",
        stream: bool | None = None,
        progress: Any = None,
    ) -> dict[str, Any]:
        """Score the run's seed models on labeled reports.

        Parameters
        ----------
        data : path or list of dict
            A ``.json``, ``.jsonl``, ``.csv`` or ``.parquet`` file, or rows (dicts with ``title`` and
            ``summary``, or ``text_column``, and ``label_column``).
        stream : bool, optional
            Read the file through Ray Data in batches; None: only when it would not fit in memory.

        Returns
        -------
        dict
            ``n``, ``seeds``, ``macro_f1``, ``weighted_f1``, ``accuracy`` (means over seeds),
            ``std`` of each, and ``per_class`` precision / recall / F1 / support: what
            ``abexrat evaluate --json`` writes.
        """
        from abexrat.data import streams
        from abexrat.metrics import score_confusion

        loaded = self.loaded
        if isinstance(data, str | Path) and stream is not False and streams(Path(data), bool(stream)):
            from abexrat.stream import stream_confusion

            conf, n = stream_confusion(self.folder, Path(data), len(loaded.classes), text_column, label_column)
            return self.result(data, n, score_confusion(conf, loaded.classes))
        texts, y = read_labeled(data, text_column, label_column, loaded.classes)
        name = data if isinstance(data, str | Path) else "<rows>"
        return self.result(name, len(texts), self.score(texts, y, progress))

    def score(
        self, texts: Sequence[str], y: Sequence[int], progress: Any = None, robustness: bool = False
    ) -> dict[str, Any]:
        """Scores over seeds of ``texts`` with true class indices ``y`` (length n each): per metric
        ``{"mean", "std", "per_seed"}``, ``per_class`` and ``confusion`` (see :mod:`abexrat.metrics`);
        with ``robustness``, also ``robustness`` (attacks and natural perturbations, see
        :mod:`abexrat.robustness`)."""
        import numpy as np

        from abexrat.embed import embed_texts
        from abexrat.metrics import score
        from abexrat.train import predict_proba

        loaded = self.loaded
        bar = progress.task("encoding", len(texts)) if progress else None
        X = embed_texts(loaded.encoder, list(texts), progress=bar)
        s = score(np.asarray(y), predict_proba(loaded.model, X).argmax(-1), loaded.classes)
        if robustness:
            from abexrat.robustness import evaluate_run

            s["robustness"] = evaluate_run(loaded, X, np.asarray(y), list(texts))
        return s

    def result(self, data: Any, n: int, s: dict[str, Any]) -> dict[str, Any]:
        """What ``abexrat evaluate --json`` writes, from :meth:`score`'s scores of ``n`` reports of ``data``."""
        keys = ("macro_f1", "weighted_f1", "accuracy")
        return {
            "run": str(self.loaded.folder),
            "data": str(data),
            "n": n,
            "seeds": self.loaded.seeds,
            **{k: s[k]["mean"] for k in keys},
            "std": {k: s[k]["std"] for k in keys},
            "per_class": {
                c: {k: v["mean"] if isinstance(v, dict) else v for k, v in d.items()} for c, d in s["per_class"].items()
            },
            **({"robustness": s["robustness"]} if "robustness" in s else {}),
        }


def _rows(data: Any, text_column: str | None) -> tuple[Path, list[dict[str, Any]]]:
    from abexrat.core.errors import UserError
    from abexrat.data import read_rows

    if isinstance(data, str | Path):
        rows = read_rows(Path(data), text_field=text_column or "summary")
        where = Path("<stdin>") if str(data) == "-" else Path(data)
    else:
        rows, where = [dict(r) for r in data], Path("<rows>")
    if not rows:
        raise UserError(f"{where}: no rows")
    return where, rows


def read_texts(where: Path, rows: list[dict[str, Any]], text_column: str | None) -> tuple[list[str], list[str]]:
    """Each row's id and text (``text_column``, else title + summary), checked as training checks them."""
    from abexrat.rows import Columns, row_id, row_text

    cols = Columns(text=text_column)
    texts = [row_text(where, i, r, cols) for i, r in enumerate(rows)]
    ids = [row_id(r, i) for i, r in enumerate(rows)]
    return ids, texts


def read_labeled(
    data: Any, text_column: str | None, label_column: str, classes: list[str]
) -> tuple[list[str], list[int]]:
    """The texts of labeled reports (a file or rows) and their class indices in ``classes``; a
    label the run does not know names its row."""
    from abexrat.rows import class_index

    where, rows = _rows(data, text_column)
    _, texts = read_texts(where, rows, text_column)
    index = {c: k for k, c in enumerate(classes)}
    return texts, [class_index(where, f"row {i}", r, label_column, index) for i, r in enumerate(rows)]


def read_reports(path: Path, text_column: str | None) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """The ids, texts and rows of a file of reports (``-``: standard input)."""
    where, rows = _rows(path, text_column)
    ids, texts = read_texts(where, rows, text_column)
    return ids, texts, rows


__all__ = ["Run", "load_run", "read_labeled", "read_reports", "train", "train_config"]
