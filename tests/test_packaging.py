"""The installed package: its parts live inside the `steppack` namespace (a user's own trainer.py,
pipeline.py or shards.py shadows nothing), and the base install (what a Dataflow worker gets from
the sdist) carries no torch."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile

from tests.shardgen import make_output
from tests.test_prepare_support import SAMPLES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPPACK = os.path.join(os.path.dirname(sys.executable), "steppack")


def _own_modules(folder) -> None:
    for name in ("trainer", "pipeline", "shards"):
        (folder / f"{name}.py").write_text(f"raise SystemExit('the user\\'s own {name}.py was imported')\n")


def test_the_command_runs_from_a_folder_that_holds_its_own_trainer_pipeline_and_shards(tmp_path):
    work = tmp_path / "repo"
    work.mkdir()
    _own_modules(work)
    # The folder is first on sys.path for the command and for the Beam workers it starts.
    env = {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1"}

    def run(*argv: str) -> subprocess.CompletedProcess:
        r = subprocess.run([STEPPACK, *argv], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        return r

    out = str(tmp_path / "out")
    run("prepare", "--input", os.path.join(SAMPLES, "math", "math500.jsonl"), "--text-field", "{problem} {solution}",
        "--output", out, "--seq-len", "64", "--rows-per-step", "4", "--workers", "2", "--quiet")
    assert "OK" in run("shards", "verify", out).stdout
    # The module form (torchrun's) from the same folder: sys.path[0] is the folder itself.
    r = subprocess.run([sys.executable, "-m", "steppack.cli", "train", "--data", out, "--model", "tiny", "--context",
                        "64", "--steps", "1", "--micro-batch", "4", "--quiet"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_train_without_torch_names_the_extra_to_install(tmp_path):
    out = str(tmp_path / "out")
    make_output(out, num_steps=1, rows_per_step=4, seq_len=16, vocab_size=100, seed=0)
    code = "import sys; sys.modules['torch'] = None\nfrom steppack.cli import entry; entry()"
    r = subprocess.run([sys.executable, "-c", code, "train", "--data", out, "--model", "tiny"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "steppack train: error: this needs torch" in r.stderr and "pip install 'steppack[train]'" in r.stderr
    assert "Traceback" not in r.stderr


def _requires(metadata: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]


def test_the_sdist_that_dataflow_stages_installs_no_torch_and_maps_the_parts_into_steppack(tmp_path):
    # What Beam's stager does with --setup_file ./pyproject.toml (`python -m build --sdist`), then
    # what a worker's pip does with that sdist (build a wheel from it).
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(dist), REPO],
                   check=True, capture_output=True, text=True, timeout=300)
    (sdist,) = [p for p in dist.iterdir() if p.name.endswith(".tar.gz")]
    with tarfile.open(sdist) as tar:
        pkg_info = next(m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
        metadata = tar.extractfile(pkg_info).read().decode()
        tar.extractall(tmp_path / "src", filter="data")
    requires = _requires(metadata)
    base = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("apache-beam") for r in base) and any(r.startswith("pyarrow") for r in base)
    assert not [r for r in base if r.startswith("torch")], base
    assert any(r.startswith("torch") and 'extra == "train"' in r for r in requires), requires
    assert not [r for r in base if r.startswith("matplotlib")], base  # figures: the plot extra
    assert any(r.startswith("matplotlib") and 'extra == "plot"' in r for r in requires), requires
    assert "Requires-Python: >=3.11" in metadata

    (src,) = list((tmp_path / "src").iterdir())
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = [p for p in dist.iterdir() if p.name.endswith(".whl")]
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"steppack"}, tops
    for module in ("steppack/cli.py", "steppack/shards/format.py", "steppack/pipeline/worker.py",
                   "steppack/trainer/train.py", "steppack/shards/plot.py", "steppack/trainer/plot.py"):
        assert module in names, module
