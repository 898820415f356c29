"""``cachedapi render FILE``: every object the operator would create, as YAML, without a cluster.

The same builders as the operator (``children.desired_objects``); only the
values a cluster would supply are placeholders, fixed so that the output is
the same on every run and obviously not for use as-is.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from cachedapi import model
from cachedapi.operator import children
from cachedapi.operator.children import config, secrets

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
PLACEHOLDER_API_KEY = "placeholder-api-key-generated-by-the-operator"
PLACEHOLDER_DB_PASSWORD = "placeholder-db-password-generated-by-the-operator"
PLACEHOLDER_ADMIN_KEY = "placeholder-admin-key-generated-by-the-operator"

HEADER = """\
# Rendered by `cachedapi render` for CachedApi {namespace}/{name}.
# Placeholders, not for use as-is: the owner uid ({uid})
# and the generated Secret values ({key!r}, {password!r}).
# The operator fills in the real uid and random values once and never overwrites them.
# Secrets the CachedApi refers to are not read here: their digest in the
# config-hash annotations is "unknown".
"""


class _Dumper(yaml.SafeDumper):
    """No YAML anchors: every object is printed in full, as ``kubectl apply`` expects."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_inputs(api: model.CachedApi) -> children.Inputs:
    placeholder = children.Inputs(
        owner_uid=PLACEHOLDER_UID,
        api_key=PLACEHOLDER_API_KEY,
        db_password=PLACEHOLDER_DB_PASSWORD,
        admin_key=PLACEHOLDER_ADMIN_KEY,
    )
    digests = {obj["metadata"]["name"]: secrets.digest(obj["data"]) for obj in secrets.generated(api, placeholder)}
    return children.Inputs(
        owner_uid=PLACEHOLDER_UID,
        api_key=PLACEHOLDER_API_KEY,
        db_password=PLACEHOLDER_DB_PASSWORD,
        admin_key=PLACEHOLDER_ADMIN_KEY,
        secret_digests=digests,
    )


def render_text(apis: list[model.CachedApi]) -> str:
    chunks = []
    for api in apis:
        header = HEADER.format(
            namespace=api.metadata.namespace,
            name=api.metadata.name,
            uid=PLACEHOLDER_UID,
            key=PLACEHOLDER_API_KEY,
            password=PLACEHOLDER_DB_PASSWORD,
        )
        if api.spec.api.own_image:
            header += f"# The admin key Secret holds a placeholder too ({PLACEHOLDER_ADMIN_KEY!r}).\n"
        docs = [
            yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120)
            for obj in children.desired_objects(api, render_inputs(api))
        ]
        chunks.append(header + "---\n".join(docs))
    return "---\n".join(chunks)


def main(args: argparse.Namespace) -> int:
    try:
        apis = model.load_manifest(args.file)
    except (OSError, model.ManifestError) as exc:
        print(f"cachedapi render: {exc}", file=sys.stderr)
        return 2
    for api in apis:
        problem = config.too_large(api)
        if problem is not None:
            print(f"cachedapi render: CachedApi {api.metadata.name}: {problem}", file=sys.stderr)
            return 2
    sys.stdout.write(render_text(apis))
    return 0
