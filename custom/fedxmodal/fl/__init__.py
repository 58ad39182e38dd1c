"""The NVFlare runtime of fedxmodal (NVFlare 2.9), generic across methods; it ships with every job.

* :mod:`.site_config` -- where a site finds its data (site-local config, never the job).
* :mod:`.client_loop` -- the Client API loop a site script runs; :mod:`.site` -- the one
  site script of every job (what runs at a site comes from the method's base and its own pieces,
  ``fedxmodal.methods``).
* :mod:`.server` -- resumable FedAvg / persistor / best-model selector; :mod:`.faults` -- site loss.
* What leaves a site: :mod:`.guard` (output guard), :mod:`.analytics` (guarded TensorBoard stream),
  :mod:`.dp` (Gaussian DP on updates), :mod:`.quantization`, :mod:`.refusal` (refused results).

It imports nothing host-side (job building: ``fedxmodal.recipes``; POC: ``fedxmodal.deploy``).
Nothing is imported here, so importing a sub-module stays cheap. See docs/nvflare-notes.md.
"""
