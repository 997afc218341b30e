"""Studies over checkpoint sets, the ``landscape`` CLI and the notebook-facing functions."""

from .context import StudyContext

__all__ = ["StudyContext"]
