"""The SQLite ledger (hash-chained signed entries, escrow, receipts, reputation).

Empty until its issue: the walking skeleton charges nothing and keeps no accounts.
"""
