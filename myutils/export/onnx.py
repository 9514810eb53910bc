"""ONNX export with an onnxruntime parity check, shared by every exportable network.

A part describes what to export as an :class:`ExportSpec` (the module in eval mode, example inputs,
names, dynamic axes, extra inputs of another batch size for the check, metadata such as the
preprocessing). :func:`export_checked` writes ``<output>.onnx`` atomically, runs onnxruntime on the
check inputs, compares with PyTorch and writes ``<output>.json`` with the metadata and the measured
difference. ``onnx`` and ``onnxruntime`` are imported only here, when an export is asked for.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from myutils.cli import InputError, TrainingError
from myutils.files import atomic_output
from myutils.training.log import write_json_atomic

OPSET = 17


class ParityError(TrainingError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportSpec:
    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    check_inputs: tuple[torch.Tensor, ...] | None = None  # default: the example inputs
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Exporter:
    """One sub-command of ``scripts/export_onnx.py``: its flags and how to build the spec from them."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    build: Callable[[argparse.Namespace], ExportSpec]


def _as_tuple(outputs: Any) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def onnxruntime_outputs(path: str | os.PathLike, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run an ONNX file on the CPU with onnxruntime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def export_checked(spec: ExportSpec, output: str | os.PathLike, atol: float = 1e-4) -> dict[str, Any]:
    """Export ``spec`` to ``output`` (``.onnx`` added when missing) and check it; returns the report.

    Raises :class:`ParityError` (after writing nothing) when the largest absolute difference
    between onnxruntime and PyTorch on ``spec.check_inputs`` exceeds ``atol``.
    """
    path = Path(output)
    path = path if path.suffix == ".onnx" else path.with_name(path.name + ".onnx")
    module = spec.module.eval()
    with atomic_output(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(module, spec.example_inputs, str(tmp), input_names=spec.input_names,
                              output_names=spec.output_names, dynamic_axes=spec.dynamic_axes,
                              opset_version=OPSET, dynamo=False)
        check_inputs = spec.check_inputs or spec.example_inputs
        with torch.no_grad():
            expected = [t.detach().float().cpu().numpy() for t in _as_tuple(module(*check_inputs))]
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(spec.input_names, check_inputs, strict=True)}
        actual = onnxruntime_outputs(tmp, feeds)
        if len(actual) != len(expected):
            raise ParityError(f"{path}: onnxruntime gives {len(actual)} outputs, PyTorch {len(expected)}")
        diffs = {name: float(np.abs(a.astype(np.float64) - e).max()) if e.size else 0.0
                 for name, a, e in zip(spec.output_names, actual, expected, strict=True)}
        max_diff = max(diffs.values())
        if not max_diff <= atol:
            raise ParityError(f"{path}: onnxruntime differs from PyTorch by {max_diff:.3g} (> {atol:g}): {diffs}")
    report = {
        "onnx": str(path),
        "opset": OPSET,
        "inputs": {name: list(t.shape) for name, t in zip(spec.input_names, spec.example_inputs, strict=True)},
        "dynamic_axes": spec.dynamic_axes,
        "check_batch": [list(t.shape) for t in check_inputs],
        "max_abs_diff": diffs,
        "tolerance": atol,
        **spec.metadata,
    }
    write_json_atomic(report, path.with_suffix(".json"))
    return report


def require_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a ``Path``; a one-line error naming ``flag`` when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{flag} {path}: no such file")
    return path
