"""Input checks and error reporting shared by every command-line tool of ganstack.

One validation layer for what a user types:

* click parameter types that refuse what would pass silently and fail later: :data:`FINITE_FLOAT`
  (no ``nan``/``inf``), :func:`finite_float` with bounds, :data:`SEED` (what numpy and torch accept),
  :data:`SEED_LIST` (``0-63,99``; never empty), :data:`DEVICE` (``cpu``, ``cuda``, ``cuda:N``, ``mps``,
  ``auto``, checked against this machine and this PyTorch build);
* :func:`check_output_dir` / :func:`check_output_file`, run before any work, so that an output path
  under a regular file or without write permission fails at once with the flag's name;
* :func:`atomic_path`: every finished output is written to a temporary file beside its final name and
  renamed over it only when complete, so an error, Ctrl-C or SIGTERM never leaves half a file under the
  final name (and a failed run never destroys the previous file).

And one reporting layer, :func:`report_exception`, used by the console entry points: a
:class:`~ganstack.stylegan_base.errors.GanstackError` (bad input), an ``OSError`` (full disk, permissions,
a file where a folder should be) and running out of memory become one paragraph on stderr and a non-zero
exit status. Anything else is a bug in ganstack: the user still gets one paragraph, which names the
exception and the file where the full traceback was written (``$GANSTACK_CACHE/crash/``, else the
temporary folder); ``GANSTACK_DEBUG=1`` prints the traceback as well.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import math
import os
import re
import sys
import tempfile
import traceback
from typing import Optional

import click

from .errors import GanstackError

MAX_SEED = 2 ** 32 - 1  # numpy's RandomState and the samplers' seeds
MAX_SEEDS = 1_000_000   # seeds in one --seeds list (each one is a file or a cell)

# Exit statuses: bad input (click's usage errors use 2 too), the environment (disk, memory, files), a bug.
EXIT_INPUT = 2
EXIT_ENVIRONMENT = 1
EXIT_BUG = 1


class InputError(GanstackError):
    """A command-line value or path that cannot be used."""


class DiskFullError(GanstackError, OSError):
    """An output could not be written because its disk is full; nothing was written under its name."""


# ------------------------------------------------------------------------------------------------
# click types

class FiniteFloat(click.ParamType):
    """A float that must be finite (``nan``, ``inf`` refused) and optionally within bounds."""

    name = "float"

    def __init__(self, min: Optional[float] = None, max: Optional[float] = None, min_open: bool = False):
        self.min, self.max, self.min_open = min, max, min_open

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number", param, ctx)
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and (x < self.min or (self.min_open and x == self.min)):
            self.fail(f"{x:g} must be {'>' if self.min_open else '>='} {self.min:g}", param, ctx)
        if self.max is not None and x > self.max:
            self.fail(f"{x:g} must be <= {self.max:g}", param, ctx)
        return x

    def __repr__(self):
        return "FiniteFloat"


FINITE_FLOAT = FiniteFloat()


def finite_float(min: Optional[float] = None, max: Optional[float] = None, min_open: bool = False) -> FiniteFloat:
    return FiniteFloat(min, max, min_open)


def int_range(min: Optional[int] = None, max: Optional[int] = 2 ** 31 - 1) -> click.IntRange:
    """An int within bounds; the default upper bound keeps sizes in what tensors can index."""
    return click.IntRange(min, max)


SEED = click.IntRange(0, MAX_SEED)


def _parse_seeds(text) -> tuple[list[int], Optional[str]]:
    """``(seeds, None)``, or ``([], why the text is not a seed list)``."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                return [], f"the range {part!r} runs backwards (it is empty); write LOW-HIGH, e.g. {b}-{a}."
        elif part.isdigit():
            a = b = int(part)
        else:
            return [], (f"{part!r} is not a seed or a range; seeds are whole numbers from 0 to {MAX_SEED}, "
                        f"written like 0-63 or 1,5,9.")
        if b > MAX_SEED:
            return [], f"seed {b} is too large; seeds go from 0 to {MAX_SEED}."
        if len(out) + (b - a + 1) > MAX_SEEDS:
            return [], f"{text!r} asks for more than {MAX_SEEDS:,} seeds; give a shorter list."
        out.extend(range(a, b + 1))
    if not out:
        return [], f"the list {str(text)!r} is empty; give at least one seed, e.g. 0-15 or 1,5,9."
    return out, None


class _CheckedType(click.ParamType):
    """A click type from ``check(text) -> (value, problem or None)``; the problem becomes click's message."""

    def __init__(self, name: str, check):
        self.name, self.check = name, check

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value  # already converted (a default, or a value from Python)
        converted, problem = self.check(value)
        if problem:
            self.fail(problem, param, ctx)
        return converted


