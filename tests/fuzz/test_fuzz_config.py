"""Fuzzing gpux.yml: generated texts → compile_project → success or one GpuxcError line.

What is generated (each example is one gpux.yml next to fixtures.models.mlp(), x[N,8] -> probs[N,3]):

- *plausible* (most): the real schema's keys, each value valid for this model most of the
  time and otherwise wrong (wrong type, out of range, unknown enum, hostile strings, huge or
  negative numbers, unicode, NUL, line breaks), then 0-3 *damages*: unknown or misspelt keys,
  duplicate keys, YAML tags (``!!binary``, ``!!timestamp``, ``!!python/...``, ``!custom``,
  ``!!set``), anchors and aliases, merge keys, complex keys, deep nesting, a section replaced
  by a value of another type. Written in block or flow style, in varied scalar spellings.
- *document*: empty documents, comments only, non-mapping roots, several documents,
  directives, alias bombs, self-referencing aliases, nesting thousands deep, huge numbers.
- *mutated*: a valid gpux.yml mutated as text or bytes (deletions, duplications, insertions
  of YAML syntax characters, control characters, invalid UTF-8, BOMs, CRLF, tabs, truncation).

Every example runs ``compile_project`` end to end for the cpu target (an accepted config is
planned, compiled, verified and published; nothing is cut short) and is checked by
tests/fuzz/harness.py. Derandomized, no example database: every run tries the same inputs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures import models
from tests.fuzz.harness import (
    FIGURES,
    Clock,
    Figures,
    Sandbox,
    examples,
    fuzz_settings,
    isolate,
    memory_cap,
    report,
    restart_isolation_helper,
)
from tests.fuzz.yamltext import Y, from_data, render

# 800 examples take about 45 s on a 2-core host (the suite's other tests share the budget); the
# default keeps `make test` under 15 minutes. GPUXC_FUZZ_EXAMPLES sets another count.
EXAMPLES = examples(800)
FUZZ_SETTINGS = fuzz_settings(EXAMPLES)

# -- values --------------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "", " ", "\x00", "a\x00b", "\n", "a\nb", "a\rb", "\t", "\u2028", "\x1b[2J", "\ud800", "\ufeff", "\u202e",
    "😀", "名前", "null", "~", "true", "1.0", "0x10", "-", ".", "..", "../../../etc/passwd", "/etc/passwd",
    "/dev/zero", "C:\\Windows", "\\\\server\\share", "$(id)", "`id`", "'; import os; os.system('id') #",
    '"""', "{{ 7 * 7 }}", "{% for x in y %}", "<script>", "%s%n", "x" * 300, "a b", "a/b", "-rf",
    "http://example.com/m.onnx", "file:///etc/passwd",
]  # fmt: skip
HUGE_INTS = [2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, 10**100]
ODD_FLOATS = [0.0, -0.0, 1e-300, 5e-324, 1e300, math.inf, -math.inf, math.nan, 0.5, -0.5, 1.5, 2.0]

wrong = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2, *HUGE_INTS, -(2**63) - 1, *ODD_FLOATS]),
    st.sampled_from(HOSTILE_STRINGS),
    # Small, or more than any memory holds: a batch size of 10**8 would make an example allocate
    # gigabytes for seconds (the bound on generated inputs is tested in tests/unit).
    st.integers(-(2**16), 2**16) | st.integers(2**31, 2**70) | st.integers(-(2**70), -(2**31)),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from([[], {}, [1, 2], ["a"], {"a": 1}, [[None]], {"": None}]),
)


# Image and text blocks, mixed kinds, stray fields, bad values.
PREPROCESSING_BLOCKS: list[dict[str, Any]] = [
    {}, {"tokenizer": None}, {"resize": None}, {"normalize": {"mean": [0.5]}},
    {"resize": [8, 8], "normalize": "imagenet"}, {"normalize": "-1-1", "channels": "bgr"},
    {"resize": [8], "layout": "nhwc"}, {"tokenizer": "tokenizer.json", "max_length": 4},
    {"tokenizer": "bert-base-uncased"}, {"resize": [8, 8], "tokenizer": "t.json"}, {"channels": "gray"},
    {"resize": [4, 4], "resize_mode": "letterbox", "pad_value": 300},
]  # fmt: skip


