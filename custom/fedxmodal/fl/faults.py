"""Server-side handling of a site that disappears during a job (NVFlare 2.9).

How NVFlare notices a dead site: the server parent drops a site whose heartbeat stopped for
``heart_beat_timeout`` seconds (server kit ``local/resources.json``, default 600) and reports it to
the job; the running workflow then waits ``dead_client_grace_period`` seconds (default 60) before
it deems the site disconnected and stops waiting for its results -- the round completes with the
sites left. If fewer than the job's ``min_clients`` are left, NVFlare aborts the job ("deployment
policy violation"); the global model persisted after the last complete round stays on disk.

Two gaps this module closes (:class:`SiteLossMonitor`, one server component of every fedxmodal job):

* NVFlare delivers the dead-site report ONLY to the workflow running at that moment. A later
  workflow (cross-site evaluation after FedAvg) would send tasks to the dead site and wait for
  them for its full task timeouts (``submit_model`` 600 s, ``validate`` 6000 s). The monitor
  re-reports every site known to be gone to each workflow that starts.
* It logs one plain message naming the missing site, how many sites are left against
  ``min_clients``, what happens next (the round goes on without it / the job ends) and where the
  last persisted global model is.
"""

from __future__ import annotations

import os
from typing import Dict

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants

__all__ = ["SiteLossMonitor"]


class SiteLossMonitor(FLComponent):
    def __init__(self, persistor_id: str = "persistor"):
        """Tracks sites deemed disconnected during a job (see the module doc).

        Args:
            persistor_id: id of the job's model persistor (its checkpoint folder is named in the
                message when the job cannot go on).
        """
        super().__init__()
        self.persistor_id = persistor_id
        self._gone: Dict[str, float] = {}

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.CLIENT_DISCONNECTED:
            name = fl_ctx.get_prop(FLContextKey.DISCONNECTED_CLIENT_NAME)
            if name and name not in self._gone:
                import time

                self._gone[name] = time.time()
                self._report(name, fl_ctx)
        elif event_type == EventType.CLIENT_RECONNECTED:
            name = fl_ctx.get_prop(FLContextKey.RECONNECTED_CLIENT_NAME)
            if name in self._gone:
                self._gone.pop(name)
                self.log_info(fl_ctx, f"site {name} is back")
        elif event_type == EventType.START_WORKFLOW and self._gone:
            self._relay(fl_ctx)

    def _relay(self, fl_ctx: FLContext) -> None:
        runner = fl_ctx.get_prop(FLContextKey.RUNNER)
        try:
            wf = runner.config.workflows[runner.current_wf_index]
            communicator = wf.controller.communicator
        except Exception as e:  # NVFlare internals changed: only lose the speed-up
            self.log_warning(fl_ctx, f"cannot pass the sites gone to the new workflow: {e}")
            return
        for name in sorted(self._gone):
            self.log_warning(fl_ctx, f"site {name} left earlier in this job: workflow {wf.id} will not wait for it")
            communicator.process_dead_client_report(name, fl_ctx)

    def _report(self, name: str, fl_ctx: FLContext) -> None:
        engine = fl_ctx.get_engine()
        sites = sorted(c.name for c in engine.get_clients())
        left = [s for s in sites if s not in self._gone]
        meta = fl_ctx.get_prop(FLContextKey.JOB_META) or {}
        min_clients = int(meta.get("min_clients") or 0)
        rnd = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        runner = fl_ctx.get_prop(FLContextKey.RUNNER)
        wf = getattr(runner, "current_wf", None)
        if rnd is None and wf is not None:
            rnd = getattr(wf.controller, "current_round", None)
        where = ""
        persistor = engine.get_component(self.persistor_id)
        ckpt = getattr(persistor, "_ckpt_dir", None) or getattr(persistor, "log_dir", None)
        if ckpt:
            where = f"; the global model of the last complete round is kept in {os.path.abspath(ckpt)}"
        head = (f"SITE LOST: site {name} stopped responding (no heartbeat)"
                f"{f' during round {rnd}' if rnd is not None else ''} of workflow {getattr(wf, 'id', '?')}; "
                f"{len(left)} of {len(sites)} sites left ({', '.join(left) or 'none'}), min_clients={min_clients}")
        if len(left) >= max(min_clients, 1):
            self.log_error(fl_ctx, f"{head}: the job goes on without {name}", fire_event=False)
        else:
            self.log_error(fl_ctx, f"{head}: the job cannot go on and ends{where}", fire_event=False)
