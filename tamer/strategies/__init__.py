"""Memory-saving strategies (the rungs of the escalation ladder), one file each."""