def mostly(valid: st.SearchStrategy[Any], weight: int = 14) -> st.SearchStrategy[Any]:
    """``valid`` about weight/(weight+1) of the time, else a wrong or hostile value."""
    return st.integers(0, weight).flatmap(lambda i: wrong if i == 0 else valid)


def text_field(valid: st.SearchStrategy[Any], weight: int = 14) -> st.SearchStrategy[Any]:
    """For a string setting: mostly ``valid``, else a hostile string (still a string, so it gets past
    type checks to the stages that print, compare or write it), else a wrong value."""
    hostile = st.sampled_from(HOSTILE_STRINGS) | st.text(max_size=12)
    return st.integers(0, weight).flatmap(lambda i: wrong if i == 0 else hostile if i <= 2 else valid)


names = st.sampled_from(["demo", "mlp", "a", "A1.b_c-d", "x" * 100, "9lives", "demo"])
texts = st.text(max_size=30)
json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
labels3 = st.lists(st.text(min_size=1, max_size=8), min_size=3, max_size=3, unique=True)
# Input shapes valid for x[N, 8]. Dims stay small: a huge batch dim is tried via `wrong`.
x_shapes = st.sampled_from([[None, 8], ["N", 8], [-1, 8], [1, 8], [2, 8], ["batch", 8], [3, 8], [2**40, 8]])
# Sizes that reach the reference inputs: small ones, and ones no memory holds (never in between:
# a batch of 2**27 would make the example allocate gigabytes instead of failing fast).
batch_sizes = st.one_of(st.integers(1, 4), st.sampled_from([2**31 - 1, 2**40, 2**63 - 1]))
probs_shapes = st.sampled_from([[None, 3], ["N", 3], [-1, 3], [1, 3], None])


@st.composite
def tensor_section(draw: st.DrawFn, name: str, kind: str) -> Any:
    spec: dict[str, Any] = {}
    if draw(st.booleans()):
        spec["type"] = draw(mostly(st.sampled_from(["float32", "float", "float32"])))
    if draw(st.booleans()):
        spec["shape"] = draw(mostly(x_shapes if kind == "inputs" else probs_shapes))
    if draw(st.integers(0, 3)) == 0:
        spec["description"] = draw(text_field(texts))
    if kind == "inputs" and draw(st.integers(0, 4)) == 0:
        spec["max_length"] = draw(mostly(st.integers(1, 64)))
    if kind == "outputs" and draw(st.booleans()):
        spec["labels"] = draw(mostly(labels3 | st.lists(text_field(st.just("a")), min_size=3, max_size=3)))
    if draw(st.integers(0, 5)) == 0:
        spec["required"] = draw(mostly(st.just(True)))
    tensor = draw(text_field(st.just(name)))
    if draw(st.booleans()):  # mapping form
        return Y("map", [(from_data(tensor), from_data(spec or None))])  # the key may be any wrong value
    return [{"name": tensor, **spec}]


