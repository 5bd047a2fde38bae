"""The AWS template deployed without a cloud: moto's server on 127.0.0.1 (in this process, a free port the OS
picks), boto3 for CloudFormation, and the repository's own inventory configuration pointed at it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "cloud" / "aws" / "mlflow-ha.yml"
INVENTORY = ROOT / "inventories" / "aws" / "aws_ec2.yml"
REGION = "us-east-1"  # moto answers Fn::GetAZs "" with its default region's zones
ADMIN_CIDR = "10.99.0.0/24"
DEPLOY_TIMEOUT = 120.0
# Dummy credentials: moto accepts any; they keep boto3 and the inventory plugin away from real ones.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    import moto_shim
    from moto.server import ThreadedMotoServer

    moto_shim.apply()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def aws(moto_url: str) -> Callable[[str], Any]:
    import boto3

    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                    region_name=REGION)

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=moto_url)

    return client


def deploy(aws: Callable[[str], Any], name: str, backend: str, **more: str) -> dict[str, Any]:
    """Create the stack and wait until it leaves CREATE_IN_PROGRESS; fail with its events otherwise."""
    ec2 = aws("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    cfn = aws("cloudformation")
    parameters = {
        "ImageId": image, "AdminCidr": ADMIN_CIDR, "StorageBackend": backend,
        # moto 5.2.6 does not split the Default of a CommaDelimitedList (only values passed in): pass the defaults.
        "PrivateSubnetCidrs": "10.20.1.0/24,10.20.2.0/24,10.20.3.0/24",
        "PublicSubnetCidrs": "10.20.101.0/24,10.20.102.0/24,10.20.103.0/24",
        **more,
    }
    cfn.create_stack(StackName=name, TemplateBody=TEMPLATE.read_text(),
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
                     Capabilities=["CAPABILITY_IAM"])
    deadline = time.monotonic() + DEPLOY_TIMEOUT
    while True:
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        if stack["StackStatus"] != "CREATE_IN_PROGRESS" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if stack["StackStatus"] != "CREATE_COMPLETE":
        events = [(e["LogicalResourceId"], e["ResourceStatus"], e.get("ResourceStatusReason"))
                  for e in cfn.describe_stack_events(StackName=name)["StackEvents"][:10]]
        pytest.fail(f"stack {name}: {stack['StackStatus']} after {DEPLOY_TIMEOUT:.0f} s "
                    f"({stack.get('StackStatusReason')}); last events: {events}")
    resources = {r["LogicalResourceId"]: r for r in cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]}
    return {"name": name, "backend": backend, "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]},
            "resources": resources}


@pytest.fixture(scope="session", params=["seaweedfs", "external"])
def stack(request: pytest.FixtureRequest, aws: Callable[[str], Any]) -> dict[str, Any]:
    """Both variants in one moto account, side by side: the inventory must pick one stack's hosts by its tag."""
    return deploy(aws, f"mlflow-ha-{request.param}", request.param)


def physical(stack: dict[str, Any], logical_id: str) -> str:
    return stack["resources"][logical_id]["PhysicalResourceId"]


def write_inventory(directory: Path, stack: dict[str, Any], moto_url: str) -> Path:
    """inventories/aws/aws_ec2.yml, changed only where it must be for moto: the region, the endpoint and the stack's
    name."""
    config = yaml.safe_load(INVENTORY.read_text())
    config["regions"] = [REGION]
    config["endpoint_url"] = moto_url
    config["filters"]["tag:mlflow-ha:stack"] = stack["name"]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "moto.aws_ec2.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def ansible_env() -> dict[str, str]:
    return {**os.environ, **AWS_ENV, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STRATEGY": "linear"}


@pytest.fixture(scope="session")
def inventory(stack: dict[str, Any], moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`ansible-inventory --list` with the repository's aws_ec2.yml (write_inventory)."""
    path = write_inventory(tmp_path_factory.mktemp(f"inventory-{stack['backend']}"), stack, moto_url)
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "ansible-inventory"), "-i", str(path), "--list"], cwd=ROOT,
                            env=ansible_env(), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"ansible-inventory failed:\n{result.stderr[-3000:]}"
    # ansible-core 2.19 marks values that came from outside as unsafe in its JSON ({"__ansible_unsafe": value}).
    return json.loads(result.stdout, object_hook=lambda d: d["__ansible_unsafe"] if d.keys() == {"__ansible_unsafe"}
                      else d)