def _checked(check, text, flag: str):
    value, problem = check(text)
    if problem:
        raise InputError(f"{flag}: {problem}")
    return value


def parse_seed_list(text, flag: str = "--seeds") -> list[int]:
    """``'0-3,7'`` -> ``[0, 1, 2, 3, 7]``; an empty, reversed, negative or too long list is an InputError."""
    return _checked(_parse_seeds, text, flag)


# ``0-63`` or ``1,5,9`` (or both): a non-empty list of seeds in ``[0, 2**32 - 1]``.
SEED_LIST = _CheckedType("seeds", _parse_seeds)


def _check_device(text) -> tuple[str, Optional[str]]:
    """``(normalised name, None)``, or ``(name, why it cannot be used as a device here)``."""
    import torch

    value = str(text if text is not None else "").strip().lower()
    usage = "Use cpu, cuda, cuda:N (a GPU index) or auto."
    if value in ("auto", "cpu"):
        return value, None
    m = re.fullmatch(r"(cuda|mps)(?::(\d+))?", value)
    if not m:
        hint = " ('gpu' is spelled cuda in PyTorch.)" if value.startswith("gpu") else ""
        return value, f"{text!r} is not a device.{hint} {usage}"
    kind, index = m.group(1), m.group(2)
    if kind == "mps":
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return value, None
        return value, f"{text!r} needs Apple's MPS backend, which this machine does not have. {usage}"
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return value, (f"{text!r} needs CUDA, but this PyTorch build (torch {torch.__version__}) has no CUDA "
                       f"support. Use cpu, or install a CUDA build of PyTorch.")
    if not torch.cuda.is_available():
        return value, (f"{text!r} needs a GPU, but PyTorch sees none on this machine (no driver, or "
                       f"CUDA_VISIBLE_DEVICES hides them). Use cpu.")
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        return value, f"{text!r} is out of range: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}."
    return value, None


def check_device(text, flag: str = "--device") -> str:
    """Normalise and check a device name against this machine; returns ``auto``, ``cpu``, ``cuda:N`` ..."""
    return _checked(_check_device, text, flag)


# ``--device``: cpu, cuda, cuda:N, mps or auto, checked against this machine and this PyTorch build.
DEVICE = _CheckedType("device", _check_device)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other names unchanged."""
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# ------------------------------------------------------------------------------------------------
# Output paths

def _blocking_file(path: str) -> Optional[str]:
    """The first ancestor of ``path`` (or ``path`` itself) that exists and is not a folder."""
    p = os.path.abspath(path)
    while True:
        if os.path.lexists(p):
            return None if os.path.isdir(p) else p
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def _first_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.lexists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def check_output_dir(path, flag: str) -> str:
    """Fail now, with the flag's name, if folder ``path`` cannot be created or written into."""
    if path is None or not str(path).strip():
        raise InputError(f"{flag} is empty; give a folder path (it is created if missing).")
    path = str(path)
    blocker = _blocking_file(path)
    if blocker is not None:
        if os.path.abspath(blocker) == os.path.abspath(path):
            raise InputError(f"{flag} {path!r} is a file, not a folder. Give a folder path (it is created if "
                             f"missing), or move that file away.")
        raise InputError(f"{flag} {path!r} cannot be created: {blocker!r} is a file, not a folder. Choose "
                         f"another path, or move that file away.")
    existing = _first_existing(path)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path!r}: no permission to write in {existing!r}. Choose a folder you can "
                         f"write to.")
    return path


def check_output_file(path, flag: str, suffix: Optional[str] = None) -> str:
    """Fail now if file ``path`` cannot be written: a folder under that name, a file in the way of its
    folder, no permission, or (with ``suffix``) another extension."""
    if path is None or not str(path).strip():
        raise InputError(f"{flag} is empty; give a file path.")
    path = str(path)
    if os.path.isdir(path):
        name = f"{os.path.join(path, 'samples' + suffix)!r}" if suffix else "a file name inside it"
        raise InputError(f"{flag} {path!r} is a folder; give a file path such as {name}.")
    if suffix and not path.lower().endswith(suffix):
        raise InputError(f"{flag} {path!r} must end in {suffix} (for example {path + suffix!r}).")
    folder = os.path.dirname(os.path.abspath(path))
    blocker = _blocking_file(folder)
    if blocker is not None:
        raise InputError(f"{flag} {path!r} cannot be written: {blocker!r} is a file, not a folder. Choose "
                         f"another path, or move that file away.")
    existing = path if os.path.exists(path) else _first_existing(folder)
    if not os.access(existing, os.W_OK | (0 if existing == path else os.X_OK)):
        raise InputError(f"{flag} {path!r}: no permission to write {existing!r}.")
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside ``path`` (same extension); rename it over ``path`` when the block ends
    normally, delete it on any error or interrupt. The previous file at ``path`` survives a failure. A block
    that writes nothing (the temporary file stays empty) leaves ``path`` alone."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.tmp-", suffix=ext, dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished outputs get the usual mode
        yield tmp
        if os.path.getsize(tmp) == 0:
            os.remove(tmp)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if not isinstance(exc, DiskFullError) and (is_disk_full(exc) or is_torch_write_failure(exc)):
            raise DiskFullError(disk_full_message(path)) from None
        raise


