"""Data safety around a job: which files it reads, whether its output may be written, the
content key of its checkpoint, the lock on its output, memory preflight and clean stops.

- ``job_inputs(parameters)``: every file a job reads, found generically in its parameters (any
  string that names an existing file) plus the sibling files a reader opens next to it
  (``.rawtlt``, ``.tlt``, ``.mdoc``, ``.xf``): works for every command without listing its keys.
- ``check_output(out, inputs)``: refuses, before any work, an output that is an input (same
  resolved path or the same inode), a sibling a reader would open, an existing folder (``.``
  included) or a path in a folder that is missing or not writable.
- ``file_identity(path)``: size, mtime and a SHA-256 of the header, 64 sampled blocks and the
  tail (the whole file below 1 MiB), cheap on any size. ``checkpoint_key`` = parameters plus the
  identity of every input; a checkpoint whose key differs is discarded with a message.
- ``OutputLock``: ``OUT.lock`` beside the output holds ``pid host``; a second writer fails at
  once; a lock whose pid is dead (same host) is taken over; stale ``.OUT.*.tmp`` files of
  earlier killed runs are removed once the lock is held.
- ``memory_limit_bytes()`` (cgroup v2 ``memory.max`` / v1 ``memory.limit_in_bytes``, the
  process's address-space rlimit, physical memory) and ``preflight(need, what, hint)``.
- ``entry_point``: decorates the pipeline's entry functions; SIGTERM stops the job like Ctrl-C
  (``Interrupted``, the checkpoint of completed steps is kept) and the locks taken inside are
  released however the call ends.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import os
import signal
import socket
import threading
from pathlib import Path

from .errors import InputError, TomostrainError

#: sibling files a tilt-series reader may open next to ``STEM.mrc`` / ``STEM.tif``
SIBLING_SUFFIXES = (".rawtlt", ".tlt", ".mdoc", ".xf")
#: files up to this size are hashed whole; larger ones by header + samples + tail
WHOLE_HASH_BYTES = 1 << 20
SAMPLE_BLOCKS = 64
BLOCK_BYTES = 4096
HEADER_BYTES = 65536


class OutputBusyError(TomostrainError):
    """Another live process holds the lock on the output path."""


class MemoryLimitError(InputError):
    """A job needs more memory than its process or container may use."""


class Interrupted(KeyboardInterrupt):
    """The job was stopped by SIGTERM (SIGINT raises KeyboardInterrupt as usual)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ------------------------------------------------------------------------------ inputs, outputs


def sibling_files(path) -> list[Path]:
    """Files a reader may open next to ``path``: ``STEM.rawtlt/.tlt/.mdoc/.xf`` and ``NAME.mdoc``."""
    path = Path(path)
    out = [path.with_suffix(s) for s in SIBLING_SUFFIXES if path.with_suffix(s) != path]
    out.append(path.with_name(path.name + ".mdoc"))  # SerialEM names it x.mrc.mdoc
    return out


def job_inputs(parameters, extra=()) -> list[Path]:
    """Every existing file named by a string anywhere in ``parameters`` (nested dicts/lists),
    plus ``extra``, each followed by its existing sibling files; resolved, without repeats."""
    found: list[Path] = []

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, (str, os.PathLike)) and str(value):
            try:
                p = Path(value)
                if p.is_file():
                    found.append(p)
            except (OSError, ValueError):
                pass

    walk(parameters)
    walk(list(extra))
    out: list[Path] = []
    for p in found:
        for q in [p, *[s for s in sibling_files(p) if s.is_file()]]:
            q = q.resolve()
            if q not in out:
                out.append(q)
    return out


def written_paths(out) -> list[Path]:
    """The paths a job writing ``out`` creates: the result, its checkpoint and its lock."""
    out = Path(out)
    return [out, out.with_name(out.name + ".partial"), out.with_name(out.name + ".lock")]


