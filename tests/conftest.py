"""Shared fixtures: an isolated cache, a small 7-class dataset on disk, the real OSHA folder, a CLI runner."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("COLUMNS", "200")  # rich tables unwrapped in captured output
REPO = Path(__file__).resolve().parents[1]
OSHA_DIR = Path(os.environ.get("ABEXRAT_DATA_DIR") or REPO.parent / "shared" / "data" / "osha")

# Each class has words of its own, so a small MLP can learn them; reports share filler words.
CLASS_WORDS = {
    "FALLS,SLIPS,TRIPS": "ladder roof fell scaffold slipped height",
    "CONTACT WITH OBJECTS AND EQUIPMENT": "caught struck machine press crushed conveyor",
    "EXPOSURE TO HARMFUL SUBSTANCES OR ENVIRONMENTS": "electrocuted ammonia heat voltage fumes chemical",
    "TRANSPORTATION INCIDENTS": "truck forklift vehicle highway collision driver",
    "FIRES AND EXPLOSIONS": "fire explosion tank flames ignited blast",
    "OVEREXERTION AND BODILY REACTION": "lifting strain back twisted carrying overexertion",
    "VIOLENCE AND OTHER INJURIES BY PERSONS OR ANIMALS": "dog bite assault attacked robbery shot",
}
FILLER = ["employee", "worker", "site", "was", "the", "at", "on", "and", "when", "a", "injured", "hospitalized"]
TRAIN_COUNTS = [40, 36, 24, 12, 10, 6, 5]


def make_report(rng: random.Random, label: str, n_words: int = 14) -> str:
    words = CLASS_WORDS[label].split()
    return " ".join(rng.choice(words) if rng.random() < 0.45 else rng.choice(FILLER) for _ in range(n_words))


def write_tiny_dataset(folder: Path, seed: int = 0, n_eval: int = 6) -> Path:
    """train.json (originals + synthetic '<src>-aug-<k>' rows), val.json, test.json in OSHA's format."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, next_id, seen = {"train": [], "val": [], "test": []}, 0, set()

    def fresh(label: str) -> str:
        while True:
            t = make_report(rng, label)
            if t not in seen:
                seen.add(t)
                return t

    for label, n in zip(CLASS_WORDS, TRAIN_COUNTS):
        for _ in range(n):
            rows["train"].append(
                {"id": next_id, "title": f"Worker Report {next_id}", "summary": fresh(label), "gold": label}
            )
            next_id += 1
        for split in ("val", "test"):
            for _ in range(n_eval):
                rows[split].append({"idx": next_id, "title": "", "summary": fresh(label), "gold": label})
                next_id += 1
    synthetic = []
    for r in rows["train"]:
        if r["gold"] in list(CLASS_WORDS)[3:]:
            synthetic += [
                {"id": f"{r['id']}-aug-{k}", "title": fresh(r["gold"]), "summary": "", "gold": r["gold"]}
                for k in range(3)
            ]
    rows["train"] += synthetic
    for split, data in rows.items():
        (folder / f"{split}.json").write_text(json.dumps(data))
    return folder


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test shares one fresh cache, never the user's."""
    root = tmp_path_factory.mktemp("cache")
    os.environ["ABEXRAT_CACHE_DIR"] = str(root)
    os.environ.setdefault("WANDB_MODE", "offline")
    return root


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """A fast config over the tiny dataset (folder dataset, published-style synthetic rows)."""
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(f"""
name: tiny
seeds: 2
data: {{dataset: "{tiny_dir}", aug_pool: published, aug_ratio: 1.0}}
encoder: {{name: hybrid, options: {{tfidf_dim: 32, tfidf_min_df: 1}}}}
model: {{hidden: [64], dropout: 0.1}}
loss: {{name: focal, gamma: 2.0}}
train: {{epochs: 25, batch_size: 32, lr: 0.003}}
adversarial: {{method: rat, eps: 0.3, p: 0.5}}
""")
    return path


@pytest.fixture(scope="session")
def osha_dir() -> Path:
    if not (OSHA_DIR / "train_aug.json").is_file():
        pytest.fail(f"the OSHA data is needed at {OSHA_DIR} (set ABEXRAT_DATA_DIR)")
    return OSHA_DIR


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):  # noqa: ANN201
    """Run ``abexrat ARGS`` in-process through the real entry point; returns code, stdout, stderr."""
    from abexrat.cli import main

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(autouse=True)
def _no_stale_ray_address():  # noqa: ANN202
    """Joining a test cluster exports RAY_ADDRESS; the next test must not try to join a dead one."""
    yield
    os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="module")
def ray_address() -> str:
    """One local Ray with 2 CPUs for a module (started once: ray.init takes seconds). A new one
    (address "local"), never a cluster someone ``ray start``-ed on this machine."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
