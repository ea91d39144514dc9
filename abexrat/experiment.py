"""One configuration end to end: dataset -> features -> seeds trained -> scores and artifacts.

A run folder holds::

    metrics.json                      config, seeds, val/test scores (written last)
    config.yaml                       the resolved config
    encoder/encoder.{json,safetensors} the fitted encoder
    models/seed-<k>/model.safetensors one MLP per seed, plus model.json (shapes, classes)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from abexrat.config import TrainConfig
from abexrat.core.errors import UserError
from abexrat.core.io import write_bytes, write_json, write_text
from abexrat.data import (
    Columns,
    Dataset,
    Split,
    first_sentence,
    load_osha,
    load_splits,
    load_table,
    select_synthetic,
    split_title,
)
from abexrat.embed import EmbeddingCache, EmbedStats, embed_texts, fitted_encoder
from abexrat.encoders import Encoder, leaves, load_encoder, make_encoder, save_encoder
from abexrat.metrics import score
from abexrat.model import EnsembleMLP
from abexrat.train import TrainResult, fit, predict_proba


def columns(cfg: TrainConfig) -> Columns:
    d = cfg.data
    return Columns(text=d.text_column, label=d.label_column, title=d.title_column, summary=d.summary_column)


def load_dataset(cfg: TrainConfig) -> Dataset:
    """The config's dataset with its synthetic pool (``data.aug_pool``) attached."""
    d = cfg.data
    if d.dataset == "osha":
        ds = load_osha(d.data_dir)
    else:
        path = Path(d.dataset)
        if path.is_dir():
            files = {
                s: next(
                    (
                        path / f"{s}{ext}"
                        for ext in (".json", ".jsonl", ".csv", ".parquet")
                        if (path / f"{s}{ext}").is_file()
                    ),
                    None,
                )
                for s in ("train", "val", "test")
            }
            if files["train"] is None:
                raise UserError(f"{path}: no train.(json|jsonl|csv|parquet) in this folder")
            if files["val"] is None or files["test"] is None:
                raise UserError(f"{path}: has a train file but no val and test files")
            ds = load_splits(files["train"], files["val"], files["test"], columns(cfg))
        else:
            ds = load_table(path, columns(cfg), d.val_fraction, d.test_fraction, d.split_seed)
    if d.aug_pool == "none":
        return Dataset(ds.name, ds.classes, ds.train, ds.val, ds.test, ds.train.subset([]))
    if d.aug_pool == "published":
        return ds
    from abexrat.pool import read_pool

    return Dataset(ds.name, ds.classes, ds.train, ds.val, ds.test, read_pool(Path(d.aug_pool), ds))


