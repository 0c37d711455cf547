"""Typer options shared by the head commands (train, compare, curve): one definition, one help text."""

from __future__ import annotations

import typer

SPLIT = typer.Option("0.7,0.15,0.15", "--split", help="Train, validation and test fractions.")
SEED = typer.Option(0, "--seed", help="Seed of the split (and of the heads' initialization).")
EPOCHS = typer.Option(None, "--epochs", help="Most epochs for softmax and mlp (default 100; early stopping).")
BATCH = typer.Option(
    None, "--batch-size", help="Batch size for softmax and mlp (default: about 50 steps an epoch, 16 to 256)."
)
LR = typer.Option(None, "--learning-rate", help="Adam learning rate for softmax and mlp (default 0.001).")
HIDDEN = typer.Option(None, "--hidden-units", help="Hidden units of mlp (default 256).")
DROPOUT = typer.Option(None, "--dropout", help="Dropout of mlp (default 0.5).")
PATIENCE = typer.Option(None, "--patience", help="Epochs without a better validation loss before stopping (default 5).")
CLASS_WEIGHT = typer.Option("none", "--class-weight", help="none, or balanced for uneven classes.")
STREAM = typer.Option(
    None, "--stream/--in-memory", help="Read batches from the file, or load the cache (default: by size)."
)
NO_PLOTS = typer.Option(False, "--no-plots", help="Skip the PNG plots.")
EXCLUDE_LIST = typer.Option(
    None, "--exclude-list", help="Leave out the pictures listed in this file, one path a line (audit's suspects.txt)."
)

CALIBRATE = typer.Option(
    "none",
    "--calibrate",
    help="none, or temperature: fit one temperature (any head) on rows that training, early stopping and the "
    "choice of C or k never saw (see --calibration-rows); never on the validation split.",
)
CALIBRATION_ROWS = typer.Option(
    "split",
    "--calibration-rows",
    help="With --calibrate: split, a share of the training pictures set aside (--calibration-fraction; the head "
    "trains on the rest); or crossfit, every training picture scored by a head fitted on the other 4 of 5 folds "
    "(the head trains on all of them; 5 more fits; steadier on small datasets).",
)
CALIBRATION_FRACTION = typer.Option(
    0.2,
    "--calibration-fraction",
    help="With --calibrate: the share of the training pictures set aside to fit the temperature on "
    "(chosen by a hash of the seed and each path, recorded in run.json).",
)
PROMPT = typer.Option(
    [],
    "--prompt",
    help='zeroshot: a sentence with {} where the class name goes (default "a photo of a {}"); repeat it to '
    "average several, as CLIP's paper does.",
)
TEXT_WEIGHTS = typer.Option(
    None,
    "--weights",
    help="zeroshot: the KerasHub preset folder the cache was extracted with, when it moved (its text tower and "
    "tokenizer are read from it).",
)
