"""Read YOLOv7 weights in any of the forms users hold, without executing anything from the file.

The official checkpoints pickle whole Python objects of the YOLOv7 source tree
(``{'model': models.yolo.Model in fp16, 'ema': ..., 'epoch': ..., ...}``). Loading them normally
needs that source tree and ``torch.load(weights_only=False)``, which runs whatever the pickle
names. Here a restricted unpickler reads torch's zip format directly: tensors are rebuilt from
the raw storage bytes, plain containers are allowed, the module classes such a file names
(``models.common.*``, ``models.yolo.*``, ``torch.nn.modules.*``) become inert placeholders that
only record their state (nothing is imported), and anything else is refused with the name of
what the file asked for. The module tree is then walked to rebuild the state dict
(``model.<index>.<attribute>``). Plain state-dict files load the same way.

:func:`load_yolov7_checkpoint` then tells the form (training / deploy / fused, see
:mod:`myutils.detection.yolov7`) from the keys, builds the matching network and loads it with
``strict=True``.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from myutils.cli import InputError
from myutils.detection.yolov7 import DETECT_LAYER, YOLOv7, count_parameters, num_classes_from_state_dict

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
# dtypes by the names a pickle uses (``torch.float16``); a fixed table, so no torch attribute is
# looked up (torch's lazy ``__getattr__`` would import submodules on the file's request)
TORCH_DTYPES = {
    "float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
    "float": torch.float32, "float64": torch.float64, "double": torch.float64, "int64": torch.int64,
    "long": torch.int64, "int32": torch.int32, "int": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8, "bool": torch.bool,
}
# classes that become inert placeholders: the YOLOv7 source tree's modules and torch's nn modules
YOLOV7_SOURCE_MODULES = ("models.common", "models.yolo", "models.experimental")
TORCH_NN_MODULES = "torch.nn.modules."
# numpy arrays and scalars (official training checkpoints keep 'best_fitness' as one): recorded, never built
INERT_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}
REPCONV_KEYS = {"unfused": "model.102.rbr_dense.0.weight", "fused": "model.102.rbr_reparam.weight"}
IMPLICIT_PREFIXES = (f"model.{DETECT_LAYER}.ia.", f"model.{DETECT_LAYER}.im.")


class InertObject:
    """Stands in for a module class or function named by the pickle; records, never runs."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name}>"


class RefusedObject(pickle.UnpicklingError):
    """The pickle names something that is neither data nor a known module class."""

    def __init__(self, qualified_name: str):
        super().__init__(qualified_name)
        self.qualified_name = qualified_name


def _inert_class(module: str, name: str) -> type:
    return type(name, (InertObject,), {"qualified_name": f"{module}.{name}"})


