"""Errors of ledger/: local (this node asked for something the books forbid) vs remote (a
peer's cheque or receipt is refused) vs corrupt (the file does not verify)."""

from __future__ import annotations


class LedgerError(Exception):
    """Root of every error raised by ledger/."""


class LocalLedgerError(LedgerError):
    """This node asked for a move the books forbid; nothing was written."""


class InvalidAmount(LocalLedgerError, ValueError):
    """An amount is not a positive whole number of micro-credits (or a charge is out of range)."""


class AmountOverCap(InvalidAmount):
    """An amount, a balance or a sum would pass MAX_AMOUNT; nothing was written."""


class InsufficientFunds(LocalLedgerError):
    """The available balance cannot cover the amount; deposit more or lower the price cap."""


class EscrowStateError(LocalLedgerError):
    """The job's escrow is not in a state that allows this step (e.g. a second release)."""


class UnknownJob(EscrowStateError):
    """No escrow was ever locked for this job id."""


class WrongOwner(LocalLedgerError):
    """The ledger file belongs to another identity than the one opening it."""


class SettlementError(LedgerError):
    """The settlement backend refused or failed a deposit or redemption."""


class RemoteLedgerError(LedgerError):
    """A peer's payment evidence was refused; drop it and keep running."""


class ChequeRefused(RemoteLedgerError):
    """A cheque does not verify or would not pay more than the last one."""


class ChequeMisaddressed(ChequeRefused):
    """The cheque pays another node, or on a channel this ledger does not use."""


class ChequeReplayed(ChequeRefused):
    """The cheque's serial is not above the last accepted serial from the same payer."""


class ChequeRolledBack(ChequeRefused):
    """The cheque's cumulative amount is below the last accepted one from the same payer."""


class ChequeOverCap(ChequeRefused):
    """Accepting the cheque would raise what this node has earned beyond MAX_AMOUNT."""


class ReceiptRefused(RemoteLedgerError):
    """A receipt does not verify, is stale, or is not about a job this node knows."""


class LedgerUnavailable(LedgerError):
    """The ledger file cannot be read or written now (disk full, read-only, locked by
    another process); nothing was changed, and the message names the problem."""


class LedgerCorrupt(LedgerError):
    """The file was changed behind the ledger's back; `offload ledger verify` names where."""
