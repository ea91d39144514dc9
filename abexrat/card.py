"""A run folder's ``README.md``: a Hugging Face model card, so the folder can go to the Hub as it is.

The YAML front matter is ``huggingface_hub``'s own (:class:`~huggingface_hub.ModelCardData` with
one ``model-index`` result per split and metric, the values those of ``metrics.json``: fractions,
the mean over the run's seeds); the body says what the model is, its config, its scores with
intervals, a per-class table, what it is for and not, and how it was chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from abexrat.metrics import scores

METRICS = (  # metrics.json key, model-index type, name, args
    ("macro_f1", "f1", "macro-F1", {"average": "macro"}),
    ("weighted_f1", "f1", "weighted-F1", {"average": "weighted"}),
    ("accuracy", "accuracy", "accuracy", None),
)
BOOTSTRAP = 2000

TEMPLATE = """---
{{ card_data }}
---

# {{ name }}

An [abexrat](https://arxiv.org/abs/2509.02072) text classifier (ABEX-RAT): a frozen `{{ encoder }}`
encoder and, per seed, {{ ensemble }} MLP(s) {{ hidden }} trained with {{ loss }} loss and
`{{ method }}` adversarial training (ε = {{ eps }}, p = {{ p }}), augmentation ratio r = {{ ratio }}.
It assigns each accident report one of {{ classes | length }} classes; its prediction is the
probability average of its {{ seeds | length }} seed model(s) (seeds {{ seeds | join(", ") }}).

```python
import abexrat

run = abexrat.load_run("{{ folder_hint }}")
run.predict(["Employee fell from a ladder while painting"])   # labels
run.predict_proba(["..."])                                      # (n, {{ classes | length }}) probabilities
```

or `abexrat predict {{ folder_hint }} reports.jsonl`.

## Scores

Mean ± standard deviation over the {{ seeds | length }} seed(s); the interval is a 95% bootstrap
interval of that mean ({{ bootstrap }} resamples of each split's reports within each class, drawn from
each seed's confusion matrix).

| split | reports | macro-F1 | weighted-F1 | accuracy |
| --- | ---: | ---: | ---: | ---: |
{% for row in score_rows -%}
| {{ row.split }} | {{ row.n }} | {{ row.cells | join(" | ") }} |
{% endfor %}
### Per class ({{ per_class_split }})

| class | precision | recall | F1 | reports |
| --- | ---: | ---: | ---: | ---: |
{% for row in class_rows -%}
| {{ row | join(" | ") }} |
{% endfor %}
## Intended use and limits

- **For**: sorting occupational accident reports (OSHA-style narratives, optionally with a title)
  into the {{ classes | length }} event classes below, to triage or count them; a person checks what matters.
- **Not for**: deciding anything about a person or a claim on its own; text unlike its training
  reports (other languages, other domains). The rare classes have few test reports, so their
  scores move in large steps: read the per-class table, not only the macro-F1.
- Classes: {{ classes | join("; ") }}.
- Trained on `{{ dataset }}`; no report's text is stored in this folder (the tf-idf vocabulary is).

## How it was chosen

{{ chosen }}

## Config

```yaml
{{ config_yaml }}```
"""


def _interval(per_seed_conf: list[list[list[int]]], key: str, rng: np.random.Generator) -> tuple[float, float]:
    """95% bootstrap interval of the seed-mean of ``key``: each seed's reports resampled within each
    true class (multinomial draws from its confusion matrix's rows)."""
    conf = np.asarray(per_seed_conf, dtype=np.int64)  # (S, C, C)
    n = conf.sum(-1, keepdims=True)  # (S, C, 1)
    p = np.divide(conf, n, out=np.zeros(conf.shape), where=n > 0)
    draws = np.stack([rng.multinomial(n[..., 0], p) for _ in range(BOOTSTRAP)])  # (B, S, C, C)
    values = scores(draws)[key].mean(-1)  # (B,)
    lo, hi = np.quantile(values, [0.025, 0.975])
    return float(lo), float(hi)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _score_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows = []
    for split in ("val", "test", "cv"):
        s = metrics.get(split)
        if not isinstance(s, dict) or "macro_f1" not in s:
            continue
        conf = (s.get("confusion") or {}).get("per_seed")
        cells = []
        for key, *_ in METRICS:
            cell = f"{_pct(s[key]['mean'])} ± {_pct(s[key]['std'])}"
            if conf:
                lo, hi = _interval(conf, key, rng)
                cell += f" [{_pct(lo)}, {_pct(hi)}]"
            cells.append(cell)
        n = (
            int(np.asarray(conf[0]).sum())
            if conf
            else sum(c.get("support", 0) for c in s.get("per_class", {}).values())
        )
        rows.append({"split": split, "n": n, "cells": cells})
    return rows


def _class_rows(split_scores: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, d in (split_scores.get("per_class") or {}).items():
        rows.append([name, *(_pct(d[k]["mean"]) for k in ("precision", "recall", "f1")), str(d["support"])])
    return rows


def card_data(cfg: Any, metrics: dict[str, Any]) -> Any:
    """The front matter: license, tags, dataset and one ``model-index`` entry per split and metric."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset = Path(str(cfg.data.dataset)).name  # a name, not this machine's path
    results = [
        EvalResult(
            task_type="text-classification",
            task_name="Text Classification",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=mtype,
            metric_value=metrics[split][key]["mean"],
            metric_name=f"{split} {label}",
            metric_args=args,
        )
        for split in ("test", "val")
        if isinstance(metrics.get(split), dict) and "macro_f1" in metrics[split]
        for key, mtype, label, args in METRICS
    ]
    return ModelCardData(
        model_name=cfg.name,
        license="mit",
        library_name="abexrat",
        pipeline_tag="text-classification",
        language=["en"],
        tags=["abexrat", "abex-rat", "text-classification", "occupational-safety", "osha", cfg.adversarial.method],
        datasets=[dataset] if dataset == "osha" else None,
        metrics=["f1", "accuracy"],
        eval_results=results or None,
    )


def model_card(cfg: Any, metrics: dict[str, Any], chosen: str | None = None) -> str:
    """The card's text for a run of ``cfg`` with ``metrics`` (metrics.json); ``chosen``: how its
    config was chosen (a study says so), else the card says it was trained as given."""
    from huggingface_hub import ModelCard

    split = "test" if "per_class" in (metrics.get("test") or {}) else "val"
    config = cfg.model_dump(mode="json")
    card = ModelCard.from_template(
        card_data(cfg, metrics),
        template_str=TEMPLATE,
        name=cfg.name,
        encoder=cfg.encoder.name,
        ensemble=cfg.model.ensemble,
        hidden=cfg.model.hidden,
        loss=cfg.loss.name,
        method=cfg.adversarial.method,
        eps=f"{cfg.adversarial.eps:.3g}",
        p=f"{cfg.adversarial.p:.3g}",
        ratio=f"{cfg.data.aug_ratio:.3g}",
        classes=list(metrics.get("classes") or []),
        seeds=list(metrics.get("seeds") or []),
        folder_hint="RUN_DIR",
        bootstrap=BOOTSTRAP,
        score_rows=_score_rows(metrics),
        per_class_split=split,
        class_rows=_class_rows(metrics.get(split) or {}),
        dataset=Path(str(cfg.data.dataset)).name,
        chosen=chosen
        or "Trained as configured (`abexrat train`): no search chose this config, and no score here chose anything.",
        config_yaml=yaml.safe_dump(config, sort_keys=False),
    )
    return str(card.content)


def study_provenance(study: Any, best_value: float, trials: int) -> str:
    """How a study chose its best config, for the card of its ``best/`` folder."""
    metric = study.objective.metric
    on = (
        f"{study.cv.folds}-fold cross-validation over {' + '.join(study.cv.splits)}"
        if study.cv is not None
        else "the validation split"
    )
    if study.kind == "search":
        how = (
            f"the best of {trials} configurations that Optuna's TPE sampler proposed on Ray Tune "
            f"(space: {', '.join(f'`{k}`' for k in study.space)}), each trained with "
            f"{study.seeds_per_trial} seed(s)"
        )
    else:
        how = f"the best arm of an ablation grid of {trials} arms, each trained with {study.final.seeds} seed(s)"
    over = f" with `final.overrides` {study.final.overrides}" if study.final.overrides else ""
    return (
        f"Study `{study.name}` (`abexrat study run`): {how}, ranked by `{metric}` on {on} "
        f"(best: {_pct(best_value)}). That configuration was then trained again with "
        f"{study.final.seeds} seeds{over} and scored once on test: the test split informed no choice."
    )
