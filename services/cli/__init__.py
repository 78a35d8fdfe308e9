"""The ``plg`` operator CLI: tenants and their API keys."""