def check_output(out, inputs=()) -> Path:
    """Refuse an output path that would destroy an input or cannot be written; before any work.

    inputs : files the job reads (``job_inputs``); the output, its ``.partial`` and ``.lock`` may
        name none of them nor a sibling a reader opens (same resolved path or same inode).
    """
    out = Path(out)
    if str(out) in ("", ".") or out.is_dir():
        raise InputError(f"output {str(out) or repr('')} is a folder; give a result file name such as result.h5")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output folder {parent} is not writable")
    if out.exists() and not os.access(out, os.W_OK):
        raise InputError(f"output {out} exists and is not writable")
    protected = []
    for p in inputs:
        p = Path(p)
        protected.append((p, p))
        protected += [(s, p) for s in sibling_files(p)]
    for w in written_paths(out):
        wr = w.resolve()
        for p, source in protected:
            same = wr == p.resolve()
            if not same and w.exists() and p.exists():
                try:
                    same = os.path.samefile(w, p)
                except OSError:
                    same = False
            if same:
                what = f"the input {p.name}" if p == source else f"{p.name}, read with the input {source.name}"
                raise InputError(f"output {out} would overwrite {what}; choose another output name")
    return out


def file_identity(path) -> dict:
    """``{size, mtime_ns, sha256}`` of a file; the hash covers the whole file up to 1 MiB, else
    the first 64 KiB, 64 evenly spaced 4 KiB blocks and the last 4 KiB (cost independent of size)."""
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= WHOLE_HASH_BYTES:
            h.update(f.read())
        else:
            h.update(f.read(HEADER_BYTES))
            step = (st.st_size - BLOCK_BYTES) / (SAMPLE_BLOCKS + 1)
            for i in range(1, SAMPLE_BLOCKS + 2):
                f.seek(int(i * step))
                h.update(f.read(BLOCK_BYTES))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}


def checkpoint_key(parameters, inputs) -> dict:
    """What a checkpoint must match to be resumed: the parameters and every input's identity."""
    return {"parameters": parameters, "inputs": {str(p): file_identity(p) for p in inputs}}


def key_difference(old: dict, new: dict) -> str | None:
    """A short reason why checkpoint key ``old`` does not match ``new``, or None when it does."""
    if old.get("parameters") != new.get("parameters"):
        return "the parameters changed"
    a, b = old.get("inputs", {}), new.get("inputs", {})
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            return f"the input files changed ({Path(name).name} {'added' if name in b else 'gone'})"
        if a[name] != b[name]:
            fields = [k for k in ("size", "sha256", "mtime_ns") if a[name].get(k) != b[name].get(k)]
            return f"the input {Path(name).name} changed ({', '.join(fields)})"
    return None


# ------------------------------------------------------------------------------------ the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """``OUT.lock`` beside the output with ``pid host``; ``acquire`` fails at once if held."""

    def __init__(self, out):
        self.out = Path(out)
        self.path = self.out.with_name(self.out.name + ".lock")
        self.held = False

    def acquire(self) -> "OutputLock":
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _attempt in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None or (owner[1] == socket.gethostname() and not _pid_alive(owner[0])):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise OutputBusyError(
                    f"output {self.out} is being written by another tomostrain run (pid {owner[0]} on "
                    f"{owner[1]}, lock {self.path.name}); wait for it to finish or choose another output"
                ) from None
            except OSError as exc:
                raise InputError(f"cannot create the lock {self.path}: {exc.strerror}") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            _HELD.add(self)
            clean_stale_temps(self.out)
            return self
        raise OutputBusyError(f"cannot take the lock {self.path}: it keeps reappearing")

    def _owner(self):
        try:
            pid, host = self.path.read_text().split()[:2]
            return int(pid), host
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            if self._owner() == (os.getpid(), socket.gethostname()):
                self.path.unlink(missing_ok=True)
            self.held = False
            _HELD.discard(self)


_HELD: set = set()
atexit.register(lambda: [lock.release() for lock in list(_HELD)])


