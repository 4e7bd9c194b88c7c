"""Command line of this bundle: ``python <bundle> run|verify|bench|serve|info``.

Exit codes: 0 ok; 1 verification outside tolerance; 2 bad usage or bad input;
3 bundle unreadable, tampered or runtime failure; 4 inference timed out;
5 self-check failed: no variant computes within tolerance here (each reason on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

EXIT_OK, EXIT_VERIFY, EXIT_INPUT, EXIT_BUNDLE, EXIT_TIMEOUT, EXIT_SELF_CHECK = 0, 1, 2, 3, 4, 5
RANKED_KEY = "ranked"  # labelled outputs' rankings, beside the outputs (as in /predict)


def _fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _read_inputs(spec: str, kind: str | None = None, key: str | None = None) -> Any:
    """``--input`` value: inline JSON, ``@file.json``, or a ``.npz`` file; for a bundle with image
    preprocessing also an image file, for one with text preprocessing any other string (the text)."""
    if spec.endswith(".npz") and not spec.lstrip().startswith("{"):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"input file not found: {spec}")
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise ValueError(f"input file not found: {spec[1:]}")
        spec = path.read_text(encoding="utf-8")
    elif kind == "image" and not spec.lstrip().startswith(("{", "[")):
        if not Path(spec).is_file():
            raise ValueError(f"--input: no image file '{spec}' (and not JSON)")
        return {key: spec}
    try:
        data = json.loads(spec)
    except ValueError as exc:
        if kind == "text":
            return {key: spec}
        raise ValueError(f"--input is not valid JSON ({exc})") from None
    # A text bundle takes any string that is not a JSON object as the text itself ("42", "[1]").
    return data if kind != "text" or isinstance(data, dict) else {key: spec}


def _run_inputs(args: argparse.Namespace, kind: str | None, key: str | None) -> Any:
    """What ``run`` feeds: ``--image`` files, ``--text`` strings (repeated: a batch), or ``--input``."""
    for flag, values, wanted in (("--image", args.image, "image"), ("--text", args.text, "text")):
        if values:
            if kind != wanted:
                raise ValueError(f"{flag} needs a bundle with {wanted} preprocessing; this one takes tensors "
                                 "(--input JSON or .npz)" if kind is None else
                                 f"{flag} needs a bundle with {wanted} preprocessing; this one takes "
                                 f"{'--image' if kind == 'image' else '--text'}")  # fmt: skip
            return {key: values[0] if len(values) == 1 else values}
    if args.input is None:
        raise ValueError("run needs --input" + {"image": " or --image", "text": " or --text"}.get(kind or "", ""))
    return _read_inputs(args.input, kind, key)


def _write_outputs(outputs: dict[str, np.ndarray], target: str | None,
                   ranked: dict[str, Any] | None = None, as_json: bool = False) -> None:  # fmt: skip
    from runner.api import to_jsonable

    if target and target.endswith(".npz"):
        from runner.compare import dense

        # dense(): sequences of maps as arrays; np.savez would otherwise pickle them.
        arrays = {k: dense(v) for k, v in outputs.items()}
        storable: dict[str, Any] = {k: v.astype(str) if v.dtype == object else v for k, v in arrays.items()}
        np.savez(target, **storable)
        print(f"wrote {target}", file=sys.stderr)
        return
    if ranked and not target and not as_json and sys.stdout.isatty():
        from runner.labels import text_lines

        # A person reads the best labels; the raw tensors of labelled outputs stay behind --json.
        print("\n".join(text_lines(ranked)))
        rest = {k: to_jsonable(v) for k, v in outputs.items() if k not in ranked}
        if rest:
            print(json.dumps(rest))
        return
    body = {k: to_jsonable(v) for k, v in outputs.items()}
    if ranked and RANKED_KEY not in body:
        body[RANKED_KEY] = ranked
    text = json.dumps(body)
    if target:
        Path(target).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {target}", file=sys.stderr)
    else:
        print(text)


def _is_web() -> bool:
    from runner.api import BUNDLE_DIR, BundleError, read_manifest

    try:
        return bool(read_manifest(BUNDLE_DIR)["artifact"]["format"] == "web")
    except (BundleError, KeyError, TypeError):
        return False  # the usual serve path reports what is wrong with the bundle


def _serve_web(args: argparse.Namespace) -> int:
    """A web bundle is served as static files (its page), not through FastAPI: the model runs in the browser."""
    from runner.api import BUNDLE_DIR, listed_file_problems, read_manifest
    from runner.runtime import serve_page  # only the web adapter has it

    manifest = read_manifest(BUNDLE_DIR)
    problems = listed_file_problems(BUNDLE_DIR, manifest)
    if problems:
        return _fail(EXIT_BUNDLE, "bundle integrity check failed: " + "; ".join(problems[:5]))
    serving = manifest.get("serving", {})
    try:
        serve_page(BUNDLE_DIR, args.host or serving.get("host", "127.0.0.1"),
                   int(args.port if args.port is not None else serving.get("port", 8080)))  # fmt: skip
    except OSError as exc:
        return _fail(EXIT_BUNDLE, f"cannot serve the page: {exc}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
    except BrokenPipeError:  # `python . run ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    from runner.selfcheck import ABANDONED

    if any(thread.is_alive() for thread in ABANDONED):
        # A runtime stuck in native code: interpreter shutdown would wait on it or abort.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None = None) -> int:
    # --provider is accepted before or after the command:
    # `python . --provider cpu run` or `python . run --provider cpu`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--provider", default=argparse.SUPPRESS,
                        help="execution provider/device (auto, cpu, cuda, ...); default from the manifest")
    common.add_argument("--self-check", choices=("always", "unverified", "off"), default=argparse.SUPPRESS,
                        help="check the reference outputs on this device before running: always, only for "
                             "variants not verified at compile time (default: gpux.yml serving.self_check), off")
    parser = argparse.ArgumentParser(prog="python <bundle>", description="Run this gpuxc bundle.", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run one inference", parents=[common])
    given = run_p.add_mutually_exclusive_group()
    given.add_argument("--input", "-i", help="inline JSON, @file.json, or file.npz; an image file (image "
                       "bundles) or the text itself (text bundles)")  # fmt: skip
    given.add_argument("--image", action="append", metavar="PATH", help="an image file (repeat for a batch)")
    given.add_argument("--text", action="append", metavar="TEXT", help="a text (repeat for a batch)")
    run_p.add_argument("--top-k", type=int, help="ranked labels per labelled output (default: gpux.yml's, else 5)")
    run_p.add_argument("--json", action="store_true", help="print JSON even on a terminal")
    run_p.add_argument("--output", "-o", help="write outputs to this .json or .npz file instead of stdout")
    verify_p = sub.add_parser("verify", help="re-run reference inputs and compare with reference outputs",
                              parents=[common])
    verify_p.add_argument("--json", action="store_true", help="print the report as JSON")
    bench_p = sub.add_parser("bench", help="latency benchmark on the reference inputs", parents=[common])
    bench_p.add_argument("--runs", type=int, default=100)
    bench_p.add_argument("--warmup", type=int, default=10)
    bench_p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: runtime's choice)")
    bench_p.add_argument("--json", action="store_true")
    bench_p.add_argument("--profile", action="store_true", help="also time per op type (the runtime's profiler)")
    serve_p = sub.add_parser("serve", help="start the HTTP server", parents=[common])
    serve_p.add_argument("--host", help="bind address (default from the manifest: 127.0.0.1)")
    serve_p.add_argument("--port", type=int)
    serve_p.add_argument("--workers", type=int)
    serve_p.add_argument("--stay-unready", action="store_true",
                         help="when no variant passes its self-check, keep serving /health and /info as not ready "
                              "(default: exit with code 5)")  # fmt: skip
    serve_p.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS with this certificate (chain) file; "
                         "default $GPUXC_SSL_CERTFILE")  # fmt: skip
    serve_p.add_argument("--ssl-keyfile", metavar="PEM",
                         help="the certificate's private key; default $GPUXC_SSL_KEYFILE")
    serve_p.add_argument("--ssl-keyfile-password-env", metavar="VAR",
                         help="environment variable holding the key's password (never the password itself)")
    serve_p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=None,
                         help="one line per request on stderr, without bodies or query strings (default: on)")
    serve_p.add_argument("--log-format", choices=("text", "json"), help="access log lines as text (default) or JSON")
    sub.add_parser("info", help="print model information as JSON", parents=[common])
    args = parser.parse_args(argv)

    from runner.api import BundleError, InferenceTimeout, InputError, NoVariant, load

    if args.command == "serve" and _is_web():
        if args.ssl_certfile or args.ssl_keyfile:  # the page server is the standard library's, plain HTTP
            return _fail(EXIT_INPUT, "--ssl-certfile/--ssl-keyfile: a web bundle's page is served over HTTP only")
        return _serve_web(args)
    if args.command == "serve":
        from runner import access
        from runner.tls import TLSConfigError, ssl_options

        try:  # before the port is bound
            tls = ssl_options(args.ssl_certfile, args.ssl_keyfile, args.ssl_keyfile_password_env)
        except TLSConfigError as exc:
            return _fail(EXIT_INPUT, str(exc))
        # Environment variables: the worker processes of --workers N read them too.
        if args.access_log is not None:
            os.environ[access.ACCESS_LOG_ENV] = "1" if args.access_log else "0"
        if args.log_format:
            os.environ[access.LOG_FORMAT_ENV] = args.log_format
        try:
            from runner.server import serve
        except ImportError as exc:
            return _fail(EXIT_BUNDLE, f"serving needs fastapi and uvicorn ({exc}); pip install -r requirements.txt")
        try:
            serve(args.host, args.port, args.workers, provider=getattr(args, "provider", None),
                  self_check=getattr(args, "self_check", None), stay_unready=args.stay_unready, tls=tls)
        except NoVariant as exc:
            return _fail(EXIT_SELF_CHECK if exc.self_check_failed else EXIT_BUNDLE, str(exc))
        except (BundleError, ValueError) as exc:
            return _fail(EXIT_BUNDLE, str(exc))
        return EXIT_OK
    try:
        threads = getattr(args, "threads", None)
        profiling = True if getattr(args, "profile", False) else None  # None: the manifest's setting stands
        # verify compares the reference itself, and reports the numbers: no separate self-check first.
        policy = "off" if args.command == "verify" else getattr(args, "self_check", None)
        rt = load(provider=getattr(args, "provider", None), intra_op_threads=threads, enable_profiling=profiling,
                  self_check=policy)
    except NoVariant as exc:
        return _fail(EXIT_SELF_CHECK if exc.self_check_failed else EXIT_BUNDLE, str(exc))
    except (BundleError, ValueError) as exc:
        return _fail(EXIT_BUNDLE, str(exc))
    except Exception as exc:  # the runtime refused the artifact
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _fail(EXIT_BUNDLE, f"cannot load the model: {reason}")
    from runner.variants import skipped_line

    for skipped in rt.skipped_variants:  # a fallback in use is never silent
        print(skipped_line(skipped), file=sys.stderr)
    with rt:
        try:
            if args.command == "info":
                print(json.dumps(rt.get_model_info(), indent=2))
            elif args.command == "run":
                outputs = rt.infer(_run_inputs(args, rt.preprocessing, rt.preprocessed_input))
                _write_outputs(outputs, args.output, rt.rank_labels(outputs, args.top_k), args.json)
            elif args.command == "bench":
                from runner.compare import peak_rss_mb

                stats: dict[str, Any] = rt.benchmark(args.runs, args.warmup, profile=args.profile)
                stats["peak_rss_mb"] = peak_rss_mb()
                stats["provider"] = rt.get_provider_info()["name"]
                if args.json:
                    print(json.dumps(stats))
                else:
                    print(f"{stats['provider']}: p50 {stats['p50_time_ms']:.3f} ms, "
                          f"p90 {stats['p90_time_ms']:.3f} ms, p99 {stats['p99_time_ms']:.3f} ms, "
                          f"{stats['fps']:.1f} inferences/s over {args.runs} runs, "
                          f"peak RSS {stats['peak_rss_mb'] or 0:.0f} MiB")
                    if args.profile:
                        from runner.profile import table_lines

                        print("\n".join(table_lines(stats["profile"])))
            elif args.command == "verify":
                problems = rt.check_integrity()
                if problems:
                    return _fail(EXIT_BUNDLE, "bundle integrity check failed: " + "; ".join(problems))
                report = rt.verify()
                if args.json:
                    print(json.dumps(report, default=float))
                else:
                    for name, m in report["outputs"].items():
                        keys = ("max_abs", "max_rel", "cosine", "top1_agreement")
                        line = ", ".join(f"{k}={m[k]:.3g}" for k in keys if k in m)
                        print(f"{name}: {line or 'exact'} mismatches={m.get('mismatches')}")
                    print(f"verification {report['status']} on {report['provider']}")
                if report["status"] != "passed":
                    for failure in report["failures"]:
                        print(f"  {failure}", file=sys.stderr)
                    return EXIT_VERIFY
        except InputError as exc:
            return _fail(EXIT_INPUT, str(exc))
        except ValueError as exc:
            return _fail(EXIT_INPUT, str(exc))
        except InferenceTimeout as exc:
            return _fail(EXIT_TIMEOUT, str(exc))
    return EXIT_OK
