"""Write Hugging Face model directories atomically."""
from __future__ import annotations

from pathlib import Path

from hone.io import atomic_dir


def save_hf_dir(model, tokenizer, dest: str | Path, *, max_shard_size: str = "5GB", state_dict=None) -> Path:
    """Save config, safetensors weights and tokenizer (with its chat template) to ``dest`` atomically."""
    from hone.models.load import quiet_transformers

    quiet_transformers()
    dest = Path(dest)
    # training turns the KV cache off (packed rows); the saved model is for inference, where it belongs on
    use_cache = getattr(model.config, "use_cache", None)
    with atomic_dir(dest) as tmp:
        try:
            model.config.use_cache = True
            model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size, state_dict=state_dict)
        finally:
            model.config.use_cache = use_cache
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return dest
