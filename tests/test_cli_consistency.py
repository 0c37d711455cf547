"""One obvious CLI: commands grouped by stage, flags without metavars, help text as written, one spelling."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from headstart.cli import app
from headstart.cli.help import PANELS

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)


def _help(*args) -> str:
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.stdout


def _panels(text: str) -> dict[str, list[str]]:
    """Panel title -> the command names listed in it, from `headstart --help`."""
    panels, current = {}, None
    for line in text.splitlines():
        if m := re.match(r"╭─ (.+?) ─", line):
            current = panels.setdefault(m.group(1), [])
        elif current is not None and (m := re.match(r"│ (\w+)\s{2,}", line)):
            current.append(m.group(1))
    return panels


def test_help_groups_every_command_by_stage():
    panels = _panels(_help())
    assert list(panels)[1:] == list(PANELS)  # Options first, then the stages in order
    assert panels["Start here"] == ["demo"]
    assert panels["Data: pictures to a feature cache"] == ["download", "extract", "info"]
    assert set(panels["Looking at the data"]) == {"audit", "map", "similar", "report"}
    assert set(panels["Shipping"]) == {"predict", "export", "backbones"}
    assert panels["Scale-out"] == ["merge"]
    listed = [name for title, names in panels.items() if title != "Options" for name in names]
    assert sorted(listed) == COMMANDS  # every command once


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_flags_and_counts_show_no_type(command):
    text = _help(*([command] if command else []))
    assert "<bool>" not in text and "<list[" not in text and "--help" in text
    for line in text.splitlines():
        if "--verbose" in line:
            assert "<int>" not in line


def test_help_keeps_square_brackets():
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", _help("extract")).split())
    assert "pip install -e '.[ray]' in the headstart clone" in text


def test_commands_keep_their_own_text_for_other_readers():
    """A documentation generator (mkdocs-click) reads the commands, not typer's rich rendering."""
    group = typer.main.get_command(app)
    ctx = group.make_context("headstart", ["extract", "--help"], resilient_parsing=True)
    extract = group.get_command(ctx, "extract")
    extract.get_help(extract.make_context("extract", ["--help"], resilient_parsing=True, parent=ctx))
    (ray,) = [p for p in extract.params if p.name == "ray"]
    assert "'.[ray]'" in ray.help and "\\[" not in ray.help


WRITERS = ("extract", "train", "compare", "sweep", "export", "audit", "map", "report", "merge", "baseline", "demo")


@pytest.mark.parametrize("command", [*WRITERS, "download"])
def test_every_command_that_writes_takes_out(command):
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    out = params["out"]
    assert out.param_type_name == "option" and "--out" in out.opts and "-o" in out.opts


@pytest.mark.parametrize("command", COMMANDS)
def test_on_off_flags_are_one_word(command):
    """--overwrite, --prune, --partial, never a --no-overwrite twin that restates the default."""
    for param in typer.main.get_command(app).commands[command].params:
        if param.secondary_opts:
            # --stream/--in-memory: unset means by size; --draft/--no-draft: --no-draft was the flag before
            assert (param.opts, param.secondary_opts) in (
                (["--stream"], ["--in-memory"]),
                (["--draft"], ["--no-draft"]),
            )


def test_bundled_weights_have_a_name():
    from headstart import demo
    from headstart.errors import BackboneError
    from headstart.extractor.options import make_config
    from headstart.settings.config import file_sha256

    config = make_config("mobilenet", alpha=0.25, weights="bundled", precision="float32")
    assert config.weights == f"sha256:{file_sha256(demo.bundled_weights())}"
    assert config.weights_path == str(demo.bundled_weights().resolve())
    with pytest.raises(BackboneError, match="--backbone mobilenet --alpha 0.25"):
        make_config("vgg16", weights="bundled")
    result = runner.invoke(app, ["extract", ".", "--out", "x.h5", "--weights", "bundled", "--backbone", "resnet50"])
    assert result.exit_code == 2 and "MobileNet 0.25" in result.output


def test_tables_to_a_pipe_do_not_fold_paths(tmp_path):
    """CliRunner's stdout is not a terminal, like `headstart info X | less`: rich assumed 80 columns there."""
    from conftest import make_images

    folder = make_images(tmp_path / ("a-folder-with-a-rather-long-name-" * 3) / "pictures", per_class=2)
    cache = tmp_path / "c.h5"
    tiny = ["--backbone", "tiny", "--weights", "none", "--precision", "float32", "-q"]
    assert runner.invoke(app, ["extract", str(folder), "--out", str(cache), *tiny]).exit_code == 0
    result = runner.invoke(app, ["info", str(cache)])
    assert result.exit_code == 0, result.output
    assert len(str(folder.resolve())) > 100
    assert any(line.split() == ["root", str(folder.resolve())] for line in result.stdout.splitlines()), result.stdout
