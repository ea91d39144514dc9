"""Robustness of a trained run: attacks on the input vectors and natural perturbations of the texts.

Per seed, on a split's vectors ``X`` (n, d) and true labels ``y``:

- **FGM** at each ε: x + ε s g/||g|| with g the gradient of the seed model's cross-entropy at x (one
  gradient serves every ε);
- **PGD** at each ε: ``pgd_steps`` steps of size 2.5 ε s / steps along g/||g||, each projected onto
  the ε s-ball, started at x (deterministic: no random start);
- the **area** under the macro-F1-vs-ε curve: the trapezoid over [0, ε_max] through the clean score
  at 0, divided by ε_max, so it reads as a macro-F1 averaged over the attack budget;
- **natural** perturbations (:mod:`abexrat.perturb`): the perturbed reports' vectors scored as they are.

ε is relative: s is the run's mean training-vector norm (``TrainResult.scale``, model.json's
``input_scale``), as in training. The attacked model is the seed's own (an ensemble seed's
prediction averages its MLPs' probabilities, so the attack's loss is that average's log-loss), in
eval mode (no dropout), with the true labels. Every seed is attacked at once through the trained
batched model (:class:`abexrat.model.EnsembleMLP`), rows in chunks.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from abexrat.adversarial import project, unit
from abexrat.metrics import confusions, scores, summarize
from abexrat.model import EnsembleMLP
from abexrat.perturb import PERTURBATIONS

ATTACKS = ("fgm", "pgd")
_CHUNK_FLOATS = 2**24  # rows per chunk x members x input dim: bounds an attack's memory (~64 MB a copy)


def _seed_logp(model: EnsembleMLP, x: torch.Tensor) -> torch.Tensor:
    """Each seed's log-probabilities at x (S, b, d) -> (S, b, C): an ensemble seed's MLPs averaged."""
    xm = x.repeat_interleave(model.group, 0) if model.group > 1 else x
    logp = torch.log_softmax(model(xm), -1)
    if model.group == 1:
        return logp
    return torch.logsumexp(logp.view(model.n_seeds, model.group, *logp.shape[1:]), 1) - np.log(model.group)


def _input_grad(model: EnsembleMLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = -_seed_logp(model, x).gather(-1, y.unsqueeze(-1)).sum()
    (g,) = torch.autograd.grad(loss, x)
    return g


@torch.no_grad()
def _predict(model: EnsembleMLP, x: torch.Tensor) -> torch.Tensor:
    return _seed_logp(model, x).argmax(-1)


def _predict_all(model: EnsembleMLP, X: np.ndarray) -> np.ndarray:
    """Each seed's predicted classes on X (n, d) -> (S, n)."""
    Xt = torch.from_numpy(np.ascontiguousarray(X, np.float32)).to(model.weights[0].device)
    return _predict(model, Xt.unsqueeze(0).expand(model.n_seeds, -1, -1)).cpu().numpy()


