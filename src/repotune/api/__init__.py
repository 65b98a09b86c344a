"""The upload API: give a codebase or a repository URL over HTTP, start a pipeline run, follow it, query
the model. ``repotune api`` serves :func:`repotune.api.app.create_app`."""
