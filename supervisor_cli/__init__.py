"""`session-supervisor`: a command-line client of the Session Supervisor's REST API.

It lets operators and `make demo` start, inspect, stop and watch a customer's workload
without hand-written curl calls. Entry point: `supervisor_cli.__main__:main`.
"""
