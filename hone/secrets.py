"""Everything hone knows about secrets, written once: where they live and how to keep them out of what it writes.

*Where*: the environment variables that hold credentials (:data:`SECRET_ENV_NAMES`, plus any name that looks
like one: :func:`is_secret_env`), the Kubernetes Secrets of the OpenShift AI examples and pipelines that feed
them (:data:`KUBE_SECRETS`), the docker config of the OCI pull secret (:func:`pull_secret_values`), and the
pipeline parameters that carry a token (:data:`PIPELINE_SECRET_PARAMS`).

*Keeping them out*:

- :func:`redact_uri`: a URI without ``user:password@`` and with signature/token-like query values as ``***``;
- :func:`scrub`: credential values of the environment removed from a message of an underlying library;
- :func:`scrub_value` / :func:`scrub_mapping` / :func:`scrub_text`: everything a registry or tracker stores,
  with three nets applied together:

  1. **by name**: a key that names a secret (``hf_token``, ``aws_secret_access_key``, ``password``...) has its
     value replaced, whatever the value looks like (:func:`is_secret_key`);
  2. **by value**: any text containing the value of a secret environment variable of this process
     (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``, ``KUBERNETES_AUTH_TOKEN``, a registry token...) is masked;
  3. **by shape**: credentials in URLs (``https://user:pass@host``, ``?token=...``, presigned S3 signatures) and
     well-known token formats (Hugging Face ``hf_...``, AWS ``AKIA...``, JWTs, ``Bearer ...``) are masked.

The lowest layer: imports only the standard library.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "[REDACTED]"
MIN_SECRET_LEN = 6  # shorter values (e.g. "true") would mask ordinary text

# -- where secrets live ----------------------------------------------------------------------------------------

HF_TOKEN_ENV = "HF_TOKEN"
AWS_ACCESS_KEY_ID_ENV = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
AWS_SESSION_TOKEN_ENV = "AWS_SESSION_TOKEN"
OCI_AUTH_ENV = "OCI_PULL_SECRET_MODEL_DOWNLOAD"  # docker config.json contents, or the path of one
KUBE_SERVER_ENV = "KUBERNETES_SERVER_URL"  # not a secret itself, but kept in the kubernetes-credentials Secret
KUBE_TOKEN_ENV = "KUBERNETES_AUTH_TOKEN"
MODEL_REGISTRY_TOKEN_ENV = "MODEL_REGISTRY_TOKEN"

# Environment variables that hold secrets (some do not say "token"/"secret" in their names): their values are
# masked wherever hone writes text, and they are never set as literal values in a Kubernetes manifest.
SECRET_ENV_NAMES = frozenset({
    HF_TOKEN_ENV, "HUGGING_FACE_HUB_TOKEN",
    AWS_ACCESS_KEY_ID_ENV, AWS_SECRET_ACCESS_KEY_ENV, AWS_SESSION_TOKEN_ENV,
    OCI_AUTH_ENV, KUBE_TOKEN_ENV, MODEL_REGISTRY_TOKEN_ENV,
    "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "DATABRICKS_TOKEN", "WANDB_API_KEY", "GITHUB_TOKEN",
})

# The Kubernetes Secrets of the OpenShift AI fine-tuning examples and pipelines: Secret name -> the environment
# variables it fills (each from the key of the same name).
HF_TOKEN_SECRET = "hf-token"
S3_SECRET = "s3-secret"
OCI_PULL_SECRET = "oci-pull-secret-model-download"
KUBE_CREDENTIALS_SECRET = "kubernetes-credentials"
KUBE_SECRETS: dict[str, tuple[str, ...]] = {
    HF_TOKEN_SECRET: (HF_TOKEN_ENV,),
    S3_SECRET: (AWS_ACCESS_KEY_ID_ENV, AWS_SECRET_ACCESS_KEY_ENV),
    OCI_PULL_SECRET: (OCI_AUTH_ENV,),
    KUBE_CREDENTIALS_SECRET: (KUBE_SERVER_ENV, KUBE_TOKEN_ENV),
}

# The pipeline's parameters that carry a token: shown and recorded as redacted.
PIPELINE_SECRET_PARAMS = frozenset({"phase_01_dataset_opt_hf_token", "phase_02_train_opt_hf_token"})

# A key naming a secret: one of these words as a whole `_`/`-`/`.`-separated part of the key.
_SECRET_WORDS = (
    "token", "secret", "password", "passwd", "apikey", "api_key", "access_key", "secret_key",
    "private_key", "credential", "credentials", "auth_token", "session_token", "pull_secret", "bearer",
    "cookie", "access_key_id", "secret_access_key", "client_secret", "sas", "signature",
)
_KEY_RE = re.compile(r"(?:^|[_\-.])(" + "|".join(sorted({re.escape(w) for w in _SECRET_WORDS}, key=len,
                                                             reverse=True)) + r")(?:$|[_\-.])", re.IGNORECASE)
# Environment variable names that look like credentials (HF_TOKEN, WANDB_API_KEY, OPENAI_KEY, DB_PASSWORD, DB_PASS,
# REGISTRY_AUTH; not TOKENIZERS_PARALLELISM, MAX_TOKENS or KEYCLOAK_URL): one of the words as a whole `_` part.
_SECRET_ENV_RE = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|PASS|PASSPHRASE|CREDENTIALS?|AUTH|KEY|"
                            r"APIKEY|SIGNATURE)(_|$)|(^|_)(API|ACCESS|PRIVATE|SECRET)_?KEY(_|$)", re.I)
# Query parameters of a URI whose values are credentials (presigned URLs: X-Amz-Signature, X-Amz-Credential,
# X-Amz-Security-Token, X-Goog-Signature, Azure SAS sig=, ?token=, ?access_token=, ?apikey=, ?password=...).
_SENSITIVE_QUERY = re.compile(r"sig|token|key|secret|credential|password|passwd|pwd|pass$|auth|session|code$", re.I)


def is_secret_key(key: str) -> bool:
    """Whether a parameter/metadata name names a secret (its value is never stored)."""
    return bool(_KEY_RE.search(str(key)))


def is_secret_env(name: str) -> bool:
    """Whether the environment variable ``name`` holds a secret: a known one, or a name that looks like one."""
    name = str(name)
    return name.upper() in SECRET_ENV_NAMES or bool(_SECRET_ENV_RE.search(name)) or is_secret_key(name)


def pull_secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Every secret string in the OCI pull secret (the raw value, encoded auths, passwords), for leak checks."""
    env = os.environ if env is None else env
    raw = env.get(OCI_AUTH_ENV, "")
    out = [raw] if raw.strip() else []
    try:
        data = json.loads(raw) if raw.strip().startswith("{") else {}
        for entry in (data.get("auths") or {}).values():
            for k in ("auth", "password", "identitytoken", "registrytoken"):
                if isinstance(entry, dict) and entry.get(k):
                    out.append(str(entry[k]))
                    if k == "auth":
                        try:
                            out.append(base64.b64decode(str(entry[k])).decode().partition(":")[2])
                        except (binascii.Error, UnicodeDecodeError):
                            pass
    except (ValueError, AttributeError):
        pass
    return [s for s in out if len(s) >= MIN_SECRET_LEN]


