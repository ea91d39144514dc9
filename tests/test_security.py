"""No code from files, no writes outside the output folder, no W&B API key in anything written."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_study import study_file

PACKAGE = REPO / "abexrat"

# What would run code or build objects from a file's bytes.
FORBIDDEN = {
    "pickle": re.compile(r"\b(c?pickle|dill|cloudpickle|joblib)\.(load|loads|Unpickler)\b"),
    "torch.load": re.compile(r"\btorch\.load\s*\("),
    "yaml.load without SafeLoader": re.compile(r"\byaml\.(load|load_all)\s*\((?![^)]*SafeLoader)"),
    "unsafe yaml": re.compile(r"\byaml\.(unsafe_load|full_load|UnsafeLoader|FullLoader|Loader\b)"),
    "eval": re.compile(r"(?<![.\w])eval\s*\("),
    "exec": re.compile(r"(?<![.\w])exec\s*\("),
    "numpy pickle": re.compile(r"allow_pickle\s*=\s*True"),
    "torch weights_only off": re.compile(r"weights_only\s*=\s*False"),
    "remote code": re.compile(r"trust_remote_code\s*=\s*True"),
    "shell": re.compile(r"shell\s*=\s*True|\bos\.system\s*\(|\bos\.popen\s*\("),
    "marshal/shelve": re.compile(r"\b(marshal\.loads?|shelve\.open)\s*\("),
}


def test_no_code_from_files_in_the_package() -> None:
    hits = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            hits += [
                f"{path.relative_to(REPO)}:{n}: {what}: {line.strip()}"
                for what, rx in FORBIDDEN.items()
                if rx.search(code)
            ]
    assert not hits, "\n".join(hits)


def test_the_patterns_catch_what_they_should() -> None:
    bad = [
        "pickle.load(f)",
        "torch.load(p)",
        "yaml.load(text)",
        "yaml.unsafe_load(t)",
        "x = eval(s)",
        "exec(code)",
        "np.load(b, allow_pickle=True)",
        "subprocess.run(c, shell=True)",
    ]
    good = [
        "model.eval()",
        "yaml.safe_load(t)",
        "yaml.load(t, Loader=yaml.SafeLoader)",
        "np.load(b, allow_pickle=False)",
        "load_file(path)",
        "self.exec_time",
    ]
    for line in bad:
        assert any(rx.search(line) for rx in FORBIDDEN.values()), line
    for line in good:
        assert not any(rx.search(line) for rx in FORBIDDEN.values()), line


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


SPACE = "space: {adversarial.p: {type: float, low: 0, high: 1}}\n"


@pytest.mark.parametrize(
    "body, args, message",
    [
        ("name: ../../x\n", (), "name: Value error"),
        ("name: /abs/x\n", (), "name: Value error"),
        ('name: "ok\\n"\n', (), "name: Value error"),
        ("name: ok\n", ("--name", "../../escape"), "--name '../../escape'"),
        ("name: ok\n", ("--name", "/tmp/abs"), "--name '/tmp/abs'"),
        ("name: ok\n", ("--name", ".."), "--name '..'"),
        ("name: ok\nbaselines: {../b: {adversarial.method: none}}\n", (), "baseline name '../b'"),
        (
            "name: ok\nkind: ablation\nablation: {factors: {f: {a/b: {adversarial.p: 0.1}}}}\n",
            (),
            "factor or level name 'a/b'",
        ),
    ],
)
def test_names_cannot_be_paths(body: str, args: tuple, message: str, tmp_path: Path, tiny_dir: Path, cli) -> None:  # noqa: ANN001
    (tmp_path / "work").mkdir()
    path = study_file(tmp_path / "work", tiny_dir, "ok", SPACE + "tracking: {mode: disabled}\n")
    text = path.read_text().replace("name: ok\n", "").replace("tracking: {mode: offline}\n", "")
    path.write_text(body + text)
    before = _listing(tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path / "work")  # the default --out is runs/<name>, relative to here
    try:
        r = cli("study", "run", path, *args)
    finally:
        os.chdir(cwd)
    assert r.code == 2, r.stdout + r.stderr
    assert message in " ".join(r.stderr.split()) and "Traceback" not in r.stderr
    assert _listing(tmp_path) == before  # nothing written anywhere, inside or outside


def _grep(root: Path, needle: bytes) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if needle in p.read_bytes():
                    found.append(str(p))
            except OSError:
                pass
    return found


def test_wandb_api_key_is_never_written_or_printed(tmp_path: Path, tiny_dir: Path) -> None:
    """A study with W&B offline and an API key in the environment: the key appears in no file of the
    study folder (summary, trials, report, W&B run files and logs, Tune's folders), in nothing W&B
    or Ray wrote under $HOME or Ray's temp folder, and not in the output."""
    key = secrets.token_hex(20)  # 40 hex characters, like a real key
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    path = study_file(
        tmp_path,
        tiny_dir,
        "tiny-secret",
        """
space:
  adversarial.eps: {type: float, low: 0.01, high: 1.0, log: true}
budget: {num_samples: 2}
seeds_per_trial: 1
final: {seeds: 1}
baselines: {no_adv: {adversarial.method: none}}
""",
    )
    path.write_text(path.read_text().replace("epochs: 4,", "epochs: 2,"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="abx-sec-", dir="/tmp"))  # short: Ray's socket paths have a limit
    env = {**os.environ, "WANDB_API_KEY": key, "HOME": str(home), "RAY_TMPDIR": str(ray_tmp), "RAY_AIR_NEW_OUTPUT": "0"}
    env.pop("WANDB_MODE", None)
    env.pop("RAY_ADDRESS", None)
    try:
        r = subprocess.run(
            [str(Path(sys.executable).parent / "abexrat"), "study", "run", str(path), "--out", str(out)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=400,
        )
        assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")[-3000:]
        assert (out / "summary.json").is_file() and list((out / "wandb").glob("offline-run-*"))
        assert list(out.rglob("*.wandb")) and list((out / "report").glob("*"))
        needle = key.encode()
        assert needle not in r.stdout and needle not in r.stderr
        assert _grep(out, needle) == []
        assert _grep(home, needle) == []
        assert _grep(ray_tmp, needle) == []
        n_files = sum(1 for p in out.rglob("*") if p.is_file())
        print(f"\nW&B key: absent from {n_files} files in the study folder, $HOME, Ray's logs and the output")
        # the report artifact W&B stages stays inside the study folder
        assert not (home / ".local" / "share" / "wandb" / "artifacts").exists()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
