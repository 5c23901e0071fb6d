"""`make demo`: the whole main job offline -- a tiny model pre-trained on hone's bundled corpus, then
`hone pipeline run` with OSFT on the bundled chat data: dataset -> training -> evaluation against the base
model (new skill and retention of the pre-training corpus) -> registration in the embedded MLflow registry.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-output"


def main() -> int:
    from hone.cli.main import main as hone_main
    from hone.models.tiny import make_tiny_model

    start = time.monotonic()
    model_dir = OUT / "tiny-model"
    if not (model_dir / "config.json").is_file():
        print(f"building a tiny model offline and pre-training it on the bundled corpus: {model_dir}")
        make_tiny_model(model_dir, layers=2, hidden=128, heads=4, seed=0, pretrain_steps=60)
    argv = ["pipeline", "run", "--config", "examples/pipeline.yaml", "--model", str(model_dir.relative_to(ROOT)),
            "--run-dir", "demo-output/pipeline", "--registry-home", "demo-output/hone-home"]
    print("$ hone " + " ".join(argv), flush=True)
    code = hone_main(argv)
    if code == 0:
        print(f"\ndemo finished in {time.monotonic() - start:.0f}s; open the report above in a browser. "
              "Run `make demo` again: every stage is cached.")
    return code


if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    sys.exit(main())
