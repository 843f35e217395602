"""The command line's shared option groups, its entry points and its one-line messages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from convscope import __version__
from convscope.cli import ALL, IMAGE, MODEL, OUTPUT, app, main

SRC = Path(__file__).resolve().parents[1] / "src" / "convscope"


def _commands() -> dict[str, Any]:
    root: Any = typer.main.get_command(app)
    found: dict[str, Any] = {}
    for name, cmd in root.commands.items():
        if hasattr(cmd, "commands"):
            found.update({f"{name} {sub}": c for sub, c in cmd.commands.items()})
        else:
            found[name] = cmd
    return found


ANALYSES = {
    "explain": (MODEL, IMAGE, OUTPUT),
    "spectrum": (MODEL, IMAGE, OUTPUT),
    "decode": (MODEL, OUTPUT),
    "kernels apply": (IMAGE, OUTPUT),
    **{
        f"linear {c}": (MODEL, IMAGE, OUTPUT)
        for c in ("residual", "contributions", "votes", "svd", "rows", "columns", "explore")
    },
}


def test_every_analysis_has_its_shared_groups() -> None:
    commands = _commands()
    assert set(ANALYSES) <= set(commands)
    for name, groups in ANALYSES.items():
        params = {p.name for p in commands[name].params}
        for group in groups:
            assert set(group) <= params, (name, set(group) - params)
        if "--image" in {o for p in commands[name].params for o in p.opts}:
            image = next(p for p in commands[name].params if p.name == "image")
            assert image.param_type_name == "option"  # never positional
        if MODEL in groups:
            model = next(p for p in commands[name].params if p.name == "model")
            assert model.opts == ["--model", "--checkpoint"]
    # --weights takes a value everywhere (no flag here and pair there)
    for name, cmd in commands.items():
        for p in cmd.params:
            if p.name == "weights":
                assert p.param_type_name == "option" and not p.is_flag, name


def test_the_option_groups_are_defined_once() -> None:
    # the shared names appear as option declarations only in cli.py's group dicts
    tree = ast.parse((SRC / "cli.py").read_text())
    declared = [
        a.arg
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        for a in node.args.args + node.args.kwonlyargs
    ]
    assert not set(ALL) & set(declared) - {"overwrite", "progress", "device"}


def test_version_and_python_dash_m() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "convscope", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == f"convscope {__version__}"


def test_a_usage_error_is_click_s_own(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["linear", "votes", "--no-such-option"])
    assert e.value.code == 2 and "No such option" in capsys.readouterr().err


def test_untrained_warning_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["spectrum", "--model", "lenet", "--out", str(tmp_path), "--no-progress"])
    assert not e.value.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [
        "warning: lenet has random weights (untrained): its explanations show the "
        "architecture, not learned features; pass --weights DEFAULT or a trained model"
    ]
    assert '"trained": false' in (tmp_path / "spectrum.json").read_text()
