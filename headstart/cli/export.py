"""The export and backbones commands of the CLI: parse, call `headstart.ship.export` or the registry, print."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from headstart.cli.console import cli_errors, say


def export_cmd(
    run: Path = typer.Argument(..., help="A run directory made by headstart train (or compare)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="A .keras file, or for the other formats a folder (model, labels.txt, headstart.json)."
    ),
    fmt: str = typer.Option("keras", "--format", "-f", help="keras, saved_model, onnx or litert."),
    weights: Optional[Path] = typer.Option(
        None, "--weights", help="The backbone weights file, when the cache was extracted with one and it moved."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an earlier export at OUT: a folder only while it holds just the files that export "
        "wrote (listed in its headstart.json); never other files.",
    ),
    no_verify: bool = typer.Option(False, "--no-verify", help="Do not run the written file once to check it."),
) -> None:
    """Export a run as one model from pixels to probabilities, for an app.

    Input: a batch of RGB pixels 0-255 of any height and width; inside: the resize, the backbone's
    preprocessing, the frozen backbone, the standardization and the head; output: one probability
    per class. A .keras file loads with plain keras.saving.load_model, no headstart needed.

    Example: headstart export runs/pets/logreg --out pets-classifier.keras
    """
    from headstart.ship.export import export

    with cli_errors():
        result = export(run, out, fmt, weights=weights, overwrite=overwrite, verify=not no_verify)
    checked = (
        f", checked against the Keras model (largest difference {result.max_difference:.1e})"
        if result.max_difference is not None
        else ""
    )
    say(f"Exported {run} as {fmt} to {result.path} in {result.seconds:.1f} s{checked}")
    if result.cache_note:
        say(f"Note: {result.cache_note}", err=True)
    elif result.cache_difference is not None:
        say(f"  agrees with headstart predict to {result.cache_difference:.1e} (largest probability difference)")


def backbones_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """List the backbones: feature layers, feature size, input size, preprocessing, weights size,
    and pictures per second on the machine the benchmark ran on (bench/bench_backbones.py).

    Example: headstart backbones   (then: headstart extract PICTURES --out x.h5 --backbone convnext_tiny)
    """
    import json

    from headstart.settings.backbones import describe_backbones

    rows, machine = describe_backbones()
    if as_json:
        typer.echo(json.dumps({"backbones": rows, "measured_on": machine}, indent=2))
        return
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    short = {
        "keras.applications.vgg16.preprocess_input": "caffe",
        "keras.applications.resnet50.preprocess_input": "caffe",
        "keras.applications.mobilenet.preprocess_input": "-1..1",
        "in_model": "in model",
    }
    headers = ("name", "layer (others)", "features", "input", "preprocessing", "weights MB", "fp32/s", "bf16/s")
    cells = [headers]
    for r in rows:
        others = [name for name in r["layers"] if name != r["default_layer"]]
        layer = r["default_layer"] + (f" ({', '.join(others)})" if others else "")
        cells.append(
            (
                r["name"],
                layer,
                fmt(r["features"], "d"),
                str(r["input_size"]),
                short.get(r["preprocessing"], r["preprocessing"]),
                fmt(r["weights_mb"], ".0f"),
                fmt(r["pictures_per_second"], ".1f"),
                fmt(r["pictures_per_second_bfloat16"], ".1f"),
            )
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:  # plain columns: a pipe or a narrow terminal never truncates a name
        say("  ".join(c.ljust(w) if i in (0, 1, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    if machine:
        say(f"fp32/s, bf16/s: pictures per second of the model alone, measured on {machine}.")
    else:
        say("fp32/s, bf16/s: not measured for this release (run bench/bench_backbones.py on a quiet machine).")
    say("weights MB: float32 parameters up to the feature layer (the download is about this size).")
    say(
        "Also: --backbone hub:PRESET, a DINOv2, CLIP or SigLIP preset of KerasHub (pip install -e '.[hub]' in the headstart clone)."
    )


def register(app: typer.Typer) -> None:
    """Add export and backbones to ``app``."""
    app.command("export")(export_cmd)
    app.command("backbones")(backbones_cmd)
