"""What Python users import (through `node`): a thin face over node/requester/.

requester.py   `async with Requester(...)`: offers, submit, map, plan, events; Job, Result
remote.py      `@remote` functions: .remote(), .map(), .call(), .local()
values.py      @remote's sandbox-side wrapper and the strict decoder of return values
sync.py        the blocking facade (a trio loop in a helper thread), SyncRequester
"""
