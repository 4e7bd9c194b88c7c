"""What every fuzz example runs and checks, and the figures the fuzz suite reports.

One example = one project folder (a generated gpux.yml or a mutated model.onnx) compiled by
``gpuxc.build.pipeline.compile_project`` in-process for the cpu target into a fresh ``--out``
folder, end to end (no stage is skipped: a rejected input stops where gpuxc stops it, an
accepted one is planned, compiled, verified and published). After it we check:

- the outcome: success, or a ``GpuxcError`` subclass whose message is one line of UTF-8
  text; anything else (``MemoryError``, ``ValueError``, ``SystemExit``…) is *uncaught*;
- no write outside ``--out``: an audit hook sees every Python-level write (open for
  writing, mkdir, rename, remove, chmod, symlink, shutil copies…) and refuses any outside
  ``--out`` and the private temp folder; writes from C++ (ONNX Runtime, protobuf) are caught
  by comparing the project folder byte for byte, the working directory, and a sandbox folder
  "outside" before and after; the temp folder (``TMPDIR``/``tempfile.tempdir``) must be
  empty afterwards;
- no partial bundle: no staging folder is left, every folder in ``--out`` is a complete
  bundle whose files match its manifest (``bundle.files.differences_from_manifest``), and a failed build
  leaves a bundle that was already there (one example in five starts with one) byte for
  byte unchanged;
- (model suite) nothing read from outside the project: no Python-level open of the sandbox's
  "outside" folder, and no bundle holding the marker bytes of the file there.

The model steps gpuxc isolates (gpuxc/project/isolation/) run in children of a helper process
started for the suite with its TMPDIR and limits (4 GiB, 120 s); the suite itself runs under
RLIMIT_AS (+6 GiB), so a runaway example fails instead of taking the machine down.

Violations are collected (with the input that caused them, also saved under
``<tmp_path>/failures/<n>/``), not raised inside Hypothesis: the run reports complete figures
and reproducible inputs, in bounded time. ``<tmp_path>/current/`` holds the input being
compiled, for a process that dies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuxc.bundle.files import differences_from_manifest
from gpuxc.bundle.manifest import MANIFEST_NAME, read_manifest
from gpuxc.bundle.writer import STAGING_PREFIX
from gpuxc.errors import GpuxcError


def examples(default: int) -> int:
    """Examples per suite: ``default``, or $GPUXC_FUZZ_EXAMPLES (e.g. more for a nightly run)."""
    return int(os.environ.get("GPUXC_FUZZ_EXAMPLES", "") or default)


def fuzz_settings(count: int) -> Any:
    """Hypothesis settings for a suite: ``count`` examples, reproducible (derandomized, no example
    database, no shrinking: a failure is reported with its input instead), no deadline."""
    from hypothesis import HealthCheck, Phase, settings

    return settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


SECRET_MARKER = b"gpuxc.fuzz.SECRT"  # 16 bytes, 4 finite float32 values
# onnxruntime's telemetry session file (see Sandbox._check_outside).
ORT_SESSION_FILE = ".ses"
# At most this many violations are kept with their inputs (all are counted).
KEEP_VIOLATIONS = 20


# --------------------------------------------------------------------------- figures


@dataclass
class Figures:
    """Counts of one fuzz suite: printed by tests/fuzz/conftest.py and written as JSON."""

    suite: str
    examples: int = 0
    compiled: int = 0  # compile_project returned: every bundle published and intact
    rejected: Counter[str] = field(default_factory=Counter)  # "ConfigError (exit 3)" -> count
    uncaught: int = 0  # an exception that is not a GpuxcError
    uncaught_sites: Counter[str] = field(default_factory=Counter)  # "ValueError at gpuxc/project/reference.py:170" -> n
    bad_messages: int = 0  # a GpuxcError whose message is not one line of UTF-8 text
    outside_writes: int = 0  # examples that wrote (or left files) outside --out
    outside_reads: int = 0  # examples that opened the sandbox's "outside" folder (model suite)
    partial_bundles: int = 0  # examples that left a staging folder, an incomplete or a changed bundle
    third_party_temp_files: int = 0  # onnxruntime's $TMPDIR/.ses from a child process (not a violation)
    warned: Counter[str] = field(default_factory=Counter)  # Python warnings raised (not errors), by category
    kinds: Counter[str] = field(default_factory=Counter)  # what the generator produced, by kind
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0

    def line(self) -> str:
        rejected = sum(self.rejected.values())
        classes = ", ".join(f"{k} {v}" for k, v in self.rejected.most_common())
        return (
            f"fuzz {self.suite}: {self.examples} examples in {self.seconds:.0f} s: {self.compiled} compiled and "
            f"intact, {rejected} rejected ({classes}); uncaught {self.uncaught}, bad messages {self.bad_messages}, "
            f"outside writes {self.outside_writes}, outside reads {self.outside_reads}, "
            f"partial bundles {self.partial_bundles}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "examples": self.examples,
            "compiled": self.compiled,
            "rejected": dict(self.rejected.most_common()),
            "uncaught": self.uncaught,
            "uncaught_sites": dict(self.uncaught_sites.most_common()),
            "bad_messages": self.bad_messages,
            "outside_writes": self.outside_writes,
            "outside_reads": self.outside_reads,
            "partial_bundles": self.partial_bundles,
            "third_party_temp_files": self.third_party_temp_files,
            "warnings": dict(self.warned.most_common()),
            "kinds": dict(self.kinds.most_common()),
            "seconds": round(self.seconds, 1),
            "violations": self.violations,
        }

    def violate(self, what: str, example: str) -> None:
        self.violation_count += 1
        if len(self.violations) < KEEP_VIOLATIONS:
            self.violations.append(f"{what}\n    input: {example}")


# Suite name -> figures of this pytest run (read by the terminal summary hook).
FIGURES: dict[str, Figures] = {}


# --------------------------------------------------------------------------- write audit

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# event -> indexes of its path arguments that are written to (and the dir_fd argument, if any)
_WRITE_EVENTS: dict[str, tuple[tuple[int, ...], int | None]] = {
    "os.mkdir": ((0,), 2),
    "os.rename": ((0, 1), 2),
    "os.remove": ((0,), 1),
    "os.rmdir": ((0,), 1),
    "os.symlink": ((1,), 2),
    "os.link": ((1,), 2),
    "os.chmod": ((0,), 2),
    "os.chown": ((0,), 3),
    "os.utime": ((0,), 4),
    "os.truncate": ((0,), None),
    "os.mkfifo": ((0,), 2),
    "os.mknod": ((0,), 3),
    "shutil.rmtree": ((0,), 1),
    "shutil.copyfile": ((1,), None),
    "shutil.copymode": ((1,), None),
    "shutil.copystat": ((1,), None),
    "shutil.copytree": ((1,), None),
    "shutil.move": ((0, 1), None),
    "tempfile.mkstemp": ((0,), None),
    "tempfile.mkdtemp": ((0,), None),
}


class WriteAudit:
    """Records Python-level writes outside the allowed folders while active (one hook per process)."""

    _current: WriteAudit | None = None
    _installed = False

    def __init__(self, allowed: list[Path], watched_reads: list[Path]) -> None:
        # /dev/null: subprocess opens it read-write (ctypes.util.find_library runs ldconfig -p).
        self.allowed = [os.path.realpath(p) for p in allowed] + [os.devnull]
        self.watched_reads = [os.path.realpath(p) for p in watched_reads]
        self.writes: list[str] = []
        self.reads: list[str] = []
        if not WriteAudit._installed:
            sys.addaudithook(WriteAudit._hook)
            WriteAudit._installed = True

    def __enter__(self) -> WriteAudit:
        WriteAudit._current = self
        return self

    def __exit__(self, *exc: object) -> None:
        WriteAudit._current = None

    @staticmethod
    def _inside(path: str, roots: list[str]) -> bool:
        return any(path == root or path.startswith(root + os.sep) for root in roots)

    @staticmethod
    def _hook(event: str, args: tuple[Any, ...]) -> None:
        audit = WriteAudit._current
        if audit is None:
            return
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            if not isinstance(path, (str, bytes, os.PathLike)):
                return
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
            audit._check(event, [path], writing)
            return
        spec = _WRITE_EVENTS.get(event)
        if spec is None:
            return
        indexes, dir_fd_at = spec
        if dir_fd_at is not None and len(args) > dir_fd_at and args[dir_fd_at] is not None:
            return  # relative to an open folder (shutil.rmtree's walk): its top is checked by shutil.rmtree
        audit._check(event, [args[i] for i in indexes if i < len(args)], True)

    def _check(self, event: str, paths: list[Any], writing: bool) -> None:
        for raw in paths:
            if not isinstance(raw, (str, bytes, os.PathLike)):
                continue
            path = os.path.realpath(os.fsdecode(raw))
            if "__pycache__" in path:
                continue  # the interpreter's own byte-code cache
            if writing and not self._inside(path, self.allowed):
                self.writes.append(f"{event} {path}")
            if self._inside(path, self.watched_reads):
                self.reads.append(f"{event} {path}")


# --------------------------------------------------------------------------- snapshots


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: file digest, link target or 'dir' (plus the mode)."""
    out: dict[str, str] = {}
    if not folder.exists():
        return out
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            mode = oct(path.lstat().st_mode)
            if path.is_symlink():
                out[rel] = f"link {os.readlink(path)} {mode}"
            elif path.is_dir():
                out[rel] = f"dir {mode}"
            else:
                out[rel] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {mode}"
    return out


