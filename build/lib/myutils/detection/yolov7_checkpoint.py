"""Read YOLOv7 weights without executing anything from the file.

The official ``yolov7.pt`` pickles whole Python objects of the YOLOv7 source tree
(``models.yolo.Model``, ``models.common.Conv``, ...), usually in fp16, under the keys
``model`` and (training checkpoints) ``ema``. Loading it normally needs that source tree and
``torch.load(weights_only=False)``, which runs whatever the pickle names. Here a restricted
unpickler reads torch's zip format directly: tensors are rebuilt from the raw storage bytes,
plain containers are allowed, and every other class or function named in the file is replaced
by an inert placeholder that only records its arguments and state. The module tree is then
walked to rebuild the state dict (``model.<index>.<attribute>``). Plain state-dict files load
the same way.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from myutils.cli import InputError

STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class InertObject:
    """Stands in for any class or function named by the pickle; records, never runs."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name}>"


def _inert_class(module: str, name: str) -> type:
    return type(name, (InertObject,), {"qualified_name": f"{module}.{name}"})


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_unused) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _rebuild_parameter(data: torch.Tensor, *_unused) -> torch.Tensor:
    return data


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class RestrictedUnpickler(pickle.Unpickler):
    """Allows tensors, plain containers and torch dtypes; maps everything else to inert placeholders."""

    SAFE = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("__builtin__", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("__builtin__", "frozenset"): frozenset,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): tuple,
    }

    def __init__(self, file, read_record):
        super().__init__(file)
        self._read_record = read_record

    def find_class(self, module: str, name: str):
        if (module, name) in self.SAFE:
            return self.SAFE[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _inert_class(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise InputError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        if not isinstance(storage_type, _StorageType):
            raise InputError(f"unsupported storage type {storage_type!r}")
        data = bytearray(self._read_record(str(key)))
        if not data:
            return torch.empty(0, dtype=storage_type.dtype)
        return torch.frombuffer(data, dtype=storage_type.dtype)


def restricted_load(path: str | os.PathLike) -> Any:
    """Unpickle a torch zip checkpoint with :class:`RestrictedUnpickler` (no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"YOLOv7 weights not found: {path}")
    if not zipfile.is_zipfile(path):
        raise InputError(
            f"{path} is not a torch zip checkpoint (legacy pre-1.6 format or not a checkpoint); "
            "re-save it with a recent torch as a state dict"
        )
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("data.pkl")]
        if len(pickles) != 1:
            raise InputError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder_name = prefix + "byteorder"
        if byteorder_name in names and archive.read(byteorder_name).decode().strip() != "little":
            raise InputError(f"{path}: big-endian checkpoints are not supported")
        with archive.open(pickles[0]) as handle:
            return RestrictedUnpickler(handle, lambda key: archive.read(f"{prefix}data/{key}")).load()


def module_state_dict(module: InertObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of an unpickled (inert) ``nn.Module`` tree: parameters and persistent buffers."""
    state = module.state if isinstance(module.state, dict) else {}
    result: dict[str, torch.Tensor] = {}
    for name, tensor in (state.get("_parameters") or {}).items():
        if isinstance(tensor, torch.Tensor):
            result[prefix + name] = tensor
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, tensor in (state.get("_buffers") or {}).items():
        if isinstance(tensor, torch.Tensor) and name not in skip:
            result[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, InertObject):
            result.update(module_state_dict(child, f"{prefix}{name}."))
    return result


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_yolov7_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The YOLOv7 state dict in ``path``: an official checkpoint (``ema`` preferred over ``model``,
    pickled modules) or a plain state dict (optionally under ``model`` / ``state_dict``).

    Tensors keep their stored dtype (often fp16) and are copied out of the file's buffers.
    """
    checkpoint = restricted_load(path)
    candidates = [checkpoint]
    if isinstance(checkpoint, dict):
        candidates = [checkpoint.get(key) for key in ("ema", "model", "state_dict")] + [checkpoint]
    for candidate in candidates:
        if isinstance(candidate, InertObject):
            state_dict = module_state_dict(candidate)
        elif _is_state_dict(candidate):
            state_dict = dict(candidate)
        else:
            continue
        if state_dict:
            return {key: value.clone() for key, value in state_dict.items()}
    raise InputError(f"{path}: no YOLOv7 model or state dict found (looked at 'ema', 'model', 'state_dict')")
