"""`make demo`: build a tiny model offline, fine-tune it with SFT on the bundled chat data, show the outputs."""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

import hone
from hone.models.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-output"


def main() -> int:
    model_dir = OUT / "tiny-model"
    if not (model_dir / "config.json").is_file():
        print(f"building a tiny model (offline) in {model_dir} ...")
        make_tiny_model(model_dir, layers=2, hidden=128, heads=4, seed=0, pretrain_steps=60)
    params = yaml.safe_load((ROOT / "examples" / "sft.yaml").read_text())
    params["data_path"] = str(ROOT / params["data_path"])
    params["checkpoint_at_epoch"] = True
    try:
        result = hone.sft(str(model_dir), ckpt_output_dir=str(OUT / "sft"), overwrite=True, **params)
    except hone.HoneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\nSFT demo: {result.steps} steps, loss {result.first_loss:.3f} -> {result.final_loss:.3f} "
          f"in {result.elapsed_s:.1f}s")
    print(f"  data:     {result.data_report.summary()}")
    print(f"  model:    {result.final_model_dir}")
    print(f"  metrics:  {result.metrics_path}")
    print(f"  chart:    {result.loss_chart_png}")
    print(f"            {result.loss_chart_html}")
    print("\nthe fine-tuned model answers (a ~1M-parameter model: expect the shape of the answers, not the facts):")
    geo = "You are a concise geography assistant."
    for system, question in ((geo, "What is the capital of France?"), (None, "What color is snow?")):
        print(f"  Q: {question}\n  A: {answer(result.final_model_dir, question, system)}")
    sys.path.insert(0, str(ROOT / "examples" / "eval"))
    import demo_eval  # what the model learned (holdout, new-skill tasks) and forgot (pre-training corpus)

    try:
        demo_eval.run(result.final_model_dir, model_dir, OUT / "eval")
    except hone.HoneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def answer(model_dir: Path, question: str, system: str | None = None) -> str:
    """Greedy reply of a saved model, using its own chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


if __name__ == "__main__":
    sys.exit(main())
