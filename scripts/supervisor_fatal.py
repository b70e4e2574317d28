"""supervisord event listener (deploy/supervisord.conf): stop supervisord when a program is given up.

supervisord marks a program FATAL once it died within `startsecs` of starting `startretries`
times in a row (a port already taken, a settings error) and then simply keeps the other
programs running: half a server. This listener sends supervisord SIGTERM instead, so every
program stops, `make run` ends with the error above it, and systemd (Restart=always)
starts the whole service again after a pause.

Speaks supervisord's event listener protocol on stdin/stdout; logs to stderr.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    while True:
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        header = dict(token.split(":", 1) for token in sys.stdin.readline().split())
        payload = sys.stdin.read(int(header["len"]))
        if header.get("eventname") == "PROCESS_STATE_FATAL":
            fields = dict(token.split(":", 1) for token in payload.split())
            sys.stderr.write(f"pacs-lite: {fields.get('processname', '?')} keeps failing; stopping every process\n")
            sys.stderr.flush()
            os.kill(os.getppid(), signal.SIGTERM)
        sys.stdout.write("RESULT 2\nOK")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
