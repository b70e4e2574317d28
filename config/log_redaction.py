"""One logging filter that takes link tokens, signatures and credentials out of every log line.

Why: a viewer token or a signed image URL is a bearer credential for a patient's images for
up to 24 h. Request lines carry them (`/viewer/?token=...`, `files/7/a.dcm?expires=...&token=...`,
the Referer of a page opened through such a link), and `make run` wrote dozens of them to the
console; an access log is read by more people than the images are.

Where it is attached (every handler that can see a request line):
- Django's LOGGING (config/settings.py): the console handler of the root logger, the
  `django.server` handler (runserver's request lines), and the `django` logger's handler
  (`django.request`: "Not Found: /path").
- the app server (config/app_server.py): granian's logging configuration gets it on both of its
  handlers (its own messages and the access log).

What is replaced by REDACTED (the name stays, so a reader still sees a token was there):
- the value of query parameters named `token`, `*_token`, `signature`, `sig`, `password`, and
  S3 presigned-URL credentials (`X-Amz-Signature`, `X-Amz-Credential`, `X-Amz-Security-Token`),
  also percent-encoded inside another URL (`token%3D...`);
- the credentials of an `Authorization` header (`Authorization: Bearer ...`, `Token ...`,
  `Basic ...`) and a bare `Bearer <token>` / `Token <key>` of 20 or more characters.

Hand-written rather than a library: a regular-expression filter of a few lines is all it
takes, and the log-scrubbing packages on PyPI are either unmaintained or aimed at structured
(JSON) logs this project does not use. The patterns have no nested quantifiers, so they run in
linear time over any line.
"""

from __future__ import annotations

import logging
import re

REDACTED = "REDACTED"

# Names of secrets, not a secret.
_SECRET_NAMES = "|".join(
    [r"[a-z0-9_-]*token", "signature", "sig", "password", "sessionid", "x-amz-signature", "x-amz-credential"]
)
# name=value in a query string or form body; also name%3Dvalue, a URL inside another URL's parameter.
_QUERY_SECRET = re.compile(
    rf"(?i)(?<![a-z0-9-])((?:{_SECRET_NAMES})(?:=|%3D))(?:(?!%26)[^&\s\"'<>;,#])+",
)
_AUTHORIZATION = re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|token|basic)\s+)?)[^\s\"',;]+")
_BARE_CREDENTIAL = re.compile(r"(?i)\b((?:bearer|token)\s+)[a-z0-9._~+/:=-]{20,}")


def redact(text: str) -> str:
    """`text` with token values, signatures and Authorization credentials replaced by REDACTED."""
    if not text:
        return text
    text = _QUERY_SECRET.sub(rf"\1{REDACTED}", text)
    text = _AUTHORIZATION.sub(rf"\1{REDACTED}", text)
    return _BARE_CREDENTIAL.sub(rf"\1{REDACTED}", text)


class RedactSecrets(logging.Filter):
    """Rewrite a record's message (and its traceback text) with `redact`; never drops a record."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text once set, so the traceback they print is this one.
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
