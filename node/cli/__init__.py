"""The `offload` command: one thin module per verb group over requester/ and provider/.

Nothing imports this package but node/__main__.py (and the console script).

main.py        the entry: argv, logging, errors mapped onto exit codes
commands.py    the parser, its table of verbs, and this node's own verbs (init, id, provide...)
common.py      what the verb modules share: argv splitting, output, the requester from flags
jobs.py        the requester verbs: offers, submit, plan, map
control.py     job control from any process: result, logs, cancel, and show (offline)
ledger.py      `offload ledger ...` and `offload jobs`, over ledger.Ledger
sessions.py    `offload sessions`: the sessions this node opened, from its home's records
demo.py        `offload demo`: a local network (node/localnet.py) and a torch job
progress.py    what a job shows while it moves: rich progress on a terminal, plain lines
"""
