"""The local real stack: Apache Kafka (KRaft, one node), PostgreSQL, the schema registry and plg's services.

``python -m services.devstack up|down|run|status`` (behind ``make up/down/run/status``) and the test
fixtures in ``tests/conftest.py`` both drive :class:`services.devstack.stack.Stack`.
"""
