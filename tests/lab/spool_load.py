"""Registrations through the collection's client library (clients/python, mlflow_ha_client) while the registry may
be down: issue 17's lab test. Runs with the Python of tools/mlflow-venv.sh (the verify step uses the official
client); the library itself needs only the standard library and comes from the checkout (PYTHONPATH).

  run     N workers, each its own Registry on one spool (MLFLOW_HA_SPOOL_DIR), register a fresh 2 KB file as a new
          version of its own model, each with its own key, one every --interval seconds, until the stop file
          appears; one Replayer thread replays the spool every 2 s. One JSON line per registration in --events:
          status registered or spooled (both are acknowledgements: a spooled one is on the local disk, fsync'd),
          the tier the library named when it spooled.
  verify  every acknowledged key is a version of its model exactly once (tag mlflow_ha.idempotency_key) and its
          artifact, read back through models:/ with the official client, has the bytes that were registered; the
          spool has nothing left. Writes a JSON summary to --out.
Environment: MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/_PASSWORD, MLFLOW_TRACKING_SERVER_CERT_PATH (as the
official client), MLFLOW_HA_SPOOL_DIR."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))

from mlflow_ha_client import Registry, Replayer, Spool  # noqa: E402  (the checkout's package, above)

KEY_TAG = "mlflow_ha.idempotency_key"


class Events:
    def __init__(self, path: Path):
        self.handle = path.open("a", buffering=1)
        self.lock = threading.Lock()

    def write(self, **fields) -> None:
        with self.lock:
            self.handle.write(json.dumps(dict(fields, t=time.time())) + "\n")


def worker(index: int, prefix: str, events: Events, stop_file: Path, workdir: Path, interval: float) -> None:
    registry = Registry.from_env(deadline=15, reset_timeout=10)
    model = f"{prefix}-w{index}"
    path = workdir / f"w{index}" / "model.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    n, start = 0, time.time()
    while not stop_file.exists():
        # A training job registers now and then, not in a tight loop: without a pause, a worker whose breakers are
        # open spools hundreds of registrations a second (the first lab run spooled 11 885 in 60 s).
        if n:
            time.sleep(max(0.0, interval - (time.time() - start)))
        n += 1
        key = f"{model}-{n}-{os.urandom(4).hex()}"
        payload = (key + "\n").encode() + os.urandom(2048)
        path.write_bytes(payload)
        start = time.time()
        try:
            result = registry.register(model, [path], key=key)
        except Exception as err:  # refused or a bug: recorded, never counted as acknowledged
            events.write(event="error", worker=index, key=key, error=f"{type(err).__name__}: {err}"[:300])
            time.sleep(1)
            continue
        events.write(event="ack", worker=index, key=key, model=model, status=result.status, version=result.version,
                     tier=result.tier, sha256=hashlib.sha256(payload).hexdigest(), start=start,
                     seconds=round(time.time() - start, 3))


def cmd_run(args) -> int:
    events = Events(Path(args.events))
    stop_file = Path(args.stop_file)
    replayer = Replayer(Registry.from_env(deadline=15, reset_timeout=10), interval=2).start()
    with tempfile.TemporaryDirectory() as workdir:
        threads = [threading.Thread(target=worker, args=(i, args.prefix, events, stop_file, Path(workdir),
                                                         args.interval), daemon=True) for i in range(args.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    replayer.stop()
    return 0


def cmd_verify(args) -> int:
    import mlflow  # the official client, only for reading back
    from mlflow.tracking import MlflowClient

    acks = [json.loads(line) for line in Path(args.events).read_text().splitlines()
            if line.strip() and json.loads(line)["event"] == "ack"]
    client = MlflowClient()
    found: dict[str, list] = {}
    for model in sorted({a["model"] for a in acks}):
        token = None
        while True:
            page = client.search_model_versions(f"name = '{model}'", max_results=1000, page_token=token)
            for version in page:
                key = version.tags.get(KEY_TAG)
                if key:
                    found.setdefault(key, []).append(version)
            token = page.token
            if not token:
                break
    lost = [a["key"] for a in acks if a["key"] not in found]
    duplicated = [k for k, versions in found.items() if len(versions) > 1]
    with tempfile.TemporaryDirectory() as tmp:
        def check(ack: dict) -> dict | None:
            version = found[ack["key"]][0]
            try:
                where = mlflow.artifacts.download_artifacts(f"models:/{ack['model']}/{version.version}",
                                                            dst_path=os.path.join(tmp, ack["key"]))
                data = next(p for p in Path(where).rglob("model.bin")).read_bytes()
            except Exception as err:  # reported, not raised: the summary lists every failure
                return {"key": ack["key"], "why": f"{type(err).__name__}: {err}"[:200]}
            if hashlib.sha256(data).hexdigest() != ack["sha256"]:
                return {"key": ack["key"], "why": "different bytes"}
            return None

        # A few readers at once, as several users would read: one after another, 377 reads took 155 s on an idle
        # lab (docs/harness.md, "The spool test's read-back").
        with ThreadPoolExecutor(max_workers=args.readers) as pool:
            unreadable = [bad for bad in pool.map(check, [a for a in acks if a["key"] in found]) if bad]
    spool = Spool(os.environ["MLFLOW_HA_SPOOL_DIR"]).status()
    summary = {
        "acknowledged": len(acks),
        "registered_directly": sum(1 for a in acks if a["status"] == "registered"),
        "spooled": sum(1 for a in acks if a["status"] == "spooled"),
        "spooled_by_tier": {t: sum(1 for a in acks if a["status"] == "spooled" and a.get("tier") == t)
                            for t in sorted({str(a.get("tier")) for a in acks if a["status"] == "spooled"})},
        "lost": lost, "duplicated": duplicated, "unreadable": unreadable,
        "spool_entries": spool["entries"], "spool_counters": spool["counters"],
    }
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--events", required=True)
    run.add_argument("--stop-file", required=True)
    run.add_argument("--workers", type=int, default=4)
    run.add_argument("--prefix", default="lab-spool")
    run.add_argument("--interval", type=float, default=1.0, help="seconds between a worker's registrations")
    verify = sub.add_parser("verify")
    verify.add_argument("--events", required=True)
    verify.add_argument("--out", required=True)
    verify.add_argument("--readers", type=int, default=4, help="artifacts read at once")
    args = parser.parse_args(argv)
    return cmd_run(args) if args.command == "run" else cmd_verify(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
