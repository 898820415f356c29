"""Reading a rendered pod spec the way a kubelet would: where does a setting's secret come from?"""

from __future__ import annotations

from typing import Any

from cachedapi import contract


def secret_source(pod_spec: dict[str, Any], setting: str) -> tuple[str, str]:
    """(Secret name, key) behind ``<setting>_FILE``: env -> file path -> mount -> volume -> item."""
    env = {e["name"]: e for e in pod_spec["containers"][0]["env"]}
    assert setting not in env, f"{setting} must not carry a secret in the environment"
    return file_source(pod_spec, setting + contract.FILE_SUFFIX)


def file_source(pod_spec: dict[str, Any], variable: str) -> tuple[str, str]:
    """(Secret name, key) of the file whose path the environment variable ``variable`` holds."""
    container = pod_spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    path = env[variable]["value"]
    directory, filename = path.rsplit("/", 1)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
    assert mount["readOnly"] is True
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    item = next(i for i in volume["secret"]["items"] if i["path"] == filename)
    return volume["secret"]["secretName"], item["key"]
