"""Lightning callbacks: knowledge-mask images, sample videos, interruption-safe checkpoints."""

from fundus2video.callbacks.checkpointing import AtomicCheckpointIO, ResumableCheckpoint
from fundus2video.callbacks.visual import KnowledgeMaskLogger, SampleVideoLogger

__all__ = ["AtomicCheckpointIO", "KnowledgeMaskLogger", "ResumableCheckpoint", "SampleVideoLogger"]
