"""``kserve`` parses ``sys.argv`` when ``kserve.model_server`` is first imported (its own flags, such as
``--http_port`` and ``--model_name``, at module level); importing it through here hides this process's
command line (``repotune serve ...``, pytest's options) from that parser, so kserve keeps its defaults
and cannot misread an abbreviation of one of its flags."""

from __future__ import annotations

import sys

_argv = sys.argv
sys.argv = _argv[:1]
try:
    import kserve
    from kserve import model_server
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    from kserve.protocol.rest.server import RESTServer
finally:
    sys.argv = _argv

__all__ = [
    "FASTAPI_APP_IMPORT_STRING",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "InvalidInput",
    "RESTServer",
    "kserve",
    "model_server",
]
