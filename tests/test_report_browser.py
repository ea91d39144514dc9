"""A report opened in headless Chromium: every image loads, and the page renders (a screenshot).

Needs Debian's ``chromium`` (``.ci/run`` installs it). Without it the test is skipped, unless
``ABEXRAT_BROWSER_TEST=required`` (set by ``.ci/run``), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_report import _run
from tests.test_study import local_ray  # noqa: F401 - the module-scoped Ray fixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("ABEXRAT_BROWSER_TEST") != "required":
    pytest.skip("headless Chromium is not installed (apt-get install chromium)", allow_module_level=True)

STUDY = """
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
  adversarial.p: {type: float, low: 0.0, high: 1.0}
budget: {num_samples: 3}
seeds_per_trial: 1
final: {seeds: 2}
baselines:
  no_adversarial: {adversarial.method: none}
"""


@pytest.fixture(scope="module")
def report(local_ray, tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:  # noqa: ANN001, F811
    from abexrat.report import build_report

    tmp = tmp_path_factory.mktemp("browser")
    return build_report(_run(tmp, tiny_dir, "tiny-browser", STUDY), tmp / "report", [])


def chromium(tmp: Path, *args: str) -> str:
    assert CHROMIUM, "chromium is required here (ABEXRAT_BROWSER_TEST=required) but not installed"
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def image_counts(tmp: Path, index: Path) -> dict[str, int]:
    """The counts index.html's own script writes on window load: total, loaded, broken images."""
    dom = chromium(
        tmp, "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000", "--dump-dom", index.as_uri()
    )
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    counts = dict(re.findall(r'data-images-(\w+)="(\d+)"', body[1]))
    assert set(counts) == {"total", "loaded", "broken"}, body[0]
    return {k: int(v) for k, v in counts.items()}


def test_every_image_loads_in_chromium(report: Path, tmp_path: Path) -> None:
    n_img = len(re.findall(r"<img ", report.read_text()))
    assert n_img >= 6  # per-class F1, confusion, importances, history, ε × p, parallel coordinates
    assert image_counts(tmp_path, report) == {"total": n_img, "loaded": n_img, "broken": 0}

    shot = tmp_path / "report.png"
    chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1280,4000", "--virtual-time-budget=10000", report.as_uri()
    )
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        colors = im.convert("RGB").resize((128, 400)).getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 50  # figures and tables, not a blank page

    # the check itself can fail: a report with a missing figure shows one broken image
    broken = tmp_path / "broken"
    shutil.copytree(report.parent, broken)
    (broken / "confusion.png").unlink()
    assert image_counts(tmp_path, broken / "index.html") == {"total": n_img, "loaded": n_img - 1, "broken": 1}
