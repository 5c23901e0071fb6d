"""The evaluation step of `make demo`: the fine-tuned tiny model against its base, offline.

    python examples/eval/demo_eval.py --model demo-output/sft --base demo-output/tiny-model --output demo-output/eval

Runs the local lm-eval tasks in examples/eval/tasks (the new skill: hone_arith_mc, hone_capitals_gen; retention of
the pre-training corpus: hone_retention_facts, hone_retention_corpus) and the holdout split
examples/eval/holdout.jsonl on both models, then writes the comparison table and chart.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hone

HERE = Path(__file__).resolve().parent


def run(model: str | Path, base: str | Path, output: str | Path):
    """Evaluate ``model`` against ``base``; print the headline numbers; return hone's EvalResult."""
    result = hone.evaluate(str(model), str(output), base_model_path=str(base), include_path=[str(HERE / "tasks")],
                           eval_data_path=str(HERE / "holdout.jsonl"), max_new_tokens=24, log_samples=True,
                           overwrite=True)
    rows = {r.name: r for r in result.comparison}
    print(f"\nevaluation (base -> tuned) in {result.elapsed_s:.1f}s:")
    for name, what in (("holdout/perplexity", "new skill, holdout perplexity"),
                       ("holdout/f1", "new skill, holdout answer F1"),
                       ("hone_retention_facts/acc", "retention, corpus facts accuracy"),
                       ("hone_retention_corpus/word_perplexity", "retention, corpus word perplexity")):
        r = rows[name]
        print(f"  {what:<36} {r.base:10.3f} -> {r.tuned:10.3f}" + ("   <- forgetting" if r.forgetting else ""))
    print(f"  table:    {result.output_dir / 'comparison.md'}")
    print(f"  chart:    {result.output_dir / 'comparison.png'}")
    print(f"  samples:  {result.output_dir / 'samples.jsonl'}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="fine-tuned model (or training output directory)")
    parser.add_argument("--base", required=True, help="the model it was fine-tuned from")
    parser.add_argument("--output", required=True, help="directory for the results")
    args = parser.parse_args()
    try:
        run(args.model, args.base, args.output)
    except hone.HoneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
