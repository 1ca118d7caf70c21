"""Being told: notifications of a run's end, its escalations, a stall and the daemon's empty queue, sent by
the supervisor side to a webhook, a command and e-mail (messages.py: what is said, pure; targets.py: how
each target sends; sender.py: the worker thread that retries and records every send; settings.py: the
home's notify.yaml)."""
