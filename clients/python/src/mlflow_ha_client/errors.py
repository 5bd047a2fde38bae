"""What register() and a replay raise."""

from __future__ import annotations

from typing import Any, Dict, Optional


class RegistryError(Exception):
    """Base of this package's errors."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or did not finish in time: spooling helps. ``tier`` names what is down
    from the load balancer's view (``load balancer``, ``mlflow``, ``backend`` for PostgreSQL or the artifact
    store behind healthy servers, ``unknown``); ``health`` is what was observed (``Registry.health()``)."""

    def __init__(self, message: str, tier: str = "unknown", health: Optional[Dict[str, Any]] = None,
                 key: Optional[str] = None):
        super().__init__(message)
        self.tier = tier
        self.health = dict(health or {})
        self.key = key


class RegistrationRefused(RegistryError):
    """MLflow answered, and refused (a 4xx: credentials, permissions, a bad name), or the artifact came back
    different: another try would get the same, so it is raised and never spooled (a replay marks it failed)."""

    def __init__(self, message: str, key: Optional[str] = None):
        super().__init__(message)
        self.key = key
