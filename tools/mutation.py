"""Mutation testing of convscope's core with mutmut, one module group at a time.

Each group (``--modules``) runs in its own working directory ``.mutation/<group>/``, whose
``pyproject.toml`` tells mutmut which files to mutate and which tests judge them; the source,
tests and the files the tests read are linked in. Results are cached there, so a second run
only checks mutants that are new or not yet checked. ``report`` writes ``docs/mutation.md``
and ``docs/mutation.json`` from every group's results: per group the mutants killed, the
survivors, those listed as equivalent in ``tools/mutation_equivalents.toml`` (with the reason),
and the score, killed / (all checked - equivalent).

An equivalent mutant is listed under its group with the line the mutant writes::

    [[kernels]]
    mutant = "x_rotate_ring__mutmut_22"
    to = "for p, v in zip(_RING, ring, strict=None):"
    why = "both sequences have 8 items, so zip's strict check never fires"

mutmut numbers the mutants of a function in order, so an edit to the function can give the
number to another mutant: an entry counts only while the mutant still writes ``to``, and a
stale entry is reported as such (the mutant stays a survivor until the entry is fixed).

    python tools/mutation.py run --modules kernels spectral    # then writes the report
    python tools/mutation.py report                            # the report only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomllib

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
EQUIVALENTS = ROOT / "tools" / "mutation_equivalents.toml"
# group -> (files mutmut mutates, the tests that judge them)
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "kernels": (["src/convscope/kernels.py"], ["tests/test_kernels.py"]),
    "spectral": (
        ["src/convscope/spectral.py"],
        # the command-line and Lightning tests (subprocesses, whole trainings) are left to
        # make test: under a mutant they cost minutes and judge nothing the rest does not
        [
            "tests/test_spectral_values.py",
            "tests/test_spectral.py",
            "-k",
            "not cli and not lightning",
        ],
    ),
    "attribution": (["src/convscope/attribution.py"], ["tests/test_attribution.py"]),
    "decoding": (
        ["src/convscope/decoding.py"],
        ["tests/test_decoding.py", "tests/test_decoding_gfnn.py"],
    ),
    "numpy_cnn_layers": (
        ["src/convscope/numpy_cnn/layers/*.py"],
        [
            "tests/test_numpy_cnn_layers_values.py",
            "tests/test_numpy_cnn_layers.py",
            "tests/test_properties_numpy_cnn.py",
        ],
    ),
    "evaluate": (["src/convscope/evaluate/*.py"], ["tests/test_evaluate.py"]),
    "linear": (
        ["src/convscope/linear/*.py"],
        sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_linear_*.py"))
        + ["tests/test_properties_linear.py"],
    ),
}
LINKED = ["src", "tests", "experiments", "docs", "benchmarks", "README.md", "Makefile",
          "mkdocs.yml", "LICENSE"]  # fmt: skip
# mutmut's own names for its exit codes; a mutant the tests time out or crash on is detected
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}


def _status(code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    return str(status_by_exit_code[code])


def _config(group: str) -> str:
    mutate, tests = MODULES[group]

    def toml_list(xs: list[str]) -> str:
        return "[" + ", ".join(json.dumps(x) for x in xs) + "]"

    return "\n".join([
        "[tool.mutmut]",
        'source_paths = ["src"]',
        f"only_mutate = {toml_list(mutate)}",
        f"also_copy = {toml_list(LINKED[1:])}",
        f"pytest_add_cli_args_test_selection = {toml_list(tests)}",
        'pytest_add_cli_args = ["-q", "-p", "no:cacheprovider", "-m", "not slow", "-x"]',
        # torch's thread pools do not survive a plain fork from a process that ran tests
        'process_isolation = "forkserver"',
        "",
    ])  # fmt: skip


def _workdir(group: str) -> Path:
    d = WORK / group
    d.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = d / name
        if not link.exists():
            link.symlink_to(ROOT / name)
    (d / "pyproject.toml").write_text(_config(group))
    return d


def run(groups: list[str], max_children: int) -> None:
    mutmut = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    for group in groups:
        d = _workdir(group)
        print(f"== mutmut on {group} in {d}", flush=True)
        cmd = [str(mutmut), "run", "--max-children", str(max_children)]
        subprocess.run(cmd, cwd=d, env=env, check=False)
        # each survivor once more on its own, so one that lived through a hiccup of the
        # parallel run (a worker restarted, a busy machine) is not reported as a gap
        survivors = [k for k, v in _results(group).items() if v is not None
                     and _status(v) not in DETECTED]  # fmt: skip
        if survivors:
            print(f"== {len(survivors)} survivors of {group} once more", flush=True)
            subprocess.run([*cmd, *survivors], cwd=d, env=env, check=False)


def _results(group: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for meta in sorted((WORK / group / "mutants").rglob("*.meta")):
        out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def _diff(group: str, name: str) -> list[str]:
    """The changed lines of one mutant, ``-`` old then ``+`` new, as ``mutmut show`` prints."""
    mutmut = Path(sys.executable).with_name("mutmut")
    p = subprocess.run([str(mutmut), "show", name], cwd=WORK / group, capture_output=True,
                       text=True, check=False)  # fmt: skip
    return [ln for ln in p.stdout.splitlines() if ln.startswith(("+", "-"))
            and not ln.startswith(("+++", "---"))]  # fmt: skip


def _equivalents(group: str) -> dict[str, dict[str, str]]:
    """``tools/mutation_equivalents.toml``'s entries for ``group``, by full mutant name."""
    if not EQUIVALENTS.is_file():
        return {}
    entries = tomllib.loads(EQUIVALENTS.read_text()).get(group, [])
    prefix = {"numpy_cnn_layers": "convscope.numpy_cnn.layers", "evaluate": "convscope.evaluate",
              "linear": "convscope.linear"}.get(group, f"convscope.{group}")  # fmt: skip
    out = {}
    for e in entries:
        name = e["mutant"] if e["mutant"].startswith("convscope.") else f"{prefix}.{e['mutant']}"
        out[name] = e
    return out


