"""``abexrat augment``: ABEX synthetic-report pools (``run``) and the paper's own (``import-published``).

Imports of ``abexrat.cli`` (consoles, progress bars) happen inside the commands: ``abexrat.cli``
imports this module while it is still being defined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

augment_app = typer.Typer(no_args_is_help=True, help="ABEX augmentation: build pools of synthetic reports.")


def _summary_table(summary: dict[str, Any], title: str) -> Any:
    from rich.table import Table

    counts = summary["counts"]
    table = Table(title=title)
    for col in ("class", "sources", "generated", "kept"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for cls, c in counts["per_class"].items():
        table.add_row(cls, str(c["sources"]), str(c["generated"]), str(c["kept"]))
    table.add_row("total", str(counts["sources"]), str(counts["generated"]), str(counts["kept"]), style="bold")
    return table


@augment_app.command("run")
def run(
    config: Annotated[Path, typer.Argument(help="augment config YAML, e.g. studies/augment_qwen3.yaml")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="pool folder to write (pool.parquet, rejected.parquet, pool.json)")
    ],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override: key=value (e.g. expand.temperature=0.9)")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="OSHA files folder (else $ABEXRAT_DATA_DIR, else the cache)")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option("--cache-dir", help="cache root for generated chunks (default: the abexrat cache)")
    ] = None,
) -> None:
    """Abstract each selected report with an LLM, expand each abstract into k new reports, filter, write a pool.

    Generated rows are cached per chunk: a rerun generates nothing, an interrupted run resumes.
    """
    from abexrat.augment.config import load_augment_config
    from abexrat.augment.pipeline import run_augment
    from abexrat.console import err, out, progress

    overrides = list(set_ or []) + ([f"data.data_dir={data_dir}"] if data_dir else [])
    cfg = load_augment_config(config, overrides)
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False  # ours below says the same, once
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    with progress() as bar:
        summary = run_augment(cfg, out_dir, cache_root=cache, where=str(config), progress=bar.task)
    out.print(_summary_table(summary, f"{cfg.name}: synthetic reports per class"))
    removed = ", ".join(f"{k} {v}" for k, v in summary["counts"]["removed"].items())
    r = summary["run"]
    err.print(
        f"sources: {r['sources_generated']} generated, {r['sources_cached']} cached; removed by filter: {removed}"
    )
    if r["sources_generated"]:
        err.print(
            f"{r['abstract_tokens'] + r['expand_tokens']:,} tokens in {r['generate_s']:.1f} s "
            f"({r['tokens_per_s']:.1f} tokens/s)"
        )
    out.print(f"wrote {out_dir}/pool.parquet ({summary['rows']} rows) and pool.json")


@augment_app.command("import-published")
def import_published_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="pool folder to write (pool.parquet, pool.json)")],
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="OSHA files folder (else $ABEXRAT_DATA_DIR, else the cache)")
    ] = None,
) -> None:
    """Turn the paper's 2,785 published synthetic rows (train_aug.json) into a pool of the same format."""
    from abexrat.augment.published import import_published
    from abexrat.console import out

    summary = import_published(out_dir, data_dir)
    out.print(_summary_table(summary, "published ABEX rows per class"))
    out.print(f"wrote {out_dir}/pool.parquet ({summary['rows']} rows) and pool.json")
