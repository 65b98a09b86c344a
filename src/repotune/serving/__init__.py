"""The KServe predictor: a ``kserve.Model`` over the trained model, with OpenAI-compatible routes.

- ``model``: the ``kserve.Model``: KServe v1/v2 ``predict`` and the OpenAI methods
  ``create_completion`` / ``create_chat_completion``, over one queue;
- ``protocol``: the typed requests of every route, with one set of generation options and bounds;
- ``batching``: the queue and worker thread that batch waiting requests into one ``generate``;
- ``openai_routes``: ``/openai/v1/completions``, ``/openai/v1/chat/completions``, ``/openai/v1/models``;
- ``guards``: bearer tokens, body size and JSON depth, in front of every route;
- ``loading``: loading a model folder, adapter or ``s3://`` URI, and the names it is served under;
- ``settings``: ``ServeSettings`` (light: the command line reads its defaults from it);
- ``server``: ``serve`` (the ``repotune serve`` command) and ``start_background`` (a server subprocess
  on a free port, for other code and tests).

Nothing here is imported by ``repotune`` itself except ``settings``, so the command line stays fast to
start.
"""