def diff(before: dict[str, str], after: dict[str, str]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = [f"{label} {items[:5]}" for label, items in (("added", added), ("removed", removed),
                                                         ("changed", changed)) if items]  # fmt: skip
    return "; ".join(parts)


# --------------------------------------------------------------------------- the sandbox


class Sandbox:
    """Folders of one fuzz test; ``run`` compiles one example and checks everything.

    root/template  the project every example starts from (gpux.yml and model.onnx replaced)
    root/outside   files outside the project (a sentinel that external data may point at)
    root/tmp       TMPDIR and tempfile.tempdir while examples run: must be empty after each
    root/work      the working directory while examples run: must stay empty
    root/p         the current example's project (fresh copy of the template)
    root/out       the current example's --out
    root/good      a complete bundle copied into --out before some examples
    """

    def __init__(self, root: Path, figures: Figures, *, watch_outside_reads: bool = False) -> None:
        self.root = root
        self.watch_outside_reads = watch_outside_reads
        self.figures = figures
        self.template = root / "template"
        self.outside = root / "outside"
        self.tmp = root / "tmp"
        self.work = root / "work"
        self.project = root / "p"
        self.out = root / "out"
        self.good = root / "good"
        self.failures = root.parent / "failures"  # inputs of violations, kept for reproduction
        for folder in (self.template, self.outside, self.tmp, self.work):
            folder.mkdir(parents=True, exist_ok=True)
        # Valid float32 weights with a marker no model holds: found in a bundle, data came from outside.
        (self.outside / "secret.bin").write_bytes(SECRET_MARKER * 256)
        self._fixed: dict[str, dict[str, str]] = {}
        self.good_bundle: Path | None = None

    def freeze(self) -> None:
        """Record the folders no example may change (call after the template is complete)."""
        self._fixed = {"template": snapshot(self.template), "outside": snapshot(self.outside)}
        if self.good_bundle is not None:
            self._fixed["good"] = snapshot(self.good)

    def make_good_bundle(self, compile_fn: Callable[[Path, Path], Any]) -> None:
        """Compile the untouched template once: the bundle that some examples find in --out."""
        self.new_project({})
        [result] = compile_fn(self.project, self.good)
        self.good_bundle = result.path
        shutil.rmtree(self.project)
        for leftover in self.tmp.iterdir():
            _remove(leftover)

    def new_project(self, files: dict[str, bytes]) -> None:
        if self.project.exists():
            shutil.rmtree(self.project)
        shutil.copytree(self.template, self.project, symlinks=True)
        for name, data in files.items():
            (self.project / name).write_bytes(data)

    def run(self, files: dict[str, bytes], example: str, *, preexisting: bool = False) -> str:
        """Compile one project (``files`` over the template) and check it; returns the outcome."""
        from gpuxc.build.pipeline import compile_project

        fig = self.figures
        fig.examples += 1
        self.found: list[str] = []
        # The input being compiled, kept outside the sandbox: what to look at if the process dies.
        current = self.root.parent / "current"
        current.mkdir(exist_ok=True)
        for name, data in files.items():
            (current / name).write_bytes(data)
        (current / "example.txt").write_text(f"{fig.examples}: {example}\n", encoding="utf-8", errors="replace")
        self.new_project(files)
        if self.out.exists():
            shutil.rmtree(self.out)
        old: dict[str, str] = {}
        if preexisting and self.good_bundle is not None:
            shutil.copytree(self.good_bundle, self.out / self.good_bundle.name)
            old = snapshot(self.out)
        project_before = snapshot(self.project)
        audit = WriteAudit([self.out, self.tmp], [self.outside] if self.watch_outside_reads else [])
        outcome = "compiled"
        results: list[Any] = []
        error: BaseException | None = None
        with warnings.catch_warnings(record=True) as caught:
            # Warnings are what a user would see on stderr, not errors: counted, not raised
            # (pytest's filterwarnings=error would otherwise turn them into exceptions).
            warnings.simplefilter("always")
            with audit:
                try:
                    results = compile_project(self.project, ["cpu"], self.out)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - SystemExit and MemoryError are findings too
                    error = exc
        for w in caught:
            fig.warned[w.category.__name__] += 1

        if error is None:
            fig.compiled += 1
        elif isinstance(error, GpuxcError):
            outcome = f"{type(error).__name__} (exit {int(error.exit_code)})"
            fig.rejected[outcome] += 1
            message = str(error)
            problem = _message_problem(message)
            if problem:
                fig.bad_messages += 1
                self.found.append(f"{type(error).__name__} message {problem}: {message[:300]!r}")
        else:
            outcome = "uncaught"
            fig.uncaught += 1
            fig.uncaught_sites[_site(error)] += 1
            tb = "".join(traceback.format_exception(error, limit=-3)).strip().replace("\n", "\n      ")
            self.found.append(f"uncaught {type(error).__name__}: {str(error)[:300]!r}\n      {tb}")

        self._check_outside(audit, project_before)
        self._check_out(results, error, old)
        if self.found:
            kept = self.failures / str(fig.examples)
            kept.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (kept / name).write_bytes(data)
            for what in self.found:
                fig.violate(what, f"{example} (input files kept in {kept})")
        return outcome

    # -- checks ---------------------------------------------------------------------------

    def _check_outside(self, audit: WriteAudit, project_before: dict[str, str]) -> None:
        fig = self.figures
        problems = list(audit.writes)
        changed = diff(project_before, snapshot(self.project))
        if changed:
            problems.append(f"project folder changed: {changed}")
        ses = self.tmp / ORT_SESSION_FILE
        if ses.is_file() and not ses.is_symlink() and ses.stat().st_size < 200:
            # onnxruntime (1.31) writes its telemetry SDK's session file, $TMPDIR/.ses, in every process that
            # imports it: here a child process (the ort-format pass). Not gpuxc's write; counted, not failed.
            fig.third_party_temp_files += 1
            ses.unlink()
        left = sorted(p.name for p in self.tmp.iterdir())
        if left:
            problems.append(f"left in the temp folder: {left[:5]}")
            for path in self.tmp.iterdir():
                _remove(path)
        work = sorted(p.name for p in self.work.iterdir())
        if work:
            problems.append(f"written to the working directory: {work[:5]}")
            for path in self.work.iterdir():
                _remove(path)
        extra = sorted({p.name for p in self.root.iterdir()} - {"template", "outside", "tmp", "work", "p", "out",
                                                                 "good"})  # fmt: skip
        if extra:
            problems.append(f"written to the sandbox root: {extra}")
        for name, before in self._fixed.items():
            changed = diff(before, snapshot(self.root / name))
            if changed:
                problems.append(f"{name} changed: {changed}")
        if problems:
            fig.outside_writes += 1
            self.found.append(f"write outside --out: {problems[:5]}")
        if audit.reads:
            fig.outside_reads += 1
            self.found.append(f"read outside the project: {audit.reads[:3]}")

    def _check_out(self, results: list[Any], error: BaseException | None, old: dict[str, str]) -> None:
        problems: list[str] = []
        entries = sorted(self.out.iterdir()) if self.out.is_dir() else []
        published = {Path(r.path).name for r in results}
        for entry in entries:
            if entry.name.startswith(STAGING_PREFIX):
                problems.append(f"staging folder left: {entry.name}")
            elif entry.name in published:
                problems += [f"{entry.name}: {p}" for p in _bundle_problems(entry)]
                leaked = _files_holding(entry, SECRET_MARKER)
                if leaked:
                    self.figures.outside_reads += 1
                    self.found.append(f"bundle holds the bytes of a file outside the project: {leaked[:3]}")
            elif old and any(k == entry.name or k.startswith(entry.name + "/") for k in old):
                pass  # the bundle that was there before: compared below
            else:
                problems.append(f"unexpected entry in --out: {entry.name}")
        for name in published:
            if not (self.out / name).is_dir():
                problems.append(f"reported bundle {name} is not in --out")
        if old:
            name = next(iter(old)).split("/")[0]
            if name not in published:
                changed = diff(old, {k: v for k, v in snapshot(self.out).items() if k.split("/")[0] == name})
                if changed:
                    problems.append(f"the bundle already in --out changed although it was not replaced: {changed}")
        if problems:
            self.figures.partial_bundles += 1
            why = "after success" if error is None else f"after {type(error).__name__}"
            self.found.append(f"partial bundle {why}: {problems[:5]}")


def _bundle_problems(bundle: Path) -> list[str]:
    if not (bundle / MANIFEST_NAME).is_file():
        return [f"no {MANIFEST_NAME}"]
    try:
        manifest = read_manifest(bundle)
    except GpuxcError as exc:
        return [str(exc)]
    return differences_from_manifest(bundle, manifest)


def _files_holding(folder: Path, marker: bytes) -> list[str]:
    return [
        p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file() and marker in p.read_bytes()
    ]


def _message_problem(message: str) -> str | None:
    if not message.strip():
        return "is empty"
    if len(message.splitlines()) != 1 or "\r" in message:
        return "is not one line"
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        return "is not encodable as UTF-8"
    return None


def _site(error: BaseException) -> str:
    """``Type at file:line`` of the innermost frame in gpuxc or plugins (else the innermost)."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "/gpuxc/" in f.filename or "/plugins/" in f.filename] or frames
    if not ours:
        return type(error).__name__
    frame = ours[-1]
    parts = Path(frame.filename).parts
    short = "/".join(parts[-2:])
    return f"{type(error).__name__} at {short}:{frame.lineno}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class Clock:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def restart_isolation_helper() -> None:
    """Stop gpuxc's model isolation helper process (gpuxc/project/isolation/), if one runs: it keeps the
    environment it started with, so the next model step starts one with the current TMPDIR and
    limits (at the start of a suite: ours; at its end: the next test's)."""
    try:
        from gpuxc.project.isolation import helper
    except ImportError:
        return
    helper.close_server()


def isolate(monkeypatch: Any, sandbox: Sandbox) -> None:
    """Temp files into the sandbox, the sandbox's work folder as cwd, no build cache."""
    monkeypatch.setenv("TMPDIR", str(sandbox.tmp))
    monkeypatch.setenv("GPUXC_NO_CACHE", "1")
    # Isolated model steps (gpuxc/project/isolation/): a child that wants more memory or time than this
    # fails as ModelLimitExceeded instead of swapping the CI machine or stalling the run.
    monkeypatch.setenv("GPUXC_MODEL_MEMORY_LIMIT", CHILD_MEMORY_LIMIT)
    monkeypatch.setenv("GPUXC_MODEL_TIMEOUT", CHILD_TIMEOUT_S)
    monkeypatch.setattr(tempfile, "tempdir", str(sandbox.tmp))
    monkeypatch.chdir(sandbox.work)


CHILD_MEMORY_LIMIT = "4GiB"
CHILD_TIMEOUT_S = "120"
# Address space the fuzz suite may add while it runs: an example that tries to allocate more
# fails with MemoryError (reported as uncaught) instead of taking the CI machine down.
MEMORY_CAP_BYTES = 6 * 1024**3


@contextmanager
def memory_cap(extra: int = MEMORY_CAP_BYTES) -> Iterator[None]:
    """RLIMIT_AS at the current address-space size plus ``extra`` (Linux; elsewhere no cap)."""
    try:
        import resource

        with open("/proc/self/statm", encoding="ascii") as fh:
            current = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        yield
        return
    cap = current + extra if hard == resource.RLIM_INFINITY else min(current + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def report(fig: Figures) -> str:
    """The assertion message of a suite: its figures and the violations with their inputs."""
    lines = [fig.line(), f"{fig.violation_count} violation(s); the first {len(fig.violations)}:"]
    lines += [f"  {v}" for v in fig.violations]
    return "\n".join(lines)
