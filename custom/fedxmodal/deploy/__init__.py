"""Host side: running federations on this machine -- the simulator runner (:mod:`.simulator`), POC
and provisioned federations (:mod:`.federation`, :mod:`.kits`, :mod:`.processes`). Nothing here
ships with a job."""