def clean_stale_temps(out) -> list[Path]:
    """Remove ``.NAME.<hex>.tmp`` files (``io._files.atomic_paths``) of ``out`` and its
    checkpoint left by a killed run; call only while holding the output's lock."""
    out = Path(out)
    removed = []
    for w in written_paths(out)[:2]:
        for tmp in w.parent.glob(f".{w.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


# ------------------------------------------------------------------------------------- memory


def memory_limit_bytes() -> tuple[int, str]:
    """(bytes, source) this process may use: the smallest of the environment override
    ``TOMOSTRAIN_MEMORY_LIMIT``, the cgroup v2/v1 limit, RLIMIT_AS and physical memory."""
    from .gpu_core.backend import parse_bytes

    env = os.environ.get("TOMOSTRAIN_MEMORY_LIMIT")
    if env:
        return parse_bytes(env), "TOMOSTRAIN_MEMORY_LIMIT"
    limits = []
    try:
        limits.append((os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical memory"))
    except (ValueError, OSError):
        pass
    for value, source in (_cgroup_limit(), _rlimit()):
        if value:
            limits.append((value, source))
    return min(limits) if limits else (1 << 62, "unknown")


def _cgroup_limit():
    try:
        rel = next((line.split(":", 2)[2].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
                    if line.startswith("0::")), None)
    except OSError:
        rel = None
    if rel is not None:  # cgroup v2: the smallest memory.max on the way up
        best = None
        here = Path("/sys/fs/cgroup") / rel.lstrip("/")
        for folder in [here, *here.parents]:
            try:
                text = (folder / "memory.max").read_text().strip()
            except OSError:
                text = "max"
            if text != "max" and text.isdigit():
                best = min(best or int(text), int(text))
            if folder == Path("/sys/fs/cgroup"):
                break
        if best:
            return best, "cgroup memory.max"
    try:
        v1 = int(Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").read_text())
        if v1 < 1 << 60:
            return v1, "cgroup memory.limit_in_bytes"
    except (OSError, ValueError):
        pass
    return None, ""


def _rlimit():
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        return (soft, "RLIMIT_AS") if soft not in (resource.RLIM_INFINITY, -1) else (None, "")
    except (ImportError, ValueError, OSError):
        return None, ""


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def preflight(need_bytes: int, what: str, hint: str) -> None:
    """MemoryLimitError at once when ``need_bytes`` exceed the memory this process may use."""
    limit, source = memory_limit_bytes()
    if need_bytes > limit:
        raise MemoryLimitError(f"{what} needs about {gib(need_bytes)} of memory but this process may use "
                               f"{gib(limit)} ({source}); {hint}")


def disk_free_bytes(folder) -> int:
    """Free bytes on the file system of ``folder``."""
    import shutil

    return int(shutil.disk_usage(Path(folder) if str(folder) else Path(".")).free)


def preflight_disk(need_bytes: int, folder, what: str, hint: str) -> None:
    """MemoryLimitError at once when ``need_bytes`` exceed the free disk space at ``folder`` (an
    out-of-core result is written there chunk by chunk)."""
    free = disk_free_bytes(folder)
    if need_bytes > free:
        raise MemoryLimitError(f"{what} needs about {gib(need_bytes)} of disk but {folder} has {gib(free)} free; {hint}")


# -------------------------------------------------------------------- signals, locks per call

_state = threading.local()


def _on_sigterm(signum, _frame):
    raise Interrupted(signum)


def entry_point(func):
    """Decorate a pipeline entry function: SIGTERM raises ``Interrupted`` (a KeyboardInterrupt,
    so the steps completed so far stay checkpointed) and the output locks taken during the call
    are released when the outermost decorated call returns or fails."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if getattr(_state, "locks", None) is not None:
            return func(*args, **kwargs)
        _state.locks = []
        old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return func(*args, **kwargs)
        finally:
            for lock in _state.locks:
                lock.release()
            _state.locks = None
            if old is not None:
                signal.signal(signal.SIGTERM, old)

    return wrapper


def lock_output(out) -> OutputLock:
    """Take the lock on ``out`` for the current entry-point call (released when it ends)."""
    lock = OutputLock(out).acquire()
    if getattr(_state, "locks", None) is not None:
        _state.locks.append(lock)
    _state.last = lock.out
    return lock


def last_output():
    """The output path of the latest job started in this thread (for messages), or None."""
    return getattr(_state, "last", None)


__all__ = [
    "Interrupted", "MemoryLimitError", "OutputBusyError", "OutputLock", "check_output",
    "checkpoint_key", "clean_stale_temps", "entry_point", "file_identity", "job_inputs", "key_difference",
    "last_output", "lock_output", "memory_limit_bytes", "preflight", "sibling_files",
]
