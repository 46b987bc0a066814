"""The docs site's generated reference pages cover the whole command line and every config key."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import pytest

from vitrain.cli import build_parser, main
from vitrain.config import TrainConfig

from .conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "docs" / "hooks" / "reference.py"  # the MkDocs hook that generates the reference pages


def test_every_subcommand_and_option_is_in_the_generated_cli_reference():
    reference = load_script(HOOK)
    page = reference.cli_reference_markdown()
    commands = reference.subcommands(build_parser())
    assert {"train", "pretrain", "eval", "predict", "export", "models", "recipes", "bench"} <= set(commands)
    for name, parser in commands.items():
        section = page.split(f"## `vitrain {name}`\n", 1)[1].split("\n## ", 1)[0]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert re.search(rf"`{re.escape(option)}`", section), f"vitrain {name} {option} is not in the reference"
            if not action.option_strings:
                assert f"`{action.metavar or action.dest}`" in section, f"vitrain {name}: {action.dest} is missing"


def test_the_reference_gives_train_options_the_config_defaults():
    page = load_script(HOOK).cli_reference_markdown()
    train = page.split("## `vitrain train`\n", 1)[1].split("\n## ", 1)[0]
    assert f"| `--epochs` `EPOCHS` | `{TrainConfig().epochs}` |" in train
    assert "| `--no-progress` | off |" in train
    assert "| `--crop-scale` `CROP_SCALE` | `0.08,1` |" in train


def test_every_config_key_is_in_the_generated_config_reference():
    page = load_script(HOOK).config_reference_markdown()
    keys = re.findall(r"^\| `(\w+)` \|", page, flags=re.M)
    assert keys == [f.name for f in dataclasses.fields(TrainConfig)]


def test_the_pages_hold_the_markers_the_hook_fills():
    reference = load_script(HOOK)
    assert reference.CLI_MARKER in (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert reference.CONFIG_MARKER in (ROOT / "docs" / "reference" / "config.md").read_text()


@pytest.fixture
def tiny_run(flat_folder, tmp_path, tiny_args) -> Path:
    run = tmp_path / "run"
    assert main(["train", "--data", str(flat_folder), "--out", str(run), *tiny_args, "--time-budget", "0.2"]) == 0
    return run


def test_every_report_json_key_of_a_run_is_in_the_schema_page(tiny_run):
    page = (ROOT / "docs" / "reference" / "run-folder.md").read_text()
    report = json.loads((tiny_run / "report.json").read_text())
    for key in [*report, *(f"test.{k}" for k in report["test"]), *(f"val.{k}" for k in report["val"])]:
        assert f"`{key.split('.')[-1]}`" in page, f"report.json key {key} is not documented"
    for name in (p.name for p in tiny_run.iterdir()):
        if not name.startswith("."):
            assert f"`{name}" in page, f"run folder file {name} is not documented"


def _quoted_commands() -> list[tuple[str, str]]:
    """Every ``vitrain ...`` command line in the README's and the docs' code blocks, with its page."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        in_code, pending = False, ""
        for line in page.read_text().splitlines():
            if line.lstrip().startswith("```"):
                in_code, pending = not in_code, ""
                continue
            if not in_code:
                continue
            line = pending + line.strip()
            pending = ""
            if line.endswith("\\"):  # a command continued on the next line
                pending = line[:-1] + " "
                continue
            command = line.removeprefix("$ ").split(" #", 1)[0].strip()
            command = command.removeprefix(".venv/bin/")
            if command.startswith("torchrun ") and " -m vitrain " in command:
                command = "vitrain " + command.split(" -m vitrain ", 1)[1]
            synopsis = "[" in command or "CKPT" in command  # a usage line, not a command to run
            if command.startswith("vitrain ") and "..." not in command and "&&" not in command and not synopsis:
                found.append((page.relative_to(ROOT).as_posix(), command))
    return found


def test_every_vitrain_command_quoted_in_the_docs_is_one_the_parser_accepts(capsys):
    import shlex

    commands = _quoted_commands()
    assert len(commands) > 40  # the README's tour and the guides' examples
    parser = build_parser()
    refused = []
    for page, command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit as exit:
            if exit.code:
                refused.append(f"{page}: `{command}`: {capsys.readouterr().err.strip().splitlines()[-1]}")
    assert not refused, "\n".join(refused)


def test_every_test_the_docs_cite_exists():
    cited = set()
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        cited |= {(m[0], m[1]) for m in re.findall(r"tests/(test_\w+\.py)::(\w+)", page.read_text())}
    assert cited, "the reliability page cites its tests"
    missing = [f"tests/{file}::{name}" for file, name in sorted(cited)
               if not (ROOT / "tests" / file).is_file()
               or not re.search(rf"^def {name}\(", (ROOT / "tests" / file).read_text(), re.M)]  # fmt: skip
    assert not missing, f"cited by the docs but not defined there: {missing}"


def test_every_figure_table_names_the_precision_and_the_cpu_flags_that_decide_it():
    """Each "command | machine | date | code at" row says what the steps computed in and, on a CPU, which of
    its flags (AVX2, AVX-512, AVX512-BF16, AMX-BF16) it has, or that they were not recorded."""
    rows = []
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        for line in page.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 4 and re.fullmatch(r"\d{4}-\d\d-\d\d", cells[-2]):
                rows.append((page.name, cells[-3]))
    assert len(rows) > 40
    lacking = [
        (page, machine)
        for page, machine in rows
        if machine != "as above"
        and not (
            re.search(r"float32|fp32|bf16|precision", machine) and re.search(r"NVIDIA|AVX|flags not recorded", machine)
        )
    ]
    assert not lacking, f"machine cells without the precision or the CPU flags: {lacking}"
