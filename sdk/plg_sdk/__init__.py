"""plg SDK: send product and usage events to plg ingest.

from plg_sdk import Client

client = Client("plg_<key-id>_<secret>", host="http://127.0.0.1:8080")
client.track("api_call", {"tokens": 512, "model": "large"})
client.identify("user-42")
client.flush()

Growth (sdk/plg_sdk/growth.py): FlagsClient evaluates feature flags locally, Onboarding asks for the next
step and falls back to "no step" when the growth service is down.
"""

from plg_sdk.client import USER_AGENT, Client, Stats, __version__
from plg_sdk.flags import Evaluation, FlagSet, compile_document
from plg_sdk.growth import FlagsClient, Onboarding
from plg_sdk.queue import DROP_NEWEST, DROP_OLDEST

__all__ = [
    "DROP_NEWEST",
    "DROP_OLDEST",
    "USER_AGENT",
    "Client",
    "Evaluation",
    "FlagSet",
    "FlagsClient",
    "Onboarding",
    "Stats",
    "__version__",
    "compile_document",
]
