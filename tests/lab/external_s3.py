"""mlflow_ha_storage_backend: external on the lab (docs/storage.md, "An S3 endpoint the site already has"): the
lab's SeaweedFS S3 gateway on the first storage host, addressed directly (https://<s3-1>:8333, bypassing HAProxy's
S3 frontend) as if it were the site's own endpoint, with the collection CA as its private CA. The mlflow role is
re-converged on the MLflow hosts with the external backend (site.yml --tags mlflow), validate.yml runs with the same
settings (its S3 round trip against that endpoint with the MLflow servers' keys, no storage-quorum check, a
registration whose artifact MLflow uploads there and reads back), then the role is converged back and the lab
validates as before.

test_lab.py's last test runs check() in its lab, after every other lab test, so it changes nothing they see."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labctl import ROOT, Lab, role_settings, run_lab, tail

# Where the pki role's trust entry point installs the collection CA on every host (the mlflow role's default CA).
HOST_CA = "/usr/local/share/ca-certificates/mlflow-ha-ca.crt"
ENV_FILE = "/etc/mlflow/mlflow.env"


def external_settings(lab: Lab) -> dict:
    storage = lab.groups["storage"][0]
    port = role_settings("seaweedfs").get("seaweedfs_s3_port", 8333)
    return {"mlflow_ha_storage_backend": "external",
            "mlflow_ha_s3_endpoint": f"https://{lab.hosts[storage]}:{port}",
            "mlflow_ha_s3_ca_path": HOST_CA}


def server_env(lab: Lab, host: str) -> dict[str, str]:
    text = lab.exec(host, "cat", ENV_FILE)
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def check(lab: Lab) -> None:
    settings = external_settings(lab)
    storage = lab.groups["storage"][0]
    port = settings["mlflow_ha_s3_endpoint"].rsplit(":", 1)[1]
    apps = lab.groups["mlflow"]
    # The storage host's firewall admits its S3 gateway from the load balancers only: let the MLflow servers in for
    # the test (the service's restart below writes the role's rules back).
    sources = ", ".join(lab.hosts[h] for h in apps)
    lab.exec(storage, "nft", "insert", "rule", "inet", "mlflow_ha", "input", "ip", "saddr", "{ %s }" % sources,
             "tcp", "dport", port, "accept")
    try:
        converge = run_lab("converge", "external-s3-converge", "--tags", "mlflow", "-e", json.dumps(settings))
        assert converge.returncode == 0, f"site.yml --tags mlflow with the external backend failed:\n" \
                                         f"{tail(converge.stdout + converge.stderr)}"
        for host in apps:
            env = server_env(lab, host)
            assert env["MLFLOW_S3_ENDPOINT_URL"] == settings["mlflow_ha_s3_endpoint"], host
            assert env["AWS_CA_BUNDLE"] == HOST_CA, host
            assert env.get("AWS_ACCESS_KEY_ID"), f"{host}: the lab's keys stay in the environment"

        validate = run_lab("play", "external-s3-validate", str(ROOT / "playbooks" / "validate.yml"),
                           "-e", json.dumps({**settings, "validate_s3_ca_path": lab.ca_path}))
        out = validate.stdout + validate.stderr
        assert validate.returncode == 0, f"validate.yml with the external backend failed:\n{tail(out)}"
        assert "No storage cluster to check with an external S3 endpoint" in out
        assert settings["mlflow_ha_s3_endpoint"] in out, "the round trip and the note name the external endpoint"
    finally:
        back = run_lab("converge", "external-s3-converge-back", "--tags", "mlflow")
        lab.exec(storage, "systemctl", "restart", "mlflow-ha-firewall")
    assert back.returncode == 0, f"site.yml --tags mlflow back to the storage tier failed:\n" \
                                 f"{tail(back.stdout + back.stderr)}"
    for host in apps:
        assert server_env(lab, host)["MLFLOW_S3_ENDPOINT_URL"] == f"https://{lab.vip}:9000", host
    final = run_lab("validate")
    assert final.returncode == 0, f"validate.yml after converging back failed:\n{tail(final.stdout + final.stderr)}"
