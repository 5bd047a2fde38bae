"""Registration into the mlops.mlflow_ha registry that survives a registry outage.

``Registry(url, ..., spool_dir=...).register(name, files, key=...)`` registers a run, its artifact files and a
model version once per idempotency key, with the collection's own client (plugins/module_utils, shared, not
copied); when the registry is down it writes the registration to a durable local spool and returns a ``spooled``
result. ``Replayer`` replays the spool in the background, ``mlflow-ha-client spool status|replay|drop KEY`` by
hand; ``health_app`` and ``registry_health`` report the registry's state, ``Spool.metrics()`` the spool's.
"""

from mlflow_ha_client.client import REGISTERED, SPOOLED, Registry, Result, files_key
from mlflow_ha_client.errors import RegistrationRefused, RegistryError, RegistryUnavailable
from mlflow_ha_client.health import HealthApp, health_app, registry_health
from mlflow_ha_client.replayer import Replayer
from mlflow_ha_client.spool import Entry, ReplayReport, Spool

__all__ = [
    "REGISTERED",
    "SPOOLED",
    "Entry",
    "HealthApp",
    "RegistrationRefused",
    "Registry",
    "RegistryError",
    "RegistryUnavailable",
    "ReplayReport",
    "Replayer",
    "Result",
    "Spool",
    "files_key",
    "health_app",
    "registry_health",
]
__version__ = "0.1.0"
