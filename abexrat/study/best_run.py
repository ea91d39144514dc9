"""``DIR/best``: the final round's best model written as an ``abexrat train`` run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def take_model(best_sink: Any) -> tuple[dict[str, bytes], dict[str, Any]] | None:
    import ray

    try:
        return ray.get(best_sink.take.remote())
    except ray.exceptions.RayError:  # its node died: the study's results stand without the model
        return None


def write_best_run(
    out: Path,
    best_cfg: Any,
    encoder: Any,
    model: tuple[dict[str, bytes], dict[str, Any]] | None,
    chosen: str | None = None,
) -> str | None:
    """``out/best``: the final round's best model as an ``abexrat train`` run folder (predict and
    evaluate read it), written whole or not at all. ``encoder``: the study's, as fitted for the
    shared features, is the model's (no trial may change an encoder key: ``load_study``). None when
    the model did not come back (the final round was resumed after the best arm had finished, or the
    sink's node died): then ``abexrat train out/best.yaml`` trains it."""
    import shutil

    from abexrat.run_folder import write_run

    if model is None:
        return None
    partial = out / ".best.partial"
    shutil.rmtree(partial, ignore_errors=True)
    write_run(partial, best_cfg, encoder, *model, chosen=chosen)
    shutil.rmtree(out / "best", ignore_errors=True)
    partial.rename(out / "best")
    return "best"
