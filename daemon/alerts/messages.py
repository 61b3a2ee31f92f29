"""What an alert or a call-start notice says: the JSON payload every sink carries, and its text.

A `Notification` is one thing to tell the support side: a quota alert (a threshold of the daily
free time or of the prepaid package, or the first paid time of a period; see `accounting.quota`)
or the notice that a client's call started (who it is and what is left, or that the caller is not
matched). Pure: the payload (`payload`) is the documented JSON object of the README, and the
texts (`text`, `subject`) are short sentences in Russian or English for people reading a chat or
a mailbox. Seconds are exact to the millisecond in the payload and `h:mm:ss` in the texts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, Literal

from accounting.contracts import Contract
from accounting.quota import AlertKey, Standing, is_term

Language = Literal["ru", "en"]
NotificationType = Literal["quota.alert", "call.started"]
Match = Literal["matched", "unknown", "withheld", "ambiguous", "no_contract"]
Category = Literal["threshold", "overrun", "call_start"]
CATEGORIES: tuple[Category, ...] = ("threshold", "overrun", "call_start")


@dataclass(frozen=True, slots=True)
class ClientInfo:
    client_id: str
    name: str
    timezone: str


@dataclass(frozen=True, slots=True)
class CallInfo:
    """The conversation a notification is about, as the call model sees it."""

    conversation_id: str
    pbx: str
    channel: str
    direction: str | None
    """inbound, outbound, or None while the call model cannot tell yet"""
    client_number: str | None
    client_number_raw: str
    line: str | None
    started_at: float
    consultants: tuple[str, ...] = ()
    consultant_channels: tuple[str, ...] = ()
    ended: bool = False


@dataclass(frozen=True, slots=True)
class Notification:
    type: NotificationType
    decided_at: float
    """Epoch seconds on the PBX's clock when talkmeter decided to send it."""
    pbx: str
    match: Match
    call: CallInfo | None = None
    client: ClientInfo | None = None
    contract: Contract | None = None
    standing: Standing | None = None
    key: AlertKey | None = None
    crossed_at: float | None = None
    """When the threshold was crossed (epoch seconds); for a crossing found only when a
    conversation was recorded, the end of that conversation."""
    candidates: tuple[str, ...] = ()
    """The clients an ambiguous number belongs to."""
    notification_id: int | None = None

    @property
    def category(self) -> Category:
        if self.key is None:
            return "call_start"
        return "overrun" if self.key.kind == "overrun" else "threshold"

    def claimed(self, notification_id: int) -> Notification:
        return replace(self, notification_id=notification_id)


# --- the payload ---------------------------------------------------------------------------------


def payload(notification: Notification, language: Language = "en") -> dict[str, Any]:
    """The JSON object sent to the webhook and NOTIFY talkmeter_alerts (see README); the log line
    has its main fields."""
    n = notification
    return {
        "id": n.notification_id,
        "type": n.type,
        "alert": _alert(n),
        "decided_at": iso(n.decided_at),
        "pbx": n.pbx,
        "match": n.match,
        "client": _client(n.client),
        "candidates": list(n.candidates),
        "contract": _contract(n.contract),
        "call": _call(n.call),
        "left": None if n.standing is None else left(n.standing),
        "text": text(n, language),
    }


def _alert(n: Notification) -> dict[str, Any] | None:
    if n.key is None:
        return None
    key = n.key
    term = key.kind == "prepaid" if n.contract is None else is_term(n.contract, key)
    end = n.contract.valid_to if term and n.contract is not None else key.period_start
    return {
        "kind": key.kind,
        "percent": key.percent if key.kind != "overrun" else None,
        "period": {
            "kind": "term" if term else "day",
            "start": key.period_start.isoformat(),
            "end": None if end is None else end.isoformat(),
        },
        "crossed_at": iso(n.crossed_at),
    }


def _client(client: ClientInfo | None) -> dict[str, Any] | None:
    if client is None:
        return None
    return {"id": client.client_id, "name": client.name, "timezone": client.timezone}


def _contract(contract: Contract | None) -> dict[str, Any] | None:
    if contract is None:
        return None
    return {"id": contract.contract_id, "overage": contract.overage, "hold_billable": contract.hold_billable}


