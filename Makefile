# mlflow-ha: `make lab` builds the local lab, `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV := $(ROOT)/.venv
export PATH := $(VENV)/bin:$(PATH)
export MLFLOW_HA_ROOT := $(ROOT)
export ANSIBLE_CONFIG := $(ROOT)/ansible.cfg
COLLECTION := $(ROOT)/.cache/collections/ansible_collections/mlops/mlflow_ha
# One scenario only: make molecule SCENARIO=roles/node_exporter/molecule/default
SCENARIO ?=
# Scenarios run side by side by `make molecule` (pytest-xdist workers); 1 runs them one after another.
MOLECULE_JOBS ?= 2

.PHONY: help bootstrap host engine image venv controller weed etcd wheelhouse client actionlint promtool lab lab-destroy test lint sanity unit \
	deploy-check cloud molecule e2e bench clean

help:
	@echo "make lab        build the local container lab (inventories/lab): site.yml + validate.yml, prints the URLs"
	@echo "make lab-destroy  remove the lab"
	@echo "make test       lint + sanity + unit + molecule + the lab's end-to-end chaos test (what CI runs)"
	@echo "make bench      registration load and faults against the lab; JSON result in tests/output/bench"
	@echo "make cloud      the AWS template (cloud/aws) linted and deployed on a local moto server, inventory included"
	@echo "make molecule SCENARIO=roles/<role>/molecule/default   one scenario"
	@echo "make controller a deployment controller without Docker: venv + wheelhouses (docs/deploy.md)"

## Harness: each step is idempotent and quick when nothing changed.
bootstrap: host engine venv image

host:
	@bash tools/host-packages.sh

engine:
	@bash tools/docker-engine.sh

venv:
	@bash tools/venv.sh

# A user's deployment controller (docs/deploy.md): a virtualenv from requirements-controller.txt, the collection
# linked for ansible.cfg, the Patroni and MLflow wheelhouses; no Docker, no lab. CONTROLLER_ARGS: tools/controller.sh
# --help (e.g. --binaries: etcd and SeaweedFS from their Go modules).
CONTROLLER_ARGS ?=
controller:
	@bash tools/controller.sh $(CONTROLLER_ARGS)

image: engine
	@bash tools/build-image.sh

# Not bootstrap: tools/lab.sh up builds the controller venv and the base image beside the binaries and wheelhouses it
# needs; the Go builds go on beside site.yml's first plays.
lab: host engine
	@bash tools/lab.sh up

lab-destroy: venv
	@bash tools/lab.sh destroy

## Tests
# Every phase in order, timed; the log ends with the table of phases and their seconds (tools/test.sh).
# The base image is built by tools/test.sh in the background beside lint, sanity and unit tests (they need no
# container); molecule and e2e depend on it through bootstrap.
test: host engine venv
	@bash tools/test.sh

lint: venv actionlint
	ansible-lint
	ruff check plugins tests tools roles clients
	python tools/check_argument_specs.py
	python tools/check_release.py
	bash tools/lint-pipelines.sh

sanity: venv
	bash tools/sanity.sh

# promtool/amtool (extracted from Debian's packages, never installed as services) for the alert rule tests.
promtool:
	@bash tools/promtool.sh >/dev/null

unit: venv promtool client
	PROMTOOL=$(ROOT)/.cache/bin/promtool pytest tests/unit

# What docs/deploy.md tells users, checked without Docker: the files, playbooks and make targets its commands name
# exist, the example inventory has every group site.yml needs, the playbooks it names pass --syntax-check.
deploy-check: venv
	pytest tests/deploy

# The AWS CloudFormation template without a cloud or Docker: cfn-lint, then tests/cloud deploys it (both storage
# variants) on moto's server on 127.0.0.1 and builds the inventory from it with inventories/aws (docs/cloud-aws.md).
cloud: venv
	cfn-lint cloud/aws/*.yml
	pytest tests/cloud

# The SeaweedFS binary the storage scenarios install (built once from its Go module, cached outside the checkout).
weed:
	@bash tools/build-weed.sh >/dev/null

# etcd and etcdctl 3.6 for the etcd role (built once from their Go modules, cached beside weed): Debian's 3.4.23
# has a lease bug a frozen leader triggers (docs/postgres-ha.md).
etcd:
	@bash tools/build-etcd.sh >/dev/null

# actionlint for the deployment pipeline templates (make lint; built once from its Go module, cached beside weed).
actionlint:
	@bash tools/build-actionlint.sh >/dev/null

# Offline wheelhouses the roles install from: Patroni (patroni role) and MLflow (mlflow role).
wheelhouse:
	@bash tools/wheelhouse.sh patroni roles/patroni/files/requirements.txt >/dev/null
	@bash tools/wheelhouse.sh mlflow roles/mlflow/files/requirements.txt >/dev/null

# The official MLflow client on the controller, from the MLflow wheelhouse (.cache/mlflow-venv): the unit tests'
# client-library test against a real MLflow server, the end-to-end tests and `make bench` register with it.
client:
	@bash tools/mlflow-venv.sh >/dev/null

# What the scenarios need built first. `make test` runs only scenarios that need etcd alone (the others' checks run
# on the lab) and passes MOLECULE_NEEDS=etcd, so that the SeaweedFS build goes on beside them.
MOLECULE_NEEDS ?= weed etcd wheelhouse

molecule: bootstrap $(MOLECULE_NEEDS)
	MLFLOW_HA_WEED_BINARY="$(if $(filter weed,$(MOLECULE_NEEDS)),$$(bash tools/build-weed.sh 2>/dev/null | tail -1))" \
	  MLFLOW_HA_ETCD_BINARIES="$$(bash tools/build-etcd.sh 2>/dev/null | tail -1)" \
	  MLFLOW_HA_PATRONI_WHEELHOUSE="$${MLFLOW_HA_CACHE:-$(ROOT)/.cache}/wheelhouse/patroni.tar" \
	  pytest tests/molecule $(if $(SCENARIO),--scenario $(SCENARIO),$(if $(filter-out 1,$(MOLECULE_JOBS)),-n $(MOLECULE_JOBS) --dist loadgroup,))

# The whole lab, its idempotence and registrations through the loss of each kind of machine (tests/lab).
e2e: bootstrap weed etcd wheelhouse client
	MLFLOW_HA_CLIENT_PYTHON="$$(bash tools/mlflow-venv.sh 2>/dev/null | tail -1)" pytest tests/lab

bench: bootstrap weed etcd wheelhouse client
	@bash tools/bench.sh

clean:
	rm -rf .cache/collections tests/output
