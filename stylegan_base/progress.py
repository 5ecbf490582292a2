"""Progress for long work (metrics, dataset conversion, downloads) that stays out of logs.

:func:`progress` returns a counter with ``update(n)``/``close()`` (also a context manager and an
iterable wrapper). What it shows depends on where its stream (stderr by default) goes:

* a terminal: a live bar (``tqdm`` when installed, ``pip install ganstack[progress]``, otherwise a
  one-line status written with ``\\r``), shown only once the work has taken ``delay`` seconds;
* anything else (a log file, a pipe, a SLURM output file): nothing, except one plain line every
  ``GANSTACK_PROGRESS_INTERVAL`` seconds (default 60) for work that runs that long, as StyleGAN2-ADA's
  ProgressMonitor does.

``GANSTACK_PROGRESS=1`` forces the live display at once (no delay), ``=0`` turns progress off
entirely. Progress never changes results: it only counts.
"""
from __future__ import annotations

import io
import os
import sys
import time
from typing import Iterable, Optional, TextIO

__all__ = ['progress', 'Progress', 'GridProgress', 'live_enabled', 'format_duration']


def _forced() -> bool:
    return os.environ.get('GANSTACK_PROGRESS', '').strip().lower() in ('1', 'true', 'yes', 'on')


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return 0


def live_enabled(stream: TextIO) -> bool:
    """Whether a live display goes to ``stream``: ``GANSTACK_PROGRESS`` (1/0) or whether it is a terminal."""
    forced = os.environ.get('GANSTACK_PROGRESS', '').strip().lower()
    if forced in ('1', 'true', 'yes', 'on'):
        return True
    if forced in ('0', 'false', 'no', 'off'):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _log_interval() -> Optional[float]:
    if os.environ.get('GANSTACK_PROGRESS', '').strip().lower() in ('0', 'false', 'no', 'off'):
        return None
    try:
        return max(float(os.environ.get('GANSTACK_PROGRESS_INTERVAL', 60)), 0.0)
    except ValueError:
        return 60.0


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 3600:
        return f'{s // 60}m {s % 60:02d}s'
    return f'{s // 3600}h {s % 3600 // 60:02d}m'


def _format_count(n: float, unit: str) -> str:
    if unit == 'B':
        for scale, suffix in ((1 << 30, 'GiB'), (1 << 20, 'MiB'), (1 << 10, 'KiB')):
            if n >= scale:
                return f'{n / scale:.1f} {suffix}'
        return f'{int(n)} B'
    return f'{int(n)}'


class Progress:
    """A counter towards ``total`` (None = unknown) with a live or logged display; see the module doc."""

    def __init__(self, total: Optional[float] = None, desc: str = '', unit: str = 'it', stream: Optional[TextIO] = None,
                 delay: float = 1.0, iterable: Optional[Iterable] = None):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.delay = 0.0 if _forced() else delay
        self.n = 0
        self.iterable = iterable
        self.start = time.monotonic()
        self._closed = False
        self._bar = None
        self._status_shown = False
        self._last_draw = 0.0
        self.live = live_enabled(self.stream)
        self.log_interval = None if self.live else _log_interval()
        self._last_log = self.start
        self.lines_logged = 0
        self.postfix = ''
        if self.live:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                sized = _columns(self.stream) > 0  # a forced display into a file or a size-less pty gets 80
                self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, delay=self.delay, leave=False,
                                 dynamic_ncols=sized, ncols=None if sized else 80, unit_scale=(unit == 'B'), unit_divisor=1024 if unit == 'B' else 1000,
                                 disable=False)

    # --- counting -------------------------------------------------------------------------------
    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if self.live:
            if now - self.start >= self.delay and now - self._last_draw >= 0.2:
                self._draw_status(now)
        elif self.log_interval is not None and now - self._last_log >= self.log_interval and (
                self.total is None or self.n < self.total):
            self._last_log = now
            self.lines_logged += 1
            self.stream.write(self._text(now) + '\n')
            self.stream.flush()

    def set_postfix(self, text: str) -> None:
        """Extra words after the count (``2 running``), on the live display."""
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)
        elif self.live and self._status_shown:
            self._draw_status(time.monotonic())

    def _text(self, now: float) -> str:
        elapsed = now - self.start
        done = _format_count(self.n, self.unit)
        unit = '' if self.unit == 'B' else f' {self.unit}'
        if not self.total:
            return f'{self.desc}: {done}{unit}, {format_duration(elapsed)} elapsed'
        frac = min(self.n / self.total, 1.0)
        left = f', {format_duration(elapsed / frac - elapsed)} left' if frac > 0 else ''
        return (f'{self.desc}: {done}/{_format_count(self.total, self.unit)}{unit} ({100 * frac:.0f}%), '
                f'{format_duration(elapsed)} elapsed{left}')

    def _draw_status(self, now: float) -> None:
        self._last_draw = now
        self._status_shown = True
        text = self._text(now) + (f', {self.postfix}' if self.postfix else '')
        self.stream.write('\r' + text[:200] + '\033[K')
        self.stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._status_shown:
            self.stream.write('\r\033[K')
            self.stream.flush()

    # --- protocols ------------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()


