"""Trainers by training style on one base (:mod:`.base`), and evaluation (:mod:`.evaluation`).
The engine imports no NVFlare and names no method."""
