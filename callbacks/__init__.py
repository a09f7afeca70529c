"""Lightning callbacks: knowledge-mask images, sample videos, interruption-safe checkpoints, learning curves."""

from fundus2video.callbacks.checkpointing import AtomicCheckpointIO, ResumableCheckpoint
from fundus2video.callbacks.learning_curve import LearningCurve
from fundus2video.callbacks.visual import KnowledgeMaskLogger, SampleVideoLogger

__all__ = ["AtomicCheckpointIO", "KnowledgeMaskLogger", "LearningCurve", "ResumableCheckpoint", "SampleVideoLogger"]
