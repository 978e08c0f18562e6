"""The one error type the data sources raise: which dataset, what went wrong, how to fix it."""

from __future__ import annotations

import re

# Query parameters that carry credentials in signed URLs (Azure SAS, S3 and GCS presigned URLs, API keys).
_URL_SECRET = re.compile(
    r"(?i)([?&](?:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature"
    r"|x-goog-credential|token|access_token|api_key|apikey|key|password)=)[^&#\s'\"]+"
)


def redact_url(text: str) -> str:
    """`text` with the credential parameters of any signed URL in it replaced by "***"."""
    return _URL_SECRET.sub(r"\1***", text)


class SourceError(ValueError):
    """A dataset source could not be read. The message names the recipe key, the problem and the fix."""

    def __init__(self, key_path: str, problem: str, fix: str) -> None:
        self.key_path = key_path
        self.problem = redact_url(problem)
        self.fix = redact_url(fix)
        super().__init__(f"{key_path}: {self.problem}\n  fix: {self.fix}")