def _shell(args: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in args)


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def report() -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for group in MODULES:
        res = _results(group)
        if not res:
            groups[group] = {"run": False}
            continue
        eq = _equivalents(group)
        checked = {k: v for k, v in res.items() if v is not None}
        killed = [k for k, v in checked.items() if _status(v) in DETECTED]
        diffs = {k: _diff(group, k) for k in checked if k not in killed}
        equivalent, stale = {}, {}
        for k, lines in diffs.items():
            if k not in eq:
                continue
            added = [ln[1:].strip() for ln in lines if ln.startswith("+")]
            if eq[k]["to"].strip() in added:
                equivalent[k] = eq[k]["why"]
            else:
                stale[k] = eq[k]["to"]
        survived = [k for k in diffs if k not in equivalent]
        denom = len(checked) - len(equivalent)
        groups[group] = {
            "run": True,
            "mutants": len(res),
            "checked": len(checked),
            "killed": len(killed),
            "equivalent": equivalent,
            "survived": {k: {"exit_code": checked[k], "diff": diffs[k]} for k in survived},
            "stale_equivalents": stale,
            "unused_equivalents": sorted(set(eq) - set(diffs)),
            "score": round(len(killed) / denom, 4) if denom else None,
        }
    lines = [
        "# Mutation testing",
        "",
        "Generated by `make mutation` (`tools/mutation.py`, mutmut). A mutant is a small change "
        "to the code (an operator, a constant, an argument dropped); the tests should fail on "
        "each. Score = killed / (checked - listed as equivalent). Survivors not listed as "
        "equivalent in `tools/mutation_equivalents.toml` are open: each needs a test that "
        "checks a value against an independent reference.",
        "",
        f"mutmut {_mutmut_version()}; each group is judged by its own tests, run with "
        "`-m 'not slow'`:",
        "",
        *[f"- {group}: `{_shell(MODULES[group][1])}`" for group in MODULES],
        "",
        "| module | mutants | checked | killed | equivalent | survived | score |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for group, g in groups.items():
        if not g["run"]:
            lines.append(f"| {group} | not run yet | | | | | |")
            continue
        score = "" if g["score"] is None else f"{g['score']:.1%}"
        lines.append(
            f"| {group} | {g['mutants']} | {g['checked']} | {g['killed']} | "
            f"{len(g['equivalent'])} | {len(g['survived'])} | {score} |"
        )
    for group, g in groups.items():
        if not g.get("run") or not (g["survived"] or g["equivalent"]):
            continue
        lines += ["", f"## {group}", ""]
        for name, sv in g["survived"].items():
            what = _status(sv["exit_code"])
            note = (
                " (its entry in the equivalents file is stale)"
                if name in g["stale_equivalents"]
                else ""
            )
            lines += [f"- {what}: `{name}`{note}", "", "```diff", *sv["diff"][:6], "```", ""]
        if g["equivalent"]:
            lines += ["Equivalent (the change cannot alter any result):", ""]
        for name, why in g["equivalent"].items():
            new_line = next(ln[1:].strip() for ln in _diff(group, name) if ln.startswith("+"))
            lines += [f"- `{name.rsplit('.', 1)[1]}`: `{new_line}`: {why}"]
    (ROOT / "docs" / "mutation.md").write_text("\n".join(lines) + "\n")
    (ROOT / "docs" / "mutation.json").write_text(json.dumps(groups, indent=2) + "\n")
    return groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run mutmut on module groups, then write the report")
    r.add_argument("--modules", nargs="+", choices=sorted(MODULES), default=list(MODULES))
    r.add_argument("--max-children", type=int, default=2, help="parallel mutant runs")
    sub.add_parser("report", help="write docs/mutation.md from the cached results")
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.modules, args.max_children)
    for group, g in report().items():
        print(group, "not run" if not g["run"] else f"score {g['score']}")


if __name__ == "__main__":
    main()
