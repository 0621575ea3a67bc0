"""Tables behind plan limits shared by every replica."""

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from kgents.store.schema import Base


class RateWindowRow(Base):
    """Requests of one API key in one minute."""

    __tablename__ = "rate_limit_windows"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
