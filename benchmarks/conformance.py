"""Conformance on ONNX's own test cases: gpuxc bundles beside raw ONNX Runtime and raw OpenVINO.

    .venv/bin/python benchmarks/conformance.py --suite data        # ~150 model folders, minutes
    .venv/bin/python benchmarks/conformance.py --suite node        # ~1,850 operator cases, ~1 hour
    .venv/bin/python benchmarks/conformance.py --suite data --cases DIR   # + your own case folders

For every tensor-in/tensor-out case (benchmarks/conformance_cases.py) and every column:

- ``onnxruntime``: an ``InferenceSession`` on the model (CPU), as a user would open it;
- ``openvino``: ``Core().compile_model`` on CPU with ``INFERENCE_PRECISION_HINT=f32``;
- ``gpuxc:<target>``: ``gpuxc compile`` of a project holding the model (the case's inputs are the
  calibration sample, so compile-time verification uses them), then the *generated runner*
  (``import runner; runner.load(bundle).infer(inputs)``) on the case's inputs. A target whose
  runtime is not on this host (``--targets cpu,openvino,coreml``: CoreML runs on macOS only) is
  counted as *compiled*, not run.

Outputs are compared with the case's expected outputs as ONNX's own backend runner does (same
dtype and shape; ``assert_allclose`` with the case's rtol/atol). A raw runtime either passes,
fails (an error) or is wrong. A gpuxc column passes, is *refused* (a gpuxc error: one line
naming the problem), or is *bad* (a traceback, a crash, a bundle that does not run, or wrong
numbers): every bad case is a bug. Results go to ``<work>/results-<suite>.jsonl`` (a rerun
resumes; ``--fresh`` starts over) and the tables into docs/conformance.md, between this suite's
markers. Each case runs in a worker process, so a runtime that crashes costs one case.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
DOC = ROOT / "docs" / "conformance.md"
RAW = ("onnxruntime", "openvino")
DEFAULT_TARGETS = ("cpu", "openvino")
TASK_TIMEOUT_S = {"node": 180, "data": 900}


# ---------------------------------------------------------------- worker (one case, one column)


def compare(expected: dict[str, Any], actual: dict[str, Any], rtol: float, atol: float) -> str | None:
    """Why ``actual`` differs from ``expected`` (None when it does not): ONNX's backend rules."""
    import numpy as np

    for name, want in expected.items():
        if name not in actual:
            return f"output '{name}' missing"
        got = np.asarray(actual[name])
        if want.dtype.kind in "OUS":
            if got.shape != want.shape or [str(v) for v in got.ravel()] != [str(v) for v in want.ravel()]:
                return f"output '{name}': strings differ"
            continue
        if got.dtype != want.dtype:
            return f"output '{name}': dtype {got.dtype}, expected {want.dtype}"
        if got.shape != want.shape:
            return f"output '{name}': shape {list(got.shape)}, expected {list(want.shape)}"
        try:
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError:
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            return f"output '{name}': max abs diff {np.nanmax(diff) if diff.size else 0:.3g}"
    return None


def load_case(case_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    import numpy as np

    meta = json.loads((case_dir / "case.json").read_text(encoding="utf-8"))
    with np.load(case_dir / "inputs.npz", allow_pickle=False) as f:
        inputs = {k: f[k] for k in f.files}
    with np.load(case_dir / "expected.npz", allow_pickle=False) as f:
        expected = {k: f[k] for k in f.files}
    return meta, inputs, expected


def run_raw(column: str, case_dir: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    model = str(case_dir / "model.onnx")
    if column == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, inputs), strict=True))
    import onnx
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(inputs)
    names = [o.name for o in onnx.load(model, load_external_data=False).graph.output]
    return {name: result[port] for name, port in zip(names, compiled.outputs, strict=True)}


