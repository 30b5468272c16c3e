"""ONNX Runtime sessions for the small turn-taking models (Silero VAD, Smart Turn), with the one-line error a user
can act on when the model file is missing."""

from __future__ import annotations

from pathlib import Path

from fern.errors import ConfigValueError, MissingWeightsError

SETUP_HINT = "run `bash scripts/setup.sh` (it extracts it from the pipecat-ai wheel) or set FERN_MODELS_DIR"


def onnx_session(path: str | Path, what: str, threads: int = 1):
    """An InferenceSession on the CPU with ``threads`` intra-op threads (1 is steadier on a shared box)."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{what} model file {path} is missing: {SETUP_HINT}")
    if threads < 1:
        raise ConfigValueError(f"{what}: threads must be >= 1, got {threads}")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a truncated or foreign file: onnxruntime raises its own exception types
        raise MissingWeightsError(f"{what} model file {path} is not a loadable ONNX model "
                                  f"({type(exc).__name__}); delete it and {SETUP_HINT}") from exc
