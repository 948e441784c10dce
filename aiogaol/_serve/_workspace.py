"""A request's working directory: where its files go in, its programs run and its fetch_files come out.

This is the one seam between the service and the way a request gets a writable directory.  Today it is a
fresh host directory under the server's spool, bound read-write into each of the request's jails at the
same path (one more ``FileWriteAll`` in the step's profile), and removed when the request ends; the
sandboxes of issue 14 (a private, size-capped tmpfs ``/work`` with ``write_file``/``read_file``) can
replace it behind these four calls (``open``, ``write``, ``fetch``, ``close``).

Everything in the directory after a program ran is the program's: a path component may have become a
symlink (to ``/etc/shadow``, read by a root server), a file a FIFO.  ``fetch`` therefore walks each path
one component at a time with ``O_NOFOLLOW`` from the directory's own fd and reads only regular files,
capped in size; ``close`` uses ``shutil.rmtree``, which on Linux removes by fd and never follows a link.
Blocking file work runs in a worker thread, so a large upload does not stall the event loop.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Mapping

import anyio.to_thread

from .._plan import NOBODY, _nobody_mapped

MAX_FETCH_FILE = 16 << 20   # bytes of one fetched file
MAX_FETCH_TOTAL = 64 << 20  # bytes of all of a request's fetched files


def jail_owner() -> tuple[int, int] | None:
    """Who a jail's programs are on the host, when that is not us: a root server's run as nobody, and
    must own their working directory to write in it."""
    return (NOBODY, NOBODY) if os.geteuid() == 0 and _nobody_mapped() else None


def make_spool() -> str:
    """The server's spool: a private directory (0700: the jails reach their own subdirectory through
    the bind, not through the host's path) for the requests' working directories."""
    import tempfile
    return tempfile.mkdtemp(prefix="aiogaol-serve-")


MAX_ENTRIES = 100_000  # files and directories a working directory may hold


def tree_size_over(path: str, cap: int) -> bool:
    """Whether the tree holds more than ``cap`` bytes of allocated blocks or more than ``MAX_ENTRIES``
    entries; stops counting as soon as it knows.  Walked by fd-relative scandir, links not followed."""
    used = entries = 0
    stack = [path]
    opened: set[str] = set()
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as it:
                for entry in it:
                    entries += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    used += st.st_blocks * 512
                    if used > cap or entries > MAX_ENTRIES:
                        return True
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
        except PermissionError:
            # A directory the program made unreadable (mode 000) to hide what it holds: ours to
            # open again (the program runs as our uid, or a root server reads it anyway).
            if here not in opened:
                opened.add(here)
                try:
                    os.chmod(here, 0o700, follow_symlinks=False)
                    stack.append(here)
                except OSError:
                    return True
        except OSError:
            continue  # gone meanwhile
    return False


def remove_tree(path: str) -> None:
    """Remove a tree a program may have made hard to remove (a directory of mode 000)."""
    def fix(function: object, name: str, excinfo: tuple[type[BaseException], BaseException, object]) -> None:
        # onerror, not 3.12's onexc: the Debian Python of the unprivileged run is 3.11.
        if isinstance(excinfo[1], FileNotFoundError):
            return
        parent = os.path.dirname(name)
        try:
            os.chmod(parent, 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
                shutil.rmtree(name, onerror=fix)
            else:
                os.unlink(name)
        except FileNotFoundError:
            pass
    shutil.rmtree(path, onerror=fix)


class Workspace:
    """One request's working directory (``path``, as the jail sees it too)."""

    def __init__(self, spool: str) -> None:
        self.path = os.path.join(spool, "r-" + secrets.token_hex(8))
        self.skipped: dict[str, str] = {}  # fetch_files not returned, and why

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._make)

    def _make(self) -> None:
        os.mkdir(self.path, 0o700)
        owner = jail_owner()
        if owner is not None:
            os.chown(self.path, *owner)

    async def write(self, files: Mapping[str, bytes]) -> None:
        """Place the request's files (paths already checked to be relative and free of ``..``).  The
        directory is fresh and no program has run in it yet, so nothing in it can be a planted link."""
        if files:
            await anyio.to_thread.run_sync(self._write, dict(files))

    def _write(self, files: dict[str, bytes]) -> None:
        owner = jail_owner()
        for name, data in files.items():
            parent = self.path
            for part in name.split("/")[:-1]:
                parent = os.path.join(parent, part)
                if not os.path.isdir(parent):
                    os.mkdir(parent, 0o755)
                    if owner is not None:
                        os.chown(parent, *owner)
            target = os.path.join(self.path, name)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                if owner is not None:
                    os.fchown(fd, *owner)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)

    async def fetch(self, names: Iterable[str]) -> dict[str, bytes]:
        """The files asked for that exist and are regular files; the others are left out (as SandboxFusion
        leaves out a missing one) and named in ``skipped`` with the reason."""
        names = list(names)
        if not names:
            return {}
        return await anyio.to_thread.run_sync(self._fetch, names)

    def _fetch(self, names: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        total = 0
        for name in names:
            try:
                data = self._read_beneath(name, min(MAX_FETCH_FILE, MAX_FETCH_TOTAL - total))
            except OSError as e:
                reason = ("a symlink (not followed)" if self._through_link(name)
                          else "not found" if e.errno in (errno.ENOENT, errno.ENOTDIR) else e.strerror or str(e))
                self.skipped[name] = reason
                continue
            except ValueError as e:
                self.skipped[name] = str(e)
                continue
            out[name] = data
            total += len(data)
        return out

    def _through_link(self, name: str) -> bool:
        """Whether a component of ``name`` is a symlink (only to word the reason; the read never follows one)."""
        parts = [p for p in name.split("/") if p not in ("", ".")]
        return any(os.path.islink(os.path.join(self.path, *parts[:i + 1])) for i in range(len(parts)))

    def _read_beneath(self, name: str, cap: int) -> bytes:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                nxt = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nxt
            # O_NONBLOCK: a FIFO planted under the name must not hang the open; it is refused below.
            leaf = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
        finally:
            os.close(fd)
        try:
            st = os.fstat(leaf)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("not a regular file")
            if st.st_size > cap:
                raise ValueError(f"larger than {cap} bytes")
            chunks, got = [], 0
            while got <= cap:
                chunk = os.read(leaf, min(1 << 20, cap + 1 - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            if got > cap:
                raise ValueError(f"larger than {cap} bytes")
            return b"".join(chunks)
        finally:
            os.close(leaf)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(remove_tree, self.path)
