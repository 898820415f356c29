"""What a render needs besides the CachedApi: the values that are not in the spec."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import cachedapi

#: The runtime image of this release: what ``spec.image: ""`` means.
DEFAULT_IMAGE = f"ghcr.io/cachedapi/cachedapi:{cachedapi.__version__}"


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """``owner_uid`` goes into every ownerReference; ``api_key``, ``db_password`` and
    ``admin_key`` fill the generated Secrets when they are created (never afterwards); and
    ``secret_digests`` maps a Secret's name to a digest of its data, so that a
    change of a referenced Secret changes the pods' config-hash and rolls them.
    """

    owner_uid: str
    api_key: str
    db_password: str
    admin_key: str = ""
    secret_digests: Mapping[str, str] = field(default_factory=dict)
    default_image: str = DEFAULT_IMAGE

    def digest(self, secret_name: str) -> str:
        return self.secret_digests.get(secret_name, "unknown")