@dataclass
class Features:
    """Every vector a trial needs. X_* are float32 (n, dim); y_* int64 (n,)."""

    classes: list[str]
    X_train: np.ndarray
    y_train: np.ndarray
    X_synth: np.ndarray
    y_synth: np.ndarray
    synth_sources: list[str]
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    encoder_key: str
    stats: EmbedStats
    # The titled training originals again, embedded without their title (``data.untitled_copies``).
    X_untitled: np.ndarray | None = None
    y_untitled: np.ndarray | None = None
    # Every training original again as its narrative's first sentence, untitled (``data.short_copies``).
    X_short: np.ndarray | None = None
    y_short: np.ndarray | None = None
    # Streamed features (``abexrat.stream_train``): the X_* are memory-mapped from this folder, and
    # pickling them (``ray.put``) sends the folder's name, not the arrays.
    mapped: str | None = None
    # Val's and test's reports under each natural perturbation, encoded once (``abexrat.perturb``):
    # split -> perturbation -> (n, dim), plus "_changed" (the share of reports each one changed).
    perturbed: dict[str, dict[str, np.ndarray]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.mapped:
            state.update(X_train=None, X_val=None, X_test=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.mapped:
            from abexrat.stream_train import open_split

            (self.X_train, _), (self.X_val, _), (self.X_test, _) = (
                open_split(Path(self.mapped), s) for s in ("train", "val", "test")
            )

    def training_set(
        self, ratio: float, seed: int, untitled: bool = False, short: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Originals plus, per class, the first ceil(ratio n) synthetic rows in a seeded order, plus
        (``untitled``) the titled originals without their title and (``short``) every original's
        first sentence. X (n, dim) float32, y (n,) int64 (the originals themselves, not a copy,
        when nothing is added)."""
        pool = Split([""] * len(self.y_synth), [""] * len(self.y_synth), self.y_synth, self.synth_sources)
        pick = select_synthetic(pool, len(self.classes), ratio, seed)
        copies = [
            (X, y)
            for on, X, y in ((untitled, self.X_untitled, self.y_untitled), (short, self.X_short, self.y_short))
            if on and X is not None
        ]
        if not len(pick) and not copies:
            return self.X_train, self.y_train
        Xs, ys = [self.X_train, self.X_synth[pick]], [self.y_train, self.y_synth[pick]]
        for X, y in copies:
            Xs.append(X)
            ys.append(y)
        return np.concatenate(Xs), np.concatenate(ys)

    def training_set_for(self, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`training_set` as ``cfg.data`` asks for it."""
        d = cfg.data
        return self.training_set(d.aug_ratio, d.aug_seed, d.untitled_copies, d.short_copies)


def build_encoder(cfg: TrainConfig) -> Encoder:
    enc = make_encoder(cfg.encoder.name, **cfg.encoder.options)
    enc.title_weight = cfg.encoder.title_weight
    enc.fit_synthetic = cfg.encoder.fit_synthetic
    return enc


def fit_texts(ds: Dataset, enc: Encoder) -> list[str]:
    """What a fitted encoder (tf-idf) learns from: the training originals, and with
    ``enc.fit_synthetic`` the synthetic pool too (never val or test)."""
    return ds.train.texts + (ds.synthetic.texts if enc.fit_synthetic else [])


def n_to_embed(ds: Dataset, untitled: bool = True, short: bool = True) -> int:
    """How many texts ``featurize`` embeds (for progress bars)."""
    titled = sum(1 for t in ds.train.texts if split_title(t)[0]) if untitled else 0
    return len(ds.train) * (1 + short) + len(ds.synthetic) + len(ds.val) + len(ds.test) + titled


def featurize(
    ds: Dataset,
    enc: Encoder,
    cache: EmbeddingCache | None = None,
    progress: Callable[[int], None] | None = None,
    untitled: bool = True,
    short: bool = True,
) -> Features:
    """Embed every split (the tf-idf part fits on training rows only, see ``fit_texts``), and (a
    study may search ``data.untitled_copies`` and ``data.short_copies``) with ``untitled`` the
    titled training originals once more without their title, with ``short`` every training
    original as its narrative's first sentence."""
    stats = EmbedStats()
    titled = [i for i, t in enumerate(ds.train.texts) if untitled and split_title(t)[0]]
    kept = ds.train.subset(titled)
    bare = Split(kept.ids, [split_title(t)[1] for t in kept.texts], kept.labels)
    cut = ds.train if short else ds.train.subset([])
    first = Split(cut.ids, [first_sentence(t) for t in cut.texts], cut.labels)
    parts = [ds.train, ds.synthetic, ds.val, ds.test, bare, first]
    texts = [t for p in parts for t in p.texts]
    X = embed_texts(enc, texts, fit_texts=fit_texts(ds, enc), cache=cache, stats=stats, progress=progress)
    cuts = np.cumsum([len(p) for p in parts])[:-1]
    Xtr, Xsy, Xva, Xte, Xun, Xsh = np.split(X, cuts)
    return Features(
        ds.classes,
        Xtr,
        ds.train.labels,
        Xsy,
        ds.synthetic.labels,
        ds.synthetic.source_ids,
        Xva,
        ds.val.labels,
        Xte,
        ds.test.labels,
        enc.key,
        stats,
        Xun,
        bare.labels,
        Xsh if short else None,
        first.labels if short else None,
    )


def train_and_score(
    feats: Features,
    cfg: TrainConfig,
    seeds: list[int],
    on_epoch: Callable[[int, dict[str, list[float]]], None] | None = None,
    with_test: bool = True,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train all seeds on the config's training set; score on val and, ``with_test``, on test (test is
    never used to choose: a search trial does not even score it)."""
    X, y = feats.training_set_for(cfg)
    result = fit(X, y, len(feats.classes), cfg, seeds, val=(feats.X_val, feats.y_val), on_epoch=on_epoch)
    scores: dict[str, Any] = {}
    splits = [("val", feats.X_val, feats.y_val)] + ([("test", feats.X_test, feats.y_test)] if with_test else [])
    for split, Xs, ys in splits:
        pred = predict_proba(result.model, Xs).argmax(-1)
        scores[split] = score(ys, pred, feats.classes)
        if not feats.mapped:  # (S, n): paired tests compare these; a streamed dataset's are too many
            scores[f"{split}_pred"] = pred.astype(int).tolist()
    scores["train_size"] = int(len(y))
    if cfg.robustness.enabled:
        from abexrat.robustness import evaluate

        robust = {split: (Xs, ys) for split, Xs, ys in splits}
        n = len(feats.classes)
        scores["robustness"], preds = evaluate(result.model, robust, n, result.scale, cfg.robustness, feats.perturbed)
        if not feats.mapped:
            scores["robustness_pred"] = preds
    return result, scores


def train_and_score_variants(
    feats: Features,
    cfg: TrainConfig,
    seeds: list[int],
    variants: list[tuple[float, float]],
    on_epoch: Callable[[int, dict[str, list[float]]], None] | None = None,
) -> tuple[TrainResult, list[dict[str, Any]]]:
    """Train ``cfg`` under each (eps, p) variant as one batched model and score each on val (a
    search trial's work for several configurations at once). Returns the result (its records hold
    G S values, variant by variant) and one ``{"val": score, "train_size": n}`` per variant."""
    X, y = feats.training_set_for(cfg)
    val = (feats.X_val, feats.y_val)
    result = fit(X, y, len(feats.classes), cfg, seeds, val=val, on_epoch=on_epoch, variants=variants)
    pred = predict_proba(result.model, feats.X_val).argmax(-1)  # (G S, n)
    S = len(seeds)
    return result, [
        {"val": score(feats.y_val, pred[j * S : (j + 1) * S], feats.classes), "train_size": int(len(y))}
        for j in range(len(variants))
    ]


def model_files(result: TrainResult, classes: list[str], encoder_key: str) -> dict[str, bytes]:
    """Every seed's MLP as a run folder's files (``models/seed-<s>/model.safetensors`` and
    ``model.json``), as bytes: a study's trial sends them to the driver, which has the encoder."""
    from safetensors.torch import save

    files = {}
    for s, seed in enumerate(result.seeds):
        folder = f"models/seed-{seed}"
        files[f"{folder}/model.safetensors"] = save(result.model.seed_state(s))
        meta = {
            "seed": seed,
            "dims": result.model.dims,
            "ensemble": result.model.group,
            "classes": classes,
            "encoder_key": encoder_key,
            "input_scale": result.scale,
        }
        files[f"{folder}/model.json"] = (json.dumps(meta, indent=2) + "\n").encode()
    return files


def save_run(
    out: Path, cfg: TrainConfig, enc: Encoder, classes: list[str], result: TrainResult, metrics: dict[str, Any]
) -> None:
    """Write a run folder; metrics.json goes last, so its presence marks a complete run."""
    write_run(out, cfg, enc, model_files(result, classes, enc.key), metrics)


def write_run(
    out: Path,
    cfg: TrainConfig,
    enc: Encoder,
    files: dict[str, bytes],
    metrics: dict[str, Any],
    chosen: str | None = None,
) -> None:
    """A run folder from its parts (``files``: :func:`model_files`), its model card (README.md;
    ``chosen``: how a study chose its config), metrics.json last."""
    from abexrat.card import model_card

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    save_encoder(enc, out / "encoder")
    for name, data in files.items():
        write_bytes(out / name, data)
    write_text(out / "README.md", model_card(cfg, metrics, chosen))
    write_json(out / "metrics.json", metrics)


@dataclass
class LoadedRun:
    folder: Path
    config: dict[str, Any]
    classes: list[str]
    encoder: Encoder
    model: EnsembleMLP
    seeds: list[int]


def load_run(folder: str | Path) -> LoadedRun:
    """A trained run: its encoder and every seed's MLP (safetensors + JSON, no pickle)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise UserError(f"{metrics_path}: not found; {folder} is not a finished run (abexrat train ... --out {folder})")
    try:
        metrics = json.loads(metrics_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{metrics_path}: not valid JSON") from None
    seeds = metrics.get("seeds") or []
    states, classes = [], None
    for seed in seeds:
        mdir = folder / "models" / f"seed-{seed}"
        try:
            meta = json.loads((mdir / "model.json").read_text())
            states.append(load_file(str(mdir / "model.safetensors")))
        except (OSError, ValueError) as e:
            raise UserError(f"{mdir}: cannot load the model of seed {seed} ({e})") from None
        classes = meta["classes"]
    if not states or classes is None:
        raise UserError(f"{metrics_path}: names no seed models")
    enc = load_encoder(folder / "encoder")
    return LoadedRun(folder, metrics.get("config", {}), classes, enc, EnsembleMLP.from_members(states), seeds)


def run_config(cfg: TrainConfig, out: Path, progress: Any = None, stream: bool = False) -> dict[str, Any]:
    """``abexrat train``: load, embed, train ``cfg.seeds`` seeds, score, save. Returns metrics.json.

    A data file too large for memory (or ``stream``) goes through :mod:`abexrat.stream_train`."""
    from abexrat.stream_train import run_streamed, wants_stream

    if wants_stream(cfg, stream):
        return run_streamed(cfg, out, progress)
    t0 = time.perf_counter()
    ds = load_dataset(cfg)
    enc = build_encoder(cfg)
    untitled, short = cfg.data.untitled_copies, cfg.data.short_copies
    n_texts = n_to_embed(ds, untitled, short) * len(leaves(enc))  # the bar advances once per text and encoder part
    advance = progress.task("encoding", n_texts) if progress else None
    cache = EmbeddingCache()
    feats = featurize(ds, enc, cache, advance, untitled=untitled, short=short)
    fitted_encoder(enc, fit_texts(ds, enc), cache)
    if cfg.robustness.enabled:
        from abexrat.perturb import dataset_vectors

        feats.perturbed = dataset_vectors(ds, enc, cfg.robustness, cache)
    seeds = cfg.seed_list()
    tick = progress.task(f"training {len(seeds)} seed(s)", cfg.train.epochs) if progress else None
    result, scores = train_and_score(feats, cfg, seeds, on_epoch=(lambda e, r: tick(1)) if tick else None)
    metrics = run_metrics(cfg, feats, result, scores, scores["train_size"], t0)
    save_run(out, cfg, enc, ds.classes, result, metrics)
    return metrics


def run_metrics(
    cfg: TrainConfig,
    feats: Features,
    result: TrainResult,
    scores: dict[str, Any],
    train_size: int,
    t0: float,
    **extra: Any,
) -> dict[str, Any]:
    """metrics.json of a trained run (``extra`` keys go before the timings)."""
    stats = feats.stats
    return {
        "config": cfg.model_dump(mode="json"),
        "seeds": result.seeds,
        "classes": feats.classes,
        "val": scores["val"],
        "test": scores["test"],
        "train_size": int(train_size),
        "history": result.history,
        **({"robustness": scores["robustness"]} if "robustness" in scores else {}),
        **extra,
        "timings": {
            "encode_s": stats.encode_s,
            "fit_encoder_s": stats.fit_s,
            "texts_encoded": stats.encoded,
            "texts_cached": stats.cached,
            "train_s": result.train_s,
            "total_s": time.perf_counter() - t0,
        },
    }
