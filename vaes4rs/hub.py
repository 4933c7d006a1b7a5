"""Is the Hugging Face hub reachable? Asked once per process, so an offline job fails in seconds.

Without ``HF_HUB_OFFLINE`` an unreachable hub makes every hub call retry for tens of seconds
before it falls back to the cache. One short connection attempt decides instead; when it
fails, the process switches huggingface_hub to offline mode (the cache only) and says so.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from urllib.parse import urlparse

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 3.0


@functools.cache
def _endpoint_reachable(endpoint: str) -> bool:
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set or the hub does not answer; then only the cache is used."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    if _endpoint_reachable(constants.ENDPOINT):
        return False
    log.warning(
        "the Hugging Face hub (%s) cannot be reached: working from the local cache only "
        "(set HF_HUB_OFFLINE=1 to skip this check)",
        constants.ENDPOINT,
    )
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    return True