# ------------------------------------------------------------------------------------------------
# Turning exceptions into one paragraph

_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
# What torch's zip writer says when a write fails (it drops the errno).
_TORCH_WRITE_FAILED = re.compile(r"inline_container\.cc|PytorchStreamWriter failed|file write failed|"
                                 r"unexpected pos \d+ vs \d+", re.I)


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, and for torch's write failures (which lose the errno) on a nearly full disk."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno is None and re.search(r"\d+ requested and \d+ written", text):
        return True  # numpy's short write (tofile), which carries no errno
    return "No space left on device" in text or "Disk quota exceeded" in text


def is_torch_write_failure(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and bool(_TORCH_WRITE_FAILED.search(str(exc)))


def free_bytes(path: str) -> Optional[int]:
    import shutil
    try:
        return shutil.disk_usage(_first_existing(path)).free
    except OSError:
        return None


def _human(n: Optional[int]) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def disk_full_message(path: str, what: str = "the file") -> str:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    return (f"The disk is full: {what} {path!r} could not be written ({_human(free_bytes(folder))} free in "
            f"{folder!r}). Nothing was written under that name, and files written before are intact. Free "
            f"some space (or write somewhere else) and run the command again.")


def describe_os_error(exc: OSError) -> str:
    """One paragraph for an OSError a user can fix: what failed, on which path, and what to do."""
    path = exc.filename if exc.filename is not None else ""
    path2 = exc.filename2
    where = f" {path!r}" if path != "" else ""
    code = exc.errno
    if is_disk_full(exc):
        if path != "":
            return disk_full_message(str(path), "the file")
        return ("The disk is full: a file could not be written. Free some space (or write somewhere else) and run "
                "the command again; files written before are intact.")
    if code in (errno.EACCES, errno.EPERM):
        return (f"Permission denied:{where} cannot be read or written by this user. Fix its permissions or "
                f"choose another path.")
    if code == errno.EROFS:
        return f"Read-only file system:{where} cannot be written. Choose a path on a writable disk."
    if code == errno.ENOTDIR or (code == errno.EEXIST and path != "" and os.path.isfile(str(path))):
        blocker = _blocking_file(str(path)) if path != "" else None
        if blocker and os.path.abspath(blocker) == os.path.abspath(str(path)):
            return f"{str(path)!r} is a file, but a folder is needed there. Choose another path, or move that file away."
        if blocker:
            return (f"{str(path)!r} cannot be used as a folder: {blocker!r} is a file, not a folder. Choose "
                    f"another path, or move that file away.")
    if code == errno.EISDIR:
        return f"{str(path)!r} is a folder, but a file was expected there. Give a file path."
    if code == errno.ENOENT:
        return f"No such file or folder:{where}."
    if code == errno.ENAMETOOLONG:
        return f"A file name is too long:{where}."
    if code in (errno.EMFILE, errno.ENFILE):
        return "Too many open files; raise the limit (ulimit -n) or use fewer --workers."
    extra = f" -> {path2!r}" if path2 else ""
    return f"{exc.strerror or str(exc) or type(exc).__name__}:{where}{extra}."


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    text = str(exc)
    return name == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and (
        "out of memory" in text.lower() or "can't allocate memory" in text or "Cannot allocate memory" in text))


