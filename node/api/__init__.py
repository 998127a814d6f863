"""What Python users import (through `node`): a thin face over node/requester/.

requester.py   `async with Requester(...)`: offers, submit, map, plan, events; Job, Result
remote.py      `@remote` functions: .remote(), .map(), .call(), .local()
classes.py     `@remote` classes: `with Chat.session(...) as chat:`, methods run there
warm.py        `@remote(keep_warm=S)` functions: calls served by one session kept open
split.py       `split(model, x)`: a model's first blocks here, the rest in a session
pipeline.py    `split(..., stages=K)`: contiguous blocks over K providers, driven from here
blocks.py      the session object holding a model's blocks; tensors moved to it in parts
shared.py      what both share: the Requester calls run in, pickling code by value
session_host.py  the script a session's sandbox runs: builds the object, serves calls
values.py      @remote's sandbox-side wrapper and the strict decoder of return values
sync.py        the blocking facade (a trio loop in a helper thread), SyncRequester
"""
