"""The commands run from any folder in the project's environment, as files and as modules,
because the environment can import the project (env.sh's .pth, or `pip install -e .`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_IMPORTABLE = (
    "the project is not importable in this environment: source env.sh (./test.sh does) "
    "or pip install -e ."
)
# the environment alone must make the project importable, not the caller's PYTHONPATH
ENVIRONMENT = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


@pytest.mark.parametrize(
    "command",
    [
        [str(ROOT / "predict" / "predict.py")],
        ["-m", "predict.predict"],
        [str(ROOT / "predict" / "evaluate.py")],
        [str(ROOT / "preprocess" / "load_data.py")],
        ["-m", "preprocess.load_data"],
    ],
    ids=lambda command: " ".join(command).replace(str(ROOT) + "/", ""),
)
def test_a_command_runs_from_outside_the_project(tmp_path, command):
    result = subprocess.run(
        [sys.executable, *command, "--help"],
        cwd=tmp_path,
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{NOT_IMPORTABLE}\n{result.stderr[-2000:]}"
    assert result.stdout.startswith("usage:")


def test_env_sh_puts_the_project_root_on_the_import_path(tmp_path):
    """Each time it is sourced, also for an environment already installed (stamp unchanged)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    where = "import importlib.util; print(importlib.util.find_spec('preprocess').origin)"
    script = f"""
        cat requirements*.txt | sha256sum | cut -c1-16 >"$VENV/.requirements-requirements.txt.stamp"
        source ./env.sh && source ./env.sh && cd / && python -c "{where}"
    """
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env={**ENVIRONMENT, "VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(ROOT / "preprocess" / "__init__.py")
    (pth,) = venv.glob("lib/python*/site-packages/birdclef-cnn.pth")
    assert pth.read_text() == f"{ROOT}\n"


def test_a_missing_requirement_runs_the_command_again_with_the_project_venv(
    tmp_path, monkeypatch, capsys
):
    """`python predict/predict.py` by a Python without numpy (a scorer's `python`): the
    command runs again, once, as it was called, with the project's .venv."""
    from preprocess import cli

    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    ran = []
    monkeypatch.setattr(cli, "PROJECT_VENV", venv)
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: ran.append((path, argv)))
    monkeypatch.setattr(sys, "argv", ["predict/predict.py", "--run", "R"])
    monkeypatch.setenv(cli.RUN_AGAIN_MARK, "")  # so that its setting is undone after
    monkeypatch.delenv(cli.RUN_AGAIN_MARK)

    def work():
        import numpy_is_not_installed  # noqa: F401

    cli.run_command(work, verbose=False)
    python = venv / "bin" / "python"
    assert ran == [(python, [str(python), "predict/predict.py", "--run", "R"])]
    assert os.environ[cli.RUN_AGAIN_MARK] == "1"  # the command run again does not loop
    assert f"running again with {python}" in capsys.readouterr().err

    ran.clear()
    assert cli.run_command(work, verbose=False) == 2  # run again already: one line, status 2
    assert not ran
    err = capsys.readouterr().err
    assert err.startswith("error: the module 'numpy_is_not_installed' is not installed for ")
    assert err.count("\n") == 1


def test_a_requirement_missing_at_import_is_one_line_and_a_project_module_a_bug(monkeypatch):
    """A Python without the requirements (here: without site-packages), with no .venv to run
    again in (or run again already): one line naming the module, status 2, no traceback. A
    module of the project itself missing is a bug, not a requirement to install."""
    from preprocess import cli

    script = [sys.executable, "-S", str(ROOT / "predict" / "evaluate.py"), "--help"]
    environment = {**os.environ, cli.RUN_AGAIN_MARK: "1"}
    result = subprocess.run(script, capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: the module 'numpy' is not installed for ")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1

    def work():
        import train.no_such_module  # noqa: F401

    monkeypatch.setattr(cli, "run_in_project_venv", lambda error: pytest.fail("run again"))
    assert cli.run_command(work, verbose=False) == 1
