"""The SQLite ledger: hash-chained signed entries, escrow, balances, receipts, reputation.

Depends on protocol/ and the standard library only (sqlite3).

errors.py      one error root; local (the books forbid it) vs remote (a peer's cheque or
               receipt is refused) vs LedgerCorrupt (the file does not verify)
escrow.py      the escrow lifecycle as one transition table; the credit each entry moves
chain.py       signed, hash-chained entries and the replay that re-checks them (pure)
store.py       the SQLite file: schema, WAL + synchronous=FULL, write transactions,
               the full check of entries and derived tables
book.py        Ledger: deposit, lock/release/refund, cheques, receipts, reads, verify
records.py     one record per job submitted, free or paid: status, charge, timings, place
reputation.py  EigenTrust-style reputation from receipts, personalised to this node (pure)
settlement.py  the SettlementBackend protocol and the LocalCredits backend
"""

from __future__ import annotations

from ledger.book import MAX_AMOUNT, Balance, Job, Ledger, Payment
from ledger.chain import Entry, Fault
from ledger.errors import (
    ChequeMisaddressed,
    ChequeRefused,
    ChequeReplayed,
    ChequeRolledBack,
    EscrowStateError,
    InsufficientFunds,
    InvalidAmount,
    LedgerCorrupt,
    LedgerError,
    LocalLedgerError,
    ReceiptRefused,
    RemoteLedgerError,
    SettlementError,
    UnknownJob,
    WrongOwner,
)
from ledger.escrow import TRANSITIONS, RefundReason, State
from ledger.reputation import NEUTRAL, Params, Tally
from ledger.settlement import LocalCredits, SettlementBackend

__all__ = [
    "MAX_AMOUNT", "NEUTRAL", "TRANSITIONS", "Balance", "ChequeMisaddressed", "ChequeRefused",
    "ChequeReplayed", "ChequeRolledBack", "Entry", "EscrowStateError", "Fault",
    "InsufficientFunds", "InvalidAmount", "Job", "Ledger", "LedgerCorrupt", "LedgerError",
    "LocalCredits", "LocalLedgerError", "Params", "Payment", "ReceiptRefused", "RefundReason",
    "RemoteLedgerError", "SettlementBackend", "SettlementError", "State", "Tally",
    "UnknownJob", "WrongOwner",
]
