"""How deeply a serialized ONNX model nests subgraphs, read off the protobuf wire format.

protobuf refuses messages nested deeper than 100 levels. protobuf 7 says so ("MaxDepth"); protobuf
6 (which the kserve SDK pins) only says "Error parsing message". To keep the error useful on both,
a model that fails to parse is walked along the only path that nests without bound (graph -> node
-> attribute -> subgraph) to measure its depth. Iterative, and bounded by the file's bytes.
"""

from __future__ import annotations

# field numbers (onnx.proto): ModelProto.graph 7, ModelProto.functions 25, GraphProto.node 1,
# FunctionProto.node 7, NodeProto.attribute 5, AttributeProto.g 6 and .graphs 11.
_LEN = 2
_MODEL, _GRAPH, _FUNCTION, _NODE, _ATTRIBUTE = range(5)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 25: _FUNCTION},
    _GRAPH: {1: _NODE},
    _FUNCTION: {7: _NODE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {6: _GRAPH, 11: _GRAPH},
}
# Message levels per subgraph level (graph, node, attribute), and protobuf's limit.
PROTOBUF_DEPTH_LIMIT = 100


class _Malformed(Exception):
    pass


def message_depth(data: bytes) -> int | None:
    """The deepest message nesting along graph/node/attribute/subgraph; None when the bytes are not
    well-formed protobuf along that path (a parse error of another kind)."""
    try:
        return _walk(data)
    except _Malformed:
        return None


def _walk(data: bytes) -> int:
    stack = [(0, len(data), _MODEL, 1)]
    deepest = 1
    while stack:
        pos, end, kind, depth = stack.pop()
        deepest = max(deepest, depth)
        children = _CHILDREN[kind]
        while pos < end:
            key, pos = _varint(data, pos, end)
            field, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos, end)
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            elif wire == _LEN:
                size, pos = _varint(data, pos, end)
                if pos + size > end:
                    raise _Malformed
                if field in children:
                    stack.append((pos, pos + size, children[field], depth + 1))
                pos += size
            else:
                raise _Malformed
            if pos > end:
                raise _Malformed
    return deepest


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise _Malformed
