"""Keep secrets out of everything a registry stores: parameters, tags, custom properties, artifacts, logs.

Three nets, applied together by :func:`scrub_value` / :func:`scrub_mapping`:

1. **by name**: a key that names a secret (``hf_token``, ``aws_secret_access_key``, ``password``...) has its
   value replaced, whatever the value looks like;
2. **by value**: any text containing the value of a secret-named environment variable of this process
   (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``, ``KUBERNETES_AUTH_TOKEN``, a registry token...) is masked;
3. **by shape**: credentials in URLs (``https://user:pass@host``, ``?token=...``, presigned S3 signatures) and
   well-known token formats (Hugging Face ``hf_...``, AWS ``AKIA...``, JWTs, ``Bearer ...``) are masked.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Iterable, Mapping

REDACTED = "[REDACTED]"

# A key naming a secret: one of these words as a whole `_`/`-`/`.`-separated part of the key.
_SECRET_WORDS = (
    "token", "secret", "password", "passwd", "apikey", "api_key", "access_key", "secret_key",
    "private_key", "credential", "credentials", "auth_token", "session_token", "pull_secret", "bearer",
    "cookie", "access_key_id", "secret_access_key", "client_secret", "sas", "signature",
)
_KEY_RE = re.compile(r"(?:^|[_\-.])(" + "|".join(sorted({re.escape(w) for w in _SECRET_WORDS}, key=len,
                                                             reverse=True)) + r")(?:$|[_\-.])", re.IGNORECASE)
# Environment variables that hold secrets even though their names do not say "token"/"secret".
_SECRET_ENV_NAMES = {"AWS_ACCESS_KEY_ID", "OCI_PULL_SECRET_MODEL_DOWNLOAD", "KUBERNETES_AUTH_TOKEN",
                     "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                     "MODEL_REGISTRY_TOKEN", "DATABRICKS_TOKEN", "WANDB_API_KEY", "GITHUB_TOKEN"}
_MIN_SECRET_LEN = 6  # shorter values (e.g. "true") would mask ordinary text

_SHAPES = [
    # userinfo in URLs: scheme://user:password@host -> scheme://[REDACTED]@host
    (re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s@:]*:[^/\s@]*@"), r"\g<pre>" + REDACTED + "@"),
    # credentials in query strings (presigned URLs, ?token=, &sig=)
    (re.compile(r"(?P<pre>[?&](?:[^=&\s]*(?:token|secret|password|signature|credential|key|sig|auth)"
                r"[^=&\s]*)=)[^&\s#]+", re.IGNORECASE), r"\g<pre>" + REDACTED),
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}\b"), REDACTED),                         # Hugging Face tokens
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b"), REDACTED),    # AWS access key ids
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"), REDACTED),  # JWTs (k8s tokens)
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/\-]{8,}=*"), r"\1 " + REDACTED),
    (re.compile(r"\b(?:ghp|gho|ghs|github_pat|glpat|xox[abp])_[A-Za-z0-9_]{16,}\b"), REDACTED),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL), REDACTED),
]


def is_secret_key(key: str) -> bool:
    """Whether a parameter/metadata name names a secret (its value is never stored)."""
    return bool(_KEY_RE.search(str(key)))


def secret_env_values(extra: Iterable[str] = ()) -> list[str]:
    """Values of this process's secret-named environment variables (and ``extra``), longest first."""
    values = {v for k, v in os.environ.items()
              if v and (k.upper() in _SECRET_ENV_NAMES or is_secret_key(k)) and len(v) >= _MIN_SECRET_LEN}
    values.update(v for v in extra if v and len(v) >= _MIN_SECRET_LEN)
    # multi-line secrets (a docker config.json, a PEM) are also masked line by line
    for v in list(values):
        values.update(line.strip() for line in v.splitlines() if len(line.strip()) >= 12)
    return sorted(values, key=len, reverse=True)


def scrub_text(text: str, known: Iterable[str] | None = None) -> str:
    """Mask every secret found in ``text`` (by value, then by shape)."""
    if not text:
        return text
    for secret in (secret_env_values() if known is None else known):
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, repl in _SHAPES:
        text = pattern.sub(repl, text)
    return text


def scrub_value(key: str, value: Any, known: Iterable[str] | None = None) -> Any:
    """The value to store under ``key``: redacted when the key names a secret, masked text otherwise."""
    if is_secret_key(key):
        return REDACTED if value not in (None, "", False) else value
    if isinstance(value, str):
        return scrub_text(value, known)
    if isinstance(value, Mapping):
        return scrub_mapping(value, known)
    if isinstance(value, (list, tuple)):
        return [scrub_value(key, v, known) for v in value]
    return value


def scrub_mapping(data: Mapping[str, Any], known: Iterable[str] | None = None) -> dict[str, Any]:
    """A copy of ``data`` (nested) with every secret removed; keys are kept so the reader sees what was hidden."""
    known = secret_env_values() if known is None else list(known)
    return {str(k): scrub_value(str(k), v, known) for k, v in data.items()}


def contains_secret(text: str, secrets: Iterable[str]) -> bool:
    """Test helper and last-line check: whether any of ``secrets`` occurs in ``text``."""
    return any(s and s in text for s in secrets)


def finite_or_text(value: float) -> float | str:
    """NaN and infinities are not JSON; registries get them as text."""
    return value if math.isfinite(value) else str(value)
