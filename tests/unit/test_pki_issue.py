"""The pki_issue action plugin's logic (plugins/plugin_utils/pki.py) with a CA made here by ``cryptography``: issue,
nothing to do the second time, and each reason to issue again; and the action plugin's option checks."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from shared_checks import assert_documented_as_specified

from ansible_collections.mlops.mlflow_ha.plugins.plugin_utils.pki import PkiError, issue, missing_ca_message

PASSPHRASE = "unit-test-passphrase"
SANS = ["DNS:pg1", "IP:10.10.0.11", "IP:127.0.0.1"]
NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.timezone.utc)


def make_ca(ca_dir: Path, passphrase: str = PASSPHRASE, name: str = "mlflow-ha CA") -> None:
    """A CA as the pki role's ca.yml makes it: P-384 key, PEM encrypted with the passphrase, self-signed."""
    ca_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    encryption = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                  else serialization.NoEncryption())
    (ca_dir / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.TraditionalOpenSSL, encryption))
    (ca_dir / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    make_ca(tmp_path / "ca")
    return tmp_path / "ca"


def run(ca_dir: Path, store: Path, **kwargs):
    args = {"ca_dir": str(ca_dir), "ca_passphrase": PASSPHRASE, "store_dir": str(store), "name": "etcd",
            "common_name": "pg1", "subject_alt_names": SANS, "now": NOW}
    args.update(kwargs)
    return issue(**args)


def load_cert(store: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((store / "etcd.crt").read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_run_issues_a_certificate_like_the_community_crypto_tasks(ca: Path, tmp_path: Path):
    store = tmp_path / "ca" / "hosts" / "pg1"
    result = run(ca, store)
    assert result["changed"] and result["key_changed"] and result["cert_changed"]
    assert result["reasons"] == ["no certificate yet"]
    assert result["key_path"] == str(store / "etcd.key") and result["cert_path"] == str(store / "etcd.crt")
    assert result["ca_cert_path"] == str(ca / "ca.crt")
    assert (mode(store), mode(store / "etcd.key"), mode(store / "etcd.crt")) == (0o700, 0o600, 0o644)
    assert not any(p.name.endswith(".tmp") for p in store.iterdir())

    key = serialization.load_pem_private_key((store / "etcd.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert (store / "etcd.key").read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")
    cert = load_cert(store)
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    assert cert.subject.rfc4514_string() == "CN=pg1"
    assert cert.not_valid_before_utc == NOW
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=825)
    ext = {e.oid.dotted_string: e for e in cert.extensions}
    assert not any(e.critical for e in ext.values())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["pg1"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.10.0.11", "127.0.0.1"]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_agreement and not ku.key_encipherment
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def test_second_run_changes_nothing(ca: Path, tmp_path: Path):
    store = tmp_path / "store"
    run(ca, store)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in store.iterdir()}
    result = run(ca, store, now=NOW + datetime.timedelta(days=100))
    assert not result["changed"] and not result["key_changed"] and not result["cert_changed"]
    assert result["reasons"] == []
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in store.iterdir()} == before


def test_the_ca_key_is_not_read_when_nothing_is_issued(ca: Path, tmp_path: Path):
    store = tmp_path / "store"
    run(ca, store)
    assert not run(ca, store, ca_passphrase="wrong-passphrase-but-unused")["changed"]


def test_other_names_or_usages_issue_again_with_the_same_key(ca: Path, tmp_path: Path):
    store = tmp_path / "store"
    run(ca, store)
    key = (store / "etcd.key").read_bytes()
    result = run(ca, store, subject_alt_names=[*SANS, "DNS:pg1.lab"])
    assert result["changed"] and result["cert_changed"] and not result["key_changed"]
    assert result["reasons"] == ["the subject alternative names differ"]
    assert "pg1.lab" in load_cert(store).extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName)
    assert (store / "etcd.key").read_bytes() == key
    # The order of the names is not a difference.
    assert not run(ca, store, subject_alt_names=["DNS:pg1.lab", *reversed(SANS)])["changed"]
    assert run(ca, store, subject_alt_names=["DNS:pg1.lab", *SANS],
               extended_key_usages=["clientAuth"])["reasons"] == ["the extended key usages differ"]
    # Long names are the same usages.
    assert not run(ca, store, subject_alt_names=["DNS:pg1.lab", *SANS],
                   extended_key_usages=["TLS Web Client Authentication"])["changed"]
    assert run(ca, store, subject_alt_names=["DNS:pg1.lab", *SANS], extended_key_usages=["clientAuth"],
               common_name="pg1.lab")["reasons"] == ["the subject differs"]


def test_a_new_ca_issues_again(ca: Path, tmp_path: Path):
    store = tmp_path / "store"
    run(ca, store)
    make_ca(ca)  # the same name, another key
    result = run(ca, store)
    assert result["cert_changed"] and not result["key_changed"]
    assert result["reasons"] == ["not signed by the current CA"]
    load_cert(store).verify_directly_issued_by(x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes()))
    make_ca(ca, name="another CA")
    assert run(ca, store)["reasons"] == ["not signed by the current CA"]
    assert not run(ca, store)["changed"]