@st.composite
def build_section(draw: st.DrawFn) -> dict[str, Any]:
    build: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        build["targets"] = draw(
            mostly(
                st.sampled_from([["cpu"], ["cpu", "openvino"], ["openvino", "cpu"]])
                | st.lists(text_field(st.just("cpu")))
            )
        )
    if draw(st.integers(0, 3)) == 0:
        build["optimization_level"] = draw(mostly(st.sampled_from(["none", "basic", "extended", None])))
    precision = draw(mostly(st.sampled_from(["fp32", "fp16", "int8-dynamic", "int8-static", "auto"])))
    if precision != "fp32" or draw(st.booleans()):
        build["precision"] = precision
    if draw(st.integers(0, 3)) == 0:
        build["optimize"] = draw(mostly(st.sampled_from(["fixed", "auto"])))
    if precision == "int8-static" or draw(st.integers(0, 5)) == 0:
        cal: dict[str, Any] = {}
        source = draw(st.sampled_from(["random", "calib.npz", "calib", "npy", "missing.npz", ".", "model.onnx"]))
        if source == "random":
            cal["random"] = draw(mostly(st.just(True)))
        else:
            cal["data"] = draw(text_field(st.just(source)))
        if draw(st.booleans()):
            # Few samples: each is an ONNX Runtime run (100000, the schema's maximum, would take minutes).
            cal["samples"] = draw(mostly(st.integers(1, 8)))
        if draw(st.booleans()):
            cal["method"] = draw(mostly(st.sampled_from(["minmax", "entropy", "percentile"])))
        build["calibration"] = cal
    if draw(st.integers(0, 3)) == 0:
        keys = ["atol", "rtol", "min_cosine", "min_top1", "max_mismatch_ratio"]
        build["tolerance"] = {
            k: draw(mostly(st.floats(0, 1)))
            for k in draw(st.lists(st.sampled_from(keys), unique=True, max_size=3))
        }  # fmt: skip
    if draw(st.integers(0, 3)) == 0:
        shape = st.sampled_from([[1, 8], [2, 8], [0, 8], [1, 9], [2**33, 8]])
        build["shapes"] = Y("map", [(from_data(draw(text_field(st.just("x")))), from_data(draw(mostly(shape))))])
    if draw(st.integers(0, 3)) == 0:
        build["seed"] = draw(mostly(st.integers(0, 2**64)))
    if draw(st.integers(0, 3)) == 0:
        cpu = st.fixed_dictionaries(
            {},
            optional={
                "host_specific": mostly(st.booleans()),
                "intra_op_threads": mostly(st.integers(0, 2)),
                "inter_op_threads": mostly(st.integers(0, 2)),
                "execution_mode": mostly(st.sampled_from(["sequential", "parallel"])),
                "simplify": mostly(st.sampled_from(["off", "onnxslim", "onnxsim"])),
                "ort_format": mostly(st.booleans()),
            },
        )
        target = draw(text_field(st.sampled_from(["cpu", "openvino"])))
        build["options"] = Y("map", [(from_data(target), from_data(draw(mostly(cpu))))])  # any key, even a list
    return build


@st.composite
def plausible_config(draw: st.DrawFn) -> dict[str, Any]:
    config: dict[str, Any] = {"name": draw(text_field(names))}
    if draw(st.integers(0, 2)) == 0:
        config["version"] = draw(mostly(st.sampled_from(["1.0.0", "2", "0.1-rc.1+build_5", 1.0, 3])))
    if draw(st.integers(0, 3)) == 0:
        config["description"] = draw(text_field(texts))
    model: dict[str, Any] = {
        "source": draw(
            text_field(
                st.sampled_from(["./model.onnx", "model.onnx", "../p/model.onnx", "sub/../model.onnx", "./model.onnx"])
            )
        )  # fmt: skip
    }
    if draw(st.integers(0, 3)) == 0:
        model["format"] = draw(mostly(st.just("onnx")))
    if draw(st.integers(0, 3)) == 0:
        model["version"] = draw(mostly(st.sampled_from(["3", 3, 1.5])))
    config["model"] = model
    if draw(st.integers(0, 2)) == 0:
        config["inputs"] = draw(tensor_section("x", "inputs"))
    if draw(st.integers(0, 2)) == 0:
        config["outputs"] = draw(tensor_section("probs", "outputs"))
    if draw(st.integers(0, 2)) == 0:
        runtime: dict[str, Any] = {}
        if draw(st.booleans()):
            gpu = {}
            if draw(st.booleans()):
                gpu["memory"] = draw(mostly(st.sampled_from(["2GB", "1GiB", "512MB", 1073741824, "1KB", "0"])))
            if draw(st.booleans()):
                gpu["backend"] = draw(mostly(st.sampled_from(["auto", "cuda", "tensorrt", "cpu", "openvino"])))
            runtime["gpu"] = gpu
        if draw(st.booleans()):
            runtime["batch_size"] = draw(mostly(batch_sizes))
        if draw(st.booleans()):
            runtime["timeout"] = draw(mostly(st.floats(0.1, 60)))
        if draw(st.booleans()):
            runtime["enable_profiling"] = draw(mostly(st.booleans()))
        config["runtime"] = runtime
    if draw(st.integers(0, 2)) == 0:
        serving_values = {
            "host": text_field(st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "localhost"])),
            "port": st.integers(1, 65535),
            "batch_size": st.integers(1, 8),
            "max_batch_size": st.integers(1, 8),
            "max_queue_delay": st.floats(0, 10),
            "timeout": st.floats(0.1, 60),
            "max_workers": st.integers(1, 4),
            "max_concurrency": st.integers(1, 100),
            "max_body_bytes": st.integers(1024, 2**30),
        }
        keys = draw(st.lists(st.sampled_from(sorted(serving_values)), unique=True, max_size=4))
        config["serving"] = {k: draw(mostly(serving_values[k])) for k in keys}
    if draw(st.integers(0, 7)) == 0:  # image and text blocks, mixed kinds, stray fields, bad values
        config["preprocessing"] = draw(mostly(st.sampled_from(PREPROCESSING_BLOCKS)))
    if draw(st.integers(0, 3)) == 0:
        pairs = st.lists(st.tuples(text_field(st.text(max_size=8)), json_like), max_size=4)  # keys: any value
        config["metadata"] = draw(mostly(pairs.map(lambda kv: Y("map", [(from_data(k), from_data(v)) for k, v in kv]))))
    if draw(st.booleans()):
        config["build"] = draw(build_section())
    return config


