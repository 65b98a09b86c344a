"""The ingest stage: ``run(IngestConfig) -> IngestResult``; ``IngestLayout`` names the folder's files."""

from repotune.ingest.layout import IngestLayout
from repotune.ingest.stage import IngestConfig, IngestResult, run

__all__ = ["IngestConfig", "IngestLayout", "IngestResult", "run"]
