"""The analytics store service: ``usage-events-enriched`` into ClickHouse's engine, exactly once, and the
questions a growth team asks of it (funnels, retention, the north star, activation rates, timelines)."""