def secret_env_values(extra: Iterable[str] = (), env: Mapping[str, str] | None = None) -> list[str]:
    """Values of this process's secret environment variables (and ``extra``), longest first."""
    env = os.environ if env is None else env
    values = {v for k, v in env.items() if v and is_secret_env(k) and len(v) >= MIN_SECRET_LEN}
    values.update(pull_secret_values(env))
    values.update(v for v in extra if v and len(v) >= MIN_SECRET_LEN)
    # multi-line secrets (a docker config.json, a PEM) are also masked line by line
    for v in list(values):
        values.update(line.strip() for line in v.splitlines() if len(line.strip()) >= 12)
    return sorted(values, key=len, reverse=True)


# -- keeping them out -----------------------------------------------------------------------------------------

def redact_uri(uri: str) -> str:
    """``uri`` without user:password and with signature/token-like query (and fragment) values replaced by
    ``***``; a URI that does not parse is masked by shape (:func:`scrub_text`'s rules, without environment values)."""
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return scrub_text(uri, known=())
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]

    def masked(text: str) -> str:
        if not text or "=" not in text:
            return text
        pairs = parse_qsl(text, keep_blank_values=True)
        return urlencode([(k, "***" if _SENSITIVE_QUERY.search(k) else v) for k, v in pairs], safe="*/:")

    query, fragment = masked(parts.query), masked(parts.fragment)
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        out = uri  # nothing to hide: the URI as written (urlunsplit would turn s3:///key into s3:/key)
    else:
        out = urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
    return scrub_text(out, known=())  # token shapes in the path (https://host/hf_.../x.jsonl)