# -- damages: YAML features and schema breakage on the node tree -------------------------

TAGS = ["!!str", "!!int", "!!float", "!!bool", "!!null", "!!binary", "!!timestamp", "!!map", "!!seq", "!!set",
        "!!omap", "!!pairs", "!custom", "!!python/object:os.system", "!!python/name:os.system",
        "!!python/object/apply:os.system", "!<tag:yaml.org,2002:str>", "!<tag:evil.example,2000:x>"]  # fmt: skip
UNKNOWN_KEYS = ["nmae", "Name", "sourc", "model ", "targets", "inputs", "x", "", "1", "__proto__", "<<", "名前"]


def _collections(node: Y, out: list[Y]) -> list[Y]:
    if node.kind in ("map", "seq"):
        out.append(node)
        items = node.value if node.kind == "seq" else [v for _, v in node.value]
        for child in items:
            _collections(child, out)
    return out


def _all_nodes(node: Y, out: list[Y]) -> list[Y]:
    out.append(node)
    if node.kind == "seq":
        for child in node.value:
            _all_nodes(child, out)
    elif node.kind == "map":
        for _, child in node.value:
            _all_nodes(child, out)
    return out


@st.composite
def damaged(draw: st.DrawFn, root: Y) -> tuple[Y, list[str]]:
    """Apply 0-3 damages to the tree (in place); returns it and what was done."""
    done: list[str] = []
    count = draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))
    for index in range(count):
        kind = draw(st.sampled_from(["unknown-key", "duplicate-key", "tag", "alias", "merge", "complex-key",
                                     "deep", "retype", "bomb", "key-type"]))  # fmt: skip
        maps = [n for n in _collections(root, []) if n.kind == "map"]
        nodes = _all_nodes(root, [])
        if kind == "unknown-key" and maps:
            target = draw(st.sampled_from(maps))
            key = draw(st.sampled_from(UNKNOWN_KEYS) | st.text(max_size=8))
            target.value.insert(draw(st.integers(0, len(target.value))), (Y("scalar", key), from_data(draw(wrong))))
        elif kind == "duplicate-key" and maps:
            target = draw(st.sampled_from(maps))
            if target.value:
                key, _ = draw(st.sampled_from(target.value))
                target.value.append((Y("scalar", key.value) if key.kind == "scalar" else key, from_data(draw(wrong))))
        elif kind == "tag":
            draw(st.sampled_from(nodes)).tag = draw(st.sampled_from(TAGS))
        elif kind == "alias" and len(nodes) > 1:
            source = draw(st.sampled_from(nodes))
            source.anchor = source.anchor or f"a{index}"
            # Before the anchor (undefined alias), after it, or inside it (self reference).
            target = draw(st.sampled_from(nodes))
            if target is not root:
                target.kind, target.value, target.tag, target.anchor = "alias", source.anchor, None, None
        elif kind == "merge" and len(maps) > 1:
            source, target = draw(st.sampled_from(maps)), draw(st.sampled_from(maps))
            source.anchor = source.anchor or f"m{index}"
            target.value.append((Y("raw", "<<"), Y("alias", source.anchor)))
        elif kind == "complex-key" and maps:
            target = draw(st.sampled_from(maps))
            target.value.append((from_data(draw(st.sampled_from([[1], {"a": 1}, []]))), Y("scalar", 1)))
        elif kind == "deep" and maps:
            depth = draw(st.sampled_from([17, 63, 64, 65, 200]))
            value: Any = draw(json_like)
            for _ in range(depth):
                value = [value] if draw(st.booleans()) else {"k": value}
            node = from_data(value)
            node.flow = draw(st.booleans())
            draw(st.sampled_from(maps)).value.append((Y("scalar", draw(st.sampled_from(["metadata", "deep"]))), node))
        elif kind == "retype" and maps:
            target = draw(st.sampled_from(maps))
            if target.value:
                i = draw(st.integers(0, len(target.value) - 1))
                target.value[i] = (target.value[i][0], from_data(draw(wrong)))
        elif kind == "bomb" and maps:
            width, levels = draw(st.integers(2, 12)), draw(st.integers(2, 9))
            parts = ["[x, x]"]
            text = "&b0 [" + ", ".join(["x"] * width) + "]"
            for level in range(1, levels):
                text = f"&b{level} [" + ", ".join([f"*b{level - 1}"] * width) + "]"
                parts.append(text)
            bomb = Y("map", [(Y("scalar", f"l{i}"), Y("raw", p)) for i, p in enumerate(parts[1:])], flow=True)
            bomb.value.insert(0, (Y("scalar", "l0"), Y("raw", "&b0 [" + ", ".join(["x"] * width) + "]")))
            draw(st.sampled_from(maps)).value.append((Y("scalar", "metadata"), bomb))
        elif kind == "key-type" and maps:
            target = draw(st.sampled_from(maps))
            raw_key = draw(
                st.sampled_from(["2001-12-14", "!!binary AAAA", "~", "yes", "1.5", "0x1f", ".inf", "!!int x"])
            )
            target.value.append((Y("raw", raw_key), Y("scalar", 1)))
        else:
            continue
        done.append(kind)
    for node in _all_nodes(root, []):  # scalar spellings and flow collections, drawn per node
        if node.kind == "scalar":
            node.style = draw(st.sampled_from(["plain", "plain", "plain", "single", "double", "ascii", "alt"]))
        elif node.kind in ("map", "seq") and draw(st.integers(0, 9)) == 0:
            node.flow = True
    return root, done


