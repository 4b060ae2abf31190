"""Run medseg as a child process without blocking Slicer, and stop it with everything it started.

:class:`ChildProcess` starts the command in a process group of its own, reads its stdout and stderr
on two background threads, and hands the lines to the GUI thread through a queue: the widget calls
:meth:`ChildProcess.poll` from a ``QTimer``, scripts and tests call :meth:`ChildProcess.wait`. A
crash of PyTorch in the child cannot take Slicer down, and :meth:`ChildProcess.cancel` stops the
child and its descendants (``SIGTERM`` to the group, ``SIGKILL`` after a grace period; ``taskkill /T``
on Windows).

This module imports neither Slicer nor Qt.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from MedSegLib.bridge import bridge

STDOUT = "stdout"
STDERR = "stderr"

Line = tuple[str, str]
"""``(stream, text)``: which stream a line came from (``"stdout"`` or ``"stderr"``), without its newline."""


class ChildProcess:
    """A command running in a process group of its own, with its output streamed line by line.

    Args:
        args: the argument list, program first (e.g. ``PredictParameters(...).command()``).
        env: the child's environment (default: this process's). ``PYTHONUNBUFFERED=1`` is added so
            progress lines arrive as they are printed.
        cwd: the child's working folder.
        kill_grace_seconds: how long :meth:`cancel` waits after ``SIGTERM`` before ``SIGKILL``.
        keep_stderr_lines: how many of the last stderr lines :attr:`stderr_text` keeps.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        kill_grace_seconds: float = 5.0,
        keep_stderr_lines: int = 200,
    ) -> None:
        self.args = [str(a) for a in args]
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.cwd = cwd
        self.kill_grace_seconds = kill_grace_seconds
        self.cancelled = False
        self._stderr: deque[str] = deque(maxlen=keep_stderr_lines)
        self._lines: queue.Queue[Line] = queue.Queue()
        self._popen: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self._kill_deadline: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the child.

        Raises:
            OSError: the program cannot be started (missing, not executable).
            RuntimeError: it was already started.
        """
        if self._popen is not None:
            raise RuntimeError("the process was already started")
        self._popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=self.env,
            cwd=self.cwd,
            **bridge.new_process_group_kwargs(),
        )
        for stream, pipe in ((STDOUT, self._popen.stdout), (STDERR, self._popen.stderr)):
            thread = threading.Thread(target=self._read, args=(stream, pipe), daemon=True, name=f"medseg-{stream}")
            thread.start()
            self._readers.append(thread)

    def _read(self, stream: str, pipe: IO[str] | None) -> None:
        if pipe is None:
            return
        with pipe:
            for raw in pipe:
                self._lines.put((stream, raw.rstrip("\r\n")))

    @property
    def pid(self) -> int | None:
        """The child's process id (also its process group id), once started."""
        return None if self._popen is None else self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has exited (negative: killed by that signal on POSIX)."""
        return None if self._popen is None else self._popen.poll()

    def is_finished(self) -> bool:
        """Whether the child has exited and all of its output has been read (it may still be queued)."""
        if self._popen is None or self._popen.poll() is None:
            return False
        return not any(t.is_alive() for t in self._readers)

    # -- output ------------------------------------------------------------------------------------

    def poll(self) -> list[Line]:
        """The lines that arrived since the last call, without blocking; also escalates a pending
        cancel to a hard kill once its grace period is over. Call it from a timer."""
        if self._kill_deadline is not None and time.monotonic() >= self._kill_deadline:
            self._kill_deadline = None
            if self.returncode is None and self.pid is not None:
                bridge.kill_process_tree(self.pid, force=True)
        lines = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line[0] == STDERR:
                self._stderr.append(line[1])
            lines.append(line)
        return lines

    @property
    def stderr_text(self) -> str:
        """The last stderr lines read so far (by :meth:`poll`), joined with newlines."""
        return "\n".join(self._stderr)

    def wait(self, *, on_line: Callable[[str, str], None] | None = None, timeout: float | None = None) -> int:
        """Block until the child has exited and its output is read; return its exit code.

        Args:
            on_line: called with ``(stream, text)`` for every line, in order per stream.
            timeout: seconds; when exceeded the child is killed and ``TimeoutError`` raised.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for stream, text in self.poll():
                if on_line is not None:
                    on_line(stream, text)
            if self.is_finished() and self._lines.empty():
                break
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                self._popen.wait(timeout=30)  # type: ignore[union-attr]
                raise TimeoutError(f"{self.args[0]} did not finish within {timeout} s")
            time.sleep(0.05)
        for stream, text in self.poll():
            if on_line is not None:
                on_line(stream, text)
        return self.returncode  # type: ignore[return-value]

    # -- cancel ------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the child and its descendants to stop (``SIGTERM``), and make :meth:`poll` kill them
        after ``kill_grace_seconds`` if they have not. Safe to call more than once or after exit."""
        self.cancelled = True
        if self.pid is None or self.returncode is not None:
            return
        bridge.kill_process_tree(self.pid)
        if self._kill_deadline is None:
            self._kill_deadline = time.monotonic() + self.kill_grace_seconds

    def kill(self) -> None:
        """Stop the child and its descendants at once (``SIGKILL``), e.g. when Slicer closes."""
        self.cancelled = True
        if self.pid is not None and self.returncode is None:
            bridge.kill_process_tree(self.pid, force=True)
