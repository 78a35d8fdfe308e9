"""The health-score service (HTTP :8084): composite customer health from enriched events, its history,
alerts with hysteresis and the live CS dashboard. docs/health-score.md."""
