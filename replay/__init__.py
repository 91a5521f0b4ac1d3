"""Deterministic offline reruns of recorded agent flows: record modes, replayed streams, interaction trees."""

from replay.divergence import describe_differences
from replay.errors import NoRecordingError, RecordedError, ReplayDivergenceError, ReplayError
from replay.fingerprint import FingerprintSink, RunFingerprint, afingerprint, run_fingerprint
from replay.matching import CallToMatch
from replay.recording import RecordedCall, Recording
from replay.replay import RecordMode, Replay
from replay.tree import CallTreeNode, InteractionTree, aload_tree

__all__ = [
    "CallToMatch",
    "CallTreeNode",
    "FingerprintSink",
    "InteractionTree",
    "NoRecordingError",
    "RecordMode",
    "RecordedCall",
    "RecordedError",
    "Recording",
    "Replay",
    "ReplayDivergenceError",
    "ReplayError",
    "RunFingerprint",
    "afingerprint",
    "aload_tree",
    "describe_differences",
    "run_fingerprint",
]
