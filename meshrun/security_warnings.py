"""What in services.toml works but weakens security: plaintext secrets, services listening beyond loopback in
cleartext. `meshrun check` prints these as warnings; what cannot work at all is a ConfigError instead.
"""
from __future__ import annotations

import os
from typing import Any

from meshrun.config import MeshConfig
from meshrun.tls import TRUST_PROXY_HINT, is_loopback_host

_SECRET_WORDS = ("secret", "password")
_NOT_A_SECRET = ("_env", "_file", "_hash")  # names of where a secret is, or its hash


def _plaintext(table: dict[str, Any], path: str, file: str) -> list[str]:
    found = []
    for name, value in table.items():
        key = f"{path}.{name}"
        if isinstance(value, dict):
            found += _plaintext(value, key, file)
        elif isinstance(value, list):
            found += [warning for i, item in enumerate(value) if isinstance(item, dict)
                      for warning in _plaintext(item, f"{key}[{i}]", file)]
        elif isinstance(value, str) and value and any(w in name.lower() for w in _SECRET_WORDS) \
                and not name.lower().endswith(_NOT_A_SECRET):
            found.append(f"{key}: a plaintext secret in {file}: whoever reads the file (or its history) has it; give "
                         f"it through the environment or a file instead ({name}_env or {name}_file)")
    return found


def security_warnings(config: MeshConfig) -> list[str]:
    """One sentence per weakness, each naming its key."""
    warnings = []
    for name, service in config.services.items():
        warnings += _plaintext(service.settings, f"services.{name}.settings", os.path.basename(config.file))
    if "sasl_plain_password" in config.kafka.options and not os.environ.get("MESHRUN_KAFKA_SASL_PLAIN_PASSWORD"):
        warnings.append("transport.kafka.sasl_plain_password: a plaintext secret in services.toml: give it through "
                        "the environment variable MESHRUN_KAFKA_SASL_PLAIN_PASSWORD instead")
    if not is_loopback_host(config.host) and not config.trust_proxy_tls:
        warnings.append(f"mesh.host: {config.host} is not a loopback interface, and the services answer plain http "
                        "there (the login form, the token endpoint, bearer tokens): "
                        f"{TRUST_PROXY_HINT}, and keep the operator endpoints off public interfaces")
    return warnings
