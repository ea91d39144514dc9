"""The ``abexrat`` command line: data, embed, train, evaluate, predict.

Bad input ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from abexrat.console import err, out, progress
from abexrat.core.errors import Interrupted, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter searches and ablations of ABEX-RAT (OSHA accident-report classification).",
)
data_app = typer.Typer(no_args_is_help=True, help="Get and check datasets.")
app.add_typer(data_app, name="data")
from abexrat.augment.cli import augment_app  # noqa: E402

app.add_typer(augment_app, name="augment")
study_app = typer.Typer(no_args_is_help=True, help="Searches and ablations on Ray Tune + Optuna.")
app.add_typer(study_app, name="study")

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="OSHA files folder (else $ABEXRAT_DATA_DIR, else the cache)")
]
StreamFlag = Annotated[
    bool,
    typer.Option(
        "--stream",
        help="read the file through Ray Data in batches (automatic when it would not fit in memory; "
        ".jsonl, .csv or .parquet)",
    ),
]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


# ---------------------------------------------------------------- data


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="dataset to download: osha")] = "osha",
    data_dir: DataDir = None,
    url: Annotated[str | None, typer.Option(help="base URL instead of the pinned GitHub commit (a mirror)")] = None,
) -> None:
    """Download the OSHA splits from the paper's pinned commit and verify their sha256."""
    from abexrat.osha import fetch_osha, resolve_data_dir

    if name != "osha":
        raise UserError(f"data fetch: unknown dataset {name!r} (known: osha)")
    files = fetch_osha(data_dir, url, progress=lambda f, n: err.print(f"downloaded {f} ({n:,} bytes)"))
    out.print(f"OSHA splits verified in {resolve_data_dir(data_dir)} ({len(files)} files)")


