"""Fuzzing model.onnx: mutated models → compile_project → success or one GpuxcError line.

What is generated (each example is one model.onnx beside a minimal gpux.yml, a valid external
data file ``weights.bin``, a symlink ``link.bin`` to a file outside the project and a folder
``sub/``), starting from the small models of fixtures/models.py (MLPs with symbolic or fixed
batch, a CNN, several mixed-dtype inputs/outputs, If subgraphs, Constant-node weights, the
ai.onnx.ml domain, int64 token inputs, a scalar input, IR 3 with initializers as inputs, and an
MLP whose weights are external data):

- *bytes* (a third): the serialized model with 1-4 byte-level mutations: bit flips, bytes set to
  0x00/0xff/0x7f/0x80, truncation, insertion, deletion, duplication of a span, junk appended,
  and splicing with another model;
- *structured* (the rest): 1-3 mutations through the protobuf API: random dims on inputs,
  outputs and initializers (0, negative, huge, symbolic, unicode), element types (every ONNX
  type and undefined ones), op types and domains, attributes (added, removed, retyped, huge or
  NaN values, subgraphs), dangling node inputs and outputs, missing, duplicate and
  input-shadowing initializers, duplicate nodes and inputs, bogus opset imports and IR
  versions, external-data entries with hostile locations (absolute, ``..``, a symlink, NUL,
  the model itself, a folder) and offsets/lengths, raw_data of the wrong size, sparse
  initializers, non-tensor inputs, nested If subgraphs up to 1000 deep, a recursive local
  function, huge metadata strings, weights set to NaN, infinities, huge or denormal values
  (the model stays valid: these reach verification); a quarter also get a byte-level mutation
  on top.

Every example runs ``compile_project`` end to end for the cpu target and is checked by
tests/fuzz/harness.py, which here also fails any Python-level open of the sandbox's
"outside" folder (where hostile external-data locations point).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper, numpy_helper

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

# 1000 examples take about 55 s on a 2-core host (the suite's other tests share the budget); the default
# keeps `make test` under 15 minutes. GPUXC_FUZZ_EXAMPLES sets another count (CI nightly: more).
EXAMPLES = examples(1000)
FUZZ_SETTINGS = fuzz_settings(EXAMPLES)

GPUX_YML = b"name: demo\nmodel:\n  source: ./model.onnx\n"


def _base_models() -> dict[str, onnx.ModelProto]:
    return {
        "mlp": models.mlp(),
        "mlp-fixed": models.mlp(2),
        "cnn": models.tiny_cnn(),
        "multi-io": models.multi_io(),
        "if": models.with_if(),
        "constant-weights": models.constant_weights(),
        "ml-domain": models.ml_domain(),
        "text": models.int64_text_model(),
        "scalar": models.scalar_input(),
        "legacy": models.legacy_initializer_inputs(),
    }


BASES = _base_models()
BASE_BYTES = {name: m.SerializeToString() for name, m in BASES.items()}
EXTERNAL = "mlp-external"  # mlp with weights in weights.bin: its bytes come from the template folder

# Dims and attribute values: small ones and ones no memory holds, never in between (an example
# must fail fast or finish fast, not allocate gigabytes).
DIMS = [0, 1, 2, 3, 7, 8, 9, 16, -1, -7, 2**40, 2**62, 2**63 - 1]
DIM_PARAMS = ["", "N", "?", "batch", "名前", "a\nb", "x" * 1000, "-1", "0"]
INTS = [0, 1, 2, 3, -1, -2, 7, 2**40, 2**62, 2**63 - 1, -(2**63)]
FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-45, 3.4e38, math.inf, -math.inf, math.nan]
STRINGS = ["", "x", "NOTSET", "a\nb", "\x00", "名前", "x" * 10000, "../../etc/passwd"]
ELEM_TYPES = list(range(0, 27)) + [99, 1 << 20, -1]
OPS = ["Relu", "Add", "MatMul", "Gemm", "Conv", "Softmax", "Identity", "Constant", "Reshape", "Gather", "Cast",
       "If", "Loop", "Scan", "Split", "Concat", "Transpose", "Flatten", "ArgMax", "Dropout", "Shape", "Size",
       "NonZero", "TopK", "LSTM", "", "NotAnOp", "relu", "Softmax\x00", "FusedMatMul", "QLinearConv"]  # fmt: skip
DOMAINS = ["", "ai.onnx", "ai.onnx.ml", "com.microsoft", "evil.example", "ai.onnx.preview.training", "local"]
ATTR_NAMES = ["axis", "axes", "perm", "kernel_shape", "pads", "strides", "to", "value", "then_branch", "else_branch",
              "body", "alpha", "beta", "epsilon", "transA", "transB", "keepdims", "shape", "bogus"]  # fmt: skip
OPSET_VERSIONS = [0, 1, 6, 7, 9, 13, 17, 21, 22, 23, 99, -1, 2**62]
IR_VERSIONS = [0, 1, 3, 4, 7, 8, 9, 10, 11, 12, 99, -1, 2**62]
EXT_LOCATIONS = [
    "weights.bin", "./weights.bin", "link.bin", "sub", "sub/../weights.bin", "../outside/secret.bin",
    "../../outside/secret.bin", "sub/../../outside/secret.bin", "/etc/passwd", "/proc/self/environ",
    "C:/x.bin", "C:\\x.bin", "\\\\server\\x.bin", "..\\outside\\secret.bin", "model.onnx", "", ".",
    "nonexistent.bin", "weights.bin\x00.txt", "~/x.bin", "%2e%2e/outside/secret.bin", "weights.bin/",
    "file:///etc/passwd", "sub/./../weights.bin",
]  # fmt: skip
EXT_NUMBERS = ["0", "4", "-1", "abc", "", "99999999999", str(2**41), "1e3", " 4", "0x10", "18446744073709551616"]


# -- helpers ---------------------------------------------------------------------------------


def _value_infos(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    return [*graph.input, *graph.output, *graph.value_info]


def _node_names(graph: onnx.GraphProto) -> list[str]:
    names = [v.name for v in graph.input] + [t.name for t in graph.initializer]
    for node in graph.node:
        names += list(node.output)
    return names


_field = models.proto_field


def _nested_if(depth: int) -> bytes:
    """``y = x`` through ``depth`` nested If nodes (the then-branch nests, the else-branch is a leaf),
    encoded by hand: onnx.helper cannot build more than ~30 levels, which protobuf refuses to parse."""
    tensor3 = _field(1, _field(1, 1) + _field(2, _field(1, _field(1, 3))))  # TypeProto: float[3]

    def info(name: str, tp: bytes) -> bytes:  # ValueInfoProto
        return _field(1, name) + _field(2, tp)

    def node(op: str, inputs: list[str], output: str, attrs: bytes = b"") -> bytes:  # NodeProto
        return b"".join(_field(1, i) for i in inputs) + _field(2, output) + _field(4, op) + attrs

    def graph_attr(name: str, graph: bytes) -> bytes:  # AttributeProto, type GRAPH (5)
        return _field(5, _field(1, name) + _field(6, graph) + _field(20, 5))

    leaf = _field(1, node("Identity", ["x"], "y0")) + _field(2, "g0") + _field(12, info("y0", tensor3))
    inner = leaf
    for level in range(1, depth + 1):
        attrs = graph_attr("then_branch", inner) + graph_attr("else_branch", leaf)
        inner = _field(1, node("If", ["cond"], f"y{level}", attrs)) + _field(2, f"g{level}")
        inner += _field(12, info(f"y{level}", tensor3))
    scalar_bool = _field(1, _field(1, 9) + _field(2, b""))
    main = inner + _field(11, info("cond", scalar_bool)) + _field(11, info("x", tensor3))
    return _field(1, 8) + _field(7, main) + _field(8, _field(1, "") + _field(2, 17))


def _recursive_function() -> onnx.ModelProto:
    """A model-local function that calls itself (ONNX forbids it; nothing may recurse forever)."""
    body = [helper.make_node("Loopy", ["a"], ["b"], domain="local")]
    function = helper.make_function("local", "Loopy", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("Loopy", ["x"], ["y"], domain="local")],
        "recursive",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        ir_version=8,
        functions=[function],
    )


# -- structured mutations: each draws what it needs and edits the model in place ------------


def m_dim(draw: st.DrawFn, model: onnx.ModelProto) -> str:
    graph = model.graph
    if draw(st.booleans()) and graph.initializer:
        tensor = draw(st.sampled_from(list(graph.initializer)))
        value = draw(st.sampled_from(DIMS))
        if tensor.dims and draw(st.booleans()):
            tensor.dims[draw(st.integers(0, len(tensor.dims) - 1))] = value
        else:
            tensor.dims.append(value)
        return f"initializer {tensor.name} dims {list(tensor.dims)}"
    infos = _value_infos(graph)
    if not infos:
        return "no value infos"
    info = draw(st.sampled_from(infos))
    shape = info.type.tensor_type.shape
    action = draw(st.sampled_from(["value", "param", "append", "remove", "clear"]))
    if action == "clear":
        info.type.tensor_type.ClearField("shape")
    elif action == "append" or not shape.dim:
        shape.dim.add().dim_value = draw(st.sampled_from(DIMS))
    elif action == "remove":
        del shape.dim[draw(st.integers(0, len(shape.dim) - 1))]
    else:
        dim = shape.dim[draw(st.integers(0, len(shape.dim) - 1))]
        if action == "value":
            dim.dim_value = draw(st.sampled_from(DIMS))
        else:
            dim.dim_param = draw(st.sampled_from(DIM_PARAMS))
    return f"{action} dim of {info.name}"


def m_dtype(draw: st.DrawFn, model: onnx.ModelProto) -> str:
    graph = model.graph
    elem = draw(st.sampled_from(ELEM_TYPES))
    if draw(st.booleans()) and graph.initializer:
        tensor = draw(st.sampled_from(list(graph.initializer)))
        tensor.data_type = elem
        return f"initializer {tensor.name} data_type {elem}"
    infos = _value_infos(graph)
    if not infos:
        return "no value infos"
    info = draw(st.sampled_from(infos))
    info.type.tensor_type.elem_type = elem
    return f"{info.name} elem_type {elem}"


def m_op(draw: st.DrawFn, model: onnx.ModelProto) -> str:
    if not model.graph.node:
        return "no nodes"
    node = draw(st.sampled_from(list(model.graph.node)))
    if draw(st.booleans()):
        node.op_type = draw(st.sampled_from(OPS))
        return f"node {node.name} op_type {node.op_type!r}"
    node.domain = draw(st.sampled_from(DOMAINS))
    return f"node {node.name} domain {node.domain!r}"


def m_attribute(draw: st.DrawFn, model: onnx.ModelProto) -> str:
    if not model.graph.node:
        return "no nodes"
    node = draw(st.sampled_from(list(model.graph.node)))
    action = draw(st.sampled_from(["add", "add", "remove", "retype", "subgraph"]))
    if action == "remove" and node.attribute:
        del node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
        return f"node {node.name} lost an attribute"
    if action == "retype" and node.attribute:
        attr = draw(st.sampled_from(list(node.attribute)))
        attr.type = draw(st.sampled_from(list(range(0, 15)) + [99]))
        return f"node {node.name} attribute {attr.name} type {attr.type}"
    name = draw(st.sampled_from(ATTR_NAMES))
    for i, existing in enumerate(node.attribute):
        if existing.name == name:
            del node.attribute[i]
            break
    if action == "subgraph":
        sub = onnx.GraphProto()
        sub.CopyFrom(draw(st.sampled_from([model.graph, BASES["if"].graph.node[0].attribute[0].g])))
        attr = helper.make_attribute(name, sub)
    else:
        kind = draw(st.sampled_from(["int", "float", "string", "ints", "floats", "tensor", "empty"]))
        value: Any = {
            "int": draw(st.sampled_from(INTS)),
            "float": draw(st.sampled_from(FLOATS)),
            "string": draw(st.sampled_from(STRINGS)),
            "ints": draw(st.lists(st.sampled_from(INTS), max_size=6)),
            "floats": draw(st.lists(st.sampled_from(FLOATS), min_size=1, max_size=4)),
            "tensor": numpy_helper.from_array(np.array(draw(st.sampled_from(INTS[:7])), dtype=np.int64)),
            "empty": [],
        }[kind]
        attr = helper.make_attribute(name, value, attr_type=AttributeProto.INTS if kind == "empty" else None)
    node.attribute.append(attr)
    return f"node {node.name} attribute {name} ({action})"


def m_dangling(draw: st.DrawFn, model: onnx.ModelProto) -> str:
    graph = model.graph
    action = draw(st.sampled_from(["input", "output", "graph-output", "graph-input", "extra-input"]))
    name = draw(st.sampled_from(["nonexistent", "", "x", "W1", *(_node_names(graph)[:6])]))
    if action == "graph-output" and graph.output:
        draw(st.sampled_from(list(graph.output))).name = name
    elif action == "graph-input" and graph.input:
        del graph.input[draw(st.integers(0, len(graph.input) - 1))]
    elif graph.node:
        node = draw(st.sampled_from(list(graph.node)))
        if action == "input" and node.input:
            node.input[draw(st.integers(0, len(node.input) - 1))] = name
        elif action == "output" and node.output:
            node.output[draw(st.integers(0, len(node.output) - 1))] = name
        else:
            node.input.append(name)
    return f"dangling {action} -> {name!r}"


def m_duplicate(draw: st.DrawFn, model: onnx.ModelProto) -> str:
    graph = model.graph
    action = draw(st.sampled_from(["remove-initializer", "duplicate-initializer", "duplicate-node",
                                   "duplicate-input", "shadow-input", "duplicate-output"]))  # fmt: skip
    if action == "remove-initializer" and graph.initializer:
        del graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
    elif action == "duplicate-initializer" and graph.initializer:
        graph.initializer.append(draw(st.sampled_from(list(graph.initializer))))
    elif action == "duplicate-node" and graph.node:
        graph.node.append(draw(st.sampled_from(list(graph.node))))
    elif action == "duplicate-input" and graph.input:
        graph.input.append(draw(st.sampled_from(list(graph.input))))
    elif action == "duplicate-output" and graph.output:
        graph.output.append(draw(st.sampled_from(list(graph.output))))
    elif action == "shadow-input" and graph.input:
        # An initializer named like a real input: IR >= 4 treats it as a default value.
        target = draw(st.sampled_from(list(graph.input)))
        graph.initializer.append(numpy_helper.from_array(np.zeros([1], np.float32), name=target.name))
    return action


def m_opset(draw: st.DrawFn, model: onnx.ModelProto) -> str:
    action = draw(st.sampled_from(["version", "domain", "add", "clear", "ir"]))
    if action == "ir":
        model.ir_version = draw(st.sampled_from(IR_VERSIONS))
        return f"ir_version {model.ir_version}"
    if action == "clear":
        del model.opset_import[:]
        return "no opset imports"
    if action == "add" or not model.opset_import:
        entry = model.opset_import.add()
        entry.domain = draw(st.sampled_from(DOMAINS))
        entry.version = draw(st.sampled_from(OPSET_VERSIONS))
        return f"opset import {entry.domain!r} {entry.version}"
    entry = draw(st.sampled_from(list(model.opset_import)))
    if action == "version":
        entry.version = draw(st.sampled_from(OPSET_VERSIONS))
    else:
        entry.domain = draw(st.sampled_from(DOMAINS))
    return f"opset {entry.domain!r} {entry.version}"


def m_external(draw: st.DrawFn, model: onnx.ModelProto) -> str:
    tensors = [*model.graph.initializer]
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.type == AttributeProto.TENSOR]
    if not tensors:
        return "no tensors"
    tensor = draw(st.sampled_from(tensors))
    if draw(st.integers(0, 3)):
        tensor.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data", "string_data"):
            tensor.ClearField(field)
        tensor.data_location = TensorProto.EXTERNAL
    entries: list[tuple[str, str]] = []
    if draw(st.integers(0, 5)):
        entries.append(("location", draw(st.sampled_from(EXT_LOCATIONS))))
    for key in ("offset", "length"):
        if draw(st.booleans()):
            entries.append((key, draw(st.sampled_from(EXT_NUMBERS))))
    if draw(st.integers(0, 4)) == 0:
        entries.append((draw(st.sampled_from(["checksum", "basepath", "location", "bogus"])), "x"))
    del tensor.external_data[:]
    for key, value in entries:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return f"tensor {tensor.name} external {entries} location {tensor.data_location}"


def m_raw_data(draw: st.DrawFn, model: onnx.ModelProto) -> str:
    if not model.graph.initializer:
        return "no initializers"
    tensor = draw(st.sampled_from(list(model.graph.initializer)))
    action = draw(st.sampled_from(["truncate", "extend", "empty", "both", "wrong-field"]))
    raw = tensor.raw_data
    if action == "truncate":
        tensor.raw_data = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    elif action == "extend":
        tensor.raw_data = raw + b"\x00" * draw(st.sampled_from([1, 3, 4, 4096]))
    elif action == "empty":
        tensor.raw_data = b""
    elif action == "both":
        tensor.float_data.extend([1.0, 2.0])
    else:
        tensor.ClearField("raw_data")
        tensor.int64_data.extend([1, 2, 3])
    return f"initializer {tensor.name} raw_data {action}"


def m_sparse(draw: st.DrawFn, model: onnx.ModelProto) -> str:
    values = numpy_helper.from_array(np.ones(draw(st.sampled_from([1, 2, 3])), np.float32), name="W1")
    indices = numpy_helper.from_array(np.array(draw(st.sampled_from([[0], [5], [-1], [2**40], [0, 0]])), np.int64))
    dims = draw(st.sampled_from([[8, 16], [2], [0], [-1], [2**40]]))
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, dims))
    return f"sparse initializer dims {dims}"


def m_non_tensor(draw: st.DrawFn, model: onnx.ModelProto) -> str:
    if not model.graph.input:
        return "no inputs"
    info = draw(st.sampled_from(list(model.graph.input)))
    elem = helper.make_tensor_type_proto(TensorProto.FLOAT, [3])
    kind = draw(st.sampled_from(["sequence", "map", "optional", "empty"]))
    tp = {
        "sequence": helper.make_sequence_type_proto(elem),
        "map": helper.make_map_type_proto(TensorProto.INT64, elem),
        "optional": helper.make_optional_type_proto(elem),
        "empty": onnx.TypeProto(),
    }[kind]
    info.type.CopyFrom(tp)
    return f"input {info.name} is a {kind}"


def m_strings(draw: st.DrawFn, model: onnx.ModelProto) -> str:
    text = draw(st.sampled_from(STRINGS))
    action = draw(st.sampled_from(["producer", "metadata", "doc", "graph-name", "node-name"]))
    if action == "producer":
        model.producer_name = text
    elif action == "metadata":
        entry = model.metadata_props.add()
        entry.key, entry.value = text, text
    elif action == "doc":
        model.doc_string = text * 100
    elif action == "graph-name":
        model.graph.name = text
    elif model.graph.node:
        draw(st.sampled_from(list(model.graph.node))).name = text
    return f"{action} = {text[:20]!r}"


def m_weights(draw: st.DrawFn, model: onnx.ModelProto) -> str:
    """Weights that stay valid but hold NaN, infinities, huge or denormal values (the model still loads)."""
    inline = [t for t in model.graph.initializer if t.raw_data and t.data_location != TensorProto.EXTERNAL]
    floats = [t for t in inline if t.data_type == TensorProto.FLOAT]
    if not floats:
        return "no float initializers"
    tensor = draw(st.sampled_from(floats))
    values = numpy_helper.to_array(tensor).copy()
    flat = values.reshape(-1)
    value = draw(st.sampled_from([math.nan, math.inf, -math.inf, 3.4e38, 1e-45, 0.0]))
    if draw(st.booleans()):
        flat[:] = value
    else:
        flat[draw(st.integers(0, max(flat.size - 1, 0)))] = value
    tensor.raw_data = values.tobytes()
    return f"initializer {tensor.name} holds {value}"


STRUCTURED = [m_dim, m_dtype, m_op, m_attribute, m_dangling, m_duplicate, m_opset, m_external, m_raw_data,
              m_sparse, m_non_tensor, m_strings, m_weights, m_weights]  # fmt: skip
INTERESTING_BYTES = [0x00, 0xFF, 0x7F, 0x80, 0x01, 0x08, 0x12, 0x1A, 0x22, 0x3A]


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> tuple[bytes, list[str]]:
    buf = bytearray(data)
    done = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate", "append", "splice"]))
        n = len(buf)
        at = draw(st.integers(0, max(n - 1, 0)))
        if op == "flip" and n:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            buf[at] = draw(st.sampled_from(INTERESTING_BYTES))
        elif op == "truncate":
            del buf[at:]
        elif op == "insert":
            buf[at:at] = bytes(draw(st.lists(st.sampled_from(INTERESTING_BYTES), min_size=1, max_size=8)))
        elif op == "delete" and n:
            del buf[at : at + draw(st.integers(1, 16))]
        elif op == "duplicate" and n:
            buf[at:at] = buf[at : at + draw(st.integers(1, 64))]
        elif op == "append":
            buf += bytes(draw(st.lists(st.integers(0, 255), min_size=1, max_size=16)))
        elif op == "splice":
            other = BASE_BYTES[draw(st.sampled_from(sorted(BASE_BYTES)))]
            cut = draw(st.integers(0, len(other)))
            buf = buf[:at] + bytearray(other[cut:])
        done.append(f"{op}@{at}")
    return bytes(buf), done


@st.composite
def mutated_model(draw: st.DrawFn, external_bytes: bytes) -> tuple[str, str, bytes]:
    """(kind, description, model bytes)."""
    base = draw(st.sampled_from([*sorted(BASE_BYTES), EXTERNAL, "nested-if", "recursive-function"]))
    if base == EXTERNAL:
        data = external_bytes
    elif base == "nested-if":
        data = _nested_if(draw(st.sampled_from([1, 2, 5, 20, 30, 31, 100, 1000])))
    elif base == "recursive-function":
        data = _recursive_function().SerializeToString()
    else:
        data = BASE_BYTES[base]
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # noqa: BLE001 - nested deeper than protobuf parses: bytes are all we can mutate
        model = None
    if model is None or draw(st.integers(0, 2)) == 0:
        data, done = draw(byte_mutations(data))
        return "bytes", f"{base}: {done}", data
    done = []
    for _ in range(draw(st.integers(1, 3))):
        mutation = draw(st.sampled_from(STRUCTURED))
        try:
            done.append(f"{mutation.__name__[2:]}: {mutation(draw, model)}")
        except Exception as exc:  # noqa: BLE001 - protobuf or onnx.helper refused the value: no mutation
            done.append(f"{mutation.__name__[2:]}: refused ({type(exc).__name__})")
    try:
        data = model.SerializeToString()
    except Exception as exc:  # noqa: BLE001
        done.append(f"cannot serialize ({type(exc).__name__}); base bytes kept")
    if draw(st.integers(0, 3)) == 0:
        data, more = draw(byte_mutations(data))
        done.append(f"bytes {more}")
    return "structured", f"{base}: {done}", data


def write_template(folder: Path) -> bytes:
    """The project every example starts from; returns the external-data model's bytes."""
    models.save(models.mlp(), folder / "model.onnx", external_data=True)
    external = (folder / "model.onnx").read_bytes()
    (folder / "sub").mkdir()
    os.symlink(os.path.join("..", "outside", "secret.bin"), folder / "link.bin")
    (folder / "gpux.yml").write_bytes(GPUX_YML)
    return external


def test_fuzz_model_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuxc.build.pipeline import compile_project

    figures = FIGURES["model.onnx"] = Figures("model.onnx")
    clock = Clock()
    sandbox = Sandbox(tmp_path / "sandbox", figures, watch_outside_reads=True)
    external = write_template(sandbox.template)
    isolate(monkeypatch, sandbox)
    restart_isolation_helper()
    sandbox.make_good_bundle(lambda project, out: compile_project(project, ["cpu"], out))
    sandbox.freeze()

    @FUZZ_SETTINGS
    @given(mutation=mutated_model(external), preexisting=st.integers(0, 4))
    def one(mutation: tuple[str, str, bytes], preexisting: int) -> None:
        kind, description, data = mutation
        figures.kinds[kind] += 1
        example = f"{kind}: {description[:1500]}; model.onnx of {len(data)} bytes"
        sandbox.run({"model.onnx": data}, example, preexisting=preexisting == 0)

    try:
        with memory_cap():
            one()
    finally:
        figures.seconds = clock.seconds()
        restart_isolation_helper()
    assert figures.examples >= EXAMPLES
    assert figures.compiled > 0 and figures.rejected, figures.line()  # both paths are exercised
    assert figures.violation_count == 0, report(figures)
