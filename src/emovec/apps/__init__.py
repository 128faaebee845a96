"""The front ends: thin shells over the library that parse, call and print or serve.

- :mod:`emovec.apps.cli`: the ``emovec`` command (one module per command group);
- :mod:`emovec.apps.pipeline`: the main job, ``emovec run``;
- :mod:`emovec.apps.report`: one HTML page from result folders;
- :mod:`emovec.apps.server` (+ ``web/``): the live dashboard, ``emovec serve``;
- :mod:`emovec.apps.chat_server` and :mod:`emovec.apps.api_server`: OpenAI-compatible
  endpoints (``emovec corpus serve``, ``emovec api``), behind :mod:`emovec.apps.web_guard`.

Features and core never import from here.
"""
