"""Settlement backends: where deposited credit comes from and where cheques are cashed.

The ledger only ever calls a backend through `SettlementBackend`; `LocalCredits` is the
built-in one (credit minted locally, for tests, demos and private networks). An on-chain
or payment-channel backend implements the same three members; see the README section
"Settlement backends".
"""

from __future__ import annotations

import secrets
from typing import Protocol

from ledger.errors import SettlementError
from protocol.receipts import Cheque
from protocol.signing import Signed


class SettlementBackend(Protocol):
    """What the ledger needs from a way of settling credit."""

    @property
    def channel(self) -> str:
        """Names this backend in cheques (e.g. "local", or a chain and contract address)."""
        ...

    def fund(self, owner: str, amount: int) -> str:
        """Bring `amount` micro-credits in for `owner`; return a reference unique to this
        funding (a transaction id) once it is final. Raise SettlementError if refused."""
        ...

    def redeem(self, cheque: Signed[Cheque]) -> str:
        """Cash the latest cheque of a payer (payee side); return a reference."""
        ...


class LocalCredits:
    """Credit minted locally: every deposit succeeds; cheques are redeemed by keeping them."""

    channel = "local"

    def __init__(self, *, max_deposit: int = 10**15) -> None:
        self._max = max_deposit

    def fund(self, owner: str, amount: int) -> str:
        if amount > self._max:
            raise SettlementError(f"local deposits are capped at {self._max} micro-credits; "
                                  "deposit less")
        return f"local:{owner[-8:]}:{secrets.token_hex(8)}"

    def redeem(self, cheque: Signed[Cheque]) -> str:
        return f"local:cheque:{cheque.digest}"