DOCUMENTS = [
    "", "\n", "---\n", "...\n", "---\n...\n", "# only a comment\n", "null\n", "~\n", "[]\n", "{}\n", "- a\n- b\n",
    "42\n", "'name: demo'\n", "!!binary AAAA\n", "--- !!map\nname: demo\n", "--- !!set\n? a\n",
    "name: demo\nmodel: {source: ./model.onnx}\n---\nname: other\n",
    "%YAML 1.1\n---\nname: demo\nmodel: {source: ./model.onnx}\n",
    "%YAML 1.3\n---\nname: demo\n", "%YAML 2.0\n---\nname: demo\n",
    "%TAG ! tag:evil.example,2000:\n---\nname: !x demo\n",
    "&a [*a]\n", "&a {k: *a}\n", "name: *undefined\n", "name: &a demo\nmodel: &a {source: ./model.onnx}\n",
    "name: demo\nmodel: {source: ./model.onnx}\nmetadata: &a {k: *a}\n",
    "\ufeffname: demo\nmodel: {source: ./model.onnx}\n", "name:\tdemo\n", "\tname: demo\n",
    "name: demo\r\nmodel:\r\n  source: ./model.onnx\r\n", "name: demo\rmodel: {source: ./model.onnx}\r",
    "name: demo\nmodel:\n  source: ./model.onnx\n  source: ./model.onnx\n",
    "? name\n: demo\nmodel: {source: ./model.onnx}\n", "name: [demo\n", "name: 'demo\n", 'name: "demo\n',
    "name: demo\nmodel: {source: ./model.onnx}\n<<: {name: x}\n", "name: !!python/object/apply:os.system [id]\n",
    "!!python/object/new:os.system [id]\n", "name: demo\nmodel: {source: ./model.onnx}\nruntime: {batch_size: 0x_ff}\n",
]  # fmt: skip


