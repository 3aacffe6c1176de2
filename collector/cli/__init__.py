"""The `activity-collector` command line (`collector.cli.main`).

gRPC's C core writes log lines of its own to stderr (`fork_posix.cc` when the embedded PostgreSQL is
started, `add_port.cc` when a port cannot be bound), between the collector's JSON log lines; every
failure they report is reported by the collector too, in its own words. They are silenced here, before
any command imports grpc; GRPC_VERBOSITY (DEBUG, INFO, ERROR) set in the environment brings them back.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
