"""``toyconvert`` on the sandbox: its CloudConvert v2 dialect served below /toyconvert/v2."""

from __future__ import annotations

from devstack.sandbox.cloudconvert_v2 import DIALECT, CloudConvertV2
from devstack.sandbox.dialects import DialectParts, ProviderDialect


def toyconvert_dialect(parts: DialectParts) -> ProviderDialect:
    api = CloudConvertV2(parts.backend, api_key=parts.api_key,
                         signing_secret=parts.signing_secret, base_url=parts.base_url,
                         prefix="/toyconvert/v2")
    return ProviderDialect("toyconvert", api.prefix, DIALECT, api.render_job,
                           "CONVERSION_FAILED", (api,))