def test_a_certificate_near_its_end_is_renewed(ca: Path, tmp_path: Path):
    store = tmp_path / "store"
    run(ca, store)
    assert not run(ca, store, now=NOW + datetime.timedelta(days=825 - 31))["changed"]
    later = NOW + datetime.timedelta(days=825 - 29)
    result = run(ca, store, now=later)
    assert result["cert_changed"] and result["reasons"] == ["it expires on 2029-03-10, within 30 days"]
    assert load_cert(store).not_valid_after_utc == later + datetime.timedelta(days=825)
    assert run(ca, store, now=later, renew_before_days=0)["changed"] is False


def test_a_key_of_another_type_is_replaced_and_the_certificate_with_it(ca: Path, tmp_path: Path):
    store = tmp_path / "store"
    run(ca, store)
    result = run(ca, store, key_curve="secp256r1")
    assert result["key_changed"] and result["cert_changed"]
    assert result["reasons"] == ["its public key is not the key's"]
    key = serialization.load_pem_private_key((store / "etcd.key").read_bytes(), None)
    assert key.curve.name == "secp256r1"
    assert not run(ca, store, key_curve="secp256r1")["changed"]

    result = run(ca, store, key_type="RSA", key_size=2048)
    assert result["key_changed"] and result["cert_changed"]
    key = serialization.load_pem_private_key((store / "etcd.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    ku = load_cert(store).extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_agreement
    assert not run(ca, store, key_type="RSA", key_size=2048)["changed"]


def test_an_unreadable_key_is_replaced(ca: Path, tmp_path: Path):
    store = tmp_path / "store"
    run(ca, store)
    (store / "etcd.key").write_text("garbage\n")
    result = run(ca, store)
    assert result["key_changed"] and result["cert_changed"]


def test_modes_are_put_right(ca: Path, tmp_path: Path):
    store = tmp_path / "store"
    run(ca, store)
    os.chmod(store / "etcd.key", 0o644)
    os.chmod(store, 0o755)
    result = run(ca, store)
    assert result["changed"] and not result["key_changed"] and not result["cert_changed"]
    assert (mode(store), mode(store / "etcd.key")) == (0o700, 0o600)


def test_an_unencrypted_ca_key_with_an_empty_passphrase(tmp_path: Path):
    make_ca(tmp_path / "ca", passphrase="")
    assert run(tmp_path / "ca", tmp_path / "store", ca_passphrase="")["cert_changed"]


def test_a_wrong_passphrase_is_named_and_never_shown(ca: Path, tmp_path: Path):
    with pytest.raises(PkiError) as err:
        run(ca, tmp_path / "store", ca_passphrase="not-the-passphrase")
    assert "ca_passphrase" in str(err.value) and "not-the-passphrase" not in str(err.value)
    assert str(ca / "ca.key") in str(err.value)
    with pytest.raises(PkiError, match="ca_passphrase"):
        run(ca, tmp_path / "store", ca_passphrase="")


def test_a_missing_ca_fails_with_the_roles_sentence(tmp_path: Path):
    with pytest.raises(PkiError) as err:
        run(tmp_path / "nowhere", tmp_path / "store")
    assert str(err.value) == missing_ca_message(str(tmp_path / "nowhere"))
    assert str(err.value).startswith(f"pki: no CA certificate at {tmp_path / 'nowhere'}/ca.crt. Apply the role "
                                     "mlops.mlflow_ha.pki to the play before")
    assert "point pki_ca_dir at the existing CA" in str(err.value)
    assert not (tmp_path / "store").exists()


def test_a_missing_ca_key_is_named_when_signing(ca: Path, tmp_path: Path):
    (ca / "ca.key").unlink()
    with pytest.raises(PkiError, match=r"no CA key at .*/ca\.key"):
        run(ca, tmp_path / "store")


@pytest.mark.parametrize(("kwargs", "option"), [
    ({"subject_alt_names": ["pg1"]}, "subject_alt_names"),
    ({"subject_alt_names": ["IP:10.0.0.300"]}, "subject_alt_names"),
    ({"subject_alt_names": ["XYZ:pg1"]}, "subject_alt_names"),
    ({"extended_key_usages": ["webServer"]}, "extended_key_usages"),
    ({"extended_key_usages": []}, "extended_key_usages"),
    ({"key_type": "DSA"}, "key_type"),
    ({"key_curve": "prime-ish"}, "key_curve"),
    ({"key_type": "RSA", "key_size": 1024}, "key_size"),
    ({"valid_days": 0}, "valid_days"),
    ({"renew_before_days": 825}, "renew_before_days"),
    ({"name": "../etcd"}, "name"),
    ({"common_name": ""}, "common_name"),
])
def test_bad_options_are_named(ca: Path, tmp_path: Path, kwargs, option):
    with pytest.raises(PkiError, match=f"^{option}: "):
        run(ca, tmp_path / "store", **kwargs)


def test_dotted_usages_network_and_empty_names(ca: Path, tmp_path: Path):
    result = run(ca, tmp_path / "store", subject_alt_names=[], extended_key_usages=["1.3.6.1.5.5.7.3.1"])
    assert result["cert_changed"]
    cert = load_cert(tmp_path / "store")
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == ["pg1"]
    assert not run(ca, tmp_path / "store", subject_alt_names=["DNS:pg1"], extended_key_usages=["serverAuth"])["changed"]
    assert run(ca, tmp_path / "other", subject_alt_names=["IP:10.10.0.0/24"])["cert_changed"]


def test_parallel_hosts_share_no_temporary_names(ca: Path, tmp_path: Path):
    """Forks issue for their hosts at once, each in its own directory of the store."""
    from concurrent.futures import ThreadPoolExecutor

    hosts = [f"h{i:02d}" for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda h: run(ca, ca / "hosts" / h, common_name=h, subject_alt_names=[f"DNS:{h}"]),
                                hosts))
    assert all(r["cert_changed"] for r in results)
    assert sorted(p.name for p in (ca / "hosts").iterdir()) == hosts
    assert all(sorted(p.name for p in (ca / "hosts" / h).iterdir()) == ["etcd.crt", "etcd.key"] for h in hosts)


class FakeTask:
    def __init__(self, args: dict, check_mode: bool = False):
        self.args = args
        self.check_mode = check_mode
        self.async_val = 0
        self.diff = False
        self.action = "mlops.mlflow_ha.pki_issue"
        self.resolved_action = "mlops.mlflow_ha.pki_issue"


def action(args: dict, check_mode: bool = False):
    from types import SimpleNamespace

    from ansible.playbook.play_context import PlayContext

    from ansible_collections.mlops.mlflow_ha.plugins.action.pki_issue import ActionModule

    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir=None))  # never used: nothing reaches the host
    plugin = ActionModule(FakeTask(args, check_mode), connection=connection, play_context=PlayContext(), loader=None,
                          templar=None, shared_loader_obj=None)
    plugin._load_name = "mlops.mlflow_ha.pki_issue"
    return plugin.run(task_vars={})


