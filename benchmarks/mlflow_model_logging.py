#!/usr/bin/env python3
"""What logging the model as an MLflow model costs, against logging its folder as plain artifacts.

The evaluate stage used to upload the model folder as run artifacts (after copying it, without
checkpoints, to a temporary folder); it now logs it as an MLflow logged model (the pyfunc flavor of
``repotune.pyfunc_model``), which MLflow copies once into its own temporary folder before uploading.
Both go through a real ``mlflow server`` on 127.0.0.1 that proxies artifacts into a local folder, as
a cluster's server proxies them into S3. Printed: wall time of each (median of ``--repeat``), their
ratio, the model folder's size, the bytes each left in the artifact store, the extra local disk each
used while uploading, and how long ``mlflow.pyfunc.load_model("models:/...")`` takes to load it back.
Nothing is asserted.

Usage (from the repository root)::

    .venv/bin/python benchmarks/mlflow_model_logging.py                  # SmolLM2-135M (built once)
    .venv/bin/python benchmarks/mlflow_model_logging.py --model tiny --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--workers", "1"]
    command += ["--artifacts-destination", (root / "store").as_uri(), "--serve-artifacts"]
    log = open(root / "server.log", "wb")  # noqa: SIM115 (lives as long as the server)
    # As manifests/base/mlflow.yaml runs it: without MLflow 3's job runner, whose eight processes would
    # otherwise take this machine's cores for the first minute of the measurement.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root, env=env
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return server, url
        except requests.RequestException:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    raise SystemExit(f"mlflow server did not start; see {root / 'server.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="A base model spec or a model folder.")
    parser.add_argument("--repeat", type=int, default=1, help="Runs of each way to log (median shown).")
    args = parser.parse_args()

    import mlflow.pyfunc

    from repotune.evaluate.decide import Decision
    from repotune.evaluate.registry import Registry
    from repotune.models import resolve_base_model
    from repotune.tracking import MlflowTracker

    model = Path(args.model) if Path(args.model).is_dir() else resolve_base_model(args.model)
    size = folder_bytes(model)
    with tempfile.TemporaryDirectory(prefix="repotune-bench-mlflow-") as tmp:
        root = Path(tmp)
        server, url = start_server(root)
        try:
            tracker = MlflowTracker(url, "bench")
            timings: dict[str, list[float]] = {"artifacts": [], "model": []}
            stored: dict[str, int] = {}
            run_ids: list[str | None] = []
            for _ in range(args.repeat):
                with tracker.start_run("artifacts"):
                    before = folder_bytes(root / "store") if (root / "store").exists() else 0
                    started = time.perf_counter()
                    with tempfile.TemporaryDirectory() as copy:
                        # The old evaluate path: a filtered copy of the folder, uploaded as artifacts.
                        tracker.log_artifact(Path(shutil.copytree(model, Path(copy) / "model")))
                    timings["artifacts"].append(time.perf_counter() - started)
                    stored["artifacts"] = folder_bytes(root / "store") - before
                with tracker.start_run("model") as run_id:
                    run_ids.append(run_id)
                    before = folder_bytes(root / "store")
                    started = time.perf_counter()
                    tracker.log_model(model)
                    timings["model"].append(time.perf_counter() - started)
                    stored["model"] = folder_bytes(root / "store") - before
            registry = Registry(url, "bench")
            registry.promote(
                registry.register_candidate(str(run_ids[-1]), "model", {}), Decision(True, ("promote: b",))
            )
            os.environ["MLFLOW_TRACKING_URI"] = url
            started = time.perf_counter()
            mlflow.pyfunc.load_model("models:/bench@champion")
            load_s = time.perf_counter() - started
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)

    art, mod = statistics.median(timings["artifacts"]), statistics.median(timings["model"])
    mb = 2**20
    print(f"model folder: {model} ({size / mb:.1f} MB)")
    print(f"{'way':<28}{'wall s':>8}{'stored MB':>11}{'extra local disk MB':>21}")
    print(f"{'folder as run artifacts':<28}{art:>8.1f}{stored['artifacts'] / mb:>11.1f}{size / mb:>21.1f}")
    print(f"{'MLflow model (pyfunc)':<28}{mod:>8.1f}{stored['model'] / mb:>11.1f}{size / mb:>21.1f}")
    print(f"ratio MLflow model / artifacts: {mod / art:.2f}x wall time")
    print(f"mlflow.pyfunc.load_model('models:/bench@champion'): {load_s:.1f} s (download and load)")


if __name__ == "__main__":
    main()
