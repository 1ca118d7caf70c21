"""Reading a run back: recovery history, timelines, plots, HTML reports, read-only SQL and the doctor.

Everything here only reads the database (tamer/state/db.py); the `tamer` commands that print it live
in tamer/cli/commands_inspect.py.
"""
