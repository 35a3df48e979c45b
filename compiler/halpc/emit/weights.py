"""A device's weights, once: every model file in a device's folder keeps its larger initializers
as ONNX external data in that folder's `weights.bin`, each distinct tensor stored once however
many strips (of however many plans) use it.

`weights.json` beside it says which bytes each model's initializers are, so that the stub, which
has no onnx package, can map the file once and hand the same memory to every session
(`halpc_stub.session.load_sessions`). Without it ONNX Runtime reads the external data itself,
one copy per session: still exact, only larger.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx

WEIGHTS_FILE = "weights.bin"
INDEX_FILE = "weights.json"
MIN_BYTES = 1024  # smaller tensors (shapes, scales, zero points) stay in the model, as onnx's own default
ALIGN = 64  # every tensor starts on a cache line, as an allocator would place it


class FolderWeights:
    """The weights of one device folder while its models are written."""

    def __init__(self) -> None:
        self._blob = bytearray()
        self._offsets: dict[tuple, int] = {}  # (dtype, shape, sha256) -> offset
        self.index: dict[str, dict[str, list]] = {}  # model file -> initializer -> [offset, bytes, dtype, shape]

    def externalize(self, file: str, model: onnx.ModelProto) -> onnx.ModelProto:
        """`model`, changed in place: its initializers of MIN_BYTES or more refer to `weights.bin`."""
        entries = {}
        for init in model.graph.initializer:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            if dtype.itemsize * int(np.prod(init.dims)) < MIN_BYTES:
                continue
            # raw_data is the tensor's bytes, little-endian as numpy's here (a weight copied once
            # less: the whole model's weights pass through here).
            data = init.raw_data if init.HasField("raw_data") else onnx.numpy_helper.to_array(init).tobytes()
            offset = self._place(data, (init.data_type, tuple(init.dims), hashlib.sha256(data).hexdigest()))
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                init.ClearField(field)
            init.data_location = onnx.TensorProto.EXTERNAL
            del init.external_data[:]
            for key, value in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(len(data)))):
                entry = init.external_data.add()
                entry.key, entry.value = key, value
            entries[init.name] = [offset, len(data), dtype.str, list(init.dims)]
        self.index[file] = entries
        return model

    def _place(self, data: bytes, key: tuple) -> int:
        if key not in self._offsets:
            self._blob += bytes(-len(self._blob) % ALIGN)
            self._offsets[key] = len(self._blob)
            self._blob += data
        return self._offsets[key]

    def files(self) -> dict[str, bytes]:
        """`weights.bin` and `weights.json`, or nothing when no model had a tensor to keep here."""
        if not self._blob:
            return {}
        index = {"file": WEIGHTS_FILE, "bytes": len(self._blob), "models": self.index}
        return {WEIGHTS_FILE: bytes(self._blob), INDEX_FILE: (json.dumps(index, indent=1) + "\n").encode()}