def gpuxc_project(case_dir: Path, inputs: dict[str, Any]) -> None:
    """A gpux.yml beside the case's model: its inputs are the calibration (= reference) sample."""
    config = case_dir / "gpux.yml"
    if config.is_file():
        return
    lines = ["name: conformance", "model:", "  source: ./model.onnx"]
    if inputs:
        lines += ["build:", "  calibration:", "    data: ./inputs.npz", "    samples: 1"]
    tmp = case_dir / f"gpux.yml.{os.getpid()}"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(config)


def run_bundle(bundle: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    """The bundle's own runner, imported as a user would (``import runner``)."""
    for name in [m for m in sys.modules if m == "runner" or m.startswith("runner.")]:
        del sys.modules[name]
    sys.path.insert(0, str(bundle))
    try:
        import runner  # type: ignore[import-not-found]

        runtime = runner.load(bundle)
        try:
            return runtime.infer(inputs)
        finally:
            runtime.cleanup()
    finally:
        sys.path.remove(str(bundle))


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    import shutil

    case_dir, column = Path(task["case"]), task["column"]
    meta, inputs, expected = load_case(case_dir)
    started = time.perf_counter()
    if column in RAW:
        try:
            actual = run_raw(column, case_dir, inputs)
        except Exception as exc:
            return {"status": "fail", "detail": _line(exc)}
        wrong = compare(expected, actual, meta["rtol"], meta["atol"])
        return {"status": "wrong" if wrong else "pass", "detail": wrong or ""}

    from gpuxc.build.pipeline import compile_project
    from gpuxc.errors import GpuxcError

    target = column.split(":", 1)[1]
    gpuxc_project(case_dir, inputs)
    out = Path(task["bundles"]) / case_dir.name / target
    try:
        [result] = compile_project(case_dir, [target], out, use_cache=False)
    except GpuxcError as exc:
        return {"status": "refused", "detail": exc.message}
    except Exception as exc:  # a traceback from gpuxc: a bug
        return {"status": "bad", "detail": f"compile raised {type(exc).__name__}: {_line(exc)}"}
    verification = result.verification.get("status", "")
    if verification == "unverified":
        # The target's runtime is not on this host (CoreML off macOS): the bundle compiled and
        # says so in its manifest; its numbers are checked where the runtime is.
        if not task.get("keep"):
            shutil.rmtree(out, ignore_errors=True)
        return {"status": "compiled", "detail": result.verification.get("reason") or ""}
    try:
        actual = run_bundle(Path(result.path), inputs)
    except Exception as exc:
        return {"status": "bad", "detail": f"runner: {type(exc).__name__}: {_line(exc)}"}
    finally:
        if not task.get("keep"):
            shutil.rmtree(out, ignore_errors=True)
    seconds = round(time.perf_counter() - started, 2)
    wrong = compare(expected, actual, meta["rtol"], meta["atol"])
    if not wrong:
        return {"status": "pass", "detail": f"verification {verification}", "seconds": seconds}
    # Wrong against the expected outputs: gpuxc's error, or the runtime's own (the raw runtime the
    # target builds on computes the same numbers)?
    raw = "openvino" if target == "openvino" else "onnxruntime"
    try:
        same = compare(run_raw(raw, case_dir, inputs), actual, meta["rtol"], max(meta["atol"], 1e-6)) is None
    except Exception:
        same = False
    return {"status": "as-raw" if same else "bad", "detail": wrong, "seconds": seconds}


def worker() -> None:
    """Tasks as JSON lines on stdin, results on the original stdout (libraries' prints go to stderr)."""
    results = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    os.environ.setdefault("GPUXC_NO_CACHE", "1")
    for line in sys.stdin:
        task = json.loads(line)
        try:
            result = run_task(task)
        except Exception as exc:  # the harness itself (a case it cannot read): never silent
            result = {"status": "bad", "detail": f"harness: {type(exc).__name__}: {_line(exc)}"}
        results.write(json.dumps({**task, **result}) + "\n")


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# ---------------------------------------------------------------- driver


class Pool:
    """N worker processes; a worker that crashes or hangs costs its current task, then restarts."""

    def __init__(self, jobs: int, timeout_s: float, log: Path) -> None:
        self.jobs, self.timeout_s, self.log = jobs, timeout_s, log

    def run(self, tasks: list[dict[str, Any]], sink: Any) -> None:
        todo: queue.Queue[dict[str, Any]] = queue.Queue()
        for task in tasks:
            todo.put(task)
        threads = [threading.Thread(target=self._drive, args=(todo, sink)) for _ in range(self.jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _spawn(self) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=self.log.open("a"), text=True, bufsize=1)  # fmt: skip

    def _drive(self, todo: queue.Queue[dict[str, Any]], sink: Any) -> None:
        proc = self._spawn()
        while True:
            try:
                task = todo.get_nowait()
            except queue.Empty:
                break
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(task) + "\n")
            proc.stdin.flush()
            answer: list[str] = []
            reader = threading.Thread(target=_read_line, args=(proc.stdout, answer))
            reader.start()
            reader.join(self.timeout_s)
            if answer and answer[0]:
                sink(json.loads(answer[0]))
                continue
            why = "timed out" if reader.is_alive() else f"worker died (exit {proc.poll()})"
            proc.kill()
            proc.wait()
            sink({**task, "status": "bad" if task["column"].startswith("gpuxc") else "fail", "detail": why})
            proc = self._spawn()
        if proc.stdin:
            proc.stdin.close()
        proc.wait()


def _read_line(stream: Any, into: list[str]) -> None:
    into.append(stream.readline())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--suite", choices=["node", "data"], default="data")
    parser.add_argument("--cases", type=Path, action="append", default=[], help="more case folders (data suite)")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    parser.add_argument("--filter", default="", help="regex on case names")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "conformance")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results")
    parser.add_argument("--redo", action="append", default=[], help="run again the tasks with this status")
    parser.add_argument("--keep", action="store_true", help="keep the bundles")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/conformance.md")
    args = parser.parse_args()
    if args.worker:
        return worker()

    from conformance_cases import data_cases, left_out, node_cases, write_case
    from conformance_report import render, update_doc

    work = args.work.resolve()
    cases_root = work / args.suite
    started = time.time()
    source = node_cases() if args.suite == "node" else data_cases(args.cases)
    pattern = re.compile(args.filter)
    case_dirs = [write_case(c, cases_root) for c in source if pattern.search(c.name)]
    print(f"{len(case_dirs)} {args.suite} cases in {cases_root} ({time.time() - started:.0f} s)", file=sys.stderr)

    columns = [*RAW, *(f"gpuxc:{t}" for t in args.targets.split(",") if t)]
    results_path = work / f"results-{args.suite}.jsonl"
    if args.fresh and results_path.exists():
        results_path.unlink()
    done = {(r["case"], r["column"]) for r in _read_results(results_path) if r["status"] not in args.redo}
    tasks = [{"case": str(d), "column": c, "bundles": str(work / "bundles"), "keep": args.keep}
             for d in case_dirs for c in columns if (str(d), c) not in done]  # fmt: skip
    lock, counts = threading.Lock(), Counter[str]()

    def sink(result: dict[str, Any]) -> None:
        with lock:
            with results_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(result) + "\n")
            counts[result["status"]] += 1
            total = sum(counts.values())
            if total % 25 == 0 or result["status"] == "bad":
                extra = f"  bad: {Path(result['case']).name} {result['column']}: {result['detail']}"
                print(f"{total}/{len(tasks)} {dict(counts)}" + (extra if result["status"] == "bad" else ""),
                      file=sys.stderr, flush=True)  # fmt: skip

    Pool(args.jobs, TASK_TIMEOUT_S[args.suite], work / "workers.log").run(tasks, sink)
    wanted = {str(d) for d in case_dirs}
    results = [r for r in _read_results(results_path) if r["case"] in wanted and r["column"] in columns]
    text = render(args.suite, results, columns, time.time() - started, dict(left_out))
    print(text)
    if not args.no_doc and not args.filter:
        update_doc(DOC, args.suite, text)


def _read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    latest = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            latest[(r["case"], r["column"])] = r
    return list(latest.values())


if __name__ == "__main__":
    main()
