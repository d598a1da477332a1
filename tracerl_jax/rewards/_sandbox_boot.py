"""Sandbox bootstrap: isolates the current process, then runs one untrusted program.

This file is not imported by the library. `sandbox.py` reads its text and runs it with
``python -I -S -c <text> <config>`` (the config marshalled, as hex) in a fresh session, so it
must depend on the standard library only and be correct in a process where nothing else has run
yet. The sandbox tests import it only to check its JSON encoder.

Order of operations (each step only where the platform allows it, see `_isolate`):

1. new mount, network, IPC and UTS namespaces (root) or a user + network namespace (non-root);
2. mount propagation made private, so nothing below leaks to the host;
3. directories on the interpreter's path that the unprivileged uid cannot traverse (for example
   a 0700 ``/root`` holding a pyenv interpreter) are covered by an empty tmpfs that exposes only
   the needed child, which also hides their other contents from the program;
4. the work directory is bind-mounted onto itself, then every other mount is remounted
   read-only, so the work directory is the only writable place;
5. resource limits, then groups/gid/uid dropped to a dedicated unprivileged uid, then
   ``PR_SET_NO_NEW_PRIVS`` and a parent-death signal;
6. the program runs in this same interpreter (a second interpreter start would double the cost
   of every test), and results go to a private control pipe, never to stdout.
"""

import builtins
import ctypes
import marshal
import os
import resource
import signal
import stat
import sys

# json and traceback are not imported: together they cost about as much as starting the
# interpreter. The host sends trusted data with marshal (builtin); messages back are JSON, since
# the host must parse them safely (the program shares this process and can forge them).

_CLONE_NEWNS = 0x00020000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000

_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_NOATIME = 1024
_MS_NODIRATIME = 2048
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MS_RELATIME = 1 << 21

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38

_SANDBOX_ERROR_EXIT = 121

_RLIMITS = {
    "AS": resource.RLIMIT_AS,
    "CPU": resource.RLIMIT_CPU,
    "FSIZE": resource.RLIMIT_FSIZE,
    "NPROC": resource.RLIMIT_NPROC,
    "NOFILE": resource.RLIMIT_NOFILE,
    "CORE": resource.RLIMIT_CORE,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _json_str(text):
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[ch])
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return '"' + "".join(out) + '"'


def _json(obj):
    """Encodes the message types used here (None, bool, int, str, list, dict) as JSON."""
    if obj is None:
        return "null"
    if obj is True or obj is False:
        return "true" if obj else "false"
    if isinstance(obj, int):
        return str(int(obj))
    if isinstance(obj, str):
        return _json_str(obj)
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(_json(v) for v in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ",".join(_json_str(str(k)) + ":" + _json(v) for k, v in obj.items()) + "}"
    return _json_str(repr(obj))


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)),
           f"mount {target}")


