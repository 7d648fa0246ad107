#!/usr/bin/env python3
"""Reads a GGUF file with the ggml project's own reader (the PyPI `gguf` package) and
writes what it holds as JSON, so the Rust tests can check forja's GGUF export against
an implementation they did not write.

  python scripts/checks/gguf-check.py FILE.gguf OUT_JSON

OUT_JSON  {"version": int, "metadata": {key: value}, "tensors": {name: {"shape": [...],
          "type": "F32" | "F16" | "Q8_0", "values": nested lists (dequantized, float32)}}}
Metadata values: numbers, strings and booleans as they are; arrays as lists. Shapes are
row-major (PyTorch order: the reverse of ggml's dimensions). Any error: a message on
stderr and exit status 1.
"""
import json
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize


def field_value(field):
    types = field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        items = [field.parts[i] for i in field.data]
        if types[1] == GGUFValueType.STRING:
            return [bytes(x).decode("utf-8") for x in items]
        return [x.tolist()[0] for x in items]
    part = field.parts[field.data[0]]
    if types[0] == GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    value = part.tolist()[0]
    return bool(value) if types[0] == GGUFValueType.BOOL else value


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        reader = GGUFReader(sys.argv[1])
        metadata = {name: field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
        tensors = {}
        for t in reader.tensors:
            values = dequantize(t.data, t.tensor_type).astype(np.float32)
            shape = [int(d) for d in reversed(t.shape.tolist())]
            tensors[t.name] = {"shape": shape, "type": t.tensor_type.name, "values": values.reshape(shape).tolist()}
        version = field_value(reader.fields["GGUF.version"])
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            json.dump({"version": version, "metadata": metadata, "tensors": tensors}, f)
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        print(f"gguf-check: error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
