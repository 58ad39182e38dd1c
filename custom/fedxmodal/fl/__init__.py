"""NVFlare side of fedxmodal (NVFlare 2.9).

* :mod:`fedxmodal.fl.site_config` -- where a site finds its data (site-local config, never the job).
* :mod:`fedxmodal.fl.client_loop` -- the generic Client API loop a method's site script runs.
* :mod:`fedxmodal.fl.server` -- resumable FedAvg / persistor / best-model selector.
* :mod:`fedxmodal.fl.job` -- builds and exports job folders (``python -m fedxmodal.fl.job``).

Nothing is imported here, so importing a sub-module stays cheap (NVFlare is imported lazily
where possible). See docs/nvflare-notes.md.
"""