@st.composite
def special_document(draw: st.DrawFn) -> tuple[str, bytes]:
    choice = draw(st.integers(0, 9))
    if choice < 5:
        return "document", draw(st.sampled_from(DOCUMENTS)).encode("utf-8")
    base = "name: demo\nmodel: {source: ./model.onnx}\n"
    if choice == 5:  # nesting
        depth = draw(st.sampled_from([10, 64, 65, 100, 1000, 5000, 20000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
        return "deep", (base + "metadata: {k: " + opener * depth + closer * depth + "}\n").encode()
    if choice == 6:  # numbers
        digits = draw(st.sampled_from([20, 300, 4300, 4301, 5000, 20000]))
        token = draw(st.sampled_from(["1" * digits, "0x" + "f" * digits, "0b" + "1" * digits, "0o" + "7" * digits,
                                      "1" * digits + ".5", "1e" + "9" * min(digits, 20), "1:" * 50 + "1",
                                      "-" + "9" * digits]))  # fmt: skip
        key = draw(st.sampled_from(["runtime: {batch_size: %s}", "build: {seed: %s}", "metadata: {k: %s}",
                                    "serving: {port: %s}", "version: %s", "%s: x"]))  # fmt: skip
        return "number", (base + key % token + "\n").encode()
    if choice == 7:  # alias bomb at the top level
        width, levels = draw(st.integers(2, 10)), draw(st.integers(2, 10))
        lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
        return "bomb", (base + "metadata:\n" + "\n".join("  " + line for line in lines) + "\n").encode()
    if choice == 8:  # many keys or a long line
        n = draw(st.sampled_from([1000, 20000]))
        if draw(st.booleans()):
            return "wide", (base + "metadata:\n" + "".join(f"  k{i}: {i}\n" for i in range(n))).encode()
        return "wide", (base + "description: " + "x" * (n * 10) + "\n").encode()
    tagged = draw(st.sampled_from(["!!timestamp 2001-99-99", "!!timestamp 2001-12-14t21:59:43.10+99:00",
                                   "!!int x", "!!int 0x", "!!bool x", "!!float x", "!!binary '!!!'", "!!binary AAAA",
                                   "!!timestamp 2001-12-14", "2001-12-14 21:59:43.10 +99:00", "!!null x",
                                   "!!str", "!!float 1e999", "!!int 1_000_000", "!!int 190:20:30",
                                   "!!timestamp 99999-12-14"]))  # fmt: skip
    key = draw(st.sampled_from(["name", "version", "description", "metadata: {k", "runtime: {batch_size",
                                "build: {seed", "model: {source"]))  # fmt: skip
    text = "name: demo\n" if key.startswith("model") else base.replace("name: demo\n", "") if key == "name" else base
    if draw(st.booleans()):
        return "scalar-tag", (text + f"{key}: {tagged}{'}' * key.count('{')}\n").encode()
    return "key-tag", (base + draw(st.sampled_from(["", "metadata:\n  "])) + f"{tagged}: 1\n").encode()


SEED_CONFIGS = [
    b"name: demo\nmodel:\n  source: ./model.onnx\n",
    b"""name: demo
version: 1.0.0
description: A tiny MLP
model:
  source: ./model.onnx
  format: onnx
inputs:
  x:
    type: float32
    shape: [-1, 8]
outputs:
  probs:
    type: float32
    shape: [-1, 3]
    labels: [a, b, c]
runtime:
  gpu:
    memory: 2GB
    backend: auto
  batch_size: 2
  timeout: 30
serving:
  host: 127.0.0.1
  port: 8080
metadata:
  license: MIT
  tags: [x, y]
build:
  targets: [cpu]
  precision: int8-static
  calibration:
    data: calib.npz
    samples: 4
  tolerance:
    atol: 1.0e-4
  shapes:
    x: [2, 8]
  seed: 0
  options:
    cpu:
      intra_op_threads: 1
""",
]
YAML_BYTES = list(b":-[]{}&*!|>'\"#%@`,?~ \t\n\r\\") + [0, 0x85, 0xA0, 0xC3, 0xFF, 0xFE, 0xEF, 0xBB, 0xBF, 0x1B]


@st.composite
def mutated_text(draw: st.DrawFn) -> tuple[str, bytes]:
    data = bytearray(draw(st.sampled_from(SEED_CONFIGS)))
    ops = draw(st.lists(st.sampled_from(["delete", "duplicate", "insert", "flip", "truncate", "swap-lines",
                                         "indent", "crlf", "bom", "utf16"]), min_size=1, max_size=4))  # fmt: skip
    for op in ops:
        n = len(data)
        at = draw(st.integers(0, max(n - 1, 0)))
        if op == "delete" and n:
            del data[at : at + draw(st.integers(1, 12))]
        elif op == "duplicate" and n:
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
        elif op == "insert":
            data[at:at] = bytes(draw(st.lists(st.sampled_from(YAML_BYTES), min_size=1, max_size=4)))
        elif op == "flip" and n:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "swap-lines":
            lines = bytes(data).split(b"\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
        elif op == "indent":
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = draw(st.sampled_from([b" ", b"  ", b"\t", b"   "])) + lines[i]
            data = bytearray(b"\n".join(lines))
        elif op == "crlf":
            data = bytearray(bytes(data).replace(b"\n", b"\r\n"))
        elif op == "bom":
            data[0:0] = b"\xef\xbb\xbf"
        elif op == "utf16":
            data = bytearray(bytes(data).decode("utf-8", "replace").encode("utf-16"))
    return "mutated", bytes(data)


@st.composite
def gpux_yml(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.integers(0, 9))
    if kind < 6:
        root, done = draw(damaged(from_data(draw(plausible_config()))))
        root.flow = draw(st.integers(0, 9)) == 0
        return "plausible" + (f"+{'+'.join(done)}" if done else ""), render(root).encode("utf-8")
    if kind < 8:
        return draw(special_document())
    return draw(mutated_text())


# -- the project -----------------------------------------------------------------------------


def write_template(folder: Path) -> None:
    """mlp plus calibration data in every layout gpuxc reads (one sample of x is [1, 8])."""
    onnx.save(models.mlp(), folder / "model.onnx")
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.standard_normal((4, 1, 8)).astype(np.float32))
    (folder / "calib").mkdir()
    (folder / "npy").mkdir()
    for i in range(2):
        np.savez(folder / "calib" / f"s{i}.npz", x=rng.standard_normal((1, 8)).astype(np.float32))
        np.save(folder / "npy" / f"s{i}.npy", rng.standard_normal((1, 8)).astype(np.float32))
    (folder / "gpux.yml").write_bytes(SEED_CONFIGS[0])


def test_fuzz_gpux_yml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuxc.build.pipeline import compile_project

    figures = FIGURES["gpux.yml"] = Figures("gpux.yml")
    clock = Clock()
    sandbox = Sandbox(tmp_path / "sandbox", figures)
    write_template(sandbox.template)
    isolate(monkeypatch, sandbox)
    restart_isolation_helper()
    sandbox.make_good_bundle(lambda project, out: compile_project(project, ["cpu"], out))
    sandbox.freeze()

    @FUZZ_SETTINGS
    @given(doc=gpux_yml(), preexisting=st.integers(0, 4))
    def one(doc: tuple[str, bytes], preexisting: int) -> None:
        kind, text = doc
        figures.kinds[kind.split("+")[0]] += 1
        sandbox.run({"gpux.yml": text}, f"{kind}: gpux.yml = {text[:2000]!r}", preexisting=preexisting == 0)

    try:
        with memory_cap():
            one()
    finally:
        figures.seconds = clock.seconds()
        restart_isolation_helper()
    assert figures.examples >= EXAMPLES
    assert figures.compiled > 0 and figures.rejected, figures.line()  # both paths are exercised
    assert figures.violation_count == 0, report(figures)
