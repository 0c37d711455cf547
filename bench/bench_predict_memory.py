"""`predict` with an exported .keras model: peak memory (RSS) on 1, 8 and 32 large photos of one size
and on 32 photos of different sizes; flat means the same figure whatever the number of pictures.

    python bench/bench_predict_memory.py [--tree PATH] [--megapixels 12] [--json FILE]

``--tree`` runs another checkout's ``headstart`` (e.g. an older commit unpacked with ``git archive``)
on the same model and photos, to compare before and after. Each measurement is a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CHILD = """
import resource, sys, json
from headstart.ship.predict import predict
files = json.loads(sys.argv[1])
res = predict(sys.argv[2], files)
assert all(p.ok for p in res.predictions), [p.error for p in res.predictions if not p.ok][:3]
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
import headstart
print(headstart.__file__, file=sys.stderr)
"""


def _photos(folder: Path, n: int, size: tuple[int, int], vary: bool) -> list[str]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = (size[0] - 8 * i, size[1] - 4 * i) if vary else size
        f = folder / f"{i}.jpg"
        if not f.exists():
            small = rng.integers(0, 256, (h // 64, w // 64, 3), dtype=np.uint8)
            Image.fromarray(small).resize((w, h), Image.BILINEAR).save(f, quality=85)
        out.append(str(f))
    return out


def _model(tmp: Path) -> Path:
    """A logreg head on the tiny backbone, exported as .keras (built with this checkout)."""
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO))
    from conftest import make_images
    from typer.testing import CliRunner

    from headstart.cli import app

    runner = CliRunner()
    images = make_images(tmp / "train", per_class=20, size=(45, 61))
    for args in (
        ["extract", str(images), "--out", str(tmp / "c.h5"), "-q", "--backbone", "tiny", "--weights", "none"],
        ["compare", str(tmp / "c.h5"), "--out", str(tmp / "runs"), "--heads", "logreg", "--no-plots"],
        ["export", str(tmp / "runs" / "logreg"), "--out", str(tmp / "m.keras")],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    return tmp / "m.keras"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose headstart is measured")
    parser.add_argument("--megapixels", type=float, default=12.0, help="size of the large photos")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    model = _model(tmp)
    w = int((args.megapixels * 1e6 * 4 / 3) ** 0.5)
    h = w * 3 // 4
    same = _photos(tmp / "same", 32, (h, w), vary=False)
    varied = _photos(tmp / "varied", 32, (h, w), vary=True)
    env = {**os.environ, "PYTHONPATH": str(args.tree.resolve())}
    rows = {}
    for name, files in (("1 photo", same[:1]), ("8 photos", same[:8]), ("32 photos", same), ("32 sizes", varied)):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(files), str(model)],
            env=env,
            cwd=tmp,  # not the repository: python -c puts the working folder first on sys.path
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stderr.strip().splitlines()[-1].startswith(str(args.tree.resolve())), out.stderr[-300:]
        rows[name] = int(out.stdout.strip().splitlines()[-1])
        print(f"{name:>10}: peak RSS {rows[name]:,} MiB", flush=True)
    result = {"tree": str(args.tree), "megapixels": round(h * w / 1e6, 1), "peak_rss_mib": rows}
    result["ratio_32_to_1"] = round(rows["32 photos"] / rows["1 photo"], 2)
    print(f"ratio 32 photos / 1 photo: {result['ratio_32_to_1']} (target: about 1, flat)")
    print("JSON " + json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
