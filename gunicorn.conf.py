"""gunicorn's settings for PACS-lite; gunicorn reads ./gunicorn.conf.py from its working directory.

Only what every deployment needs is set here (docker-compose, the tests' and bench's servers
all start gunicorn from the repository root, so all of them get it); workers, threads, bind
and the access log stay on the command line.

logger_class: gunicorn's error and access logs with link tokens, signatures and Authorization
credentials redacted (config/log_redaction.py): its access log would otherwise write every
`?token=` of a viewer link or signed image URL, and the Referer of pages opened through one.
"""

logger_class = "config.log_redaction.RedactingGunicornLogger"
