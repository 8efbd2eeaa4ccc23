"""Model adapters, the streaming engine and the demo (installed as `stc.integrations`).

Names are imported on first use, so that `stc` subcommands that do not need transformers start
quickly.
"""

from importlib import import_module

_EXPORTS = {
    "BlockStore": ".engine.block_store",
    "TensorBlockStore": ".engine.block_store",
    "IngestJob": ".engine.session",
    "IngestReport": ".engine.session",
    "SessionAnswer": ".engine.session",
    "StreamingSession": ".engine.session",
    "FramePreprocessing": ".processing",
    "VideoLLMProcessor": ".processing",
    "load_processor": ".processing",
    "load_checkpoint": ".loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stc.integrations' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
