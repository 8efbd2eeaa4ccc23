"""Model adapters, the streaming engine and the demo (installed as `stc.integrations`)."""

from .block_store import BlockStore, TensorBlockStore
from .engine import IngestReport, SessionAnswer, StreamingSession
from .processing import FramePreprocessing, VideoLLMProcessor, load_processor

__all__ = [
    "BlockStore",
    "FramePreprocessing",
    "IngestReport",
    "SessionAnswer",
    "StreamingSession",
    "TensorBlockStore",
    "VideoLLMProcessor",
    "load_processor",
]