def _inert_getattr(obj: Any, name: str) -> InertObject:
    """``getattr(module, 'fuseforward')``: the fused official modules pickle a bound ``forward``."""
    return _inert_class("builtins", "getattr")(obj, name)


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """How pickle protocol 2 (torch.save's) stores ``bytes``: ``_codecs.encode(text, 'latin1')``.

    Only that form is accepted; no codec is looked up (a lookup could import modules).
    """
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedObject(f"_codecs.encode({encoding!r})")
    return text.encode("latin-1")


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_unused) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _rebuild_parameter(data: torch.Tensor, *_unused) -> torch.Tensor:
    return data


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class RestrictedUnpickler(pickle.Unpickler):
    """Tensors, plain containers, torch dtypes and inert module placeholders; refuses everything else."""

    SAFE = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("__builtin__", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("__builtin__", "frozenset"): frozenset,
        ("builtins", "getattr"): _inert_getattr,
        ("__builtin__", "getattr"): _inert_getattr,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): tuple,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def __init__(self, file, read_record):
        super().__init__(file)
        self._read_record = read_record

    def find_class(self, module: str, name: str):
        if (module, name) in self.SAFE:
            return self.SAFE[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and name in TORCH_DTYPES:
            return TORCH_DTYPES[name]
        known_module = module in YOLOV7_SOURCE_MODULES or module.startswith(TORCH_NN_MODULES)
        if (known_module and name.isidentifier()) or (module, name) in INERT_NUMPY:
            return _inert_class(module, name)
        raise RefusedObject(f"{module}.{name}")

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
            try:
                return RestrictedUnpickler(handle, lambda key: archive.read(f"{prefix}data/{key}")).load()
            except RefusedObject as refused:
                raise InputError(f"{path}: refused untrusted object {refused.qualified_name} in the checkpoint "
                                 "(not a YOLOv7 weights file?)") from None
            except (pickle.UnpicklingError, EOFError, KeyError) as error:
                raise InputError(f"{path}: unreadable checkpoint ({error})") from None


def _module_attributes(module: InertObject) -> dict:
    return module.state if isinstance(module.state, dict) else {}


def module_state_dict(module: InertObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of an unpickled (inert) ``nn.Module`` tree: parameters and persistent buffers."""
    state = _module_attributes(module)
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


def _class_names(module: InertObject) -> list[str] | None:
    names = _module_attributes(module).get("names")
    return list(names) if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names) else None


@dataclass
class YOLOv7StateDict:
    """A state dict read from a file, and where in the file it was."""

    state_dict: dict[str, torch.Tensor]
    source: str  # 'ema', 'model', 'state_dict' or 'file' (the file is the state dict)
    class_names: list[str] | None = None


def load_yolov7_state_dict(path: str | os.PathLike) -> YOLOv7StateDict:
    """The YOLOv7 state dict in ``path``: an official checkpoint (``ema`` preferred over ``model``,
    pickled modules) or a plain state dict (optionally under ``model`` / ``state_dict``).

    Tensors keep their stored dtype (often fp16) and are copied out of the file's buffers.
    """
    checkpoint = restricted_load(path)
    candidates = [("file", checkpoint)]
    if isinstance(checkpoint, dict):
        candidates = [(key, checkpoint.get(key)) for key in ("ema", "model", "state_dict")] + candidates
    for source, candidate in candidates:
        if isinstance(candidate, InertObject):
            state_dict, names = module_state_dict(candidate), _class_names(candidate)
        elif _is_state_dict(candidate):
            state_dict, names = dict(candidate), None
        else:
            continue
        if state_dict:
            return YOLOv7StateDict({key: value.clone() for key, value in state_dict.items()}, source, names)
    raise InputError(f"{path}: no YOLOv7 model or state dict found (looked at 'ema', 'model', 'state_dict')")


def checkpoint_form(state_dict: dict[str, torch.Tensor]) -> tuple[str, bool]:
    """``(form, implicit_folded)`` from the keys: which network of :data:`~myutils.detection.yolov7.FORMS`
    these weights belong to.

    The official ``Model.fuse()`` of a training-form network folds the implicit layers into the
    head's convs but keeps the ``ia``/``im`` tensors: ``implicit_folded`` says they must be ignored.
    """
    keys = set(state_dict)
    has_implicit = f"model.{DETECT_LAYER}.ia.0.implicit" in keys
    if REPCONV_KEYS["fused"] in keys:
        return "fused", has_implicit
    if REPCONV_KEYS["unfused"] in keys:
        return ("training" if has_implicit else "deploy"), False
    if any(key.startswith("model.") for key in keys):
        raise InputError("these weights are not YOLOv7 (cfg/*/yolov7.yaml): layer 102 is neither a RepConv "
                         f"({REPCONV_KEYS['unfused']}) nor a fused one ({REPCONV_KEYS['fused']}); "
                         "yolov7-tiny, -x, -w6, -e6, -d6 and -e6e are other networks")
    raise InputError("these weights are not a YOLOv7 state dict (no model.<layer>.* keys)")


FORM_DESCRIPTIONS = {
    "training": "training form (cfg/training/yolov7.yaml, IDetect)",
    "deploy": "deploy form (cfg/deploy/yolov7.yaml, Detect)",
    "fused": "fused form (Conv+BN and RepConv merged, Detect)",
}


@dataclass
class LoadedYOLOv7:
    """A network built and loaded from a file, and what was found there."""

    model: YOLOv7
    form: str
    num_classes: int
    source: str
    class_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self, path: str | os.PathLike) -> str:
        """One line: file, form, classes, parameters (what a user checks first when detections look wrong)."""
        notes = "".join(f"; {note}" for note in self.notes)
        return (f"YOLOv7 {path}: {FORM_DESCRIPTIONS[self.form]}, {self.num_classes} classes, "
                f"{count_parameters(self.model):,} parameters, weights from '{self.source}'{notes}")


def _first(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_yolov7_checkpoint(path: str | os.PathLike) -> LoadedYOLOv7:
    """Build the network of the form found in ``path`` and load it (fp32, ``strict=True``, eval mode)."""
    loaded = load_yolov7_state_dict(path)
    state_dict = loaded.state_dict
    try:
        form, implicit_folded = checkpoint_form(state_dict)
        num_classes = num_classes_from_state_dict(state_dict)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    notes = []
    if implicit_folded:  # official fuse() of a training model: ia/im already inside model.105.m
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(IMPLICIT_PREFIXES)}
        notes.append("implicit layers already folded into the head (ia/im entries ignored)")
    model = YOLOv7(num_classes, form=form)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        problems = [f"{label} {_first(keys)}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
        raise InputError(f"{path}: the weights look like YOLOv7's {form} form but do not match it "
                         f"({'; '.join(problems)})")
    model.load_state_dict({key: value.float() for key, value in state_dict.items()}, strict=True)
    return LoadedYOLOv7(model.eval(), form, num_classes, loaded.source, loaded.class_names, notes)
