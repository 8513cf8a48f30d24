"""The sandbox's child process: confine itself, add the audit hook, then run the model's code.

Never imported by the parent: nanochat/sandbox_run.py runs this file's text as `python -I -B -c`
(the checkout is outside bwrap's view) with a JSON config as argv[1] and the code on stdin.
"""
import sys, os, json, builtins


def _confine(cfg):
    """The kernel's part, before any model code: uid, no_new_privs, capabilities, Landlock, seccomp."""
    if cfg["setuid"]:
        uid, gid = cfg["setuid"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    if not cfg["harden"]:
        return
    import ctypes, struct
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    libc.syscall.restype = ctypes.c_long

    def check(ret, what):
        if ret < 0:
            err = ctypes.get_errno()
            raise OSError(err, "%s: %s" % (what, os.strerror(err)))
        return ret

    check(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if os.geteuid() == 0:  # still uid 0 (nobody cannot run this interpreter): no capability, now or after exec
        try:
            last = int(open("/proc/sys/kernel/cap_last_cap").read())
        except (OSError, ValueError):
            last = 40
        for cap in range(last + 1):
            check(libc.prctl(24, cap, 0, 0, 0), "prctl(PR_CAPBSET_DROP)")
        libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL; kernels before 4.3 have no ambient set
        header = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0), 8)
        check(libc.capset(header, ctypes.create_string_buffer(24)), "capset")
    if cfg["landlock"]:
        _landlock(ctypes, libc, check, cfg["landlock"], cfg["view"], cfg["dir"])
    if cfg["seccomp"]:
        _seccomp(ctypes, libc, check, cfg["seccomp"])
    for name in [m for m in sys.modules if m in ("ctypes", "_ctypes") or m.startswith("ctypes.")]:
        del sys.modules[name]  # a later `import ctypes` goes through the audit hook again