def test_the_action_plugin_issues_in_check_mode_and_returns_no_secret(ca: Path, tmp_path: Path):
    args = {"ca_dir": str(ca), "ca_passphrase": PASSPHRASE, "store_dir": str(tmp_path / "store"), "name": "etcd",
            "common_name": "pg1", "subject_alt_names": SANS}
    result = action(args, check_mode=True)
    assert result["changed"] and not result.get("failed"), result
    assert (tmp_path / "store" / "etcd.crt").is_file()
    assert PASSPHRASE not in repr(result) and "PRIVATE KEY" not in repr(result)
    assert action(args)["changed"] is False


def test_the_action_plugin_names_bad_options(ca: Path, tmp_path: Path):
    result = action({"ca_dir": str(ca), "ca_passphrase": PASSPHRASE, "name": "etcd", "common_name": "pg1",
                     "subject_alt_names": SANS})
    assert result["failed"] and "store_dir" in result["msg"]
    result = action({"ca_dir": str(ca), "store_dir": str(tmp_path / "s"), "name": "etcd", "common_name": "pg1",
                     "subject_alt_names": SANS, "key_type": "DSA", "ca_passphrase": PASSPHRASE})
    assert result["failed"] and "key_type" in result["msg"] and PASSPHRASE not in result["msg"]
    result = action({"ca_dir": str(tmp_path / "none"), "store_dir": str(tmp_path / "s"), "name": "etcd",
                     "common_name": "pg1", "subject_alt_names": SANS})
    assert result["failed"] and result["msg"] == missing_ca_message(str(tmp_path / "none"))
    result = action({"ca_dir": str(ca), "store_dir": str(tmp_path / "s"), "name": "etcd", "common_name": "pg1",
                     "subject_alt_names": SANS, "ca_passphrase": "could not decrypt"})
    # A passphrase that happens to be in cryptography's own words is masked there too.
    assert result["failed"] and "could not decrypt" not in result["msg"] and "********" in result["msg"]