def scrub(text: str) -> str:
    """Remove credential values (from the environment) and credential shapes from a message of an underlying
    library."""
    values = {os.environ.get(name) for name in SECRET_ENV_NAMES}
    values.update(secret_env_values())
    for value in sorted((v for v in values if v and len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, "***")
    return scrub_text(text, known=())


_SHAPES = [
    # userinfo in URLs: scheme://user:password@host -> scheme://[REDACTED]@host
    (re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s@:]*:[^/\s@]*@"), r"\g<pre>" + REDACTED + "@"),
    # credentials in query strings (presigned URLs, ?token=, &sig=)
    (re.compile(r"(?P<pre>[?&#](?:[^=&\s#]*(?:token|secret|password|signature|credential|key|sig|auth)"
                r"[^=&\s#]*)=)(?!\*\*\*(?:[&\s#]|$))[^&\s#]+", re.IGNORECASE), r"\g<pre>" + REDACTED),
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}\b"), REDACTED),                         # Hugging Face tokens
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b"), REDACTED),    # AWS access key ids
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"), REDACTED),  # JWTs (k8s tokens)
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/\-]{8,}=*"), r"\1 " + REDACTED),
    (re.compile(r"\b(?:ghp|gho|ghs|ghu|ghr|github_pat|glpat|xox[abpr])[_-][A-Za-z0-9_\-]{16,}"), REDACTED),
    (re.compile(r"\bsk-(?:proj-|ant-|live_|test_)?[A-Za-z0-9_\-]{20,}"), REDACTED),  # OpenAI/Anthropic/Stripe keys
    (re.compile(r"\b(?:rk|pk)_live_[A-Za-z0-9]{16,}"), REDACTED),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{35}"), REDACTED),                        # Google API keys
    (re.compile(r"\bnpm_[A-Za-z0-9]{30,}"), REDACTED),
    (re.compile(r"\bsha256~[A-Za-z0-9_\-]{20,}"), REDACTED),                    # OpenShift OAuth tokens
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL), REDACTED),
]


# NAME=value (and "name": "value") where NAME names a secret (WANDB_API_KEY=..., DB_PASSWORD=..., hf_token=...):
# the value is masked whatever it looks like.
_ASSIGNMENT = re.compile(r"""(?P<name>(?<![\w.\-])[A-Za-z_][A-Za-z0-9_.\-]*)(?P<q>["']?)(?P<sep>\s*=\s*|\s*:\s*(?=["']))"""
                         r"""(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s,;&"'<>]+)""")


def _assignment(m: "re.Match[str]") -> str:
    name, value = m.group("name"), m.group("value")
    if value.strip("\"'") in ("", REDACTED, "***", "<redacted>") or not (is_secret_env(name) or is_secret_key(name)):
        return m.group(0)
    quote = value[0] if value[:1] in "\"'" and len(value) > 1 else ""
    return f"{name}{m.group('q')}{m.group('sep')}{quote}{REDACTED}{quote}"


def scrub_text(text: str, known: Iterable[str] | None = None, *, assignments: bool = True) -> str:
    """Mask every secret found in ``text``: by value (the secret environment variables of this process, or
    ``known``), then by shape (credentials in URLs, token formats, and with ``assignments``
    ``SECRET_NAME=value`` assignments -- off for hone's own messages, whose ``KEY=VALUE`` are syntax help)."""
    if not text:
        return text
    for secret in (secret_env_values() if known is None else known):
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, repl in _SHAPES:
        text = pattern.sub(repl, text)
    if assignments and ("=" in text or ":" in text):
        text = _ASSIGNMENT.sub(_assignment, text)
    return text


def carries_credentials(value: Any, known: Iterable[str] = ()) -> bool:
    """Whether a value (a string, or lists / mappings of them) holds a credential: a ``known`` secret value or
    a secret's shape (:func:`scrub_text`), or a URI with userinfo or a signed / token query value."""
    if isinstance(value, (list, tuple)):
        return any(carries_credentials(v, known) for v in value)
    if isinstance(value, dict):
        return any(carries_credentials(v, known) for v in value.values())
    if not isinstance(value, str) or not value:
        return False
    if scrub_text(value, list(known)) != value:
        return True
    for word in value.split():
        if "://" in word:
            try:
                netloc = urlsplit(word).netloc
            except ValueError:
                continue
            if "@" in netloc or "***" in redact_uri(word):  # userinfo, or a signed / token query value
                return True
    return False


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
