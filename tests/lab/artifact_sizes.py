"""Artifact sizes through the proxied path (issue 16, "growth"): with the official MLflow client (run it with the MLflow
venv's Python), one run per size, the artifact uploaded with log_artifact and read back with download_artifacts (as
users read), its SHA-256 compared; seconds and MB/s of each direction, as JSON on stdout.

  artifact_sizes.py --tracking-uri URI [--sizes 2K,10M,200M,1G] [--tmp DIR]

The environment carries the client's settings (CA, login: docs/clients.md). Random bytes, so no layer can compress
them; each file is written to --tmp (default: the system's) and removed after its size is measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
CHUNK = 8 * 1024 * 1024


def parse_size(text: str) -> int:
    text = text.strip().upper()
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def write_random(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        for block in iter(lambda: src.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def measure(client: MlflowClient, uri: str, experiment_id: str, label: str, size: int, tmp: Path) -> dict:
    run = client.create_run(experiment_id, run_name=f"artifact-size-{label}")
    with tempfile.TemporaryDirectory(dir=tmp) as work:
        src = Path(work) / f"artifact-{label}.bin"
        want = write_random(src, size)
        t0 = time.monotonic()
        client.log_artifact(run.info.run_id, str(src))
        upload = time.monotonic() - t0
        src.unlink()
        t0 = time.monotonic()
        got = Path(download_artifacts(run_id=run.info.run_id, artifact_path=src.name, dst_path=work, tracking_uri=uri))
        download = time.monotonic() - t0
        same = sha256_of(got) == want
    client.set_terminated(run.info.run_id)
    mb = size / 1024 ** 2
    return {"size": label, "bytes": size, "upload_seconds": round(upload, 3), "download_seconds": round(download, 3),
            "upload_mb_per_second": round(mb / upload, 1) if upload else None,
            "download_mb_per_second": round(mb / download, 1) if download else None, "bytes_match": same}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--sizes", default="2K,10M,200M,1G")
    parser.add_argument("--tmp", default=tempfile.gettempdir())
    args = parser.parse_args()
    client = MlflowClient(tracking_uri=args.tracking_uri)
    name = "mlflow-ha-artifact-sizes"
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    rows = [measure(client, args.tracking_uri, experiment_id, label.strip(), parse_size(label), Path(args.tmp))
            for label in args.sizes.split(",") if label.strip()]
    print(json.dumps(rows))
    return 0 if all(row["bytes_match"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
