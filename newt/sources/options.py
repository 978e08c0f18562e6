"""`storage_options` for fsspec: `${env:NAME}` expansion, redaction, and opening a store.

Secrets never live in a recipe. A recipe names them as `${env:NAME}` (or a Dagster `EnvVar`), they are
expanded right before a filesystem is built, and everything that is shown or stored goes through
`redact`, which keeps the references and hides any literal secret.
"""

from __future__ import annotations

import os
import re
from typing import Any

from newt.sources.errors import SourceError

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")

# Keys whose plain string values are credentials (s3fs, gcsfs, adlfs and botocore spellings).
SECRET_KEYS = frozenset(
    {
        "key", "secret", "token", "password", "session_token", "security_token",
        "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
        "account_key", "sas_token", "credential", "credentials", "client_secret",
        "connection_string", "access_token", "refresh_token", "private_key", "authorization", "api_key",
        "apikey", "x-api-key",
    }
)  # fmt: skip
# gcsfs `token` values that select an auth method rather than carry a secret.
_NOT_SECRETS = frozenset({"anon", "google_default", "cloud", "browser", "cache"})
# Secrets embedded in an Azure connection string.
_CONN_SECRET = re.compile(r"(?i)\b(AccountKey|SharedAccessSignature|SharedAccessKey)=([^;]*)")


def _env_var_name(value: Any) -> str | None:
    """The variable name of a Dagster `EnvVar` (duck-typed: newt never imports dagster)."""
    name = getattr(value, "env_var_name", None)
    return name if isinstance(name, str) and callable(getattr(value, "get_value", None)) else None


def resolve_storage_options(
    options: dict[str, Any] | None, key_path: str = "storage_options"
) -> dict[str, Any]:
    """A copy of `options` with every `${env:NAME}` and Dagster `EnvVar` replaced by the variable's value.

    Raises `SourceError` naming the variable and the key when a variable is unset.
    """

    def expand(value: Any, where: str) -> Any:
        env_name = _env_var_name(value)
        if env_name is not None:
            value = "${env:" + env_name + "}"
        if isinstance(value, str):

            def lookup(match: re.Match[str]) -> str:
                name = match.group(1)
                if name not in os.environ:
                    raise SourceError(
                        where,
                        f"environment variable {name} is not set (the recipe asks for ${{env:{name}}})",
                        f"export {name}=... in the environment that runs newt (Dagster: the code location's"
                        " environment), or remove the key if the store needs no credential",
                    )
                return os.environ[name]

            return ENV_REF.sub(lookup, value)
        if isinstance(value, dict):
            return {k: expand(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(expand(v, f"{where}[{i}]") for i, v in enumerate(value))
        return value

    return expand(dict(options or {}), key_path)


def redact(options: dict[str, Any] | None) -> dict[str, Any]:
    """What may be shown or stored: `${env:NAME}` references kept, literal secrets replaced by "***"."""

    def hide(value: Any, secret: bool) -> Any:
        env_name = _env_var_name(value)
        if env_name is not None:
            return "${env:" + env_name + "}"
        if isinstance(value, dict):
            return {k: hide(v, secret or str(k).lower() in SECRET_KEYS) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [hide(v, secret) for v in value]
        if isinstance(value, str):
            value = _CONN_SECRET.sub(
                lambda m: m.group(0) if ENV_REF.fullmatch(m.group(2)) else f"{m.group(1)}=***", value
            )
            if secret and value not in _NOT_SECRETS and not ENV_REF.search(value):
                return "***"
            return value
        if secret and value is not None and not isinstance(value, bool):
            return "***"
        return value

    return hide(dict(options or {}), False)


def literal_secrets(options: dict[str, Any] | None, key_path: str = "storage_options") -> list[str]:
    """Keys that hold a literal secret instead of an `${env:NAME}` reference (for recipe validation)."""
    shown = redact(options)
    found: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, str) and "***" in value:
            found.append(where)

    walk(shown, key_path)
    return found


def secret_values(options: dict[str, Any] | None) -> list[str]:
    """The resolved values that must never be printed: every expanded env var and every literal secret."""
    raw = dict(options or {})
    resolved = resolve_storage_options(raw)
    out: set[str] = set()

    def walk(before: Any, after: Any, secret: bool) -> None:
        if isinstance(after, dict) and isinstance(before, dict):
            for k in after:
                walk(before.get(k), after[k], secret or str(k).lower() in SECRET_KEYS)
        elif isinstance(after, (list, tuple)) and isinstance(before, (list, tuple)):
            for b, a in zip(before, after, strict=True):
                walk(b, a, secret)
        elif isinstance(after, str):
            if _env_var_name(before) is not None:
                out.add(after)
            elif isinstance(before, str):
                out.update(os.environ[n] for n in ENV_REF.findall(before) if n in os.environ)
                if secret and after not in _NOT_SECRETS and not ENV_REF.search(before):
                    out.add(after)
            out.update(m.group(2) for m in _CONN_SECRET.finditer(after))

    walk(raw, resolved, False)
    return sorted((s for s in out if len(s) >= 4), key=len, reverse=True)


def scrub(text: str, options: dict[str, Any] | None) -> str:
    """`text` with every secret of `options` replaced by "***" (for error messages from storage clients)."""
    try:
        values = secret_values(options)
    except SourceError:
        return text
    for value in values:
        text = text.replace(value, "***")
    return text


def open_store_fs(url: str, storage_options: dict[str, Any] | None = None, key_path: str = "storage_options"):
    """`(fs, path)` for an fsspec URL (s3://, gs://, az://, abfs://, https://, file://, local path).

    `storage_options` may hold `${env:NAME}` references; they are expanded here and nowhere else.
    """
    import fsspec.core

    return fsspec.core.url_to_fs(url, **resolve_storage_options(storage_options, key_path))


def short_error(exc: BaseException, options: dict[str, Any] | None, limit: int = 400) -> str:
    """`Type: message` of a storage client's exception on one line, secrets scrubbed, at most `limit` chars."""
    text = " ".join(scrub(f"{type(exc).__name__}: {exc}", options).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
