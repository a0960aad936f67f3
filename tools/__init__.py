"""Developer tools: neither the product (``model/``, ``service/``) nor tests or benchmarks.

* ``service_process``: the one way to run ``python -m service`` as a subprocess, used by the
  tests and by ``bench/``;
* ``demo_screenshot`` and ``browser``: the README's picture of the demo page (the browser driver
  is shared with the demo-page tests);
* ``power_loss``: an LD_PRELOAD shim for redis-server that emulates a power cut, and its build
  (used by the crash tests).
"""