def test_certificates_of_the_community_crypto_tasks_and_of_pki_issue_agree(tmp_path: Path):
    """tests/pki/compat.yml, for real on the controller (~7 s): a key and certificate that community.crypto's
    modules made (the host_cert tasks before pki_issue) are up to date for pki_issue, and the other way round."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    playbook = Path(sys.executable).parent / "ansible-playbook"
    assert playbook.exists(), f"run the unit tests with the project's venv (make unit): no {playbook}"
    env = dict(os.environ, ANSIBLE_CONFIG=str(root / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    proc = subprocess.run([str(playbook), "-i", "localhost,", str(root / "tests" / "pki" / "compat.yml"),
                           "-e", json.dumps({"compat_dir": str(tmp_path)})],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert (tmp_path / "pki" / "hosts" / "pg1" / "test.crt").is_file()


def test_the_documentation_module_describes_the_plugins_options():
    """plugins/modules/pki_issue.py only documents; the action plugin's argument spec is what is checked."""
    from ansible_collections.mlops.mlflow_ha.plugins.action.pki_issue import ARGUMENT_SPEC
    from ansible_collections.mlops.mlflow_ha.plugins.modules.pki_issue import DOCUMENTATION

    assert_documented_as_specified(DOCUMENTATION, ARGUMENT_SPEC)


# --- the module pki_files and the expiry metrics (node_exporter's textfile collector) ------------------------------

MODULE = Path(__file__).resolve().parents[2] / "plugins" / "modules" / "pki_files.py"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="pki_files makes its directory root-owned: run as root")


