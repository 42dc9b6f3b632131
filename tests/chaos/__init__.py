"""Fault-injection ("chaos") campaigns: real PostgreSQL, Redis and Procfile processes, faults injected while
a mixed workload runs, then invariants checked against the database and a side-effect ledger.

* :mod:`tests.chaos.workload`: the workflows and the task bodies that write the ledger;
* :mod:`tests.chaos.procs`: Procfile processes, a supervisor that restarts them, a pid watch;
* :mod:`tests.chaos.faults`: one class per fault;
* :mod:`tests.chaos.invariants`: pure checks over a snapshot of the database and the ledger;
* :mod:`tests.chaos.campaign`: orchestration; :mod:`tests.chaos.report`: the summary table;
* ``python -m tests.chaos --help``: the CLI; ``tests/chaos/test_chaos.py``: the short CI campaign.
"""