def _unescape_mountinfo(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mounts():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            yield _unescape_mountinfo(fields[4]), fields[5].split(",")


def _reveal(paths):
    """Makes `paths` reachable for an unprivileged uid inside the private mount namespace."""
    pairs = []  # (blocked directory, child to expose)
    for path in paths:
        cur = "/"
        for part in [p for p in path.split("/") if p]:
            nxt = os.path.join(cur, part)
            if not os.stat(cur).st_mode & stat.S_IXOTH and (cur, nxt) not in pairs:
                pairs.append((cur, nxt))
            cur = nxt
    # Every O_PATH handle is taken before any tmpfs hides the real entries.
    handles = [(d, child, os.open(child, os.O_PATH)) for d, child in pairs]
    covered = set()
    for d, child, fd in sorted(handles, key=lambda h: h[0].count("/")):
        if d not in covered:
            _mount("tmpfs", d, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=64k")
            covered.add(d)
        if not os.path.lexists(child):
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.mkdir(child, 0o755)
            else:
                os.close(os.open(child, os.O_CREAT | os.O_WRONLY, 0o644))
        _mount(f"/proc/self/fd/{fd}", child, None, _MS_BIND | _MS_REC)
        os.close(fd)
    return sorted(covered)


def _readonly_except(workdir):
    """Bind-mounts `workdir` writable, then remounts every other mount read-only."""
    _mount(workdir, workdir, None, _MS_BIND)
    flag_of = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC,
               "noatime": _MS_NOATIME, "nodiratime": _MS_NODIRATIME, "relatime": _MS_RELATIME}
    failed = []
    for mountpoint, opts in list(_mounts()):
        if mountpoint == workdir or "ro" in opts:
            continue
        # A bind remount replaces the per-mount flags, so the existing ones are carried over.
        flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID
        for opt in opts:
            flags |= flag_of.get(opt, 0)
        try:
            _mount(None, mountpoint, None, flags)
        except OSError as e:
            failed.append(f"{mountpoint}: {e.strerror}")
    # The cwd still points at the directory below the new bind mount; re-enter it.
    os.chdir(workdir)
    return failed


def _enter_namespaces(cfg, report):
    """Unshares namespaces; returns True when a new PID namespace awaits its first child."""
    if os.geteuid() != 0:
        # Without CAP_SYS_ADMIN, network and PID namespaces need a user namespace around them.
        want_net = cfg.get("netns", True)
        attempts = [(_CLONE_NEWNET if want_net else 0) | _CLONE_NEWPID | _CLONE_NEWIPC]
        if want_net:
            attempts.append(_CLONE_NEWNET)
        for flags in attempts:
            try:
                _check(_libc.unshare(_CLONE_NEWUSER | flags), "unshare(NEWUSER)")
            except OSError as e:
                report["errors"].append(str(e))
                continue
            report.update(netns=bool(flags & _CLONE_NEWNET), pidns=bool(flags & _CLONE_NEWPID))
            del report["errors"][:]
            return report["pidns"]
        return False
    want_net = cfg.get("netns", True)
    # The mount namespace is needed even without a read-only filesystem: it is what keeps
    # the interpreter reachable for the unprivileged uid (see `_reveal`).
    flags = _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWUTS | _CLONE_NEWPID
    if want_net:
        flags |= _CLONE_NEWNET
    try:
        _check(_libc.unshare(flags), "unshare")
        report.update(netns=bool(want_net), mountns=True, pidns=True)
        return True
    except OSError as e:
        report["errors"].append(str(e))
    for flag, key, wanted in ((_CLONE_NEWNET, "netns", want_net), (_CLONE_NEWNS, "mountns", True)):
        if wanted:
            try:
                _check(_libc.unshare(flag), f"unshare({key})")
                report[key] = True
            except OSError as e:
                report["errors"].append(str(e))
    return False


_child_pid = 0


def _kill_child(signum, frame):
    if _child_pid:
        os.kill(_child_pid, signal.SIGKILL)


def _relay_child(ctl_fd):
    """Waits for the sandboxed child (init of the new PID namespace) and exits like it.

    When that init exits the kernel kills and reaps everything left in its namespace, so no
    orphan or zombie of the program outlives the job. SIGTERM asks this launcher to kill the
    child: only the parent can do so with no risk of hitting a recycled pid, and reaping the
    child here keeps its zombie from lingering under the host's init.
    """
    pid = _child_pid
    os.close(ctl_fd)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(_SANDBOX_ERROR_EXIT)
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def _confine(cfg, report):
    """Filesystem, limits and credentials, in the process that will run the program."""
    workdir = cfg["workdir"]
    is_root = os.geteuid() == 0
    uid = cfg.get("uid")
    if is_root and report["mountns"]:
        try:
            _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
            report["revealed"] = _reveal(cfg.get("reveal", []) + [workdir])
            if report["pidns"]:
                # A /proc of the new PID namespace: host processes are not even listed.
                _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
            if cfg.get("readonly_fs", True):
                failed = _readonly_except(workdir)
                report["readonly_fs"] = not any(f.startswith("/: ") for f in failed)
                if failed:
                    report["errors"].append("remount failed: " + "; ".join(failed))
        except OSError as e:
            report["errors"].append(str(e))

    for name, value in cfg.get("rlimits", {}).items():
        soft, hard = (value, value) if isinstance(value, int) else value
        try:
            resource.setrlimit(_RLIMITS[name], (soft, hard))
            report["rlimits"][name] = [soft, hard]
        except (OSError, ValueError) as e:
            report["errors"].append(f"setrlimit {name}: {e}")

    if is_root and uid is not None:
        gid = cfg.get("gid", uid)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    report["uid"] = os.getuid()
    try:
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        report["no_new_privs"] = True
    except OSError as e:
        report["errors"].append(str(e))
    # Set after the uid change, which clears it; kills the program if the launcher dies.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    missing = []
    if cfg.get("require_netns") and not report["netns"]:
        missing.append("network namespace")
    if cfg.get("require_readonly_fs") and not report["readonly_fs"]:
        missing.append("read-only filesystem")
    if cfg.get("require_unprivileged") and os.geteuid() == 0:
        missing.append("unprivileged uid")
    if missing:
        raise OSError(f"required isolation unavailable: {', '.join(missing)}")


def _describe(exc):
    try:
        text = str(exc)
    except BaseException:  # A user exception's __str__ may itself raise.
        text = "<unprintable>"
    return f"{type(exc).__name__}: {text[:500]}" if text else type(exc).__name__


class _Quitter:
    """`exit` / `quit` as site.py defines them; `-S` skips site, but programs call them."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"Use {self.name}() or Ctrl-D (i.e. EOF) to exit"

    def __call__(self, code=None):
        raise SystemExit(code)


def _install_site_builtins():
    for name in ("exit", "quit"):
        if not hasattr(builtins, name):
            setattr(builtins, name, _Quitter(name))


def _flush_std():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _run_function(program, tests, ctl_fd):
    my_pid = os.getpid()

    def emit(obj):
        if os.getpid() != my_pid:
            return
        data = (_json(obj) + "\n").encode()
        try:
            while data:
                data = data[os.write(ctl_fd, data):]
        except OSError:
            pass

    def leave_if_forked():
        # A fork() inside the program returns here in the child too; only the original
        # process may report, or a fork bomb could emit forged verdicts.
        if os.getpid() != my_pid:
            _flush_std()
            os._exit(0)

    # Not "__main__": completions often end with a demo under a main guard that reads stdin.
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(program, "program.py", "exec"), namespace)
    except BaseException as e:  # SystemExit included: exiting is not passing (Q-R1).
        leave_if_forked()
        emit({"t": "program_error", "err": _describe(e)})
        _flush_std()
        os._exit(0)
    leave_if_forked()
    for i, test in enumerate(tests):
        try:
            exec(compile(test, f"test_{i}", "exec"), namespace)
            ok, err = True, None
        except BaseException as e:  # SystemExit in a test fails it (Q-R1).
            ok, err = False, _describe(e)
        leave_if_forked()
        emit({"t": "test", "i": i, "ok": ok, "err": err})
    emit({"t": "done"})
    _flush_std()
    # Skips atexit handlers the program may have registered.
    os._exit(0)


def _run_stdio(program):
    namespace = {"__name__": "__main__", "__builtins__": builtins, "__file__": "program.py"}
    code = 0
    try:
        exec(compile(program, "program.py", "exec"), namespace)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code & 0xFF
        else:
            try:
                print(e.code, file=sys.stderr)
            except BaseException:
                pass
            code = 1
    except BaseException as e:
        try:
            import traceback

            traceback.print_exc()
        except BaseException:
            try:
                print(_describe(e), file=sys.stderr)
            except BaseException:
                pass
        code = 1
    _flush_std()
    os._exit(code)


def main():
    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
    ctl_fd = cfg["ctl_fd"]
    report = {"t": "isolation", "uid": None, "netns": False, "mountns": False, "pidns": False,
              "readonly_fs": False, "revealed": [], "no_new_privs": False, "rlimits": {},
              "errors": []}
    try:
        os.chdir(cfg["workdir"])
        with open("program.py", encoding="utf-8", errors="replace") as f:
            program = f.read()
        tests = []
        if cfg["mode"] == "function":
            with open("tests.marshal", "rb") as f:
                tests = marshal.load(f)
            os.unlink("tests.marshal")
        if _enter_namespaces(cfg, report):
            global _child_pid
            # Installed before the fork, so a SIGTERM can never find the launcher unprepared.
            signal.signal(signal.SIGTERM, _kill_child)
            _child_pid = os.fork()
            if _child_pid:
                _relay_child(ctl_fd)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        _confine(cfg, report)
    except BaseException as e:
        report["t"] = "sandbox_error"
        report["errors"].append(_describe(e))
        os.write(ctl_fd, (_json(report) + "\n").encode())
        os._exit(_SANDBOX_ERROR_EXIT)
    os.write(ctl_fd, (_json(report) + "\n").encode())
    _install_site_builtins()
    if cfg["mode"] == "function":
        _run_function(program, tests, ctl_fd)
    else:
        os.close(ctl_fd)
        _run_stdio(program)


if __name__ == "__main__":
    main()
