"""KFP components: one thin shim per pipeline stage over the stage's entry point (see steps.py)."""
