"""The KServe predictor: a ``kserve.Model`` over the trained model, with OpenAI-compatible routes.

- ``model``: loads a merged model folder, or a base model plus a LoRA adapter, from a folder or an
  ``s3://`` URI, and answers KServe v1/v2 ``predict``;
- ``batching``: the queue and worker thread that batch waiting requests into one ``generate``;
- ``openai_routes``: ``/openai/v1/completions``, ``/openai/v1/chat/completions``, ``/openai/v1/models``;
- ``server``: ``serve`` (the ``repotune serve`` command) and ``start_background`` (a server subprocess
  on a free port, for other code and tests).

Nothing here is imported by ``repotune`` itself, so the command line stays fast to start.
"""