def _call(call: CallInfo | None) -> dict[str, Any] | None:
    if call is None:
        return None
    return {
        "conversation_id": call.conversation_id,
        "channel": call.channel,
        "direction": call.direction,
        "client_number": call.client_number,
        "client_number_raw": call.client_number_raw,
        "line": call.line,
        "started_at": iso(call.started_at),
        "consultants": list(call.consultants),
        "consultant_channels": list(call.consultant_channels),
        "in_progress": not call.ended,
    }


def left(standing: Standing) -> dict[str, Any]:
    """What is used and left, in seconds (three decimals) and days; what is left of an allowance
    the contract does not have is null (as in `talkmeter.quota_now`)."""
    s = standing
    week_left = None if s.free_days_per_week is None else max(0, s.free_days_per_week - s.free_days_used)
    return {
        "day": s.day.isoformat(),
        "counted_today_seconds": _seconds(s.counted_today_ms),
        "free_daily_seconds": _seconds(s.free_cap_ms),
        "free_used_seconds": _seconds(s.free_used_ms),
        "free_left_seconds": None if s.free_cap_ms is None else _seconds(s.free_left_ms),
        "free_days_per_week": s.free_days_per_week,
        "free_days_used": s.free_days_used,
        "free_days_left": week_left,
        "prepaid_seconds": _seconds(s.prepaid_ms),
        "prepaid_used_seconds": _seconds(s.prepaid_used_ms),
        "prepaid_left_seconds": None if s.prepaid_ms is None else _seconds(s.prepaid_left_ms),
        "paid_seconds": _seconds(s.paid_ms),
        "paid_now": s.paid_now,
    }


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else round(ms / 1000, 3)


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="milliseconds")


# --- the texts -------------------------------------------------------------------------------------


def text(notification: Notification, language: Language = "en") -> str:
    """One or two sentences for a person: what happened, what is left, which call."""
    words = _RU if language == "ru" else _EN
    n = notification
    if n.key is None:
        return _call_started(n, words)
    name = n.client.name if n.client else "?"
    body = _alert_sentence(n, name, words)
    call = n.call
    if call is not None and not call.ended:
        consultants = ", ".join(call.consultants) or "—"
        number = call.client_number or call.client_number_raw or "—"
        body += " " + words["on_call"].format(number=number, consultants=consultants)
    return body


def subject(notification: Notification, language: Language = "en") -> str:
    """A short e-mail subject line."""
    words = _RU if language == "ru" else _EN
    n = notification
    who = n.client.name if n.client else (n.call.client_number if n.call and n.call.client_number else "—")
    if n.key is None:
        return f"talkmeter: {words['subject_call']} {who}"
    if n.key.kind == "overrun":
        what = words["subject_overrun"]
    else:
        what = words[f"subject_{n.key.kind}"].format(percent=n.key.percent)
    return f"talkmeter: {who}: {what}"


