"""Writing files so that a reader never sees half of one: a temporary file beside it, then a rename."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from halpc.errors import HalpcError


def write_atomic(path: str | os.PathLike[str], text: str, what: str, option: str | None = None,
                 make_folder: bool = False) -> Path:
    """Write `text` to `path` by a temporary file beside it and os.replace; a one-line HalpcError
    naming `what` (e.g. "the report") and no temporary file left if that cannot be done. The new
    file gets the mode any new file gets (the umask applies, unlike mkstemp's 0600). A missing
    folder is made with `make_folder` (reports), else an error (a profile's folder is more often
    a typo than a wish)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        if make_folder:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # under a file, the temp path itself is unusable
            tmp.unlink(missing_ok=True)
        raise HalpcError(f"{path}: cannot write {what} ({exc.strerror or exc}); choose a writable path",
                         option=option) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return path