def progress(iterable: Optional[Iterable] = None, total: Optional[float] = None, desc: str = '', unit: str = 'it',
             stream: Optional[TextIO] = None, delay: float = 1.0) -> Progress:
    """``for x in progress(items, desc=...)`` or ``with progress(total=n, desc=...) as p: p.update(k)``."""
    if total is None and iterable is not None and hasattr(iterable, '__len__'):
        total = len(iterable)
    return Progress(total=total, desc=desc, unit=unit, stream=stream, delay=delay, iterable=iterable)


class GridProgress:
    """Progress of a grid of jobs (``ganstack ablate``'s cells): done, running, left and the time so far.

    A live bar on a terminal (:class:`Progress`), and one plain line through ``log`` per finished job, which is
    all that reaches a log file. ``initial`` jobs were finished before (a rerun skips them).
    """

    def __init__(self, total: int, initial: int = 0, desc: str = 'grid', unit: str = 'cell', log=print,
                 stream: Optional[TextIO] = None):
        self.total, self.done, self.failed, self.running = total, initial, 0, 0
        self.elsewhere = 0  # jobs another process is running (ganstack ablate: a cell locked by another ablation)
        self.unit = unit
        self.log = log
        self.start = time.monotonic()
        self.bar = Progress(total=total, desc=desc, unit=unit, stream=stream, delay=0.0)
        self.bar.log_interval = None  # the per-job lines below are the log's
        if initial:
            self.bar.update(initial)
        self._postfix()

    @property
    def left(self) -> int:
        return self.total - self.done - self.failed - self.running - self.elsewhere

    def _postfix(self) -> None:
        self.bar.set_postfix(f'{self.running} running, {self.left} left'
                             + (f', {self.failed} failed' if self.failed else ''))

    def started(self, n: int = 1) -> None:
        self.running += n
        self._postfix()

    def finished(self, what: str, error: Optional[str] = None, elsewhere: bool = False) -> str:
        """One job ended (``elsewhere``: was left to another process); logs and returns its line."""
        self.running = max(self.running - 1, 0)
        if elsewhere:
            self.elsewhere += 1
        elif error is None:
            self.done += 1
        else:
            self.failed += 1
        self.bar.update(1)
        self._postfix()
        word = "left to another process" if elsewhere else "done" if error is None else "FAILED"
        line = (f'{word}: {what}' + (f' ({error})' if error else '')
                + f'  [{self.done}/{self.total} {self.unit}s done, ' + (f'{self.failed} failed, ' if self.failed else '')
                + (f'{self.elsewhere} elsewhere, ' if self.elsewhere else '')
                + f'{self.running} running, {self.left} left; {format_duration(time.monotonic() - self.start)} '
                  f'so far]')
        self.log(line)
        return line

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