def run_pki_files(module_args: dict, check_mode: bool = False) -> dict:
    """The module as Ansible runs it on a host (a Python process reading its arguments), here on this machine."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": {**module_args, "_ansible_check_mode": check_mode}}, handle)
    try:
        proc = subprocess.run([sys.executable, str(MODULE), handle.name], capture_output=True, text=True, timeout=60,
                              check=False, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    finally:
        os.unlink(handle.name)
    return json.loads(proc.stdout)


def action_on_this_host(args: dict, check_mode: bool = False):
    """The action plugin with its module run on this machine: what reaches a host, in tmp_path."""
    from types import SimpleNamespace

    from ansible.playbook.play_context import PlayContext

    from ansible_collections.mlops.mlflow_ha.plugins.action.pki_issue import ActionModule

    plugin = ActionModule(FakeTask(args, check_mode), connection=SimpleNamespace(_shell=SimpleNamespace(tmpdir=None)),
                          play_context=PlayContext(), loader=None, templar=None, shared_loader_obj=None)
    plugin._load_name = "mlops.mlflow_ha.pki_issue"
    sent = []

    def execute_module(module_name, module_args, task_vars):
        assert module_name == "mlops.mlflow_ha.pki_files"
        sent.append(module_args)
        return run_pki_files(module_args, check_mode)

    plugin._execute_module = execute_module
    return plugin.run(task_vars={}), sent


def test_metrics_file_names_are_stable_and_sanitized():
    from ansible_collections.mlops.mlflow_ha.plugins.plugin_utils.pki import metrics_file_name

    assert metrics_file_name("/etc/etcd/tls", "etcd") == "mlflow_ha_cert_etc_etcd_tls_etcd.prom"
    assert metrics_file_name("/etc/patroni/tls/", "etcd-client") == "mlflow_ha_cert_etc_patroni_tls_etcd_client.prom"
    assert metrics_file_name("/srv/tls", "node-exporter") != metrics_file_name("/srv/tls", "alertmanager")
    assert metrics_file_name("/étc/x y", "a.b") == "mlflow_ha_cert_tc_x_y_a_b.prom"


def test_certificate_expiries_of_a_bundle(ca: Path, tmp_path: Path):
    from ansible_collections.mlops.mlflow_ha.plugins.plugin_utils.pki import certificate_expiries

    make_ca(tmp_path / "etcd-ca", name="mlflow-ha etcd CA")
    bundle = (ca / "ca.crt").read_text() + (tmp_path / "etcd-ca" / "ca.crt").read_text()
    samples = certificate_expiries(bundle, "/etc/etcd/tls/ca.crt")
    end = int((NOW + datetime.timedelta(days=3650)).timestamp())
    assert [(s["path"], s["subject"], s["issuer"], s["not_after"]) for s in samples] == [
        ("/etc/etcd/tls/ca.crt", "mlflow-ha CA", "mlflow-ha CA", end),
        ("/etc/etcd/tls/ca.crt", "mlflow-ha etcd CA", "mlflow-ha etcd CA", end)]
    assert all(int(s["serial"], 16) > 0 for s in samples)
    with pytest.raises(PkiError, match=r"cannot read the certificates for /x/ca\.crt"):
        certificate_expiries("not a certificate", "/x/ca.crt")


def test_metrics_text_escapes_label_values():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pki_files_module", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.metrics_text([{"path": "/t/a.crt", "subject": 'say "hi"\\', "issuer": "line\nbreak",
                                 "serial": "1f", "not_after": 1700000000}])
    assert text.splitlines()[2] == ('mlflow_ha_certificate_expiry_timestamp_seconds{path="/t/a.crt",'
                                    'subject="say \\"hi\\"\\\\",issuer="line\\nbreak",serial="1f"} 1700000000')


@needs_root
def test_the_installed_certificates_expiry_reaches_the_textfile_collector(ca: Path, tmp_path: Path):
    textfile = tmp_path / "node-exporter"
    textfile.mkdir()
    dest = tmp_path / "etc" / "etcd" / "tls"
    args = {"ca_dir": str(ca), "ca_passphrase": PASSPHRASE, "store_dir": str(tmp_path / "store"), "name": "etcd",
            "common_name": "pg1", "subject_alt_names": SANS, "dest_dir": str(dest), "metrics_dir": str(textfile)}

    # Check mode: the store is filled (as always), nothing on the host, the metrics file would be written.
    result = action_on_this_host(args, check_mode=True)[0]
    assert result["changed"] and result["metrics_changed"] and not result.get("failed"), result
    assert not dest.exists() and list(textfile.iterdir()) == []

    result, sent = action_on_this_host(args)
    assert result["changed"] and result["metrics_changed"] and result["ansible_facts"]["pki_host_cert_changed"]
    prom = textfile / f"mlflow_ha_cert_{str(dest).strip('/').replace('/', '_').replace('-', '_')}_etcd.prom"
    assert result["metrics_path"] == str(prom)
    assert sorted(p.name for p in textfile.iterdir()) == [prom.name], "written atomically: no temporary file left"
    assert (prom.stat().st_uid, mode(prom)) == (0, 0o644)
    cert = x509.load_pem_x509_certificate((dest / "etcd.crt").read_bytes())
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    samples = [line for line in prom.read_text().splitlines() if not line.startswith("#")]
    assert samples == [
        f'mlflow_ha_certificate_expiry_timestamp_seconds{{path="{dest}/etcd.crt",subject="pg1",issuer="mlflow-ha CA",'
        f'serial="{cert.serial_number:x}"}} {int(cert.not_valid_after_utc.timestamp())}',
        f'mlflow_ha_certificate_expiry_timestamp_seconds{{path="{dest}/ca.crt",subject="mlflow-ha CA",'
        f'issuer="mlflow-ha CA",serial="{ca_cert.serial_number:x}"}} {int(ca_cert.not_valid_after_utc.timestamp())}']
    assert "PRIVATE KEY" not in repr(sent[0]["certificates"])

    # Second run: nothing changes, the file is not touched.
    before = prom.stat().st_mtime_ns
    result = action_on_this_host(args)[0]
    assert (result["changed"], result["metrics_changed"]) == (False, False), result
    assert prom.stat().st_mtime_ns == before

    # Only the metrics file differs (a hand edit, a collection upgrade): changed, but no restart for the service.
    prom.write_text("stale\n")
    result = action_on_this_host(args, check_mode=True)[0]
    assert result["changed"] and result["metrics_changed"] and prom.read_text() == "stale\n"
    result = action_on_this_host(args)[0]
    assert result["changed"] and result["metrics_changed"] and not result["ansible_facts"]["pki_host_cert_changed"]
    assert result["changed_files"] == [] and "etcd.crt" in prom.read_text()


@needs_root
def test_no_textfile_directory_no_metrics(ca: Path, tmp_path: Path):
    """A host without node_exporter (no textfile directory) gets its TLS files and nothing else, on every run."""
    args = {"ca_dir": str(ca), "ca_passphrase": PASSPHRASE, "store_dir": str(tmp_path / "store"), "name": "etcd",
            "common_name": "pg1", "subject_alt_names": SANS, "dest_dir": str(tmp_path / "tls"),
            "metrics_dir": str(tmp_path / "no-node-exporter")}
    result = action_on_this_host(args)[0]
    assert result["changed"] and not result["metrics_changed"] and result["metrics_path"] == ""
    assert not (tmp_path / "no-node-exporter").exists()
    assert action_on_this_host(args)[0]["changed"] is False
    # Without metrics_dir the module is sent no certificates at all.
    result, sent = action_on_this_host({k: v for k, v in args.items() if k != "metrics_dir"})
    assert result["changed"] is False and "metrics_dir" not in sent[0] and "certificates" not in sent[0]


@needs_root
def test_pki_files_refuses_a_bad_metrics_file_name(tmp_path: Path):
    (tmp_path / "textfile").mkdir()
    result = run_pki_files({"dir": str(tmp_path / "tls"), "files": [], "metrics_dir": str(tmp_path / "textfile"),
                            "metrics_file": "../escape.prom"})
    assert result["failed"] and "metrics_file" in result["msg"]
    result = run_pki_files({"dir": str(tmp_path / "tls"), "files": [], "metrics_dir": str(tmp_path / "textfile")})
    assert result["failed"] and "metrics_file" in result["msg"]
