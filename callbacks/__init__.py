"""Lightning callbacks: knowledge-mask images and sample videos."""

from fundus2video.callbacks.visual import KnowledgeMaskLogger, SampleVideoLogger

__all__ = ["KnowledgeMaskLogger", "SampleVideoLogger"]
