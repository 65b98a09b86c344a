"""KFP components: one thin shim per pipeline stage over `repotune.stages` (see stages.py)."""
