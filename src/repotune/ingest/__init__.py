"""The ingest stage: ``run(IngestConfig) -> IngestResult``; ``IngestLayout`` names the folder's files."""

from repotune.ingest.stage import IngestConfig, IngestLayout, IngestResult, run

__all__ = ["IngestConfig", "IngestLayout", "IngestResult", "run"]
