"""The runtimes latency is timed on (eager PyTorch, ONNX Runtime, OpenVINO): a module compiled to a call.

The latency table and the final check time what the user deploys: `compile_call(module, x, backend,
device)` returns a call with no arguments that runs `module` on `x` on that runtime, and the device
whose clock times it. ONNX Runtime and OpenVINO get the module exported to ONNX (torch's TorchScript
exporter: fast, and a fixed input shape is all a timing needs) and apply their own graph fusions
(conv + BN + activation), which is why a table timed in eager PyTorch can mislead about them. Both run
with torch's intra-op thread count (`torch.get_num_threads()`, part of the table's cache key), so
`OMP_NUM_THREADS` says how many threads every runtime gets.

Devices: torch times on any device (CUDA with CUDA events); ONNX Runtime on the CPU, or on CUDA when
its CUDA provider is installed (`onnxruntime-gpu`); OpenVINO on the CPU only. A runtime that is not
installed, or cannot run on the device, is a `BackendError` with a one-line message.
"""
from __future__ import annotations

import importlib.util
import io
import warnings
from collections.abc import Callable

import torch
from torch import nn

BACKENDS = ("torch", "onnxruntime", "openvino")
INSTALL = {"onnxruntime": 'pip install "prunesearch[onnx]"', "openvino": 'pip install "prunesearch[openvino]"'}


class BackendError(RuntimeError):
    """A latency backend that is unknown, not installed, or cannot run on the device (one line)."""


def missing(backend: str) -> str | None:
    """Why `backend` cannot be used here (unknown, or its package is not installed), in one line; else None."""
    if backend not in BACKENDS:
        return f"--latency-backend must be one of {', '.join(BACKENDS)}, got {backend!r}"
    if backend != "torch" and importlib.util.find_spec(backend) is None:
        return f"--latency-backend {backend} needs the {backend} package, which is not installed: {INSTALL[backend]}"
    return None


def version(backend: str) -> str:
    """The runtime's version (part of the latency table's cache key)."""
    if backend == "torch":
        return torch.__version__
    return getattr(importlib.import_module(backend), "__version__", "?")


def onnx_bytes(module: nn.Module, x: torch.Tensor) -> bytes:
    """`module` exported to ONNX at the fixed shape of `x`."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer warnings
        torch.onnx.export(module.cpu().eval(), (x.cpu(),), buffer, dynamo=False, input_names=["x"])
    return buffer.getvalue()


def compile_call(module: nn.Module, x: torch.Tensor, backend: str, device: torch.device
                 ) -> tuple[Callable[[], object], torch.device]:
    """(a call running `module` on `x` on `backend`, the device whose clock times it)."""
    reason = missing(backend)
    if reason is not None:
        raise BackendError(reason)
    if backend == "torch":
        module, x = module.to(device).eval(), x.to(device)
        return (lambda: module(x)), device
    threads = torch.get_num_threads()
    feed = x.detach().cpu().numpy()
    if backend == "onnxruntime":
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError("--latency-backend onnxruntime on CUDA needs its CUDA provider "
                                   "(pip install onnxruntime-gpu); or use --device cpu")
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0})]
        elif device.type != "cpu":
            raise BackendError(f"--latency-backend onnxruntime runs on cpu or cuda, not {device.type}")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        session = ort.InferenceSession(onnx_bytes(module, x), options, providers=providers)
        name = session.get_inputs()[0].name
        return (lambda: session.run(None, {name: feed})), torch.device("cpu")  # synchronous: the host clock
    if device.type != "cpu":
        raise BackendError(f"--latency-backend openvino times on the CPU here: use --device cpu (got {device})")
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(onnx_bytes(module, x), b""), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                   "NUM_STREAMS": 1})
    request = compiled.create_infer_request()
    return (lambda: request.infer({0: feed})), torch.device("cpu")


def run_once(module: nn.Module, x: torch.Tensor, backend: str, device: torch.device) -> list:
    """The outputs of one run of `module` on `x` on `backend` (as arrays or tensors): for checks."""
    call, _ = compile_call(module, x, backend, device)
    with torch.no_grad():
        out = call()
    if isinstance(out, torch.Tensor):
        return [out]
    return list(out.values()) if isinstance(out, dict) or hasattr(out, "values") else list(out)
