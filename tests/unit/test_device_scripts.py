"""The GPU machine's scripts (bench/gpu/*.sh) are only run there, one device call at a time, so a
script that rotted here costs a call to find out. Checked here instead: each parses as bash, each
Python script or module it runs exists, and every --option it passes to one is an option that
script accepts (its --help)."""
from __future__ import annotations

import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "bench" / "gpu").glob("*.sh"))
INVOCATION = re.compile(r"(bench/gpu/\w+\.py|-m bench\.\w+)((?:[^|;&\n])*)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def logical_lines(text: str) -> str:
    """The script with its backslash-continued lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def invocations(script: Path) -> list[tuple[str, str, list[str]]]:
    """(script path, its first word when that is a plain word (a subcommand, or a positional
    argument), the --options after it on its command) for each Python run."""
    found = []
    for target, rest in INVOCATION.findall(logical_lines(script.read_text())):
        path = target if target.endswith(".py") else f"bench/{target.split('.', 1)[1]}.py"
        words = rest.split()
        first = words[0] if words and re.fullmatch(r"[a-z]\w*", words[0]) else ""
        found.append((path, first, sorted(set(OPTION.findall(rest)))))
    return found


def _help(path: str, *words: str) -> str | None:
    module = path[:-3].replace("/", ".")
    runner = [path] if path.startswith("bench/gpu/") else ["-m", module]
    proc = subprocess.run([sys.executable, *runner, *words, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    return proc.stdout if proc.returncode == 0 and "usage:" in proc.stdout else None


@lru_cache(maxsize=None)
def accepted_options(path: str, first: str = "") -> frozenset[str] | None:
    """The options a script's --help lists (its subcommand's, where ``first`` is one of its
    subcommands); None where it has no argparse --help (a diagnostic taking positional argv)."""
    text = _help(path)
    if text is None:
        return None
    choices = re.search(r"\{([\w,]+)\}", text.split("\n\n", 1)[0])
    if first and choices and first in choices.group(1).split(","):
        text = _help(path, first)
    return frozenset(OPTION.findall(text)) if text else None


def test_there_are_device_scripts_and_they_run_python():
    assert len(SCRIPTS) >= 10
    assert sum(len(invocations(s)) for s in SCRIPTS) >= 30


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_device_script_parses_and_passes_only_options_its_programs_take(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for path, first, options in invocations(script):
        assert (ROOT / path).is_file(), f"{script.name} runs {path}, which does not exist"
        accepted = accepted_options(path, first)
        if accepted is None:  # a diagnostic taking positional arguments (aoti_diag.py)
            continue
        unknown = [o for o in options if o not in accepted]
        assert not unknown, f"{script.name} passes {unknown} to {path}, which takes {sorted(accepted)}"


def test_the_check_finds_an_option_a_program_does_not_take(tmp_path):
    script = tmp_path / "x.sh"
    script.write_text('step a 10 "$PY" bench/gpu/pa_bench.py --texts t \\\n    --no-such-option 3 | tee log\n')
    [(path, first, options)] = invocations(script)
    assert path == "bench/gpu/pa_bench.py" and first == "" and options == ["--no-such-option", "--texts"]
    assert "--no-such-option" not in accepted_options(path) and "--texts" in accepted_options(path)


def test_a_subcommand_is_checked_against_its_own_options(tmp_path):
    script = tmp_path / "x.sh"
    script.write_text('"$PY" bench/gpu/qa_ner_gpu.py reference --device cuda --out o\n')
    [(path, first, options)] = invocations(script)
    assert first == "reference" and options == ["--device", "--out"]
    assert "--device" in accepted_options(path, "reference")
    assert "--device" not in accepted_options(path, "check")
