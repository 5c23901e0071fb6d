"""`make demo`: the whole main job offline -- a tiny model pre-trained on hone's bundled corpus, then
`hone pipeline run` with OSFT on the bundled chat data: dataset -> training -> evaluation against the base
model (new skill and retention of the pre-training corpus) -> registration in the embedded MLflow registry
under the hone home (``$HONE_HOME``, else ``./hone-runs``: where a plain ``hone registry list`` looks); then the
same job with plain SFT, to compare what each retains.
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
            "--run-dir", "demo-output/pipeline"]
    version, reregister = registry_version(OUT / "pipeline")
    if version != "1.0.0":
        argv += ["-p", f"phase_04_registry_man_version={version}"]
    if reregister:
        argv += ["--force-from", "registration"]
    print("$ hone " + " ".join(argv), flush=True)
    code = hone_main(argv)
    if code != 0:
        return code
    compare_with_sft(model_dir)
    print(f"\ndemo finished in {time.monotonic() - start:.0f}s; open the report above in a browser. "
          "Run `make demo` again: every stage is cached.")
    print("\nhone is installed in .venv: run `source .venv/bin/activate` (or call .venv/bin/hone), then e.g.\n"
          f"  hone registry list                # the demo's model, registered as {DEMO_MODEL}:{version}\n"
          f"  hone registry show {DEMO_MODEL}    # with its lineage")
    return 0


DEMO_MODEL = "demo-osft"  # phase_04_registry_man_name in examples/pipeline.yaml


def registry_version(run_dir: Path) -> tuple[str, bool]:
    """The version the demo registers: the one its last run registered (then the stage is cached), else the
    first one not taken in the registry (a registry kept from before `make clean` already holds 1.0.0); and
    whether to register again although the last run did (the registry was emptied since)."""
    import json

    from hone.config import RegistryConfig
    from hone.registry import open_registry

    try:
        done = json.loads((run_dir / "manifest.json").read_text())["stages"]["registration"]
        registered = done["summary"]["model_id"] if done.get("status") == "completed" else None
    except (OSError, ValueError, KeyError):
        registered = None
    taken = {v.version for v in open_registry(RegistryConfig()).list_versions(DEMO_MODEL)}
    if registered and registered.startswith(DEMO_MODEL + ":") and registered.split(":", 1)[1] in taken:
        return registered.split(":", 1)[1], False
    patch = 0
    while f"1.0.{patch}" in taken:
        patch += 1
    return f"1.0.{patch}", registered is not None


def compare_with_sft(model_dir: Path) -> None:
    """The same job with plain SFT (Python API, not registered): what OSFT's frozen directions preserve."""
    import json

    import yaml

    import hone
    from hone.pipeline.runner import Progress

    params = yaml.safe_load((ROOT / "examples" / "pipeline.yaml").read_text())
    params.pop("algorithm")
    params.pop("phase_02_train_man_unfreeze_rank_ratio")
    print("\nthe same job with plain SFT, for comparison (hone.run_pipeline):", flush=True)
    sft = hone.run_pipeline(params.pop("phase_01_dataset_man_data_uri"), algorithm="sft", model=str(model_dir),
                            params=params, run_dir=OUT / "pipeline-sft", registry=False,
                            progress=Progress(lambda line: None))
    manifest = json.loads((OUT / "pipeline" / "manifest.json").read_text())
    o = manifest["stages"]["evaluation"]["summary"]
    s = sft.results["evaluation"].summary
    rows = [("new skill: holdout perplexity", "holdout/perplexity"), ("new skill: holdout answer F1", "holdout/f1"),
            ("retention: corpus facts accuracy", "hone_retention_facts/acc"),
            ("retention: corpus word perplexity", "hone_retention_corpus/word_perplexity")]
    print(f"  {'':<36} {'base':>9} {'SFT':>9} {'OSFT':>9}")
    for label, key in rows:
        print(f"  {label:<36} {o['base_metrics'][key]:>9.3g} {s['metrics'][key]:>9.3g} {o['metrics'][key]:>9.3g}")
    print(f"  SFT report: {sft.report}")


if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    sys.exit(main())
