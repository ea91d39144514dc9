"""The dataset a training config names: the OSHA data, a folder of split files or one table,
with the synthetic pool ``data.aug_pool`` asks for."""

from __future__ import annotations

from pathlib import Path

from abexrat.config import TrainConfig
from abexrat.core.errors import UserError
from abexrat.data import Dataset, load_splits, load_table
from abexrat.osha import load_osha
from abexrat.rows import Columns


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
