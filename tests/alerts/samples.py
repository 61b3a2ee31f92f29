"""Notifications as the engine builds them, for the sink and delivery tests."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal

from accounting.contracts import Contract
from accounting.quota import AlertKey, Standing
from daemon.alerts.messages import CallInfo, ClientInfo, Notification

MOMENT = datetime.fromisoformat("2026-11-24T10:08:00+03:00").timestamp()
CONTRACT = Contract(
    contract_id="romashka-2026",
    client_id="romashka",
    valid_from=date(2026, 1, 1),
    valid_to=date(2026, 12, 31),
    free_daily_minutes=15,
    free_days_per_week=2,
    prepaid_minutes=600,
    rate_per_minute=Decimal("30.00"),
    currency="RUB",
    alert_thresholds=(80, 100),
)
CLIENT = ClientInfo("romashka", "Ромашка", "Europe/Moscow")
CALL = CallInfo(
    conversation_id="msk:1795503600.17",
    pbx="msk",
    channel="PJSIP/trunk-00000011",
    direction="inbound",
    client_number="+74951234567",
    client_number_raw="84951234567",
    line="74950000000",
    started_at=MOMENT - 600,
    consultants=("101",),
    consultant_channels=("PJSIP/101-00000012",),
)
STANDING = Standing(
    day=date(2026, 11, 24),
    counted_today_ms=720_000,
    free_cap_ms=900_000,
    free_used_ms=720_000,
    free_left_ms=180_000,
    free_days_per_week=2,
    free_days_used=1,
    prepaid_ms=36_000_000,
    prepaid_used_ms=1_200_000,
    prepaid_left_ms=34_800_000,
    paid_ms=0,
    paid_now=False,
)


def alert(notification_id: int = 17, percent: int = 80) -> Notification:
    return Notification(
        type="quota.alert",
        decided_at=MOMENT,
        pbx="msk",
        match="matched",
        call=CALL,
        client=CLIENT,
        contract=CONTRACT,
        standing=STANDING,
        key=AlertKey("romashka-2026", "daily", percent, date(2026, 11, 24)),
        crossed_at=MOMENT,
        notification_id=notification_id,
    )


def call_started(notification_id: int = 18) -> Notification:
    return replace(
        alert(notification_id),
        type="call.started",
        key=None,
        crossed_at=None,
        call=replace(CALL, consultants=(), consultant_channels=()),
    )