def duration(ms: int | None) -> str:
    """m:ss below an hour, h:mm:ss above (whole seconds, rounded down)."""
    total = max(0, (ms or 0) // 1000)
    hours, rest = divmod(total, 3600)
    if hours:
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{rest // 60}:{rest % 60:02d}"


def _alert_sentence(n: Notification, name: str, words: dict[str, str]) -> str:
    key, s = n.key, n.standing
    assert key is not None and s is not None
    flagged = n.contract is not None and n.contract.overage == "flag"
    values = {
        "name": name,
        "percent": key.percent,
        "used": duration(s.free_used_ms),
        "cap": duration(s.free_cap_ms),
        "left": duration(s.free_left_ms),
        "counted": duration(s.counted_today_ms),
        "p_used": duration(s.prepaid_used_ms),
        "p_total": duration(s.prepaid_ms),
        "p_left": duration(s.prepaid_left_ms),
    }
    if key.kind == "overrun":
        template = words["overrun_flag" if flagged else "overrun"]
    elif key.kind == "daily":
        template = words[
            "daily" if key.percent < 100 else "daily_full" if key.percent == 100 else "daily_over"
        ]
        if key.percent == 100:
            after = "then_prepaid" if s.prepaid_left_ms > 0 else "then_flag" if flagged else "then_paid"
            template += " " + words[after]
    elif key.percent < 100:
        template = words["prepaid"]
    elif key.percent == 100:
        template = words["prepaid_full_flag" if flagged else "prepaid_full"]
    else:
        template = words["prepaid_over"]
    return template.format(**values)


def _call_started(n: Notification, words: dict[str, str]) -> str:
    call = n.call
    number = (call.client_number or call.client_number_raw) if call else ""
    if n.match == "withheld" or not number:
        return words["call_withheld"]
    if n.match == "unknown":
        return words["call_unknown"].format(number=number)
    if n.match == "ambiguous":
        return words["call_ambiguous"].format(number=number, candidates=", ".join(n.candidates))
    name = n.client.name if n.client else "?"
    if n.match == "no_contract" or n.standing is None:
        return words["call_no_contract"].format(name=name, number=number)
    return words["call_matched"].format(name=name, number=number) + _figures(n.standing, words)


def _figures(s: Standing, words: dict[str, str]) -> str:
    parts = []
    if s.free_cap_ms:
        parts.append(words["fig_free"].format(left=duration(s.free_left_ms), cap=duration(s.free_cap_ms)))
    if s.free_days_per_week is not None:
        left_days = max(0, s.free_days_per_week - s.free_days_used)
        parts.append(words["fig_days"].format(left=left_days, limit=s.free_days_per_week))
    if s.prepaid_ms:
        prepaid = words["fig_prepaid"]
        parts.append(prepaid.format(left=duration(s.prepaid_left_ms), total=duration(s.prepaid_ms)))
    if s.free_left_ms == 0 and s.prepaid_left_ms == 0:
        parts.append(words["fig_paid"])
    return "; ".join(parts) + "."


_EN = {
    "daily": "{name}: {percent}% of today's free time used ({used} of {cap}, {left} left).",
    "daily_full": "{name}: today's free time is used up ({cap}).",
    "daily_over": "{name}: today's talk reached {percent}% of the free time ({counted} of {cap}).",
    "then_prepaid": "Further talk uses the prepaid package ({p_left} left).",
    "then_paid": "Further talk is paid.",
    "then_flag": "Further talk is over quota.",
    "prepaid": "{name}: {percent}% of the prepaid package used ({p_used} of {p_total}, {p_left} left).",
    "prepaid_full": "{name}: the prepaid package is used up ({p_total}); talk beyond the free time is paid.",
    "prepaid_full_flag": "{name}: the prepaid package is used up ({p_total}); talk beyond the free time is "
    "over quota.",
    "prepaid_over": "{name}: talk beyond the free time reached {percent}% of the prepaid package.",
    "overrun": "{name}: the call is now in paid time: the free time and the prepaid package are used up.",
    "overrun_flag": "{name}: the call is now over quota (the free time and the prepaid package are used "
    "up); the support manager decides.",
    "on_call": "Call {number}, consultant {consultants}.",
    "call_matched": "Call from {name} ({number}): ",
    "call_unknown": "Call from {number}: no client has this number.",
    "call_withheld": "Call from a withheld number: the client is unknown.",
    "call_ambiguous": "Call from {number}: the number belongs to several clients ({candidates}).",
    "call_no_contract": "Call from {name} ({number}): no contract covers this call.",
    "fig_free": "free today {left} of {cap} left",
    "fig_days": "free days this week {left} of {limit} left",
    "fig_prepaid": "prepaid {left} of {total} left",
    "fig_paid": "the time is paid",
    "subject_call": "call from",
    "subject_daily": "{percent}% of today's free time",
    "subject_prepaid": "{percent}% of the prepaid package",
    "subject_overrun": "paid time started",
}

_RU = {
    "daily": "{name}: использовано {percent}% бесплатного времени на сегодня "
    "({used} из {cap}, осталось {left}).",
    "daily_full": "{name}: бесплатное время на сегодня исчерпано ({cap}).",
    "daily_over": "{name}: разговоры за сегодня достигли {percent}% бесплатного времени "
    "({counted} из {cap}).",
    "then_prepaid": "Дальше разговор идёт из предоплаченного пакета (осталось {p_left}).",
    "then_paid": "Дальше разговор платный.",
    "then_flag": "Дальше разговор сверх лимита.",
    "prepaid": "{name}: использовано {percent}% предоплаченного пакета "
    "({p_used} из {p_total}, осталось {p_left}).",
    "prepaid_full": "{name}: предоплаченный пакет исчерпан ({p_total}); "
    "время сверх бесплатного теперь платное.",
    "prepaid_full_flag": "{name}: предоплаченный пакет исчерпан ({p_total}); "
    "время сверх бесплатного идёт сверх лимита.",
    "prepaid_over": "{name}: время сверх бесплатного достигло {percent}% предоплаченного пакета.",
    "overrun": "{name}: разговор перешёл в платное время: бесплатное время и пакет исчерпаны.",
    "overrun_flag": "{name}: разговор идёт сверх лимита (бесплатное время и пакет исчерпаны); решение за "
    "руководителем поддержки.",
    "on_call": "Звонок {number}, консультант {consultants}.",
    "call_matched": "Звонит {name} ({number}): ",
    "call_unknown": "Звонок с номера {number}: клиент с таким номером не найден.",
    "call_withheld": "Звонок со скрытого номера: клиент неизвестен.",
    "call_ambiguous": "Звонок с номера {number}: номер принадлежит нескольким клиентам ({candidates}).",
    "call_no_contract": "Звонит {name} ({number}): ни один договор не покрывает этот звонок.",
    "fig_free": "бесплатно сегодня осталось {left} из {cap}",
    "fig_days": "бесплатных дней на неделе осталось {left} из {limit}",
    "fig_prepaid": "в пакете осталось {left} из {total}",
    "fig_paid": "время платное",
    "subject_call": "звонок:",
    "subject_daily": "{percent}% бесплатного времени на сегодня",
    "subject_prepaid": "{percent}% предоплаченного пакета",
    "subject_overrun": "началось платное время",
}


# --- back from the payload (deliveries pending after a restart) -------------------------------------


def from_payload(data: Mapping[str, Any], key: AlertKey | None, contract: Contract | None) -> Notification:
    """The notification a stored payload was made from (with the contract as it is now)."""
    client, call, figures = data.get("client"), data.get("call"), data.get("left")
    alert = data.get("alert") or {}
    return Notification(
        type=data["type"],
        decided_at=_moment(data["decided_at"]) or 0.0,
        pbx=data["pbx"],
        match=data["match"],
        call=None
        if call is None
        else CallInfo(
            conversation_id=call["conversation_id"],
            pbx=data["pbx"],
            channel=call["channel"],
            direction=call["direction"],
            client_number=call["client_number"],
            client_number_raw=call["client_number_raw"],
            line=call["line"],
            started_at=_moment(call["started_at"]) or 0.0,
            consultants=tuple(call["consultants"]),
            consultant_channels=tuple(call["consultant_channels"]),
            ended=not call["in_progress"],
        ),
        client=None if client is None else ClientInfo(client["id"], client["name"], client["timezone"]),
        contract=contract,
        standing=None if figures is None else _standing(figures),
        key=key,
        crossed_at=_moment(alert.get("crossed_at")),
        candidates=tuple(data.get("candidates") or ()),
        notification_id=data.get("id"),
    )


def _moment(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


def _standing(figures: Mapping[str, Any]) -> Standing:
    def ms(name: str) -> int | None:
        value = figures.get(name)
        return None if value is None else round(value * 1000)

    return Standing(
        day=date.fromisoformat(figures["day"]),
        counted_today_ms=ms("counted_today_seconds") or 0,
        free_cap_ms=ms("free_daily_seconds"),
        free_used_ms=ms("free_used_seconds") or 0,
        free_left_ms=ms("free_left_seconds") or 0,
        free_days_per_week=figures["free_days_per_week"],
        free_days_used=figures["free_days_used"],
        prepaid_ms=ms("prepaid_seconds"),
        prepaid_used_ms=ms("prepaid_used_seconds") or 0,
        prepaid_left_ms=ms("prepaid_left_seconds") or 0,
        paid_ms=ms("paid_seconds") or 0,
        paid_now=figures["paid_now"],
    )