def _landlock(ctypes, libc, check, abi, view, rw_dir):
    """Read the view, read/write rw_dir, nothing else; by ABI also no TCP and no signals out of the domain."""
    import stat, struct
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    read, write, truncate = (1 << 2) | (1 << 3), 1 << 1, 1 << 14
    file_rights = 1 | write | (1 << 2) | truncate | (1 << 15)  # the rights a rule on a non-directory may hold
    attr = struct.pack("QQQ", fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)[:8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = check(libc.syscall(ctypes.c_long(444), buf, ctypes.c_long(len(attr)), ctypes.c_long(0)),
                    "landlock_create_ruleset")
    rules = [(p, read) for p in view] + [("/dev/null", read | write | truncate), ("/dev/zero", read),
                                         ("/dev/urandom", read), ("/dev/random", read), (rw_dir, fs)]
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    rights &= file_rights
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights & fs, fd), 12)
                check(libc.syscall(ctypes.c_long(445), ctypes.c_long(ruleset), ctypes.c_long(1), rule,
                                   ctypes.c_long(0)), "landlock_add_rule(%s)" % path)
            finally:
                os.close(fd)
        check(libc.syscall(ctypes.c_long(446), ctypes.c_long(ruleset), ctypes.c_long(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _seccomp(ctypes, libc, check, machine):
    """A filter that answers EPERM to the calls a HumanEval solution never needs (threads stay possible)."""
    import struct
    table = {"x86_64": (0xC000003E, 56, dict(socket=41, fork=57, vfork=58, ptrace=101, add_key=248, request_key=249,
                                              keyctl=250, unshare=272, perf_event_open=298, setns=308,
                                              process_vm_readv=310, process_vm_writev=311, bpf=321,
                                              io_uring_setup=425)),
             "aarch64": (0xC00000B7, 220, dict(socket=198, ptrace=117, add_key=217, request_key=218, keyctl=219,
                                                unshare=97, perf_event_open=241, setns=268, process_vm_readv=270,
                                                process_vm_writev=271, bpf=280, io_uring_setup=425))}
    arch, clone, deny = table[machine]
    prog = [(0x20, 0, 0, 4), (0x15, 0, "deny", arch), (0x20, 0, 0, 0)]  # A = arch (foreign: deny); A = nr
    if machine == "x86_64":
        prog.append((0x35, "deny", 0, 0x40000000))                  # the x32 ABI
    prog += [(0x15, "deny", 0, nr) for nr in deny.values()]
    prog += [(0x15, "nosys", 0, 435),                              # clone3: glibc falls back to clone on ENOSYS
             (0x15, 0, "allow", clone), (0x20, 0, 0, 16),           # clone: A = its flags (low word)
             (0x45, "allow", "deny", 0x10000)]                      # CLONE_THREAD or nothing
    ends = {"allow": 0x7FFF0000, "deny": 0x00050000 | 1, "nosys": 0x00050000 | 38}
    at = {name: len(prog) + i for i, name in enumerate(ends)}
    def jump(i, target):
        return at[target] - i - 1 if isinstance(target, str) else target
    raw = b"".join(struct.pack("HBBI", c, jump(i, jt), jump(i, jf), k) for i, (c, jt, jf, k) in enumerate(prog))
    raw += b"".join(struct.pack("HBBI", 0x06, 0, 0, ret) for ret in ends.values())
    filt = ctypes.create_string_buffer(raw, len(raw))

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Prog(len(raw) // 8, ctypes.addressof(filt))
    check(libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")


def _paths(sandbox, read_roots):
    """Path helpers of the audit hook."""
    _isinstance, _str, _bytes, _int, _any, _fspath = isinstance, str, bytes, int, any, os.fspath
    _readlink = os.readlink
    dev_ok = frozenset(["/dev/null", "/dev/urandom", "/dev/random", "/dev/zero"])

    def fd_path(fd):
        try:
            return _readlink("/proc/self/fd/%d" % fd)
        except (OSError, ValueError, TypeError):
            return None

    def norm(p, base=None):
        """Absolute, normalised path as a string, purely lexically (cwd is pinned to the sandbox)."""
        if _isinstance(p, _int):
            return fd_path(p)
        if not _isinstance(p, (_str, _bytes)):
            p = _fspath(p)
        if _isinstance(p, _bytes):
            p = p.decode("utf-8", "surrogateescape")
        if not p.startswith("/"):
            p = (base or sandbox) + "/" + p
        parts = []
        for seg in p.split("/"):
            if seg in ("", "."):
                continue
            if seg == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(seg)
        return "/" + "/".join(parts)

    def inside(p, root):
        return p is not None and (p == root or p.startswith(root + "/"))

    def writable(p):
        return inside(p, sandbox)

    def readable(p):
        return p is not None and (inside(p, sandbox) or p in dev_ok or _any(inside(p, r) for r in read_roots))

    def resolve(path, dir_fd=None):
        base = None
        if _isinstance(dir_fd, _int) and dir_fd >= 0 and not (_isinstance(path, (_str, _bytes)) and
                                                             (path[:1] in ("/", b"/"))):
            base = fd_path(dir_fd)
            if base is None:
                return None
        return norm(path, base)

    return resolve, writable, readable


def _make_hook(sandbox, read_roots):
    resolve, writable, readable = _paths(sandbox, read_roots)
    _isinstance, _str, _bytes, _int, _any, _tuple = isinstance, str, bytes, int, any, tuple
    _stat = os.stat
    import stat as _stat_mod
    _isdir = _stat_mod.S_ISDIR
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    deny_prefixes = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
                     "pty.", "_winapi.", "winreg.", "msvcrt.", "resource.", "sys.remote_exec", "gc.get_")
    deny_events = frozenset(["os.system", "os.kill", "os.killpg", "os.chdir", "os.chroot", "os.symlink", "os.link",
                             "os.mkfifo", "os.mknod", "os.startfile", "os.pidfd_open", "signal.pthread_kill",
                             "os.add_dll_directory"])
    # event -> positions of (path, dir_fd) pairs in its arguments
    path_events = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
                   "os.rename": ((0, 2), (1, 3)), "os.chmod": ((0, 2),), "os.chown": ((0, 3),),
                   "os.truncate": ((0, None),), "os.utime": ((0, 4),), "os.setxattr": ((0, None),),
                   "os.removexattr": ((0, None),), "shutil.rmtree": ((0, None),), "shutil.move": ((0, None), (1, None)),
                   "shutil.copyfile": ((1, None),), "shutil.copymode": ((1, None),), "shutil.copystat": ((1, None),),
                   "shutil.copytree": ((1, None),), "shutil.chown": ((0, None),)}
    list_events = frozenset(["os.listdir", "os.scandir", "glob.glob", "os.listxattr", "os.getxattr"])
    deny_imports = frozenset(["posix", "_posixsubprocess", "_ctypes", "ctypes", "_socket", "socket", "nt",
                              "winreg", "_winapi", "cffi", "_cffi_backend", "resource", "pty", "_testcapi",
                              "_xxsubinterpreters", "_xxinterpchannels", "_interpreters", "gc"])
    ready = [False]

    def deny(what):
        raise PermissionError("sandbox: %s is not allowed" % what)

    def hook(event, args):
        if event == "open":
            path, mode, flags = (_tuple(args) + (None, None, None))[:3]
            if path is None or _isinstance(path, _int):
                return  # an already-open descriptor
            p = resolve(path)
            if writable(p):
                return
            if (_isinstance(mode, _str) and _any(c in mode for c in "wax+")) or \
                    (_isinstance(flags, _int) and (flags & WRITE_FLAGS) != 0):
                deny("writing %s" % p)
            if not readable(p):
                deny("reading %s" % p)
            if mode is None:  # os.open: no descriptors of outside directories (they would serve as dir_fd)
                try:
                    if _isdir(_stat(p).st_mode):
                        deny("os.open of the directory %s" % p)
                except OSError:
                    pass
            return
        if event in deny_events or event.startswith(deny_prefixes):
            deny(event)
        spec = path_events.get(event)
        if spec is not None:
            for pi, fi in spec:
                if pi < len(args) and args[pi] is not None:
                    fd = args[fi] if fi is not None and fi < len(args) else None
                    p = resolve(args[pi], fd)
                    if not writable(p):
                        deny("%s on %s" % (event, p))
            return
        if event in list_events:
            if args and args[0] is not None and not _isinstance(args[0], _int) and not readable(resolve(args[0])):
                deny("%s on %s" % (event, resolve(args[0])))
            return
        if event == "import" and ready[0] and args and args[0] in deny_imports:
            deny("importing %s" % args[0])

    return hook, ready


def _read_roots():
    roots = set()
    for p in list(sys.path) + [sys.prefix, sys.base_prefix, sys.exec_prefix]:
        if p and os.path.isdir(p):
            roots.add(os.path.abspath(p))
            roots.add(os.path.realpath(p))
    roots.discard("/")
    return tuple(sorted(roots))


if __name__ == "__main__":
    _cfg = json.loads(sys.argv[1])
    _code = sys.stdin.read()
    sys.stdin = open(os.devnull)
    try:
        _confine(_cfg)
    except Exception as exc:
        sys.stderr.write("sandbox setup failed: %s\n" % (exc,))
        sys.exit(97)
    if _cfg["inprocess"]:
        import gc as _gc_preload  # noqa: F401  (loaded before the hook; `gc.get_*` calls are refused by it)
        _hook, _ready = _make_hook(_cfg["dir"], _read_roots())
        sys.addaudithook(_hook)
        _ready[0] = True
        del _hook, _ready, _gc_preload
    del _cfg, _paths, _make_hook, _read_roots, _confine, _landlock, _seccomp
    _g = {"__name__": "__main__", "__builtins__": builtins}
    _c = compile(_code, "<sandbox>", "exec")
    del _code
    exec(_c, _g)
