"""Errors of ledger/: local (this node asked for something the books forbid) vs remote (a
peer's cheque or receipt is refused) vs the file itself (unavailable, corrupt, unsettled).

    LedgerError                   root of every error raised by ledger/
        LocalLedgerError          the books forbid this move; nothing was written
            InvalidAmount         not a positive whole number of micro-credits
                AmountOverCap     would pass MAX_AMOUNT
            InsufficientFunds     the available balance cannot cover the amount
            EscrowStateError      the escrow's state does not allow this step
                UnknownJob        no escrow was ever locked for this job
            WrongOwner            the file belongs to another identity
        SettlementError           the settlement backend refused or failed
        RemoteLedgerError         a peer's payment evidence was refused
            ChequeRefused         a cheque that does not verify or pay more
                ChequeMisaddressed  pays another node or channel
                ChequeReplayed    its serial is not above the last one
                ChequeRolledBack  its cumulative amount went down
                ChequeOverCap     would raise earnings beyond MAX_AMOUNT
            ReceiptRefused        a receipt that does not verify, is stale or unknown
        LedgerUnavailable         the file cannot be read or written now
        LedgerCorrupt             the file was changed behind the ledger's back

node/ translates what reaches its boundary (node.errors.translate): local errors become
LedgerRefused, remote ones PaymentRefused, the rest LedgerFailed.
"""

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