def attack_predictions(
    model: EnsembleMLP, X: np.ndarray, y: np.ndarray, eps: list[float], scale: float, steps: int = 10
) -> dict[str, np.ndarray]:
    """Each seed's predictions under each attack at each ε: ``{"fgm": (E, S, n), "pgd": (E, S, n)}``."""
    was_training = model.training
    model.eval()
    device = model.weights[0].device
    S, E, n, d = model.n_seeds, len(eps), len(y), X.shape[1]
    out = {a: np.zeros((E, S, n), np.int64) for a in ATTACKS}
    radius = torch.tensor([e * scale for e in eps], device=device).view(1, E, 1, 1)
    chunk = max(1, _CHUNK_FLOATS // max(1, model.n_members * E * d))
    for start in range(0, n, chunk):
        xb = torch.from_numpy(np.ascontiguousarray(X[start : start + chunk], np.float32)).to(device)
        b = len(xb)
        yb = torch.from_numpy(np.asarray(y[start : start + chunk], np.int64)).to(device)
        x = xb.unsqueeze(0).expand(S, b, d)
        g = _input_grad(model, x, yb.expand(S, b))  # (S, b, d)
        x_e = x.unsqueeze(1).expand(S, E, b, d)  # every ε at once
        adv = x_e + unit(g, 1.0).unsqueeze(1) * radius
        fgm = _predict(model, adv.reshape(S, E * b, d)).view(S, E, b).transpose(0, 1)
        out["fgm"][:, :, start : start + b] = fgm.cpu().numpy()
        x_flat, y_flat = x_e.reshape(S, E * b, d), yb.repeat(E).expand(S, E * b)
        r = torch.zeros(S, E, b, d, device=device)
        alpha = 2.5 * radius / steps
        for k in range(steps):
            gk = g.unsqueeze(1) if k == 0 else _input_grad(model, x_flat + r.view(S, E * b, d), y_flat).view(S, E, b, d)
            r = project(r + unit(gk, alpha), radius)
        pgd = _predict(model, (x_e + r).reshape(S, E * b, d)).view(S, E, b).transpose(0, 1)
        out["pgd"][:, :, start : start + b] = pgd.cpu().numpy()
    model.train(was_training)
    return out


def area(eps: list[float], clean: np.ndarray, attacked: np.ndarray) -> np.ndarray:
    """The normalized area under score-vs-ε per seed: clean (S,), attacked (E, S) -> (S,)."""
    xs = np.concatenate([[0.0], eps])
    ys = np.concatenate([clean[None], attacked])
    return np.trapezoid(ys, xs, axis=0) / xs[-1]


def _scores(y: np.ndarray, preds: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """macro-F1 and accuracy of predictions (..., S, n) -> (..., S) each."""
    s = scores(confusions(y, preds, n_classes))
    return {"macro_f1": s["macro_f1"], "accuracy": s["accuracy"]}


def split_robustness(
    model: EnsembleMLP,
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    scale: float,
    eps: list[float],
    steps: int = 10,
    natural: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One split's robustness block (for metrics.json) and its per-seed predictions (for reports).

    The block: ``clean`` macro-F1 and accuracy; per attack, ``macro_f1`` and ``accuracy`` as one
    ``{"mean", "std", "per_seed"}`` per ε and ``auc`` (the area); ``natural``: per perturbation its
    macro-F1, accuracy and the share of reports it changed. Predictions: ``{"fgm": (E, S, n) list,
    "pgd": ..., "natural": {name: (S, n)}}``."""
    y = np.asarray(y, np.int64)
    clean = _scores(y, _predict_all(model, X), n_classes)
    block: dict[str, Any] = {"clean": {k: summarize(list(v)) for k, v in clean.items()}}
    preds: dict[str, Any] = {}
    for attack, p in attack_predictions(model, X, y, eps, scale, steps).items():
        s = _scores(y, p, n_classes)  # (E, S)
        block[attack] = {
            **{k: [summarize(list(v[j])) for j in range(len(eps))] for k, v in s.items()},
            "auc": summarize(list(area(eps, clean["macro_f1"], s["macro_f1"]))),
        }
        preds[attack] = p.tolist()
    if natural:
        changed = natural.get("_changed")
        block["natural"], preds["natural"] = {}, {}
        for name in PERTURBATIONS:
            if name not in natural:
                continue
            p = _predict_all(model, natural[name])
            s = _scores(y, p, n_classes)
            block["natural"][name] = {k: summarize(list(v)) for k, v in s.items()}
            if changed is not None:
                block["natural"][name]["changed"] = float(changed[PERTURBATIONS.index(name)])
            preds["natural"][name] = p.tolist()
    return block, preds


def evaluate(
    model: EnsembleMLP,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    n_classes: int,
    scale: float,
    cfg: Any,
    natural: dict[str, dict[str, np.ndarray]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json's ``robustness`` block for ``splits`` (name -> (X, y)), and the predictions per
    split (see :func:`split_robustness`). ``cfg``: a :class:`abexrat.config.RobustnessConfig`."""
    t0 = time.perf_counter()
    block: dict[str, Any] = {
        "eps": list(cfg.eps),
        "pgd_steps": cfg.pgd_steps,
        "scale": scale,
        "assumes": "attacks on the input vectors with the true labels, each seed's model in eval mode; "
        "eps relative to the mean training-vector norm; auc = area under macro-F1 vs eps through the clean "
        "score at 0, divided by the largest eps",
    }
    preds: dict[str, Any] = {}
    for split, (X, y) in splits.items():
        nat = (natural or {}).get(split)
        if nat is not None and len(next(iter(v for k, v in nat.items() if k != "_changed"), y)) != len(y):
            nat = None  # vectors of other reports (a CV fold's val): attacks only
        block[split], preds[split] = split_robustness(model, X, y, n_classes, scale, cfg.eps, cfg.pgd_steps, nat)
    block["time_s"] = time.perf_counter() - t0
    return block, preds


def flat_keys(block: dict[str, Any], split: str) -> dict[str, float]:
    """The robustness numbers a study may optimize, as flat Tune keys (means over seeds):
    ``{split}_robust_macro_f1`` (the PGD area), ``{split}_fgm_auc``, ``{split}_natural_macro_f1``
    (the mean over the natural perturbations), ``{split}_pgd_macro_f1_<eps>`` per ε."""
    b = block.get(split)
    if not b:
        return {}
    out = {f"{split}_robust_macro_f1": b["pgd"]["auc"]["mean"], f"{split}_fgm_auc": b["fgm"]["auc"]["mean"]}
    for e, v in zip(block["eps"], b["pgd"]["macro_f1"]):
        out[f"{split}_pgd_macro_f1_{e:g}"] = v["mean"]
    if b.get("natural"):
        out[f"{split}_natural_macro_f1"] = float(np.mean([v["macro_f1"]["mean"] for v in b["natural"].values()]))
    return out


def run_scale(folder: Any) -> float:
    """A saved run's ε unit: model.json's ``input_scale`` (the mean training-vector norm)."""
    import json
    from pathlib import Path

    from abexrat.core.errors import UserError

    for meta in sorted(Path(folder).glob("models/seed-*/model.json")):
        scale = json.loads(meta.read_text()).get("input_scale")
        if scale:
            return float(scale)
    raise UserError(f"{folder}/models: no model.json holds input_scale (the run's mean training-vector norm)")


def evaluate_run(run: Any, X: np.ndarray, y: np.ndarray, texts: list[str]) -> dict[str, Any]:
    """``abexrat evaluate --robustness``: a loaded run (:func:`abexrat.run_folder.load_run`) on one
    labeled file, under the run's own robustness settings (its config's ``robustness``, else the defaults)."""
    from abexrat.config import RobustnessConfig
    from abexrat.perturb import perturbed_vectors

    cfg = RobustnessConfig.model_validate(run.config.get("robustness") or {})
    natural = perturbed_vectors({"data": texts}, run.encoder, cfg)
    block, _ = evaluate(run.model, {"data": (X, y)}, len(run.classes), run_scale(run.folder), cfg, natural)
    return block


def print_block(console: Any, block: dict[str, Any], title: str = "robustness") -> None:
    """The robustness block as rich tables: macro-F1 per attack and ε, then per natural perturbation."""
    from rich.table import Table

    def pct(s: dict[str, Any]) -> str:
        return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"

    for split in (k for k in block if isinstance(block[k], dict) and "clean" in block[k]):
        b = block[split]
        t = Table(title=f"{title} on {split}: macro-F1, mean ± std over seeds")
        for col in ["attack", "clean", *(f"ε={e:g}" for e in block["eps"]), "area"]:
            t.add_column(col, justify="left" if col == "attack" else "right")
        for attack in ATTACKS:
            label = attack if attack == "fgm" else f"pgd ({block['pgd_steps']} steps)"
            t.add_row(
                label, pct(b["clean"]["macro_f1"]), *(pct(v) for v in b[attack]["macro_f1"]), pct(b[attack]["auc"])
            )
        console.print(t)
        if b.get("natural"):
            n = Table(title=f"natural perturbations on {split}")
            for col in ("perturbation", "macro-F1", "accuracy", "reports changed"):
                n.add_column(col, justify="left" if col == "perturbation" else "right")
            for name, v in b["natural"].items():
                changed = f"{100 * v['changed']:.1f}%" if "changed" in v else "—"
                n.add_row(name, pct(v["macro_f1"]), pct(v["accuracy"]), changed)
            console.print(n)
    console.print(f"robustness scored in {block['time_s']:.1f} s")