def clean_message(exc: BaseException) -> str:
    """The message of a user error, without the traceback text a DataLoader worker embeds in it."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        # "Caught X in DataLoader worker process 0.\nOriginal Traceback ...\nX: the message"
        last = text.splitlines()[-1]
        name = type(exc).__name__
        text = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return text


def _crash_file(exc: BaseException) -> Optional[str]:
    """Write the traceback of an unexpected exception to a file; returns its path (None if nothing writable)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = "ganstack " + " ".join(sys.argv[1:]) + "\n\n" + "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__))
    roots = [os.path.join(os.environ.get("GANSTACK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                           "ganstack"), "crash"),
             tempfile.gettempdir()]
    for root in roots:
        try:
            os.makedirs(root, exist_ok=True)
            path = os.path.join(root, f"ganstack-crash-{stamp}-{os.getpid()}.txt")
            with open(path, "wt") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None


def report_exception(exc: BaseException, echo=None) -> int:
    """Print one paragraph for ``exc`` on stderr and return the exit status for it."""
    echo = echo or (lambda msg: click.echo(msg, err=True))
    debug = bool(os.environ.get("GANSTACK_DEBUG"))
    if isinstance(exc, DiskFullError):
        echo(f"Error: {exc}")
        code = EXIT_ENVIRONMENT
    elif isinstance(exc, GanstackError):
        echo(f"Error: {clean_message(exc)}")
        code = getattr(exc, "exit_code", EXIT_INPUT)  # e.g. a diverged run's own status
    elif isinstance(exc, OSError):
        echo(f"Error: {describe_os_error(exc)}")
        code = EXIT_ENVIRONMENT
    elif _is_out_of_memory(exc):
        gpu = "CUDA" in str(exc) or "GPU" in str(exc)
        first = clean_message(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        echo(f"Error: out of {'GPU ' if gpu else ''}memory ({first[:300]}). Use smaller sizes: a lower --batch "
             f"(or --batch-gpu, which keeps the batch through gradient accumulation), fewer samples or seeds, "
             f"or a smaller dataset or network.")
        code = EXIT_ENVIRONMENT
    elif is_torch_write_failure(exc):
        echo(f"Error: writing a file failed inside PyTorch ({str(exc).splitlines()[0][:200]}). This almost "
             f"always means the disk is full or was removed; free some space and run again. Files written "
             f"before are intact.")
        code = EXIT_ENVIRONMENT
    else:
        path = _crash_file(exc)
        where = f"The full traceback is in {path}" if path else "The traceback could not be saved"
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        echo(f"Error: internal error ({type(exc).__name__}{': ' + first if first else ''}). This is a bug in "
             f"ganstack, not a problem with your input. {where}; please include it when you report the bug "
             f"(GANSTACK_DEBUG=1 prints it here).")
        code = EXIT_BUG
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    return code


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop: unwinds like Ctrl-C, so temporary files are removed."""


def install_sigterm_unwind():
    """Make SIGTERM raise :class:`Terminated` in the main thread (training loops install their own handler
    while they run and restore this one afterwards). Returns a function that restores the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise Terminated()

    try:
        old = signal.getsignal(signal.SIGTERM)
        if old not in (signal.SIG_DFL, None):
            return lambda: None  # someone (a launcher, a test harness) handles it already
        signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, old)


def run_main(fn) -> None:
    """Run a console entry point: one paragraph and a non-zero exit for every failure (see the module doc)."""
    restore = install_sigterm_unwind()
    try:
        _run_main(fn)
    finally:
        restore()


def _run_main(fn) -> None:
    try:
        fn()
    except SystemExit:
        raise
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt (and so Terminated) into Abort
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, Terminated):
            click.echo("Terminated.", err=True)
            sys.exit(143)
        click.echo("Interrupted." if isinstance(cause, KeyboardInterrupt) else "Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Terminated:
        click.echo("Terminated.", err=True)
        sys.exit(143)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place where every failure becomes one paragraph
        sys.exit(report_exception(exc))


# ------------------------------------------------------------------------------------------------
# Files that torch.load cannot read

def describe_load_error(exc: BaseException, path: str) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, phrased to follow "it": no torch advice to load
    with ``weights_only=False`` (which would run code from an untrusted file)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if size == 0:
        return "is empty (0 bytes)"
    text = str(exc)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m or "Unsupported global" in text:
        found = f" (found {m.group(1)})" if m else ""
        return (f"holds Python objects other than tensors and plain values{found}, which ganstack files never do; "
                f"it is not loaded, because loading such a file can run code from it")
    if head[:4] == b"PK\x03\x04":
        return ("is a damaged or truncated PyTorch file (an incomplete copy or download, or a write that was cut "
                "off)")
    if head[:1] == b"\x80":  # a pickle (PyTorch's legacy format)
        return "is a damaged pickle, or a pickle that is not a PyTorch file"
    try:
        head.decode("utf-8")
        return "is a text file, not a PyTorch file"
    except UnicodeDecodeError:
        return "is not a PyTorch file (it is neither a PyTorch zip archive nor a pickle)"
