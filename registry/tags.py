"""Names the launcher writes and the registry reads: run tags set at submit and the code
snapshot's file. No MLflow import, so the launcher names them on a machine without MLflow
(records mode)."""

from __future__ import annotations

COMMAND_TAG = "command"  # the submit command line as typed, shell-quoted
REPRODUCE_TAG = "reproduce_command"  # that command narrowed to this run (--only NAME)
CONFIG_DIFF_TAG = "config_diff"  # JSON: dotted key -> value, where the run differs from its suite's base
NOT_RECORDED = "not recorded at submit"
# Written at the root of a frozen code snapshot (launch/snapshot.py): the code's git state.
CODE_SNAPSHOT_FILE = "CODE_SNAPSHOT.json"
# A submission of several runs is one parent MLflow run with its members as children, so the UI
# shows a sweep as one row that opens into its runs.
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag for a child run
RUN_KIND_TAG = "latentbridge.run_kind"  # "analysis", "submission" (a parent); training runs have none
SUBMISSION_KIND = "submission"
