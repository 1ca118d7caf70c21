"""The targets a notification goes to: a webhook (a JSON POST), a command (the facts in its environment) and
e-mail (SMTP). Each `send` tries once and raises `SendError` (worth another try) or `PermanentError` (not);
sender.py retries. Standard library only: urllib, subprocess, smtplib.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from typing import Protocol

from tamer.config import EmailConfig, NotifyConfig
from tamer.notify.messages import Notification, command_environment, email_message, redact, webhook_body

SMTP_USER = "TAMER_SMTP_USER"
SMTP_PASSWORD = "TAMER_SMTP_PASSWORD"
DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}


class SendError(Exception):
    """A send that failed and may succeed when tried again (a timeout, a refused connection, HTTP 5xx or 429)."""


class PermanentError(SendError):
    """A send that trying again cannot fix (HTTP 4xx, a missing environment variable, a refused login)."""


class Target(Protocol):
    name: str
    """How events name the target (a webhook's secret part redacted)."""

    def send(self, notification: Notification) -> None: ...


class Webhook:
    """POST the notification as JSON to a URL, or to the URL in an environment variable (`$NAME`)."""

    def __init__(self, spec: str, timeout: float) -> None:
        self.spec = spec
        self.timeout = timeout
        self.variable = spec.lstrip("$").strip("{}") if spec.startswith("$") else None
        self.name = f"webhook ${self.variable}" if self.variable else f"webhook {redact(spec)}"

    def url(self) -> str:
        if self.variable is None:
            return self.spec
        value = os.environ.get(self.variable)
        if not value:
            raise PermanentError(
                f"the environment variable {self.variable} that notify.webhook names is not set in the supervisor's "
                "environment"
            )
        return value

    def send(self, notification: Notification) -> None:
        url = self.url()
        request = urllib.request.Request(
            url,
            data=json.dumps(webhook_body(notification), default=str).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "tamer"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as error:
            text = f"HTTP {error.code} {error.reason}"
            raise (SendError if error.code >= 500 or error.code in (408, 429) else PermanentError)(text) from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise SendError(str(reason).replace(url, redact(url))) from None


class Command:
    """Run a shell command with the notification in its environment (TAMER_EVENT, TAMER_RUN_ID, TAMER_STATUS,
    TAMER_MESSAGE, ...); a non-zero exit or a timeout is a failed send."""

    def __init__(self, command: str, timeout: float, home: str, run_dir: str | None) -> None:
        self.command = command
        self.timeout = timeout
        self.home = home
        self.run_dir = run_dir
        program = command.split()[0] if command.strip() else ""
        self.name = f"command {os.path.basename(program)}"  # its arguments may carry a token: not in events

    def send(self, notification: Notification) -> None:
        environment = {**os.environ, **command_environment(notification, self.home, self.run_dir)}
        try:
            done = subprocess.run(
                self.command,
                shell=True,
                env=environment,
                timeout=self.timeout,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise SendError(f"took longer than {self.timeout:.0f} s (notify.timeout)") from None
        if done.returncode != 0:
            said = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
            raise SendError(f"exit status {done.returncode}" + (f": {said[-1][:200]}" if said else ""))


class Email:
    """Send the notification by SMTP; the login (if any) comes from TAMER_SMTP_USER and TAMER_SMTP_PASSWORD."""

    def __init__(self, config: EmailConfig, timeout: float) -> None:
        self.config = config
        self.timeout = timeout
        self.port = config.port or DEFAULT_PORTS[config.tls]
        self.sender = config.sender or f"tamer@{socket.gethostname()}"
        self.name = f"email to {', '.join(config.to)} via {config.host}:{self.port}"

    def send(self, notification: Notification) -> None:
        message = email_message(notification, self.sender, self.config.to)
        user, password = os.environ.get(SMTP_USER), os.environ.get(SMTP_PASSWORD, "")
        try:
            if self.config.tls == "ssl":
                server = smtplib.SMTP_SSL(
                    self.config.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                server = smtplib.SMTP(self.config.host, self.port, timeout=self.timeout)
            with server:
                if self.config.tls == "starttls":
                    server.starttls(context=ssl.create_default_context())
                if user:
                    server.login(user, password)
                server.send_message(message)
        except (
            smtplib.SMTPAuthenticationError,
            smtplib.SMTPRecipientsRefused,
            smtplib.SMTPSenderRefused,
            smtplib.SMTPNotSupportedError,
        ) as error:
            raise PermanentError(f"{type(error).__name__}: {error}") from None
        except (smtplib.SMTPException, OSError) as error:
            raise SendError(f"{type(error).__name__}: {error}") from None


def targets_of(config: NotifyConfig, home: str, run_dir: str | None) -> list[Target]:
    """The targets a notify config names, webhook first."""
    found: list[Target] = []
    if config.webhook:
        found.append(Webhook(config.webhook, config.timeout))
    if config.command:
        found.append(Command(config.command, config.timeout, home, run_dir))
    if config.email:
        found.append(Email(config.email, config.timeout))
    return found
