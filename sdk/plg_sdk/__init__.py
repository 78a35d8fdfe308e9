"""plg SDK: send product and usage events to plg ingest.

from plg_sdk import Client

client = Client("plg_<key-id>_<secret>", host="http://127.0.0.1:8080")
client.track("api_call", {"tokens": 512, "model": "large"})
client.identify("user-42")
client.flush()
"""

from plg_sdk.client import USER_AGENT, Client, Stats, __version__
from plg_sdk.queue import DROP_NEWEST, DROP_OLDEST

__all__ = ["DROP_NEWEST", "DROP_OLDEST", "USER_AGENT", "Client", "Stats", "__version__"]
