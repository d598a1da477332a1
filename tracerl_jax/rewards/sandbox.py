"""Sandboxed execution of untrusted Python programs against tests (§7.3, Q-R1, Q-R3).

`LocalSandbox` is the local `executor.Executor`: it runs `executor.ExecJob`s in isolated
processes on this machine, several at a time.

Isolation of `LocalSandbox` (what each mechanism needs; `LocalSandbox.probe()` reports what the
platform actually granted):

* wall-clock timeout, measured from launch; the whole process group is then killed;
* RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE (file size), RLIMIT_NOFILE, RLIMIT_CORE = 0;
* process limit: RLIMIT_NPROC is not enforced for root, so when the host runs as root each worker
  slot runs its programs as its own unused uid (gid likewise, no supplementary groups). The
  limit then counts only that slot's processes. Without root the limit counts the user's own
  processes (set to the current count plus the allowance);
* cleanup: the program runs as init of a new PID namespace (root: directly; otherwise inside a
  user namespace). When it exits or is killed, the kernel kills and reaps every process left in
  the namespace, including children that left the process group with setsid(), and host
  processes are not addressable from inside. Where no PID namespace can be made, all processes
  of the slot's uid are frozen and killed after every job instead; the process group is killed
  in every case;
* no network: a new network namespace (root: directly; otherwise inside a user namespace) whose
  only interface, loopback, is down;
* filesystem: a private mount namespace where every mount is read-only except the job's fresh
  work directory, which is also its cwd, HOME and TMPDIR, with a /proc of the program's own PID
  namespace (root only). Running as an unused uid alone would leave world-writable places such
  as /tmp open;
  Directories the unprivileged uid cannot traverse on the way to the interpreter (a 0700
  /root holding pyenv) are covered by a tmpfs exposing only that path, which also hides the
  rest of their contents;
* new IPC and UTS namespaces (root), environment scrubbed, `python -I -S` (no PYTHON*
  variables, user site or site-packages unless `SandboxConfig.site_packages`),
  PR_SET_NO_NEW_PRIVS, no core dumps;
* output capped: stdout over `max_output_bytes` kills the program and fails the job.

Limits that remain: the program can read whatever an unprivileged user may read of the host's
filesystem; without root there is no read-only filesystem and no dedicated uid (only network and
PID namespaces, if user namespaces are enabled); in `function` jobs the program shares its process
with the test harness, so a program written to subvert the harness itself (rather than the host)
is out of scope. As init of its PID namespace the program ignores signals it has no handler for
when they come from inside the namespace, so RLIMIT_CPU acts at its hard limit (one second after
the soft one).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import marshal
import math
import os
import pathlib
import queue
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from tracerl_jax.rewards.executor import ExecJob, ExecResult, outputs_match

__all__ = ["LocalSandbox", "SandboxConfig"]

_BOOT_SOURCE = (pathlib.Path(__file__).with_name("_sandbox_boot.py")).read_text()
_SANDBOX_ERROR_EXIT = 121
_REPORT_CHARS = 4096  # How much stdout/stderr a result keeps for debugging.
_CTL_CAP = 8 << 20
_EXIT_GRACE_S = 0.2

def _pool_worker(tasks: queue.SimpleQueue) -> None:
    while True:
        item = tasks.get()
        if item is None:
            return
        future, fn, args = item
        del item
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # Delivered to the caller through the future.
                future.set_exception(e)
        # The job's callable holds the sandbox; an idle worker must not keep it alive.
        del future, fn, args


class _FixedPool:
    """A fixed set of worker threads, all started at construction.

    `concurrent.futures.ThreadPoolExecutor` starts its threads one per submission until it has
    `max_workers`, so a caller's thread count grew over the first concurrent calls; a caller
    that checks its own state between calls (threads included) saw the sandbox change it.
    Here the count changes only at construction and `shutdown`.
    """

    def __init__(self, num_threads: int, name: str):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        # Daemon threads: the interpreter joins non-daemon threads before atexit handlers run,
        # so an unclosed sandbox would otherwise hang the exit with its idle workers.
        self._threads = [threading.Thread(target=_pool_worker, args=(self._tasks,),
                                          name=f"{name}_{i}", daemon=True)
                         for i in range(num_threads)]
        for t in self._threads:
            t.start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        with self._lock:
            if self._stopped:
                raise RuntimeError("the worker pool is shut down")
            self._tasks.put((future, fn, args))
        return future

    def shutdown(self, wait: bool = True) -> None:
        """Lets queued work finish, then stops every thread (joined when `wait`)."""
        with self._lock:
            if not self._stopped:
                self._stopped = True
                for _ in self._threads:
                    self._tasks.put(None)
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Resource limits and isolation switches of `LocalSandbox`.

    Attributes:
      memory_bytes: RLIMIT_AS of each program (address space, so a little above real usage).
      max_processes: processes plus threads a program may own (RLIMIT_NPROC).
      max_file_bytes: largest file a program may write (RLIMIT_FSIZE).
      max_open_files: RLIMIT_NOFILE.
      max_output_bytes: stdout beyond this kills the program and fails the job.
      cpu_slack_s: RLIMIT_CPU is ceil(timeout) plus this.
      isolate_network: run in a fresh network namespace.
      readonly_filesystem: make everything but the work directory read-only (needs root).
      drop_privileges: when the host runs as root, run programs as a dedicated unused uid.
        Leaving this on is strongly advised: as root, RLIMIT_NPROC is ignored and the program
        could undo the other protections.
      require_isolation: fail every job (status "sandbox_error") instead of running it with
        weaker isolation when a mechanism above is unavailable.
      uid_base: first uid of the range from which dedicated uids are taken (root only); each
        worker slot locks one uid so concurrent sandboxes, even in other processes, never share.
      site_packages: let programs import installed third-party packages.
      python: interpreter that runs the programs.
      workdir_root: where the per-job directories are created (default: the system temp dir).
    """

    memory_bytes: int = 1 << 30
    max_processes: int = 32
    max_file_bytes: int = 16 << 20
    max_open_files: int = 64
    max_output_bytes: int = 1 << 20
    cpu_slack_s: int = 1
    isolate_network: bool = True
    readonly_filesystem: bool = True
    drop_privileges: bool = True
    require_isolation: bool = False
    uid_base: int = 1_900_000_000
    site_packages: bool = False
    python: str = sys.executable
    workdir_root: str | None = None

    def __post_init__(self):
        for name in ("memory_bytes", "max_processes", "max_file_bytes", "max_open_files",
                     "max_output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.cpu_slack_s, int) or self.cpu_slack_s < 0:
            raise ValueError(f"cpu_slack_s must be a non-negative int, got {self.cpu_slack_s!r}")
        if not isinstance(self.uid_base, int) or not 1000 <= self.uid_base < 2**32 - 2**16:
            raise ValueError(f"uid_base must be an int in [1000, 2**32 - 65536), got "
                             f"{self.uid_base!r}")


def _proc_uid_pids(uid: int) -> list[int]:
    """Pids of live (non-zombie) processes whose real or effective uid is `uid`."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = f.read()
        except OSError:
            continue
        state = uids = None
        for line in status.split(b"\n"):
            if line.startswith(b"State:"):
                state = line.split()[1:2]
            elif line.startswith(b"Uid:"):
                uids = line.split()[1:3]
                break
        if uids and str(uid).encode() in uids and state != [b"Z"]:
            pids.append(int(name))
    return pids


def _kill_uid_processes(uid: int) -> int:
    """Kills every process of `uid`; returns how many were found.

    Freezing before killing stops a fork bomb from replacing its members faster than they die.
    """
    stopped: set[int] = set()
    for _ in range(100):
        fresh = [p for p in _proc_uid_pids(uid) if p not in stopped]
        if not fresh:
            break
        for pid in fresh:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
            stopped.add(pid)
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(stopped)


def _count_user_processes(uid: int) -> int:
    return len(_proc_uid_pids(uid))


class _UidLease:
    """A uid from `[base, base + span)` reserved by an flock held for the lease's lifetime."""

    _DIR = os.path.join(tempfile.gettempdir(), "tracerl_sandbox_uids")

    def __init__(self, base: int, span: int = 65536):
        os.makedirs(self._DIR, mode=0o700, exist_ok=True)
        st = os.lstat(self._DIR)
        # The directory sits in a world-writable place: someone else's directory (or a
        # symlink) there could hand out uids already in use or redirect root's writes.
        if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            raise RuntimeError(f"{self._DIR} must be a directory owned by uid {os.geteuid()} "
                               f"and writable by it alone")
        self._fd = None
        for uid in range(base, base + span):
            fd = os.open(os.path.join(self._DIR, f"{uid}.lock"),
                         os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid, self._fd = uid, fd
            # A previous holder that died without cleaning up may have left processes behind.
            _kill_uid_processes(uid)
            return
        raise RuntimeError(f"no free sandbox uid in [{base}, {base + span})")

    def release(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclasses.dataclass
class _Proc:
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    messages: list[dict]
    timed_out: bool
    overflow: bool
    wall_s: float


class LocalSandbox:
    """Runs `ExecJob`s in isolated processes on this machine, several at a time.

    Use it as a context manager, or call `close()`, to release its worker slots.
    """

    def __init__(self, config: SandboxConfig | None = None, max_workers: int | None = None):
        """Creates the worker pool and starts all of its `max_workers` threads.

        Args:
          config: limits and isolation switches; defaults to `SandboxConfig()`.
          max_workers: programs run at the same time; defaults to the CPU count.

        Returns:
          None.
        """
        self.config = config or SandboxConfig()
        if not isinstance(self.config, SandboxConfig):
            raise ValueError(f"config must be a SandboxConfig, got {type(config).__name__}")
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if not isinstance(max_workers, int) or max_workers <= 0:
            raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
        self.max_workers = max_workers
        self._is_root = os.geteuid() == 0
        self._leases: list[_UidLease] = []
        self._slots: queue.Queue = queue.Queue()
        if self._is_root and self.config.drop_privileges:
            for _ in range(max_workers):
                lease = _UidLease(self.config.uid_base)
                self._leases.append(lease)
                self._slots.put(lease.uid)
        else:
            for _ in range(max_workers):
                self._slots.put(None)
        self._base = tempfile.mkdtemp(prefix="tracerl_sandbox_", dir=self.config.workdir_root)
        # Traversable but not listable, so one job cannot find another's directory.
        os.chmod(self._base, 0o711)
        # Also removed when the sandbox is garbage-collected without close().
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._base, True)
        # Every worker thread starts here, so calls never change the caller's thread count.
        self._pool = _FixedPool(max_workers, "tracerl-sandbox")
        # Also stopped when the sandbox is garbage-collected without close().
        weakref.finalize(self, self._pool.shutdown, False)
        self._closed = False
        self._lock = threading.Lock()
        python = os.path.realpath(self.config.python)
        reveal = {python, os.path.dirname(os.path.dirname(python))}
        if os.path.realpath(sys.executable) == python:
            reveal |= {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
        self._reveal = sorted(reveal)

    @property
    def uids(self) -> tuple[int, ...]:
        """The dedicated uids of the worker slots; empty unless the host runs as root."""
        return tuple(lease.uid for lease in self._leases)

    def __enter__(self) -> LocalSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Waits for running programs, then stops the worker threads and frees the worker slots
        and the temp directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=True)
        for lease in self._leases:
            _kill_uid_processes(lease.uid)
            lease.release()
        self._cleanup()

    def run(self, jobs: Sequence[ExecJob]) -> list[ExecResult]:
        """Runs the jobs, up to `max_workers` processes at a time.

        Args:
          jobs: the jobs; stdio jobs fan out into one process per case.

        Returns:
          One `ExecResult` per job, in order.
        """
        if self._closed:
            raise RuntimeError("LocalSandbox is closed")
        jobs = list(jobs)
        for i, job in enumerate(jobs):
            if not isinstance(job, ExecJob):
                raise ValueError(f"jobs[{i}] must be an ExecJob, got {type(job).__name__}")
        futures = []
        for job in jobs:
            if job.kind == "function":
                futures.append([self._pool.submit(self._run_unit, job, None)])
            else:
                futures.append([self._pool.submit(self._run_unit, job, c)
                                for c in range(len(job.inputs))])
        results = []
        for job, fs in zip(jobs, futures):
            procs = [f.result() for f in fs]
            if job.kind == "function":
                results.append(self._function_result(job, procs[0]))
            else:
                results.append(self._stdio_result(job, procs))
        return results

    def probe(self) -> dict[str, Any]:
        """Runs a trivial program and reports the isolation the platform granted.

        Returns:
          A dict with keys uid (the uid the program ran as), netns, mountns, pidns,
          readonly_fs, no_new_privs (bools), rlimits (name -> [soft, hard]), revealed
          (directories masked by a tmpfs so the interpreter stays reachable), errors
          (strings), plus dedicated_uid (whether each slot has its own uid) and is_root (the
          host's privilege).
        """
        res = self.run([ExecJob("pass", tests=("assert True",), timeout_s=10.0)])[0]
        report = dict(res.isolation)
        report["dedicated_uid"] = bool(self._leases)
        report["is_root"] = self._is_root
        report.pop("t", None)
        return report

    # -- one process ---------------------------------------------------------------------------

    def _run_unit(self, job: ExecJob, case: int | None) -> _Proc:
        uid = self._slots.get()
        try:
            return self._launch(job, case, uid)
        finally:
            self._slots.put(uid)

    def _boot_config(self, job: ExecJob, workdir: str, uid: int | None, ctl_fd: int) -> dict:
        cfg = self.config
        cpu = math.ceil(job.timeout_s) + cfg.cpu_slack_s
        rlimits: dict[str, Any] = {
            "AS": cfg.memory_bytes,
            "CPU": [cpu, cpu + 1],
            "FSIZE": cfg.max_file_bytes,
            "NOFILE": cfg.max_open_files,
            "CORE": 0,
        }
        if uid is not None:
            rlimits["NPROC"] = cfg.max_processes
        elif not self._is_root:
            # Without a dedicated uid the limit counts all of this user's processes.
            rlimits["NPROC"] = _count_user_processes(os.getuid()) + cfg.max_processes
        strict = cfg.require_isolation
        return {
            "mode": job.kind,
            "workdir": workdir,
            "ctl_fd": ctl_fd,
            "uid": uid,
            "gid": uid,
            "netns": cfg.isolate_network,
            "readonly_fs": cfg.readonly_filesystem and self._is_root,
            "reveal": self._reveal,
            "rlimits": rlimits,
            "require_netns": strict and cfg.isolate_network,
            "require_readonly_fs": strict and cfg.readonly_filesystem,
            "require_unprivileged": (strict or uid is not None),
        }

    def _launch(self, job: ExecJob, case: int | None, uid: int | None) -> _Proc:
        workdir = tempfile.mkdtemp(dir=self._base)
        stdin_file = None
        try:
            if uid is not None:
                os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o700)
            with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8",
                      errors="replace") as f:
                f.write(job.program)
            if job.kind == "function":
                with open(os.path.join(workdir, "tests.marshal"), "wb") as f:
                    marshal.dump(list(job.tests), f)
                stdin = subprocess.DEVNULL
            else:
                stdin_file = tempfile.TemporaryFile(dir=self._base)
                stdin_file.write(job.inputs[case].encode("utf-8", errors="replace"))
                stdin_file.seek(0)
                stdin = stdin_file
            ctl_r, ctl_w = os.pipe()
            argv = [self.config.python, "-I"]
            if not self.config.site_packages:
                argv.append("-S")
            argv += ["-c", _BOOT_SOURCE,
                     marshal.dumps(self._boot_config(job, workdir, uid, ctl_w)).hex()]
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
                   "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
            start = time.monotonic()
            try:
                proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, cwd=workdir, env=env,
                                        start_new_session=True, close_fds=True,
                                        pass_fds=(ctl_w,))
            except BaseException:
                os.close(ctl_r)
                raise
            finally:
                os.close(ctl_w)
            result = None
            try:
                result = self._collect(proc, ctl_r, start, start + job.timeout_s)
                return result
            finally:
                pidns = bool(result and result.messages and result.messages[0].get("pidns"))
                if pidns and proc.poll() is None:
                    # The launcher kills the namespace's init and reaps it; the kernel then
                    # kills and reaps everything else in the namespace.
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        pass
                # Once the launcher has reaped the namespace's init, the kernel has already
                # emptied the namespace; scanning for the uid's processes is only needed
                # when no PID namespace could be made or the launcher did not finish.
                if uid is not None and not (pidns and proc.poll() is not None):
                    _kill_uid_processes(uid)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                os.close(ctl_r)
                proc.stdout.close()
                proc.stderr.close()
        finally:
            if stdin_file is not None:
                stdin_file.close()
            shutil.rmtree(workdir, ignore_errors=True)

    def _collect(self, proc: subprocess.Popen, ctl_r: int, start: float,
                 deadline: float) -> _Proc:
        out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        bufs = {out_fd: bytearray(), err_fd: bytearray(), ctl_r: bytearray()}
        caps = {out_fd: self.config.max_output_bytes, err_fd: 64 << 10, ctl_r: _CTL_CAP}
        timed_out = overflow = False
        exited_at = None
        with selectors.DefaultSelector() as sel:
            for fd in bufs:
                os.set_blocking(fd, False)
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map():
                now = time.monotonic()
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at > _EXIT_GRACE_S:
                    break  # A background child still holds the pipes open.
                if now >= deadline:
                    timed_out = proc.poll() is None
                    break
                wait = min(deadline - now, 0.05 if exited_at is not None else 0.5)
                for key, _ in sel.select(wait):
                    try:
                        chunk = os.read(key.fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    buf, cap = bufs[key.fd], caps[key.fd]
                    if len(buf) + len(chunk) > cap:
                        buf += chunk[:cap - len(buf)]
                        # stderr is only kept for debugging; stdout and the control channel
                        # are verdicts, so going past their cap ends the program.
                        if key.fd != err_fd:
                            overflow = True
                    else:
                        buf += chunk
                if overflow:
                    break
        messages = []
        for line in bytes(bufs[ctl_r]).split(b"\n"):
            if line.strip():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    messages.append(msg)
        if not timed_out and not overflow:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()) + _EXIT_GRACE_S)
            except subprocess.TimeoutExpired:
                timed_out = True
        return _Proc(exit_code=proc.poll(), stdout=bytes(bufs[out_fd]),
                     stderr=bytes(bufs[err_fd]), messages=messages, timed_out=timed_out,
                     overflow=overflow, wall_s=time.monotonic() - start)

    # -- verdicts ------------------------------------------------------------------------------

    @staticmethod
    def _isolation_of(p: _Proc) -> tuple[dict, str | None]:
        if p.messages and p.messages[0].get("t") == "isolation":
            return p.messages[0], None
        if p.messages and p.messages[0].get("t") == "sandbox_error":
            return p.messages[0], "sandbox setup failed: " + "; ".join(
                p.messages[0].get("errors", []))
        tail = p.stderr.decode("utf-8", "replace")[-500:]
        return {}, f"sandbox did not start (exit code {p.exit_code}): {tail}"

    def _function_result(self, job: ExecJob, p: _Proc) -> ExecResult:
        n = len(job.tests)
        statuses = ["not_run"] * n
        details: list[str | None] = [None] * n
        isolation, error = self._isolation_of(p)
        completed = False
        if error is not None:
            statuses = ["sandbox_error"] * n
            details = [error] * n
        else:
            for msg in p.messages[1:]:
                kind = msg.get("t")
                i = msg.get("i")
                if kind == "test" and isinstance(i, int) and 0 <= i < n:
                    statuses[i] = "passed" if msg.get("ok") is True else "failed"
                    details[i] = msg.get("err")
                elif kind == "program_error":
                    error = "program raised " + str(msg.get("err"))
                    statuses = ["program_error"] * n
                    details = [error] * n
                elif kind == "done":
                    completed = True
            if p.overflow:
                error = "output limit exceeded"
            elif p.timed_out:
                error = f"timeout after {job.timeout_s:g} s"
            elif not completed and error is None:
                error = f"process died (exit code {p.exit_code})"
            if error is not None and (p.overflow or p.timed_out or not completed):
                fill = ("output_limit" if p.overflow else "timeout" if p.timed_out
                        else "crashed")
                statuses = [fill if s == "not_run" else s for s in statuses]
        ok = completed and not p.timed_out and not p.overflow
        passed = tuple(ok and s == "passed" for s in statuses)
        return ExecResult(
            passed=passed, statuses=tuple(statuses), details=tuple(details), error=error,
            timed_out=p.timed_out,
            outputs=(p.stdout[:_REPORT_CHARS].decode("utf-8", "replace"),),
            isolation=isolation, wall_s=p.wall_s)

    def _stdio_result(self, job: ExecJob, procs: list[_Proc]) -> ExecResult:
        passed, statuses, details, outputs = [], [], [], []
        error = None
        isolation: dict = {}
        for expected, p in zip(job.expected_outputs, procs):
            iso, setup_error = self._isolation_of(p)
            isolation = isolation or iso
            stdout = p.stdout.decode("utf-8", "replace")
            outputs.append(stdout[:_REPORT_CHARS])
            if setup_error is not None:
                status, detail = "sandbox_error", setup_error
            elif p.overflow:
                status, detail = "output_limit", "output limit exceeded"
            elif p.timed_out:
                status, detail = "timeout", f"timeout after {job.timeout_s:g} s"
            elif p.exit_code != 0:
                tail = p.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
                status, detail = "runtime_error", f"exit code {p.exit_code}: {tail[0][:500]}"
            elif not outputs_match(stdout, expected):
                status, detail = "wrong_answer", None
            else:
                status, detail = "passed", None
            passed.append(status == "passed")
            statuses.append(status)
            details.append(detail)
            if error is None and status in ("sandbox_error", "timeout", "output_limit"):
                error = detail
        return ExecResult(
            passed=tuple(passed), statuses=tuple(statuses), details=tuple(details), error=error,
            timed_out=any(p.timed_out for p in procs), outputs=tuple(outputs),
            isolation=isolation, wall_s=sum(p.wall_s for p in procs))
