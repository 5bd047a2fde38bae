"""Build the collection tarball as a release would (`ansible-galaxy collection build`) and fail when it holds
anything that must never ship: private keys, certificates, vaults, the PKI a lab or site run writes beside its
inventory (inventories/pki), caches, virtualenvs or test output.

Run by `make lint` (so by `make test` and CI). The build happens in a copy of the tracked files and the untracked
ones a developer's checkout typically has (a `make lab` leaves inventories/pki/lab/ca.key behind): what counts is
what galaxy.yml's build_ignore keeps out, not what git ignores.

    python tools/check_release.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Paths that must not be in the tarball, whatever their content.
FORBIDDEN_PATHS = [
    "inventories/pki/*", ".cache/*", ".venv/*", "tests/output/*", "*.key", "*.pem", "*.p12", "*.pfx", "*.crt",
    "*.csr", "*vault*.yml", "*.retry", ".pytest_cache/*", ".ruff_cache/*", "*/__pycache__/*", "*.pyc", "results/*",
]
# Content that must not be in any file of the tarball.
FORBIDDEN_CONTENT = [
    # A PEM header followed by a base64 body (a bare header in a unit test's fixture is no key).
    (re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=]{40}"), "a private key"),
    (re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=]{40}"), "a certificate"),
    (re.compile(rb"^\$ANSIBLE_VAULT;", re.M), "an Ansible vault"),
]
# What a developer's checkout holds after `make lab` and a test run: planted in the build copy so the check proves
# build_ignore keeps them out (a clean CI checkout would pass without build_ignore).
PLANTED = {
    "inventories/pki/lab/ca.key": b"-----BEGIN EC PRIVATE KEY-----\n" + b"A" * 64 + b"\n-----END EC PRIVATE KEY-----\n",
    "inventories/pki/lab/ca.crt": b"-----BEGIN CERTIFICATE-----\n" + b"A" * 64 + b"\n-----END CERTIFICATE-----\n",
    "tests/output/lab/site.log": b"planted lab output\n",
    ".cache/wheelhouse/planted.whl": b"planted\n",
}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def build(workdir: Path) -> Path:
    src = workdir / "src"
    for rel in tracked_files():
        path = ROOT / rel
        if path.is_file():
            dest = src / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(path.read_bytes())
    for rel, content in PLANTED.items():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content)
    out = workdir / "dist"
    proc = subprocess.run(["ansible-galaxy", "collection", "build", "--force", "--output-path", str(out), str(src)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"ansible-galaxy collection build failed:\n{proc.stdout}{proc.stderr}")
    tarballs = sorted(out.glob("*.tar.gz"))
    if len(tarballs) != 1:
        sys.exit(f"expected one tarball in {out}, found {tarballs}")
    return tarballs[0]


def problems(tarball: Path) -> list[str]:
    found = []
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            name = member.name
            for pattern in FORBIDDEN_PATHS:
                if fnmatch.fnmatch(name, pattern):
                    found.append(f"{name}: path matches {pattern}")
            if member.isfile():
                data = tar.extractfile(member).read()
                for regex, what in FORBIDDEN_CONTENT:
                    if regex.search(data):
                        found.append(f"{name}: holds {what}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="copy the built tarball into this directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tarball = build(Path(tmp))
        with tarfile.open(tarball) as tar:
            count = len(tar.getmembers())
        found = problems(tarball)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / tarball.name).write_bytes(tarball.read_bytes())
    if found:
        print(f"{tarball.name}: {len(found)} forbidden entries (galaxy.yml build_ignore must keep them out):")
        print("\n".join(f"  {p}" for p in found))
        return 1
    print(f"{tarball.name}: {count} entries, no key, certificate, vault, PKI, cache or test output")
    return 0


if __name__ == "__main__":
    sys.exit(main())
