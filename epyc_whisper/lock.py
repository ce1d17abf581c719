"""One run per output folder: a lock file holding the owner's pid, taken over when stale.

A second run on the same folder fails at once (exit 3) unless told to wait
(``--wait SECONDS``): overlapping cron runs then queue instead of mailing an error.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from epyc_whisper.errors import EnvironmentProblem

LOCK_NAME = ".epyc-whisper.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    """``with OutputLock(out_dir):`` - refuses when a live run holds the folder; a lock
    left by a killed run (its process is gone) is taken over, with a note."""

    #: Seconds between looks at a held lock while waiting.
    POLL = 0.5

    def __init__(self, folder: Path, wait: float = 0.0) -> None:
        self.path = folder / LOCK_NAME
        self.took_over: int | None = None
        self.wait = wait
        self.waited = 0.0  # seconds spent waiting for another run

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EnvironmentProblem(
                f"cannot create the output folder {self.path.parent}: {e.strerror or e}"
            ) from None
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        start = time.monotonic()
        takeovers = 0
        while takeovers < 3:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None and self._age() < 2.0:
                    time.sleep(0.1)  # just created, not yet written: a live run, not stale
                    continue
                if (
                    owner
                    and owner.get("host") == socket.gethostname()
                    and _alive(int(str(owner.get("pid", 0))))
                ):
                    self.waited = time.monotonic() - start
                    if self.waited < self.wait:
                        time.sleep(self.POLL)
                        continue
                    waited = f"; waited {self.wait:g} s for it" if self.wait else ""
                    raise EnvironmentProblem(
                        f"another epyc-whisper run (pid {owner['pid']}) is writing to "
                        f"{self.path.parent}{waited}; use --wait SECONDS to queue behind it, "
                        "or another --output-dir"
                    ) from None
                if owner and owner.get("host") != socket.gethostname():
                    raise EnvironmentProblem(
                        f"{self.path} is held by a run on host {owner.get('host')} "
                        f"(pid {owner.get('pid')}); remove the file if that run is gone"
                    ) from None
                self.took_over = int(str(owner.get("pid", 0))) if owner else 0
                takeovers += 1
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(me)
            except OSError as e:  # a full disk fails here, before any work is done
                self.path.unlink(missing_ok=True)
                raise EnvironmentProblem(
                    f"cannot write the lock file {self.path}: {e.strerror or e}"
                ) from None
            return
        raise EnvironmentProblem(f"could not take the lock {self.path}")

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0  # gone again: the next open decides

    def _owner(self) -> dict[str, object] | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None  # unreadable or half-written: treat as stale

    def release(self) -> None:
        owner = self._owner()
        if owner and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
