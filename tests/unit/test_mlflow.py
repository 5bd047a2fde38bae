"""MLflow client: idempotent model version registration against a fake tracking server that keeps state (and can
commit a create and then time out), server and load balancer health, HAProxy's CSV, and both modules."""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import re
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import pytest
import yaml
from fakes import FakeClock, RouteTransport, ok, refused, timed_out, until

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.haproxy import parse_haproxy_csv
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    HttpClientError,
    Response,
    Transport,
    TransportError,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow import (
    IDEMPOTENCY_TAG,
    MlflowClient,
    MlflowError,
    check_artifact_path,
    derive_idempotency_key,
    filter_literal,
    proxy_path,
    version_filter,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow_health import (
    MlflowProber,
    check_min_healthy,
    check_servers,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.mlflow_registration import register_model_version
from ansible_collections.mlops.mlflow_ha.plugins.modules import mlflow_info, mlflow_model_version

VIP = "https://10.0.0.100:5000"
S1, S2, S3 = ("https://10.0.0.3%d:5000" % i for i in range(1, 4))
SERVERS = (S1, S2, S3)
STATS = "http://10.0.0.100:8404/stats"
API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
CREATE = "POST %s/model-versions/create" % API
SEARCH = "GET %s/model-versions/search" % API
MODEL_CREATE = "POST %s/registered-models/create" % API
SOURCE = "s3://mlflow/models/churn"
RUN_ROOT = "mlflow-artifacts:/0/r1/artifacts"

# HAProxy 2.6 (Debian 12) answering GET /stats;csv with `stats show-legends`: mlflow1 passes its check, mlflow2
# refuses connections, mlflow3 is disabled.
HAPROXY_CSV = """\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,\
bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,\
check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,\
req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,\
rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,\
agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,\
wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,\
idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,\
agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,\
h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,\
h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,\
h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,\
h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,
stats,FRONTEND,,,1,1,100,1,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,1,0,,,,0,1,0,1,,,,0,0,0,0,0,0,,1,1,1,,,0,0,0,0,,,,,,,,,,,,,,,\
,,,,,,http,,1,1,1,1,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,88,0,0,0,
mlflow,FRONTEND,,,0,0,100,0,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,0,,,,0,0,0,0,0,0,,0,0,0,,,0,0,0,0,,,,,,,,,,,,,\
,,,,,,,,http,,0,0,0,0,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
mlflow,mlflow1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1,1,0,0,0,3,0,,1,2,1,,0,,2,0,,0,L7OK,200,6,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,\
,0,0,0,0,,,,Layer7 check passed,,2,2,3,,,,10.0.0.31:5000,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,\
,,,,,,,,,,,,,,,,,,
mlflow,mlflow2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,3,3,,1,2,2,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,\
Connection refused,,0,0,0,0,,,,Layer4 connection problem,,2,2,0,,,,10.0.0.32:5000,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,\
0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
mlflow,mlflow3,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,0,0,3,3,,1,2,3,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,\
0,0,0,,,,,,,,,,,,10.0.0.33:5000,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,0,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
mlflow,BACKEND,0,0,0,0,10,0,0,0,0,0,,0,0,0,0,UP,1,1,0,,0,3,0,,1,2,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,0,0,0,0,-1,,,\
0,0,0,0,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,0,0,0,0,,,0,0,0,0,0,,,,,1,0,0,0,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,\
12,12,1372,144,0,0,
"""

RUN_FILTER = re.compile(r"^tags\.`mlflow_ha\.idempotency_key` = ('[^']*'|\"[^\"]*\")$")
FILTER = re.compile(r"^(?:name = ('[^']*'|\"[^\"]*\") AND )?tags\.`mlflow_ha\.idempotency_key` = ('[^']*'|\"[^\"]*\")$")


def mlflow_json(doc, status=200):
    return Response(status, json.dumps(doc).encode(), {"Content-Type": "application/json"})


def mlflow_fail(code, message, status=400):
    return mlflow_json({"error_code": code, "message": message}, status)


COMMIT_THEN_TIME_OUT = "commit, then time out"


class FakeMlflow(Transport):
    """A tracking server behind several base URLs sharing one registry, like servers sharing one database.

    ``faults["POST /path"]`` is a queue of outcomes used before the request is handled: a TransportError to
    raise (one that reached the server costs the request timeout), a Response to return, or COMMIT_THEN_TIME_OUT
    to handle the request and then time out, as when the answer is lost after the database committed."""

    def __init__(self, clock: FakeClock, endpoints=(VIP, S1, S2), latency=0.01):
        self.clock = clock
        self.endpoints = list(endpoints)
        self.latency = latency
        self.models: set = set()
        self.versions: list = []
        self.aliases: dict = {}
        self.runs = {"r1": RUN_ROOT}
        self.run_tags: dict = {}
        self.run_status: dict = {}
        self.artifacts: dict = {}
        self.corrupt_readback = False
        self.down: set = set()
        self.faults: dict = {}
        self.requests: list = []

    # -- helpers for tests ----------------------------------------------------------------------------------

    def add_version(self, name, key=None, source=SOURCE, run_id="", **tags):
        self.models.add(name)
        number = 1 + max([v["version"] for v in self.versions if v["name"] == name], default=0)
        all_tags = dict(tags)
        if key is not None:
            all_tags[IDEMPOTENCY_TAG] = key
        self.versions.append({"name": name, "version": number, "source": source, "run_id": run_id,
                              "tags": all_tags, "description": ""})
        return number

    def sent(self, method, path_prefix):
        return [r for r in self.requests if r["method"] == method and r["path"].startswith(path_prefix)]

    def writes(self):
        return [r for r in self.requests if r["method"] in ("POST", "PUT", "DELETE", "PATCH")
                and r["path"] != API + "/runs/search"]

    # -- the server -----------------------------------------------------------------------------------------

    def send(self, method, url, body, headers, timeout):
        base = next(e for e in self.endpoints if url.startswith(e))
        parts = urlsplit(url[len(base):])
        self.requests.append({"method": method, "url": url, "base": base, "path": parts.path, "body": body,
                              "headers": dict(headers), "query": parse_qs(parts.query)})
        self.clock.t += self.latency
        if base in self.down:
            raise refused()
        queue = self.faults.get("%s %s" % (method, parts.path))
        outcome = queue.pop(0) if queue else None
        if isinstance(outcome, TransportError):
            if outcome.reached_server:
                self.clock.t += timeout
            raise outcome
        if isinstance(outcome, Response):
            return Response(outcome.status, outcome.body, outcome.headers, url)
        answer = self.handle(method, parts.path, parse_qs(parts.query), body)
        if outcome == COMMIT_THEN_TIME_OUT:
            self.clock.t += timeout
            raise timed_out()
        return Response(answer.status, answer.body, answer.headers, url)

    def version_doc(self, v):
        return {"name": v["name"], "version": str(v["version"]), "source": v["source"], "run_id": v["run_id"],
                "status": "READY", "description": v["description"],
                "tags": [{"key": k, "value": val} for k, val in v["tags"].items()]}

    def handle(self, method, path, query, body):
        if path.startswith(ARTIFACTS + "/"):
            return self.artifact(method, unquote(path[len(ARTIFACTS) + 1:]), body)
        handler = {
            ("GET", "/health"): lambda q, d: ok(b"OK"),
            ("GET", "/version"): lambda q, d: ok(b"3.17.2"),
            ("POST", API + "/registered-models/create"): self.create_model,
            ("GET", API + "/model-versions/search"): self.search_versions,
            ("POST", API + "/model-versions/create"): self.create_version,
            ("GET", API + "/registered-models/alias"): self.get_alias,
            ("POST", API + "/registered-models/alias"): self.set_alias,
            ("POST", API + "/runs/search"): self.search_runs,
            ("POST", API + "/runs/create"): self.create_run,
            ("POST", API + "/runs/update"): self.update_run,
            ("GET", API + "/runs/get"): self.get_run,
            ("DELETE", API + "/model-versions/delete"): self.delete_version,
            ("POST", API + "/runs/delete"): self.delete_run,
        }.get((method, path))
        if handler is None:
            raise AssertionError("unscripted request: %s %s" % (method, path))
        return handler(query, json.loads(body) if body and method in ("POST", "DELETE") else {})

    def create_model(self, _query, doc):
        if doc["name"] in self.models:
            return mlflow_fail("RESOURCE_ALREADY_EXISTS", "Registered Model (name=%s) already exists." % doc["name"])
        self.models.add(doc["name"])
        return mlflow_json({"registered_model": {"name": doc["name"]}})

    def search_versions(self, query, _doc):
        match = FILTER.match(query["filter"][0])
        assert match, "a filter MLflow's grammar would not read: %r" % query["filter"][0]
        name = match.group(1)[1:-1] if match.group(1) else None
        key = match.group(2)[1:-1]
        found = [self.version_doc(v) for v in self.versions
                 if (name is None or v["name"] == name) and v["tags"].get(IDEMPOTENCY_TAG) == key]
        return mlflow_json({"model_versions": found} if found else {})

    def create_version(self, _query, doc):
        if doc["name"] not in self.models:
            return mlflow_fail("RESOURCE_DOES_NOT_EXIST", "Registered Model with name=%s not found" % doc["name"], 404)
        if doc["source"].startswith("mlflow-artifacts:") and not doc.get("run_id"):
            return mlflow_fail("INVALID_PARAMETER_VALUE", "Invalid model version source: '%s'. The run_id request "
                               "parameter must identify the resource that contains the source." % doc["source"])
        tags = {t["key"]: t["value"] for t in doc.get("tags", [])}
        self.add_version(doc["name"], source=doc["source"], run_id=doc.get("run_id", ""), **tags)
        self.versions[-1]["description"] = doc.get("description", "")
        return mlflow_json({"model_version": self.version_doc(self.versions[-1])})

    def get_alias(self, query, _doc):
        number = self.aliases.get((query["name"][0], query["alias"][0]))
        if number is None:
            return mlflow_fail("INVALID_PARAMETER_VALUE", "Registered model alias %s not found." % query["alias"][0])
        version = next(v for v in self.versions if v["name"] == query["name"][0] and v["version"] == number)
        return mlflow_json({"model_version": self.version_doc(version)})

    def set_alias(self, _query, doc):
        self.aliases[(doc["name"], doc["alias"])] = int(doc["version"])
        return mlflow_json({})

    def search_runs(self, _query, doc):
        match = RUN_FILTER.match(doc["filter"])
        assert match and doc["experiment_ids"] == ["0"], doc
        runs = [{"info": {"run_id": r, "artifact_uri": self.runs[r]}} for r in self.runs
                if self.run_tags.get(r, {}).get(IDEMPOTENCY_TAG) == match.group(1)[1:-1]]
        return mlflow_json({"runs": runs} if runs else {})

    def create_run(self, _query, doc):
        run = "run%d" % len(self.runs)
        self.runs[run] = "mlflow-artifacts:/%s/%s/artifacts" % (doc["experiment_id"], run)
        self.run_tags[run] = {t["key"]: t["value"] for t in doc.get("tags", [])}
        self.run_status[run] = "RUNNING"
        return mlflow_json({"run": {"info": {"run_id": run, "artifact_uri": self.runs[run]}}})

    def update_run(self, _query, doc):
        self.run_status[doc["run_id"]] = doc["status"]
        return mlflow_json({"run_info": {"run_id": doc["run_id"], "status": doc["status"]}})

    def delete_version(self, _query, doc):
        found = [v for v in self.versions if v["name"] == doc["name"] and str(v["version"]) == doc["version"]]
        if not found:
            return mlflow_fail("RESOURCE_DOES_NOT_EXIST", "Model Version not found", 404)
        self.versions.remove(found[0])
        return mlflow_json({})

    def delete_run(self, _query, doc):
        if doc["run_id"] not in self.runs:
            return mlflow_fail("RESOURCE_DOES_NOT_EXIST", "Run '%s' not found" % doc["run_id"], 404)
        del self.runs[doc["run_id"]]  # marked deleted: no longer found by an active-runs search
        return mlflow_json({})

    def get_run(self, query, _doc):
        run = query["run_id"][0]
        if run not in self.runs:
            return mlflow_fail("RESOURCE_DOES_NOT_EXIST", "Run '%s' not found" % run, 404)
        return mlflow_json({"run": {"info": {"run_id": run, "artifact_uri": self.runs[run]}}})

    def artifact(self, method, key, body):
        if method == "PUT":
            self.artifacts[key] = body
            return mlflow_json({})
        if key not in self.artifacts:
            return mlflow_fail("RESOURCE_DOES_NOT_EXIST", "No such artifact: '%s'" % key, 404)
        data = self.artifacts[key]
        return ok(data[:-1] + b"X" if self.corrupt_readback else data)


def client_for(clock, rng, server=None, endpoints=(VIP, S1, S2), **kw):
    server = server or FakeMlflow(clock)
    kw.setdefault("request_timeout", 10.0)
    kw.setdefault("deadline", 120.0)
    return MlflowClient(list(endpoints), transport=server, clock=clock, rng=rng, **kw), server


def key_of(name="churn", source=SOURCE, run_id=None):
    return derive_idempotency_key(name, source=source, run_id=run_id)


class TestFilter:
    @pytest.mark.parametrize(("value", "literal"), [
        ("churn", "'churn'"),
        ("it's", "\"it's\""),
        ('say "hi"', "'say \"hi\"'"),
        ("back\\slash", "'back\\slash'"),
        ("both ' and \"", None),
        ("ends in \\", None),
        ("", "''"),
    ])
    def test_literals_follow_mlflows_grammar(self, value, literal):
        # MLflow 3.17.2 strips the outer quotes and unescapes nothing ('it''s' means it''s), and sqlparse reads
        # \' as part of the string: each expected literal was read back by SearchModelVersionUtils.
        assert filter_literal(value) == literal

    def test_filter_with_name_and_backticked_tag_key(self):
        assert version_filter("churn", "k1") == "name = 'churn' AND tags.`mlflow_ha.idempotency_key` = 'k1'"
        assert version_filter("it's", "k1") == "name = \"it's\" AND tags.`mlflow_ha.idempotency_key` = 'k1'"

    def test_a_name_that_cannot_be_written_is_left_to_the_client(self):
        assert version_filter("a'b\"c", "k1") == "tags.`mlflow_ha.idempotency_key` = 'k1'"

    def test_a_key_that_cannot_be_written_is_refused(self):
        with pytest.raises(ValueError, match="contains both quote characters or ends in a backslash"):
            version_filter("churn", "a'b\"c")

    def test_search_url_encodes_the_filter(self, clock, rng):
        client, server = client_for(clock, rng)
        client.search_versions("it's & co", "k1")
        sent = server.sent("GET", API + "/model-versions/search")[0]
        assert sent["query"]["filter"] == ["name = \"it's & co\" AND tags.`mlflow_ha.idempotency_key` = 'k1'"]
        assert "%26" in sent["url"] and "%60" in sent["url"], "& and backticks are percent-encoded"
        # werkzeug decodes '+' in a query as a space, so a '+' in a name must go as %2B.
        client.search_versions("a+b c", "k1")
        assert "a%2Bb+c" in server.requests[-1]["url"]
        assert server.requests[-1]["query"]["filter"][0].startswith("name = 'a+b c' AND")


class TestKeysAndPaths:
    def test_derived_key_is_stable_and_depends_on_what_is_registered(self):
        key = derive_idempotency_key("churn", source=SOURCE)
        assert key == derive_idempotency_key("churn", source=SOURCE) and re.fullmatch(r"[0-9a-f]{32}", key)
        assert key != derive_idempotency_key("churn2", source=SOURCE)
        assert key != derive_idempotency_key("churn", source=SOURCE + "/v2")
        assert key != derive_idempotency_key("churn", source=SOURCE, run_id="r1")
        assert derive_idempotency_key("churn", artifact_sha256="ab") != derive_idempotency_key("churn", source="ab")

    @pytest.mark.parametrize("path", ["", "/", "a/../b", "a//b", "./a", "a#b", "a\\b"])
    def test_unsafe_artifact_paths_are_refused(self, path):
        with pytest.raises(ValueError, match="artifact_path must be a relative path"):
            check_artifact_path(path)

    def test_artifact_path_is_trimmed(self):
        assert check_artifact_path("/registrations/churn/k/") == "registrations/churn/k"

    @pytest.mark.parametrize(("uri", "path"), [
        ("mlflow-artifacts:/0/r1/artifacts", "0/r1/artifacts"),
        ("mlflow-artifacts://mlflow.example:5000/0/r1/artifacts/", "0/r1/artifacts"),
        ("https://vip:5000/api/2.0/mlflow-artifacts/artifacts/0/r1/artifacts", "0/r1/artifacts"),
        ("s3://mlflow/0/r1/artifacts", None),
        ("file:///var/lib/mlflow/0/r1/artifacts", None),
    ])
    def test_proxy_path(self, uri, path):
        assert proxy_path(uri) == path


class TestRegister:
    def test_happy_path_searches_creates_the_model_and_one_version(self, clock, rng):
        client, server = client_for(clock, rng, username="admin", password="s3cret")
        done = register_model_version(client, "churn", source=SOURCE, run_id=None, description="nightly",
                                      tags={"team": "ml", "rows": 1200})
        assert (done.version, done.created, done.changed, done.attempts, done.searches) == (1, True, True, 1, 1)
        assert done.registered_model_created and done.endpoint == VIP and done.status == "READY"
        assert done.idempotency_key == key_of() and done.duplicates == [] and done.failures == []
        assert [(r["method"], r["path"]) for r in server.requests] == [
            ("GET", API + "/model-versions/search"), ("POST", API + "/registered-models/create"),
            ("POST", API + "/model-versions/create")]
        body = json.loads(server.sent("POST", API + "/model-versions/create")[0]["body"])
        assert body == {"name": "churn", "source": SOURCE, "description": "nightly",
                        "tags": [{"key": "rows", "value": "1200"}, {"key": "team", "value": "ml"},
                                 {"key": IDEMPOTENCY_TAG, "value": key_of()}]}
        token = base64.b64encode(b"admin:s3cret").decode()
        assert all(r["headers"]["Authorization"] == "Basic " + token for r in server.requests)

    def test_key_already_present_creates_nothing(self, clock, rng):
        client, server = client_for(clock, rng)
        server.add_version("churn", key="other")
        server.add_version("churn", key=key_of())
        done = register_model_version(client, "churn", source=SOURCE)
        assert (done.version, done.created, done.changed, done.attempts) == (2, False, False, 0)
        assert server.writes() == []

    def test_create_timed_out_after_the_server_committed_is_found_not_repeated(self, clock, rng):
        client, server = client_for(clock, rng)
        server.faults[CREATE] = [COMMIT_THEN_TIME_OUT]
        done = register_model_version(client, "churn", source=SOURCE)
        assert len(server.sent("POST", API + "/model-versions/create")) == 1
        assert len(server.versions) == 1 and (done.version, done.created, done.attempts) == (1, True, 1)
        assert done.searches == 2 and done.failures == ["[1] create: timed out (may have reached the server)"]
        assert max(clock.sleeps) >= 10.0, "waits the request timeout before deciding by a search"

    def test_create_timed_out_before_the_server_acted_is_sent_once_more(self, clock, rng):
        client, server = client_for(clock, rng)
        server.faults[CREATE] = [timed_out()]
        done = register_model_version(client, "churn", source=SOURCE)
        kinds = [(r["method"], r["path"].rsplit("/", 1)[1]) for r in server.requests]
        assert kinds == [("GET", "search"), ("POST", "create"), ("POST", "create"), ("GET", "search"),
                         ("POST", "create")]
        assert len(server.versions) == 1 and (done.version, done.created, done.attempts) == (1, True, 2)

    @pytest.mark.parametrize("status", [500, 502, 503, 504])
    def test_5xx_on_create_is_checked_by_a_search_then_created(self, clock, rng, status):
        client, server = client_for(clock, rng)
        server.faults[CREATE] = [
            mlflow_fail("INTERNAL_ERROR", "database is restarting", status)]
        done = register_model_version(client, "churn", source=SOURCE)
        assert len(server.sent("POST", API + "/model-versions/create")) == 2
        assert len(server.versions) == 1 and done.version == 1 and done.created and done.searches == 2
        assert done.failures[0].startswith("[1] create: HTTP %d INTERNAL_ERROR: database is restarting" % status)

    def test_refused_connection_moves_the_create_to_the_next_endpoint(self, clock, rng):
        client, server = client_for(clock, rng)
        server.faults[CREATE] = [refused()]
        done = register_model_version(client, "churn", source=SOURCE)
        creates = server.sent("POST", API + "/model-versions/create")
        assert [c["base"] for c in creates] == [VIP, S1], "refused before sending: safe to send elsewhere"
        assert done.attempts == 1 and done.endpoint == S1 and done.searches == 1

    def test_a_search_that_fails_blocks_any_further_create(self, clock, rng):
        client, server = client_for(clock, rng, max_attempts=3)
        server.faults[CREATE] = [COMMIT_THEN_TIME_OUT]
        server.faults[SEARCH] = [None] + [refused()] * 50
        with pytest.raises(MlflowError) as info:
            register_model_version(client, "churn", source=SOURCE)
        assert len(server.sent("POST", API + "/model-versions/create")) == 1
        msg = str(info.value)
        assert "no version of model 'churn' registered for idempotency key %s after 3 round(s)" % key_of() in msg
        assert "[2] search: connection refused; [3] search: connection refused" in msg
        assert msg.endswith("A create may have reached a server, so the version may exist; a rerun finds it by its "
                            "key instead of creating another.")
        assert info.value.facts["attempts"] == 1 and info.value.facts["version"] is None

    def test_search_outage_then_recovery(self, clock, rng):
        client, server = client_for(clock, rng, max_attempts=6)
        start = clock.now()
        server.down = {VIP, S1, S2}

        def recover():
            if clock.now() >= start + 3:
                server.down = set()

        original = server.send

        def send(*args):
            recover()
            return original(*args)

        server.send = send
        done = register_model_version(client, "churn", source=SOURCE)
        assert done.version == 1 and done.attempts == 1 and len(server.versions) == 1
        assert done.failures and all("search" in f for f in done.failures)

    def test_duplicates_are_reported_and_the_lowest_is_returned(self, clock, rng):
        client, server = client_for(clock, rng)
        server.add_version("churn", key="other")
        server.add_version("churn", key=key_of())
        server.add_version("churn", key="other2")
        server.add_version("churn", key=key_of())
        server.add_version("churn2", key=key_of())
        done = register_model_version(client, "churn", source=SOURCE)
        assert (done.version, done.duplicates, done.created) == (2, [4], False)

    def test_names_the_filter_cannot_carry_are_matched_by_the_client(self, clock, rng):
        client, server = client_for(clock, rng)
        name = "a'b\"c"
        server.add_version("other", key=key_of(name))
        done = register_model_version(client, name, source=SOURCE)
        assert done.created and done.version == 1 and [v["name"] for v in server.versions] == ["other", name]

    def test_registered_model_already_exists_is_fine(self, clock, rng):
        client, server = client_for(clock, rng)
        server.add_version("churn", key="other")
        done = register_model_version(client, "churn", source=SOURCE)
        assert done.version == 2 and not done.registered_model_created
        answer = json.loads(server.requests[1]["body"])
        assert answer == {"name": "churn"}

    def test_a_refusal_is_not_retried_and_says_what_mlflow_said(self, clock, rng):
        client, server = client_for(clock, rng)
        with pytest.raises(MlflowError) as info:
            register_model_version(client, "churn", source="mlflow-artifacts:/nope")
        assert str(info.value).startswith(
            "MLflow tracking server refused the new version for model 'churn' (idempotency key %s): HTTP 400 "
            "INVALID_PARAMETER_VALUE: Invalid model version source: 'mlflow-artifacts:/nope'. The run_id request "
            "parameter must identify the resource that contains the source. MLflow tracking server: POST "
            "/api/2.0/mlflow/model-versions/create failed" % derive_idempotency_key(
                "churn", source="mlflow-artifacts:/nope"))
        assert len(server.sent("POST", API + "/model-versions/create")) == 1
        assert server.versions == []

    def test_wrong_credentials_fail_at_the_search(self, clock, rng):
        client, server = client_for(clock, rng, username="admin", password="wrong")
        server.faults[SEARCH] = [ok(b"You are not authenticated.", status=401)]
        with pytest.raises(MlflowError, match=r"refused the version search for model 'churn' \(idempotency key "
                                              r"[0-9a-f]{32}\): HTTP 401 You are not authenticated\. "):
            register_model_version(client, "churn", source=SOURCE)
        assert len(server.requests) == 1

    def test_bounded_by_the_deadline(self, clock, rng):
        client, server = client_for(clock, rng, max_attempts=50, request_timeout=5.0)
        server.faults[CREATE] = [timed_out()] * 100
        start = clock.now()
        with pytest.raises(MlflowError, match="no version of model 'churn' registered"):
            register_model_version(client, "churn", source=SOURCE, deadline=40.0)
        assert clock.now() - start <= 46.0
        assert server.versions == []

    def test_every_request_ends_within_the_deadline(self, clock, rng):
        client, server = client_for(clock, rng, max_attempts=200, deadline=600.0)
        server.down = {VIP, S1, S2}
        start = clock.now()
        with pytest.raises(MlflowError, match=r"\[1\] search: connection refused"):
            register_model_version(client, "churn", source=SOURCE, deadline=20.0)
        assert clock.now() - start <= 20.5 and server.writes() == []
        assert client.end is None, "the deadline does not outlive the registration"

    def test_bounded_by_the_attempts(self, clock, rng):
        client, server = client_for(clock, rng, max_attempts=2)
        server.faults[CREATE] = [timed_out()] * 10
        with pytest.raises(MlflowError, match=r"after 2 round\(s\) \(at most 2\)") as info:
            register_model_version(client, "churn", source=SOURCE)
        assert info.value.facts["attempts"] == 2

    @pytest.mark.parametrize(("kw", "message"), [
        ({}, "give exactly one of source and artifact"),
        ({"source": SOURCE, "artifact": "/x"}, "give exactly one of source and artifact"),
        ({"source": SOURCE, "idempotency_key": "a'\""}, "cannot be searched for"),
    ])
    def test_bad_arguments(self, clock, rng, kw, message):
        client, server = client_for(clock, rng)
        with pytest.raises(ValueError, match=message):
            register_model_version(client, "churn", **kw)
        assert server.requests == []


class TestAlias:
    def test_alias_set_when_missing(self, clock, rng):
        client, server = client_for(clock, rng)
        done = register_model_version(client, "churn", source=SOURCE, alias="champion")
        assert (done.alias_changed, done.alias_previous_version) == (True, None)
        assert server.aliases == {("churn", "champion"): 1}
        assert json.loads(server.sent("POST", API + "/registered-models/alias")[0]["body"]) == {
            "name": "churn", "alias": "champion", "version": "1"}

    def test_alias_already_right_changes_nothing(self, clock, rng):
        client, server = client_for(clock, rng)
        server.add_version("churn", key=key_of())
        server.aliases[("churn", "champion")] = 1
        done = register_model_version(client, "churn", source=SOURCE, alias="champion")
        assert not done.changed and done.alias_previous_version == 1 and server.writes() == []

    def test_alias_moves_to_the_existing_version(self, clock, rng):
        client, server = client_for(clock, rng)
        server.add_version("churn", key=key_of())
        server.add_version("churn", key="newer")
        server.aliases[("churn", "champion")] = 2
        done = register_model_version(client, "churn", source=SOURCE, alias="champion")
        assert done.changed and not done.created and done.alias_previous_version == 2
        assert server.aliases[("churn", "champion")] == 1

    def test_alias_failure_says_the_version_exists(self, clock, rng):
        client, server = client_for(clock, rng)
        server.faults["POST " + API + "/registered-models/alias"] = [
            mlflow_fail("PERMISSION_DENIED", "Permission denied", 403)]
        with pytest.raises(MlflowError) as info:
            register_model_version(client, "churn", source=SOURCE, alias="champion")
        assert str(info.value).startswith("version 1 is registered, but MLflow tracking server could not point alias "
                                          "'champion' of model 'churn' at it: HTTP 403 PERMISSION_DENIED")
        assert info.value.facts["version"] == 1 and info.value.facts["created"]


class TestArtifact:
    def test_upload_readback_and_source_in_the_runs_root(self, clock, rng, tmp_path):
        model = tmp_path / "model.onnx"
        model.write_bytes(b"\x00weights" * 1000)
        sha = hashlib.sha256(model.read_bytes()).hexdigest()
        client, server = client_for(clock, rng)
        done = register_model_version(client, "churn model", artifact=str(model), run_id="r1")
        key = derive_idempotency_key("churn model", artifact_sha256=sha, run_id="r1")
        assert done.idempotency_key == key and done.artifact_sha256 == sha and done.artifact_size == 8000
        assert done.artifact_uploaded and done.artifact_verified is True and done.created
        assert done.source == "%s/registrations/churn_model/%s" % (RUN_ROOT, key)
        assert done.artifact_uri == done.source + "/model.onnx"
        put = server.sent("PUT", ARTIFACTS)[0]
        assert put["path"] == "%s/0/r1/artifacts/registrations/churn_model/%s/model.onnx" % (ARTIFACTS, key)
        assert put["headers"]["Content-Type"] == "application/octet-stream"
        assert server.versions[0]["source"] == done.source and server.versions[0]["run_id"] == "r1"

    def test_rerun_with_the_same_file_uploads_nothing(self, clock, rng, tmp_path):
        model = tmp_path / "model.onnx"
        model.write_bytes(b"weights")
        client, server = client_for(clock, rng)
        first = register_model_version(client, "churn", artifact=str(model), run_id="r1", artifact_path="models/a")
        server.requests.clear()
        again = register_model_version(client, "churn", artifact=str(model), run_id="r1", artifact_path="models/a")
        assert again.version == first.version and not again.changed and server.writes() == []
        assert again.artifact_verified is None and again.source == first.source

    def test_readback_mismatch_fails_before_any_create(self, clock, rng, tmp_path):
        model = tmp_path / "model.onnx"
        model.write_bytes(b"weights")
        client, server = client_for(clock, rng)
        server.corrupt_readback = True
        with pytest.raises(MlflowError) as info:
            register_model_version(client, "churn", artifact=str(model), run_id="r1", artifact_path="m")
        msg = str(info.value)
        assert "the artifact %s came back from %s%s/0/r1/artifacts/m/model.onnx different: 7 bytes with sha256 " % (
            model, VIP, ARTIFACTS) in msg
        assert msg.endswith("uploaded 7 bytes with sha256 %s; no model version was created"
                            % hashlib.sha256(b"weights").hexdigest())
        assert server.sent("POST", API + "/model-versions/create") == []
        assert info.value.facts["artifact_verified"] is False

    def test_put_retried_on_a_timeout(self, clock, rng, tmp_path):
        model = tmp_path / "model.onnx"
        model.write_bytes(b"weights")
        client, server = client_for(clock, rng)
        server.faults["PUT %s/0/r1/artifacts/m/model.onnx" % ARTIFACTS] = [timed_out()]
        done = register_model_version(client, "churn", artifact=str(model), run_id="r1", artifact_path="m")
        assert len(server.sent("PUT", ARTIFACTS)) == 2 and done.artifact_verified and done.version == 1

    def test_without_a_run_a_registration_run_is_made_once(self, clock, rng, tmp_path):
        model = tmp_path / "model.bin"
        model.write_bytes(b"weights")
        client, server = client_for(clock, rng)
        done = register_model_version(client, "churn", artifact=str(model))
        key = derive_idempotency_key("churn", artifact_sha256=hashlib.sha256(b"weights").hexdigest())
        assert done.run_created and done.run_id == "run1" and done.artifact_verified and done.version == 1
        assert done.source == "mlflow-artifacts:/0/run1/artifacts/registrations/churn/%s" % key
        assert server.run_tags["run1"] == {IDEMPOTENCY_TAG: key} and server.run_status["run1"] == "FINISHED"
        assert server.versions[0]["run_id"] == "run1"
        create = json.loads(server.sent("POST", API + "/runs/create")[0]["body"])
        assert create["run_name"] == "mlflow_ha registration of churn" and create["experiment_id"] == "0"
        server.requests.clear()
        again = register_model_version(client, "churn", artifact=str(model))
        assert not again.changed and again.run_id == "run1" and server.writes() == []

    def test_a_registration_run_left_by_a_failed_attempt_is_reused(self, clock, rng, tmp_path):
        model = tmp_path / "model.bin"
        model.write_bytes(b"weights")
        client, server = client_for(clock, rng)
        server.faults["POST %s/model-versions/create" % API] = [mlflow_fail("INVALID_PARAMETER_VALUE", "no", 400)]
        with pytest.raises(MlflowError):
            register_model_version(client, "churn", artifact=str(model))
        done = register_model_version(client, "churn", artifact=str(model))
        assert done.run_id == "run1" and not done.run_created and done.created
        assert len(server.sent("POST", API + "/runs/create")) == 1 and len(server.runs) == 2

    def test_a_run_create_that_timed_out_after_commit_is_found_not_repeated(self, clock, rng, tmp_path):
        model = tmp_path / "model.bin"
        model.write_bytes(b"weights")
        client, server = client_for(clock, rng)
        server.faults["POST %s/runs/create" % API] = [COMMIT_THEN_TIME_OUT]
        done = register_model_version(client, "churn", artifact=str(model))
        assert len(server.sent("POST", API + "/runs/create")) == 1 and len(server.runs) == 2
        assert done.run_created and done.run_id == "run1" and done.version == 1
        assert done.failures == ["[1] the registration run: timed out"]
        assert len(server.sent("POST", API + "/runs/search")) == 2

    def test_a_run_outside_the_proxy_is_refused_with_the_reason(self, clock, rng, tmp_path):
        model = tmp_path / "model.onnx"
        model.write_bytes(b"weights")
        client, server = client_for(clock, rng)
        server.runs["r2"] = "s3://mlflow/1/r2/artifacts"
        with pytest.raises(MlflowError, match=r"run r2 keeps its artifacts at s3://mlflow/1/r2/artifacts, which the "
                                              r"tracking server does not proxy"):
            register_model_version(client, "churn", artifact=str(model), run_id="r2")
        assert server.writes() == []

    def test_unknown_run_is_a_refusal(self, clock, rng, tmp_path):
        model = tmp_path / "model.onnx"
        model.write_bytes(b"weights")
        client, _server = client_for(clock, rng)
        with pytest.raises(MlflowError, match=r"refused the registration run for model 'churn'.*Run 'r9' not found"):
            register_model_version(client, "churn", artifact=str(model), run_id="r9")

    def test_missing_file(self, clock, rng, tmp_path):
        client, server = client_for(clock, rng)
        with pytest.raises(MlflowError, match="cannot read the artifact %s" % re.escape(str(tmp_path / "nope"))):
            register_model_version(client, "churn", artifact=str(tmp_path / "nope"), run_id="r1")
        assert server.requests == []


class TestCheckMode:
    def test_would_create_without_writing(self, clock, rng):
        client, server = client_for(clock, rng)
        done = register_model_version(client, "churn", source=SOURCE, alias="champion", check_mode=True)
        assert (done.changed, done.created, done.version, done.alias_changed) == (True, True, None, True)
        assert server.writes() == [] and [r["method"] for r in server.requests] == ["GET"]

    def test_existing_version_and_alias_report_no_change(self, clock, rng):
        client, server = client_for(clock, rng)
        server.add_version("churn", key=key_of())
        server.aliases[("churn", "champion")] = 1
        done = register_model_version(client, "churn", source=SOURCE, alias="champion", check_mode=True)
        assert not done.changed and server.writes() == []

    def test_alias_that_would_move(self, clock, rng):
        client, server = client_for(clock, rng)
        server.add_version("churn", key=key_of())
        done = register_model_version(client, "churn", source=SOURCE, alias="champion", check_mode=True)
        assert done.changed and done.alias_changed and not done.created and server.writes() == []

    def test_artifact_without_a_run_creates_no_run(self, clock, rng, tmp_path):
        model = tmp_path / "model.onnx"
        model.write_bytes(b"weights")
        client, server = client_for(clock, rng)
        done = register_model_version(client, "churn", artifact=str(model), check_mode=True)
        assert done.changed and done.source is None and not done.run_created
        assert server.writes() == [] and len(server.sent("POST", API + "/runs/search")) == 1

    def test_artifact_is_neither_uploaded_nor_registered(self, clock, rng, tmp_path):
        model = tmp_path / "model.onnx"
        model.write_bytes(b"weights")
        client, server = client_for(clock, rng)
        done = register_model_version(client, "churn", artifact=str(model), run_id="r1", artifact_path="m",
                                      check_mode=True)
        assert done.changed and done.source == RUN_ROOT + "/m" and not done.artifact_uploaded
        assert server.writes() == [] and server.artifacts == {}


# -- health -------------------------------------------------------------------------------------------------


def server_routes(url, health=None, version=None):
    return {"GET %s/health" % url: [health or ok(b"OK")], "GET %s/version" % url: [version or ok(b"3.17.2\n")]}


def info_routes(*overrides, lb=True, stats=None):
    table = {}
    for url in SERVERS:
        table.update(server_routes(url))
    for extra in overrides:
        table.update(extra)
    if lb:
        table.setdefault("GET %s/health" % VIP, [ok(b"OK")])
    if stats is not None:
        table["GET %s;csv" % STATS] = [stats]
    return table


def prober_for(clock, rng, table, **kw):
    transport = RouteTransport(clock, table)
    return MlflowProber(list(SERVERS), transport=transport, clock=clock, rng=rng, **kw), transport


class TestHaproxyCsv:
    def test_parses_haproxy_26_stats(self):
        backends = parse_haproxy_csv(HAPROXY_CSV)
        assert list(backends) == ["mlflow"], "frontends are not backends"
        mlflow = backends["mlflow"]
        assert mlflow.status == "UP"
        assert [(s.name, s.status, s.serving, s.check_status, s.address) for s in mlflow.servers] == [
            ("mlflow1", "UP", True, "L7OK", "10.0.0.31:5000"),
            ("mlflow2", "DOWN", False, "L4CON", "10.0.0.32:5000"),
            ("mlflow3", "MAINT", False, "", "10.0.0.33:5000")]
        assert mlflow.servers[1].last_check == "Connection refused" and mlflow.servers[1].last_change_seconds == 3
        assert mlflow.servers[1].describe() == "mlflow2 DOWN (L4CON, Connection refused)"

    def test_transitional_states(self):
        text = "# pxname,svname,status,check_status\nmlflow,a,UP 1/3,* L7STS\nmlflow,b,DOWN 1/2,L4TOUT\n" \
               "mlflow,c,no check,\nmlflow,d,NOLB,L7OK\nmlflow,e,DRAIN,L7OK\nmlflow,BACKEND,UP,\n"
        servers = parse_haproxy_csv(text)["mlflow"].servers
        assert [s.name for s in servers if s.serving] == ["a", "c"]
        assert servers[0].check_status == "L7STS"

    def test_not_csv(self):
        with pytest.raises(ValueError, match="not HAProxy's stats CSV"):
            parse_haproxy_csv("<html>Statistics Report</html>")


class TestInfo:
    def test_all_healthy(self, clock, rng):
        all_up = HAPROXY_CSV.replace(",DOWN,", ",UP,").replace(",MAINT,", ",UP,").encode()
        prober, _t = prober_for(clock, rng, info_routes(stats=ok(all_up)), lb_url=VIP, haproxy_stats_url=STATS)
        check = check_servers(prober)
        facts = check.to_dict()
        assert facts["problems"] == [] and facts["healthy"] == list(SERVERS) and facts["versions"] == ["3.17.2"]
        assert facts["servers"][0] == {"url": S1, "healthy": True, "version": "3.17.2", "error": None,
                                       "seconds": facts["servers"][0]["seconds"]}
        assert facts["lb"]["healthy"] and facts["lb"]["haproxy_backend_status"] == "UP"
        assert [s["serving"] for s in facts["lb"]["haproxy_servers"]] == [True, True, True]
        assert set(facts["breakers"]) == {S1, S2, S3, VIP, "http://10.0.0.100:8404"}
        assert facts["checks"] == 1 and facts["min_healthy"] == 3

    def test_auth_header_on_every_mlflow_request_not_on_haproxy(self, clock, rng):
        prober, transport = prober_for(clock, rng, info_routes(stats=ok(HAPROXY_CSV.encode())), lb_url=VIP,
                                       haproxy_stats_url=STATS, username="admin", password="pw")
        check_servers(prober, min_healthy=1)
        for request in transport.requests:
            has_auth = "Authorization" in request["headers"]
            assert has_auth == (not request["url"].startswith("http://10.0.0.100:8404")), request["url"]

    def test_the_stats_page_gets_its_own_login_and_mlflow_never_gets_it(self, clock, rng):
        prober, transport = prober_for(clock, rng, info_routes(stats=ok(HAPROXY_CSV.encode())), lb_url=VIP,
                                       haproxy_stats_url=STATS, username="admin", password="pw",
                                       haproxy_stats_username="monitoring", haproxy_stats_password="mon-pw")
        check_servers(prober, min_healthy=1)
        stats = "Basic " + base64.b64encode(b"monitoring:mon-pw").decode()
        admin = "Basic " + base64.b64encode(b"admin:pw").decode()
        for request in transport.requests:
            expected = stats if request["url"].startswith("http://10.0.0.100:8404") else admin
            assert request["headers"].get("Authorization") == expected, request["url"]

    @pytest.mark.parametrize(("routes", "state", "error"), [
        (server_routes(S2, health=refused()), "is down:", "GET /health: connection refused"),
        (server_routes(S2, health=ok(b"<html>502 Bad Gateway</html>", status=502)),
         "is down:", "GET /health: HTTP 502 <html>502 Bad Gateway</html>"),
        (server_routes(S2, health=ok(b"starting")), "is down:",
         "GET /health answered HTTP 200 with 'starting' instead of OK"),
        (server_routes(S2, version=ok(b"You are not authenticated.", status=401)), "answers /health but",
         "GET /version: HTTP 401 You are not authenticated."),
        (server_routes(S2, health=timed_out()), "is down:", "GET /health: timed out"),
    ])
    def test_a_server_down_is_named_with_what_it_answered(self, clock, rng, routes, state, error):
        prober, _t = prober_for(clock, rng, info_routes(routes), lb_url=VIP)
        check = check_servers(prober)
        assert check.look.problems == ["2 of 3 MLflow tracking servers healthy, 3 required",
                                       "server %s %s %s" % (S2, state, error)]
        facts = check.to_dict()
        assert facts["unhealthy"] == [S2] and facts["servers"][1]["error"] == error

    def test_enough_healthy_servers_is_no_problem(self, clock, rng):
        prober, _t = prober_for(clock, rng, info_routes(server_routes(S3, health=refused())))
        check = check_servers(prober, min_healthy=2)
        assert check.look.problems == [] and check.to_dict()["unhealthy"] == [S3]

    def test_lb_and_haproxy_problems(self, clock, rng):
        table = info_routes({"GET %s/health" % VIP: [ok(b"<html>503 Service Unavailable</html>", status=503)]},
                            stats=ok(HAPROXY_CSV.encode()))
        prober, _t = prober_for(clock, rng, table, lb_url=VIP, haproxy_stats_url=STATS)
        check = check_servers(prober, min_healthy=2)
        assert check.look.problems == [
            "load balancer %s is not serving MLflow: GET /health: HTTP 503 <html>503 Service Unavailable</html>" % VIP,
            "HAProxy backend mlflow has 1 of 3 servers up, 2 required: mlflow1 UP (L7OK), mlflow2 DOWN (L4CON, "
            "Connection refused), mlflow3 MAINT"]

    def test_named_servers_must_be_up_in_haproxy(self, clock, rng):
        """The rolling restart's gate: the restarted server (by its HAProxy name) takes traffic again; enough
        other servers being up is not enough."""
        prober, _t = prober_for(clock, rng, info_routes(stats=ok(HAPROXY_CSV.encode())), haproxy_stats_url=STATS,
                                haproxy_servers=["mlflow1", "mlflow2", "mlflow9"])
        check = check_servers(prober, min_healthy=1)
        assert check.look.problems == [
            "HAProxy does not send traffic to mlflow2 yet: mlflow2 DOWN (L4CON, Connection refused)",
            "HAProxy backend mlflow has no server mlflow9 (it has: mlflow1, mlflow2, mlflow3)"]
        prober, _t = prober_for(clock, rng, info_routes(stats=ok(HAPROXY_CSV.encode())), haproxy_stats_url=STATS,
                                haproxy_servers=["mlflow1"])
        assert check_servers(prober, min_healthy=1).look.problems == []

    def test_missing_backend_names_the_ones_there(self, clock, rng):
        prober, _t = prober_for(clock, rng, info_routes(stats=ok(HAPROXY_CSV.encode())), haproxy_stats_url=STATS,
                                haproxy_backend="mlflow_api")
        check = check_servers(prober)
        assert check.look.problems == ["cannot read HAProxy's view: HAProxy has no backend named 'mlflow_api' (it "
                                       "has: mlflow)"]

    def test_stats_url_already_in_csv_form_and_unreachable(self, clock, rng):
        table = info_routes()
        table["GET %s;csv" % STATS] = [refused()]
        prober, _t = prober_for(clock, rng, table, haproxy_stats_url=STATS + ";csv")
        check = check_servers(prober)
        assert check.look.problems == ["cannot read HAProxy's view: GET http://10.0.0.100:8404/stats;csv: connection "
                                       "refused"]

    def test_wait_that_recovers(self, clock, rng):
        start = clock.now()
        table = info_routes(server_routes(S2, health=until(clock, start + 7, refused(), ok(b"OK"))))
        prober, _t = prober_for(clock, rng, table)
        check = check_servers(prober, wait_timeout=60, poll_interval=2)
        assert check.look.problems == [] and check.checks >= 3 and 7 <= check.waited < 12 and not check.gave_up

    def test_wait_that_expires_reports_the_last_look(self, clock, rng):
        prober, _t = prober_for(clock, rng, info_routes(server_routes(S3, health=refused())))
        check = check_servers(prober, wait_timeout=10, poll_interval=2)
        assert check.gave_up and check.checks > 1 and check.waited <= 12
        assert check.summary() == "2 of 3 servers healthy (3 required)"
        assert check.look.problems[-1] == "server %s is down: GET /health: connection refused" % S3

    @pytest.mark.parametrize(("value", "expected"), [(None, 3), (0, 3), (1, 1), (3, 3)])
    def test_min_healthy(self, value, expected):
        assert check_min_healthy(value, 3) == expected

    @pytest.mark.parametrize("value", [-1, 4])
    def test_min_healthy_out_of_range(self, value):
        with pytest.raises(ValueError, match="min_healthy must be between 1 and 3"):
            check_min_healthy(value, 3)


# -- the modules ----------------------------------------------------------------------------------------------

TLS = dict(ca_path=None, client_cert=None, client_key=None, validate_certs=True)


def version_params(**kw):
    base = dict(endpoints=[VIP, S1], name="churn", source=SOURCE, artifact=None, artifact_path=None, run_id=None,
                experiment_id="0", description=None, idempotency_key=None, alias=None, tags=None, username=None,
                password=None, timeout=10.0, deadline=120.0, max_attempts=5, state="present", **TLS)
    base.update(kw)
    return base


def info_params(**kw):
    base = dict(endpoints=list(SERVERS), lb_url=None, haproxy_stats_url=None, haproxy_stats_username=None,
                haproxy_stats_password=None, haproxy_backend="mlflow",
                haproxy_servers=[], min_healthy=None, username=None, password=None, wait_timeout=0.0,
                poll_interval=2.0, timeout=5.0, deadline=15.0, max_attempts=2, **TLS)
    base.update(kw)
    return base


class Captured(Exception):
    pass


def argument_spec_of(module, monkeypatch):
    seen = {}

    def fake_module(**kwargs):
        seen.update(kwargs)
        raise Captured()

    monkeypatch.setattr(module, "AnsibleModule", fake_module)
    with pytest.raises(Captured):
        module.main()
    return seen


def documented_options(module):
    """The module's options with those of the collection's doc fragments it extends."""
    doc = yaml.safe_load(module.DOCUMENTATION)
    options = dict(doc["options"])
    doc.setdefault("attributes", {})
    for fragment in doc.get("extends_documentation_fragment", []):
        name = fragment.rpartition(".")[2]
        source = importlib.import_module(f"ansible_collections.mlops.mlflow_ha.plugins.doc_fragments.{name}")
        extra = yaml.safe_load(source.ModuleDocFragment.DOCUMENTATION)
        options.update(extra.get("options", {}))
        doc["attributes"].update(extra.get("attributes", {}))
    return doc, options


class TestModules:
    @pytest.mark.parametrize(("module", "params"), [(mlflow_model_version, version_params),
                                                    (mlflow_info, info_params)])
    def test_documentation_matches_the_argument_spec(self, monkeypatch, module, params):
        doc, options = documented_options(module)
        spec = argument_spec_of(module, monkeypatch)
        arguments = spec["argument_spec"]
        assert set(options) == set(arguments) == set(params())
        for name, arg in arguments.items():
            documented = options[name]
            assert documented["type"] == arg["type"], name
            assert documented.get("default") == arg.get("default"), name
            assert documented.get("required", False) == arg.get("required", False), name
            assert documented.get("elements") == arg.get("elements"), name
            assert documented.get("description"), name
        assert arguments["password"]["no_log"] is True
        assert spec["supports_check_mode"] is True
        assert doc["attributes"]["check_mode"]["support"] == "full"
        assert all(a.get("description") for a in doc["attributes"].values())

    def test_model_version_result_matches_return(self, clock, rng):
        server = FakeMlflow(clock)
        result = mlflow_model_version.register(version_params(alias="champion"), False, server, clock, rng)
        absent_only = {"removed_versions", "removed_runs"}
        assert set(yaml.safe_load(mlflow_model_version.RETURN)) - absent_only | {"changed"} == set(result)
        assert result["changed"] and result["version"] == 1 and result["alias_changed"]
        again = mlflow_model_version.register(version_params(alias="champion"), False, server, clock, rng)
        assert not again["changed"] and again["version"] == 1 and again["attempts"] == 0

    def test_absent_removes_the_versions_and_the_registration_run_of_a_key(self, clock, rng, tmp_path):
        """validate.yml registers a check version and removes it again: no growing trail in the registry."""
        server = FakeMlflow(clock)
        model = tmp_path / "model.bin"
        model.write_bytes(b"check")
        made = mlflow_model_version.register(version_params(source=None, artifact=str(model), idempotency_key="k1"),
                                             False, server, clock, rng)
        assert made["created"] and made["run_created"]
        server.add_version("churn", key="other")
        preview = mlflow_model_version.register(version_params(idempotency_key="k1", state="absent"), True, server,
                                                clock, rng)
        assert preview["changed"] and preview["removed_versions"] == [1] and preview["removed_runs"] == [made["run_id"]]
        writes = len(server.writes())
        gone = mlflow_model_version.register(version_params(idempotency_key="k1", state="absent"), False, server,
                                             clock, rng)
        assert gone["changed"] and gone["removed_versions"] == [1] and gone["removed_runs"] == [made["run_id"]]
        assert len(server.writes()) == writes + 2
        assert [v["tags"].get(IDEMPOTENCY_TAG) for v in server.versions] == ["other"]
        assert made["run_id"] not in server.runs
        again = mlflow_model_version.register(version_params(idempotency_key="k1", state="absent"), False, server,
                                              clock, rng)
        assert not again["changed"] and again["removed_versions"] == [] and again["removed_runs"] == []
        assert set(again) <= set(yaml.safe_load(mlflow_model_version.RETURN)) | {"changed", "endpoint"}

    def test_model_version_check_mode(self, clock, rng):
        server = FakeMlflow(clock)
        result = mlflow_model_version.register(version_params(), True, server, clock, rng)
        assert result["changed"] and result["version"] is None and server.writes() == []

    def test_info_result_matches_return(self, clock, rng):
        transport = RouteTransport(clock, info_routes())
        result, failure = mlflow_info.info(info_params(lb_url=VIP), transport, clock, rng)
        assert failure is None and result["changed"] is False and result["healthy_count"] == 3
        assert set(yaml.safe_load(mlflow_info.RETURN)) | {"changed"} == set(result)

    def test_info_failure_names_the_server_and_its_answer(self, clock, rng):
        transport = RouteTransport(clock, info_routes(server_routes(S2, health=refused())))
        result, failure = mlflow_info.info(info_params(), transport, clock, rng)
        assert failure == ("MLflow is not healthy: 2 of 3 MLflow tracking servers healthy, 3 required; server %s is "
                           "down: GET /health: connection refused" % S2)
        assert result["unhealthy"] == [S2] and result["problems"]

    def test_info_failure_after_waiting(self, clock, rng):
        transport = RouteTransport(clock, info_routes(server_routes(S2, health=refused())))
        result, failure = mlflow_info.info(info_params(wait_timeout=6.0, min_healthy=3), transport, clock, rng)
        assert failure.startswith("MLflow is not healthy after waiting ")
        assert "checks; last look: 2 of 3 servers healthy (3 required)): 2 of 3 MLflow" in failure
        assert result["checks"] > 1

    def test_info_bad_min_healthy(self, clock, rng):
        transport = RouteTransport(clock, {})
        result, failure = mlflow_info.info(info_params(min_healthy=5), transport, clock, rng)
        assert failure == "min_healthy must be between 1 and 3 (the servers listed), got 5"
        assert result == {"changed": False} and transport.requests == []


PROBE_TAGS = {"mlflow_ha.probe": "registration_probe"}


class TestHousekeeping:
    """Experiments, deletes and searches by name and tags (what the registration probe needs), request by request."""

    @staticmethod
    def client(clock, rng, routes):
        transport = RouteTransport(clock, routes)
        return MlflowClient([VIP], transport=transport, clock=clock, rng=rng, request_timeout=5.0, deadline=5.0,
                            max_attempts=1), transport

    @staticmethod
    def search_url(filter_text, token=None):
        query = {"filter": filter_text, "max_results": 100}
        if token:
            query["page_token"] = token
        return "GET %s%s/model-versions/search?%s" % (VIP, API, urlencode(query))

    @staticmethod
    def version(number, name="probe", **tags):
        return {"name": name, "version": str(number), "run_id": "run%d" % number,
                "tags": [{"key": k, "value": v} for k, v in tags.items()]}

    def test_delete_version_sends_a_json_body_and_takes_not_found_as_gone(self, clock, rng):
        route = "DELETE %s%s/model-versions/delete" % (VIP, API)
        client, transport = self.client(clock, rng, {route: [
            mlflow_json({}), mlflow_fail("RESOURCE_DOES_NOT_EXIST", "Model Version (name=m, version=3) not found", 404),
            mlflow_fail("INTERNAL_ERROR", "db", 500)]})
        assert client.delete_version("m", 3) is True
        sent = transport.requests[0]
        assert json.loads(sent["body"]) == {"name": "m", "version": "3"}
        assert sent["headers"]["Content-Type"] == "application/json"
        assert client.delete_version("m", 3) is False
        with pytest.raises(HttpClientError, match="HTTP 500"):
            client.delete_version("m", 3)

    def test_delete_run(self, clock, rng):
        route = "POST %s%s/runs/delete" % (VIP, API)
        client, transport = self.client(clock, rng, {route: [
            mlflow_json({}), mlflow_fail("RESOURCE_DOES_NOT_EXIST", "Run 'r9' not found", 404)]})
        assert client.delete_run("r9") is True and json.loads(transport.requests[0]["body"]) == {"run_id": "r9"}
        assert client.delete_run("r9") is False

    def get_by_name(self, name="probe"):
        return "GET %s%s/experiments/get-by-name?experiment_name=%s" % (VIP, API, name)

    def test_ensure_experiment_creates_a_missing_one(self, clock, rng):
        missing = mlflow_fail("RESOURCE_DOES_NOT_EXIST", "Could not find experiment with name 'probe'", 404)
        client, transport = self.client(clock, rng, {
            self.get_by_name(): [missing],
            "POST %s%s/experiments/create" % (VIP, API): [mlflow_json({"experiment_id": "4"})]})
        assert client.ensure_experiment("probe") == ("4", True)
        assert json.loads(transport.requests[1]["body"]) == {"name": "probe"}

    def test_ensure_experiment_finds_and_restores(self, clock, rng):
        def found(stage):
            return mlflow_json({"experiment": {"experiment_id": "2", "name": "probe", "lifecycle_stage": stage}})

        restore = "POST %s%s/experiments/restore" % (VIP, API)
        client, transport = self.client(clock, rng, {self.get_by_name(): [found("active"), found("deleted")],
                                                     restore: [mlflow_json({})]})
        assert client.ensure_experiment("probe") == ("2", False) and len(transport.requests) == 1
        assert client.ensure_experiment("probe") == ("2", True)
        assert transport.requests[-1]["url"].endswith("/experiments/restore")
        assert json.loads(transport.requests[-1]["body"]) == {"experiment_id": "2"}

    def test_ensure_experiment_made_meanwhile_by_someone_else(self, clock, rng):
        client, _transport = self.client(clock, rng, {
            self.get_by_name(): [mlflow_fail("RESOURCE_DOES_NOT_EXIST", "no", 404), mlflow_json(
                {"experiment": {"experiment_id": "5", "name": "probe", "lifecycle_stage": "active"}})],
            "POST %s%s/experiments/create" % (VIP, API): [mlflow_fail("RESOURCE_ALREADY_EXISTS", "exists")]})
        assert client.ensure_experiment("probe") == ("5", False)

    def test_list_versions_by_name_and_tags_all_pages_highest_first(self, clock, rng):
        text = "name = 'probe' AND tags.`mlflow_ha.probe` = 'registration_probe'"
        client, _transport = self.client(clock, rng, {
            self.search_url(text): [mlflow_json({"model_versions": [self.version(2, **PROBE_TAGS)],
                                                 "next_page_token": "t1"})],
            self.search_url(text, "t1"): [mlflow_json({"model_versions": [
                self.version(7, **PROBE_TAGS), self.version(5), self.version(9, "other", **PROBE_TAGS)]})]})
        assert [v.version for v in client.list_versions("probe", PROBE_TAGS)] == [7, 2]

    def test_list_versions_refuses_to_answer_with_a_part(self, clock, rng):
        text = "name = 'probe'"
        page = mlflow_json({"model_versions": [self.version(1)], "next_page_token": "t"})
        client, transport = self.client(clock, rng, {self.search_url(text): [page], self.search_url(text, "t"): [page]})
        with pytest.raises(MlflowError, match="has more than 2000 versions of model 'probe'"):
            client.list_versions("probe")
        assert len(transport.requests) == 20

    def test_list_versions_names_it_cannot_search_for(self, clock, rng):
        client, _transport = self.client(clock, rng, {})
        with pytest.raises(ValueError, match="cannot be searched for"):
            client.list_versions("a'b\"c")

    def test_recent_runs_newest_first_by_tag(self, clock, rng):
        route = "POST %s%s/runs/search" % (VIP, API)
        client, transport = self.client(clock, rng, {route: [mlflow_json({"runs": [
            {"info": {"run_id": "r3"}}, {"info": {"run_id": "r2"}}, {"data": {}}]})]})
        assert client.recent_runs("3", PROBE_TAGS, max_results=7) == ["r3", "r2"]
        assert json.loads(transport.requests[0]["body"]) == {
            "experiment_ids": ["3"], "max_results": 7, "order_by": ["start_time DESC"],
            "filter": "tags.`mlflow_ha.probe` = 'registration_probe'"}

    def test_create_run_with_extra_tags_keeps_the_key_last(self, clock, rng):
        route = "POST %s%s/runs/create" % (VIP, API)
        client, transport = self.client(clock, rng, {route: [mlflow_json(
            {"run": {"info": {"run_id": "r4", "artifact_uri": "mlflow-artifacts:/3/r4/artifacts"}}})]})
        assert client.create_run("3", "k1", "probe run", tags={"team": "ml", IDEMPOTENCY_TAG: "ignored"}) == (
            "r4", "mlflow-artifacts:/3/r4/artifacts")
        assert json.loads(transport.requests[0]["body"])["tags"] == [
            {"key": "team", "value": "ml"}, {"key": IDEMPOTENCY_TAG, "value": "k1"}]