@data_app.command("check")
def data_check(
    config: Annotated[Path | None, typer.Argument(help="a train config naming the dataset (default: osha)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Load a dataset, print class counts per split, and fail (exit 2) on any problem."""
    from abexrat.config import load_train_config
    from abexrat.datasets import load_dataset

    cfg = load_train_config(config, [f"data.data_dir={data_dir}"] if data_dir else [])
    ds = load_dataset(cfg)
    counts = ds.class_counts()
    table = Table(title=f"{ds.name}: reports per class")
    table.add_column("class")
    for split in counts:
        table.add_column(split, justify="right")
    for c in ds.classes:
        table.add_row(c, *(str(counts[s][c]) for s in counts))
    table.add_row("total", *(str(sum(counts[s].values())) for s in counts), style="bold")
    out.print(table)
    notes = [
        f"{s}: class {c!r} has {n} report(s): its F1 moves in large steps"
        for s in ("val", "test")
        for c, n in counts[s].items()
        if 0 < n < 5
    ]
    notes += [f"{s}: class {c!r} has no reports" for s in ("val", "test") for c, n in counts[s].items() if n == 0]
    for note in notes:
        out.print(f"[yellow]note[/]: {note}")
    out.print("no problems found")


# ---------------------------------------------------------------- embed


@app.command()
def embed(
    config: Annotated[Path | None, typer.Argument(help="a train config (dataset + encoder)")] = None,
    encoder: Annotated[
        str | None, typer.Option(help="encoder: wordllama, tfidf-svd, hybrid, hf:<model>, vllm:<model>")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Embed every split of the dataset into the cache (a rerun encodes nothing it has seen)."""
    from abexrat.config import load_train_config
    from abexrat.datasets import load_dataset
    from abexrat.embed import progress_total
    from abexrat.features import build_encoder, featurize, n_to_embed

    sets = ([f"encoder.name={encoder}"] if encoder else []) + ([f"data.data_dir={data_dir}"] if data_dir else [])
    cfg = load_train_config(config, sets)
    ds = load_dataset(cfg)
    enc = build_encoder(cfg)
    n = n_to_embed(ds)
    t0 = time.perf_counter()
    with progress() as bar:
        feats = featurize(ds, enc, progress=bar.task(f"encoding with {cfg.encoder.name}", progress_total(enc, n)))
    s = feats.stats
    out.print(
        f"{n} texts, dim {enc.dim}: {s.encoded} encoded, {s.cached} cached "
        f"({s.encode_s:.2f} s encoding, {time.perf_counter() - t0:.2f} s in all); key {enc.key}"
    )


# ---------------------------------------------------------------- train


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="train config YAML, e.g. studies/baseline.yaml")],
    out_dir: Annotated[Path, typer.Option("--out", help="run folder to write")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override: key=value (e.g. adversarial.eps=0.3)")
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="number of seeds (seed .. seed+N-1)")] = None,
    data_dir: DataDir = None,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="read and encode data.dataset (one .jsonl/.csv/.parquet file) through Ray Data and train "
            "from vectors on disk (automatic when the file does not fit in memory)",
        ),
    ] = False,
) -> None:
    """Train one configuration with N seeds; write metrics.json and one model per seed."""
    from abexrat.api import train as train_run
    from abexrat.config import load_train_config

    overrides = list(set_ or [])
    if seeds is not None:
        overrides.append(f"seeds={seeds}")
    if data_dir:
        overrides.append(f"data.data_dir={data_dir}")
    cfg = load_train_config(config, overrides)
    with progress() as bar:
        m = train_run(cfg, out=out_dir, progress=bar, stream=stream).metrics
    table = Table(title=f"{cfg.name}: {len(m['seeds'])} seed(s), mean ± std")
    for col in ("split", "macro-F1", "weighted-F1", "accuracy"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split in ("val", "test"):
        table.add_row(
            split,
            *(
                f"{_pct(m[split][k]['mean'])} ± {_pct(m[split][k]['std'])}"
                for k in ("macro_f1", "weighted_f1", "accuracy")
            ),
        )
    out.print(table)
    t = m["timings"]
    out.print(
        f"encoding {t['encode_s']:.1f} s ({t['texts_encoded']} encoded, {t['texts_cached']} cached), "
        f"training {t['train_s']:.1f} s, total {t['total_s']:.1f} s; wrote {out_dir}/metrics.json"
    )
    if "robustness" in m:
        from abexrat.robustness import print_block

        print_block(out, m["robustness"])


# ---------------------------------------------------------------- evaluate / predict


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a trained run folder")],
    data: Annotated[Path, typer.Argument(help="labeled reports: .json, .jsonl, .csv or .parquet")],
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the scores here")] = None,
    text_column: Annotated[
        str | None, typer.Option(help="column with the whole text (default: title + summary)")
    ] = None,
    label_column: Annotated[str, typer.Option(help="column with the label")] = "gold",
    stream: StreamFlag = False,
    robustness: Annotated[
        bool, typer.Option("--robustness", help="also score FGM/PGD attacks and natural text perturbations")
    ] = False,
) -> None:
    """Score a run's seed models on any labeled dataset with the same classes."""
    from abexrat.api import load_run, read_labeled
    from abexrat.data import streams

    run = load_run(run_dir)
    if streams(data, stream):
        if robustness:
            raise UserError(f"{data}: --robustness scores a file held in memory, not one streamed through Ray Data")
        with out.status(f"streaming {data.name} through Ray Data"):
            result = run.evaluate(data, text_column, label_column, stream=True)
        _print_scores(result, data, json_out)
        return
    texts, y = read_labeled(data, text_column, label_column, run.classes)
    with progress() as bar:
        s = run.score(texts, y, progress=bar, robustness=robustness)
    _print_scores(run.result(data, len(texts), s), data, json_out)


def _print_scores(result: dict[str, Any], data: Path, json_out: Path | None) -> None:
    from abexrat.core.io import write_json

    n = result["n"]
    table = Table(title=f"{data.name}: {n} reports, mean over {len(result['seeds'])} seed(s)")
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c, d in result["per_class"].items():
        table.add_row(c, _pct(d["precision"]), _pct(d["recall"]), _pct(d["f1"]), str(d["support"]))
    out.print(table)
    out.print(
        f"macro-F1 {_pct(result['macro_f1'])}  weighted-F1 {_pct(result['weighted_f1'])}  "
        f"accuracy {_pct(result['accuracy'])}"
    )
    if "robustness" in result:
        from abexrat.robustness import print_block

        print_block(out, result["robustness"])
    if json_out:
        write_json(json_out, result)


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="a trained run folder")],
    input_file: Annotated[
        Path,
        typer.Argument(
            help="reports: .json, .jsonl, .csv or .parquet (title/summary or --text-column); "
            "- reads standard input: JSON Lines, or one report's text per line"
        ),
    ],
    text_column: Annotated[
        str | None, typer.Option(help="column with the whole text (default: title + summary)")
    ] = None,
    json_lines: Annotated[bool, typer.Option("--jsonl", help="print one JSON object per report")] = False,
    stream: StreamFlag = False,
) -> None:
    """Print a label and class probabilities (mean over the run's seeds) for each report."""
    from abexrat.api import load_run, read_reports
    from abexrat.data import streams

    run = load_run(run_dir)
    if stream and str(input_file) == "-":
        raise UserError("--stream reads a file; standard input (-) is read whole")
    if streams(input_file, stream):
        from abexrat.stream import scored_batches

        for b in scored_batches(run_dir, input_file, text_column):
            _print_predictions(run.classes, [str(i) for i in b["id"]], b["proba"], json_lines)
        return
    ids, texts, _ = read_reports(input_file, text_column)
    _print_predictions(run.classes, ids, run.predict_proba(texts), json_lines)


def _print_predictions(classes: list[str], ids: list[str], proba: Any, json_lines: bool) -> None:
    """proba (n, C): one line per report."""
    for rid, p in zip(ids, proba):
        label = classes[int(p.argmax())]
        probs = {c: round(float(v), 4) for c, v in zip(classes, p)}
        if json_lines:
            sys.stdout.write(json.dumps({"id": rid, "label": label, "probabilities": probs}) + "\n")
        else:
            # plain lines, not rich's: a pipe must get one unwrapped, unstyled line per report
            top = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
            sys.stdout.write(f"{rid}\t{label}\t" + "  ".join(f"{c}={v:.3f}" for c, v in top) + "\n")


@study_app.command("run")
def study_run(
    study_file: Annotated[Path, typer.Argument(help="a study YAML, e.g. studies/quickstart.yaml")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="study folder (default: runs/<name>)")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (else $RAY_ADDRESS, else a local Ray)")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted study in --out")] = False,
    name: Annotated[str | None, typer.Option(help="study name (default: the file's)")] = None,
    data_dir: DataDir = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="do not write STUDY_DIR/report")] = False,
) -> None:
    """Run a search or an ablation, retrain the best with K seeds, score it once on test."""
    from abexrat.study_api import study

    result = study(
        study_file, out=out_dir, address=address, resume=resume, name=name, data_dir=data_dir, report=not no_report
    )
    s, folder = result.summary, result.folder
    b = s["best_config"]
    stopped = {"TIMEOUT": "past trial_time_s", "OOM": "past trial_memory_gb", "BUDGET": "cut by time_budget_s"}
    why = ", ".join(f"{n} {stopped[k]}" for k, n in s.get("trials_stopped", {}).items() if n and k in stopped)
    out.print(f"[bold]{result.name}[/]: {s['trials']} trials{f' ({why})' if why else ''} in {s['wall_s']:.0f} s")
    out.print(
        f"best: method={b['method']} eps={b['eps']:.3g} p={b['p']:.3g} r={b['aug_ratio']:.3g}  "
        f"val macro-F1 {_pct(s['best_val_macro_f1'])} (search), "
        f"{_pct(s['val']['macro_f1']['mean'])} ± {_pct(s['val']['macro_f1']['std'])} ({len(s['seeds'])} seeds)"
    )
    t = s["test"]
    out.print(
        f"test macro-F1 {_pct(t['macro_f1']['mean'])} ± {_pct(t['macro_f1']['std'])}, "
        f"weighted-F1 {_pct(t['weighted_f1']['mean'])} ± {_pct(t['weighted_f1']['std'])}  (paper: 90.32 / 92.82)"
    )
    for bname, bl in s["baselines"].items():
        out.print(
            f"baseline {bname}: test macro-F1 {_pct(bl['test']['macro_f1']['mean'])} ± "
            f"{_pct(bl['test']['macro_f1']['std'])}"
        )
    out.print(
        f"wrote {folder}/summary.json and trials.parquet"
        + ("" if no_report else f"; report: {folder}/report/index.html")
    )
    if s.get("best_run"):
        out.print(f"best model: {folder / s['best_run']}  (abexrat predict {folder / s['best_run']} INPUT)")
    else:
        out.print(f"best config: {folder}/best.yaml  (abexrat train {folder}/best.yaml --out DIR trains its model)")
    if s["tracking"]["mode"] == "offline":
        out.print(f"W&B runs are offline; upload them with: wandb sync {s['tracking']['dir']}/offline-run-*")


# ---------------------------------------------------------------- report


@app.command()
def report(
    study_dir: Annotated[Path, typer.Argument(help="a study folder written by `abexrat study run`")],
    out_dir: Annotated[Path, typer.Option("--out", help="report folder to write, e.g. reports/NAME")],
    compare: Annotated[
        list[Path] | None, typer.Option("--compare", help="another study folder to compare with (repeatable)")
    ] = None,
) -> None:
    """Write index.html, report.md and PNG figures: headline with bootstrap intervals, ablation, search, cost."""
    from abexrat.report import build_report

    index = build_report(study_dir, out_dir, list(compare or []))
    out.print(f"wrote {index}", highlight=False, soft_wrap=True)


# ---- end report ----


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="abexrat")
    except UserError as e:
        err.print(f"[red]error[/]: {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Interrupted as e:
        err.print(f"[yellow]{e}[/]", highlight=False, soft_wrap=True)
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
