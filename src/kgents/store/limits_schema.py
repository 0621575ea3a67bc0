"""Tables behind plan limits shared by every replica."""

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from kgents.store.schema import Base


class RateWindowRow(Base):
    """Requests of one API key in one minute."""

    __tablename__ = "rate_limit_windows"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


class TenantMonthTokensRow(Base):
    """Tokens (in and out) of a tenant's finished turns that started in one calendar month
    (UTC): what the token quota counts. The transaction that finishes a turn adds to it, so
    it always equals the sum over those turns, and a turn start reads one row."""

    __tablename__ = "tenant_month_tokens"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    month_start: Mapped[datetime] = mapped_column(primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger)
