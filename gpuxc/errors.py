"""The one error hierarchy of gpuxc.

Every error a user can cause or act on is a ``GpuxcError`` subclass with its own
exit code. The CLI turns them into one line on stderr and that exit code; a
traceback is printed only with ``-v``. Exit codes are part of the interface and
documented in docs/cli.md: never renumber one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the ``gpuxc`` CLI."""

    OK = 0
    INTERNAL = 1  # a bug in gpuxc or a plugin: please report it
    USAGE = 2  # bad command-line usage (Typer/Click's own code)
    CONFIG = 3  # gpux.yml malformed, unknown key, wrong type, unsupported value
    MODEL = 4  # model file missing, unreadable, invalid, or unsafe
    SIGNATURE = 5  # declared inputs/outputs do not match the model
    PLUGIN = 6  # plugin failed to load, duplicate name, invalid class
    TARGET_UNAVAILABLE = 7  # target's runtime or hardware missing here
    PASS_FAILED = 8  # a graph pass failed
    COMPILE_FAILED = 9  # the target failed to produce its artifact
    VERIFICATION_FAILED = 10  # target output outside tolerance
    BUNDLE = 11  # bundle missing, unreadable or malformed; output path unusable
    REFERENCE = 12  # reference inputs could not be made or run on the source model
    MEMORY_BUDGET = 13  # no build fits runtime.gpu.memory
    CACHE = 14  # the build cache folder cannot be read or cleared (gpuxc cache)
    MODEL_CRASHED = 15  # loading or first running the model killed its isolated child process
    MODEL_LIMIT = 16  # the model needed more memory or time than GPUXC_MODEL_MEMORY_LIMIT / _TIMEOUT
    EXPORT = 17  # gpuxc export: the serving engine cannot run this bundle, or its output cannot be written


def first_line(exc: BaseException, limit: int = 400) -> str:
    """The first line of an exception's message (library errors can be pages long)."""
    args: tuple[object, ...] = getattr(exc, "args", ())
    # ValueError("message", name, ...) prints as a tuple: the message is the first argument.
    text = (args[0] if len(args) > 1 and isinstance(args[0], str) else str(exc)).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Exception from src/"):
        # OpenVINO's C++ exceptions open with where they were thrown; what went wrong is last.
        return lines[-1][:limit]
    return lines[0][:limit]


def one_line(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\n``, ``\\x00``, ``\\u2028``): messages
    quote names and values from gpux.yml and models, and an error must stay one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or an empty string: shared by every "unknown name" message."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class GpuxcError(Exception):
    """Base of all user-facing gpuxc errors: ``str(err)`` is the one-line message."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        message = one_line(message)
        super().__init__(message)
        self.message = message
        self.hint = one_line(hint) if hint is not None else None

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class ConfigError(GpuxcError):
    """gpux.yml problem; the message starts with ``file:line:column``."""

    exit_code = ExitCode.CONFIG


class ModelError(GpuxcError):
    exit_code = ExitCode.MODEL


class UnsafeModelError(ModelError):
    """The model asks for something outside its folder (external data path)."""


class ModelCrashed(ModelError):
    """ONNX or ONNX Runtime died (a signal, an abort) loading or first running the model; only the
    isolated child process that did it (gpuxc/project/isolation/) was lost."""

    exit_code = ExitCode.MODEL_CRASHED


class ModelLimitExceeded(ModelError):
    """Loading or first running the model went over ``GPUXC_MODEL_MEMORY_LIMIT`` or ``GPUXC_MODEL_TIMEOUT``."""

    exit_code = ExitCode.MODEL_LIMIT


class SignatureMismatch(GpuxcError):
    exit_code = ExitCode.SIGNATURE


class PluginError(GpuxcError):
    exit_code = ExitCode.PLUGIN


class TargetUnavailable(GpuxcError):
    exit_code = ExitCode.TARGET_UNAVAILABLE


class PassError(GpuxcError):
    exit_code = ExitCode.PASS_FAILED


class CompileError(GpuxcError):
    exit_code = ExitCode.COMPILE_FAILED


class VerificationFailed(GpuxcError):
    exit_code = ExitCode.VERIFICATION_FAILED


class BundleError(GpuxcError):
    exit_code = ExitCode.BUNDLE


class ReferenceError_(GpuxcError):
    """Reference inputs could not be generated or the source model failed on them.

    (Trailing underscore: ``ReferenceError`` is a Python builtin.)
    """

    exit_code = ExitCode.REFERENCE


class MemoryBudgetExceeded(GpuxcError):
    """The build's estimated memory is over ``runtime.gpu.memory``."""

    exit_code = ExitCode.MEMORY_BUDGET


class ExportError(GpuxcError):
    """``gpuxc export``: the engine cannot run the bundle's artifact, or the export cannot be written."""

    exit_code = ExitCode.EXPORT


class CacheError(GpuxcError):
    """The build cache cannot be used as asked (``gpuxc cache``); during a build, cache trouble is a warning."""

    exit_code = ExitCode.CACHE
