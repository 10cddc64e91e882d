"""Notifications: `[notify.NAME]` tables that tell someone when something happens.

Each notifier consumes the event log through its own bounded queue and
sends with its own task: a webhook (a JSON POST, Slack- and
Mattermost-compatible `text` plus the structured event), a command (argv,
the event as JSON on stdin and `CC_EVENT_*` variables) or an email (SMTP,
the standard library's smtplib, in a worker thread). One that fails is
logged and retried with backoff; one that hangs is cut by its timeout;
neither ever delays supervision.

Flapping never floods: at most one notification per component and event
kind per `min_interval`; what comes meanwhile is counted and sent as one
summary ("and 14 more crashed in 5 min") when the interval ends.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from core.events import Event, iso

log = logging.getLogger("control_center")

NOTIFIER_KINDS = ("webhook", "command", "email")


@dataclass(frozen=True)
class NotifyConfig:
    """One `[notify.NAME]` table."""

    name: str
    kind: str
    events: tuple[str, ...]
    components: tuple[str, ...] | None = None
    min_interval: float = 60.0
    timeout: float = 10.0
    retries: int = 3
    # webhook
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # command
    command: tuple[str, ...] = ()
    # email
    host: str | None = None
    port: int = 25
    starttls: bool = False
    user: str | None = None
    password_file: Path | None = None
    sender: str = "control-center@localhost"
    to: tuple[str, ...] = ()


def describe(event: Event, more: int = 0, span: float = 0.0) -> str:
    """One line for a human: what happened, to what, and how often meanwhile."""
    what = {"crashed": "crashed", "gave_up": "gave up restarting",
            "unhealthy": "is unhealthy", "recovered": "recovered",
            "restart_scheduled": "will restart", "state": "changed state",
            "probe_error": "probe failed", "reload": "config reloaded",
            "control": "was controlled", "restart": "restarted"}.get(event.kind, event.kind)
    subject = event.component or "Control Center"
    detail = event.data.get("reason") or event.data.get("error") or ""
    if event.kind == "control":
        detail = (f"{event.data.get('action')} by {event.data.get('actor')} "
                  f"({event.data.get('result')})")
    text = f"{subject} {what}" + (f": {detail}" if detail else "")
    if more:
        text = f"{subject}: and {more} more {event.kind} in {_span(span)}"
    return text


def _span(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class Notifier:
    """One `[notify.NAME]`: filters events, holds back repeats, sends with retries."""

    def __init__(self, config: NotifyConfig) -> None:
        self.config = config
        self.failed = 0
        self.sent = 0
        #: (component, kind) -> when the last notification left.
        self._last: dict[tuple[str | None, str], float] = {}
        #: (component, kind) -> events held back since, and the first of them.
        self._held: Counter[tuple[str | None, str]] = Counter()
        self._held_since: dict[tuple[str | None, str], float] = {}
        self._held_event: dict[tuple[str | None, str], Event] = {}
        self._nursery: trio.Nursery | None = None
        #: Its queue in the event log (set by core.events.build).
        self.consumer: Any = None

    def wants(self, event: Event) -> bool:
        c = self.config
        # An instance ID.K is told to whoever asked for its component ID.
        return event.kind in c.events and (c.components is None or (
            event.component or "").partition(".")[0] in c.components)

    async def run(self, receive: trio.MemoryReceiveChannel[Event]) -> None:
        """Consume events until cancelled; summaries leave when their interval ends."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            async for event in receive:
                if self.wants(event):
                    self._take(event)

    def _take(self, event: Event) -> None:
        key = (event.component, event.kind)
        now = trio.current_time()
        last = self._last.get(key)
        if last is None or now - last >= self.config.min_interval:
            if not self._held.get(key):
                self._last[key] = now
                self._spawn(describe(event), event)
                return
        if not self._held[key]:
            self._held_since[key] = now
            wait = self.config.min_interval - (now - (last or now))
            assert self._nursery is not None
            self._nursery.start_soon(self._summary_after, key, max(0.0, wait))
        self._held[key] += 1
        self._held_event[key] = event

    async def _summary_after(self, key: tuple[str | None, str], wait: float) -> None:
        await trio.sleep(wait)
        count = self._held.pop(key, 0)
        event = self._held_event.pop(key)
        since = self._held_since.pop(key)
        self._last[key] = trio.current_time()
        if count:
            await self._send_retrying(describe(event, count, trio.current_time() - since),
                                      event, count)

    def _spawn(self, text: str, event: Event) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._send_retrying, text, event, 0)

    async def _send_retrying(self, text: str, event: Event, more: int) -> None:
        delay = 1.0
        for attempt in range(1, self.config.retries + 2):
            try:
                with trio.fail_after(self.config.timeout):
                    await self.send(text, event, more)
                self.sent += 1
                return
            except Exception as exc:  # a notifier that fails never stops the supervisor
                reason = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
                if attempt > self.config.retries:
                    self.failed += 1
                    log.error("notify.%s: giving up on event %d after %d attempts: %s",
                              self.config.name, event.id, attempt, reason)
                    return
                log.warning("notify.%s: attempt %d failed (%s); retrying in %g s",
                            self.config.name, attempt, reason, delay)
                await trio.sleep(delay)
                delay *= 2

    async def send(self, text: str, event: Event, more: int) -> None:
        """Deliver one notification (raises on failure)."""
        payload = {"text": text, "event": event.as_dict(), "more": more}
        c = self.config
        if c.kind == "webhook":
            import httpx  # here: only a config with a webhook pays for it

            assert c.url is not None
            async with httpx.AsyncClient(timeout=c.timeout) as http:
                response = await http.post(c.url, json=payload, headers=dict(c.headers))
            if response.status_code >= 300:
                raise RuntimeError(f"{c.url} answered HTTP {response.status_code}")
        elif c.kind == "command":
            env = {f"CC_EVENT_{k.upper()}": str(v) for k, v in
                   (("kind", event.kind), ("component", event.component or ""),
                    ("time", iso(event.time)), ("id", event.id), ("text", text),
                    ("more", more))}
            result = await trio.run_process(list(c.command), stdin=json.dumps(payload).encode(),
                                            env={**os.environ, **env}, check=False,
                                            capture_stdout=True, capture_stderr=True)
            if result.returncode != 0:
                last = (result.stderr or result.stdout or b"").decode(errors="replace")
                raise RuntimeError(f"{c.command[0]} exited {result.returncode}: "
                                   f"{last.strip().splitlines()[-1:] or ''}")
        else:
            await trio.to_thread.run_sync(self._email, text, payload, abandon_on_cancel=True)

    def _email(self, text: str, payload: dict[str, Any]) -> None:
        c = self.config
        assert c.host is not None
        import smtplib  # here: only a config with an email notifier pays for it
        from email.message import EmailMessage

        message = EmailMessage()
        message["Subject"] = f"[Control Center] {text}"[:200]
        message["From"] = c.sender
        message["To"] = ", ".join(c.to)
        message.set_content(f"{text}\n\n{json.dumps(payload['event'], indent=2)}\n")
        with smtplib.SMTP(c.host, c.port, timeout=c.timeout) as smtp:
            if c.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if c.user is not None and c.password_file is not None:
                smtp.login(c.user, c.password_file.read_text().strip())
            smtp.send_message(message)


