"""Write Hugging Face model directories atomically."""
from __future__ import annotations

from pathlib import Path

from hone.io import atomic_dir


def save_hf_dir(model, tokenizer, dest: str | Path, *, max_shard_size: str = "5GB") -> Path:
    """Save config, safetensors weights and tokenizer (with its chat template) to ``dest`` atomically."""
    from hone.models.load import quiet_transformers

    quiet_transformers()
    dest = Path(dest)
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return dest
