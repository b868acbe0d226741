"""`tether server`: the HTTP API over `tether.Client` (extra `server`: FastAPI, uvicorn).

```python
from tether.server import create_app
app = create_app(tether.Client(), flows={"publish": publish})   # any ASGI server runs it
```

`serve()` is what `tether server` runs: it loads the flows of `--import` modules, refuses
to listen beyond loopback while no token exists, and runs uvicorn. Nothing in tether
imports this package but the CLI.
"""

from __future__ import annotations

from ._app import API, create_app
from ._run import serve

__all__ = ["API", "create_app", "serve"]
